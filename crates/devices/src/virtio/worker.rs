//! The thread a device runs its queue processing on, off the vCPU threads.
//!
//! A device builds an event subscriber (its `handler.rs`: fds and tokens
//! only) at activation and hands it to [`Worker::spawn`]. The worker runs an
//! [`EventManager`] for that one subscriber on a named thread, next to a kill
//! eventfd of its own. [`Worker::stop`] (on reset) and `Drop` signal the kill
//! eventfd and join the thread, so neither the thread nor any fd the
//! subscriber owns outlives the device. `stop` hands the subscriber back so
//! the device can recover what it lent (a backend, an entropy source).
//!
//! A device keeps its worker in a [`WorkerSlot`]: empty while the device is
//! idle, holding the worker while it runs. The slot refuses a second
//! activation, stops the worker on reset and joins it on drop, so no
//! device repeats that logic.

use std::io;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use tracing::{debug, error};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::thread::{self, DeviceThread, Thread};
use crate::virtio::{ActivateError, InterruptKind, VirtioInterrupt};

/// Errors of a device worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The kill eventfd could not be created.
    #[error("Cannot create the worker's kill eventfd")]
    KillEvent(#[source] io::Error),
    /// The epoll-based event manager could not be created.
    #[error("Cannot create the worker's event manager")]
    EventManager(#[source] event_manager::Error),
    /// The OS refused to start the thread, or its start hook (its seccomp
    /// filter) failed.
    #[error("Cannot spawn worker thread {name}")]
    Spawn {
        /// Name of the thread.
        name: String,
        /// Why the OS refused.
        #[source]
        source: io::Error,
    },
    /// The kill eventfd could not be signalled.
    #[error("Cannot signal worker thread {name} to stop")]
    Kill {
        /// Name of the thread.
        name: String,
        /// Why the write failed.
        #[source]
        source: io::Error,
    },
    /// The worker thread panicked; its subscriber is lost.
    #[error("Worker thread {0} panicked")]
    Panicked(String),
    /// The worker's event loop failed before it was stopped.
    #[error("Worker thread {0} ended before it was stopped")]
    Ended(String),
}

/// The device's subscriber plus the worker's kill eventfd.
struct Supervised<S> {
    inner: S,
    kill: EventFd,
    killed: bool,
}

impl<S: MutEventSubscriber> MutEventSubscriber for Supervised<S> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.kill.as_raw_fd() {
            self.killed = true;
            return;
        }
        self.inner.process(events, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.kill, EventSet::IN)) {
            // Without it stop() could never wake the loop; the thread
            // notices on its first round and exits instead.
            error!("worker: cannot watch the kill eventfd: {e}");
            self.killed = true;
        }
        self.inner.init(ops);
    }
}

/// A named thread running one event subscriber until stopped.
///
/// # Example
///
/// ```
/// use agentvm_devices::thread::DeviceThread;
/// use agentvm_devices::virtio::worker::Worker;
/// use event_manager::{EventOps, Events, MutEventSubscriber};
///
/// struct Idle;
/// impl MutEventSubscriber for Idle {
///     fn process(&mut self, _: Events, _: &mut EventOps) {}
///     fn init(&mut self, _: &mut EventOps) {}
/// }
///
/// let worker = Worker::spawn("idle", DeviceThread::Worker(4), Idle, None).unwrap();
/// let _idle: Idle = worker.stop().unwrap();
/// ```
pub struct Worker<S> {
    name: String,
    kill: EventFd,
    thread: Option<Thread<Result<S, WorkerError>>>,
}

impl<S: MutEventSubscriber + Send + 'static> Worker<S> {
    /// Starts `subscriber` on a new thread called `name`, of kind `kind`
    /// for the start hook ([`crate::thread`]). Its `init` runs before this
    /// returns, on the calling thread. If the thread ends without being
    /// stopped (a panic, a broken event loop), it asks the driver for a
    /// reset through `needs_reset`, when given.
    pub fn spawn(
        name: &str,
        kind: DeviceThread,
        subscriber: S,
        needs_reset: Option<Arc<dyn VirtioInterrupt>>,
    ) -> Result<Self, WorkerError> {
        let kill = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::KillEvent)?;
        let thread_kill = kill.try_clone().map_err(WorkerError::KillEvent)?;
        let mut manager = EventManager::new().map_err(WorkerError::EventManager)?;
        let id = manager.add_subscriber(Supervised {
            inner: subscriber,
            kill: thread_kill,
            killed: false,
        });
        let thread_name = name.to_owned();
        let body = move || {
            let outcome = run(&thread_name, manager, id);
            if let (Err(_), Some(interrupt)) = (&outcome, needs_reset) {
                if let Err(e) = interrupt.trigger(InterruptKind::NeedsReset) {
                    error!("worker {thread_name}: cannot ask the driver for a reset: {e}");
                }
            }
            outcome
        };
        let thread = thread::spawn(name, kind, body).map_err(|source| WorkerError::Spawn {
            name: name.to_owned(),
            source,
        })?;
        Ok(Worker {
            name: name.to_owned(),
            kill,
            thread: Some(thread),
        })
    }

    /// Stops the thread, waits for it to end and returns the subscriber.
    pub fn stop(mut self) -> Result<S, WorkerError> {
        match self.thread.take() {
            Some(thread) => self.join(thread),
            // Only `stop` and `drop` take the handle, and both end the worker.
            None => Err(WorkerError::Panicked(self.name.clone())),
        }
    }
}

impl<S> Worker<S> {
    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn join(&self, thread: Thread<Result<S, WorkerError>>) -> Result<S, WorkerError> {
        if let Err(source) = self.kill.write(1) {
            // Joining would hang: the loop never learns it should stop.
            // Leaving the thread detached is the lesser evil.
            return Err(WorkerError::Kill {
                name: self.name.clone(),
                source,
            });
        }
        thread
            .join()
            .map_err(|_| WorkerError::Panicked(self.name.clone()))?
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.join(thread) {
                error!("{e}");
            }
        }
    }
}

/// Where a device keeps its worker: empty while the device is idle.
pub struct WorkerSlot<S> {
    name: &'static str,
    kind: DeviceThread,
    worker: Option<Worker<S>>,
}

impl<S: MutEventSubscriber + Send + 'static> WorkerSlot<S> {
    /// An empty slot for the workers of virtio device type `device_type`,
    /// whose threads (and log lines) are called `name`.
    pub fn new(name: &'static str, device_type: u32) -> Self {
        WorkerSlot {
            name,
            kind: DeviceThread::Worker(device_type),
            worker: None,
        }
    }

    /// Whether a worker runs.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    /// Refuses an activation while a worker runs: call it before taking
    /// anything the worker would get.
    pub fn check_idle(&self) -> Result<(), ActivateError> {
        match self.worker {
            Some(_) => Err(ActivateError::AlreadyActive),
            None => Ok(()),
        }
    }

    /// Starts `subscriber` on a new worker, which asks the driver for a
    /// reset through `interrupt` if it ends unasked (a panic). On failure
    /// the subscriber is dropped, with everything it owns.
    pub fn start(
        &mut self,
        subscriber: S,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.check_idle()?;
        let worker = Worker::spawn(self.name, self.kind, subscriber, Some(interrupt))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    /// Stops the worker, if one runs, and hands its subscriber back.
    /// `None` when the slot was empty or the worker was lost (a panic,
    /// logged here): either way no thread is left.
    pub fn stop(&mut self) -> Option<S> {
        let worker = self.worker.take()?;
        match worker.stop() {
            Ok(subscriber) => Some(subscriber),
            Err(e) => {
                error!("{}: {e}", self.name);
                None
            }
        }
    }
}

/// The thread body: dispatch events until killed, then hand the subscriber
/// back. A panic in the subscriber ends the loop and loses the subscriber;
/// a broken event loop ends it early. Either is an error, so the device is
/// marked as needing a reset.
fn run<S: MutEventSubscriber>(
    name: &str,
    mut manager: EventManager<Supervised<S>>,
    id: event_manager::SubscriberId,
) -> Result<S, WorkerError> {
    let outcome = catch_unwind(AssertUnwindSafe(|| loop {
        match manager.subscriber_mut(id) {
            Ok(s) if s.killed => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                error!("worker {name}: subscriber vanished: {e}");
                return Err(());
            }
        }
        if let Err(e) = manager.run() {
            // epoll_wait only fails on a broken epoll fd: nothing to retry.
            error!("worker {name}: event loop failed: {e}");
            return Err(());
        }
    }));
    match outcome {
        Ok(Ok(())) => debug!("worker {name}: stopped"),
        Ok(Err(())) => {
            error!("worker {name}: ended early; the device needs a reset");
            return Err(WorkerError::Ended(name.to_owned()));
        }
        Err(_) => {
            error!("worker {name}: panicked; the device needs a reset");
            return Err(WorkerError::Panicked(name.to_owned()));
        }
    }
    match manager.remove_subscriber(id) {
        Ok(supervised) => Ok(supervised.inner),
        Err(_) => Err(WorkerError::Ended(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use super::*;
    use crate::virtio::test_support::Recorder;

    /// Counts notifications and reports each one on a channel.
    struct Counter {
        evt: EventFd,
        seen: usize,
        tx: mpsc::Sender<usize>,
        alive: Arc<AtomicUsize>,
        panic_on: Option<usize>,
    }

    impl Counter {
        fn new(tx: mpsc::Sender<usize>, alive: Arc<AtomicUsize>) -> Self {
            alive.fetch_add(1, Ordering::SeqCst);
            let evt = EventFd::new(EFD_NONBLOCK).unwrap();
            Counter {
                evt,
                seen: 0,
                tx,
                alive,
                panic_on: None,
            }
        }
    }

    impl Drop for Counter {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl MutEventSubscriber for Counter {
        fn process(&mut self, _: Events, _: &mut EventOps) {
            let _ = self.evt.read();
            self.seen += 1;
            if self.panic_on == Some(self.seen) {
                panic!("counter asked to panic");
            }
            let _ = self.tx.send(self.seen);
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::with_data(&self.evt, 7, EventSet::IN))
                .unwrap();
        }
    }

    const HANG_GUARD: Duration = Duration::from_secs(10);

    #[test]
    fn runs_subscriber_and_returns_it_on_stop() {
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicUsize::new(0));
        let counter = Counter::new(tx, alive.clone());
        let evt = counter.evt.try_clone().unwrap();
        let worker = Worker::spawn("test-worker", DeviceThread::Worker(4), counter, None).unwrap();
        assert_eq!(worker.name(), "test-worker");

        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(HANG_GUARD).unwrap(), 1);
        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(HANG_GUARD).unwrap(), 2);

        let counter = worker.stop().unwrap();
        assert_eq!(counter.seen, 2);
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        drop(counter);
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn drop_joins_the_thread_and_drops_the_subscriber() {
        let (tx, _rx) = mpsc::channel();
        let alive = Arc::new(AtomicUsize::new(0));
        let worker = Worker::spawn(
            "test-drop",
            DeviceThread::Worker(4),
            Counter::new(tx, alive.clone()),
            None,
        )
        .unwrap();
        drop(worker);
        // Join happened inside drop: the subscriber is gone with the thread.
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn panicking_subscriber_is_reported() {
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicUsize::new(0));
        let mut counter = Counter::new(tx, alive.clone());
        counter.panic_on = Some(2);
        let evt = counter.evt.try_clone().unwrap();
        let worker = Worker::spawn("test-panic", DeviceThread::Worker(4), counter, None).unwrap();
        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(HANG_GUARD).unwrap(), 1);
        evt.write(1).unwrap();
        // The thread panics on the second event; stop still returns.
        assert!(matches!(worker.stop(), Err(WorkerError::Panicked(n)) if n == "test-panic"));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn slot_refuses_a_second_start_and_hands_the_subscriber_back() {
        let (tx, _rx) = mpsc::channel();
        let alive = Arc::new(AtomicUsize::new(0));
        let mut slot = WorkerSlot::new("test-slot", 4);
        assert!(!slot.is_active());
        assert!(slot.stop().is_none(), "stopping an empty slot is fine");
        let irq = Arc::new(Recorder::default());
        slot.start(Counter::new(tx.clone(), alive.clone()), irq.clone())
            .unwrap();
        assert!(slot.is_active());
        assert!(matches!(
            slot.check_idle(),
            Err(ActivateError::AlreadyActive)
        ));
        let second = slot.start(Counter::new(tx.clone(), alive.clone()), irq.clone());
        assert!(matches!(second, Err(ActivateError::AlreadyActive)));
        // The refused subscriber was dropped; the running one lives.
        assert_eq!(alive.load(Ordering::SeqCst), 1);

        let counter = slot.stop().unwrap();
        assert!(!slot.is_active());
        assert!(slot.check_idle().is_ok());
        drop(counter);
        assert_eq!(alive.load(Ordering::SeqCst), 0);

        slot.start(Counter::new(tx, alive.clone()), irq.clone())
            .unwrap();
        drop(slot);
        // Dropping the slot joined the worker and dropped its subscriber.
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        // Stopped workers never ask for a reset.
        assert!(irq.0.lock().unwrap().is_empty());
    }

    #[test]
    fn slot_reports_a_lost_worker_as_none() {
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicUsize::new(0));
        let mut counter = Counter::new(tx, alive.clone());
        counter.panic_on = Some(1);
        let evt = counter.evt.try_clone().unwrap();
        let mut slot = WorkerSlot::new("test-slot-panic", 4);
        let irq = Arc::new(Recorder::default());
        slot.start(counter, irq.clone()).unwrap();
        evt.write(1).unwrap();
        // The thread panics on its first event and sends nothing.
        assert!(rx.recv_timeout(HANG_GUARD).is_err());
        assert!(slot.stop().is_none());
        assert!(!slot.is_active());
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        // The dying thread asked the driver for a reset.
        assert_eq!(*irq.0.lock().unwrap(), [InterruptKind::NeedsReset]);
    }
}
