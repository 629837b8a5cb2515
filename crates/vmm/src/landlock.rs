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
//!
//! [`vm_access`] is what a VM built from a [`VmConfig`] still needs
//! ([`Landlock::FromConfig`](crate::config::Landlock::FromConfig)). Kernel,
//! initrd, the console file, /dev/kvm and the guest memory are open by
//! then. What is still opened by path afterwards:
//! - the state directory (sockets, and whatever the embedder keeps there:
//!   `agentvm`'s pid file and logs), read-write;
//! - the vsock socket's directory (guest connections go to `UDS_<port>`;
//!   its socket file is removed at the end), read-write;
//! - every share, as the guest may use it: a virtiofsd restarted after a
//!   device reset inherits the ruleset;
//! - what running virtiofsd takes: its binary, the system's libraries and
//!   configuration (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc`), read and
//!   execute; `/dev/null` for its stdin and stdout;
//! - `/proc` (our own status, virtiofsd's process group) and `/sys`
//!   (which KVM this is, for a crash message), read-only.
//!
//! Everything else — the user's home, keys, other workspaces — is out of
//! reach, and no device node can be created anywhere.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use landlock::{
    path_beneath_rules, Access, AccessFs, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, RulesetStatus, ABI,
};

use crate::config::{ShareRole, VmConfig};

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

/// System directories virtiofsd (and the C library) read and execute from.
const SYSTEM: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys",
];

/// What the VMM of `config` may still reach once its VM is built (see the
/// [module docs](self)); `virtiofsd` are the binaries its shares' daemons
/// run.
///
/// ```
/// use std::path::PathBuf;
/// use agentvm_vmm::config::{ShareConfig, VmConfig, VsockConfig};
/// use agentvm_vmm::landlock::vm_access;
///
/// let mut config = VmConfig::new("vmlinux");
/// config.state_dir = Some("/run/user/1000/agentvm/vm1".into());
/// config.vsock = Some(VsockConfig::new("/run/user/1000/agentvm/vm1/vsock.sock"));
/// let mut docs = ShareConfig::new("/home/me/docs", "docs");
/// docs.read_only = true;
/// config.shares.push(docs);
/// let access = vm_access(&config, &["/usr/libexec/virtiofsd".into()]);
/// assert!(access.write.contains(&PathBuf::from("/run/user/1000/agentvm/vm1")));
/// assert!(access.read.contains(&PathBuf::from("/home/me/docs")));
/// assert!(!access.write.contains(&PathBuf::from("/home/me/docs")));
/// ```
pub fn vm_access(config: &VmConfig, virtiofsd: &[PathBuf]) -> FsAccess {
    let mut access = FsAccess {
        read: SYSTEM.iter().map(PathBuf::from).collect(),
        write: vec![PathBuf::from("/dev/null")],
        remove_dirs: Vec::new(),
    };
    if let Some(state_dir) = &config.state_dir {
        access.write.push(state_dir.clone());
        // A temporary state directory (`agentvm boot`'s) is removed at exit.
        access
            .remove_dirs
            .extend(state_dir.parent().map(Path::to_owned));
    }
    if let Some(dir) = config.vsock.as_ref().and_then(|v| v.uds.parent()) {
        access.write.push(dir.to_owned());
    }
    access
        .read
        .extend(virtiofsd.iter().map(|p| p.to_path_buf()));
    for share in &config.shares {
        let read_only = share.read_only || matches!(share.role, ShareRole::RootImage { .. });
        let list = if read_only {
            &mut access.read
        } else {
            &mut access.write
        };
        list.push(share.host_dir.clone());
    }
    access
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
    use crate::config::{ShareConfig, VsockConfig};

    #[test]
    fn the_state_and_vsock_directories_are_writable_and_the_system_only_readable() {
        let mut config = VmConfig::new("vmlinux");
        config.state_dir = Some("/run/user/1/agentvm/abc".into());
        config.vsock = Some(VsockConfig::new("/tmp/v/vsock.sock"));
        let a = vm_access(&config, &[]);
        assert!(a.write.contains(&PathBuf::from("/run/user/1/agentvm/abc")));
        assert!(a.write.contains(&PathBuf::from("/tmp/v")));
        assert!(a.write.contains(&PathBuf::from("/dev/null")));
        assert!(a.read.contains(&PathBuf::from("/usr")));
        assert!(!a
            .write
            .iter()
            .any(|p| p == Path::new("/usr") || p == Path::new("/")));
        assert!(!a
            .read
            .iter()
            .chain(&a.write)
            .any(|p| p.starts_with("/home") || p.starts_with("/root")));
        assert_eq!(a.remove_dirs, [PathBuf::from("/run/user/1/agentvm")]);
    }

    #[test]
    fn shares_are_reachable_as_the_guest_may_use_them_and_virtiofsd_runs() {
        let mut config = VmConfig::new("vmlinux");
        config.state_dir = Some("/s".into());
        let mut ro = ShareConfig::new("/w/docs", "docs");
        ro.read_only = true;
        config.shares = vec![
            ShareConfig::new("/w/proj", "proj"),
            ro,
            ShareConfig::root_image("/img", "rootfs.erofs"),
            ShareConfig::root_upper("/upper", "upper.ext4"),
        ];
        let a = vm_access(&config, &["/opt/virtiofsd".into()]);
        for p in ["/w/proj", "/upper"] {
            assert!(a.write.contains(&PathBuf::from(p)), "{p}");
        }
        for p in ["/w/docs", "/img", "/opt/virtiofsd"] {
            assert!(a.read.contains(&PathBuf::from(p)), "{p}");
            assert!(!a.write.contains(&PathBuf::from(p)), "{p}");
        }
    }

    #[test]
    fn without_a_state_directory_or_vsock_only_the_system_and_dev_null_remain() {
        let a = vm_access(&VmConfig::new("vmlinux"), &[]);
        assert_eq!(a.write, [PathBuf::from("/dev/null")]);
        assert!(a.remove_dirs.is_empty());
        assert_eq!(a.read.len(), SYSTEM.len());
    }

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
