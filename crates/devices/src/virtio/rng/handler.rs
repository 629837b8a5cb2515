//! The virtio-rng event subscriber: maps the queue's notify eventfd to calls
//! of [`queue::process_queue`](super::queue::process_queue). It runs on the
//! device's [`Worker`](crate::virtio::worker::Worker) thread.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::{error, warn};
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::queue::{process_queue, EntropySource};
use crate::virtio::queue::give_up;
use crate::virtio::{GuestMemory, VirtioInterrupt};

const QUEUE_NOTIFIED: u32 = 0;

/// The running half of a virtio-rng device.
pub struct RngHandler<E> {
    mem: GuestMemory,
    queue: Queue,
    notify: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    source: E,
    /// The queue failed for good and the driver was asked for a reset;
    /// notifications are drained and ignored until then.
    broken: bool,
}

impl<E: EntropySource> RngHandler<E> {
    /// A handler serving `queue`, woken by `notify`.
    pub fn new(
        mem: GuestMemory,
        queue: Queue,
        notify: EventFd,
        interrupt: Arc<dyn VirtioInterrupt>,
        source: E,
    ) -> Self {
        RngHandler {
            mem,
            queue,
            notify,
            interrupt,
            source,
            broken: false,
        }
    }

    fn on_notify(&mut self) {
        // EAGAIN means a spurious wakeup: process anyway, it is cheap.
        let _ = self.notify.read();
        if self.broken {
            return;
        }
        match process_queue(
            &self.mem,
            &mut self.queue,
            &mut self.source,
            self.interrupt.as_ref(),
        ) {
            // Bounded work per wakeup: re-arm ourselves so the kill eventfd
            // gets a turn between batches.
            Ok(p) if p.more_pending => {
                if let Err(e) = self.notify.write(1) {
                    error!("virtio-rng: cannot re-arm the queue: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                give_up("virtio-rng", &e, self.interrupt.as_ref());
                self.broken = true;
            }
        }
    }
}

impl<E: EntropySource> MutEventSubscriber for RngHandler<E> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            QUEUE_NOTIFIED => self.on_notify(),
            other => warn!("virtio-rng: event with unknown token {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.notify,
            QUEUE_NOTIFIED,
            EventSet::IN,
        )) {
            error!("virtio-rng: cannot watch the queue notification: {e}");
        }
    }
}
