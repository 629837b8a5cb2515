//! Child reaping that never steals a session's exit status.
//!
//! As PID 1 (or a child subreaper in `serve` mode) the agent inherits every
//! orphan, so something must `waitpid(-1)` — but a blind `waitpid(-1)` races
//! with whoever wants one particular child's status. Here one thread owns *all*
//! waiting: on every `SIGCHLD` it reaps with `waitpid(-1, WNOHANG)` until
//! nothing is left, and hands each status to the pipe registered for that pid
//! (or drops it: an orphan).
//!
//! The race left is a child that exits before its pid is registered. Spawning
//! therefore holds a shared lock from `fork` to registration, and reaping holds
//! the exclusive lock: the reaper can only collect a status once the pid is in
//! the table. The same lock covers std's own `waitpid` on a child whose `exec`
//! failed (inside `Command::spawn`), which the reaper must not collect first.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::sync::{Mutex, PoisonError, RwLock};

use agentvm_protocol::ExitStatus;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Bytes of an encoded status in an exit pipe: kind u8, value i32 LE.
const STATUS_LEN: usize = 5;

/// The table of children whose exit someone waits for.
#[derive(Default)]
pub struct Reaper {
    spawning: RwLock<()>,
    waiters: Mutex<HashMap<i32, OwnedFd>>,
}

/// The read end of a child's exit pipe: readable once the child has exited.
pub struct ExitWatch {
    fd: OwnedFd,
}

impl ExitWatch {
    /// The pipe to poll for `POLLIN`.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Blocks until the child has exited and returns its status.
    pub fn wait(self) -> io::Result<ExitStatus> {
        let mut buf = [0u8; STATUS_LEN];
        std::fs::File::from(self.fd).read_exact(&mut buf)?;
        Ok(decode_status(buf))
    }

    /// Reads the status once `fd` polled readable.
    pub fn read(&self) -> io::Result<ExitStatus> {
        let mut buf = [0u8; STATUS_LEN];
        let n = nix::unistd::read(&self.fd, &mut buf)?;
        if n != STATUS_LEN {
            return Err(io::Error::other("short read from the exit pipe"));
        }
        Ok(decode_status(buf))
    }
}

fn decode_status(b: [u8; STATUS_LEN]) -> ExitStatus {
    let v = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    if b[0] == 1 {
        ExitStatus::Signal(v)
    } else {
        ExitStatus::Code(v)
    }
}

fn encode_status(s: ExitStatus) -> [u8; STATUS_LEN] {
    let (k, v) = match s {
        ExitStatus::Code(c) => (0u8, c),
        ExitStatus::Signal(s) => (1u8, s),
    };
    let v = v.to_le_bytes();
    [k, v[0], v[1], v[2], v[3]]
}

impl Reaper {
    /// Spawns `cmd` and registers it; the status arrives through the watch.
    /// Never call `wait` on the returned `Child`.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, ExitWatch)> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let _spawning = self.spawning.read().unwrap_or_else(PoisonError::into_inner);
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        self.lock_waiters().insert(pid, w);
        Ok((child, ExitWatch { fd: r }))
    }

    /// Reaps every exited child; call on each `SIGCHLD`.
    pub fn reap(&self) {
        let _exclusive = self
            .spawning
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::log!("waitpid failed: {e}");
                    return;
                }
            };
            if let Some(w) = self.lock_waiters().remove(&pid.as_raw()) {
                // A session that has gone away closed the read end: EPIPE
                // (SIGPIPE is ignored) and nothing to do.
                let _ = std::fs::File::from(w).write_all(&encode_status(status));
            }
        }
    }

    /// Sends `sig` to the process group of every registered child.
    pub fn signal_all(&self, sig: Signal) {
        for pid in self.lock_waiters().keys() {
            let _ = killpg(Pid::from_raw(*pid), sig);
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<i32, OwnedFd>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_encoding_round_trips() {
        for s in [
            ExitStatus::Code(0),
            ExitStatus::Code(255),
            ExitStatus::Code(-3),
            ExitStatus::Signal(15),
        ] {
            assert_eq!(decode_status(encode_status(s)), s);
        }
    }
}
