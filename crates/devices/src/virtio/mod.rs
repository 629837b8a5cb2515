//! The virtio device model, independent of any transport.
//!
//! A device implements [`VirtioDevice`]: what it is (type, features, queue
//! sizes, config space) and what it does once the driver says DRIVER_OK
//! ([`VirtioDevice::activate`]). A transport (virtio-mmio here, vhost-user
//! later) owns the register state and hands the device an
//! [`ActivationContext`] with guest memory, ready queues with their notify
//! eventfds, and a [`VirtioInterrupt`] to signal the guest.
//!
//! What every device needs is here once: [`read_config_from`] for the
//! config space, [`ActivationContext::take_queues`] for the queue count,
//! [`worker::WorkerSlot`] for the worker thread, [`queue`] for the ring
//! bookkeeping and its [`queue::QueueError`]. A device that cannot go on
//! signals [`InterruptKind::NeedsReset`] instead of going silent.

pub mod balloon;
pub mod fs;
pub mod interrupt;
pub mod net;
pub mod queue;
pub mod rng;
#[cfg(test)]
mod test_support;
pub mod transport;
pub mod vsock;
pub mod warn;
pub mod worker;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::{InterruptKind, VirtioInterrupt};

/// The guest memory type every device works on.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Device type numbers from the virtio specification (5.x).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
    /// Socket device.
    pub const VSOCK: u32 = 19;
    /// File system device.
    pub const FS: u32 = 26;
}

/// VIRTIO_F_VERSION_1: every device we offer is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// One ready queue handed to a device at activation.
pub struct ActiveQueue {
    /// The queue as the driver configured it.
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (an ioeventfd under KVM).
    pub notify: EventFd,
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct ActivationContext {
    /// Guest memory.
    pub mem: GuestMemory,
    /// Signals used buffers, config changes and requests for a reset to
    /// the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The queues, in index order, each with its notify eventfd.
    pub queues: Vec<ActiveQueue>,
    /// The features the driver acknowledged.
    pub acked_features: u64,
}

impl ActivationContext {
    /// Checks that the driver made `expected` queues ready.
    pub fn check_queue_count(&self, expected: usize) -> Result<(), ActivateError> {
        match self.queues.len() {
            got if got == expected => Ok(()),
            got => Err(ActivateError::QueueCount { expected, got }),
        }
    }

    /// Takes the queues out, checking there are exactly `N` of them.
    pub fn take_queues<const N: usize>(&mut self) -> Result<[ActiveQueue; N], ActivateError> {
        self.check_queue_count(N)?;
        let queues = std::mem::take(&mut self.queues);
        // The count was checked: this cannot fail, but an error beats a panic.
        <[ActiveQueue; N]>::try_from(queues).map_err(|queues| ActivateError::QueueCount {
            expected: N,
            got: queues.len(),
        })
    }
}

/// Errors a device can report when activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up the number of queues the device needs.
    #[error("Device needs {expected} queues, driver set up {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// The device's worker could not be started.
    #[error("Cannot start the device worker")]
    Worker(#[source] worker::WorkerError),
    /// The device's backend (an external process, a host resource) could
    /// not be started or set up.
    #[error("Cannot set up the device's backend")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The device was activated twice without a reset.
    #[error("Device is already active")]
    AlreadyActive,
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// Device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (must include [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space. Bytes beyond the
    /// config space read as zero ([`read_config_from`] does it for a
    /// config space held as bytes).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space. Writes to read-only
    /// or absent fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Starts the device: from now on it processes the queues. The VMM
    /// calls it off the vCPU threads (it may start threads and processes).
    fn activate(&mut self, ctx: ActivationContext) -> Result<(), ActivateError>;
    /// Stops the device and returns it to its pre-activation state. Returns
    /// `false` if the device cannot be reset (the transport then marks it
    /// as needing a reset). It runs on the vCPU thread that wrote the
    /// reset, before the driver goes on: it must stop every use of the
    /// queues, but should leave slow or privileged clean-up (ending a
    /// process) to [`VirtioDevice::retire`].
    fn reset(&mut self) -> bool;
    /// Finishes a reset off the vCPU threads: releases what
    /// [`VirtioDevice::reset`] left behind. Runs after every reset and
    /// before the next activation.
    fn retire(&mut self) {}
}

/// Reads `data.len()` bytes of the configuration space `config` from
/// `offset`, as [`VirtioDevice::read_config`] does: bytes beyond `config`
/// (including offsets too large for an address) read as zero.
pub fn read_config_from(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(start) = usize::try_from(offset).ok().filter(|&o| o < config.len()) else {
        return;
    };
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;

    use super::*;

    const CONFIG: [u8; 6] = [1, 2, 3, 4, 5, 6];

    fn read(offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xff; len];
        read_config_from(&CONFIG, offset, &mut data);
        data
    }

    #[test]
    fn reads_inside_the_config_space() {
        assert_eq!(read(0, 6), CONFIG);
        assert_eq!(read(0, 1), [1]);
        assert_eq!(read(2, 2), [3, 4]);
        assert_eq!(read(5, 1), [6]);
    }

    #[test]
    fn bytes_past_the_end_read_as_zero() {
        assert_eq!(read(4, 4), [5, 6, 0, 0]);
        assert_eq!(read(0, 8), [1, 2, 3, 4, 5, 6, 0, 0]);
        assert_eq!(read(6, 2), [0, 0]);
        assert_eq!(read(0x100, 4), [0; 4]);
    }

    #[test]
    fn offsets_that_overflow_read_as_zero() {
        for offset in [
            u64::MAX,
            u64::MAX - 1,
            u64::MAX - 7,
            u64::from(u32::MAX) + 1,
        ] {
            assert_eq!(read(offset, 8), [0; 8], "{offset:#x}");
        }
    }

    fn context(queues: usize) -> ActivationContext {
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap();
        let queues = (0..queues)
            .map(|_| ActiveQueue {
                queue: Queue::new(16).unwrap(),
                notify: EventFd::new(0).unwrap(),
            })
            .collect();
        ActivationContext {
            mem,
            interrupt: Arc::new(test_support::Recorder::default()),
            queues,
            acked_features: VIRTIO_F_VERSION_1,
        }
    }

    #[test]
    fn queue_count_is_checked() {
        assert!(context(2).check_queue_count(2).is_ok());
        for (got, expected) in [(0, 1), (1, 2), (3, 2)] {
            let err = context(got).check_queue_count(expected).unwrap_err();
            assert!(
                matches!(err, ActivateError::QueueCount { expected: e, got: g } if e == expected && g == got)
            );
        }
    }

    #[test]
    fn take_queues_takes_exactly_n() {
        let mut ctx = context(3);
        let [a, b, c] = ctx.take_queues().unwrap();
        assert!(ctx.queues.is_empty());
        assert_eq!([a, b, c].map(|q| q.queue.max_size()), [16; 3]);
        let mut ctx = context(2);
        let taken = ctx.take_queues::<3>();
        assert!(matches!(
            taken,
            Err(ActivateError::QueueCount {
                expected: 3,
                got: 2
            })
        ));
        // A refused context keeps its queues.
        assert_eq!(ctx.queues.len(), 2);
    }

    #[test]
    fn an_empty_config_space_reads_as_zero() {
        let mut data = [0xff; 4];
        read_config_from(&[], 0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
