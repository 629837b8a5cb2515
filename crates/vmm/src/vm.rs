//! A built VM: running it, and controlling it from other threads (stop,
//! wait, statistics, balloon, network policy).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agentvm_devices::virtio::balloon::BalloonHandle;
use agentvm_net::NetHandle;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::signal::Killable;

use crate::activator::{Activator, ActivatorError, Confinement};
use crate::device_manager::DeviceManager;
use crate::exit::{ExitLatch, ExitStatus};
use crate::hotplug::{AttachedFs, Hotplug, HotplugError};
use crate::memory::GuestRam;
use crate::memory_control::{self, BalloonReport, MemoryControlError};
use crate::seccomp::SeccompLevel;
use crate::vcpu::{self, Buses, VcpuCounters};

/// Running statistics of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStats {
    /// Time since the vCPUs started (zero before).
    pub uptime: Duration,
    /// Guest RAM size in bytes.
    pub memory_bytes: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Port-I/O exits so far, all vCPUs.
    pub pio_exits: u64,
    /// MMIO exits so far, all vCPUs.
    pub mmio_exits: u64,
    /// The exit status once the VM has ended.
    pub exit: Option<ExitStatus>,
}

/// State shared by the VM, its handles and (through the exit latch and
/// the counters) its vCPU threads and devices.
pub(crate) struct Shared {
    exit: Arc<ExitLatch>,
    started: Mutex<Option<Instant>>,
    counters: Vec<Arc<VcpuCounters>>,
    memory_bytes: u64,
    controls: Controls,
    /// The hot-plug slots, set once the devices are placed.
    hotplug: OnceLock<Arc<Hotplug>>,
}

/// What the controls of [`VmHandle`] act through.
#[derive(Default)]
pub(crate) struct Controls {
    /// The vsock device's Unix socket, behind which the guest agent serves.
    pub agent: Option<PathBuf>,
    /// The balloon device's handle, when the VM has one.
    pub balloon: Option<BalloonHandle>,
    /// The network stack's handle, when the VM has a virtio-net device.
    pub net: Option<NetHandle>,
}

impl Shared {
    pub(crate) fn new(vcpus: u8, memory_bytes: u64, controls: Controls) -> Self {
        Shared {
            controls,
            exit: Arc::new(ExitLatch::default()),
            started: Mutex::new(None),
            counters: (0..vcpus)
                .map(|_| Arc::new(VcpuCounters::default()))
                .collect(),
            memory_bytes,
            hotplug: OnceLock::new(),
        }
    }

    /// Gives the VM its hot-plug slots (once, while building).
    pub(crate) fn set_hotplug(&self, hotplug: Arc<Hotplug>) {
        // Set once by the builder; a second call would be a bug, ignored.
        let _ = self.hotplug.set(hotplug);
    }

    /// Where the VM's exit status is decided; the devices and vCPUs that
    /// may end the VM hold it.
    pub(crate) fn exit(&self) -> &Arc<ExitLatch> {
        &self.exit
    }

    fn stats(&self) -> VmStats {
        let started = *self.started.lock().unwrap_or_else(|p| p.into_inner());
        VmStats {
            uptime: started.map_or(Duration::ZERO, |s| s.elapsed()),
            memory_bytes: self.memory_bytes,
            vcpus: self.counters.len() as u8,
            pio_exits: self
                .counters
                .iter()
                .map(|c| c.pio.load(Ordering::Relaxed))
                .sum(),
            mmio_exits: self
                .counters
                .iter()
                .map(|c| c.mmio.load(Ordering::Relaxed))
                .sum(),
            exit: self.exit.status(),
        }
    }
}

/// Controls a VM from another thread: stop it, wait for it, read its stats.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<Shared>,
}

impl VmHandle {
    /// Asks the VM to stop; [`Vm::run`] then returns [`ExitStatus::Stopped`]
    /// unless the guest ended first.
    pub fn stop(&self) {
        self.shared.exit.request(ExitStatus::Stopped);
    }

    /// Blocks until the VM has an exit status.
    pub fn wait(&self) -> ExitStatus {
        self.shared.exit.wait(None).unwrap_or(ExitStatus::Stopped)
    }

    /// Like [`VmHandle::wait`], giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        self.shared.exit.wait(Some(timeout))
    }

    /// Current statistics.
    pub fn stats(&self) -> VmStats {
        self.shared.stats()
    }

    /// The balloon device's own handle (counters, raw page targets), when
    /// the VM was built with [`crate::VmBuilder::balloon`].
    pub fn balloon(&self) -> Option<&BalloonHandle> {
        self.shared.controls.balloon.as_ref()
    }

    /// Sets how much memory the balloon takes from the guest, in MiB.
    pub fn set_balloon_target_mib(&self, mib: u64) -> Result<(), MemoryControlError> {
        memory_control::set_target_mib(self.balloon(), mib)
    }

    /// Asks the guest for fresh memory statistics (waiting up to `timeout`)
    /// and returns them with the balloon's state.
    pub fn balloon_report(&self, timeout: Duration) -> Result<BalloonReport, MemoryControlError> {
        memory_control::report(self.balloon(), timeout)
    }

    /// The Unix socket of the VM's vsock device, behind which the guest
    /// agent serves ([`crate::config::VsockConfig::uds`]); `None` without
    /// a vsock device.
    pub fn agent_socket(&self) -> Option<&Path> {
        self.shared.controls.agent.as_deref()
    }

    /// Puts a virtio-fs device for `tag` into a free hot-plug slot,
    /// connected to the virtiofsd the caller started on
    /// `virtiofs-<tag>.sock` in the VM's state directory (`pid`, its
    /// process id, is only shown). The guest sees the device once its
    /// driver probes the returned window again. Waits for the VM's
    /// activation thread, which does the work.
    pub fn attach_fs(&self, tag: &str, pid: u32) -> Result<AttachedFs, HotplugError> {
        self.shared
            .hotplug
            .get()
            .ok_or(HotplugError::NoSlots)?
            .attach_fs(tag, pid)
    }

    /// Takes the live mount `tag` out of its slot: the device stops, its
    /// connection closes (the daemon then ends by itself) and the slot is
    /// empty again, whatever the guest's driver still does.
    pub fn detach_fs(&self, tag: &str) -> Result<AttachedFs, HotplugError> {
        self.shared
            .hotplug
            .get()
            .ok_or(HotplugError::NoSlots)?
            .detach_fs(tag)
    }

    /// The live mounts attached now.
    pub fn attached_fs(&self) -> Vec<AttachedFs> {
        self.shared
            .hotplug
            .get()
            .map(|h| h.attached())
            .unwrap_or_default()
    }

    /// The network stack's handle, when the VM was built with
    /// [`crate::VmBuilder::net`]: read the egress policy in force, or
    /// replace it while the guest runs ([`NetHandle::set_policy`]).
    pub fn net(&self) -> Option<&NetHandle> {
        self.shared.controls.net.as_ref()
    }
}

/// Errors while running a VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A vCPU thread could not be started.
    #[error("Cannot start vCPU thread")]
    Spawn(#[source] std::io::Error),
    /// The activation thread could not be started.
    #[error(transparent)]
    Activation(#[from] ActivatorError),
    /// no_new_privs could not be set for the VM's threads.
    #[error(transparent)]
    Hygiene(#[from] crate::hygiene::HygieneError),
}

/// A VM ready to run. Build one with [`crate::VmBuilder`].
pub struct Vm {
    pub(crate) seccomp: SeccompLevel,
    pub(crate) shared: Arc<Shared>,
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) buses: Arc<Buses>,
    pub(crate) devices: DeviceManager,
    // Dropped last, after the vCPUs and devices that use them.
    pub(crate) vm_fd: VmFd,
    #[expect(
        dead_code,
        reason = "owns the guest memory KVM maps until Drop removes the slots"
    )]
    pub(crate) ram: GuestRam,
    /// Number of KVM memory slots the RAM occupies (0..n).
    pub(crate) memory_slots: u32,
    /// How far Landlock restricts this process, when it was asked to.
    pub(crate) landlock: Option<crate::landlock::Enforcement>,
    /// How long each step of the build took.
    pub(crate) setup_times: SetupTimes,
}

/// How long [`crate::VmBuilder::build`] spent on each step, for callers
/// that report where a start's time goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupTimes {
    /// Creating the devices, starting the shares' virtiofsd among them.
    pub devices: std::time::Duration,
    /// Creating the VM, its guest RAM and its interrupt controller.
    pub memory: std::time::Duration,
    /// Loading the kernel and initrd, writing the boot tables.
    pub boot_image: std::time::Duration,
    /// Creating and setting up the vCPUs (CPUID, registers).
    pub vcpus: std::time::Duration,
}

impl Vm {
    /// How long the build spent on each step.
    pub fn setup_times(&self) -> SetupTimes {
        self.setup_times
    }

    /// A handle that controls this VM from other threads.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: self.shared.clone(),
        }
    }

    /// How far Landlock restricts the VMM's file system access, when
    /// [`crate::VmBuilder::landlock`] asked for it.
    pub fn landlock(&self) -> Option<crate::landlock::Enforcement> {
        self.landlock
    }

    /// The VM's devices (in-crate tests look at their wiring).
    #[cfg(test)]
    pub(crate) fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// Runs the VM until the guest powers off, resets or crashes, or a
    /// handle stops it. Every vCPU thread is joined and every device stopped
    /// before this returns. The same as [`Vm::start`] and
    /// [`RunningVm::wait`].
    pub fn run(self) -> Result<ExitStatus, RunError> {
        Ok(self.start()?.wait())
    }

    /// Starts the activation thread and the vCPUs, each confined by its
    /// seccomp filter ([`VmConfig::seccomp`](crate::VmConfig::seccomp))
    /// before the guest runs. The caller may confine its own thread before
    /// [`RunningVm::wait`] with [`ThreadKind::Supervisor`](crate::seccomp::ThreadKind::Supervisor)'s filter
    /// ([`crate::seccomp::install`]), as `agentvm` does. The vCPU threads
    /// (and the device threads they start) inherit `no_new_privs` from the
    /// calling thread, which gets it here if [`crate::VmBuilder::build`]
    /// ran on another one.
    pub fn start(mut self) -> Result<RunningVm, RunError> {
        crate::hygiene::harden_process()?;
        *self
            .shared
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let (event, transports) = self.devices.activation();
        let confinement = Confinement {
            level: self.seccomp,
            launches_daemons: self.devices.launches_daemons(),
        };
        let hotplug = self.shared.hotplug.get().cloned();
        let activator = match Activator::spawn(transports, hotplug, event, confinement) {
            Ok(a) => a,
            Err(e) => {
                self.devices.shutdown();
                return Err(e.into());
            }
        };
        let mut threads = Vec::with_capacity(self.vcpus.len());
        let vcpus = std::mem::take(&mut self.vcpus);
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let spawned = vcpu::spawn(
                index as u8,
                vcpu,
                self.buses.clone(),
                self.shared.exit.clone(),
                self.shared.counters[index].clone(),
                self.seccomp,
            );
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.shared
                        .exit
                        .request(ExitStatus::Crashed(format!("cannot start vCPU {index}")));
                    RunningVm {
                        vm: self,
                        threads,
                        activator,
                    }
                    .wait();
                    return Err(RunError::Spawn(e));
                }
            }
        }
        Ok(RunningVm {
            vm: self,
            threads,
            activator,
        })
    }
}

/// A VM whose vCPUs run; see [`Vm::start`].
pub struct RunningVm {
    vm: Vm,
    threads: Vec<JoinHandle<()>>,
    activator: Activator,
}

impl RunningVm {
    /// A handle that controls this VM from other threads.
    pub fn handle(&self) -> VmHandle {
        self.vm.handle()
    }

    /// Waits until the guest powers off, resets or crashes, or a handle
    /// stops the VM; then joins every vCPU thread and stops every device.
    pub fn wait(mut self) -> ExitStatus {
        let status = self
            .vm
            .shared
            .exit
            .wait(None)
            .unwrap_or(ExitStatus::Stopped);
        stop_vcpus(std::mem::take(&mut self.threads));
        self.activator.stop();
        if let Some(hotplug) = self.vm.shared.hotplug.get() {
            hotplug.cancel();
        }
        self.vm.devices.shutdown();
        status
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Take guest memory out of KVM before the VM fd closes. With an
        // in-kernel irqchip, each change to a VM's memory map waits for a
        // grace period (~7 ms on some hosts); closing a VM that still maps
        // its memory pays it twice. Removing the slots here pays it once.
        // The vCPUs are gone (run joined them, or they never started).
        for slot in 0..self.memory_slots {
            let empty = kvm_userspace_memory_region {
                slot,
                ..Default::default()
            };
            // SAFETY: deleting a memory slot (size 0) removes KVM's mapping of
            // guest memory; no vCPU is running, so nothing can access it.
            if let Err(e) = unsafe { self.vm_fd.set_user_memory_region(empty) } {
                tracing::debug!("cannot remove memory slot {slot}: {e}");
            }
        }
    }
}

/// Kicks every vCPU thread out of KVM_RUN until it has ended, then joins it.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        while !t.is_finished() {
            if t.kill(vcpu::kick_signal()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        if t.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
}
