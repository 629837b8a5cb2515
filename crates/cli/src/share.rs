//! `agentvm boot --share HOST_DIR:TAG[:ro]`: a host directory shared into
//! the guest over virtio-fs, mounted by the guest agent at the same path.
//! The share itself is agentvm-vmm's [`ShareConfig`]; here are the option's
//! syntax, the CLI's shares of the guest's root, and the CLI's words for a
//! share that does not start.

use std::path::{Path, PathBuf};

use agentvm_devices::virtio::fs::{DaemonError, FsError, StartError};
use agentvm_vmm::config::ShareConfig;

/// The root file system's file in the guest image's share
/// ([`root_image`]).
pub use crate::image::ROOTFS;
/// The ext4 image in the persistent root layer's share ([`root_upper`]).
pub const UPPER: &str = "upper.ext4";

/// One `--share` argument: `HOST_DIR:TAG` or `HOST_DIR:TAG:ro` (`:rw` is
/// the default). Split from the right, so the directory may contain `:`.
pub fn parse(s: &str) -> Result<ShareConfig, String> {
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
    let mut share = ShareConfig::new(dir, tag);
    share.read_only = read_only;
    Ok(share)
}

/// The guest image directory `dir` as the guest's root.
pub fn root_image(dir: PathBuf) -> ShareConfig {
    ShareConfig::root_image(dir, ROOTFS)
}

/// The directory `dir` holding the persistent root layer.
pub fn root_upper(dir: PathBuf) -> ShareConfig {
    ShareConfig::root_upper(dir, UPPER)
}

/// Why the share `dir` (tagged `tag`) did not start, in the CLI's words.
pub fn start_error(tag: &str, dir: &Path, e: FsError) -> anyhow::Error {
    match e {
        // Already one line that names what to install.
        FsError::Locate(e) => anyhow::anyhow!("--share: {e}"),
        FsError::Config(e) => anyhow::anyhow!("--share {}: {e}", dir.display()),
        FsError::Start {
            source: StartError::Daemon(e @ DaemonError::NoSandbox { .. }),
            ..
        } => anyhow::anyhow!(
            "share {}: {e}; to run it unsandboxed anyway (it then sees the whole \
             host file system as you do), pass --allow-unsandboxed-virtiofsd to \
             `agentvm boot` or `agentvm up`",
            dir.display()
        ),
        e => anyhow::Error::new(e).context(format!("--share {}:{tag}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = parse("/w/proj:work").unwrap();
        assert_eq!(
            (s.host_dir.as_path(), s.tag.as_str(), s.read_only),
            (Path::new("/w/proj"), "work", false)
        );
        let s = parse("/a:b/c:tag:ro").unwrap();
        assert_eq!(
            (s.host_dir.as_path(), s.tag.as_str(), s.read_only),
            (Path::new("/a:b/c"), "tag", true)
        );
        assert!(s.cmdline_entry().is_err(), "the agent splits on `:`");
        let s = parse("/ab/c:tag:ro").unwrap();
        assert_eq!(s.cmdline_entry().unwrap(), "agentvm.share=tag:/ab/c:ro");
        let s = parse("/my dir:t:rw").unwrap();
        assert_eq!(s.cmdline_entry().unwrap(), "agentvm.share=\"t:/my dir:rw\"");
        assert!(parse("rel:t").unwrap().host_dir.is_absolute());
        for bad in ["nocolon", ":t", "/d:", "/d:a b", "/d:ro"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_roots_shares_name_their_files() {
        assert_eq!(
            root_image("/img".into()).cmdline_entry().unwrap(),
            format!("agentvm.rootfs=agentvm-root:{ROOTFS}")
        );
        assert_eq!(
            root_upper("/ws".into()).cmdline_entry().unwrap(),
            "agentvm.upper=agentvm-upper:upper.ext4"
        );
    }

    #[test]
    fn a_share_that_does_not_start_names_its_directory() {
        let e = FsError::Config(agentvm_devices::virtio::fs::ConfigError::SharedDir(
            "/nonexistent/dir".into(),
        ));
        let shown = format!("{:#}", start_error("t", Path::new("/nonexistent/dir"), e));
        assert!(shown.starts_with("--share /nonexistent/dir: "), "{shown}");
    }
}
