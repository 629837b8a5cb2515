//! What a VMM process (`boot`, `__vmm`) may still reach on the host once
//! its VM is built: the Landlock ruleset of [`agentvm_vmm::landlock`].
//!
//! Kernel, initrd, the console file, /dev/kvm and the guest memory are
//! open by then. What is still opened by path afterwards:
//! - the state directory (sockets, pid file, logs), read-write;
//! - the vsock socket's directory (guest connections go to `UDS_<port>`;
//!   its socket file is removed at the end), read-write;
//! - every share, as the guest may use it: a virtiofsd restarted after a
//!   device reset inherits the ruleset (see [`agentvm_vmm::landlock`]);
//! - what running virtiofsd takes: its binary, the system's libraries and
//!   configuration (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc`), read and
//!   execute; `/dev/null` for its stdin and stdout;
//! - `/proc` (our own status, virtiofsd's process group) and `/sys`
//!   (which KVM this is, for a crash message), read-only.
//!
//! Everything else — the user's home, keys, other workspaces — is out of
//! reach, and no device node can be created anywhere.

use std::path::{Path, PathBuf};

use agentvm_devices::virtio::fs::VirtioFs;
use agentvm_vmm::landlock::FsAccess;

/// System directories virtiofsd (and the C library) read and execute from.
const SYSTEM: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys",
];

/// The ruleset for a VMM with `shares`, its state in `state_dir` and its
/// vsock socket at `vsock`.
pub fn vmm_access(state_dir: &Path, vsock: Option<&Path>, shares: &[VirtioFs]) -> FsAccess {
    let mut access = FsAccess {
        read: SYSTEM.iter().map(PathBuf::from).collect(),
        write: vec![state_dir.to_owned(), PathBuf::from("/dev/null")],
        // A temporary state directory (`boot`) is removed at exit.
        remove_dirs: state_dir.parent().map(Path::to_owned).into_iter().collect(),
    };
    if let Some(dir) = vsock.and_then(Path::parent) {
        access.write.push(dir.to_owned());
    }
    for fs in shares {
        access.read.push(fs.virtiofsd().path.clone());
        let config = fs.config();
        let list = if config.read_only {
            &mut access.read
        } else {
            &mut access.write
        };
        list.push(config.shared_dir.clone());
    }
    access
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_and_vsock_directories_are_writable_and_the_system_only_readable() {
        let a = vmm_access(
            Path::new("/run/user/1/agentvm/abc"),
            Some(Path::new("/tmp/v/vsock.sock")),
            &[],
        );
        assert!(a.write.contains(&PathBuf::from("/run/user/1/agentvm/abc")));
        assert!(a.write.contains(&PathBuf::from("/tmp/v")));
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
}
