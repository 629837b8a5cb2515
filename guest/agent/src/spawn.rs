//! Turning a `Start` request into a running process (pipes or a PTY).

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agentvm_protocol::{frame::EnvList, Start, WinSize};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Pid, Uid};

use crate::reaper::{ExitWatch, Reaper};
use crate::user::{self, User};

/// `PATH` every command starts with (the request's env may override it).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The request names a user that does not exist.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// Opening the pseudo-terminal failed.
    #[error("cannot open a pseudo-terminal")]
    Pty(#[source] nix::Error),
    /// `fork`/`exec` failed (program not found, bad working directory …).
    #[error("cannot run {program}")]
    Exec {
        /// `argv[0]`.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Setting up a descriptor failed.
    #[error("cannot set up the command's descriptors")]
    Fd(#[source] std::io::Error),
}

/// A running command and the descriptors the session polls.
pub struct Spawned {
    /// Process id, also its process group and session id.
    pub pid: Pid,
    /// Where stdin bytes go (pipe, or a duplicate of the PTY master).
    pub stdin: OwnedFd,
    /// Stdout pipe, or the PTY master.
    pub stdout: OwnedFd,
    /// Stderr pipe (pipe mode only).
    pub stderr: Option<OwnedFd>,
    /// Readable when the command has exited.
    pub exit: ExitWatch,
}

/// What the agent adds to every command.
pub struct Defaults<'a> {
    /// Where `etc/passwd` and `etc/group` are (`/`).
    pub root: &'a Path,
    /// Environment configured by the host (`Configure` frames).
    pub env: &'a EnvList,
    /// Who runs a request that names no user (`agentvm.user`); `None`: the
    /// agent's own user.
    pub user: Option<&'a str>,
}

/// Starts `req` as a session leader (its pid is its process group).
pub fn spawn(req: &Start, defaults: &Defaults<'_>, reaper: &Reaper) -> Result<Spawned, SpawnError> {
    let current_uid = Uid::current().as_raw();
    let (user, switch) = match req.user.as_deref().or(defaults.user) {
        Some(spec) => {
            let u = user::lookup_in(defaults.root, spec)
                .ok_or_else(|| SpawnError::UnknownUser(spec.to_owned()))?;
            let switch = u.uid != current_uid;
            (u, switch)
        }
        None => (current_user(defaults.root, current_uid), false),
    };
    let program = String::from_utf8_lossy(&req.argv[0]).into_owned();
    let mut cmd = Command::new(OsStr::from_bytes(&req.argv[0]));
    cmd.args(req.argv[1..].iter().map(|a| OsStr::from_bytes(a)));
    cmd.env_clear();
    let mut env: Vec<(&[u8], &[u8])> = vec![
        (b"PATH", DEFAULT_PATH.as_bytes()),
        (b"HOME", user.home.as_bytes()),
        (b"USER", user.name.as_bytes()),
        (b"LOGNAME", user.name.as_bytes()),
        (b"SHELL", user.shell.as_bytes()),
        (b"LANG", b"C.UTF-8"),
        // The VM is the sandbox: agents that refuse to skip their permission
        // prompts outside one (Claude Code's --dangerously-skip-permissions)
        // read this.
        (b"IS_SANDBOX", b"1"),
    ];
    if req.tty.is_some() {
        env.push((b"TERM", b"xterm-256color"));
    }
    env.extend(defaults.env.iter().map(|(k, v)| (&k[..], &v[..])));
    env.extend(req.env.iter().map(|(k, v)| (&k[..], &v[..])));
    for (k, v) in env {
        if !k.is_empty() && !k.contains(&b'=') {
            cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
        }
    }
    cmd.current_dir(working_dir(req.cwd.as_deref(), &user.home));

    let pty = match req.tty {
        Some(size) => Some(open_pty(size).map_err(SpawnError::Pty)?),
        None => None,
    };
    if let Some((_, slave)) = &pty {
        let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        let exec_err = |source| SpawnError::Exec {
            program: program.clone(),
            source,
        };
        cmd.stdin(dup(slave).map_err(exec_err)?);
        cmd.stdout(dup(slave).map_err(exec_err)?);
        cmd.stderr(dup(slave).map_err(exec_err)?);
        if switch {
            // Like login(1): the terminal belongs to the user it serves.
            let _ = nix::unistd::fchown(slave, Some(Uid::from_raw(user.uid)), None);
        }
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let tty = pty.is_some();
    let ids = switch.then(|| {
        (
            user.groups
                .iter()
                .map(|g| Gid::from_raw(*g))
                .collect::<Vec<_>>(),
            Gid::from_raw(user.gid),
            Uid::from_raw(user.uid),
        )
    });
    let child_setup = move || {
        reset_signals()?;
        nix::unistd::setsid()?;
        if tty {
            // SAFETY: TIOCSCTTY takes an int argument; fd 0 is the PTY slave
            // that std has just installed.
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some((groups, gid, uid)) = &ids {
            nix::unistd::setgroups(groups)?;
            nix::unistd::setgid(*gid)?;
            nix::unistd::setuid(*uid)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and only makes
    // direct system calls (sigprocmask, sigaction, setsid, ioctl, setgroups,
    // setgid, setuid) on data prepared before the fork: no allocation, no locks.
    unsafe {
        cmd.pre_exec(child_setup);
    }
    let (mut child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|source| SpawnError::Exec { program, source })?;
    // `cmd` holds the slave duplicates until dropped: drop it so the master
    // sees end of file once the command's side closes.
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    let (stdin, stdout, stderr) = match pty {
        Some((master, slave)) => {
            drop(slave);
            let input = master.try_clone().map_err(SpawnError::Fd)?;
            (input, master, None)
        }
        None => {
            let take =
                |o: Option<OwnedFd>| o.ok_or_else(|| SpawnError::Fd(nix::Error::EBADF.into()));
            (
                take(child.stdin.take().map(OwnedFd::from))?,
                take(child.stdout.take().map(OwnedFd::from))?,
                Some(take(child.stderr.take().map(OwnedFd::from))?),
            )
        }
    };
    for fd in [Some(&stdin), Some(&stdout), stderr.as_ref()]
        .into_iter()
        .flatten()
    {
        set_nonblocking(fd).map_err(|e| SpawnError::Fd(e.into()))?;
    }
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        exit,
    })
}

/// In a forked child: an empty signal mask (the agent's threads block the
/// signals its signal thread waits for, and std no longer resets the mask)
/// and every standard signal back to its default disposition (std ignores
/// `SIGPIPE` in the agent; `serve` may inherit ignored signals).
/// Async-signal-safe.
fn reset_signals() -> std::io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        unsafe { sigaction(sig, &dfl) }?;
    }
    Ok(())
}

/// Makes `cmd`'s child start with default signal handling (see
/// [`reset_signals`]); for commands spawned outside sessions.
pub fn with_default_signals(cmd: &mut Command) -> &mut Command {
    // SAFETY: reset_signals only makes async-signal-safe system calls.
    unsafe { cmd.pre_exec(reset_signals) }
}

fn current_user(root: &Path, uid: u32) -> User {
    user::lookup_in(root, &uid.to_string()).unwrap_or(User {
        name: uid.to_string(),
        uid,
        gid: uid,
        groups: vec![],
        home: "/".into(),
        shell: "/bin/sh".into(),
    })
}

fn working_dir(cwd: Option<&[u8]>, home: &str) -> PathBuf {
    match cwd {
        Some(c) => PathBuf::from(OsStr::from_bytes(c)),
        None if Path::new(home).is_dir() => PathBuf::from(home),
        None => PathBuf::from("/"),
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: &impl AsFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// Opens a PTY pair, both ends close-on-exec (other sessions fork
/// concurrently and must not inherit them), the master sized `size`.
fn open_pty(size: WinSize) -> nix::Result<(OwnedFd, OwnedFd)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let master = OwnedFd::from(master);
    set_winsize(&master, size)?;
    Ok((master, slave))
}

/// Sets a PTY's size; the kernel sends `SIGWINCH` to its foreground group.
pub fn set_winsize(master: &OwnedFd, size: WinSize) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points
    // at a live local; the fd is an open PTY master we own.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::errno::Errno::result(rc).map(drop)
}
