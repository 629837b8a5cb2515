//! agentvm-vmm: a KVM virtual machine monitor for microVMs, as a library.
//!
//! Describe a VM as data with a [`VmConfig`] (memory, vCPUs, kernel,
//! initrd, command line, serial console, and its devices: virtio-fs shares
//! with their virtiofsd, vsock, network, rng, balloon; see [`config`]),
//! build it with [`VmBuilder`] (which also fills the configuration method by
//! method), run it with [`Vm::run`], and control it from other threads with
//! a [`VmHandle`]; how it ended is an [`ExitStatus`]. Guests boot from an ELF
//! `vmlinux` (PVH or 64-bit entry) or a bzImage; they find their devices
//! through ACPI (or `virtio_mmio.device=` on the command line). A VM built
//! with [`VmBuilder::net`] has a virtio-net device behind agentvm's
//! user-mode network stack, whose egress policy a [`VmHandle::net`] replaces
//! while the guest runs. Every thread of the VM runs under a seccomp
//! filter of its own ([`seccomp`], [`VmBuilder::seccomp`]); devices are
//! activated on an activation thread, never on a vCPU.
//!
//! Besides the VM itself, the public modules let an embedder confine its
//! own process the way the VM's threads are: [`seccomp`] (filters for its
//! own threads, and for the threads `agentvm-devices` starts),
//! [`hygiene`] (`no_new_privs`, no core dumps, no inherited descriptors)
//! and [`landlock`] (what the file system access shrinks to).
#![deny(missing_docs)]

pub mod config;
pub mod hygiene;
pub mod landlock;
pub mod seccomp;

mod activator;
mod arch;
mod boot;
mod builder;
mod device_manager;
mod device_setup;
mod exit;
mod memory;
mod memory_control;
mod vcpu;
mod vm;

#[cfg(test)]
mod kvm_tests;

pub use activator::ActivatorError;
pub use arch::x86_64::acpi::AcpiError;
pub use arch::x86_64::layout::{VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
pub use arch::x86_64::mptable::MptableError;
pub use arch::x86_64::regs::RegsError;
pub use boot::BootError;
pub use builder::{BuildError, VmBuilder};
pub use config::{CmdlineDevices, ConfigError, SerialSink, VmConfig};
pub use device_manager::DeviceError;
pub use exit::ExitStatus;
pub use memory::MemoryError;
pub use memory_control::{BalloonReport, MemoryControlError};
pub use seccomp::SeccompLevel;
pub use vm::{RunError, RunningVm, Vm, VmHandle, VmStats};
