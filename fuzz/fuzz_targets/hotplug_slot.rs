//! A hot-plug slot of the virtio-mmio transport under a hostile driver:
//! register accesses of any width at any offset, status steps, and the
//! host filling the slot with a device and emptying it again at any point
//! in between (a live mount and unmount while the guest pokes the window).
//! An empty slot must always show the placeholder (DeviceID 0) and keep no
//! queue ready; a filled one shows its device.
#![no_main]

use agentvm_devices::testing::{Driver, MockDevice};
use agentvm_devices::virtio::transport::mmio::{regs, MmioTransport, MMIO_WINDOW_SIZE};
use agentvm_devices::virtio::GuestMemory;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;

/// Guest memory behind the transport.
const MEM: usize = 64 << 10;
/// Operations per input at most.
const MAX_OPS: usize = 128;
/// Queues the slot has notification events for.
const SLOT_QUEUES: usize = 4;

#[derive(Debug, Arbitrary)]
enum Op {
    /// A 32-bit write to any register offset.
    Write {
        offset: u16,
        value: u32,
    },
    /// A 32-bit read of any register offset.
    Read(u16),
    /// Any access anywhere in the window (config space included).
    RawWrite {
        offset: u16,
        bytes: Vec<u8>,
    },
    RawRead {
        offset: u16,
        len: u8,
    },
    /// A whole status step, as a driver sets it bit by bit.
    AddStatus(u8),
    /// The host fills the slot (refused when it is full or the device
    /// has more queues than the slot).
    Fill {
        device_type: u8,
        features: u64,
        queue_max_sizes: Vec<u16>,
    },
    /// The host empties the slot (refused when it is empty).
    Empty,
}

fuzz_target!(|ops: Vec<Op>| {
    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let Ok(transport) = MmioTransport::empty_slot(mem.clone(), SLOT_QUEUES) else {
        return;
    };
    let Ok(mut drv) = Driver::with_transport(transport, mem) else {
        return;
    };
    for op in ops.into_iter().take(MAX_OPS) {
        match op {
            Op::Write { offset, value } => {
                drv.write_reg((u64::from(offset) % MMIO_WINDOW_SIZE) & !3, value);
            }
            Op::Read(offset) => {
                let _ = drv.read_reg((u64::from(offset) % MMIO_WINDOW_SIZE) & !3);
            }
            Op::RawWrite { offset, bytes } => {
                let len = bytes.len().min(16);
                drv.write_raw(u64::from(offset) % MMIO_WINDOW_SIZE, &bytes[..len]);
            }
            Op::RawRead { offset, len } => {
                let mut buf = vec![0u8; usize::from(len % 17)];
                drv.read_raw(u64::from(offset) % MMIO_WINDOW_SIZE, &mut buf);
            }
            Op::AddStatus(bits) => drv.add_status(u32::from(bits)),
            Op::Fill {
                device_type,
                features,
                queue_max_sizes,
            } => {
                // 1..=31: a real device type, never the placeholder's 0.
                let device_type = u32::from(device_type % 31) + 1;
                let sizes = &queue_max_sizes[..queue_max_sizes.len().min(6)];
                let was_empty = drv.transport().is_empty_slot();
                let filled = drv
                    .transport_mut()
                    .fill(Box::new(MockDevice::new(device_type, features, sizes)))
                    .is_ok();
                assert!(!filled || was_empty, "a full slot took a second device");
                if filled {
                    assert_eq!(drv.read_reg(regs::DEVICE_ID), device_type);
                }
            }
            Op::Empty => {
                let was_empty = drv.transport().is_empty_slot();
                let emptied = drv.transport_mut().empty().is_ok();
                assert_eq!(emptied, !was_empty);
            }
        }
        if drv.transport().is_empty_slot() {
            assert_eq!(
                drv.read_reg(regs::DEVICE_ID),
                0,
                "an empty slot shows a device"
            );
            for q in 0..SLOT_QUEUES as u32 {
                drv.write_reg(regs::QUEUE_SEL, q);
                assert_eq!(
                    drv.read_reg(regs::QUEUE_READY),
                    0,
                    "an empty slot has a ready queue"
                );
            }
        }
    }
});
