//! The virtio-fs event subscriber, on the device's
//! [`Worker`](crate::virtio::worker::Worker) thread: fds and tokens only.
//!
//! While virtiofsd runs, it relays each queue's call eventfd (the backend
//! used buffers) to the guest as a queue interrupt, and watches the
//! vhost-user socket and the daemon's pidfd. When either says the daemon
//! is gone, it logs the death, reaps the process, and serves the queues
//! itself through [`queue::fail_requests`]: every request gets EIO.

use std::os::fd::AsRawFd;
use std::process::ExitStatus;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::{debug, error, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::handle::{DaemonState, Shared};
use super::queue::{self, fail_requests, take_over};
use super::session::Session;
use crate::virtio::queue::give_up;
use crate::virtio::{ActiveQueue, GuestMemory, InterruptKind, VirtioInterrupt};

/// Tokens: call eventfd `i` is `CALL + i`, notify eventfd `i` (watched
/// only once the daemon is gone) is `NOTIFY + i`.
const CALL: u32 = 0;
const NOTIFY: u32 = 0x100;
const SOCKET: u32 = 0x1000;
const EXITED: u32 = 0x1001;

/// The running half of a virtio-fs device.
pub struct FsHandler {
    tag: String,
    session: Option<Session>,
    mem: GuestMemory,
    queues: Vec<ActiveQueue>,
    calls: Vec<EventFd>,
    interrupt: Arc<dyn VirtioInterrupt>,
    shared: Arc<Shared>,
    /// The fallback path failed for good and the driver was asked for a
    /// reset; the queues stay silent until then.
    broken: bool,
}

impl FsHandler {
    /// A handler for an activated `session` serving `queues`, with one call
    /// eventfd per queue (the ones the backend was given).
    pub(crate) fn new(
        tag: &str,
        session: Session,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        calls: Vec<EventFd>,
        interrupt: Arc<dyn VirtioInterrupt>,
        shared: Arc<Shared>,
    ) -> Self {
        FsHandler {
            tag: tag.to_owned(),
            session: Some(session),
            mem,
            queues,
            calls,
            interrupt,
            shared,
            broken: false,
        }
    }

    fn on_call(&mut self, index: u16) {
        let Some(call) = self.calls.get(usize::from(index)) else {
            return;
        };
        // EAGAIN: a spurious wakeup, nothing to relay.
        if call.read().is_ok() {
            if let Err(e) = self.interrupt.trigger(InterruptKind::Queue(index)) {
                warn!("virtio-fs: cannot signal queue {index}: {e}");
            }
        }
    }

    /// The daemon is gone (or its connection is): log, reap, take over.
    fn on_daemon_gone(&mut self, ops: &mut EventOps) {
        let Some(session) = self.session.take() else {
            return;
        };
        // The fds close with the session; stop watching them first.
        let pidfd = session.pidfd().map(|fd| (fd.as_raw_fd(), EXITED));
        for (fd, token) in std::iter::once((session.socket_fd(), SOCKET)).chain(pidfd) {
            if let Err(e) = ops.remove(Events::with_data_raw(fd, token, EventSet::IN)) {
                debug!("virtio-fs: cannot unwatch token {token}: {e}");
            }
        }
        let pid = session.pid();
        let status = session.shutdown();
        error!(
            tag = %self.tag,
            pid,
            status = %describe(status),
            "virtio-fs: virtiofsd of share {} died ({}); the guest's requests to it now fail with EIO",
            self.tag,
            describe(status),
        );
        self.shared.set(DaemonState::Died { pid, status });
        // Completions the daemon signalled just before dying.
        for index in 0..self.calls.len() as u16 {
            self.on_call(index);
        }
        for (token, active) in (NOTIFY..).zip(&self.queues) {
            if let Err(e) = ops.add(Events::with_data(&active.notify, token, EventSet::IN)) {
                error!("virtio-fs: cannot watch queue {}: {e}", token - NOTIFY);
            }
        }
        for (index, active) in (0..).zip(&mut self.queues) {
            if let Err(e) = take_over(&self.mem, &mut active.queue, index) {
                give_up("virtio-fs", &e, self.interrupt.as_ref());
                self.broken = true;
                break;
            }
        }
        for index in 0..self.queues.len() as u16 {
            self.fail_queue(index);
        }
    }

    fn on_notify(&mut self, index: u16) {
        let Some(active) = self.queues.get(usize::from(index)) else {
            return;
        };
        // EAGAIN means a spurious wakeup: process anyway, it is cheap.
        let _ = active.notify.read();
        self.fail_queue(index);
    }

    fn fail_queue(&mut self, index: u16) {
        if self.broken || self.session.is_some() {
            return;
        }
        let Some(active) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        match fail_requests(
            &self.mem,
            &mut active.queue,
            index,
            libc::EIO,
            self.interrupt.as_ref(),
        ) {
            // Bounded work per wakeup: re-arm ourselves so the kill eventfd
            // gets a turn between batches.
            Ok(queue::Progress {
                more_pending: true, ..
            }) => {
                if let Err(e) = active.notify.write(1) {
                    error!("virtio-fs: cannot re-arm queue {index}: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                give_up("virtio-fs", &e, self.interrupt.as_ref());
                self.broken = true;
            }
        }
    }
}

/// "exit status: 1", "signal: 9 (SIGKILL)", or why there is none.
fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
}

impl MutEventSubscriber for FsHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            SOCKET | EXITED => self.on_daemon_gone(ops),
            token if token >= NOTIFY => match u16::try_from(token - NOTIFY) {
                Ok(index) => self.on_notify(index),
                Err(_) => warn!("virtio-fs: event with unknown token {token}"),
            },
            // Below NOTIFY: a call eventfd (CALL is 0).
            token => match u16::try_from(token) {
                Ok(index) => self.on_call(index),
                Err(_) => warn!("virtio-fs: event with unknown token {token}"),
            },
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut fds: Vec<(i32, u32)> = self
            .calls
            .iter()
            .zip(CALL..)
            .map(|(fd, token)| (fd.as_raw_fd(), token))
            .collect();
        if let Some(session) = &self.session {
            fds.push((session.socket_fd(), SOCKET));
            if let Some(pidfd) = session.pidfd() {
                fds.push((pidfd.as_raw_fd(), EXITED));
            }
        }
        for (fd, token) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                error!("virtio-fs: cannot watch event {token}: {e}");
            }
        }
    }
}
