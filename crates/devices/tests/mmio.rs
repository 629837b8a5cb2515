//! virtio-mmio register semantics, driven through the driver harness against
//! a recording mock device: what a correct driver sees, and what a
//! misbehaving one cannot break.
#![allow(clippy::unwrap_used)]

use agentvm_devices::bus::BusDevice;
use agentvm_devices::testing::{Driver, HarnessError, MockDevice, MockHandle, QueueLayout};
use agentvm_devices::virtio::transport::mmio::{
    regs, status, MmioError, MmioTransport, INT_CONFIG, INT_USED_RING, MMIO_MAGIC, MMIO_VENDOR_ID,
};
use agentvm_devices::virtio::{GuestMemory, InterruptKind, VIRTIO_F_VERSION_1};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM: usize = 1 << 20;
const DEVICE_TYPE: u32 = 42;
/// Bit 0 (page 0), VERSION_1 (bit 32) and bit 35 (page 1).
const OFFERED: u64 = VIRTIO_F_VERSION_1 | 1 | (1 << 35);
const CONFIG: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

fn driver() -> (Driver, MockHandle) {
    let dev = MockDevice::new(DEVICE_TYPE, OFFERED, &[256, 64]).with_config(&CONFIG);
    let handle = dev.handle();
    (Driver::new(Box::new(dev), MEM).unwrap(), handle)
}

/// A driver that negotiated and set both queues up, short of DRIVER_OK.
fn driver_with_queues() -> (Driver, MockHandle) {
    let (mut drv, dev) = driver();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    drv.setup_queue(0, 16).unwrap();
    drv.setup_queue(1, 64).unwrap();
    (drv, dev)
}

const ACK_DRIVER_FEATURES: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

#[test]
fn identity_registers() {
    let (mut drv, _) = driver();
    assert_eq!(drv.probe().unwrap(), DEVICE_TYPE);
    assert_eq!(drv.read_reg(regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(drv.read_reg(regs::VERSION), 2);
    assert_eq!(drv.read_reg(regs::DEVICE_ID), DEVICE_TYPE);
    assert_eq!(drv.read_reg(regs::VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(drv.transport().device_type(), DEVICE_TYPE);
    // No shared memory regions: length -1.
    drv.write_reg(regs::SHM_SEL, 0);
    assert_eq!(drv.read_reg(regs::SHM_LEN_LOW), u32::MAX);
    assert_eq!(drv.read_reg(regs::SHM_LEN_HIGH), u32::MAX);
    // Write-only registers read as 0.
    for reg in [
        regs::QUEUE_NUM,
        regs::QUEUE_NOTIFY,
        regs::INTERRUPT_ACK,
        regs::QUEUE_DESC_LOW,
    ] {
        assert_eq!(drv.read_reg(reg), 0, "register {reg:#x}");
    }
    assert_eq!(drv.read_reg(regs::QUEUE_RESET), 0);
    assert_eq!(drv.transport().queue_notify_events().len(), 2);
}

#[test]
fn transport_refuses_unusable_devices() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let legacy = MockDevice::new(DEVICE_TYPE, 1, &[16]);
    assert!(matches!(
        MmioTransport::new(Box::new(legacy), mem.clone()),
        Err(MmioError::NotModern(DEVICE_TYPE))
    ));
    for size in [0, 3, 65535] {
        let odd = MockDevice::new(DEVICE_TYPE, VIRTIO_F_VERSION_1, &[16, size]);
        assert!(matches!(
            MmioTransport::new(Box::new(odd), mem.clone()),
            Err(MmioError::QueueMaxSize { queue: 1, size: s }) if s == size
        ));
    }
}

#[test]
fn feature_pages_and_negotiation() {
    let (mut drv, dev) = driver();
    for (page, want) in [(0, 1), (1, 0b1001), (2, 0), (7, 0)] {
        drv.write_reg(regs::DEVICE_FEATURES_SEL, page);
        assert_eq!(drv.read_reg(regs::DEVICE_FEATURES), want, "page {page}");
    }
    assert_eq!(drv.device_features(), OFFERED);

    // The driver takes a subset: bit 0 and VERSION_1, not bit 35.
    let acked = drv.negotiate(VIRTIO_F_VERSION_1 | 1 | (1 << 2)).unwrap();
    assert_eq!(acked, VIRTIO_F_VERSION_1 | 1);
    assert_eq!(drv.status(), ACK_DRIVER_FEATURES);
    // Features are frozen once FEATURES_OK is set.
    drv.write_driver_features(OFFERED);
    drv.setup_queue(0, 16).unwrap();
    drv.driver_ok().unwrap();
    let activations = dev.activations();
    assert_eq!(activations.len(), 1);
    assert_eq!(activations[0].acked_features, VIRTIO_F_VERSION_1 | 1);
}

#[test]
fn features_ok_refused_for_unknown_features_or_legacy() {
    let (mut drv, dev) = driver();
    let ack_driver = status::ACKNOWLEDGE | status::DRIVER;
    let bad = [
        VIRTIO_F_VERSION_1 | (1 << 1), // not offered
        1,                             // no VERSION_1
    ];
    for features in bad {
        drv.reset();
        drv.add_status(ack_driver);
        drv.write_driver_features(features);
        drv.add_status(status::FEATURES_OK);
        assert_eq!(drv.status(), ack_driver, "features {features:#x}");
    }
    // A non-zero page beyond bit 63 is a feature we cannot have offered.
    drv.reset();
    drv.add_status(ack_driver);
    drv.write_driver_features(VIRTIO_F_VERSION_1);
    drv.write_reg(regs::DRIVER_FEATURES_SEL, 2);
    drv.write_reg(regs::DRIVER_FEATURES, 1);
    drv.add_status(status::FEATURES_OK);
    assert_eq!(drv.status(), ack_driver);

    // Refused, the driver may fix its features and try again.
    drv.reset();
    drv.add_status(ack_driver);
    drv.write_driver_features(VIRTIO_F_VERSION_1 | (1 << 36));
    drv.add_status(status::FEATURES_OK);
    assert_eq!(drv.status(), ack_driver);
    drv.write_driver_features(VIRTIO_F_VERSION_1);
    drv.add_status(status::FEATURES_OK);
    assert_eq!(drv.status(), ACK_DRIVER_FEATURES);

    // DRIVER_OK never slips through after a refusal.
    drv.reset();
    drv.add_status(ack_driver);
    drv.write_driver_features(1);
    drv.add_status(status::FEATURES_OK | status::DRIVER_OK);
    assert_eq!(drv.status(), ack_driver);
    assert!(dev.activations().is_empty());
    assert!(matches!(
        drv.negotiate(1 << 1),
        Err(HarnessError::FeaturesRefused(0))
    ));
}

#[test]
fn status_bits_only_in_spec_order() {
    let (mut drv, dev) = driver();
    // DRIVER before ACKNOWLEDGE, FEATURES_OK before DRIVER: dropped.
    drv.write_status(status::DRIVER);
    assert_eq!(drv.status(), 0);
    drv.write_status(status::ACKNOWLEDGE);
    assert_eq!(drv.status(), status::ACKNOWLEDGE);
    drv.write_status(status::ACKNOWLEDGE | status::FEATURES_OK);
    assert_eq!(drv.status(), status::ACKNOWLEDGE);
    // Driver features are only taken once DRIVER is set.
    drv.write_driver_features(VIRTIO_F_VERSION_1);
    drv.add_status(status::DRIVER);
    drv.add_status(status::FEATURES_OK);
    assert_eq!(drv.status(), status::ACKNOWLEDGE | status::DRIVER);
    drv.write_driver_features(VIRTIO_F_VERSION_1);
    // DRIVER_OK before FEATURES_OK: dropped, nothing activated.
    drv.add_status(status::DRIVER_OK);
    assert_eq!(drv.status(), status::ACKNOWLEDGE | status::DRIVER);
    assert!(dev.activations().is_empty());
    // Clearing bits without a reset: ignored.
    drv.write_status(status::ACKNOWLEDGE);
    assert_eq!(drv.status(), status::ACKNOWLEDGE | status::DRIVER);
    // The device-owned NEEDS_RESET bit cannot be set by the driver.
    drv.add_status(status::DEVICE_NEEDS_RESET);
    assert_eq!(drv.status(), status::ACKNOWLEDGE | status::DRIVER);
    // Several bits in one write are fine when in order.
    drv.add_status(status::FEATURES_OK);
    drv.setup_queue(0, 16).unwrap();
    drv.add_status(status::DRIVER_OK);
    assert_eq!(drv.status(), ACK_DRIVER_FEATURES | status::DRIVER_OK);
    assert_eq!(dev.activations().len(), 1);
    // FAILED is always accepted.
    drv.add_status(status::FAILED);
    assert_eq!(drv.status() & status::FAILED, status::FAILED);

    let (mut drv, _) = driver();
    drv.write_status(status::ACKNOWLEDGE | status::DRIVER);
    assert_eq!(drv.status(), status::ACKNOWLEDGE | status::DRIVER);
}

#[test]
fn activation_hands_over_ready_queues_as_programmed() {
    let (mut drv, dev) = driver();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    let layout = drv.setup_queue(1, 32).unwrap();
    drv.driver_ok().unwrap();
    assert!(drv.transport().is_activated());
    let activations = dev.activations();
    // Queue 0 was never made ready: only queue 1 is handed over.
    assert_eq!(activations[0].queues.len(), 1);
    let q = activations[0].queues[0];
    assert_eq!((q.size, q.max_size, q.ready), (32, 64, true));
    assert_eq!(
        (q.desc_table, q.avail_ring, q.used_ring),
        (layout.desc, layout.avail, layout.used)
    );
    assert!(!q.event_idx_enabled);
}

#[test]
fn invalid_queue_sizes_are_ignored() {
    let (mut drv, dev) = driver();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    drv.setup_queue(0, 16).unwrap();
    // setup_queue refuses these itself; a raw driver gets them ignored.
    assert!(matches!(
        drv.setup_queue(1, 24),
        Err(HarnessError::QueueSize { .. })
    ));
    drv.write_reg(regs::QUEUE_SEL, 1);
    drv.write_reg(regs::QUEUE_NUM, 8);
    for bad in [0, 3, 24, 128, 1 << 16] {
        drv.write_reg(regs::QUEUE_NUM, bad);
    }
    let layout = QueueLayout {
        desc: 0x8_0000,
        avail: 0x8_1000,
        used: 0x8_2000,
    };
    for (low, addr) in [
        (regs::QUEUE_DESC_LOW, layout.desc),
        (regs::QUEUE_DRIVER_LOW, layout.avail),
        (regs::QUEUE_DEVICE_LOW, layout.used),
    ] {
        drv.write_reg(low, addr as u32);
    }
    drv.write_reg(regs::QUEUE_READY, 1);
    drv.driver_ok().unwrap();
    let queues = &dev.activations()[0].queues;
    assert_eq!(queues.iter().map(|q| q.size).collect::<Vec<_>>(), [16, 8]);
}

#[test]
fn rings_outside_memory_need_reset_without_activation() {
    let beyond = MEM as u64 + 0x1000;
    let layouts = [
        QueueLayout {
            desc: beyond,
            avail: 0x2000,
            used: 0x3000,
        },
        QueueLayout {
            desc: 0x1000,
            avail: beyond,
            used: 0x3000,
        },
        QueueLayout {
            desc: 0x1000,
            avail: 0x2000,
            used: MEM as u64 - 8,
        },
        // In memory but misaligned descriptor table.
        QueueLayout {
            desc: 0x1008,
            avail: 0x2000,
            used: 0x3000,
        },
        // Past the end of the 64-bit address space.
        QueueLayout {
            desc: u64::MAX - 15,
            avail: 0x2000,
            used: 0x3000,
        },
    ];
    for layout in layouts {
        let (mut drv, dev) = driver();
        drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
        drv.setup_queue_at(0, 16, layout).unwrap();
        assert!(matches!(drv.driver_ok(), Err(HarnessError::DeviceNotOk(_))));
        assert_eq!(
            drv.status(),
            ACK_DRIVER_FEATURES | status::DRIVER_OK | status::DEVICE_NEEDS_RESET,
            "{layout:?}"
        );
        assert!(dev.activations().is_empty());
        assert!(!drv.transport().is_activated());
        // The driver hears about it through a config-change interrupt.
        assert_eq!(drv.interrupt_count(), 1);
        assert_eq!(drv.read_reg(regs::INTERRUPT_STATUS), INT_CONFIG);
        // A reset clears it and a correct setup then works.
        drv.reset();
        assert_eq!(drv.status(), 0);
        assert_eq!(drv.read_reg(regs::INTERRUPT_STATUS), 0);
        assert_eq!(dev.resets(), 0, "never activated, nothing to reset");
        drv.init(VIRTIO_F_VERSION_1).unwrap();
        assert_eq!(dev.activations().len(), 1);
    }
}

#[test]
fn failed_activation_needs_reset() {
    let dev = MockDevice::new(DEVICE_TYPE, OFFERED, &[16, 16]).requiring_queues(2);
    let handle = dev.handle();
    let mut drv = Driver::new(Box::new(dev), MEM).unwrap();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    drv.setup_queue(0, 16).unwrap();
    assert!(
        matches!(drv.driver_ok(), Err(HarnessError::DeviceNotOk(s)) if s & status::DEVICE_NEEDS_RESET != 0)
    );
    assert!(handle.activations().is_empty());
    assert_eq!(drv.ack_interrupt(), INT_CONFIG);
    drv.init(VIRTIO_F_VERSION_1).unwrap();
    assert_eq!(handle.activations()[0].queues.len(), 2);
}

#[test]
fn notify_reaches_the_queue_eventfd_only_for_existing_queues() {
    let (mut drv, dev) = driver_with_queues();
    // Before DRIVER_OK: forwarded to the eventfd, but no device runs.
    drv.notify(1);
    drv.notify(2);
    drv.notify(u16::MAX);
    drv.write_reg(regs::QUEUE_NOTIFY, u32::MAX);
    let events = drv.transport().queue_notify_events();
    assert!(events[0].read().is_err(), "queue 0 was not notified");
    assert_eq!(events[1].read().unwrap(), 1);
    assert!(dev.activations().is_empty());
    // A notification pending at reset does not leak into the next setup.
    drv.notify(0);
    drv.reset();
    assert!(drv.transport().queue_notify_events()[0].read().is_err());
}

#[test]
fn read_only_registers_ignore_writes() {
    let (mut drv, dev) = driver_with_queues();
    drv.driver_ok().unwrap();
    dev.trigger(InterruptKind::Queue(0)).unwrap();
    let read_only = [
        regs::MAGIC_VALUE,
        regs::VERSION,
        regs::DEVICE_ID,
        regs::VENDOR_ID,
        regs::DEVICE_FEATURES,
        regs::QUEUE_NUM_MAX,
        regs::INTERRUPT_STATUS,
        regs::SHM_LEN_LOW,
        regs::CONFIG_GENERATION,
    ];
    let before: Vec<u32> = read_only.iter().map(|&r| drv.read_reg(r)).collect();
    assert_eq!(before[0], MMIO_MAGIC);
    assert_eq!(before[6], INT_USED_RING);
    for &reg in &read_only {
        drv.write_reg(reg, 0x5a5a_5a5a);
        drv.write_reg(reg, 0);
    }
    let after: Vec<u32> = read_only.iter().map(|&r| drv.read_reg(r)).collect();
    assert_eq!(before, after);
    assert_eq!(drv.status(), ACK_DRIVER_FEATURES | status::DRIVER_OK);
}

#[test]
fn queue_registers_frozen_after_driver_ok() {
    let (mut drv, dev) = driver();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    let layout = drv.setup_queue(0, 16).unwrap();
    drv.driver_ok().unwrap();

    drv.write_reg(regs::QUEUE_SEL, 0);
    drv.write_reg(regs::QUEUE_READY, 0);
    drv.write_reg(regs::QUEUE_NUM, 32);
    drv.write_reg(regs::QUEUE_DESC_LOW, 0x9000);
    assert_eq!(drv.read_reg(regs::QUEUE_READY), 1);
    // Queue 1 cannot be brought up late either.
    drv.write_reg(regs::QUEUE_SEL, 1);
    drv.write_reg(regs::QUEUE_READY, 1);
    assert_eq!(drv.read_reg(regs::QUEUE_READY), 0);
    // DRIVER_OK again does not re-activate.
    drv.add_status(status::DRIVER_OK);
    let activations = dev.activations();
    assert_eq!(activations.len(), 1);
    assert_eq!(activations[0].queues[0].desc_table, layout.desc);
}

#[test]
fn queue_registers_need_features_ok_and_a_non_ready_queue() {
    let (mut drv, dev) = driver();
    drv.add_status(status::ACKNOWLEDGE | status::DRIVER);
    // Before FEATURES_OK, QueueReady does not stick.
    drv.write_reg(regs::QUEUE_SEL, 0);
    drv.write_reg(regs::QUEUE_READY, 1);
    assert_eq!(drv.read_reg(regs::QUEUE_READY), 0);
    drv.write_driver_features(VIRTIO_F_VERSION_1);
    drv.add_status(status::FEATURES_OK);
    let layout = drv.setup_queue(0, 16).unwrap();
    // A ready queue's registers are frozen, until the driver clears ready.
    drv.write_reg(regs::QUEUE_NUM, 64);
    drv.write_reg(regs::QUEUE_DESC_LOW, 0x9000);
    assert!(matches!(
        drv.setup_queue(0, 16),
        Err(HarnessError::QueueAlreadyReady(0))
    ));
    // Missing queue: QueueNumMax 0, writes ignored.
    assert_eq!(drv.queue_max(5), 0);
    drv.write_reg(regs::QUEUE_READY, 1);
    assert_eq!(drv.read_reg(regs::QUEUE_READY), 0);
    assert!(matches!(
        drv.setup_queue(5, 16),
        Err(HarnessError::NoSuchQueue(5))
    ));
    drv.driver_ok().unwrap();
    let q = dev.activations()[0].queues[0];
    assert_eq!((q.size, q.desc_table), (16, layout.desc));
}

#[test]
fn reset_stops_the_device_and_allows_a_new_setup() {
    let (mut drv, dev) = driver_with_queues();
    drv.driver_ok().unwrap();
    dev.trigger(InterruptKind::Config).unwrap();
    assert!(dev.is_active());
    drv.reset();
    assert_eq!(dev.resets(), 1);
    assert!(!dev.is_active());
    assert!(!drv.transport().is_activated());
    assert_eq!(drv.status(), 0);
    assert_eq!(drv.read_reg(regs::INTERRUPT_STATUS), 0);
    for q in 0..2 {
        drv.write_reg(regs::QUEUE_SEL, q);
        assert_eq!(drv.read_reg(regs::QUEUE_READY), 0);
    }
    // A second reset of an idle device does not reach the device.
    drv.reset();
    assert_eq!(dev.resets(), 1);

    drv.init(VIRTIO_F_VERSION_1).unwrap();
    let activations = dev.activations();
    assert_eq!(activations.len(), 2);
    // init sets every queue up at its maximum.
    assert_eq!(
        activations[1]
            .queues
            .iter()
            .map(|q| q.size)
            .collect::<Vec<_>>(),
        [256, 64]
    );
    drv.transport_mut().shutdown();
    assert_eq!(dev.resets(), 2);
    assert_eq!(dev.retires(), 2);
}

/// A driver whose transport defers activation, and the eventfd it signals.
fn deferred_driver() -> (Driver, MockHandle, EventFd) {
    let (mut drv, dev) = driver_with_queues();
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    drv.transport_mut()
        .defer_activation(event.try_clone().unwrap());
    (drv, dev, event)
}

#[test]
fn deferred_activation_runs_only_when_completed() {
    let (mut drv, dev, event) = deferred_driver();
    drv.driver_ok().unwrap();
    // DRIVER_OK reads back at once; the device has not started.
    assert_eq!(drv.status(), ACK_DRIVER_FEATURES | status::DRIVER_OK);
    assert!(dev.activations().is_empty());
    assert!(drv.transport().has_pending());
    assert!(!drv.transport().is_activated());
    assert_eq!(event.read().unwrap(), 1);

    drv.transport_mut().complete_pending();
    assert_eq!(dev.activations().len(), 1);
    assert!(drv.transport().is_activated());
    assert!(!drv.transport().has_pending());

    // A reset stops the device at once and leaves its clean-up pending.
    drv.reset();
    assert_eq!((dev.resets(), dev.retires()), (1, 0));
    assert_eq!(drv.status(), 0);
    assert_eq!(event.read().unwrap(), 1);
    drv.transport_mut().complete_pending();
    assert_eq!(dev.retires(), 1);
    // Nothing was left to do: no event.
    assert!(event.read().is_err());
}

#[test]
fn deferred_activation_is_dropped_by_a_reset_before_it_ran() {
    let (mut drv, dev, event) = deferred_driver();
    drv.driver_ok().unwrap();
    drv.reset();
    drv.transport_mut().complete_pending();
    assert!(dev.activations().is_empty());
    assert_eq!((dev.resets(), dev.retires()), (0, 0));
    assert_eq!(event.read().unwrap(), 1);

    // The next setup activates normally.
    drv.init(VIRTIO_F_VERSION_1).unwrap();
    drv.transport_mut().complete_pending();
    assert_eq!(dev.activations().len(), 1);
}

#[test]
fn deferred_activation_failure_needs_reset_with_an_interrupt() {
    let dev = MockDevice::new(DEVICE_TYPE, OFFERED, &[16, 16]).requiring_queues(2);
    let handle = dev.handle();
    let mut drv = Driver::new(Box::new(dev), MEM).unwrap();
    drv.transport_mut()
        .defer_activation(EventFd::new(EFD_NONBLOCK).unwrap());
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    drv.setup_queue(0, 16).unwrap();
    drv.driver_ok().unwrap();
    assert_eq!(drv.ack_interrupt(), 0);
    drv.transport_mut().complete_pending();
    assert!(handle.activations().is_empty());
    assert_ne!(drv.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(drv.ack_interrupt(), INT_CONFIG);
}

#[test]
fn a_device_that_gives_up_shows_needs_reset_until_the_driver_resets_it() {
    let (mut drv, dev) = driver_with_queues();
    drv.driver_ok().unwrap();
    let running = drv.status();
    dev.trigger(InterruptKind::NeedsReset).unwrap();
    // Status shows the bit next to the driver's, and a configuration
    // interrupt tells the driver to look.
    assert_eq!(drv.status(), running | status::DEVICE_NEEDS_RESET);
    assert!(drv.transport().interrupt().needs_reset());
    assert_eq!(drv.interrupt_count(), 1);
    assert_eq!(drv.ack_interrupt(), INT_CONFIG);
    // Acknowledging the interrupt does not clear the request; Linux's
    // virtio_add_status writes the bit back, which changes nothing.
    assert_eq!(drv.status(), running | status::DEVICE_NEEDS_RESET);
    drv.add_status(status::DRIVER_OK);
    assert_eq!(drv.status(), running | status::DEVICE_NEEDS_RESET);
    drv.reset();
    assert_eq!(dev.resets(), 1);
    assert_eq!(drv.status(), 0);
    assert!(!drv.transport().interrupt().needs_reset());
    drv.init(VIRTIO_F_VERSION_1).unwrap();
    assert_eq!(dev.activations().len(), 2);
    assert_eq!(drv.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut drv, dev) = driver_with_queues();
    assert!(
        dev.trigger(InterruptKind::Queue(0)).is_err(),
        "not active yet"
    );
    drv.driver_ok().unwrap();
    assert_eq!(drv.interrupt_count(), 0);

    dev.trigger(InterruptKind::Queue(1)).unwrap();
    assert_eq!(drv.read_reg(regs::INTERRUPT_STATUS), INT_USED_RING);
    let generation = drv.read_reg(regs::CONFIG_GENERATION);
    dev.trigger(InterruptKind::Config).unwrap();
    assert_eq!(
        drv.read_reg(regs::INTERRUPT_STATUS),
        INT_USED_RING | INT_CONFIG
    );
    assert_ne!(drv.read_reg(regs::CONFIG_GENERATION), generation);
    assert_eq!(drv.interrupt_count(), 2);

    drv.write_reg(regs::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(drv.read_reg(regs::INTERRUPT_STATUS), INT_CONFIG);
    assert_eq!(drv.ack_interrupt(), INT_CONFIG);
    assert_eq!(drv.read_reg(regs::INTERRUPT_STATUS), 0);
}

#[test]
fn config_space_access_widths() {
    let (mut drv, dev) = driver();
    assert_eq!(drv.config_u8(1), 2);
    assert_eq!(drv.config_u16(2), u16::from_le_bytes([3, 4]));
    assert_eq!(drv.config_u32(4), u32::from_le_bytes([5, 6, 7, 8]));
    assert_eq!(
        drv.config_u64(0),
        u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8])
    );
    // Beyond the device's config space: zeros.
    assert_eq!(drv.config_u32(64), 0);
    // A 3-byte access is not a config access.
    let mut odd = [0xffu8; 3];
    drv.read_config(0, &mut odd);
    assert_eq!(odd, [0, 0, 0]);
    drv.write_config(0, &[9, 9, 9]);
    assert_eq!(dev.config(), CONFIG);

    drv.write_config(8, &0xdead_beef_u32.to_le_bytes());
    assert_eq!(drv.config_u32(8), 0xdead_beef);
    assert_eq!(&dev.config()[8..], 0xdead_beef_u32.to_le_bytes());

    // A device-side change bumps the generation; the reader retries.
    dev.update_config(0, &[7; 4]).unwrap();
    assert_eq!(drv.config_bytes(0, 4), [7; 4]);
}

#[test]
fn register_accesses_must_be_aligned_32_bit() {
    let (mut drv, _) = driver();
    let mut half = [0xffu8; 2];
    drv.read_raw(regs::MAGIC_VALUE, &mut half);
    assert_eq!(half, [0, 0]);
    let mut misaligned = [0xffu8; 4];
    drv.read_raw(regs::MAGIC_VALUE + 2, &mut misaligned);
    assert_eq!(misaligned, [0; 4]);
    drv.write_raw(regs::STATUS, &[status::ACKNOWLEDGE as u8]);
    drv.write_raw(regs::STATUS + 1, &status::ACKNOWLEDGE.to_le_bytes());
    drv.write_raw(regs::STATUS, &u64::from(status::ACKNOWLEDGE).to_le_bytes());
    assert_eq!(drv.status(), 0);
    // The transport is a plain bus device: an empty access must not panic.
    drv.transport_mut().write(regs::STATUS, &[]);
    drv.transport_mut().read(0xfff, &mut []);
}
