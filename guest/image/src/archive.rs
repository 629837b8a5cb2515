//! An initramfs under construction: a newc cpio file where every parent
//! directory is added once, before the first entry that needs it, and host
//! binaries come with the shared libraries they need.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::error::ImageError;

/// Directories every initramfs gets, and `/dev/console` (the kernel opens
/// it for init's stdio before anything mounts devtmpfs).
const BASE_DIRS: &[&str] = &["bin", "dev", "proc", "sys", "tmp", "etc", "lib/modules"];

/// A cpio archive being written to a file.
pub struct Initramfs {
    cpio: CpioWriter<BufWriter<File>>,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
    path: PathBuf,
}

impl Initramfs {
    /// Starts the archive at `path` with the base directories and
    /// `/dev/console`.
    pub fn create(path: &Path) -> Result<Self, ImageError> {
        let mut a = Self::create_empty(path)?;
        for d in BASE_DIRS {
            a.dir(d)?;
        }
        a.wrap(|c| c.char_dev("dev/console", 0o600, 5, 1))?;
        Ok(a)
    }

    /// Starts an archive with nothing in it (an overlay appended to
    /// another archive: the kernel unpacks concatenated archives in order).
    pub fn create_empty(path: &Path) -> Result<Self, ImageError> {
        let f = File::create(path).map_err(|e| ImageError::io("Cannot create", path, e))?;
        Ok(Initramfs {
            cpio: CpioWriter::new(BufWriter::new(f)),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
            path: path.to_path_buf(),
        })
    }

    fn wrap(
        &mut self,
        f: impl FnOnce(&mut CpioWriter<BufWriter<File>>) -> std::io::Result<()>,
    ) -> Result<(), ImageError> {
        f(&mut self.cpio).map_err(|e| ImageError::io("Cannot write", &self.path, e))
    }

    /// A directory and its parents (once each).
    pub fn dir(&mut self, dir: &str) -> Result<(), ImageError> {
        let dir = dir.trim_matches('/');
        if dir.is_empty() || self.dirs.contains(dir) {
            return Ok(());
        }
        if let Some((parent, _)) = dir.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(dir.to_string());
        self.wrap(|c| c.dir(dir))
    }

    fn parent_of(&mut self, name: &str) -> Result<(), ImageError> {
        match name.trim_start_matches('/').rsplit_once('/') {
            Some((parent, _)) => self.dir(parent),
            None => Ok(()),
        }
    }

    /// A file holding `data`.
    pub fn bytes(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), ImageError> {
        self.parent_of(name)?;
        self.files.insert(name.trim_start_matches('/').to_string());
        self.wrap(|c| c.file(name, mode, data))
    }

    /// A file copied from the host.
    pub fn copy(&mut self, name: &str, mode: u32, src: &Path) -> Result<(), ImageError> {
        let data = fs::read(src).map_err(|e| ImageError::io("Cannot read", src, e))?;
        self.bytes(name, mode, &data)
    }

    /// A symbolic link `name` → `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), ImageError> {
        self.parent_of(name)?;
        self.files.insert(name.trim_start_matches('/').to_string());
        self.wrap(|c| c.symlink(name, target))
    }

    /// Whether a file or link called `name` was added already.
    pub fn has(&self, name: &str) -> bool {
        self.files.contains(name.trim_start_matches('/'))
    }

    /// A host binary and every shared library `ldd` names, at their own
    /// paths (nothing more for a static binary).
    pub fn binary_with_libs(&mut self, name: &str, src: &Path) -> Result<(), ImageError> {
        self.copy(name, 0o755, src)?;
        for lib in shared_libraries(src)? {
            let dst = lib.to_string_lossy().trim_start_matches('/').to_string();
            if !self.has(&dst) {
                self.copy(&dst, 0o755, &lib)?;
            }
        }
        Ok(())
    }

    /// Writes the trailer and closes the file.
    pub fn finish(self) -> Result<(), ImageError> {
        let path = self.path;
        self.cpio
            .finish()
            .map(drop)
            .map_err(|e| ImageError::io("Cannot write", &path, e))
    }
}

/// The absolute library paths `ldd` prints for `bin` (empty when static).
pub fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|source| ImageError::Spawn {
            program: "ldd".into(),
            source,
        })?;
    // `ldd` fails with "not a dynamic executable" on static binaries.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.split(" (0x").next()?;
            let p = l.rsplit("=> ").next()?.trim();
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_added_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        let mut a = Initramfs::create(&path).unwrap();
        a.bytes("usr/share/qemu/x.bin", 0o644, b"x").unwrap();
        a.bytes("usr/share/qemu/y.bin", 0o644, b"y").unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        assert!(a.has("/bin/sh") && a.has("usr/share/qemu/x.bin") && !a.has("bin/ls"));
        a.finish().unwrap();
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).to_string();
        assert_eq!(text.matches("usr/share/qemu\0").count(), 1);
        assert!(text.find("usr/share\0").unwrap() < text.find("usr/share/qemu\0").unwrap());
        assert!(text.contains("dev/console\0"));
    }

    #[test]
    fn an_overlay_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.cpio");
        let mut a = Initramfs::create_empty(&path).unwrap();
        a.bytes("rig/init", 0o755, b"#!/bin/sh\n").unwrap();
        a.finish().unwrap();
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).to_string();
        assert!(!text.contains("dev/console"));
        assert!(text.contains("rig\0") && text.contains("rig/init\0"));
    }
}
