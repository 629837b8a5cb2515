//! The activation thread: it runs the device activations (and the
//! clean-up after resets) that virtio-mmio transports defer, so vCPU
//! threads never start threads or processes (see
//! `agentvm_devices::virtio::transport::mmio`). A transport signals the
//! shared eventfd; the thread wakes, finds every transport with pending
//! work and completes it.
//!
//! The thread confines itself before it waits for the first event, and
//! hands the device-thread hook on to the workers it starts, so each
//! worker installs its own filter on top.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use agentvm_devices::virtio::transport::mmio::MmioTransport;
use vmm_sys_util::eventfd::EventFd;

use crate::hotplug::Hotplug;
use crate::seccomp::{self, SeccompError, SeccompLevel, ThreadKind};

/// Errors while starting the activation thread.
#[derive(Debug, thiserror::Error)]
pub enum ActivatorError {
    /// The wake-up eventfd could not be shared with the thread.
    #[error("Cannot share the activation eventfd")]
    Event(#[source] io::Error),
    /// The OS refused to start the thread.
    #[error("Cannot start the activation thread")]
    Spawn(#[source] io::Error),
    /// The thread could not confine itself.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// How the activation thread confines itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Confinement {
    /// The VM's seccomp level.
    pub level: SeccompLevel,
    /// Whether a device may start virtiofsd when it is activated.
    pub launches_daemons: bool,
}

/// A running activation thread.
pub(crate) struct Activator {
    event: EventFd,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Activator {
    /// Starts the thread for `transports` and the hot-plug requests of
    /// `hotplug`, woken by `event` (the eventfd every transport's
    /// `defer_activation` and the hot-plug queue got a copy of). Returns
    /// once the thread is confined.
    pub fn spawn(
        transports: Vec<Arc<Mutex<MmioTransport>>>,
        hotplug: Option<Arc<Hotplug>>,
        event: &EventFd,
        confinement: Confinement,
    ) -> Result<Self, ActivatorError> {
        let wake = event.try_clone().map_err(ActivatorError::Event)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("activation".into())
            .stack_size(agentvm_devices::thread::STACK_SIZE)
            .spawn(move || {
                let kind = ThreadKind::Activation {
                    launches_daemons: confinement.launches_daemons,
                };
                agentvm_devices::thread::set_start_hook(seccomp::device_thread_hook(
                    confinement.level,
                ));
                let confined = seccomp::install(confinement.level, kind);
                let ok = confined.is_ok();
                // The spawner waits for exactly this message.
                let _ = ready_tx.send(confined);
                if ok {
                    serve(&wake, &stop, &transports, hotplug.as_deref());
                }
            })
            .map_err(ActivatorError::Spawn)?;
        let activator = Activator {
            event: event.try_clone().map_err(ActivatorError::Event)?,
            stopping,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(activator),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ActivatorError::Spawn(io::Error::other(
                "the activation thread ended while starting",
            ))),
        }
    }

    /// Ends the thread once it has finished what it is doing.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.event.write(1) {
            // The thread would never wake to see the flag: leave it.
            tracing::error!("cannot wake the activation thread to stop it: {e}");
            return;
        }
        if thread.join().is_err() {
            tracing::error!("the activation thread panicked");
        }
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Completes pending work and hot-plug requests each time `wake` fires,
/// until `stopping`.
fn serve(
    wake: &EventFd,
    stopping: &AtomicBool,
    transports: &[Arc<Mutex<MmioTransport>>],
    hotplug: Option<&Hotplug>,
) {
    // Start-up ends when the guest has driven every device to DRIVER_OK:
    // the code that building and activating needed is then dropped from
    // the resident set once more (the VMM did so when the VM started).
    // Once only, so a guest that resets its devices cannot make it work.
    let mut startup_released = false;
    loop {
        // A blocking eventfd: read returns once some transport (or stop)
        // wrote to it, with all writes since the last read summed.
        if let Err(e) = wake.read() {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("activation thread: cannot read its eventfd: {e}");
            return;
        }
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        for transport in transports {
            let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
            if t.has_pending() {
                t.complete_pending();
            }
        }
        if let Some(hotplug) = hotplug {
            hotplug.run_pending();
        }
        if !startup_released && all_activated(transports) {
            crate::footprint::release_startup_code();
            startup_released = true;
        }
    }
}

/// Whether every transport's device is activated.
fn all_activated(transports: &[Arc<Mutex<MmioTransport>>]) -> bool {
    transports
        .iter()
        .all(|t| t.lock().unwrap_or_else(|p| p.into_inner()).is_activated())
}
