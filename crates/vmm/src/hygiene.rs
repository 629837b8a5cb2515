//! Process hygiene of a VMM: what the process itself gives up before it
//! runs a hostile guest.
//!
//! - `no_new_privs`: nothing the VMM executes (virtiofsd, or whatever an
//!   attacker who took over the process tries) gains privileges through
//!   setuid bits or file capabilities. The flag is per thread and inherited
//!   by threads and children created later, so it is set before the VMM
//!   starts any thread; [`crate::VmBuilder::build`] and [`crate::Vm::run`]
//!   set it again, so every thread a VM starts has it, whoever embeds us.
//! - No core dumps: RLIMIT_CORE is 0 (soft and hard, so a compromised VMM
//!   cannot raise it back), and guest RAM is mapped `MADV_DONTDUMP`, so a
//!   crash never writes guest memory to disk,
//!   also where the core pattern pipes to a collector that ignores the limit.
//! - Inherited descriptors closed ([`close_inherited_fds`]): whatever the
//!   user's shell or a parent left open is not ours and must not be
//!   reachable from the guest's side. Only a process that owns its whole
//!   descriptor table may call it, so the library never does; the CLI does
//!   at start-up.
//! - The open-file limit raised to its hard limit ([`raise_fd_limit`]) in
//!   a VMM with a network: every guest connection holds a host socket.

use std::os::fd::{FromRawFd, OwnedFd};

/// Errors while hardening the process.
#[derive(Debug, thiserror::Error)]
pub enum HygieneError {
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("Cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
    /// RLIMIT_CORE could not be set to 0.
    #[error("Cannot switch core dumps off")]
    CoreLimit(#[source] nix::Error),
    /// The descriptor table could not be read or closed.
    #[error("Cannot close inherited file descriptors")]
    CloseFds(#[source] std::io::Error),
}

/// Sets `no_new_privs` on the calling thread (and so on every thread and
/// child it starts from now on) and switches core dumps off for the whole
/// process. Idempotent.
pub fn harden_process() -> Result<(), HygieneError> {
    nix::sys::prctl::set_no_new_privs().map_err(HygieneError::NoNewPrivs)?;
    disable_core_dumps()
}

/// RLIMIT_CORE 0, soft and hard.
fn disable_core_dumps() -> Result<(), HygieneError> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(HygieneError::CoreLimit)
}

/// Closes every descriptor from 3 up. Call it first thing in a process
/// that owns its descriptor table (a VMM binary's `main`), before anything
/// opens a file: every descriptor above stderr is then one it inherited.
pub fn close_inherited_fds() -> Result<(), HygieneError> {
    // SAFETY: close_range takes two descriptor numbers and flags and
    // touches no memory. The caller guarantees (see above) that no object
    // of this process owns a descriptor above 2 yet, so nothing is left
    // holding a closed number. nix and rustix have no wrapper for it.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(HygieneError::CloseFds(err));
    }
    // Kernels before 5.9: close what /proc lists. The listing's own
    // descriptor is gone once the iterator is dropped, before the closes.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(HygieneError::CloseFds)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        if nix::fcntl::fcntl(
            // SAFETY: only used for the one F_GETFD below; a number that
            // was the listing's own (now closed) descriptor fails with EBADF.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .is_ok()
        {
            // SAFETY: the descriptor is open and, as the caller guarantees,
            // owned by nothing in this process; dropping it closes it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Ok(())
}

/// Raises this process's open-file limit to its hard limit: every guest
/// connection holds a host socket, and an agent's package install opens
/// hundreds (a soft limit of 1024 would turn them into resets). A limit
/// that cannot be read or raised is a warning: the VM runs with what it has.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A field of /proc/self/status, for the calling thread.
    fn thread_status(field: &str) -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn hardening_sets_no_new_privs_for_later_threads_and_no_core_limit() {
        // In a thread of its own, so the test harness's threads are not
        // the ones checked (the flag is per thread).
        std::thread::spawn(|| {
            harden_process().unwrap();
            harden_process().unwrap();
            assert_eq!(thread_status("NoNewPrivs:"), "1");
            let child = std::thread::spawn(|| thread_status("NoNewPrivs:"));
            assert_eq!(child.join().unwrap(), "1");
            let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE);
            assert_eq!(limit.unwrap(), (0, 0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_vmm_with_a_network_may_open_as_many_files_as_the_hard_limit_allows() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let lower = hard.min(256);
        setrlimit(Resource::RLIMIT_NOFILE, lower, hard).unwrap();
        raise_fd_limit();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
