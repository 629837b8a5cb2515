//! `agentvm boot`: boot a kernel in the foreground.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentvm_devices::virtio::rng::Rng;
use agentvm_devices::virtio::vsock::{Vsock, VsockCounters, VsockError, DEFAULT_GUEST_CID};
use agentvm_net::{Audit, NetStack, Policy, StackConfig};
use agentvm_vmm::seccomp::{self, ThreadKind};
use agentvm_vmm::{config, ExitStatus, SeccompLevel, SerialSink, Vm, VmBuilder, VmConfig};
use anyhow::{bail, Context};
use clap::Args;

use crate::kvm_host::{explain, KvmKind};
use crate::net_args::NetArgs;

/// Arguments of `agentvm boot`.
#[derive(Args, Debug)]
pub struct BootArgs {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage
    /// [default: the guest image's vmlinux].
    #[arg(long, conflicts_with = "image")]
    kernel: Option<PathBuf>,
    /// Boot the guest image in DIR (vmlinux, initrd.img, cmdline, as
    /// `agentvm image build` writes them) [default without --kernel:
    /// $XDG_DATA_HOME/agentvm/images/default].
    #[arg(long, value_name = "DIR")]
    image: Option<PathBuf>,
    /// Initial ramdisk [default: the guest image's initrd.img].
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: the guest image's, or
    /// "console=ttyS0 reboot=k panic=1 pci=off" with --kernel].
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Write the guest console to this file instead of stdout.
    #[arg(long)]
    serial: Option<PathBuf>,
    /// Do not attach a virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// Do not attach a virtio-balloon device (with free page reporting, the
    /// guest hands memory it frees back to the host).
    #[arg(long, conflicts_with = "balloon")]
    no_balloon: bool,
    /// Inflate the balloon to MIB at boot: the guest gives that much of its
    /// memory back to the host (deflated again if the guest runs short).
    #[arg(long, value_name = "MIB")]
    balloon: Option<u64>,
    /// Share a host directory with the guest over virtio-fs (repeatable): the
    /// guest agent mounts TAG at the same path; `:ro` makes it read-only.
    /// Needs virtiofsd (`agentvm doctor` says where it looks).
    #[arg(long, value_name = "HOST_DIR:TAG[:ro]")]
    share: Vec<crate::share::ShareSpec>,
    /// Where virtiofsd can sandbox itself neither in namespaces nor in a
    /// chroot, run it without a sandbox (it then sees the host's files as
    /// you do) instead of refusing the shares.
    #[arg(long)]
    allow_unsandboxed_virtiofsd: bool,
    /// Attach a virtio-vsock device whose host side is the Unix socket UDS:
    /// host clients connect to it and send `CONNECT <port>\n`; guest
    /// connections to host port P go to the socket `UDS_P`.
    #[arg(long, value_name = "UDS")]
    vsock: Option<PathBuf>,
    /// The guest's vsock context id (3 to 4294967294) [default: 3].
    #[arg(long, value_name = "N", requires = "vsock")]
    cid: Option<u64>,
    /// Create the legacy i8254 PIT: `on`, `off`, or `auto` (only when the
    /// command line has `acpi=off`; ACPI guests use the LAPIC timer).
    #[arg(long, value_enum, default_value_t = PitMode::Auto)]
    pit: PitMode,
    /// The network: mode, allowlist, ports, pins, forwards, audit log.
    #[command(flatten)]
    net: NetArgs,
    /// What the VMM's per-thread seccomp filters do with a system call
    /// their thread never makes: `kill` ends the VM and names the call
    /// (exit code 159), `log` lets it through and the kernel logs it,
    /// `off` runs without filters.
    #[arg(long, value_name = "LEVEL", default_value = "kill")]
    seccomp: SeccompLevel,
    /// Test hook: once the threads are confined, the main thread makes a
    /// system call its filter forbids (getppid).
    #[arg(long, hide = true)]
    seccomp_selftest: bool,
}

/// Whether the VM gets a legacy PIT.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PitMode {
    /// Only for kernels booted with `acpi=off`.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Exit code when the guest triple-faults or a vCPU fails.
const EXIT_GUEST_CRASHED: u8 = 2;

pub fn run(args: BootArgs) -> anyhow::Result<ExitCode> {
    harden_vmm_process()?;
    // Options are checked before files are looked at.
    let policy = args.net.policy()?;
    for warning in args.net.warnings() {
        eprintln!("agentvm: warning: {warning}");
    }
    let kernel = choose_kernel(
        args.kernel.clone(),
        args.image.as_deref(),
        args.initrd.clone(),
        args.cmdline.clone(),
    )?;
    if let Some(mib) = args.balloon.filter(|&mib| mib >= args.memory) {
        bail!(
            "--balloon {mib} MiB would take all of the guest's {} MiB; give less than --memory",
            args.memory
        );
    }
    let net = match policy {
        Some(policy) => Some(NetSpec {
            policy,
            audit: args.net.audit()?,
            memory_budget: 0,
        }),
        None => None,
    };
    let serial = match &args.serial {
        Some(path) => SerialSink::File(path.clone()),
        None => SerialSink::Stdout,
    };
    // virtiofsd's sockets; removed (with the daemons stopped) at exit.
    let state = tempfile::Builder::new()
        .prefix("agentvm-")
        .tempdir()
        .context("cannot create a state directory for the shares")?;
    // An image with a root file system: the guest boots into it.
    let mut shares = args.share.clone();
    if args.kernel.is_none() {
        if let Ok(image) = crate::image::load(args.image.as_deref()) {
            if image.has_rootfs {
                shares.push(crate::share::ShareSpec::root_image(image.dir));
            }
        }
    }
    let vm = build_vm(VmSpec {
        kernel,
        memory_mib: args.memory,
        vcpus: args.vcpus,
        shares: &shares,
        allow_unsandboxed_virtiofsd: args.allow_unsandboxed_virtiofsd,
        state_dir: state.path(),
        vsock: args.vsock.as_deref(),
        cid: args.cid,
        vsock_counters: VsockCounters::default(),
        rng: !args.no_rng,
        balloon: !args.no_balloon,
        net,
        serial,
        pit: match args.pit {
            PitMode::Auto => None,
            PitMode::On => Some(true),
            PitMode::Off => Some(false),
        },
        seccomp: args.seccomp,
    })?;
    if let Some(mib) = args.balloon {
        // Kept by the device until the guest's driver starts, then asked for.
        vm.handle()
            .set_balloon_target_mib(mib)
            .context("cannot set the balloon's target")?;
    }
    let running = vm.start().context("cannot run the VM")?;
    seccomp::install(args.seccomp, ThreadKind::Supervisor)
        .context("cannot confine the VMM's main thread")?;
    if args.seccomp_selftest {
        seccomp_selftest();
    }
    let status = running.wait();
    match &status {
        ExitStatus::TripleFault => eprintln!("agentvm: the guest triple-faulted{}", pvm_hint()),
        ExitStatus::Crashed(why) => eprintln!("agentvm: the guest crashed: {why}{}", pvm_hint()),
        _ => {}
    }
    Ok(ExitCode::from(exit_code(&status)))
}

/// `boot`'s exit code for how the VM ended: [`EXIT_GUEST_CRASHED`] when
/// the guest or a vCPU failed, else 0 — the guest's own power-off, reset
/// or halt, and a stop, all succeed (as for `up`'s VMM,
/// [`crate::lifecycle::vmm`]).
fn exit_code(status: &ExitStatus) -> u8 {
    if status.is_failure() {
        EXIT_GUEST_CRASHED
    } else {
        0
    }
}

/// Makes a system call no filter of the main thread allows: under
/// `--seccomp kill` the VMM ends here, naming it.
fn seccomp_selftest() {
    let parent = nix::unistd::getppid();
    eprintln!("agentvm: seccomp self-test: getppid returned {parent}");
}

/// What a VMM process (`boot`, `__vmm`) does before anything else: closes
/// the descriptors it inherited, sets `no_new_privs` before any thread
/// exists (so every thread has it) and switches core dumps off. See
/// [`agentvm_vmm::hygiene`].
pub fn harden_vmm_process() -> anyhow::Result<()> {
    use agentvm_vmm::hygiene;
    hygiene::close_inherited_fds().context("cannot close inherited file descriptors")?;
    hygiene::harden_process().context("cannot harden the VMM process")
}

/// What a VM boots: kernel, initial ramdisk, command line.
#[derive(Debug, Clone)]
pub struct KernelChoice {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initial ramdisk, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line (without shares and devices).
    pub cmdline: String,
}

/// `kernel` with `initrd` and `cmdline` when given, else the guest image in
/// `image` (or the default image) with its own initrd and command line;
/// the files checked to exist.
pub fn choose_kernel(
    kernel: Option<PathBuf>,
    image: Option<&Path>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
) -> anyhow::Result<KernelChoice> {
    let choice = match kernel {
        Some(kernel) => KernelChoice {
            kernel,
            initrd,
            cmdline: cmdline.unwrap_or_else(|| config::DEFAULT_CMDLINE.to_string()),
        },
        None => {
            let image = crate::image::load(image)?;
            if KvmKind::detect() == KvmKind::Pvm {
                // Debian's kernel spends most of a minute in PVM's emulator
                // before it fails: say so now instead.
                bail!(
                    "this host's KVM is PVM (nested virtualization without VT-x/AMD-V), and \
                     the guest image at {} has Debian's stock kernel: {}",
                    image.dir.display(),
                    KvmKind::Pvm.guest_kernel_note()
                );
            }
            KernelChoice {
                kernel: image.kernel,
                initrd: initrd.or(Some(image.initrd)),
                cmdline: cmdline.unwrap_or(image.cmdline),
            }
        }
    };
    if !choice.kernel.exists() {
        bail!("kernel {} does not exist", choice.kernel.display());
    }
    if let Some(initrd) = &choice.initrd {
        if !initrd.exists() {
            bail!("initrd {} does not exist", initrd.display());
        }
    }
    Ok(choice)
}

/// Everything [`build_vm`] puts together.
pub struct VmSpec<'a> {
    /// What to boot.
    pub kernel: KernelChoice,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Host directories shared over virtio-fs.
    pub shares: &'a [crate::share::ShareSpec],
    /// Whether virtiofsd may run without a sandbox where it has none.
    pub allow_unsandboxed_virtiofsd: bool,
    /// Where virtiofsd's sockets go.
    pub state_dir: &'a Path,
    /// The vsock Unix socket, if the VM gets a vsock device.
    pub vsock: Option<&'a Path>,
    /// The guest's vsock context id [default: 3].
    pub cid: Option<u64>,
    /// Where the vsock device counts the connections it refuses.
    pub vsock_counters: VsockCounters,
    /// Whether to attach virtio-rng.
    pub rng: bool,
    /// Whether to attach virtio-balloon.
    pub balloon: bool,
    /// The network, if the VM gets a virtio-net device.
    pub net: Option<NetSpec>,
    /// Where the console goes.
    pub serial: SerialSink,
    /// Whether to create the PIT (`None`: only with `acpi=off`).
    pub pit: Option<bool>,
    /// The seccomp level of the VMM's threads.
    pub seccomp: SeccompLevel,
}

/// A VM's network: the egress policy its stack starts with, and where
/// the stack records its decisions.
pub struct NetSpec {
    /// The policy (its mode is not `off`: that is no network at all).
    pub policy: Policy,
    /// The audit log.
    pub audit: Audit,
    /// The stack's memory budget, bytes (0: its default).
    pub memory_budget: usize,
}

/// Raises this process's open-file limit to its hard limit: every guest
/// connection holds a host socket, and an agent's package install opens
/// hundreds (a soft limit of 1024 would turn them into resets).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// Builds the VM `spec` describes: the devices of `agentvm boot` and
/// `agentvm up`, shares with their virtiofsd started.
pub fn build_vm(spec: VmSpec<'_>) -> anyhow::Result<Vm> {
    // Threads the devices start from here on (virtiofsd's log relay)
    // confine themselves.
    agentvm_devices::thread::set_start_hook(seccomp::device_thread_hook(spec.seccomp));
    if KvmKind::detect() == KvmKind::Pvm {
        tracing::warn!(
            "this host's KVM is PVM: {}",
            KvmKind::Pvm.guest_kernel_note()
        );
    }
    let mut config = VmConfig::new(&spec.kernel.kernel);
    config.memory_mib = spec.memory_mib;
    config.vcpus = spec.vcpus;
    config.initrd = spec.kernel.initrd.clone();
    config.cmdline = spec.kernel.cmdline.clone();
    config.pit = spec.pit;
    config.seccomp = spec.seccomp;
    for share in spec.shares {
        config.cmdline.push(' ');
        config.cmdline.push_str(&share.cmdline_entry()?);
    }
    let stack = match spec.net {
        Some(net) => {
            raise_fd_limit();
            let mode = net.policy.mode;
            let stack = NetStack::new(StackConfig {
                policy: net.policy,
                audit: net.audit,
                resolvers: Vec::new(),
                mtu: 0,
                memory_budget: net.memory_budget,
            })
            .context("cannot start the network stack")?;
            tracing::debug!("network: {}", mode.as_str());
            Some(stack)
        }
        None => None,
    };
    let mut builder = VmBuilder::from_config(config).serial(spec.serial);
    if let Some(stack) = stack {
        builder = builder.net(stack);
    }
    let shares = crate::share::devices(
        spec.shares,
        spec.state_dir,
        spec.allow_unsandboxed_virtiofsd,
    )?;
    builder = builder.landlock(crate::fs_access::vmm_access(
        spec.state_dir,
        spec.vsock,
        &shares,
    ));
    for fs in shares {
        builder = builder.device(Box::new(fs));
    }
    if spec.rng {
        builder = builder.device(Box::new(Rng::new()));
    }
    if spec.balloon {
        builder = builder.balloon();
    }
    if let Some(uds) = spec.vsock {
        let vsock = vsock_device(spec.cid.unwrap_or(DEFAULT_GUEST_CID), uds)?
            .with_counters(spec.vsock_counters);
        builder = builder.device(Box::new(vsock));
    }
    match builder.build() {
        Ok(vm) => Ok(vm),
        Err(e) => match explain(&e) {
            Some(msg) => bail!(msg),
            None => Err(anyhow::Error::new(e).context("cannot create the VM")),
        },
    }
}

/// The vsock device, its socket bound now so a bad path fails before boot.
fn vsock_device(cid: u64, uds: &Path) -> anyhow::Result<Vsock> {
    let shown = uds.display();
    Vsock::new(cid, uds).map_err(|e| match &e {
        VsockError::InvalidCid(_) => anyhow::anyhow!("--cid: {e}"),
        VsockError::InUse(_) => anyhow::anyhow!(
            "--vsock: {shown} is in use (another VM or program listens there); \
             stop it or choose another path"
        ),
        VsockError::NotASocket(_) => anyhow::anyhow!(
            "--vsock: {shown} exists and is not a socket; remove it or choose another path"
        ),
        VsockError::Bind { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::anyhow!(
                "--vsock: cannot create {shown}: its directory does not exist; create it first"
            )
        }
        VsockError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            anyhow::anyhow!(
                "--vsock: cannot create {shown}: permission denied; choose a path you can write"
            )
        }
        VsockError::Bind { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput => {
            anyhow::anyhow!(
                "--vsock: {shown} is too long for a Unix socket (at most 107 bytes); \
                 use a shorter path"
            )
        }
        _ => anyhow::Error::new(e).context("--vsock: cannot set up the vsock device"),
    })
}

/// On PVM hosts a stock kernel dies early; say so when a guest crashes.
fn pvm_hint() -> String {
    match KvmKind::detect() {
        KvmKind::Pvm => format!(
            " (this host's KVM is PVM: {})",
            KvmKind::Pvm.guest_kernel_note()
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    use agentvm_vmm::ExitStatus;

    use super::{exit_code, raise_fd_limit, EXIT_GUEST_CRASHED};

    #[test]
    fn only_a_failed_guest_or_vcpu_makes_boot_fail() {
        for ok in [
            ExitStatus::PowerOff,
            ExitStatus::Reset,
            ExitStatus::Halted,
            ExitStatus::Stopped,
        ] {
            assert_eq!(exit_code(&ok), 0, "{ok:?}");
        }
        for failed in [ExitStatus::TripleFault, ExitStatus::Crashed("x".into())] {
            assert_eq!(exit_code(&failed), EXIT_GUEST_CRASHED, "{failed:?}");
        }
    }

    #[test]
    fn a_vmm_with_a_network_may_open_as_many_files_as_the_hard_limit_allows() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let lower = hard.min(256);
        setrlimit(Resource::RLIMIT_NOFILE, lower, hard).unwrap();
        raise_fd_limit();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
