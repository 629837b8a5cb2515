//! The virtio-balloon device: what the transport sees (type 5, up to four
//! queues, `num_pages` and `actual` in config space) and the switch
//! between idle and running.
//!
//! # Reset
//!
//! A reset forgets the balloon, as the specification has it: the next
//! driver starts empty and inflates again from the target. Pages the old
//! driver had inflated simply read as zeros when the guest touches them.
//! `actual` goes back to 0 and the held-page count with it; the target
//! (`num_pages`), the latest statistics and the running totals of
//! [`BalloonCounters`](super::BalloonCounters) stay, so the host's view
//! stays monotonic.

use std::sync::Arc;

use super::handle::{BalloonError, BalloonHandle, Shared};
use super::handler::BalloonHandler;
use super::release::{Madvise, MemoryReleaser};
use super::{
    QueueIndexes, QUEUE_SIZE, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::virtio::worker::WorkerSlot;
use crate::virtio::{
    device_type, read_config_from, ActivateError, ActivationContext, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Every feature the device offers.
pub const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_BALLOON_F_STATS_VQ
    | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    | VIRTIO_BALLOON_F_REPORTING;

/// The queue sizes the transport offers: all four possible queues. The
/// driver readies only those its features call for (see
/// [`QueueIndexes`]).
const QUEUE_MAX_SIZES: [u16; 4] = [QUEUE_SIZE; 4];

/// A memory balloon (virtio 1.2 §5.5); see the [module docs](super).
///
/// The host steers it through a [`BalloonHandle`]. Each activation gets
/// its own clone of the memory releaser.
pub struct Balloon<R: MemoryReleaser + Clone + Send + 'static = Madvise> {
    shared: Arc<Shared>,
    releaser: R,
    worker: WorkerSlot<BalloonHandler<R>>,
}

impl Balloon<Madvise> {
    /// A balloon that releases memory with `madvise`, with target 0.
    pub fn new() -> Result<Self, BalloonError> {
        Self::with_releaser(Madvise)
    }
}

impl<R: MemoryReleaser + Clone + Send + 'static> Balloon<R> {
    /// A balloon that releases memory through `releaser`, with target 0.
    pub fn with_releaser(releaser: R) -> Result<Self, BalloonError> {
        Ok(Balloon {
            shared: Arc::new(Shared::new()?),
            releaser,
            worker: WorkerSlot::new("virtio-balloon", device_type::BALLOON),
        })
    }

    /// The host's control of this device; valid for the device's lifetime
    /// and beyond (it then reports the last state).
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle::new(self.shared.clone())
    }

    /// Whether a worker is running the queues.
    pub fn is_active(&self) -> bool {
        self.worker.is_active()
    }
}

impl<R: MemoryReleaser + Clone + Send + 'static> VirtioDevice for Balloon<R> {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_from(&self.shared.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.shared.write_config(offset, data);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        let indexes = QueueIndexes::new(ctx.acked_features);
        ctx.check_queue_count(indexes.count())?;
        // Before the worker runs: its first statistics buffer may already
        // be waiting, and a host request must find the device active.
        self.shared
            .activate(ctx.interrupt.clone(), indexes.stats.is_some());
        let interrupt = ctx.interrupt.clone();
        let handler = BalloonHandler::new(
            ctx.mem,
            ctx.queues,
            indexes,
            ctx.interrupt,
            self.shared.clone(),
            self.releaser.clone(),
        );
        let started = self.worker.start(handler, interrupt);
        if started.is_err() {
            self.shared.deactivate();
        }
        started
    }

    fn reset(&mut self) -> bool {
        // Either way the thread is gone, and with it the held set.
        self.worker.stop();
        self.shared.deactivate();
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io;

    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::{ActiveQueue, GuestMemory, InterruptKind, VirtioInterrupt};

    struct NoInterrupt;

    impl VirtioInterrupt for NoInterrupt {
        fn trigger(&self, _: InterruptKind) -> io::Result<()> {
            Ok(())
        }
    }

    fn context(queues: usize, acked_features: u64) -> ActivationContext {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let queues = (0..queues)
            .map(|_| ActiveQueue {
                queue: Queue::new(QUEUE_SIZE).unwrap(),
                notify: EventFd::new(0).unwrap(),
            })
            .collect();
        ActivationContext {
            mem,
            interrupt: Arc::new(NoInterrupt),
            queues,
            acked_features,
        }
    }

    #[test]
    fn queue_count_follows_the_acked_features() {
        let mut b = Balloon::new().unwrap();
        assert_eq!(b.device_type(), device_type::BALLOON);
        assert_eq!(b.queue_max_sizes(), [QUEUE_SIZE; 4]);
        assert_eq!(b.features(), FEATURES);
        let stats = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ;
        for (n, features) in [(3, VIRTIO_F_VERSION_1), (2, stats), (4, stats)] {
            let err = b.activate(context(n, features)).unwrap_err();
            assert!(matches!(err, ActivateError::QueueCount { got, .. } if got == n));
        }
        assert!(!b.is_active());
        assert!(!b.handle().is_active());
        b.activate(context(3, stats)).unwrap();
        assert!(b.is_active() && b.handle().is_active());
        assert!(matches!(
            b.activate(context(3, stats)),
            Err(ActivateError::AlreadyActive)
        ));
        assert!(b.reset());
        assert!(!b.is_active() && !b.handle().is_active());
        b.activate(context(4, FEATURES)).unwrap();
        assert!(b.reset());
        assert!(b.reset(), "resetting an idle device is fine");
    }

    #[test]
    fn config_reads_are_bounded() {
        let mut b = Balloon::new().unwrap();
        b.handle().set_target_pages(0x0102_0304).unwrap();
        b.write_config(4, &9u32.to_le_bytes());
        let mut all = [0xffu8; 8];
        b.read_config(0, &mut all);
        assert_eq!(all, [4, 3, 2, 1, 9, 0, 0, 0]);
        let mut straddle = [0xffu8; 8];
        b.read_config(6, &mut straddle);
        assert_eq!(straddle, [0; 8]);
        let mut one = [0xffu8; 1];
        b.read_config(1, &mut one);
        assert_eq!(one, [3]);
        for offset in [8, 0x100, u64::MAX - 3, u64::MAX] {
            let mut far = [0xffu8; 4];
            b.read_config(offset, &mut far);
            assert_eq!(far, [0; 4], "{offset:#x}");
        }
        // Writes to num_pages are ignored.
        b.write_config(0, &[0; 4]);
        assert_eq!(b.handle().target_pages(), 0x0102_0304);
    }
}
