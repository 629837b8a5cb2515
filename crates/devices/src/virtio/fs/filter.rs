//! The seccomp filter every virtiofsd runs under: the guest can never
//! create a setuid or setgid file, or a device node, on the host.
//!
//! virtiofsd does what the guest's FUSE requests say, with its own
//! credentials. When agentvm runs as root (the nested rig's L1 does), a
//! guest root that creates `chmod u+s` files or `mknod c 1 1` nodes in a
//! share would leave a setuid-root binary or a raw device in a host
//! directory. virtiofsd has no option that refuses these (`--killpriv-v2`
//! clears the bits on write only, not on `chmod`), so our spawn installs
//! this filter in the child before it executes virtiofsd. Filters stack:
//! virtiofsd adds its own (`--seccomp kill`) on top, and the kernel takes
//! the strictest verdict, so ours still answers `EPERM` under it.
//!
//! What is refused, with `EPERM` (the guest sees a failed syscall):
//! - a mode with S_ISUID or S_ISGID in `chmod`, `fchmod`, `fchmodat`,
//!   `fchmodat2`, `open`, `openat`, `creat`, `mknod`, `mknodat` (for
//!   `open`/`openat` the mode only counts with O_CREAT or O_TMPFILE, and
//!   without them it is 0);
//! - `mknod`/`mknodat` of a character or block device (FIFOs and sockets
//!   stay allowed);
//! - `openat2` answers `ENOSYS` (its mode sits in a struct a filter cannot
//!   read). virtiofsd probes for it at start and then uses `openat`, as on
//!   kernels before 5.6; it loses `RESOLVE_IN_ROOT`, which matters only
//!   without a sandbox (`--sandbox none`, never used unless allowed): in a
//!   namespace or chroot the share already is its root.
//!
//! File capabilities (`security.capability`) need extended attributes,
//! which virtiofsd serves only with `--xattr`; we never pass it, so
//! `setxattr` never reaches the host (see `daemon::arguments`).
//! `chown` of a setuid file clears the bit in the kernel.

use std::collections::BTreeMap;

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Errors while building the filter (a bug in the rules, never input).
#[derive(Debug, thiserror::Error)]
#[error("Cannot build virtiofsd's seccomp filter")]
pub struct FilterError(#[source] seccompiler::BackendError);

/// The architecture we build for.
#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The bits that are refused in a mode argument.
const PRIVILEGE_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];
/// Device file types refused in `mknod`.
const DEVICE_TYPES: [u64; 2] = [libc::S_IFCHR as u64, libc::S_IFBLK as u64];

/// The compiled filters, ready for [`VirtiofsdFilter::apply`] in the
/// child (compiled before the fork: the child must not allocate).
pub struct VirtiofsdFilter {
    /// EPERM for the modes and node types above.
    modes: BpfProgram,
    /// ENOSYS for openat2.
    openat2: BpfProgram,
}

impl VirtiofsdFilter {
    /// Compiles both filters.
    pub fn new() -> Result<Self, FilterError> {
        Ok(VirtiofsdFilter {
            modes: compile(mode_rules()?, libc::EPERM)?,
            openat2: compile(
                BTreeMap::from([(libc::SYS_openat2, Vec::new())]),
                libc::ENOSYS,
            )?,
        })
    }

    /// Installs both on the calling thread (in the child, before exec).
    /// Allocates nothing.
    pub fn apply(&self) -> std::io::Result<()> {
        for program in [&self.modes, &self.openat2] {
            apply_filter(program).map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

/// Rules matching a privileged mode or a device node.
fn mode_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, FilterError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // (syscall, index of its mode argument)
    let mut with_mode = vec![
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (libc::SYS_fchmodat2, 2),
        (libc::SYS_openat, 3),
        (libc::SYS_mknodat, 2),
    ];
    #[cfg(target_arch = "x86_64")]
    with_mode.extend([
        (libc::SYS_chmod, 1),
        (libc::SYS_open, 2),
        (libc::SYS_creat, 1),
        (libc::SYS_mknod, 1),
    ]);
    for (syscall, arg) in with_mode {
        let entry = rules.entry(syscall).or_default();
        for bit in PRIVILEGE_BITS {
            entry.push(masked(arg, bit, bit)?);
        }
    }
    let mut mknods = vec![(libc::SYS_mknodat, 2)];
    #[cfg(target_arch = "x86_64")]
    mknods.push((libc::SYS_mknod, 1));
    for (syscall, arg) in mknods {
        let entry = rules.entry(syscall).or_default();
        for kind in DEVICE_TYPES {
            entry.push(masked(arg, libc::S_IFMT as u64, kind)?);
        }
    }
    Ok(rules)
}

/// A filter answering `errno` to what `rules` match (an empty rule list
/// matches every call) and allowing everything else.
fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, FilterError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        ARCH,
    )
    .map_err(FilterError)?;
    filter.try_into().map_err(FilterError)
}

/// A rule matching when `(arg & mask) == value` (the low 32 bits: a
/// mode is a 32-bit `mode_t`).
fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompRule, FilterError> {
    let condition = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .map_err(FilterError)?;
    SeccompRule::new(vec![condition]).map_err(FilterError)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Command;

    use super::*;

    /// Runs `script` with `sh` in `dir`, under the filter or not.
    fn sh(dir: &Path, script: &str, filtered: bool) -> bool {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).current_dir(dir);
        if filtered {
            let filter = VirtiofsdFilter::new().unwrap();
            // SAFETY: the child only installs the precompiled filters.
            unsafe {
                cmd.pre_exec(move || filter.apply());
            }
        }
        cmd.status().unwrap().success()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
    }

    #[test]
    fn setuid_setgid_modes_and_device_nodes_are_refused_and_the_rest_works() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert!(sh(d, "touch f && chmod 755 f", true));
        for bits in ["u+s", "g+s", "4755", "2755"] {
            assert!(!sh(d, &format!("chmod {bits} f"), true), "chmod {bits}");
            assert_eq!(mode(&d.join("f")) & 0o7777, 0o755);
        }
        // `install -m` creates and then sets the mode with fchmod.
        assert!(!sh(d, "install -m 4755 f g", true));
        assert!(
            std::fs::metadata(d.join("g")).map_or(true, |m| m.permissions().mode() & 0o6000 == 0)
        );
        assert!(sh(d, "mkfifo p", true));
        assert!(std::fs::symlink_metadata(d.join("p"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(!sh(d, "mknod c c 1 1", true));
        assert!(!sh(d, "mknod b b 7 0", true));
        assert!(!d.join("c").exists() && !d.join("b").exists());
        // Where we may make such files at all (root), it is the filter that
        // stopped them.
        if nix::unistd::geteuid().is_root() {
            assert!(sh(d, "chmod u+s f && mknod c c 1 1", false));
            assert_eq!(mode(&d.join("f")) & 0o4000, 0o4000);
            assert!(std::fs::symlink_metadata(d.join("c"))
                .unwrap()
                .file_type()
                .is_char_device());
        }
    }
}
