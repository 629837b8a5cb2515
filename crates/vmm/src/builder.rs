//! [`VmBuilder`]: from a [`VmConfig`] and devices to a ready [`Vm`].
//!
//! The order of setup matters for start-up time on KVM: guest memory is
//! registered before the in-kernel irqchip exists (registering after it
//! costs milliseconds per 128 MiB on some hosts), and the vCPUs are created
//! last, once every device and table is in place.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use agentvm_devices::bus::Bus;
use agentvm_devices::virtio::VirtioDevice;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::regs::{self, EntryMode};
use crate::arch::x86_64::{acpi, cpuid, e820, mptable};
use crate::boot::{self, pvh, zero_page, BootError};
use crate::config::{
    BalloonConfig, CmdlineDevices, ConfigError, Landlock, SerialSink, ShareConfig, StackConfig,
    VmConfig, VsockConfig,
};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::device_setup;
use crate::hotplug::Hotplug;
use crate::hygiene::{self, HygieneError};
use crate::landlock::{self as fs_rules, FsAccess, LandlockError};
use crate::memory::{GuestRam, MemoryError};
use crate::seccomp;
use crate::vcpu::Buses;
use crate::vm::{Controls, SetupTimes, Shared, Vm};

/// Address of the 3-page TSS KVM needs on Intel hosts (just below the BIOS
/// ROM area at the top of the 32-bit space, inside the MMIO hole).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors while building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is not usable.
    #[error("Invalid VM configuration")]
    Config(#[from] ConfigError),
    /// The network stack could not start.
    #[error("Cannot start the network stack")]
    Net(#[source] agentvm_net::NetError),
    /// A share's virtiofsd could not be found or started.
    #[error("Cannot set up the share {}:{tag}", dir.display())]
    Share {
        /// The share's tag.
        tag: String,
        /// The shared host directory.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<agentvm_devices::virtio::fs::FsError>,
    },
    /// The vsock device's socket could not be bound.
    #[error("Cannot set up the vsock device")]
    Vsock(#[source] agentvm_devices::virtio::vsock::VsockError),
    /// The balloon device could not be created.
    #[error("Cannot create the balloon device")]
    Balloon(#[source] agentvm_devices::virtio::balloon::BalloonError),
    /// The balloon's initial target could not be set.
    #[error("Cannot set the balloon's target")]
    BalloonTarget(#[source] agentvm_devices::virtio::balloon::BalloonError),
    /// /dev/kvm cannot be opened.
    #[error("Cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What we asked for.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM reports more CPUID entries than a vCPU takes.
    #[error("Too many CPUID entries")]
    Cpuid,
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The process could not be hardened (no_new_privs, core dumps).
    #[error(transparent)]
    Hygiene(#[from] HygieneError),
    /// The Landlock ruleset could not be applied.
    #[error(transparent)]
    Landlock(#[from] LandlockError),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Device setup failed.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// The ACPI tables could not be written.
    #[error("Cannot write ACPI tables")]
    Acpi(#[source] acpi::AcpiError),
    /// The MP table could not be written.
    #[error("Cannot write the MP table")]
    Mptable(#[source] mptable::MptableError),
    /// A vCPU's boot state could not be set.
    #[error("Cannot set up vCPU {0}")]
    Vcpu(u8, #[source] regs::RegsError),
    /// The serial output file could not be created.
    #[error("Cannot create serial output file {}", .0.display())]
    SerialFile(PathBuf, #[source] std::io::Error),
}

/// Builds a [`Vm`].
///
/// Boot a tiny test guest that prints a line and resets, capture its
/// console, and stop it from another thread if it runs too long:
///
/// ```
/// use std::io::Write;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use agentvm_vmm::{ExitStatus, SerialSink, VmBuilder};
///
/// #[derive(Clone, Default)]
/// struct Console(Arc<Mutex<Vec<u8>>>);
/// impl Write for Console {
///     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
///         self.0.lock().unwrap().extend_from_slice(b);
///         Ok(b.len())
///     }
///     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
/// #     return Ok(()); // no usable KVM here
/// # }
/// let dir = tempfile::tempdir()?;
/// let kernel = agentvm_testguest::programs::hello("hello from the guest\n")?.write_to(dir.path())?;
/// let console = Console::default();
/// let vm = VmBuilder::new(&kernel)
///     .memory_mib(128)
///     .vcpus(2)
///     .serial(SerialSink::Writer(Box::new(console.clone())))
///     .build()?;
/// let handle = vm.handle();
/// std::thread::spawn(move || {
///     if handle.wait_timeout(Duration::from_secs(10)).is_none() {
///         handle.stop();
///     }
/// });
/// assert_eq!(vm.run()?, ExitStatus::Reset);
/// assert_eq!(&*console.0.lock().unwrap(), b"hello from the guest\n");
/// # Ok(())
/// # }
/// ```
///
/// The same machine from a [`VmConfig`], with the devices `agentvm` gives
/// its VMs (a share needs virtiofsd, so this one has none):
///
/// ```
/// use agentvm_vmm::config::{BalloonConfig, Landlock, SerialSink, VmConfig, VsockConfig};
/// use agentvm_vmm::{ExitStatus, VmBuilder};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
/// #     return Ok(()); // no usable KVM here
/// # }
/// let dir = tempfile::tempdir()?;
/// let kernel = agentvm_testguest::programs::hello("hi\n")?.write_to(dir.path())?;
/// let mut config = VmConfig::new(&kernel);
/// config.memory_mib = 128;
/// config.serial = SerialSink::Discard;
/// config.state_dir = Some(dir.path().to_owned());
/// config.vsock = Some(VsockConfig::new(dir.path().join("vsock.sock")));
/// config.rng = true;
/// config.balloon = Some(BalloonConfig { target_mib: Some(16) });
/// config.landlock = Landlock::FromConfig;
/// // On a thread of its own: Landlock restricts the thread that builds.
/// let status = std::thread::spawn(move || -> Result<ExitStatus, String> {
///     let vm = VmBuilder::from_config(config).build().map_err(|e| e.to_string())?;
///     assert_eq!(vm.handle().agent_socket(), Some(dir.path().join("vsock.sock").as_path()));
///     vm.run().map_err(|e| e.to_string())
/// })
/// .join()
/// .expect("the VM thread panicked")?;
/// assert_eq!(status, ExitStatus::Reset);
/// # Ok(())
/// # }
/// ```
pub struct VmBuilder {
    config: VmConfig,
    devices: Vec<Box<dyn VirtioDevice>>,
}

impl VmBuilder {
    /// A builder with [`VmConfig::new`] defaults for `kernel`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self::from_config(VmConfig::new(kernel))
    }

    /// A builder for `config`.
    pub fn from_config(config: VmConfig) -> Self {
        VmBuilder {
            config,
            devices: Vec::new(),
        }
    }

    /// Guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.config.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    pub fn vcpus(mut self, n: u8) -> Self {
        self.config.vcpus = n;
        self
    }

    /// Initial ramdisk.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.initrd = Some(path.into());
        self
    }

    /// Kernel command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.config.cmdline = cmdline.into();
        self
    }

    /// Whether to create the in-kernel PIT (default: only with `acpi=off`).
    pub fn pit(mut self, pit: bool) -> Self {
        self.config.pit = Some(pit);
        self
    }

    /// What the seccomp filters of the VM's threads do with a system call
    /// they do not allow (default: end the VM; see [`crate::seccomp`]).
    pub fn seccomp(mut self, level: crate::seccomp::SeccompLevel) -> Self {
        self.config.seccomp = level;
        self
    }

    /// Where the serial console goes.
    pub fn serial(mut self, sink: SerialSink) -> Self {
        self.config.serial = sink;
        self
    }

    /// The VM's state directory ([`VmConfig::state_dir`]).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = Some(dir.into());
        self
    }

    /// Shares a host directory over virtio-fs ([`VmConfig::shares`]; needs
    /// a [`VmBuilder::state_dir`]).
    pub fn share(mut self, share: ShareConfig) -> Self {
        self.config.shares.push(share);
        self
    }

    /// Declares `n` empty hot-plug slots for live mounts
    /// ([`VmConfig::hotplug_slots`]; needs a [`VmBuilder::state_dir`]).
    pub fn hotplug_slots(mut self, n: u8) -> Self {
        self.config.hotplug_slots = n;
        self
    }

    /// Adds a virtio-vsock device ([`VmConfig::vsock`]); its socket is the
    /// guest agent's ([`crate::VmHandle::agent_socket`]).
    pub fn vsock(mut self, vsock: VsockConfig) -> Self {
        self.config.vsock = Some(vsock);
        self
    }

    /// Adds a virtio-rng device.
    pub fn rng(mut self) -> Self {
        self.config.rng = true;
        self
    }

    /// Adds a virtio-balloon device (statistics, deflate on OOM, free page
    /// reporting), controlled through [`crate::VmHandle`].
    pub fn balloon(mut self) -> Self {
        self.config.balloon = Some(BalloonConfig::default());
        self
    }

    /// Adds a virtio-net device whose frames go through a user-mode
    /// network stack started from `stack`, which enforces its egress
    /// policy (the guest's MAC is [`agentvm_net::addr::GUEST_MAC`]).
    /// [`crate::VmHandle::net`] reads and replaces the policy while the VM
    /// runs. Without this call the VM has no network device at all.
    pub fn net(mut self, stack: StackConfig) -> Self {
        self.config.net = Some(stack);
        self
    }

    /// Adds a virtio device (on virtio-mmio) the configuration does not
    /// describe, after the configured ones.
    pub fn device(mut self, device: Box<dyn VirtioDevice>) -> Self {
        self.devices.push(device);
        self
    }

    /// Restricts the calling thread's file system access to `access` with
    /// Landlock once the VM is built (see [`crate::landlock`]): the VM's
    /// threads, and every process they start, inherit it. Call
    /// [`VmBuilder::build`] on the thread that will run the VM.
    /// [`Landlock::FromConfig`] derives the rules from the configuration.
    pub fn landlock(mut self, access: FsAccess) -> Self {
        self.config.landlock = Landlock::Rules(access);
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Creates the VM: devices (starting virtiofsd, the network stack, the
    /// vsock socket), memory, irqchip, kernel, tables, vCPUs; then applies
    /// Landlock.
    ///
    /// First it checks the configuration ([`VmConfig::validate`]) and
    /// hardens the process ([`hygiene::harden_process`]): `no_new_privs`
    /// on this thread and core dumps off, process-wide. Threads the devices
    /// start from this thread are confined by their seccomp filter
    /// ([`seccomp::device_thread_hook`], set on the calling thread).
    pub fn build(self) -> Result<Vm, BuildError> {
        let VmBuilder {
            mut config,
            devices: extra,
        } = self;
        config.validate()?;
        let memory_bytes = config
            .memory_bytes()
            .ok_or(ConfigError::MemoryTooLarge(config.memory_mib))?;
        let cmdline = config.cmdline_with_shares()?;
        hygiene::harden_process()?;
        // Threads the devices start from here on (virtiofsd's log relay)
        // confine themselves.
        agentvm_devices::thread::set_start_hook(seccomp::device_thread_hook(config.seccomp));
        // Devices added by the embedder may be vhost-user back ends in
        // another process; only ours are known not to be.
        let shared_memory = config.needs_shared_memory() || !extra.is_empty();
        let mut times = SetupTimes::default();
        let mut step = Instant::now();
        let configured = device_setup::create(&config, extra)?;
        times.devices = lap(&mut step);
        let landlock = match &config.landlock {
            Landlock::Off => None,
            Landlock::FromConfig => Some(fs_rules::vm_access(&config, &configured.virtiofsd)),
            Landlock::Rules(access) => Some(access.clone()),
        };
        let serial = std::mem::replace(&mut config.serial, SerialSink::Discard);

        let kvm = Kvm::new().map_err(BuildError::OpenKvm)?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let ram = if shared_memory {
            match config.shared_memory_file.take() {
                Some(file) => GuestRam::in_file(file, memory_bytes)?,
                None => GuestRam::new(memory_bytes)?,
            }
        } else {
            GuestRam::private(memory_bytes)?
        };
        tracing::debug!(
            mib = memory_bytes >> 20,
            shared = ram.is_shared(),
            "guest RAM mapped"
        );
        let memory_slots = register_memory(&vm_fd, &ram)?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("place the TSS"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create the interrupt controller"))?;
        if config.wants_pit() {
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm_fd.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        }

        let controls = Controls {
            agent: config.vsock.as_ref().map(|v| v.uds.clone()),
            balloon: configured.balloon,
            net: configured.net,
        };
        let shared = Arc::new(Shared::new(config.vcpus, memory_bytes, controls));
        let mem = ram.memory();
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let mut device_manager =
            DeviceManager::new(&vm_fd, &mut pio, serial_writer(serial)?, shared.exit())?;
        for device in configured.devices {
            device_manager.add_virtio(&vm_fd, &mut mmio, mem, device)?;
        }
        if let (Some(state_dir), n @ 1..) = (&config.state_dir, config.hotplug_slots) {
            let mut places = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                places.push(device_manager.add_hotplug_slot(
                    &vm_fd,
                    &mut mmio,
                    mem,
                    agentvm_devices::virtio::fs::NUM_QUEUES,
                )?);
            }
            let wake = device_manager
                .activation_event()
                .try_clone()
                .map_err(DeviceError::EventFd)?;
            shared.set_hotplug(Arc::new(Hotplug::new(state_dir.clone(), places, wake)));
        }

        times.memory = lap(&mut step);
        let (kernel, initrd) = boot::load_kernel_and_initrd(
            mem,
            memory_bytes,
            &config.kernel,
            config.initrd.as_deref(),
        )?;
        let cmdline = full_cmdline(&config, cmdline, &device_manager);
        boot::write_cmdline(mem, &kernel, &cmdline)?;
        let rsdp = acpi::create_acpi_tables(mem, &acpi_layout(&config, &device_manager))
            .map_err(BuildError::Acpi)?;
        mptable::setup_mptable(mem, config.vcpus).map_err(BuildError::Mptable)?;
        let map = e820::memory_map(memory_bytes);
        match kernel.mode {
            EntryMode::Pvh => pvh::write(mem, &map, initrd, Some(rsdp.0))?,
            EntryMode::Linux64 => zero_page::write(
                mem,
                &zero_page::ZeroPage {
                    header: kernel.header,
                    initrd,
                    e820: &map,
                    rsdp: Some(rsdp.0),
                },
            )?,
        }
        regs::write_boot_tables(mem, kernel.mode).map_err(|e| BuildError::Vcpu(0, e))?;
        times.boot_image = lap(&mut step);

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report CPUID"))?;
        let topology = cpuid::Topology {
            vcpus: config.vcpus,
        };
        let mut host = cpuid::Host {
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            brand: cpuid::Host::brand_of_this_cpu(),
            tsc_khz: None,
        };
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let vcpu = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create a vCPU"))?;
            if id == 0 && cpuid::Host::invariant_tsc_on_this_cpu() {
                // KVM gives every vCPU the same rate; 0 or an error means
                // it does not know one.
                host.tsc_khz = vcpu.get_tsc_khz().ok().filter(|&khz| khz > 0);
            }
            let mut entries = supported.as_slice().to_vec();
            cpuid::normalize(&mut entries, id, topology, host);
            let cpuid = CpuId::from_entries(&entries).map_err(|_| BuildError::Cpuid)?;
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            regs::setup_vcpu(&vcpu, kernel.mode, kernel.entry, id == 0)
                .map_err(|e| BuildError::Vcpu(id, e))?;
            vcpus.push(vcpu);
        }

        times.vcpus = lap(&mut step);
        // Last: everything above opened what it needed.
        let landlock = match &landlock {
            Some(access) => Some(fs_rules::restrict_self(access)?),
            None => None,
        };
        Ok(Vm {
            seccomp: config.seccomp,
            shared,
            vcpus,
            buses: Arc::new(Buses { pio, mmio }),
            devices: device_manager,
            vm_fd,
            ram,
            memory_slots,
            landlock,
            setup_times: times,
        })
    }
}

/// The time since `*step`, which moves to now.
fn lap(step: &mut Instant) -> std::time::Duration {
    let now = Instant::now();
    let took = now.duration_since(*step);
    *step = now;
    took
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

/// Gives KVM the RAM regions as slots 0..n; returns n.
fn register_memory(vm: &VmFd, ram: &GuestRam) -> Result<u32, BuildError> {
    for (slot, region) in ram.memory().iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `ram`; the Vm keeps
        // it until its Drop has removed these slots, and a failed build drops
        // `ram` only after every vCPU is gone. Slots do not overlap because
        // the regions do not.
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(ram.memory().num_regions() as u32)
}

fn serial_writer(sink: SerialSink) -> Result<Box<dyn Write + Send>, BuildError> {
    Ok(match sink {
        SerialSink::Stdout => Box::new(std::io::stdout()),
        SerialSink::File(path) => {
            Box::new(File::create(&path).map_err(|e| BuildError::SerialFile(path, e))?)
        }
        SerialSink::Writer(w) => w,
        SerialSink::Discard => Box::new(std::io::sink()),
    })
}

/// `cmdline` (the configuration's, with the shares' entries) and, when
/// asked for, the devices' `virtio_mmio.device=` parameters.
fn full_cmdline(config: &VmConfig, mut cmdline: String, devices: &DeviceManager) -> String {
    let add = match config.cmdline_devices {
        CmdlineDevices::Always => true,
        CmdlineDevices::Never => false,
        CmdlineDevices::WhenNoAcpi => config.acpi_disabled(),
    };
    if add {
        for slot in devices.slots() {
            cmdline.push(' ');
            cmdline.push_str(&slot.cmdline_param());
        }
    }
    cmdline
}

fn acpi_layout(config: &VmConfig, devices: &DeviceManager) -> acpi::AcpiLayout {
    acpi::AcpiLayout {
        vcpus: config.vcpus,
        virtio_mmio: devices
            .slots()
            .iter()
            .map(|s| (s.base, s.size, s.gsi))
            .collect(),
    }
}
