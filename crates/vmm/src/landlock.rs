//! Landlock: once the VM is built, the VMM's own file system access
//! shrinks to what running it needs, so a guest that takes over the
//! process cannot read the user's keys or write their files.
//!
//! [`FsAccess`] lists what stays reachable; the VM applies it to the
//! thread that builds it, and so to every thread and child process started
//! from it afterwards (Landlock is per thread and inherited, never lifted):
//! [`crate::VmBuilder::landlock`] asks for it at the end of
//! [`crate::VmBuilder::build`]: kernel, initrd and /dev/kvm are open by
//! then, and the vCPU and device threads all start later.
//!
//! virtiofsd: the daemon of each share starts during the build, before the
//! ruleset, so it runs unrestricted in its own sandbox. A daemon started
//! again after the guest resets its device is a child of a restricted
//! thread and inherits the ruleset: its binary and libraries must be
//! executable, its share reachable. Landlock also forbids such a child to
//! mount, so `--sandbox namespace` fails there and the restart falls back
//! to `chroot` (root) or, where allowed, `none`
//! ([`agentvm_devices::virtio::fs::Sandbox`]).
//!
//! Where the kernel has no Landlock, the VM runs unrestricted, says so once
//! (a `tracing` warning), and [`crate::Vm::landlock`] reports
//! [`Enforcement::None`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use landlock::{
    path_beneath_rules, Access, AccessFs, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, RulesetStatus, ABI,
};

/// The newest Landlock ABI we know; older kernels get what they support.
const ABI_WANTED: ABI = ABI::V5;

/// Set once the "no Landlock here" warning was given.
static WARNED: AtomicBool = AtomicBool::new(false);

/// What the VMM may still reach, by path (a directory covers everything
/// beneath it). Paths that do not exist are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsAccess {
    /// Read and execute (system libraries, virtiofsd, read-only shares).
    pub read: Vec<PathBuf>,
    /// Read, write, create and remove (the state directory, writable
    /// shares, sockets); never device nodes.
    pub write: Vec<PathBuf>,
    /// Only removing empty directories beneath (the parent of a temporary
    /// state directory, so it can go when the VMM ends).
    pub remove_dirs: Vec<PathBuf>,
}

/// How far the kernel enforced the ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Every right we handle is restricted.
    Full,
    /// An older Landlock: some rights (e.g. truncate, ioctl) stay open.
    Partial,
    /// No Landlock on this kernel: nothing is restricted.
    None,
}

/// Errors while building or applying the ruleset.
#[derive(Debug, thiserror::Error)]
#[error("Cannot restrict the VMM's file system access with Landlock")]
pub struct LandlockError(#[source] RulesetError);

/// Restricts the calling thread (and what it starts from now on) to
/// `access`.
pub(crate) fn restrict_self(access: &FsAccess) -> Result<Enforcement, LandlockError> {
    let all = AccessFs::from_all(ABI_WANTED);
    let read = AccessFs::from_read(ABI_WANTED);
    let write = all & !(AccessFs::MakeChar | AccessFs::MakeBlock);
    let remove_dirs: BitFlags<AccessFs> = AccessFs::RemoveDir.into();
    let status = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(&access.read, read)))
        .and_then(|r| r.add_rules(path_beneath_rules(&access.write, write)))
        .and_then(|r| r.add_rules(path_beneath_rules(&access.remove_dirs, remove_dirs)))
        .and_then(|r| r.restrict_self())
        .map_err(LandlockError)?;
    let enforcement = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    };
    if enforcement == Enforcement::None && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "this kernel has no Landlock: the VMM's file system access is not restricted"
        );
    }
    Ok(enforcement)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_restricted_thread_reaches_only_what_it_was_given() {
        let tmp = tempfile::tempdir().unwrap();
        let inside = tmp.path().join("state");
        let outside = tmp.path().join("secret");
        std::fs::create_dir(&inside).unwrap();
        std::fs::write(&outside, "key").unwrap();
        let access = FsAccess {
            read: vec![PathBuf::from("/proc")],
            write: vec![inside.clone()],
            remove_dirs: Vec::new(),
        };
        // In a thread of its own: the ruleset stays on the thread.
        let (enforced, inside_ok, outside_err, dev_err) = std::thread::spawn(move || {
            let enforced = restrict_self(&access).unwrap();
            let inside_ok = std::fs::write(inside.join("console.log"), "x").is_ok()
                && std::fs::read_to_string("/proc/self/status").is_ok();
            let outside_err = std::fs::read(&outside).map_err(|e| e.kind());
            let dev_err = std::fs::File::open("/dev/null")
                .map(drop)
                .map_err(|e| e.kind());
            (enforced, inside_ok, outside_err, dev_err)
        })
        .join()
        .unwrap();
        assert!(inside_ok);
        if enforced == Enforcement::None {
            eprintln!("skipped: this kernel has no Landlock");
            return;
        }
        assert_eq!(outside_err, Err(std::io::ErrorKind::PermissionDenied));
        assert_eq!(dev_err, Err(std::io::ErrorKind::PermissionDenied));
        // This thread was never restricted.
        assert_eq!(std::fs::read(tmp.path().join("secret")).unwrap(), b"key");
    }
}
