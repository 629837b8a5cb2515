//! The virtio-net event subscriber: maps the two queue notifications, the
//! backend's fd and the backend's timer to one call, [`NetHandler::pump`],
//! which moves frames both ways. It runs on the device's
//! [`Worker`](crate::virtio::worker::Worker) thread.
//!
//! The backend's fd is level-triggered. While a frame waits for receive
//! buffers the guest does not post, the fd is taken out of the loop: host
//! work would only produce more frames the guest cannot take, and a
//! backend that leaves its fd readable must not spin the thread. The
//! guest's next receive notification brings it back.

use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::{error, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::rx::{process_rx, RxState};
use super::tx::{process_tx, TxState};
use super::{FrameBackend, Negotiated};
use crate::virtio::queue::give_up;
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt};

/// Token of the receive queue's notification.
const RX_NOTIFIED: u32 = 0;
/// Token of the transmit queue's notification.
const TX_NOTIFIED: u32 = 1;
/// Token of the backend's fd.
const BACKEND: u32 = 2;
/// Token of the poll timer.
const TIMER: u32 = 3;

/// A timer of zero would disarm the timerfd: "now" is this soon.
const MIN_DELAY: Duration = Duration::from_micros(1);

/// The running half of a virtio-net device.
pub struct NetHandler<B> {
    mem: GuestMemory,
    rx: ActiveQueue,
    tx: ActiveQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    backend: B,
    rx_state: RxState,
    tx_state: TxState,
    /// Fires when the backend asked to be polled ([`FrameBackend::poll_delay`]).
    /// Never read: every pump re-arms or clears it, which resets it.
    timer: TimerFd,
    /// The backend's fd is in the event loop.
    backend_registered: bool,
    /// The backend's fd is watched for input (not paused).
    backend_watched: bool,
    /// A queue failed for good and the driver was asked for a reset; only
    /// that reset brings the device back.
    broken: bool,
}

impl<B: FrameBackend> NetHandler<B> {
    /// A handler serving `[rx, tx]` for `backend`, for a driver that
    /// acknowledged `acked_features` (and `mtu`, if it took VIRTIO_NET_F_MTU).
    pub fn new(
        mem: GuestMemory,
        [rx, tx]: [ActiveQueue; 2],
        interrupt: Arc<dyn VirtioInterrupt>,
        backend: B,
        timer: TimerFd,
        acked_features: u64,
        mtu: Option<u16>,
    ) -> Self {
        let negotiated = Negotiated::from_features(acked_features);
        NetHandler {
            mem,
            rx,
            tx,
            interrupt,
            backend,
            rx_state: RxState::new(negotiated, mtu),
            tx_state: TxState::new(negotiated),
            timer,
            backend_registered: false,
            backend_watched: false,
            broken: false,
        }
    }

    /// Gives the backend back (on reset). A frame taken from it but not
    /// yet delivered is dropped with the driver it was for.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Moves frames both ways as far as buffers allow, then lets the
    /// backend work and arms its timer.
    pub fn pump(&mut self, ops: &mut EventOps) {
        if self.broken {
            return;
        }
        let tx = process_tx(
            &self.mem,
            &mut self.tx.queue,
            &mut self.backend,
            self.interrupt.as_ref(),
            &mut self.tx_state,
        );
        self.backend.poll();
        let rx = process_rx(
            &self.mem,
            &mut self.rx.queue,
            &mut self.backend,
            self.interrupt.as_ref(),
            &mut self.rx_state,
        );
        let (tx, rx) = match (tx, rx) {
            (Ok(tx), Ok(rx)) => (tx, rx),
            (Err(e), _) | (_, Err(e)) => {
                give_up("virtio-net", &e, self.interrupt.as_ref());
                self.stop(ops);
                return;
            }
        };
        // Bounded work per wakeup: come back through the notification so
        // the kill eventfd and the backend get a turn in between.
        if tx.more_pending {
            rearm(&self.tx.notify);
        }
        // After frames went out the backend may have more once polled
        // (room in its queue for host data): one more round, which ends
        // as soon as a round delivers nothing.
        if rx.more_pending || (rx.detail.frames > 0 && !rx.detail.blocked) {
            rearm(&self.rx.notify);
        }
        self.watch_backend(ops, !rx.detail.blocked);
        self.arm_timer();
    }

    fn arm_timer(&mut self) {
        let result = match self.backend.poll_delay() {
            Some(delay) => self.timer.reset(delay.max(MIN_DELAY), None),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            error!("virtio-net: cannot arm the poll timer: {e}");
        }
    }

    /// Watches the backend's fd for input, or pauses it.
    fn watch_backend(&mut self, ops: &mut EventOps, watch: bool) {
        if !self.backend_registered || watch == self.backend_watched {
            return;
        }
        let events = if watch {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        let fd = self.backend.as_raw_fd();
        match ops.modify(Events::with_data_raw(fd, BACKEND, events)) {
            Ok(()) => self.backend_watched = watch,
            Err(e) => error!("virtio-net: cannot update the backend's watch: {e}"),
        }
    }

    /// The queues failed: stop every source of events but the
    /// notifications (drained and ignored until reset).
    fn stop(&mut self, ops: &mut EventOps) {
        self.broken = true;
        if self.backend_registered {
            let fd = self.backend.as_raw_fd();
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                error!("virtio-net: cannot stop watching the backend: {e}");
            }
            self.backend_registered = false;
        }
        if let Err(e) = self.timer.clear() {
            error!("virtio-net: cannot stop the poll timer: {e}");
        }
    }
}

fn rearm(notify: &EventFd) {
    if let Err(e) = notify.write(1) {
        error!("virtio-net: cannot re-arm a queue: {e}");
    }
}

impl<B: FrameBackend> MutEventSubscriber for NetHandler<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            // EAGAIN means a spurious wakeup: pump anyway, it is cheap.
            RX_NOTIFIED => {
                let _ = self.rx.notify.read();
            }
            TX_NOTIFIED => {
                let _ = self.tx.notify.read();
            }
            // The pump polls the backend, and re-arms (so resets) the timer.
            BACKEND | TIMER => {}
            other => warn!("virtio-net: event with unknown token {other}"),
        }
        self.pump(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (queue, token) in [(&self.rx, RX_NOTIFIED), (&self.tx, TX_NOTIFIED)] {
            if let Err(e) = ops.add(Events::with_data(&queue.notify, token, EventSet::IN)) {
                error!("virtio-net: cannot watch queue notifications: {e}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(&self.timer, TIMER, EventSet::IN)) {
            error!("virtio-net: cannot watch the poll timer: {e}");
        }
        let fd = self.backend.as_raw_fd();
        match ops.add(Events::with_data_raw(fd, BACKEND, EventSet::IN)) {
            Ok(()) => {
                self.backend_registered = true;
                self.backend_watched = true;
            }
            // Still served on every queue notification and timer.
            Err(e) => warn!("virtio-net: cannot watch the backend's fd: {e}"),
        }
        // Frames the backend kept across a reset need no event to go out.
        rearm(&self.rx.notify);
    }
}
