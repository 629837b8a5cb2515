//! What a share is: plain data, checked by [`FsConfig::validate`] before a
//! process is started.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::TAG_LEN;

/// Longest socket path `sockaddr_un` takes (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// virtiofsd's caching policy (`--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Metadata and data cached with timeouts (virtiofsd's default).
    #[default]
    Auto,
    /// Everything cached: only for shares the host does not change.
    Always,
    /// Nothing cached: every access goes to the host, coherent with host
    /// changes at once.
    Never,
}

impl CacheMode {
    /// The value of virtiofsd's `--cache`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Auto => "auto",
            CacheMode::Always => "always",
            CacheMode::Never => "never",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cache mode that is not `auto`, `always` or `never`.
#[derive(Debug, thiserror::Error)]
#[error("Unknown cache mode {0:?} (expected auto, always or never)")]
pub struct UnknownCacheMode(pub String);

impl FromStr for CacheMode {
    type Err = UnknownCacheMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(CacheMode::Auto),
            "always" => Ok(CacheMode::Always),
            "never" | "none" => Ok(CacheMode::Never),
            other => Err(UnknownCacheMode(other.to_owned())),
        }
    }
}

/// Why a share's configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The tag is empty.
    #[error("The virtio-fs tag is empty")]
    EmptyTag,
    /// The tag does not fit the config space.
    #[error("The virtio-fs tag {tag:?} is {len} bytes; at most 36 fit")]
    TagTooLong {
        /// The tag.
        tag: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The tag has a character the guest's `mount -t virtiofs` or our
    /// socket name cannot carry.
    #[error("The virtio-fs tag {0:?} may only hold letters, digits, '.', '_' and '-'")]
    TagCharacters(String),
    /// The shared directory is missing or not a directory.
    #[error("The shared directory {0} does not exist or is not a directory")]
    SharedDir(PathBuf),
    /// The state directory is missing or not a directory.
    #[error("The state directory {0} does not exist or is not a directory")]
    StateDir(PathBuf),
    /// The socket path would not fit a `sockaddr_un`.
    #[error("The socket path {0} is longer than 107 bytes; use a shorter state directory")]
    SocketPathTooLong(PathBuf),
}

/// One share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The name the guest mounts (`mount -t virtiofs <tag> /mnt`).
    pub tag: String,
    /// The host directory the guest sees.
    pub shared_dir: PathBuf,
    /// Where the vhost-user socket lives (the VM's state directory).
    pub state_dir: PathBuf,
    /// The guest may not change anything (`--readonly`): writes fail with
    /// `EROFS`.
    pub read_only: bool,
    /// The caching policy.
    pub cache: CacheMode,
    /// An explicit virtiofsd binary; `None` searches for one (see
    /// [`Search`](super::Search)).
    pub virtiofsd: Option<PathBuf>,
    /// Whether virtiofsd may run without a sandbox (`--sandbox none`: it
    /// then sees the host as we do) where neither namespaces nor chroot
    /// work. Off by default: such a share fails to start instead.
    pub allow_unsandboxed: bool,
}

impl FsConfig {
    /// A writable share of `shared_dir` under `tag`, with its socket in
    /// `state_dir`, cache `auto`, and a searched-for virtiofsd.
    pub fn new(
        tag: impl Into<String>,
        shared_dir: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        FsConfig {
            tag: tag.into(),
            shared_dir: shared_dir.into(),
            state_dir: state_dir.into(),
            read_only: false,
            cache: CacheMode::default(),
            virtiofsd: None,
            allow_unsandboxed: false,
        }
    }

    /// The vhost-user socket of this share.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join(format!("virtiofs-{}.sock", self.tag))
    }

    /// Checks the tag, both directories and the socket path's length.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_tag(&self.tag)?;
        if !self.shared_dir.is_dir() {
            return Err(ConfigError::SharedDir(self.shared_dir.clone()));
        }
        if !self.state_dir.is_dir() {
            return Err(ConfigError::StateDir(self.state_dir.clone()));
        }
        let socket = self.socket_path();
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ConfigError::SocketPathTooLong(socket));
        }
        Ok(())
    }

    /// The config-space bytes of the tag: UTF-8, NUL-padded to 36 bytes.
    pub(crate) fn tag_bytes(&self) -> [u8; TAG_LEN] {
        let mut bytes = [0; TAG_LEN];
        let tag = self.tag.as_bytes();
        let n = tag.len().min(TAG_LEN);
        bytes[..n].copy_from_slice(&tag[..n]);
        bytes
    }
}

/// Tags are kept to a safe alphabet: they name the socket file and appear
/// on the guest's mount command line.
pub(crate) fn validate_tag(tag: &str) -> Result<(), ConfigError> {
    if tag.is_empty() {
        return Err(ConfigError::EmptyTag);
    }
    if tag.len() > TAG_LEN {
        return Err(ConfigError::TagTooLong {
            tag: tag.to_owned(),
            len: tag.len(),
        });
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !tag.chars().all(ok) || tag.starts_with('.') {
        return Err(ConfigError::TagCharacters(tag.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn dirs() -> (tempfile::TempDir, FsConfig) {
        let tmp = tempfile::tempdir().unwrap();
        let config = FsConfig::new("work", tmp.path(), tmp.path());
        (tmp, config)
    }

    #[test]
    fn tags_are_checked() {
        let (_tmp, mut c) = dirs();
        c.validate().unwrap();
        for bad in ["", ".hidden", "a/b", "a b", "ä", &"x".repeat(37)] {
            c.tag = bad.to_owned();
            assert!(c.validate().is_err(), "{bad:?}");
        }
        c.tag = "x".repeat(36);
        c.validate().unwrap();
        assert_eq!(c.tag_bytes(), [b'x'; 36]);
        c.tag = "ab".into();
        assert_eq!(&c.tag_bytes()[..3], b"ab\0");
    }

    #[test]
    fn directories_and_socket_length_are_checked() {
        let (tmp, mut c) = dirs();
        c.shared_dir = tmp.path().join("missing");
        assert!(matches!(c.validate(), Err(ConfigError::SharedDir(_))));
        c.shared_dir = tmp.path().into();
        c.state_dir = tmp.path().join("missing");
        assert!(matches!(c.validate(), Err(ConfigError::StateDir(_))));
        let deep = tmp.path().join("d".repeat(100));
        std::fs::create_dir(&deep).unwrap();
        c.state_dir = deep;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SocketPathTooLong(_))
        ));
    }

    #[test]
    fn cache_modes_parse_and_print() {
        for mode in [CacheMode::Auto, CacheMode::Always, CacheMode::Never] {
            assert_eq!(mode.as_str().parse::<CacheMode>().unwrap(), mode);
        }
        assert_eq!("none".parse::<CacheMode>().unwrap(), CacheMode::Never);
        assert!("metadata".parse::<CacheMode>().is_err());
    }
}
