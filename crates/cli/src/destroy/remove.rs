//! Measuring and removing a place without ever following a symbolic link.
//!
//! Agent homes are shared with the guest read-write, so the guest may have
//! left anything in them: links to host files (`~/.ssh`, `/`), directories
//! it made unwritable (`chmod 0`), millions of files. None of that may make
//! `destroy` touch anything outside the place: a link is removed as a
//! link, never followed (neither to measure nor to delete), and a
//! directory is opened with `O_NOFOLLOW` before its mode is fixed. `destroy`
//! runs with the VM stopped, so nothing changes the tree meanwhile.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;

/// Entries [`disk_usage`] looks at, at most (then the size is a lower bound).
const MAX_ENTRIES: u64 = 10_000_000;

/// What the place at `path` takes on disk, in bytes (allocated blocks:
/// a sparse persistent root counts what it holds), without following links;
/// `None` when nothing is there.
pub fn disk_usage(path: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        let mut budget = MAX_ENTRIES;
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if budget == 0 {
                    return Some(total);
                }
                budget -= 1;
                // `DirEntry::metadata` does not follow links.
                let Ok(m) = entry.metadata() else { continue };
                total += m.blocks() * 512;
                if m.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
    Some(total)
}

/// Removes the place at `path`: a link or file as such, a directory with
/// everything in it; nothing there is fine.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
        }
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path)
            .with_context(|| format!("cannot remove {}", path.display()));
    }
    // The standard library's removal opens each directory relative to its
    // parent without following links (so a link the guest planted is
    // unlinked, its target untouched); it fails only on directories the
    // guest made unwritable or unreadable: open those up and try again.
    if std::fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    open_up(path);
    std::fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))
}

/// Gives the user full access to every directory under `path` (itself
/// included), opened without following links, so that they can be emptied.
fn open_up(path: &Path) {
    let mut budget = MAX_ENTRIES;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if budget == 0 {
            return;
        }
        budget -= 1;
        if chmod_dir_nofollow(&dir).is_err() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

/// `chmod 0700` of the directory `dir`, refusing a link.
fn chmod_dir_nofollow(dir: &Path) -> nix::Result<()> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::S_IRWXU)
}

/// `bytes` for people: `512 B`, `4.0 KiB`, `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_planted_link_is_removed_and_its_target_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), vec![7u8; 100_000]).unwrap();
        let place = tmp.path().join("place");
        std::fs::create_dir_all(place.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&outside, place.join("a/b/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("precious"), place.join("file-link")).unwrap();
        std::fs::write(place.join("a/own"), b"x").unwrap();
        // Links are not followed when measuring either.
        let used = disk_usage(&place).unwrap();
        assert!(used < 100_000, "{used}");
        remove(&place).unwrap();
        assert!(!place.exists());
        assert_eq!(
            std::fs::read(outside.join("precious")).unwrap().len(),
            100_000
        );
        // A place that is itself a link: the link goes, not the target.
        let link = tmp.path().join("link-place");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        remove(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert!(outside.join("precious").exists());
    }

    #[test]
    fn directories_the_guest_locked_are_removed_too() {
        let tmp = tempfile::tempdir().unwrap();
        let place = tmp.path().join("place");
        std::fs::create_dir_all(place.join("locked/deeper")).unwrap();
        std::fs::write(place.join("locked/deeper/f"), b"x").unwrap();
        std::fs::set_permissions(
            place.join("locked/deeper"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        std::fs::set_permissions(place.join("locked"), std::fs::Permissions::from_mode(0o500))
            .unwrap();
        remove(&place).unwrap();
        assert!(!place.exists());
        // Nothing there: fine, and nothing to measure.
        remove(&place).unwrap();
        assert_eq!(disk_usage(&place), None);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(4096), "4.0 KiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
