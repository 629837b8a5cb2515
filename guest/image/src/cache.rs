//! A cache directory for downloaded packages and built images: where it
//! is, a lock that serialises builders across processes, content keys, and
//! building entries atomically.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// A cache directory. Entries are directories named by content keys;
/// each appears whole or not at all.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// An exclusive `flock` on the cache, released when dropped: two builders
/// (test processes run in parallel) must not race on one entry.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl Cache {
    /// The cache directory `$<env_var>` if set, else
    /// `$XDG_CACHE_HOME/agentvm/<sub>`, else `~/.cache/agentvm/<sub>`
    /// (created if missing).
    pub fn from_env(env_var: &str, sub: &str) -> Result<Self, ImageError> {
        let root = match std::env::var_os(env_var) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => match std::env::var_os("XDG_CACHE_HOME") {
                Some(p) if !p.is_empty() => PathBuf::from(p).join("agentvm").join(sub),
                _ => {
                    let home = std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("/tmp"));
                    home.join(".cache/agentvm").join(sub)
                }
            },
        };
        Self::at(root)
    }

    /// A cache rooted at `root` (created if missing).
    pub fn at(root: PathBuf) -> Result<Self, ImageError> {
        fs::create_dir_all(&root).map_err(|e| ImageError::io("Cannot create", &root, e))?;
        Ok(Cache { root })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the cache lock, waiting for other holders.
    pub fn lock(&self) -> Result<CacheLock, ImageError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io("Cannot open", &path, e))?;
        loop {
            // SAFETY: flock on a file descriptor this function owns; no memory is shared.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(CacheLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(ImageError::io("Cannot lock", &path, err));
            }
        }
    }

    /// Returns `root/name`, building it first with `build` (into a temporary
    /// sibling that is renamed into place) when it does not exist yet.
    pub fn entry(
        &self,
        name: &str,
        build: impl FnOnce(&Path) -> Result<(), ImageError>,
    ) -> Result<PathBuf, ImageError> {
        let dir = self.root.join(name);
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.root.join(format!("{name}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| ImageError::io("Cannot create", &tmp, e))?;
        if let Err(e) = build(&tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &dir).map_err(|e| ImageError::io("Cannot rename into", &dir, e))?;
        Ok(dir)
    }

    /// Removes all but the `keep` most recently modified entries whose names
    /// start with `prefix` (old images keyed by an older binary).
    pub fn prune(&self, prefix: &str, keep: usize) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        found.sort();
        let excess = found.len().saturating_sub(keep);
        for (_, path) in found.into_iter().take(excess) {
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

/// 64-bit FNV-1a: a stable content hash for cache keys (not for security).
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl KeyHasher {
    /// Mixes in `bytes`, followed by a separator so that `("ab","c")` and
    /// `("a","bc")` differ.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Mixes in `bytes` without a separator: a file's contents read in
    /// pieces hash as the whole would.
    pub fn add_content(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Mixes in a file's contents.
    pub fn add_file(&mut self, path: &Path) -> Result<&mut Self, ImageError> {
        let mut f = File::open(path).map_err(|e| ImageError::io("Cannot read", path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| ImageError::io("Cannot read", path, e))?;
            if n == 0 {
                break;
            }
            self.add_content(&buf[..n]);
        }
        Ok(self.add(b""))
    }

    /// The key as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_separated() {
        assert_eq!(
            KeyHasher::default().add(b"ab").add(b"c").hex(),
            KeyHasher::default().add(b"ab").add(b"c").hex()
        );
        assert_ne!(
            KeyHasher::default().add(b"ab").add(b"c").hex(),
            KeyHasher::default().add(b"a").add(b"bc").hex()
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"ab").unwrap();
        assert_eq!(
            KeyHasher::default().add_file(&f).unwrap().hex(),
            KeyHasher::default().add(b"ab").hex()
        );
    }

    #[test]
    fn entry_builds_once_and_prune_keeps_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("c")).unwrap();
        let _lock = cache.lock().unwrap();
        let mut builds = 0;
        for _ in 0..2 {
            let p = cache
                .entry("thing-1", |tmp| {
                    builds += 1;
                    fs::write(tmp.join("x"), b"1").map_err(|e| ImageError::io("w", tmp, e))
                })
                .unwrap();
            assert_eq!(fs::read(p.join("x")).unwrap(), b"1");
        }
        assert_eq!(builds, 1);
        let failed = cache.entry("thing-2", |tmp| {
            Err(ImageError::io("w", tmp, std::io::Error::other("boom")))
        });
        assert!(failed.is_err());
        assert!(!cache.root().join("thing-2").exists());
        cache.prune("thing-", 0);
        assert!(!cache.root().join("thing-1").exists());
    }
}
