//! A virtiofsd that outlives the process that starts it: for live mounts,
//! where the (unconfined) CLI starts the daemon for a new host directory
//! and the VMM, confined by Landlock and seccomp, only connects to its
//! socket.
//!
//! The daemon is started exactly as a share's ([`daemon::command`]: same
//! options, environment, filter and sandbox fallback), except that its
//! stderr goes to a log file instead of a pipe to us, since we are gone
//! long before it ends. It ends by itself when its vhost-user connection
//! closes; [`stop_detached`] makes sure of it.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::config::FsConfig;
use super::daemon::{
    self, kill_group, pidfd_open, remove_stale_socket, wait_readable, DaemonError, Sandbox,
    START_TIMEOUT, STOP_GRACE,
};
use super::locate::Virtiofsd;
use super::FsError;

/// How long a daemon whose socket appeared is watched for an early exit.
const SETTLE: Duration = Duration::from_millis(300);

/// A started detached daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// Its process id (and process group id).
    pub pid: u32,
    /// The sandbox it runs in.
    pub sandbox: Sandbox,
    /// Its vhost-user socket.
    pub socket: PathBuf,
}

/// Starts virtiofsd for `config` (validated here), its stderr appended to
/// `log` (created owner-only), and returns once its socket exists. Nobody
/// has connected to it yet.
pub fn launch_detached(
    bin: &Virtiofsd,
    config: &FsConfig,
    log: &Path,
) -> Result<Detached, FsError> {
    config.validate()?;
    let start = |source| FsError::Start {
        tag: config.tag.clone(),
        source: super::StartError::Daemon(source),
    };
    let choices = Sandbox::choices(config.allow_unsandboxed);
    for (i, &sandbox) in choices.iter().enumerate() {
        match launch_in(bin, config, log, sandbox) {
            Ok(d) => return Ok(d),
            Err(e @ DaemonError::Exited { .. })
                if sandbox == Sandbox::Namespace && i + 1 < choices.len() =>
            {
                Sandbox::namespace_failed();
                warn!(tag = %config.tag, "virtio-fs: virtiofsd cannot use --sandbox namespace here ({e})");
            }
            Err(e) => return Err(start(e)),
        }
    }
    Err(start(DaemonError::NoSandbox {
        tag: config.tag.clone(),
    }))
}

/// Starts virtiofsd for `config` (validated) in `sandbox` mode only; see
/// [`launch_detached`]. A daemon whose sandbox set-up fails may do so
/// after its socket appeared: the caller whose connection then fails
/// asks [`Detached::has_exited`] and tries the next mode
/// ([`Sandbox::choices`]).
pub fn launch_detached_in(
    bin: &Virtiofsd,
    config: &FsConfig,
    log: &Path,
    sandbox: Sandbox,
) -> Result<Detached, DaemonError> {
    launch_in(bin, config, log, sandbox)
}

impl Detached {
    /// Whether the daemon has exited, waiting up to `timeout` for it.
    pub fn has_exited(&self, timeout: Duration) -> bool {
        match pidfd_open(self.pid) {
            Ok(fd) => wait_readable(fd.as_fd(), timeout),
            Err(_) => true,
        }
    }
}

fn launch_in(
    bin: &Virtiofsd,
    config: &FsConfig,
    log: &Path,
    sandbox: Sandbox,
) -> Result<Detached, DaemonError> {
    let socket = config.socket_path();
    remove_stale_socket(&socket)?;
    let log_file = open_log(log).map_err(|source| DaemonError::Spawn {
        path: log.to_owned(),
        source,
    })?;
    let mut cmd = daemon::command(bin, config, &socket, sandbox, Stdio::from(log_file))?;
    debug!(tag = %config.tag, ?cmd, "virtio-fs: starting a detached virtiofsd {}", bin.version);
    let (mut child, pidfd) = daemon::spawn(&mut cmd, bin)?;
    let pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // The socket comes before the sandbox: a daemon that cannot set
        // its sandbox up exits right after. Give it a moment to.
        if is_socket(&socket) && !wait_readable(pidfd.as_fd(), SETTLE) {
            // Not reaped here: the process outlives us and is reaped by
            // whoever inherits it.
            return Ok(Detached {
                pid,
                sandbox,
                socket,
            });
        }
        if wait_readable(pidfd.as_fd(), Duration::ZERO) {
            // A socket it left must not be taken for a live daemon's.
            let _ = fs::remove_file(&socket);
            let status = child.wait().map_err(|source| DaemonError::Spawn {
                path: bin.path.clone(),
                source,
            })?;
            return Err(DaemonError::Exited {
                tag: config.tag.clone(),
                status,
                stderr: format!(" (see {})", log.display()),
            });
        }
        if Instant::now() >= deadline {
            kill_group(pid);
            let _ = child.wait();
            return Err(DaemonError::Timeout {
                tag: config.tag.clone(),
                socket,
            });
        }
        sleep(Duration::from_millis(5));
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Makes sure the detached daemon `pid` is gone: waits up to `grace` for
/// it to exit by itself (it does once its connection closed), then kills
/// its process group and waits [`STOP_GRACE`] more. `is_ours` is asked
/// before the kill, so that a reused pid is never signalled. Returns
/// whether the process is gone. Removes the socket and its pid file.
pub fn stop_detached(pid: u32, socket: &Path, grace: Duration, is_ours: impl Fn() -> bool) -> bool {
    let gone = match pidfd_open(pid) {
        // No such process: already gone.
        Err(_) => true,
        Ok(fd) => {
            if wait_readable(fd.as_fd(), grace) {
                true
            } else if is_ours() {
                kill_group(pid);
                wait_readable(fd.as_fd(), STOP_GRACE)
            } else {
                true
            }
        }
    };
    let mut pid_file = socket.as_os_str().to_owned();
    pid_file.push(".pid");
    for path in [socket.to_owned(), PathBuf::from(pid_file)] {
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("virtio-fs: cannot remove {}: {e}", path.display());
            }
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn fake(dir: &Path, script: &str) -> Virtiofsd {
        let bin = dir.join("fake-virtiofsd");
        fs::write(&bin, script).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        Virtiofsd {
            path: bin,
            version: "0".into(),
        }
    }

    #[test]
    fn a_daemon_is_started_detached_and_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let shared = tmp.path().join("shared");
        fs::create_dir_all(&state).unwrap();
        fs::create_dir_all(&shared).unwrap();
        // A stand-in that binds its socket (as virtiofsd does) and waits.
        let bin = fake(
            tmp.path(),
            "#!/usr/bin/env python3\n\
             import socket,sys,time\n\
             p=[a.split('=',1)[1] for a in sys.argv if a.startswith('--socket-path=')][0]\n\
             s=socket.socket(socket.AF_UNIX); s.bind(p); s.listen(1)\n\
             sys.stderr.write('args '+' '.join(sys.argv[1:])+'\\n'); sys.stderr.flush()\n\
             time.sleep(60)\n",
        );
        let mut config = FsConfig::new("live0", &shared, &state);
        config.read_only = true;
        config.allow_unsandboxed = true;
        let log = state.join("virtiofsd-live0.log");
        let d = launch_detached(&bin, &config, &log).unwrap();
        assert_eq!(d.socket, config.socket_path());
        assert!(is_socket(&d.socket));
        // It keeps running without us holding anything of it.
        assert!(!wait_readable(
            pidfd_open(d.pid).unwrap().as_fd(),
            Duration::ZERO
        ));
        // A pid that is not ours any more is never killed.
        assert!(stop_detached(d.pid, &d.socket, Duration::ZERO, || false));
        assert!(!d.socket.exists());
        assert!(!wait_readable(
            pidfd_open(d.pid).unwrap().as_fd(),
            Duration::ZERO
        ));
        // Ours: killed, gone.
        assert!(stop_detached(d.pid, &d.socket, Duration::ZERO, || true));
        let logged = fs::read_to_string(&log).unwrap();
        assert!(logged.contains("--readonly"), "{logged}");
        assert_eq!(
            fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_daemon_that_dies_at_start_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake(tmp.path(), "#!/bin/sh\necho 'ERROR nope' >&2\nexit 4\n");
        let mut config = FsConfig::new("live1", tmp.path(), tmp.path());
        config.allow_unsandboxed = true;
        let log = tmp.path().join("d.log");
        let err = launch_detached(&bin, &config, &log).unwrap_err();
        assert!(matches!(err, FsError::Start { .. }), "{err}");
        assert!(fs::read_to_string(&log).unwrap().contains("ERROR nope"));
    }

    #[test]
    fn a_missing_directory_is_refused_before_anything_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake(tmp.path(), "#!/bin/sh\nexit 0\n");
        let config = FsConfig::new("live2", tmp.path().join("missing"), tmp.path());
        let log = tmp.path().join("d.log");
        assert!(matches!(
            launch_detached(&bin, &config, &log),
            Err(FsError::Config(_))
        ));
        assert!(!log.exists());
    }

    #[test]
    fn a_daemon_that_dies_right_after_its_socket_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        // As virtiofsd whose sandbox fails after it bound its socket.
        let bin = fake(
            tmp.path(),
            "#!/usr/bin/env python3\n\
             import socket,sys\n\
             p=[a.split('=',1)[1] for a in sys.argv if a.startswith('--socket-path=')][0]\n\
             s=socket.socket(socket.AF_UNIX); s.bind(p); s.listen(1)\n\
             sys.stderr.write('ERROR Error entering sandbox\\n')\n\
             sys.exit(1)\n",
        );
        let mut config = FsConfig::new("live3", tmp.path(), tmp.path());
        config.allow_unsandboxed = true;
        let log = tmp.path().join("d.log");
        let err = launch_detached_in(&bin, &config, &log, Sandbox::Chroot).unwrap_err();
        assert!(matches!(err, DaemonError::Exited { .. }), "{err}");
        assert!(!config.socket_path().exists());
        assert!(fs::read_to_string(&log)
            .unwrap()
            .contains("entering sandbox"));
    }
}
