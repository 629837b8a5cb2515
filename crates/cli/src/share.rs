//! `agentvm boot --share HOST_DIR:TAG[:ro]`: a host directory shared into
//! the guest over virtio-fs, mounted by the guest agent at the same path.

use std::path::{Path, PathBuf};

use agentvm_devices::virtio::fs::{DaemonError, FsConfig, FsError, StartError, VirtioFs};
use anyhow::{bail, Context};

/// One `--share` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The host directory (absolute).
    pub dir: PathBuf,
    /// The virtio-fs tag.
    pub tag: String,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// Where the guest agent mounts it [default: `dir`, the same path].
    pub target: Option<PathBuf>,
    /// What the guest does with it.
    pub role: ShareRole,
}

/// What the guest agent does with a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShareRole {
    /// Mounts it at its target (`agentvm.share=`).
    #[default]
    Mount,
    /// The guest image's directory: the agent mounts its [`ROOTFS`] file as
    /// the guest's read-only root (`agentvm.rootfs=`); read-only and cached
    /// in full (the host never changes an image).
    RootImage,
    /// The workspace's persistent root layer: the agent mounts its
    /// [`UPPER`] file as the writable layer over the root
    /// (`agentvm.upper=`).
    RootUpper,
}

/// The root file system's file in a [`ShareRole::RootImage`] share.
pub use crate::image::ROOTFS;
/// The ext4 image in a [`ShareRole::RootUpper`] share.
pub const UPPER: &str = "upper.ext4";

impl std::str::FromStr for ShareSpec {
    type Err = String;

    /// `HOST_DIR:TAG` or `HOST_DIR:TAG:ro` (`:rw` is the default). Split
    /// from the right, so the directory may contain `:`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, read_only) = match s.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            _ => (s, false),
        };
        let Some((dir, tag)) = rest.rsplit_once(':') else {
            return Err(format!("{s:?}: expected HOST_DIR:TAG[:ro]"));
        };
        if dir.is_empty() || tag.is_empty() {
            return Err(format!("{s:?}: expected HOST_DIR:TAG[:ro]"));
        }
        if tag.contains(char::is_whitespace) || tag.contains('"') {
            return Err(format!("{s:?}: the tag may not contain spaces or quotes"));
        }
        let dir = std::path::absolute(dir).map_err(|e| format!("{dir}: {e}"))?;
        Ok(ShareSpec {
            dir,
            tag: tag.to_string(),
            read_only,
            target: None,
            role: ShareRole::Mount,
        })
    }
}

impl ShareSpec {
    /// The guest image directory `dir` as the guest's root
    /// ([`ShareRole::RootImage`]).
    pub fn root_image(dir: PathBuf) -> ShareSpec {
        ShareSpec {
            dir,
            tag: "agentvm-root".into(),
            read_only: true,
            target: None,
            role: ShareRole::RootImage,
        }
    }

    /// The directory `dir` holding the persistent root layer
    /// ([`ShareRole::RootUpper`]).
    pub fn root_upper(dir: PathBuf) -> ShareSpec {
        ShareSpec {
            dir,
            tag: "agentvm-upper".into(),
            read_only: false,
            target: None,
            role: ShareRole::RootUpper,
        }
    }

    /// The guest agent's command-line entry: mount `tag` at the target
    /// (the host path unless the share says otherwise).
    pub fn cmdline_entry(&self) -> anyhow::Result<String> {
        match self.role {
            ShareRole::RootImage => return Ok(format!("agentvm.rootfs={}:{ROOTFS}", self.tag)),
            ShareRole::RootUpper => return Ok(format!("agentvm.upper={}:{UPPER}", self.tag)),
            ShareRole::Mount => {}
        }
        let target = self.target.as_deref().unwrap_or(&self.dir);
        let Some(target) = target.to_str() else {
            bail!("--share {}: the path is not UTF-8", target.display());
        };
        if target.contains(['"', ':']) {
            bail!("--share {target}: the guest cannot mount a path with `\"` or `:` in it");
        }
        let value = format!(
            "{}:{target}:{}",
            self.tag,
            if self.read_only { "ro" } else { "rw" }
        );
        Ok(if value.contains(char::is_whitespace) {
            format!("agentvm.share=\"{value}\"")
        } else {
            format!("agentvm.share={value}")
        })
    }
}

/// The virtio-fs devices for `shares`, each with its virtiofsd started and
/// its socket in `state_dir`.
pub fn devices(
    shares: &[ShareSpec],
    state_dir: &Path,
    allow_unsandboxed: bool,
) -> anyhow::Result<Vec<VirtioFs>> {
    let mut tags: Vec<&str> = shares.iter().map(|s| s.tag.as_str()).collect();
    tags.sort_unstable();
    if let Some(w) = tags.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "--share: the tag {} is used twice; give each share its own",
            w[0]
        );
    }
    shares
        .iter()
        .map(|s| {
            let mut config = FsConfig::new(&s.tag, &s.dir, state_dir);
            config.allow_unsandboxed = allow_unsandboxed;
            config.read_only = s.read_only || s.role == ShareRole::RootImage;
            if s.role == ShareRole::RootImage {
                config.cache = agentvm_devices::virtio::fs::CacheMode::Always;
            }
            VirtioFs::new(config).map_err(|e| match e {
                // Already one line that names what to install.
                FsError::Locate(e) => anyhow::anyhow!("--share: {e}"),
                FsError::Config(e) => anyhow::anyhow!("--share {}: {e}", s.dir.display()),
                FsError::Start {
                    source: StartError::Daemon(e @ DaemonError::NoSandbox { .. }),
                    ..
                } => anyhow::anyhow!(
                    "share {}: {e}; to run it unsandboxed anyway (it then sees the whole \
                     host file system as you do), pass --allow-unsandboxed-virtiofsd to \
                     `agentvm boot` or `agentvm up`",
                    s.dir.display()
                ),
                e => {
                    anyhow::Error::new(e).context(format!("--share {}:{}", s.dir.display(), s.tag))
                }
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .context("cannot set up the shares")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s: ShareSpec = "/w/proj:work".parse().unwrap();
        assert_eq!(
            (s.dir.as_path(), s.tag.as_str(), s.read_only),
            (Path::new("/w/proj"), "work", false)
        );
        let s: ShareSpec = "/a:b/c:tag:ro".parse().unwrap();
        assert_eq!(
            (s.dir.as_path(), s.tag.as_str(), s.read_only),
            (Path::new("/a:b/c"), "tag", true)
        );
        assert!(s.cmdline_entry().is_err(), "the agent splits on `:`");
        let s: ShareSpec = "/ab/c:tag:ro".parse().unwrap();
        assert_eq!(s.cmdline_entry().unwrap(), "agentvm.share=tag:/ab/c:ro");
        let s: ShareSpec = "/my dir:t:rw".parse().unwrap();
        assert_eq!(s.cmdline_entry().unwrap(), "agentvm.share=\"t:/my dir:rw\"");
        let rel: ShareSpec = "rel:t".parse().unwrap();
        assert!(rel.dir.is_absolute());
        for bad in ["nocolon", ":t", "/d:", "/d:a b", "/d:ro"] {
            assert!(bad.parse::<ShareSpec>().is_err(), "{bad}");
        }
    }
}
