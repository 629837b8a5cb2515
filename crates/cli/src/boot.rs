//! `agentvm boot`: boot a kernel in the foreground.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentvm_net::Policy;
use agentvm_vmm::config::{
    self, BalloonConfig, Landlock, SerialSink, ShareConfig, StackConfig, VmConfig, VsockConfig,
};
use agentvm_vmm::seccomp::{self, ThreadKind};
use agentvm_vmm::{ExitStatus, SeccompLevel};
use anyhow::{bail, Context};
use clap::Args;

use crate::kvm_host::KvmKind;
use crate::net_args::NetArgs;
use crate::secrets::flags::SecretArgs;

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
    #[arg(long, value_name = "HOST_DIR:TAG[:ro]", value_parser = crate::share::parse)]
    share: Vec<ShareConfig>,
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
    /// Forward the ssh-agent of $SSH_AUTH_SOCK to the guest (through the
    /// vsock device: its socket `UDS_1025`): it can list keys and sign,
    /// never add, remove or lock them.
    #[arg(long, requires = "vsock")]
    ssh_agent: bool,
    /// With --ssh-agent, only this key (its `SHA256:…` fingerprint, as
    /// `ssh-add -l` prints it); repeatable.
    #[arg(long, value_name = "FINGERPRINT", requires = "ssh_agent", value_parser = parse_fingerprint)]
    ssh_key: Vec<String>,
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
    /// Secrets the guest sees as placeholders, and extra upstream roots.
    #[command(flatten)]
    secrets: SecretArgs,
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
    let lookup = |v: &str| std::env::var(v).ok();
    let secrets = args.secrets.resolve(policy.as_ref(), &lookup)?;
    let kernel = choose_kernel(
        args.kernel.clone(),
        args.image.as_deref(),
        args.initrd.clone(),
        args.cmdline.clone(),
    )?;
    // virtiofsd's sockets; removed (with the daemons stopped) at exit.
    let state = tempfile::Builder::new()
        .prefix("agentvm-")
        .tempdir()
        .context("cannot create a state directory for the shares")?;
    let intercept = match secrets {
        Some((handoff, resolved)) => {
            let ca = state.path().join(crate::secrets::ca::CERT_FILE);
            std::fs::write(&ca, &handoff.ca_cert_pem)
                .with_context(|| format!("cannot write {}", ca.display()))?;
            for s in &resolved {
                eprintln!(
                    "agentvm: secret {}: the guest's placeholder is {} (the real value goes to \
                     {} only); the guest must trust the CA in {}",
                    s.name,
                    s.placeholder,
                    s.hosts.join(", "),
                    ca.display()
                );
            }
            Some(handoff.intercept_config()?)
        }
        None => None,
    };
    let mut config = args.vm_config(kernel, policy, state.path(), intercept)?;
    let ssh_relay = args.ssh_relay(&mut config)?;
    let vm = crate::build::build_vm(config)?;
    let _relay_socket = match ssh_relay {
        Some((relay, socket)) => {
            relay
                .start(args.seccomp)
                .context("cannot start the ssh-agent relay")?;
            Some(RemoveOnDrop(socket))
        }
        None => None,
    };
    let running = vm.start().context("cannot run the VM")?;
    agentvm_vmm::footprint::release_startup_code();
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

/// `SHA256:…`, as `ssh-add -l` prints a key's fingerprint.
fn parse_fingerprint(s: &str) -> Result<String, String> {
    crate::ssh_agent::wire::parse_fingerprint(s)
        .map(|_| s.to_owned())
        .ok_or_else(|| format!("{s:?} is not a SHA256:… key fingerprint"))
}

/// A file removed when this is dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl BootArgs {
    /// With `--ssh-agent`: the relay, bound at the vsock socket's
    /// `_1025`, and the guest told where to find it.
    fn ssh_relay(
        &self,
        config: &mut VmConfig,
    ) -> anyhow::Result<Option<(crate::ssh_agent::Relay, PathBuf)>> {
        use crate::ssh_agent::{self, host::Forward};
        let (true, Some(vsock)) = (self.ssh_agent, &self.vsock) else {
            return Ok(None);
        };
        let wanted = crate::config::SshConfig {
            agent: true,
            keys: self.ssh_key.clone(),
            hosts: Vec::new(),
        };
        let auth_sock = std::env::var_os("SSH_AUTH_SOCK");
        let Some(forward) = Forward::prepare(&wanted, auth_sock.as_deref(), &[])? else {
            return Ok(None);
        };
        let listen = ssh_agent::socket_path(vsock);
        let relay = ssh_agent::Relay::bind(&listen, forward.socket.clone(), forward.policy()?)
            .with_context(|| format!("cannot listen on {}", listen.display()))?;
        config
            .cmdline
            .push_str(&format!(" agentvm.ssh_agent={}", ssh_agent::SSH_AGENT_PORT));
        Ok(Some((relay, listen)))
    }

    /// The VM these options describe: `kernel` with the network `policy`
    /// (`None`: no network), virtiofsd's sockets in `state_dir`.
    fn vm_config(
        &self,
        kernel: KernelChoice,
        policy: Option<Policy>,
        state_dir: &Path,
        intercept: Option<agentvm_net::intercept::InterceptConfig>,
    ) -> anyhow::Result<VmConfig> {
        let mut config = VmConfig::new(kernel.kernel);
        config.initrd = kernel.initrd;
        config.cmdline = kernel.cmdline;
        config.memory_mib = self.memory;
        config.vcpus = self.vcpus;
        config.pit = match self.pit {
            PitMode::Auto => None,
            PitMode::On => Some(true),
            PitMode::Off => Some(false),
        };
        config.seccomp = self.seccomp;
        config.serial = match &self.serial {
            Some(path) => SerialSink::File(path.clone()),
            None => SerialSink::Stdout,
        };
        config.state_dir = Some(state_dir.to_owned());
        config.shares = self.share.clone();
        // An image with a root file system: the guest boots into it.
        if self.kernel.is_none() {
            if let Ok(image) = crate::image::load(self.image.as_deref()) {
                if image.has_rootfs {
                    config.shares.push(crate::share::root_image(image.dir));
                }
            }
        }
        config.virtiofsd.allow_unsandboxed = self.allow_unsandboxed_virtiofsd;
        config.vsock = self.vsock.clone().map(|uds| {
            let mut vsock = VsockConfig::new(uds);
            vsock.cid = self.cid.unwrap_or(vsock.cid);
            vsock
        });
        config.rng = !self.no_rng;
        config.balloon = (!self.no_balloon).then_some(BalloonConfig {
            target_mib: self.balloon,
        });
        if let Some(policy) = policy {
            if let Some(intercept) = &intercept {
                eprintln!("agentvm: {}", crate::secrets::intercept_line(intercept));
            }
            config.net = Some(StackConfig {
                policy,
                audit: self.net.audit()?,
                intercept,
                ..StackConfig::default()
            });
        }
        config.landlock = Landlock::FromConfig;
        Ok(config)
    }
}

/// Makes a system call no filter of the main thread allows: under
/// `--seccomp kill` the VMM ends here, naming it.
fn seccomp_selftest() {
    let parent = nix::unistd::getppid();
    eprintln!("agentvm: seccomp self-test: getppid returned {parent}");
}

/// What a VMM process (`boot`, `__vmm`) does before anything else: closes
/// the descriptors it inherited, caps malloc's arenas, sets
/// `no_new_privs` before any thread exists (so every thread has it) and
/// switches core dumps off. See [`agentvm_vmm::hygiene`] and
/// [`agentvm_vmm::footprint`].
pub fn harden_vmm_process() -> anyhow::Result<()> {
    use agentvm_vmm::hygiene;
    hygiene::close_inherited_fds().context("cannot close inherited file descriptors")?;
    agentvm_vmm::footprint::limit_malloc_arenas();
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
                     the guest image at {} has a stock kernel: {}",
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
    use agentvm_vmm::ExitStatus;

    use super::{exit_code, EXIT_GUEST_CRASHED};

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
}
