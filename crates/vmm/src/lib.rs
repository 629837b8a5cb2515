//! agentvm-vmm: a KVM virtual machine monitor for microVMs, as a library.
//!
//! Describe a VM as data with a [`VmConfig`] (memory, vCPUs, kernel,
//! initrd, command line, serial console, and its devices: virtio-fs shares
//! with their virtiofsd, vsock, network, rng, balloon; see [`config`]),
//! build it with [`VmBuilder`] (which also fills the configuration method by
//! method), run it with [`Vm::run`], and control it from other threads with
//! a [`VmHandle`]. Guests boot from an ELF
//! `vmlinux` (PVH or 64-bit entry) or a bzImage; they find their devices
//! through ACPI (or `virtio_mmio.device=` on the command line). A VM built
//! with [`VmBuilder::net`] has a virtio-net device behind agentvm's
//! user-mode network stack, whose egress policy a [`VmHandle::net`] replaces
//! while the guest runs. Every thread of the VM runs under a seccomp
//! filter of its own ([`seccomp`], [`VmBuilder::seccomp`]); devices are
//! activated on an activation thread, never on a vCPU ([`activator`]).
#![deny(missing_docs)]

pub mod activator;
pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod device_manager;
mod device_setup;
pub mod hygiene;
pub mod landlock;
pub mod memory;
pub mod memory_control;
pub mod seccomp;
pub mod vcpu;
pub mod vm;

pub use builder::{BuildError, VmBuilder};
pub use config::{CmdlineDevices, ConfigError, SerialSink, VmConfig};
pub use memory_control::{BalloonReport, MemoryControlError};
pub use seccomp::SeccompLevel;
pub use vm::{ExitStatus, RunError, RunningVm, Vm, VmHandle, VmStats};
