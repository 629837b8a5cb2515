//! The virtio-mmio transport driven by a hostile driver's register
//! accesses: any width at any offset, values aimed at the real registers
//! (status bits, queue selection, sizes, ring addresses inside and outside
//! guest memory, feature words) in any order, and notifications, against a
//! device with any features, queue sizes and config space.
#![no_main]

use agentvm_devices::testing::{Driver, MockDevice};
use agentvm_devices::virtio::transport::mmio::{regs, MMIO_WINDOW_SIZE};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

/// Guest memory behind the transport.
const MEM: usize = 64 << 10;
/// Accesses per input at most.
const MAX_ACCESSES: usize = 128;

/// The registers a driver writes, to aim most writes at real ones.
const WRITABLE: [u64; 17] = [
    regs::DEVICE_FEATURES_SEL,
    regs::DRIVER_FEATURES,
    regs::DRIVER_FEATURES_SEL,
    regs::QUEUE_SEL,
    regs::QUEUE_NUM,
    regs::QUEUE_READY,
    regs::QUEUE_NOTIFY,
    regs::INTERRUPT_ACK,
    regs::STATUS,
    regs::QUEUE_DESC_LOW,
    regs::QUEUE_DESC_HIGH,
    regs::QUEUE_DRIVER_LOW,
    regs::QUEUE_DRIVER_HIGH,
    regs::QUEUE_DEVICE_LOW,
    regs::QUEUE_DEVICE_HIGH,
    regs::SHM_SEL,
    regs::QUEUE_RESET,
];

#[derive(Debug, Arbitrary)]
struct Device {
    device_type: u8,
    features: u64,
    queue_max_sizes: Vec<u16>,
    config: Vec<u8>,
    required_queues: Option<u8>,
}

#[derive(Debug, Arbitrary)]
enum Access {
    /// A 32-bit write to a register a driver writes.
    Write {
        reg: u8,
        value: u32,
    },
    /// A 32-bit read of any register.
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
}

fuzz_target!(|input: (Device, Vec<Access>)| {
    let (device, accesses) = input;
    let mut mock = MockDevice::new(
        u32::from(device.device_type % 32),
        device.features,
        &device.queue_max_sizes[..device.queue_max_sizes.len().min(8)],
    )
    .with_config(&device.config[..device.config.len().min(256)]);
    if let Some(n) = device.required_queues {
        mock = mock.requiring_queues(usize::from(n % 8));
    }
    let handle = mock.handle();
    let Ok(mut drv) = Driver::new(Box::new(mock), MEM) else {
        return;
    };
    for access in accesses.into_iter().take(MAX_ACCESSES) {
        match access {
            Access::Write { reg, value } => {
                drv.write_reg(WRITABLE[usize::from(reg) % WRITABLE.len()], value);
            }
            Access::Read(offset) => {
                let _ = drv.read_reg(u64::from(offset) % MMIO_WINDOW_SIZE);
            }
            Access::RawWrite { offset, bytes } => {
                let len = bytes.len().min(16);
                drv.write_raw(u64::from(offset) % MMIO_WINDOW_SIZE, &bytes[..len]);
            }
            Access::RawRead { offset, len } => {
                let mut buf = vec![0u8; usize::from(len % 17)];
                drv.read_raw(u64::from(offset) % MMIO_WINDOW_SIZE, &mut buf);
            }
            Access::AddStatus(bits) => drv.add_status(u32::from(bits)),
        }
        // A device is never activated twice without a reset in between.
        assert!(handle.activations().len() <= handle.resets() + 1);
    }
});
