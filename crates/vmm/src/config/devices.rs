//! The devices of a [`super::VmConfig`], as plain data.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use agentvm_devices::virtio::fs::{CacheMode, FsConfig};
use agentvm_devices::virtio::vsock::{VsockCounters, DEFAULT_GUEST_CID};

use super::ConfigError;
use crate::landlock::FsAccess;

/// Where the guest's serial console goes.
///
/// ```
/// use agentvm_vmm::config::{SerialSink, VmConfig};
///
/// let mut config = VmConfig::new("vmlinux");
/// config.serial = SerialSink::File("/tmp/console.log".into());
/// // Any `Write + Send`, e.g. a pipe to a log thread.
/// config.serial = SerialSink::Writer(Box::new(std::io::sink()));
/// ```
pub enum SerialSink {
    /// The VMM's standard output.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// Any writer.
    Writer(Box<dyn Write + Send>),
    /// Nowhere.
    Discard,
}

impl fmt::Debug for SerialSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialSink::Stdout => f.write_str("Stdout"),
            SerialSink::File(path) => f.debug_tuple("File").field(path).finish(),
            SerialSink::Writer(_) => f.write_str("Writer(..)"),
            SerialSink::Discard => f.write_str("Discard"),
        }
    }
}

/// A host directory shared with the guest over virtio-fs, served by a
/// virtiofsd of its own whose socket is in the VM's state directory.
///
/// ```
/// use agentvm_vmm::config::{ShareConfig, ShareRole};
///
/// let mut share = ShareConfig::new("/home/me/project", "work");
/// share.read_only = true;
/// assert_eq!(share.cmdline_entry().unwrap(), "agentvm.share=work:/home/me/project:ro");
/// share.target = Some("/workspace".into());
/// assert_eq!(share.cmdline_entry().unwrap(), "agentvm.share=work:/workspace:ro");
///
/// let root = ShareConfig::root_image("/images/default", "rootfs.erofs");
/// assert_eq!(root.role, ShareRole::RootImage { file: "rootfs.erofs".into() });
/// assert_eq!(root.cmdline_entry().unwrap(), "agentvm.rootfs=agentvm-root:rootfs.erofs");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    /// The host directory (absolute).
    pub host_dir: PathBuf,
    /// The virtio-fs tag the guest mounts (letters, digits, `.`, `_`, `-`;
    /// at most 36 bytes).
    pub tag: String,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// Where the guest agent mounts it [default: `host_dir`, the same path].
    pub target: Option<PathBuf>,
    /// What the guest agent does with it.
    pub role: ShareRole,
    /// virtiofsd's caching policy.
    pub cache: CacheMode,
}

/// What the guest agent does with a share (its entry on the kernel
/// command line).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ShareRole {
    /// Mounts it at its target (`agentvm.share=`).
    #[default]
    Mount,
    /// A guest image's directory: the agent mounts its `file` as the
    /// guest's read-only root (`agentvm.rootfs=`).
    RootImage {
        /// The root file system image in the share.
        file: String,
    },
    /// A persistent root layer: the agent mounts its `file` as the
    /// writable layer over the root (`agentvm.upper=`).
    RootUpper {
        /// The ext4 image in the share.
        file: String,
    },
}

impl ShareConfig {
    /// A writable share of `host_dir` under `tag`, mounted by the guest at
    /// the same path, cached as virtiofsd does by default.
    pub fn new(host_dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        ShareConfig {
            host_dir: host_dir.into(),
            tag: tag.into(),
            read_only: false,
            target: None,
            role: ShareRole::Mount,
            cache: CacheMode::Auto,
        }
    }

    /// The guest image directory `dir` whose `file` becomes the guest's
    /// root: tag `agentvm-root`, read-only and cached in full (the host
    /// never changes an image).
    pub fn root_image(dir: impl Into<PathBuf>, file: impl Into<String>) -> Self {
        ShareConfig {
            read_only: true,
            role: ShareRole::RootImage { file: file.into() },
            cache: CacheMode::Always,
            ..ShareConfig::new(dir, "agentvm-root")
        }
    }

    /// The directory `dir` whose `file` is the guest's persistent root
    /// layer: tag `agentvm-upper`, writable.
    pub fn root_upper(dir: impl Into<PathBuf>, file: impl Into<String>) -> Self {
        ShareConfig {
            role: ShareRole::RootUpper { file: file.into() },
            ..ShareConfig::new(dir, "agentvm-upper")
        }
    }

    /// The guest agent's command-line entry: mount `tag` at the target
    /// (the host path unless the share says otherwise), or use it as the
    /// root or its upper layer.
    pub fn cmdline_entry(&self) -> Result<String, ConfigError> {
        match &self.role {
            ShareRole::RootImage { file } => {
                return Ok(format!("agentvm.rootfs={}:{file}", self.tag))
            }
            ShareRole::RootUpper { file } => {
                return Ok(format!("agentvm.upper={}:{file}", self.tag))
            }
            ShareRole::Mount => {}
        }
        let target = self.target.as_deref().unwrap_or(&self.host_dir);
        let Some(target) = target.to_str() else {
            return Err(ConfigError::TargetNotUtf8(target.to_owned()));
        };
        if target.contains(['"', ':']) {
            return Err(ConfigError::TargetCharacters(target.to_owned()));
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

    /// The device configuration of this share, its socket in `state_dir`.
    pub fn fs_config(&self, state_dir: &Path, virtiofsd: &VirtiofsdConfig) -> FsConfig {
        let mut config = FsConfig::new(&self.tag, &self.host_dir, state_dir);
        config.read_only = self.read_only || matches!(self.role, ShareRole::RootImage { .. });
        config.cache = self.cache;
        config.virtiofsd.clone_from(&virtiofsd.binary);
        config.allow_unsandboxed = virtiofsd.allow_unsandboxed;
        config
    }
}

/// How the shares' virtiofsd is found and run.
///
/// ```
/// use agentvm_vmm::config::{ShareConfig, VirtiofsdConfig};
///
/// let daemons = VirtiofsdConfig {
///     binary: Some("/usr/libexec/virtiofsd".into()),
///     allow_unsandboxed: false,
/// };
/// let fs = ShareConfig::new("/srv/data", "data").fs_config("/run/vm1".as_ref(), &daemons);
/// assert_eq!(fs.socket_path(), std::path::Path::new("/run/vm1/virtiofs-data.sock"));
/// assert_eq!(fs.virtiofsd, daemons.binary);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtiofsdConfig {
    /// An explicit virtiofsd binary; `None` searches `$AGENTVM_VIRTIOFSD`,
    /// `$PATH` and the usual places
    /// ([`Search`](agentvm_devices::virtio::fs::Search)).
    pub binary: Option<PathBuf>,
    /// Whether virtiofsd may run without a sandbox (it then sees the host's
    /// files as the VMM does) where neither namespaces nor chroot work.
    /// Off: such a share fails to start instead.
    pub allow_unsandboxed: bool,
}

/// A virtio-vsock device whose host side is a Unix socket: host clients
/// connect to `uds` and send `CONNECT <port>\n`; guest connections to host
/// port P go to the socket `<uds>_P`. The guest agent serves behind it
/// ([`crate::VmHandle::agent_socket`]).
///
/// ```
/// use agentvm_vmm::config::VsockConfig;
///
/// let vsock = VsockConfig::new("/run/agentvm/vm1/vsock.sock");
/// assert_eq!(vsock.cid, 3);
/// let counters = vsock.counters.clone(); // read while the VM runs
/// assert_eq!(counters.refused(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The host side's Unix socket (bound when the VM is built).
    pub uds: PathBuf,
    /// The guest's context id, 3 to 4294967294.
    pub cid: u64,
    /// Where the device counts the connections it refuses; keep a clone to
    /// read them.
    pub counters: VsockCounters,
}

impl VsockConfig {
    /// A device on `uds` for the guest CID 3.
    pub fn new(uds: impl Into<PathBuf>) -> Self {
        VsockConfig {
            uds: uds.into(),
            cid: DEFAULT_GUEST_CID,
            counters: VsockCounters::default(),
        }
    }
}

/// A virtio-balloon device.
///
/// ```
/// use agentvm_vmm::config::{BalloonConfig, VmConfig};
///
/// let mut config = VmConfig::new("vmlinux");
/// // The guest gives 128 MiB back to the host once its driver starts.
/// config.balloon = Some(BalloonConfig { target_mib: Some(128) });
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalloonConfig {
    /// How much memory the guest gives back at boot, MiB (kept by the
    /// device until the guest's driver starts); less than the guest's
    /// memory. `None`: none until [`crate::VmHandle::set_balloon_target_mib`].
    pub target_mib: Option<u64>,
}

/// How the VMM's own file system access is restricted (with Landlock, on
/// the thread that builds the VM, see [`crate::landlock`]) once the VM is
/// built.
///
/// ```
/// use agentvm_vmm::config::{Landlock, VmConfig};
/// use agentvm_vmm::landlock::FsAccess;
///
/// let mut config = VmConfig::new("vmlinux");
/// assert_eq!(config.landlock, Landlock::Off);
/// // What agentvm does: only what this VM needs stays reachable.
/// config.landlock = Landlock::FromConfig;
/// // Or exactly what the embedder says.
/// config.landlock = Landlock::Rules(FsAccess {
///     read: vec!["/usr".into()],
///     write: vec!["/run/vm1".into()],
///     remove_dirs: Vec::new(),
/// });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Landlock {
    /// Not at all.
    #[default]
    Off,
    /// To what this VM still needs: the state directory, the vsock
    /// socket's directory, the shares and what virtiofsd runs on
    /// ([`crate::landlock::vm_access`]).
    FromConfig,
    /// To exactly these paths.
    Rules(FsAccess),
}
