//! A started share: one virtiofsd process and our vhost-user connection to
//! it, past the first half of the handshake.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tracing::warn;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{BackendError, VhostUserFs};
use super::config::FsConfig;
use super::daemon::{Daemon, DaemonError, Sandbox, START_TIMEOUT, STOP_GRACE};
use super::locate::Virtiofsd;
use crate::virtio::{ActiveQueue, GuestMemory};

/// How long any one vhost-user reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a started daemon's socket may refuse connections.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a share could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process did not come up.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The handshake failed.
    #[error("Handshake with virtiofsd failed")]
    Backend(#[from] BackendError),
}

/// A daemon and its connection.
pub(crate) struct Session {
    // Field order matters: the connection closes first, so the daemon
    // exits by itself before `Daemon`'s drop would have to kill it.
    backend: VhostUserFs,
    /// `None` for a daemon someone else started ([`Session::attach`]).
    daemon: Option<Daemon>,
    pid: u32,
}

/// A daemon started in the first sandbox mode of [`Sandbox::choices`],
/// not yet connected to ([`Session::spawn`]).
pub(crate) struct Spawned {
    choices: Vec<Sandbox>,
    first: Option<Result<Daemon, DaemonError>>,
}

impl Session {
    /// Starts `bin` for `config` (validated) and connects. Tries the
    /// sandbox modes of [`Sandbox::choices`] in order: a daemon that dies
    /// during startup in `namespace` mode is started again in the next.
    pub(crate) fn start(bin: &Virtiofsd, config: &FsConfig) -> Result<Self, StartError> {
        Self::spawn(bin, config).connect(bin, config)
    }

    /// The first half of [`Session::start`]: starts the process and
    /// returns at once, so that several shares' daemons start side by side.
    pub(crate) fn spawn(bin: &Virtiofsd, config: &FsConfig) -> Spawned {
        let choices = Sandbox::choices(config.allow_unsandboxed);
        let first = choices
            .first()
            .map(|&sandbox| Daemon::spawn(bin, config, sandbox));
        Spawned { choices, first }
    }
}

impl Spawned {
    /// The second half of [`Session::start`]: waits for the daemon
    /// [`Session::spawn`] started (`bin` for `config`, the same) and
    /// connects, falling back to the next sandbox mode as `start` does.
    pub(crate) fn connect(
        mut self,
        bin: &Virtiofsd,
        config: &FsConfig,
    ) -> Result<Session, StartError> {
        let no_sandbox = || DaemonError::NoSandbox {
            tag: config.tag.clone(),
        };
        let mut tried = self.choices.iter().peekable();
        while let Some(&sandbox) = tried.next() {
            let daemon = match self.first.take() {
                Some(spawned) => spawned,
                None => Daemon::spawn(bin, config, sandbox),
            };
            match daemon
                .map_err(StartError::from)
                .and_then(Session::connect_to)
            {
                Ok(session) => return Ok(session),
                Err(StartError::Daemon(e @ DaemonError::Exited { .. }))
                    if sandbox == Sandbox::Namespace =>
                {
                    Sandbox::namespace_failed();
                    let Some(next) = tried.peek() else {
                        warn!(
                            tag = %config.tag,
                            "virtio-fs: virtiofsd cannot use --sandbox namespace here ({e})"
                        );
                        return Err(no_sandbox().into());
                    };
                    warn!(
                        tag = %config.tag,
                        "virtio-fs: virtiofsd cannot use --sandbox namespace here ({e}); \
                         using --sandbox {next}"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(no_sandbox().into())
    }
}

impl Session {
    fn connect_to(mut daemon: Daemon) -> Result<Self, StartError> {
        let stream = daemon.connect(START_TIMEOUT)?;
        match VhostUserFs::connect(stream, REPLY_TIMEOUT) {
            Ok(backend) => Ok(Session {
                backend,
                pid: daemon.pid(),
                daemon: Some(daemon),
            }),
            // A daemon that died mid-handshake explains the failure better
            // than the broken socket does.
            Err(_) if daemon.has_exited(STOP_GRACE) => Err(daemon.exited_error().into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Connects to a daemon started elsewhere (a live mount's, started by
    /// the CLI) listening on `socket`; `pid` is what it says its pid is
    /// (shown, never signalled). The daemon ends by itself when the
    /// connection closes.
    pub(crate) fn attach(socket: &Path, pid: u32) -> Result<Self, StartError> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                // Bound but not yet listening.
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(DaemonError::Connect {
                        path: socket.to_owned(),
                        source,
                    }
                    .into())
                }
            }
        };
        let backend = VhostUserFs::connect(stream, REPLY_TIMEOUT)?;
        Ok(Session {
            backend,
            daemon: None,
            pid,
        })
    }

    /// The virtio features to offer the guest.
    pub(crate) fn guest_features(&self) -> u64 {
        self.backend.guest_features()
    }

    /// Whether the daemon has exited, waiting up to `timeout` for it.
    pub(crate) fn has_exited(&self, timeout: Duration) -> bool {
        self.daemon.as_ref().is_some_and(|d| d.has_exited(timeout))
    }

    /// The daemon's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The vhost-user socket (readable once the daemon is gone).
    pub(crate) fn socket_fd(&self) -> RawFd {
        self.backend.socket_fd()
    }

    /// The daemon's pidfd (readable once it exited), when it is ours.
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.daemon.as_ref().map(Daemon::pidfd)
    }

    /// The second half of the handshake; see [`VhostUserFs::activate`].
    pub(crate) fn activate(
        &mut self,
        mem: &GuestMemory,
        queues: &[ActiveQueue],
        calls: &[EventFd],
        acked_features: u64,
    ) -> Result<(), BackendError> {
        self.backend.activate(mem, queues, calls, acked_features)
    }

    /// Closes the connection, stops the daemon and tells how it ended.
    pub(crate) fn shutdown(self) -> Option<ExitStatus> {
        let Session {
            backend, daemon, ..
        } = self;
        drop(backend);
        daemon.and_then(|mut d| d.stop())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn a_namespace_failure_falls_back_and_is_remembered() {
        let tmp = tempfile::tempdir().unwrap();
        // A stand-in that dies in namespace mode, as virtiofsd does where
        // namespaces are not allowed, and says what it got otherwise.
        let bin = tmp.path().join("fake-virtiofsd");
        fs::write(
            &bin,
            "#!/bin/sh\n\
             case \"$*\" in *--sandbox=namespace*) echo 'ERROR unshare: EPERM' >&2; exit 1;; esac\n\
             echo \"got $*\" >&2\n\
             exit 3\n",
        )
        .unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let fake = Virtiofsd {
            path: bin,
            version: "0".into(),
        };
        let mut config = FsConfig::new("fallback", tmp.path(), tmp.path());
        config.allow_unsandboxed = true;
        let fallback = *Sandbox::choices(true).last().unwrap();

        let err = match Session::start(&fake, &config) {
            Err(StartError::Daemon(e)) => e,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("the fake daemon cannot serve"),
        };
        // The error is the fallback attempt's, not the namespace one's.
        match &err {
            DaemonError::Exited { status, stderr, .. } => {
                assert_eq!(status.into_raw() >> 8, 3, "{err}");
                assert!(stderr.contains(&format!("--sandbox={fallback}")), "{err}");
            }
            other => panic!("unexpected error {other}"),
        }
        // Later shares go straight to the fallback.
        assert_eq!(Sandbox::choices(true), [fallback]);
        // Both attempts cleaned up after themselves.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
