//! agentvm-vmm: a KVM virtual machine monitor for microVMs, as a library —
//! the machine `agentvm` runs AI coding agents in, for other Rust tools to
//! embed.
//!
//! # The machine in one page
//!
//! **Configuration is data.** A [`VmConfig`] describes the whole machine:
//! memory, vCPUs, kernel (ELF `vmlinux` with a PVH or 64-bit entry, or a
//! bzImage), initrd and command line, the serial console ([`SerialSink`]),
//! and its devices — virtio-fs shares with the virtiofsd that serves each
//! ([`config::ShareConfig`]), vsock ([`config::VsockConfig`], the guest
//! agent's channel), the network (`agentvm_net::StackConfig`: egress
//! policy, forwards, audit, memory budget), rng and the balloon — plus the
//! seccomp level and the Landlock rules. [`VmConfig::validate`] says what
//! is wrong with it in a [`ConfigError`]; [`VmBuilder`] fills one method by
//! method and [`VmBuilder::build`] turns it into a [`Vm`].
//!
//! **Building.** `build` hardens the process (`no_new_privs`, no core
//! dumps: [`hygiene`]), starts what the devices need (virtiofsd, the
//! network stack, the vsock socket), creates the KVM VM — guest RAM
//! (`MADV_DONTDUMP`), in-kernel irqchip, a virtio-mmio slot per device with
//! an ioeventfd per queue and an irqfd, i8042, serial, pvpanic and ACPI
//! power registers —, loads the kernel and writes the boot tables (ACPI with
//! the devices in the DSDT, MP table, e820, PVH start info or Linux zero
//! page), sets up the vCPUs' registers and CPUID, and last restricts the
//! building thread's file system access with Landlock ([`landlock`]).
//!
//! **Running.** [`Vm::start`] starts one thread per vCPU, an activation
//! thread and the teardown thread, and returns a [`RunningVm`]; [`Vm::run`]
//! also waits. Every thread installs the seccomp filter of its kind before
//! it touches guest data ([`seccomp`]); a vCPU only runs `KVM_RUN` and
//! dispatches port and MMIO exits to the devices on its buses. When the
//! guest's driver sets DRIVER_OK, the vCPU records the request and the
//! activation thread starts the device's worker thread, which owns the
//! device's queues from then on (the network stack and the vsock muxer run
//! in their workers). A device whose queues the guest breaks asks the
//! driver for a reset (`DEVICE_NEEDS_RESET`) instead of failing the VM.
//!
//! **Controlling.** A [`VmHandle`] (from [`Vm::handle`] or
//! [`RunningVm::handle`]) works from any thread: stop, wait, statistics,
//! the balloon's target and report, the network policy in force
//! ([`VmHandle::net`]), and the guest agent's socket
//! ([`VmHandle::agent_socket`]). Commands run in the guest through the
//! agent client of the `agentvm-protocol` crate (`client::Agent`), which
//! waits for the agent, bounds the output and returns the exit status.
//! How the VM ended is an [`ExitStatus`]: the guest ended it itself, the
//! host stopped it, or the guest or a vCPU failed.
//!
//! **Trust.** The guest is hostile: every queue, frame, DNS name and vsock
//! packet it writes is parsed with bounds, in threads whose seccomp filter
//! allows only their own system calls, in a process that cannot gain
//! privileges, dump guest memory or open files outside the VM's own.
//!
//! # Examples
//!
//! `examples/boot_and_exec.rs` boots agentvm's guest image with a share and
//! a filtered network and runs a command in it (under 40 lines);
//! `examples/vhost_user_net.rs` serves the filtered network alone to a QEMU
//! or cloud-hypervisor guest as a vhost-user-net backend. A tiny guest,
//! captured console, stop from another thread:
//!
//! ```
//! use agentvm_vmm::{ExitStatus, SerialSink, VmBuilder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
//! #     return Ok(()); // no usable KVM here
//! # }
//! let dir = tempfile::tempdir()?;
//! let kernel = agentvm_testguest::programs::hello("hi\n")?.write_to(dir.path())?;
//! let vm = VmBuilder::new(&kernel)
//!     .memory_mib(64)
//!     .serial(SerialSink::Discard)
//!     .build()?;
//! assert_eq!(vm.run()?, ExitStatus::Reset);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod config;
pub mod footprint;
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
mod hotplug;
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
pub use hotplug::{AttachedFs, HotplugError};
pub use memory::MemoryError;
pub use memory_control::{BalloonReport, MemoryControlError};
pub use seccomp::SeccompLevel;
pub use vm::{RunError, RunningVm, SetupTimes, Vm, VmHandle, VmStats};
