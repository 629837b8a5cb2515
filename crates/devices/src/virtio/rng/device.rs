//! The virtio-rng device: what the transport sees (type, one queue, no
//! config space) and the switch between idle and running.

use super::handler::RngHandler;
use super::queue::{EntropySource, HostEntropy};
use crate::virtio::worker::WorkerSlot;
use crate::virtio::{
    device_type, read_config_from, ActivateError, ActivationContext, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;

/// An entropy device (virtio 1.2 §5.4).
///
/// Each activation gets its own clone of the entropy source, so a worker that
/// dies (even by panicking) never leaves the device without one.
pub struct Rng<E: EntropySource + Clone + Send + 'static = HostEntropy> {
    source: E,
    worker: WorkerSlot<RngHandler<E>>,
}

impl Rng<HostEntropy> {
    /// A device handing out entropy from the host kernel.
    pub fn new() -> Self {
        Self::with_source(HostEntropy)
    }
}

impl Default for Rng<HostEntropy> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: EntropySource + Clone + Send + 'static> Rng<E> {
    /// A device handing out entropy from `source`.
    pub fn with_source(source: E) -> Self {
        Rng {
            source,
            worker: WorkerSlot::new("virtio-rng", device_type::RNG),
        }
    }

    /// Whether a worker is running the queue.
    pub fn is_active(&self) -> bool {
        self.worker.is_active()
    }
}

impl<E: EntropySource + Clone + Send + 'static> VirtioDevice for Rng<E> {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        read_config_from(&[], offset, data);
    }

    fn activate(&mut self, mut ctx: ActivationContext) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        let [active] = ctx.take_queues()?;
        let source = self.source.clone();
        let interrupt = ctx.interrupt.clone();
        let handler = RngHandler::new(ctx.mem, active.queue, active.notify, ctx.interrupt, source);
        self.worker.start(handler, interrupt)
    }

    fn reset(&mut self) -> bool {
        // Either way the thread is gone; a lost worker only loses its
        // clone of the source.
        self.worker.stop();
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::{ActiveQueue, GuestMemory, InterruptKind, VirtioInterrupt};

    /// The pattern source, with a token that counts its live clones.
    #[derive(Clone)]
    struct Tracked(#[allow(dead_code)] Arc<()>);

    impl EntropySource for Tracked {
        fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(1);
            Ok(())
        }
    }

    struct NoInterrupt;

    impl VirtioInterrupt for NoInterrupt {
        fn trigger(&self, _: InterruptKind) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn context(queues: usize) -> ActivationContext {
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
            acked_features: VIRTIO_F_VERSION_1,
        }
    }

    #[test]
    fn reset_joins_the_worker_and_drops_its_source() {
        let token = Arc::new(());
        let mut rng = Rng::with_source(Tracked(token.clone()));
        assert!(!rng.is_active());
        rng.activate(context(1)).unwrap();
        assert!(rng.is_active());
        // The test, the device's prototype, and the worker's clone.
        assert_eq!(Arc::strong_count(&token), 3);
        assert!(matches!(
            rng.activate(context(1)),
            Err(ActivateError::AlreadyActive)
        ));

        assert!(rng.reset());
        assert!(!rng.is_active());
        // reset() returned only after the worker thread ended.
        assert_eq!(Arc::strong_count(&token), 2);
        assert!(rng.reset(), "resetting an idle device is fine");

        rng.activate(context(1)).unwrap();
        assert_eq!(Arc::strong_count(&token), 3);
        drop(rng);
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn activation_needs_exactly_one_queue() {
        let mut rng = Rng::new();
        for n in [0, 2] {
            let err = rng.activate(context(n)).unwrap_err();
            assert!(matches!(err, ActivateError::QueueCount { expected: 1, got } if got == n));
        }
        assert!(!rng.is_active());
        assert_eq!(rng.device_type(), device_type::RNG);
        assert_eq!(rng.queue_max_sizes(), [QUEUE_SIZE]);
        assert_eq!(rng.features(), VIRTIO_F_VERSION_1);
    }
}
