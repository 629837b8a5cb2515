//! The virtio-balloon event subscriber: maps queue notifications and host
//! statistics requests to calls of the [`queue`](super::queue) paths. It
//! runs on the device's [`Worker`](crate::virtio::worker::Worker) thread.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::{error, warn};
use vmm_sys_util::epoll::EventSet;

use super::handle::Shared;
use super::pages::HeldPages;
use super::queue::{
    process_pages, process_reports, receive_stats, return_stats_buffer, IndexedQueue, PageOp,
    Progress, QueueContext, QueueError,
};
use super::release::MemoryReleaser;
use super::QueueIndexes;
use crate::virtio::queue::give_up;
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt};

/// Token of the host's statistics requests; queue notifications use their
/// queue index.
const STATS_REQUESTED: u32 = u32::MAX;

/// The running half of a virtio-balloon device.
pub struct BalloonHandler<R> {
    mem: GuestMemory,
    queues: Vec<ActiveQueue>,
    indexes: QueueIndexes,
    interrupt: Arc<dyn VirtioInterrupt>,
    shared: Arc<Shared>,
    releaser: R,
    held: HeldPages,
    /// The statistics buffer the device keeps until the host wants more.
    stats_head: Option<u16>,
    /// A queue failed for good and the driver was asked for a reset;
    /// notifications are drained and ignored until then.
    broken: bool,
}

impl<R: MemoryReleaser> BalloonHandler<R> {
    /// A handler serving `queues`, laid out as `indexes` says (the caller
    /// checked there are `indexes.count()` of them).
    pub fn new(
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        indexes: QueueIndexes,
        interrupt: Arc<dyn VirtioInterrupt>,
        shared: Arc<Shared>,
        releaser: R,
    ) -> Self {
        let held = HeldPages::new(&mem);
        BalloonHandler {
            mem,
            queues,
            indexes,
            interrupt,
            shared,
            releaser,
            held,
            stats_head: None,
            broken: false,
        }
    }

    fn on_queue(&mut self, index: u16) {
        let Some(active) = self.queues.get_mut(usize::from(index)) else {
            warn!("virtio-balloon: event for unknown queue {index}");
            return;
        };
        // EAGAIN means a spurious wakeup: process anyway, it is cheap.
        let _ = active.notify.read();
        if self.broken {
            return;
        }
        let ctx = QueueContext {
            mem: &self.mem,
            interrupt: self.interrupt.as_ref(),
            counters: self.shared.counters(),
        };
        let vq = IndexedQueue {
            queue: &mut active.queue,
            index,
        };
        let result = match index {
            QueueIndexes::INFLATE => process_pages(
                &ctx,
                vq,
                PageOp::Inflate,
                &mut self.held,
                &mut self.releaser,
            ),
            QueueIndexes::DEFLATE => process_pages(
                &ctx,
                vq,
                PageOp::Deflate,
                &mut self.held,
                &mut self.releaser,
            ),
            i if Some(i) == self.indexes.stats => {
                let shared = &self.shared;
                receive_stats(&ctx, vq, &mut self.stats_head, &mut |s| {
                    shared.publish_stats(s)
                })
            }
            i if Some(i) == self.indexes.reporting => process_reports(&ctx, vq, &mut self.releaser),
            _ => Ok(Progress::default()),
        };
        match result {
            // Bounded work per wakeup: re-arm ourselves so the kill eventfd
            // gets a turn between batches.
            Ok(p) if p.more_pending => {
                if let Err(e) = active.notify.write(1) {
                    error!("virtio-balloon: cannot re-arm queue {index}: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => self.stop(e),
        }
    }

    fn on_stats_request(&mut self) {
        let _ = self.shared.stats_request().read();
        if self.broken {
            return;
        }
        let Some(index) = self.indexes.stats else {
            return;
        };
        let Some(active) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        let ctx = QueueContext {
            mem: &self.mem,
            interrupt: self.interrupt.as_ref(),
            counters: self.shared.counters(),
        };
        let vq = IndexedQueue {
            queue: &mut active.queue,
            index,
        };
        if let Err(e) = return_stats_buffer(&ctx, vq, &mut self.stats_head) {
            self.stop(e);
        }
    }

    fn stop(&mut self, e: QueueError) {
        give_up("virtio-balloon", &e, self.interrupt.as_ref());
        self.broken = true;
    }
}

impl<R: MemoryReleaser> MutEventSubscriber for BalloonHandler<R> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            STATS_REQUESTED => self.on_stats_request(),
            token => match u16::try_from(token) {
                Ok(index) => self.on_queue(index),
                Err(_) => warn!("virtio-balloon: event with unknown token {token}"),
            },
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fds = self
            .queues
            .iter()
            .zip(0u32..)
            .map(|(q, token)| (&q.notify, token))
            .chain(
                self.indexes
                    .stats
                    .map(|_| (self.shared.stats_request(), STATS_REQUESTED)),
            );
        for (fd, token) in fds {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                error!("virtio-balloon: cannot watch event {token}: {e}");
            }
        }
    }
}
