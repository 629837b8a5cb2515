//! Shared guest RAM that gets huge pages.
//!
//! A workspace VM's RAM must be shared with virtiofsd, so it is a shmem
//! file; a memfd gets transparent huge pages only where the host's
//! `shmem_enabled` says so, and the default is `never`. A tmpfs mounted
//! with `huge=always` gets them whatever that setting (short of `deny`).
//! The VMM cannot mount one where others see it, and needs none that
//! others see: a child process enters a new mount namespace (and, when not
//! root, a new user namespace, as any user may), mounts a tmpfs there,
//! opens an unnamed `O_TMPFILE` in it, passes that descriptor back over a
//! socket and exits. The mount then lives only as long as the file, and no
//! other process can reach the file by any path.
//!
//! Best effort: where user namespaces are off, the mount is refused, or
//! anything else fails, the VM gets a memfd as before ([`create`] says
//! why at debug level). The VMM calls [`create`] while it has only one
//! thread, so the child may do anything a program may.

use std::ffi::CString;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getegid, geteuid, ForkResult};

/// Where the child mounts its tmpfs, in its own mount namespace only.
const MOUNT_POINT: &str = "/tmp";

/// A new, empty file on a `huge=always` tmpfs of at least `bytes`, or why
/// there is none.
pub fn create(bytes: u64) -> Result<File, String> {
    if threads() != Some(1) {
        return Err("the process already has threads".into());
    }
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    // Room for the page tables' rounding: the mount's size is a limit.
    let options = format!(
        "huge=always,mode=0700,size={}",
        bytes.saturating_add(4 << 20)
    );
    let maps = (
        format!("0 {} 1\n", geteuid()),
        format!("0 {} 1\n", getegid()),
    );
    // SAFETY: this process has one thread (checked above), so the child
    // is a complete copy and may allocate and call anything.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(ours);
            let code = match child(&options, &maps) {
                Ok(fd) => send_fd(theirs.as_raw_fd(), fd.as_raw_fd()).map_or(3, |()| 0),
                Err(step) => step,
            };
            // SAFETY: _exit ends the child at once, without running the
            // parent's atexit handlers or flushing its buffers twice.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            let received = recv_fd(ours.as_raw_fd());
            let status = waitpid(child, None).map_err(|e| format!("waitpid: {e}"))?;
            match (received, status) {
                (Ok(fd), WaitStatus::Exited(_, 0)) => {
                    // SAFETY: the descriptor arrived with SCM_RIGHTS and is
                    // ours alone.
                    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
                }
                (_, WaitStatus::Exited(_, code)) => Err(format!(
                    "the helper failed at step {code} (1 namespaces, 2 mount, 3 file)"
                )),
                (_, other) => Err(format!("the helper ended: {other:?}")),
            }
        }
    }
}

/// In the child: the namespaces, the mount and the file; the failing step
/// as the exit code.
fn child(options: &str, maps: &(String, String)) -> Result<OwnedFd, i32> {
    let root = geteuid().is_root();
    let flags = if root {
        CloneFlags::CLONE_NEWNS
    } else {
        CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS
    };
    unshare(flags).map_err(|_| 1)?;
    if !root {
        let write = |path: &str, text: &str| std::fs::write(path, text).map_err(|_| 1);
        write("/proc/self/setgroups", "deny")?;
        write("/proc/self/uid_map", &maps.0)?;
        write("/proc/self/gid_map", &maps.1)?;
    }
    // Nothing of this namespace propagates back to the host's.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|_| 2)?;
    let data = CString::new(options).map_err(|_| 2)?;
    mount(
        Some("agentvm-ram"),
        MOUNT_POINT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_c_str()),
    )
    .map_err(|_| 2)?;
    open(
        MOUNT_POINT,
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(|_| 3)
}

fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), nix::Error> {
    let fds = [fd];
    let iov = [IoSlice::new(b"f")];
    sendmsg::<()>(
        sock,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
}

fn recv_fd(sock: RawFd) -> Result<RawFd, String> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| format!("recvmsg: {e}"))?;
    let cmsgs = msg.cmsgs().map_err(|e| format!("recvmsg: {e}"))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                return Ok(fd);
            }
        }
    }
    Err("the helper sent no file".into())
}

/// This process's thread count.
fn threads() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_with_threads_is_refused_before_forking() {
        // The test harness runs this on a thread of its own. (The working
        // case needs a process of one thread: the lifecycle tests check
        // the VMM's guest RAM mapping.)
        let err = create(64 << 20).expect_err("threads");
        assert!(err.contains("threads"), "{err}");
    }
}
