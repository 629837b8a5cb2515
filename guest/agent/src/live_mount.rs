//! Live mounts (`Mount` and `Unmount` frames): the host filled, or is
//! about to empty, a hot-plug slot — a virtio-mmio window Linux found at
//! boot with DeviceID 0 and left unbound.
//!
//! `Mount` finds the slot's platform device by its MMIO base in
//! `/proc/iomem`, writes its name to the virtio-mmio driver's `bind` file
//! in sysfs (the driver probes it again and finds the virtio-fs device),
//! and mounts the tag at the target (nosuid, nodev, read-only when asked).
//! `Unmount` unmounts the target (lazily when it is busy: the host takes
//! the device away regardless) and writes the name to `unbind`.
//!
//! Nothing here is the host's safety: the host empties the slot and ends
//! the daemon whatever this code does.

use std::fs;
use std::path::{Component, Path, PathBuf};

use nix::mount::{umount2, MntFlags};

/// Lines of `/proc/iomem` looked at, at most.
const MAX_IOMEM_LINES: usize = 4096;
/// Longest platform device name accepted.
const MAX_NAME: usize = 64;
/// The virtio-mmio platform driver's directory in sysfs.
const DRIVER: &str = "sys/bus/platform/drivers/virtio-mmio";
/// The platform devices in sysfs.
const DEVICES: &str = "sys/bus/platform/devices";

/// Why a live mount could not be made or undone.
#[derive(Debug, thiserror::Error)]
pub enum LiveMountError {
    /// No device sits at the base.
    #[error("no platform device at {0:#x} in /proc/iomem")]
    NoDevice(u64),
    /// `/proc/iomem` could not be read.
    #[error("cannot read /proc/iomem: {0}")]
    Iomem(std::io::Error),
    /// The target is not an absolute, plain path.
    #[error("the mount point must be an absolute path without `..`")]
    Target,
    /// The tag is not one virtio-fs takes.
    #[error("bad virtio-fs tag")]
    Tag,
    /// Writing `bind` or `unbind` failed.
    #[error("cannot {what} {name}: {source}")]
    Sysfs {
        /// `bind` or `unbind`.
        what: &'static str,
        /// The device.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// Creating the mount point failed.
    #[error("cannot create the mount point: {0}")]
    MountPoint(std::io::Error),
    /// mount(2) or umount(2) failed.
    #[error("cannot {what}: {source}")]
    Mount {
        /// What was tried.
        what: &'static str,
        /// Why.
        source: nix::Error,
    },
}

/// The name of the platform device whose memory resource starts at `base`,
/// from `/proc/iomem` text. Only names a sysfs file name can be (letters,
/// digits, `:._-`, not starting with `.`) are taken; other lines are
/// skipped.
pub fn device_at(iomem: &str, base: u64) -> Option<String> {
    iomem.lines().take(MAX_IOMEM_LINES).find_map(|line| {
        let (range, name) = line.trim_start().split_once(" : ")?;
        let (start, _end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let name = name.trim_end();
        (start == base && is_device_name(name)).then(|| name.to_owned())
    })
}

fn is_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
}

/// The slot's device under `root` (`/` in the guest): found in
/// `proc/iomem`, and present in sysfs.
pub fn find_device(root: &Path, base: u64) -> Result<String, LiveMountError> {
    let iomem = fs::read_to_string(root.join("proc/iomem")).map_err(LiveMountError::Iomem)?;
    let name = device_at(&iomem, base).ok_or(LiveMountError::NoDevice(base))?;
    if !root.join(DEVICES).join(&name).exists() {
        return Err(LiveMountError::NoDevice(base));
    }
    Ok(name)
}

/// Whether `name` has a driver bound.
fn is_bound(root: &Path, name: &str) -> bool {
    root.join(DEVICES).join(name).join("driver").exists()
}

/// Binds the virtio-mmio driver to `name` (nothing to do when bound).
pub fn bind(root: &Path, name: &str) -> Result<(), LiveMountError> {
    if is_bound(root, name) {
        return Ok(());
    }
    write_sysfs(root, "bind", name)
}

/// Unbinds `name` from its driver (nothing to do when unbound).
pub fn unbind(root: &Path, name: &str) -> Result<(), LiveMountError> {
    if !is_bound(root, name) {
        return Ok(());
    }
    write_sysfs(root, "unbind", name)
}

fn write_sysfs(root: &Path, what: &'static str, name: &str) -> Result<(), LiveMountError> {
    fs::write(root.join(DRIVER).join(what), name).map_err(|source| LiveMountError::Sysfs {
        what,
        name: name.to_owned(),
        source,
    })
}

/// `target` as a plain absolute path.
pub fn mount_point(target: &[u8]) -> Result<PathBuf, LiveMountError> {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(target));
    // `.` segments are dropped by `components`, so look at the bytes.
    let plain = path.is_absolute()
        && !target.contains(&0)
        && !target
            .split(|&b| b == b'/')
            .any(|seg| seg == b"." || seg == b"..")
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path.components().count() > 1;
    plain.then(|| path.to_owned()).ok_or(LiveMountError::Target)
}

/// Carries out a `Mount`: bind the slot at `base`, mount `tag` on
/// `target`.
pub fn mount(base: u64, tag: &str, target: &[u8], read_only: bool) -> Result<(), LiveMountError> {
    let root = Path::new("/");
    let target = mount_point(target)?;
    if tag.is_empty() || tag.len() > 36 || tag.contains('\0') {
        return Err(LiveMountError::Tag);
    }
    let name = find_device(root, base)?;
    bind(root, &name)?;
    fs::create_dir_all(&target).map_err(LiveMountError::MountPoint)?;
    let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
    crate::init::mount_virtiofs(tag, &target, read_only, flags).map_err(|source| {
        // Leave the slot as it was found.
        let _ = unbind(root, &name);
        LiveMountError::Mount {
            what: "mount",
            source,
        }
    })?;
    crate::log!("live mount {tag} on {} ({name})", target.display());
    Ok(())
}

/// Carries out an `Unmount`: unmount `target` (lazily when busy) and
/// unbind the slot at `base`.
pub fn unmount(base: u64, target: &[u8]) -> Result<(), LiveMountError> {
    let root = Path::new("/");
    let target = mount_point(target)?;
    match umount2(&target, MntFlags::empty()) {
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(nix::Error::EBUSY) => {
            crate::log!("{} is busy; detaching it lazily", target.display());
            umount2(&target, MntFlags::MNT_DETACH).map_err(|source| LiveMountError::Mount {
                what: "detach the busy mount",
                source,
            })?;
        }
        Err(source) => {
            return Err(LiveMountError::Mount {
                what: "unmount",
                source,
            })
        }
    }
    let name = find_device(root, base)?;
    unbind(root, &name)?;
    crate::log!("live mount on {} removed ({name})", target.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
c0000000-c0000fff : LNRO0005:00
  c0000000-c0000fff : LNRO0005:00
c0003000-c0003fff : LNRO0005:03
c0004000-c0004fff : virtio-mmio.4
fee00000-fee00fff : Local APIC
";

    #[test]
    fn devices_are_found_by_their_base() {
        assert_eq!(
            device_at(IOMEM, 0xc000_3000).as_deref(),
            Some("LNRO0005:03")
        );
        assert_eq!(
            device_at(IOMEM, 0xc000_0000).as_deref(),
            Some("LNRO0005:00")
        );
        assert_eq!(
            device_at(IOMEM, 0xc000_4000).as_deref(),
            Some("virtio-mmio.4")
        );
        assert_eq!(device_at(IOMEM, 0xc000_5000), None);
        assert_eq!(device_at(IOMEM, 0xc000_3001), None);
    }

    #[test]
    fn garbled_and_hostile_lines_are_skipped() {
        let bad = "\
zzzz-ffff : LNRO0005:01
c0001000 : LNRO0005:01
c0001000-c0001fff :
c0001000-c0001fff : ../../../../etc/passwd
c0001000-c0001fff : .hidden
c0001000-c0001fff : a b
c0001000-c0001fff : x\u{7}y
ffffffffffffffffff-0 : big
";
        assert_eq!(device_at(bad, 0xc000_1000), None);
        let long = format!("c0001000-c0001fff : {}\n", "a".repeat(65));
        assert_eq!(device_at(&long, 0xc000_1000), None);
        assert_eq!(device_at("", 0), None);
        // Zeroed addresses (what a non-root reader sees) match base 0 only.
        assert_eq!(
            device_at("00000000-00000000 : LNRO0005:00\n", 0xc000_0000),
            None
        );
    }

    #[test]
    fn only_the_first_lines_are_read() {
        let mut text = "00000000-00000fff : x\n".repeat(MAX_IOMEM_LINES);
        text.push_str("c0000000-c0000fff : LNRO0005:00\n");
        assert_eq!(device_at(&text, 0xc000_0000), None);
    }

    fn sysfs(root: &Path, name: &str, bound: bool) {
        let dev = root.join(DEVICES).join(name);
        fs::create_dir_all(&dev).unwrap();
        if bound {
            fs::create_dir_all(dev.join("driver")).unwrap();
        }
        fs::create_dir_all(root.join(DRIVER)).unwrap();
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::write(root.join("proc/iomem"), IOMEM).unwrap();
    }

    #[test]
    fn bind_and_unbind_write_the_driver_files_only_when_needed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        sysfs(root, "LNRO0005:03", false);
        let name = find_device(root, 0xc000_3000).unwrap();
        // In iomem but not in sysfs: refused.
        assert!(matches!(
            find_device(root, 0xc000_4000),
            Err(LiveMountError::NoDevice(_))
        ));
        unbind(root, &name).unwrap();
        assert!(!root.join(DRIVER).join("unbind").exists());
        bind(root, &name).unwrap();
        assert_eq!(
            fs::read_to_string(root.join(DRIVER).join("bind")).unwrap(),
            "LNRO0005:03"
        );
        fs::create_dir(root.join(DEVICES).join(&name).join("driver")).unwrap();
        unbind(root, &name).unwrap();
        assert_eq!(
            fs::read_to_string(root.join(DRIVER).join("unbind")).unwrap(),
            "LNRO0005:03"
        );
    }

    #[test]
    fn mount_points_are_plain_absolute_paths() {
        assert_eq!(mount_point(b"/mnt/live").unwrap(), Path::new("/mnt/live"));
        for bad in [&b"mnt"[..], b"/", b"", b"/mnt/../etc", b"/a/./b", b"/a\0b"] {
            assert!(mount_point(bad).is_err(), "{bad:?}");
        }
    }
}
