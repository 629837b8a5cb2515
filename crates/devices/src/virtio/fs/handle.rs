//! The host's view of a share's daemon, valid after the device moved into
//! its transport.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};

/// What the share's virtiofsd is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    /// No daemon: after a reset, until the next activation starts one.
    Stopped,
    /// Running as process `pid`.
    Running {
        /// Its process id (and process group id).
        pid: u32,
    },
    /// It died while the guest used it; requests now fail with EIO.
    Died {
        /// Its process id.
        pid: u32,
        /// How it ended (`None` if it could not be reaped).
        status: Option<ExitStatus>,
    },
}

#[derive(Debug)]
pub(crate) struct Shared {
    tag: String,
    socket: PathBuf,
    state: Mutex<DaemonState>,
}

impl Shared {
    pub(crate) fn new(tag: &str, socket: PathBuf) -> Self {
        Shared {
            tag: tag.to_owned(),
            socket,
            state: Mutex::new(DaemonState::Stopped),
        }
    }

    pub(crate) fn set(&self, state: DaemonState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    fn get(&self) -> DaemonState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Watches a [`VirtioFs`](super::VirtioFs) from the host.
#[derive(Debug, Clone)]
pub struct FsHandle {
    shared: Arc<Shared>,
}

impl FsHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        FsHandle { shared }
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.shared.tag
    }

    /// The vhost-user socket the daemon listens on while it runs.
    pub fn socket_path(&self) -> &Path {
        &self.shared.socket
    }

    /// The daemon's state now.
    pub fn state(&self) -> DaemonState {
        self.shared.get()
    }

    /// The running daemon's pid.
    pub fn daemon_pid(&self) -> Option<u32> {
        match self.state() {
            DaemonState::Running { pid } => Some(pid),
            _ => None,
        }
    }
}
