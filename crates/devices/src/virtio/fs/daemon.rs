//! One `virtiofsd` process: started for a share, watched through a pidfd,
//! stopped with nothing left behind.
//!
//! The process runs in a process group of its own, so stopping it reaches
//! every process it forked (with `--sandbox namespace` the server runs in a
//! child inside new namespaces; that child also gets SIGTERM from the
//! kernel when its parent dies). [`Daemon::stop`] lets the process exit by
//! itself first (it does once its vhost-user connection closes), then
//! kills the group while the leader is still unreaped (so the group id
//! cannot have been reused), reaps the leader and removes the socket and
//! the pid file virtiofsd writes beside it.
//! `Drop` does the same.
//!
//! # Options
//!
//! Every daemon runs with `--thread-pool-size=0` (requests are completed
//! in ring order, which the EIO takeover relies on, see the
//! [module docs](super)), `--rlimit-nofile` raised as far as we may
//! (1,000,000 capped by `fs.nr_open` with CAP_SYS_RESOURCE, else our hard
//! limit), and `--inode-file-handles=prefer` when we hold
//! CAP_DAC_READ_SEARCH (`never` otherwise: opening file handles needs it).
//!
//! # Sandbox
//!
//! `--sandbox namespace` first: as root it needs CAP_SYS_ADMIN, without
//! root it needs unprivileged user namespaces (virtiofsd creates one and
//! maps our uid to root inside). Where that fails (the daemon exits during
//! startup; containers without CAP_SYS_ADMIN, or user namespaces switched
//! off), the share is started again with `--sandbox chroot` when we hold
//! CAP_SYS_CHROOT. `--sandbox none` (the daemon sees the host as we do)
//! is used only when the share allows it ([`FsConfig::allow_unsandboxed`],
//! `--allow-unsandboxed-virtiofsd` in the CLI); otherwise the share fails
//! with [`DaemonError::NoSandbox`], which says how to allow it. The
//! fallback is remembered for the rest of the process
//! ([`Sandbox::choices`]).
//!
//! # The child
//!
//! virtiofsd gets what it needs and nothing else of ours: an environment
//! of [`VIRTIOFSD_ENV`] only (no host secrets), no descriptor but its
//! stdio (every other one is marked close-on-exec in the child, whoever
//! opened it), and the seccomp filter of [`super::filter`], so the guest
//! never creates setuid/setgid files or device nodes on the host.

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tracing::{debug, error, warn};

use super::config::FsConfig;
use super::filter::{FilterError, VirtiofsdFilter};
use super::locate::Virtiofsd;
use crate::thread::{self, DeviceThread, Thread};
use crate::warn_limited;

/// How long a daemon may take to open its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon gets to exit by itself before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// Lines of virtiofsd's stderr kept for error messages.
const STDERR_TAIL: usize = 6;
/// RLIMIT_NOFILE we ask for when we may raise it.
const WANTED_NOFILE: u64 = 1_000_000;

/// The variables virtiofsd keeps from our environment.
pub const VIRTIOFSD_ENV: &[&str] = &["PATH", "RUST_LOG", "LANG"];

/// Capability bits (linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_CHROOT: u32 = 18;
const CAP_SYS_RESOURCE: u32 = 24;

/// Set once `--sandbox namespace` failed here: later shares go straight
/// to the fallback.
static NAMESPACE_FAILED: AtomicBool = AtomicBool::new(false);

/// virtiofsd's `--sandbox` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// New mount, pid and net namespaces (plus a user namespace when not
    /// root), with the shared directory as `/`.
    Namespace,
    /// `chroot(2)` into the shared directory (needs CAP_SYS_CHROOT).
    Chroot,
    /// No isolation: the daemon sees the host as we do.
    None,
}

impl Sandbox {
    /// The value of `--sandbox`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::Chroot => "chroot",
            Sandbox::None => "none",
        }
    }

    /// The modes to try, in order: `namespace` unless it already failed in
    /// this process, then `chroot` with CAP_SYS_CHROOT, else `none` when
    /// `allow_none`. Empty when nothing is left to try.
    pub fn choices(allow_none: bool) -> Vec<Sandbox> {
        choices_for(
            NAMESPACE_FAILED.load(Ordering::Relaxed),
            has_capability(CAP_SYS_CHROOT),
            allow_none,
        )
    }

    /// Records that `--sandbox namespace` does not work here.
    pub fn namespace_failed() {
        NAMESPACE_FAILED.store(true, Ordering::Relaxed);
    }
}

/// [`Sandbox::choices`] for a host where `namespace` did or did not fail
/// and chroot is or is not possible.
fn choices_for(namespace_failed: bool, can_chroot: bool, allow_none: bool) -> Vec<Sandbox> {
    let fallback = if can_chroot {
        Some(Sandbox::Chroot)
    } else {
        allow_none.then_some(Sandbox::None)
    };
    let first = (!namespace_failed).then_some(Sandbox::Namespace);
    first.into_iter().chain(fallback).collect()
}

impl fmt::Display for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors while starting a daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Neither sandbox works here, and running without one is not allowed.
    #[error(
        "virtiofsd cannot sandbox itself here (no user namespaces, and chroot needs \
         CAP_SYS_CHROOT), and running it without a sandbox was not allowed"
    )]
    NoSandbox {
        /// The share.
        tag: String,
    },
    /// virtiofsd's seccomp filter could not be built.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// Something that is not a socket sits where the socket goes.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    SocketPathTaken(PathBuf),
    /// A socket left by an earlier run could not be removed.
    #[error("Cannot remove the stale socket {path}")]
    StaleSocket {
        /// The socket.
        path: PathBuf,
        /// Why removal failed.
        #[source]
        source: io::Error,
    },
    /// The process could not be started.
    #[error("Cannot start {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why the OS refused.
        #[source]
        source: io::Error,
    },
    /// The process could not be watched.
    #[error("Cannot open a pidfd for virtiofsd (pid {pid})")]
    Pidfd {
        /// Its pid.
        pid: u32,
        /// Why `pidfd_open` failed.
        #[source]
        source: io::Error,
    },
    /// The process ended before it served the share.
    #[error("virtiofsd exited during startup ({status}){stderr}")]
    Exited {
        /// The share.
        tag: String,
        /// How it ended.
        status: ExitStatus,
        /// `: <its last stderr lines>`, or empty.
        stderr: String,
    },
    /// The process did not open its socket in time.
    #[error("virtiofsd did not open {} within {} s", socket.display(), START_TIMEOUT.as_secs())]
    Timeout {
        /// The share.
        tag: String,
        /// The socket it should have opened.
        socket: PathBuf,
    },
    /// Connecting to the socket failed for another reason than "not yet".
    #[error("Cannot connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why connect failed.
        #[source]
        source: io::Error,
    },
}

/// The last lines virtiofsd wrote to stderr.
type Tail = Arc<Mutex<VecDeque<String>>>;

/// A running (or exited, not yet cleaned up) virtiofsd.
#[derive(Debug)]
pub struct Daemon {
    tag: String,
    child: Child,
    pidfd: OwnedFd,
    socket: PathBuf,
    sandbox: Sandbox,
    tail: Tail,
    relay: Option<Thread<()>>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `bin` for the share `config` (already validated) in
    /// `sandbox` mode. Returns once the process exists; see
    /// [`Daemon::connect`].
    pub fn spawn(
        bin: &Virtiofsd,
        config: &FsConfig,
        sandbox: Sandbox,
    ) -> Result<Self, DaemonError> {
        let socket = config.socket_path();
        remove_stale_socket(&socket)?;
        if sandbox == Sandbox::None {
            warn!(
                tag = %config.tag,
                "virtio-fs: neither namespaces nor chroot are available; \
                 virtiofsd runs without a sandbox (--sandbox none), as allowed"
            );
        }
        let mut cmd = command(bin, config, &socket, sandbox, Stdio::piped())?;
        debug!(tag = %config.tag, ?cmd, "virtio-fs: starting virtiofsd {}", bin.version);
        let (mut child, pidfd) = spawn(&mut cmd, bin)?;
        let tail = Tail::default();
        let relay = child
            .stderr
            .take()
            .and_then(|stderr| relay_stderr(&config.tag, stderr, tail.clone()));
        Ok(Daemon {
            tag: config.tag.clone(),
            child,
            pidfd,
            socket,
            sandbox,
            tail,
            relay,
            status: None,
        })
    }

    /// Waits until the daemon accepts connections on its socket and
    /// returns the connection (virtiofsd serves exactly one).
    pub fn connect(&mut self, timeout: Duration) -> Result<UnixStream, DaemonError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.has_exited(Duration::ZERO) {
                return Err(self.exited_error());
            }
            match UnixStream::connect(&self.socket) {
                Ok(stream) => return Ok(stream),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(source) => {
                    return Err(DaemonError::Connect {
                        path: self.socket.clone(),
                        source,
                    })
                }
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::Timeout {
                    tag: self.tag.clone(),
                    socket: self.socket.clone(),
                });
            }
            sleep(Duration::from_millis(5));
        }
    }

    /// The error for a daemon that has exited: waits for it (briefly) and
    /// reaps it, so the status and its last words are known.
    pub fn exited_error(&mut self) -> DaemonError {
        self.has_exited(STOP_GRACE);
        let status = self.stop();
        let stderr = self.stderr_tail();
        match status {
            Some(status) => DaemonError::Exited {
                tag: self.tag.clone(),
                status,
                stderr: if stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {stderr}")
                },
            },
            // Only a failed waitpid gets here; the socket never came.
            None => DaemonError::Timeout {
                tag: self.tag.clone(),
                socket: self.socket.clone(),
            },
        }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Readable once the process has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The sandbox mode it runs in.
    pub fn sandbox(&self) -> Sandbox {
        self.sandbox
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its last stderr lines, joined with " | ".
    pub fn stderr_tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// How it ended, once [`Daemon::stop`] reaped it.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Whether the process has exited, waiting up to `timeout` for it.
    /// Does not reap it.
    pub fn has_exited(&self, timeout: Duration) -> bool {
        self.status.is_some() || wait_readable(self.pidfd.as_fd(), timeout)
    }

    /// Stops the daemon: waits up to [`STOP_GRACE`] for it to exit by
    /// itself, kills its process group, reaps it and removes its socket.
    /// Returns how it ended (`None` if it could not be reaped). Safe to call
    /// again; later calls return the same status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if !self.has_exited(STOP_GRACE) {
                debug!(tag = %self.tag, "virtio-fs: virtiofsd did not exit by itself; killing it");
            }
            // The rest of the group (the namespaced server, a helper): they
            // are not our children, so their pidfds tell when they are gone.
            let pid = self.pid();
            let others: Vec<OwnedFd> = group_members(pid)
                .into_iter()
                .filter(|&p| p != pid)
                .filter_map(|p| pidfd_open(p).ok())
                .collect();
            // The leader is not reaped yet, so its group id is still ours.
            kill_group(pid);
            match self.child.wait() {
                Ok(status) => self.status = Some(status),
                Err(e) => error!(tag = %self.tag, "virtio-fs: cannot reap virtiofsd: {e}"),
            }
            // SIGKILLed processes still take a moment to exit (a pid
            // namespace's init waits for its namespace to empty).
            let deadline = Instant::now() + STOP_GRACE;
            for fd in &others {
                let left = deadline.saturating_duration_since(Instant::now());
                if !wait_readable(fd.as_fd(), left) {
                    warn!(tag = %self.tag, "virtio-fs: a virtiofsd process outlived SIGKILL");
                }
            }
        }
        // virtiofsd leaves `<socket>.pid` next to the socket (it locks it
        // while running; a stale one does not bother the next start).
        for path in [self.socket.clone(), pid_file(&self.socket)] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!("virtio-fs: cannot remove {}: {e}", path.display());
                }
            }
        }
        self.join_relay();
        self.status
    }

    /// The relay ends when the last writer of the pipe is gone; every
    /// process of the group is dead by now, so that is within moments.
    fn join_relay(&mut self) {
        let Some(relay) = self.relay.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_millis(500);
        while !relay.is_finished() && Instant::now() < deadline {
            sleep(Duration::from_millis(2));
        }
        if relay.is_finished() {
            // The relay cannot panic in a way worth reporting.
            let _ = relay.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The virtiofsd command for `config` (validated) in `sandbox` mode with
/// its socket at `socket` and its stderr going to `stderr`: a clean
/// environment, its own process group, nothing inherited but its stdio,
/// and the filter of [`super::filter`] installed before exec.
pub(super) fn command(
    bin: &Virtiofsd,
    config: &FsConfig,
    socket: &Path,
    sandbox: Sandbox,
    stderr: Stdio,
) -> Result<Command, DaemonError> {
    let filter = VirtiofsdFilter::new()?;
    let mut cmd = Command::new(&bin.path);
    cmd.args(arguments(config, socket, sandbox))
        .env_clear()
        .envs(
            VIRTIOFSD_ENV
                .iter()
                .filter_map(|&k| Some((k, std::env::var_os(k)?))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes system calls (close_range, prctl and seccomp in
    // `VirtiofsdFilter::apply`, which does not allocate: the programs
    // were compiled above, before the fork).
    unsafe {
        cmd.pre_exec(move || {
            cloexec_from(3)?;
            filter.apply()
        });
    }
    Ok(cmd)
}

/// virtiofsd's command line for `config`.
fn arguments(config: &FsConfig, socket: &Path, sandbox: Sandbox) -> Vec<String> {
    let handles = if has_capability(CAP_DAC_READ_SEARCH) {
        "prefer"
    } else {
        "never"
    };
    let mut args = vec![
        format!("--shared-dir={}", config.shared_dir.display()),
        format!("--socket-path={}", socket.display()),
        format!("--sandbox={sandbox}"),
        format!("--cache={}", config.cache),
        "--thread-pool-size=0".to_owned(),
        format!("--inode-file-handles={handles}"),
        format!("--rlimit-nofile={}", nofile_limit()),
    ];
    if config.read_only {
        args.push("--readonly".to_owned());
    }
    args
}

/// The pid file virtiofsd writes for `socket`.
fn pid_file(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".pid");
    PathBuf::from(name)
}

/// A socket left by a VMM that died is replaced; anything else is not ours.
pub(super) fn remove_stale_socket(path: &Path) -> Result<(), DaemonError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(path).map_err(|source| DaemonError::StaleSocket {
                path: path.to_owned(),
                source,
            })
        }
        Ok(_) => Err(DaemonError::SocketPathTaken(path.to_owned())),
        Err(_) => Ok(()),
    }
}

/// Forwards virtiofsd's stderr to our log and keeps its last lines.
fn relay_stderr(tag: &str, stderr: ChildStderr, tail: Tail) -> Option<Thread<()>> {
    let tag = tag.to_owned();
    let name = format!("virtiofsd-{tag}");
    let spawned = thread::spawn(&name, DeviceThread::DaemonLog, move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("ERROR") {
                warn_limited!(target: "virtiofsd", tag = %tag, "{line}");
            } else {
                debug!(target: "virtiofsd", tag = %tag, "{line}");
            }
            let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            // The pipe closes with the dropped thread closure: virtiofsd
            // then gets EPIPE on its logs, nothing worse.
            warn!("virtio-fs: cannot relay virtiofsd's stderr: {e}");
            None
        }
    }
}

/// Marks every descriptor from `first` up close-on-exec (in the child:
/// descriptors of other threads' work, opened without CLOEXEC, must not
/// reach virtiofsd). Closing them instead would also close the pipe
/// through which the standard library reports a failed exec.
fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes two descriptor numbers and flags and
    // touches no memory; with CLOSE_RANGE_CLOEXEC it closes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11 lack the flag: one fcntl per possible number.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let last = i32::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(1 << 20);
    for fd in i32::try_from(first).unwrap_or(i32::MAX)..last {
        // SAFETY: F_SETFD on a number that may or may not be open touches
        // no memory; on a closed one it fails with EBADF, which is fine.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Waits up to `timeout` for `fd` to become readable (a pidfd: the
/// process exited).
pub(super) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(n) => return n > 0,
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The live processes of process group `pgid`, from `/proc`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pgid = pgid.to_string();
    let mut members = Vec::new();
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After "(comm)", which may hold anything: state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        if fields.nth(1) == Some(pgid.as_str()) && state != Some("Z") {
            members.push(pid);
        }
    }
    members
}

/// Starts `cmd` (virtiofsd `bin`) and opens a pidfd for it; a daemon
/// whose pidfd cannot be opened is killed and reaped.
pub(super) fn spawn(cmd: &mut Command, bin: &Virtiofsd) -> Result<(Child, OwnedFd), DaemonError> {
    let mut child = cmd.spawn().map_err(|source| DaemonError::Spawn {
        path: bin.path.clone(),
        source,
    })?;
    let pid = child.id();
    match pidfd_open(pid) {
        Ok(fd) => Ok((child, fd)),
        Err(source) => {
            kill_group(pid);
            // Reaping a process we just SIGKILLed returns at once.
            let _ = child.wait();
            Err(DaemonError::Pidfd { pid, source })
        }
    }
}

pub(super) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIGKILL to the process group `pid` leads. ESRCH (all gone) is fine.
pub(super) fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Whether our effective capability set holds `cap`.
fn has_capability(cap: u32) -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// The RLIMIT_NOFILE to give virtiofsd: as high as we may set it.
fn nofile_limit() -> u64 {
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(WANTED_NOFILE);
    if has_capability(CAP_SYS_RESOURCE) {
        return WANTED_NOFILE.min(nr_open);
    }
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => hard.min(nr_open),
        // 0 leaves virtiofsd's limit as it inherits it.
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn arguments_follow_the_config() {
        let mut config = FsConfig::new("work", "/srv/share", "/run/vm");
        let socket = config.socket_path();
        let args = arguments(&config, &socket, Sandbox::Namespace);
        for want in [
            "--shared-dir=/srv/share",
            "--socket-path=/run/vm/virtiofs-work.sock",
            "--sandbox=namespace",
            "--cache=auto",
            "--thread-pool-size=0",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
        }
        assert!(args.iter().any(|a| a.starts_with("--inode-file-handles=")));
        assert!(args.iter().any(|a| a.starts_with("--rlimit-nofile=")));
        assert!(!args.iter().any(|a| a == "--readonly"));
        // Extended attributes stay off: with them a guest could set
        // security.capability on a host file (see `filter`).
        assert!(!args.iter().any(|a| a.contains("xattr")), "{args:?}");
        config.read_only = true;
        config.cache = super::super::CacheMode::Never;
        let args = arguments(&config, &socket, Sandbox::None);
        assert!(args.iter().any(|a| a == "--readonly"));
        assert!(args.iter().any(|a| a == "--cache=never"));
        assert!(args.iter().any(|a| a == "--sandbox=none"));
    }

    #[test]
    fn no_sandbox_is_chosen_only_when_allowed() {
        use Sandbox::{Chroot, Namespace, None};
        // (namespace failed, can chroot, none allowed) -> choices
        type Case = ((bool, bool, bool), &'static [Sandbox]);
        let table: [Case; 8] = [
            ((false, true, false), &[Namespace, Chroot]),
            ((false, true, true), &[Namespace, Chroot]),
            ((false, false, false), &[Namespace]),
            ((false, false, true), &[Namespace, None]),
            ((true, true, false), &[Chroot]),
            ((true, true, true), &[Chroot]),
            ((true, false, false), &[]),
            ((true, false, true), &[None]),
        ];
        for ((failed, chroot, allow), want) in table {
            assert_eq!(
                choices_for(failed, chroot, allow),
                want,
                "failed={failed} chroot={chroot} allow={allow}"
            );
        }
    }

    #[test]
    fn stale_sockets_go_and_other_files_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        drop(listener);
        remove_stale_socket(&sock).unwrap();
        assert!(!sock.exists());
        remove_stale_socket(&sock).unwrap();
        fs::write(&sock, b"mine").unwrap();
        assert!(matches!(
            remove_stale_socket(&sock),
            Err(DaemonError::SocketPathTaken(_))
        ));
        assert!(sock.exists());
    }

    #[test]
    fn virtiofsd_gets_no_host_secret_and_no_stray_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("fake");
        fs::write(&bin, "#!/bin/sh\nexec sleep 1000\n").unwrap();
        let exec = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        fs::set_permissions(&bin, exec).unwrap();
        // A secret in our environment, and a descriptor without CLOEXEC (as
        // one opened by other code of the process would be).
        std::env::set_var("AGENTVM_TEST_SECRET_TOKEN", "hunter2");
        let file = fs::File::open("/proc/self/status").unwrap();
        let stray = nix::unistd::dup(&file).unwrap();
        let stray_target = fs::read_link(format!("/proc/self/fd/{}", stray.as_raw_fd())).unwrap();

        let config = FsConfig::new("env", tmp.path(), tmp.path());
        let fake = Virtiofsd {
            path: bin,
            version: "0".into(),
        };
        let mut daemon = Daemon::spawn(&fake, &config, Sandbox::None).unwrap();
        let proc = PathBuf::from(format!("/proc/{}", daemon.pid()));
        // Wait for the exec (the environment is the new program's then).
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_link(proc.join("exe")).is_ok_and(|e| !e.ends_with("sleep")) {
            assert!(Instant::now() < deadline, "the fake never ran");
            sleep(Duration::from_millis(5));
        }
        let environ = fs::read(proc.join("environ")).unwrap();
        let names: Vec<String> = environ
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| {
                String::from_utf8_lossy(v)
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert!(names.iter().any(|n| n == "PATH"), "{names:?}");
        // PWD is the stand-in shell's own.
        for name in names.iter().filter(|n| *n != "PWD") {
            assert!(
                VIRTIOFSD_ENV.contains(&name.as_str()),
                "{name} leaked: {names:?}"
            );
        }
        let fds: Vec<String> = fs::read_dir(proc.join("fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut sorted = fds.clone();
        sorted.sort();
        assert_eq!(sorted, ["0", "1", "2"], "descriptors of virtiofsd");
        // The stray one was there to inherit: it is open in us, not CLOEXEC.
        assert_eq!(
            fs::read_link(format!("/proc/self/fd/{}", stray.as_raw_fd())).unwrap(),
            stray_target
        );
        daemon.stop();
    }

    #[test]
    fn a_process_group_is_stopped_and_reaped() {
        let tmp = tempfile::tempdir().unwrap();
        // A stand-in "virtiofsd" that forks a child and waits forever.
        let bin = tmp.path().join("fake");
        fs::write(&bin, "#!/bin/sh\nsleep 1000 &\necho started >&2\nwait\n").unwrap();
        let exec = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        fs::set_permissions(&bin, exec).unwrap();
        let config = FsConfig::new("fake", tmp.path(), tmp.path());
        let fake = Virtiofsd {
            path: bin,
            version: "0".into(),
        };
        let mut daemon = Daemon::spawn(&fake, &config, Sandbox::None).unwrap();
        let pid = daemon.pid();
        assert!(!daemon.has_exited(Duration::from_millis(50)));
        let status = daemon.stop().unwrap();
        assert!(!status.success());
        let left = group_members(pid);
        assert!(left.is_empty(), "process group {pid} survived: {left:?}");
        assert_eq!(daemon.stop(), Some(status));
    }
}
