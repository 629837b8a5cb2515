//! agentvm's own guest kernel: Linux built by `guest/kernel/build.sh` from
//! `guest/kernel/microvm.config` (everything a guest needs built in, no
//! modules), cached by the fragment, the script and the source it was
//! built from.
//!
//! A build takes minutes (about 9 on two cores, many more beside other
//! work); [`OwnKernel::cached`] never builds, [`OwnKernel::build`] builds
//! when the cache lacks it. The source is `$AGENTVM_KERNEL_SRC`, else
//! Debian's `linux-source-6.12` tarball.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::progress::{Event, Progress};
use crate::{Cache, ImageError, KeyHasher};

/// Where build.sh gets its source unless `$AGENTVM_KERNEL_SRC` says.
pub const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.12.tar.xz";
/// The cache's environment variable and directory under `~/.cache/agentvm`.
pub const CACHE_ENV: &str = "AGENTVM_KERNEL_CACHE";
/// See [`CACHE_ENV`].
pub const CACHE_DIR: &str = "kernel";
/// How long a build takes on two idle cores, said before one starts.
pub const BUILD_MINUTES: u32 = 9;

/// The script and fragment, as compiled into this crate.
const BUILD_SH: &str = include_str!("../../kernel/build.sh");
const FRAGMENT: &str = include_str!("../../kernel/microvm.config");

/// A built kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnKernel {
    /// The cache entry.
    pub dir: PathBuf,
}

impl OwnKernel {
    /// The ELF vmlinux (PVH entry).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// The bzImage.
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }

    /// The kernel's `.config`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The source build.sh uses: `$AGENTVM_KERNEL_SRC`, else
    /// [`DEFAULT_SOURCE`].
    pub fn source() -> PathBuf {
        std::env::var_os("AGENTVM_KERNEL_SRC")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_SOURCE.into())
    }

    /// The cache entry's name for a build from `src`: the script, the
    /// fragment, and the source by path, size and modification time
    /// (hashing a 150 MB tarball is not worth it).
    pub fn key(src: &Path) -> String {
        let mut key = KeyHasher::default();
        key.add(b"agentvm-kernel-2")
            .add(BUILD_SH.as_bytes())
            .add(FRAGMENT.as_bytes())
            .add(src.as_os_str().as_encoded_bytes());
        if let Ok(meta) = std::fs::metadata(src) {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            key.add(&meta.len().to_le_bytes()).add(&mtime.to_le_bytes());
        }
        format!("guest-kernel-{}", key.hex())
    }

    /// The cached build for `src`, if there is one.
    pub fn cached(cache: &Cache, src: &Path) -> Option<OwnKernel> {
        let dir = cache.root().join(Self::key(src));
        let k = OwnKernel { dir };
        (k.vmlinux().is_file() && k.bzimage().is_file()).then_some(k)
    }

    /// The cached build, else builds it (minutes; `progress` hears the
    /// compiler's output and the time it took). Fails naming what to
    /// install when the source is missing.
    pub fn build(
        cache: &Cache,
        src: &Path,
        progress: &mut dyn Progress,
    ) -> Result<OwnKernel, ImageError> {
        if let Some(k) = Self::cached(cache, src) {
            progress.event(Event::Cached("guest kernel"));
            return Ok(k);
        }
        if !src.exists() {
            return Err(ImageError::io(
                "Cannot find the kernel source (`apt-get install linux-source-6.12`, or set \
                 AGENTVM_KERNEL_SRC to a Linux tree or tarball)",
                src,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let _lock = cache.lock()?;
        let name = Self::key(src);
        let step =
            format!("building the guest kernel (about {BUILD_MINUTES} minutes on two idle cores)");
        progress.event(Event::Start(&step));
        let started = std::time::Instant::now();
        let dir = cache.entry(&name, |tmp| {
            let script = tmp.join("build.sh");
            let fragment = tmp.join("microvm.config");
            std::fs::write(&script, BUILD_SH)
                .and_then(|()| std::fs::write(&fragment, FRAGMENT))
                .map_err(|e| ImageError::io("Cannot write", tmp, e))?;
            let out = tmp.join("out");
            let status = Command::new("bash")
                .arg(&script)
                .arg(src)
                .arg(&out)
                .status()
                .map_err(|e| ImageError::io("Cannot run", &script, e))?;
            if !status.success() {
                let e = std::io::Error::other(format!("exited with {status}"));
                return Err(ImageError::io(
                    "Failed to build the kernel with",
                    &script,
                    e,
                ));
            }
            for f in ["vmlinux", "bzImage", "config"] {
                std::fs::rename(out.join(f), tmp.join(f))
                    .map_err(|e| ImageError::io("Cannot keep", &out.join(f), e))?;
            }
            let _ = std::fs::remove_dir_all(&out);
            Ok(())
        })?;
        cache.prune("guest-kernel-", 2);
        progress.event(Event::Done(started.elapsed()));
        Ok(OwnKernel { dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_source() {
        let a = OwnKernel::key(Path::new("/nonexistent/a.tar.xz"));
        let b = OwnKernel::key(Path::new("/nonexistent/b.tar.xz"));
        assert_ne!(a, b);
        assert_eq!(a, OwnKernel::key(Path::new("/nonexistent/a.tar.xz")));
        assert!(a.starts_with("guest-kernel-"));
    }

    #[test]
    fn a_missing_source_is_an_error_that_says_what_to_install() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::at(dir.path().to_path_buf()).expect("cache");
        let src = dir.path().join("no-such-source.tar.xz");
        assert_eq!(OwnKernel::cached(&cache, &src), None);
        let err = OwnKernel::build(&cache, &src, &mut crate::Quiet)
            .expect_err("no source")
            .to_string();
        assert!(err.contains("linux-source-6.12"), "{err}");
    }
}
