//! What a VM is made of, as plain data: memory, vCPUs, what it boots,
//! where its console goes, its devices ([`ShareConfig`], [`VsockConfig`],
//! the network's [`StackConfig`], rng, [`BalloonConfig`]) and how its
//! threads and files are confined. [`VmConfig::validate`] checks it
//! without touching the host; [`crate::VmBuilder`] turns it into a
//! [`crate::Vm`], starting what the devices need (virtiofsd, the network
//! stack, the vsock socket).
//!
//! ```
//! use agentvm_vmm::config::{BalloonConfig, ConfigError, ShareConfig, VmConfig, VsockConfig};
//!
//! let mut config = VmConfig::new("/images/default/vmlinux");
//! config.memory_mib = 1024;
//! config.vcpus = 2;
//! config.state_dir = Some("/run/user/1000/agentvm/vm1".into());
//! config.shares.push(ShareConfig::new("/home/me/project", "work"));
//! config.vsock = Some(VsockConfig::new("/run/user/1000/agentvm/vm1/vsock.sock"));
//! config.rng = true;
//! config.balloon = Some(BalloonConfig { target_mib: Some(256) });
//! assert!(config.validate().is_ok());
//!
//! config.balloon = Some(BalloonConfig { target_mib: Some(1024) });
//! assert!(matches!(config.validate(), Err(ConfigError::BalloonTarget { .. })));
//! ```

mod devices;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use agentvm_net::StackConfig;
pub use devices::{
    BalloonConfig, Landlock, SerialSink, ShareConfig, ShareRole, VirtiofsdConfig, VsockConfig,
};

use crate::seccomp::SeccompLevel;

/// Most vCPUs a VM may have (APIC IDs must leave room for the IOAPIC's).
pub const MAX_VCPUS: u8 = 254;
/// Command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// When to describe virtio-mmio devices on the kernel command line
/// (`virtio_mmio.device=`), besides ACPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CmdlineDevices {
    /// Only when the command line turns ACPI off (`acpi=off`), so a kernel
    /// that sees ACPI does not find every device twice.
    #[default]
    WhenNoAcpi,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Why a [`VmConfig`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No vCPUs, or more than [`MAX_VCPUS`].
    #[error("{0} vCPUs requested; between 1 and {MAX_VCPUS} are supported")]
    Vcpus(u8),
    /// No guest memory.
    #[error("The guest needs some memory; 0 MiB requested")]
    NoMemory,
    /// More memory than a 64-bit byte count holds.
    #[error("{0} MiB of memory is too large")]
    MemoryTooLarge(u64),
    /// The balloon would take all of the guest's memory at boot.
    #[error("A balloon target of {target_mib} MiB would take all of the guest's {memory_mib} MiB")]
    BalloonTarget {
        /// The balloon's initial target.
        target_mib: u64,
        /// The guest's memory.
        memory_mib: u64,
    },
    /// A vsock context id that is reserved or does not fit 32 bits (the
    /// same words as [`agentvm_devices::virtio::vsock::VsockError::InvalidCid`]).
    #[error("Guest CID {0} is reserved or too large (use 3 to 4294967294)")]
    InvalidCid(u64),
    /// Shares (and hot-plug slots) need a state directory for virtiofsd's
    /// sockets.
    #[error("Shares and hot-plug slots need a state directory for virtiofsd's sockets")]
    NoStateDir,
    /// Two shares have the same tag.
    #[error("The share tag {0} is used twice")]
    DuplicateTag(String),
    /// A share's guest mount point is not UTF-8 (the kernel command line
    /// that names it is text).
    #[error("The share target {} is not UTF-8", .0.display())]
    TargetNotUtf8(PathBuf),
    /// A share's guest mount point has a character the guest agent's
    /// `agentvm.share=` parser splits on.
    #[error("The guest cannot mount a path with `\"` or `:` in it: {0}")]
    TargetCharacters(String),
}

/// A VM's configuration: everything [`crate::VmBuilder::build`] needs but
/// the extra devices an embedder adds with [`crate::VmBuilder::device`].
///
/// Devices are off unless asked for; [`VmConfig::new`] gives a VM with a
/// serial console and nothing else.
///
/// ```
/// use agentvm_net::{Mode, Policy, StackConfig};
/// use agentvm_vmm::config::{ConfigError, VmConfig};
///
/// let mut config = VmConfig::new("vmlinux");
/// config.vcpus = 2;
/// let mut policy = Policy::new(Mode::Filtered);
/// policy.allow("github.com").unwrap();
/// config.net = Some(StackConfig { policy, ..StackConfig::default() });
/// assert_eq!(config.validate(), Ok(()));
/// config.vcpus = 0;
/// assert_eq!(config.validate(), Err(ConfigError::Vcpus(0)));
/// ```
#[derive(Debug)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs (1 to [`MAX_VCPUS`]).
    pub vcpus: u8,
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (share and device parameters are appended).
    pub cmdline: String,
    /// Whether to create the in-kernel i8254 PIT; `None` decides by the
    /// command line. Linux on our hardware-reduced ACPI platform never uses
    /// a PIT (it takes the LAPIC timer and kvm-clock), and a PIT makes VM
    /// teardown ~16 ms slower on some hosts; a kernel booted with `acpi=off`
    /// needs it for its timer setup.
    pub pit: Option<bool>,
    /// When to put `virtio_mmio.device=` on the command line.
    pub cmdline_devices: CmdlineDevices,
    /// The seccomp filters of the VM's threads ([`crate::seccomp`]).
    pub seccomp: SeccompLevel,
    /// Where the guest's serial console goes.
    pub serial: SerialSink,
    /// The VM's directory on the host: virtiofsd's sockets go here, and it
    /// stays writable under [`Landlock::FromConfig`]. Needed with shares.
    pub state_dir: Option<PathBuf>,
    /// Host directories shared over virtio-fs, one virtiofsd each.
    pub shares: Vec<ShareConfig>,
    /// How the shares' virtiofsd is found and run.
    pub virtiofsd: VirtiofsdConfig,
    /// A virtio-vsock device, through which the guest agent serves.
    pub vsock: Option<VsockConfig>,
    /// A virtio-net device behind agentvm's user-mode network stack, which
    /// starts with this policy, audit log and memory budget (the guest's
    /// MAC is [`agentvm_net::addr::GUEST_MAC`]).
    pub net: Option<StackConfig>,
    /// A virtio-rng device (the host's random numbers).
    pub rng: bool,
    /// A virtio-balloon device (statistics, deflate on OOM, free page
    /// reporting), controlled through [`crate::VmHandle`].
    pub balloon: Option<BalloonConfig>,
    /// How the VMM's own file system access is restricted once the VM is
    /// built.
    pub landlock: Landlock,
    /// Empty virtio-mmio windows declared at boot after every device, for
    /// virtio-fs devices attached while the guest runs
    /// ([`crate::VmHandle::attach_fs`]); 0 declares none. Needs a state
    /// directory (the daemons' sockets live there).
    pub hotplug_slots: u8,
    /// The file shared guest RAM lives in, instead of a new memfd: an
    /// empty tmpfs file (the VMM sizes it) whose mount gives huge pages
    /// (`huge=always`), which a memfd only gets where the host's
    /// `shmem_enabled` allows. Used only when guest RAM must be shared
    /// ([`VmConfig::needs_shared_memory`]). Unlike a memfd it cannot be
    /// sealed against shrinking: only pass a file no other process can
    /// open (an `O_TMPFILE` in a mount of a private namespace).
    pub shared_memory_file: Option<std::fs::File>,
}

impl VmConfig {
    /// Whether a process other than the VMM must map guest RAM: the shares'
    /// virtiofsd now, or a live mount's later (hot-plug slots). Guest RAM is
    /// then a shared memfd, else private memory (see [`crate::memory`]).
    pub fn needs_shared_memory(&self) -> bool {
        !self.shares.is_empty() || (self.hotplug_slots > 0 && self.state_dir.is_some())
    }

    /// Defaults for `kernel`: 512 MiB, one vCPU, [`DEFAULT_CMDLINE`], a PIT
    /// only when the command line turns ACPI off, seccomp filters that end
    /// the VM on an unexpected system call, the console on standard output,
    /// no devices, no Landlock.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            memory_mib: 512,
            vcpus: 1,
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            pit: None,
            cmdline_devices: CmdlineDevices::default(),
            seccomp: SeccompLevel::default(),
            serial: SerialSink::Stdout,
            state_dir: None,
            shares: Vec::new(),
            virtiofsd: VirtiofsdConfig::default(),
            vsock: None,
            net: None,
            rng: false,
            balloon: None,
            landlock: Landlock::default(),
            hotplug_slots: 0,
            shared_memory_file: None,
        }
    }

    /// Checks what can be checked without the host: vCPU count, memory
    /// size, balloon target, vsock CID, share tags and mount points.
    /// Files, sockets and daemons are checked when the VM is built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.memory_mib == 0 {
            return Err(ConfigError::NoMemory);
        }
        if self.memory_bytes().is_none() {
            return Err(ConfigError::MemoryTooLarge(self.memory_mib));
        }
        if let Some(target_mib) = self.balloon.as_ref().and_then(|b| b.target_mib) {
            if target_mib >= self.memory_mib {
                return Err(ConfigError::BalloonTarget {
                    target_mib,
                    memory_mib: self.memory_mib,
                });
            }
        }
        if let Some(vsock) = &self.vsock {
            if !(3..u64::from(u32::MAX)).contains(&vsock.cid) {
                return Err(ConfigError::InvalidCid(vsock.cid));
            }
        }
        if (!self.shares.is_empty() || self.hotplug_slots > 0) && self.state_dir.is_none() {
            return Err(ConfigError::NoStateDir);
        }
        for share in &self.shares {
            share.cmdline_entry()?;
        }
        let mut tags: Vec<&str> = self.shares.iter().map(|s| s.tag.as_str()).collect();
        tags.sort_unstable();
        if let Some(w) = tags.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateTag(w[0].to_string()));
        }
        Ok(())
    }

    /// Guest RAM in bytes; `None` when it does not fit 64 bits.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory_mib
            .checked_shl(20)
            .filter(|b| b >> 20 == self.memory_mib)
    }

    /// Whether the VM gets a PIT.
    pub fn wants_pit(&self) -> bool {
        self.pit.unwrap_or_else(|| self.acpi_disabled())
    }

    /// Whether the command line turns ACPI off.
    pub fn acpi_disabled(&self) -> bool {
        self.cmdline.split_whitespace().any(|w| w == "acpi=off")
    }

    /// The command line with the shares' entries for the guest agent
    /// appended (devices' parameters come later, once they have slots).
    pub fn cmdline_with_shares(&self) -> Result<String, ConfigError> {
        let mut cmdline = self.cmdline.clone();
        for share in &self.shares {
            cmdline.push(' ');
            cmdline.push_str(&share.cmdline_entry()?);
        }
        Ok(cmdline)
    }
}
