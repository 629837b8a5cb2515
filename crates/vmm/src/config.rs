//! What a VM is made of, as plain data. [`crate::VmBuilder`] turns it into a
//! [`crate::Vm`].

use std::path::PathBuf;

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

/// A VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (device parameters are appended).
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
}

impl VmConfig {
    /// Defaults for `kernel`: 512 MiB, one vCPU, [`DEFAULT_CMDLINE`], a PIT
    /// only when the command line turns ACPI off, seccomp filters that end
    /// the VM on an unexpected system call.
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
        }
    }

    /// Whether the VM gets a PIT.
    pub fn wants_pit(&self) -> bool {
        self.pit.unwrap_or_else(|| self.acpi_disabled())
    }

    /// Whether the command line turns ACPI off.
    pub fn acpi_disabled(&self) -> bool {
        self.cmdline.split_whitespace().any(|w| w == "acpi=off")
    }
}
