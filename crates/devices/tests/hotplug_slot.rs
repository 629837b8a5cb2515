//! Hot-plug slots of the virtio-mmio transport: what an empty slot shows a
//! driver (Linux's placeholder: DeviceID 0), filling it with a device the
//! driver then drives, and emptying it again, also under a driver that
//! keeps using the window.
#![allow(clippy::unwrap_used)]

use agentvm_devices::testing::{Driver, HarnessError, MockDevice};
use agentvm_devices::virtio::transport::mmio::{
    regs, status, MmioTransport, SlotError, MMIO_MAGIC, MMIO_VENDOR_ID, MMIO_VERSION,
};
use agentvm_devices::virtio::{GuestMemory, VIRTIO_F_VERSION_1};
use vm_memory::GuestAddress;

const MEM: usize = 1 << 20;

fn slot(queues: usize) -> Driver {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let transport = MmioTransport::empty_slot(mem.clone(), queues).unwrap();
    Driver::with_transport(transport, mem).unwrap()
}

#[test]
fn an_empty_slot_is_a_placeholder() {
    let mut drv = slot(2);
    assert_eq!(drv.read_reg(regs::MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(drv.read_reg(regs::VERSION), MMIO_VERSION);
    assert_eq!(drv.read_reg(regs::DEVICE_ID), 0);
    assert_eq!(drv.read_reg(regs::VENDOR_ID), MMIO_VENDOR_ID);
    assert!(matches!(drv.probe(), Err(HarnessError::NoDevice)));
    assert!(drv.transport().is_slot());
    assert!(drv.transport().is_empty_slot());
    // No queues to set up, nothing in the config space.
    assert_eq!(drv.queue_max(0), 0);
    let mut config = [0xffu8; 4];
    drv.read_raw(0x100, &mut config);
    assert_eq!(config, [0; 4]);
}

#[test]
fn a_driver_poking_an_empty_slot_changes_nothing() {
    let mut drv = slot(2);
    // A driver that ignores DeviceID 0 and goes on anyway.
    drv.add_status(status::ACKNOWLEDGE | status::DRIVER);
    drv.write_reg(regs::QUEUE_SEL, 0);
    drv.write_reg(regs::QUEUE_NUM, 16);
    drv.write_reg(regs::QUEUE_READY, 1);
    drv.write_reg(regs::QUEUE_NOTIFY, 7);
    assert_eq!(drv.read_reg(regs::QUEUE_READY), 0);
    assert!(drv.transport().is_empty_slot());
    // Emptying an empty slot is refused, not a crash.
    assert!(matches!(drv.transport_mut().empty(), Err(SlotError::Empty)));
}

#[test]
fn a_filled_slot_is_driven_and_emptied() {
    let mut drv = slot(2);
    // Status left over from a driver that probed the placeholder.
    drv.add_status(status::ACKNOWLEDGE);
    let dev = MockDevice::new(26, VIRTIO_F_VERSION_1, &[256, 256]);
    let handle = dev.handle();
    drv.transport_mut().fill(Box::new(dev)).unwrap();
    assert!(!drv.transport().is_empty_slot());
    assert_eq!(drv.status(), 0, "a filled slot starts from reset");
    // A second device does not fit.
    let other = MockDevice::new(26, VIRTIO_F_VERSION_1, &[256]);
    assert!(matches!(
        drv.transport_mut().fill(Box::new(other)),
        Err(SlotError::Occupied)
    ));

    assert_eq!(drv.init(VIRTIO_F_VERSION_1).unwrap(), VIRTIO_F_VERSION_1);
    assert_eq!(drv.read_reg(regs::DEVICE_ID), 26);
    assert!(handle.is_active());
    assert_eq!(handle.activations()[0].queues.len(), 2);

    // Emptied while the driver still holds it: the device is stopped and
    // cleaned up, the window is a placeholder again.
    let old = drv.transport_mut().empty().unwrap();
    assert_eq!(old.device_type(), 26);
    assert!(!handle.is_active());
    assert_eq!(handle.resets(), 1);
    assert_eq!(handle.retires(), 1);
    assert_eq!(drv.read_reg(regs::DEVICE_ID), 0);
    assert_eq!(drv.status(), 0);
    // The driver's later writes reach nothing.
    drv.add_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    drv.write_reg(regs::QUEUE_SEL, 1);
    drv.write_reg(regs::QUEUE_READY, 1);
    drv.add_status(status::DRIVER_OK);
    assert_eq!(handle.activations().len(), 1);

    // And the slot takes a new device.
    let again = MockDevice::new(26, VIRTIO_F_VERSION_1, &[256, 256]);
    drv.transport_mut().fill(Box::new(again)).unwrap();
    drv.reset();
    assert_eq!(drv.probe().unwrap(), 26);
}

#[test]
fn devices_that_do_not_fit_are_refused() {
    let mut drv = slot(1);
    let two = MockDevice::new(26, VIRTIO_F_VERSION_1, &[256, 256]);
    assert!(matches!(
        drv.transport_mut().fill(Box::new(two)),
        Err(SlotError::TooManyQueues {
            needed: 2,
            available: 1
        })
    ));
    let legacy = MockDevice::new(26, 0, &[256]);
    assert!(matches!(
        drv.transport_mut().fill(Box::new(legacy)),
        Err(SlotError::Device(_))
    ));
    let bad_size = MockDevice::new(26, VIRTIO_F_VERSION_1, &[100]);
    assert!(drv.transport_mut().fill(Box::new(bad_size)).is_err());
    assert!(drv.transport().is_empty_slot());
}

#[test]
fn boot_devices_are_not_slots() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let dev = MockDevice::new(26, VIRTIO_F_VERSION_1, &[256]);
    let mut t = MmioTransport::new(Box::new(dev), mem).unwrap();
    assert!(!t.is_slot());
    assert!(matches!(t.empty(), Err(SlotError::NotASlot)));
    let other = MockDevice::new(26, VIRTIO_F_VERSION_1, &[256]);
    assert!(matches!(t.fill(Box::new(other)), Err(SlotError::NotASlot)));
}
