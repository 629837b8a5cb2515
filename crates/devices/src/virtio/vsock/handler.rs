//! The virtio-vsock event subscriber: maps the queue notifications and the
//! muxer's sockets to calls, then lets the queue path run. It runs on the
//! device's [`Worker`](crate::virtio::worker::Worker) thread.
//!
//! Fds come and go at run time: the muxer records [`FdOp`]s (listener at
//! start, a host client on accept, a connection's socket as its wishes
//! change) and this handler applies them to the event loop after every
//! event. All sockets are level-triggered; the muxer unregisters any it
//! cannot act on (no guest credit, waiting for the guest), so a readable or
//! hung-up socket never spins the loop.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::error;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{FdOp, Muxer};
use super::queue::{process_rx, process_tx, VsockBackend};
use super::MAX_PKT_PAYLOAD;
use crate::virtio::queue::give_up;
use crate::virtio::{GuestMemory, VirtioInterrupt};

/// Token of the receive queue's notification.
const RX_NOTIFIED: u32 = 0;
/// Token of the transmit queue's notification.
const TX_NOTIFIED: u32 = 1;

/// One queue and the eventfd the driver's notifications arrive on.
pub struct NotifiedQueue {
    /// The queue.
    pub queue: Queue,
    /// Its notification.
    pub notify: EventFd,
}

/// The running half of a virtio-vsock device.
pub struct VsockHandler {
    mem: GuestMemory,
    rx: NotifiedQueue,
    tx: NotifiedQueue,
    /// Kept for the device's lifetime; this device never sends events.
    _event: NotifiedQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    muxer: Muxer,
    /// One packet's payload, reused.
    scratch: Vec<u8>,
    /// A queue failed for good and the driver was asked for a reset; only
    /// that reset brings the device back.
    broken: bool,
}

impl VsockHandler {
    /// A handler serving the three queues (rx, tx, event) for `muxer`.
    pub fn new(
        mem: GuestMemory,
        [rx, tx, event]: [NotifiedQueue; 3],
        interrupt: Arc<dyn VirtioInterrupt>,
        muxer: Muxer,
    ) -> Self {
        VsockHandler {
            mem,
            rx,
            tx,
            _event: event,
            interrupt,
            muxer,
            scratch: Vec::with_capacity(MAX_PKT_PAYLOAD),
            broken: false,
        }
    }

    /// Moves packets both ways as far as buffers and credit allow.
    fn pump(&mut self) {
        if self.broken {
            return;
        }
        let tx = process_tx(
            &self.mem,
            &mut self.tx.queue,
            &mut self.muxer,
            self.interrupt.as_ref(),
            &mut self.scratch,
        );
        let rx = process_rx(
            &self.mem,
            &mut self.rx.queue,
            &mut self.muxer,
            self.interrupt.as_ref(),
            &mut self.scratch,
        );
        let (tx, rx) = match (tx, rx) {
            (Ok(tx), Ok(rx)) => (tx, rx),
            (Err(e), _) | (_, Err(e)) => {
                give_up("virtio-vsock", &e, self.interrupt.as_ref());
                self.broken = true;
                return;
            }
        };
        // Bounded work per wakeup: come back through the notification so the
        // kill eventfd and the sockets get a turn in between.
        if tx.more_pending || (tx.detail.paused && self.muxer.tx_ready()) {
            rearm(&self.tx.notify);
        }
        if rx.more_pending && self.muxer.has_rx() {
            rearm(&self.rx.notify);
        }
    }

    fn apply_fd_ops(&mut self, ops: &mut EventOps) {
        self.muxer.apply_fd_ops(|fd_op| {
            let result = match fd_op {
                FdOp::Add { fd, token, events } => {
                    ops.add(Events::with_data_raw(fd, token, events))
                }
                FdOp::Modify { fd, token, events } => {
                    ops.modify(Events::with_data_raw(fd, token, events))
                }
                FdOp::Remove { fd } => ops.remove(Events::empty_raw(fd)),
            };
            if let Err(e) = result {
                error!("virtio-vsock: cannot update the event loop ({fd_op:?}): {e}");
            }
        });
    }
}

fn rearm(notify: &EventFd) {
    if let Err(e) = notify.write(1) {
        error!("virtio-vsock: cannot re-arm a queue: {e}");
    }
}

impl MutEventSubscriber for VsockHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            // EAGAIN means a spurious wakeup: pump anyway, it is cheap.
            RX_NOTIFIED => {
                let _ = self.rx.notify.read();
            }
            TX_NOTIFIED => {
                let _ = self.tx.notify.read();
            }
            token => self.muxer.on_event(token, events.event_set()),
        }
        self.pump();
        self.apply_fd_ops(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (queue, token) in [(&self.rx, RX_NOTIFIED), (&self.tx, TX_NOTIFIED)] {
            if let Err(e) = ops.add(Events::with_data(&queue.notify, token, EventSet::IN)) {
                error!("virtio-vsock: cannot watch queue notifications: {e}");
            }
        }
        self.apply_fd_ops(ops);
    }
}
