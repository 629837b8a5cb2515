//! Scenarios as plain data (a list of VMM boots), the command lines they
//! turn into, and the parsed results: markers are lines `RIG-<SRC> key=value`
//! where SRC is `L1` (the L1 init), `VMM` (the timed runner around each
//! boot), `L2` (the rig's L2 init) or `EXEC` (a boot's script, which drives
//! the guest agent from outside the guest).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::stamp::VmmExit;

/// Which VMM boots the L2 guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// The static agentvm binary.
    Agentvm,
    /// `qemu-system-x86_64 -M microvm,acpi=on -enable-kvm -cpu host`.
    QemuMicrovm,
    /// Firecracker (`--no-api --config-file`), a benchmark peer the scenario
    /// carries on its disk. It has no ACPI power-off: its guests end with a
    /// reset (`rig.halt=reboot`), on which it exits.
    Firecracker,
    /// cloud-hypervisor, a benchmark peer the scenario carries on its disk.
    CloudHypervisor,
}

impl Vmm {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Agentvm => "agentvm",
            Vmm::QemuMicrovm => "qemu",
            Vmm::Firecracker => "firecracker",
            Vmm::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

/// Which kernel file the VMM is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// The ELF vmlinux (entered through its PVH note).
    Vmlinux,
    /// The Debian bzImage.
    BzImage,
}

/// What runs in L2: the rig's init (`rdinit=/rig/init`, `rig.mode=` on
/// the kernel command line picks what it does), or the image's own init,
/// the guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// Load the modules, report what the guest sees, power off.
    Report,
    /// Load the modules, then exit so the kernel panics.
    Panic,
    /// Power off right after the first line (boot-time benchmark).
    Bench,
    /// The default image as it is (`agentvm boot --image`, its own command
    /// line) with a vsock device; the boot's script talks to the agent.
    Agent,
}

impl GuestMode {
    fn word(self) -> &'static str {
        match self {
            GuestMode::Report => "report",
            GuestMode::Panic => "panic",
            GuestMode::Bench => "bench",
            GuestMode::Agent => "agent",
        }
    }
}

/// One L2 boot.
#[derive(Debug, Clone, PartialEq)]
pub struct Boot {
    /// Unique name within the scenario (letters, digits, `-`, `_`).
    pub name: String,
    /// The VMM.
    pub vmm: Vmm,
    /// The kernel file.
    pub kernel: KernelFormat,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// What the L2 init does.
    pub mode: GuestMode,
    /// Leave out `quiet`, so the whole kernel log goes to the console,
    /// each line with its time (`printk.time=1`).
    pub verbose: bool,
    /// Appended to the kernel command line (an agent boot, which otherwise
    /// uses its image's command line as it is, then gets the images'
    /// default command line with this after it).
    pub extra_cmdline: String,
    /// Kill the VMM after this long.
    pub timeout: Duration,
    /// A shell script run beside the VMM (in L1, or on the host in the
    /// direct tier) once the guest's first line appeared, with `AGENTVM`,
    /// `UDS` (the VM's vsock socket), `RIG_STAMP`, `RIG_VSOCK`,
    /// `DBCLIENT` and `SSH_KEY` set. It prints `RIG-EXEC key=value`
    /// markers and should power the guest off when done.
    pub script: Option<String>,
    /// Carry the SSH peer (dropbear in L2, dbclient in L1).
    pub ssh: bool,
    /// More `agentvm boot` arguments (agentvm boots only).
    pub extra_args: Vec<String>,
    /// Shell lines run beside the VMM (in L1, or on the host in the direct
    /// tier) before it starts: files a share needs, say.
    pub setup: Option<String>,
    /// The script starts VMs with shares of its own (L1 carries virtiofsd).
    pub virtiofsd: bool,
    /// The script drives a terminal with tmux (L1 carries it; on the host
    /// it must be installed).
    pub tmux: bool,
    /// Boot agentvm's own kernel ([`BootPaths::own_image_dir`]) rather than
    /// Debian's.
    pub own_kernel: bool,
    /// The guest gets a serial port and nothing else, as Firecracker and
    /// cloud-hypervisor give it (the latter's PCI devices hidden by
    /// `pci=off`): agentvm without its default virtio-rng and
    /// virtio-balloon, QEMU without the virtio-rng it otherwise gets.
    pub serial_only: bool,
}

/// The kernel command line every L2 boot starts from (agentvm's default
/// plus `quiet`).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

impl Boot {
    /// An agentvm boot in report mode: 1 vCPU, 512 MiB, 120 s timeout.
    pub fn agentvm(name: &str, kernel: KernelFormat) -> Self {
        Boot {
            name: name.to_string(),
            vmm: Vmm::Agentvm,
            kernel,
            vcpus: 1,
            memory_mib: 512,
            mode: GuestMode::Report,
            verbose: false,
            extra_cmdline: String::new(),
            timeout: Duration::from_secs(120),
            script: None,
            ssh: false,
            extra_args: Vec::new(),
            setup: None,
            virtiofsd: false,
            tmux: false,
            own_kernel: false,
            serial_only: false,
        }
    }

    /// An agentvm boot of the default image with vsock, running `script`
    /// once the agent is ready: 1 vCPU, 512 MiB, 300 s timeout.
    pub fn agent(name: &str, script: &str) -> Self {
        Boot {
            mode: GuestMode::Agent,
            script: Some(script.to_string()),
            timeout: Duration::from_secs(300),
            ..Boot::agentvm(name, KernelFormat::Vmlinux)
        }
    }

    /// The console line that counts as "the guest is up": the rig init's
    /// first line, or the agent's ready line.
    pub fn first_line(&self) -> &'static str {
        match self.mode {
            GuestMode::Agent => AGENT_READY,
            _ => FIRST_LINE,
        }
    }

    /// The vsock socket path of this boot, under `dir`.
    pub fn vsock_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.vsock", self.name))
    }

    /// The script file's text: the variables, then the script.
    pub fn script_text(&self, p: &BootPaths) -> Option<String> {
        let body = self.script.as_deref()?;
        let s = |p: &Path| shell_quote(&p.to_string_lossy());
        Some(format!(
            "AGENTVM={}\nUDS={}\nRIG_STAMP={}\nRIG_VSOCK={}\nDBCLIENT={}\nSSH_KEY={}\n\
             export AGENTVM UDS RIG_STAMP RIG_VSOCK DBCLIENT SSH_KEY\n{body}\n",
            s(&p.agentvm),
            s(&self.vsock_path(&p.sock_dir)),
            s(&p.stamp),
            s(&p.vsock_helper),
            s(&p.dbclient),
            s(&p.ssh_key),
        ))
    }

    /// The same boot under QEMU microvm.
    pub fn qemu(name: &str, kernel: KernelFormat) -> Self {
        Boot {
            vmm: Vmm::QemuMicrovm,
            ..Boot::agentvm(name, kernel)
        }
    }

    /// The same boot under another VMM.
    pub fn under(mut self, vmm: Vmm) -> Self {
        self.vmm = vmm;
        self
    }

    /// Boots agentvm's own kernel.
    pub fn own_kernel(mut self) -> Self {
        self.own_kernel = true;
        self
    }

    /// Sets the vCPU count.
    pub fn vcpus(mut self, n: u8) -> Self {
        self.vcpus = n;
        self
    }

    /// Carries virtiofsd for VMs the script starts itself.
    pub fn with_virtiofsd(mut self) -> Self {
        self.virtiofsd = true;
        self
    }

    /// Has tmux beside the VMM for the script.
    pub fn with_tmux(mut self) -> Self {
        self.tmux = true;
        self
    }

    /// Sets the shell lines run before the VMM starts.
    pub fn setup(mut self, script: &str) -> Self {
        self.setup = Some(script.to_string());
        self
    }

    /// Adds `agentvm boot` arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets the memory size.
    pub fn memory_mib(mut self, m: u32) -> Self {
        self.memory_mib = m;
        self
    }

    /// Sets the guest mode.
    pub fn mode(mut self, m: GuestMode) -> Self {
        self.mode = m;
        self
    }

    /// The full kernel command line of a rig init boot.
    pub fn cmdline(&self) -> String {
        let mut c = BASE_CMDLINE.to_string();
        c.push_str(if self.verbose {
            " printk.time=1"
        } else {
            " quiet"
        });
        c.push_str(" rdinit=");
        c.push_str(RIG_INIT);
        c.push_str(" rig.mode=");
        c.push_str(self.mode.word());
        if self.vmm == Vmm::Firecracker {
            c.push_str(" rig.halt=reboot");
        }
        if !self.extra_cmdline.is_empty() {
            c.push(' ');
            c.push_str(&self.extra_cmdline);
        }
        c
    }

    /// Firecracker's configuration file for this boot, under `dir`.
    pub fn firecracker_config_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.firecracker.json", self.name))
    }

    /// Files the VMM reads that the rig writes first: `(path, text)`
    /// (Firecracker's configuration).
    pub fn vmm_files(&self, p: &BootPaths) -> Vec<(PathBuf, String)> {
        if self.vmm != Vmm::Firecracker {
            return Vec::new();
        }
        let json = |s: &str| {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        };
        let text = format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {}, \"initrd_path\": {}, \
             \"boot_args\": {}}}, \"drives\": [], \"machine-config\": {{\"vcpu_count\": {}, \
             \"mem_size_mib\": {}}}}}\n",
            json(&self.kernel_path(p).to_string_lossy()),
            json(&p.initrd.to_string_lossy()),
            json(&self.cmdline()),
            self.vcpus,
            self.memory_mib
        );
        vec![(self.firecracker_config_path(&p.sock_dir), text)]
    }

    /// The kernel file this boot is given.
    fn kernel_path(&self, p: &BootPaths) -> PathBuf {
        use agentvm_image::files;
        match (self.own_kernel, self.kernel) {
            (false, KernelFormat::Vmlinux) => p.vmlinux.clone(),
            (false, KernelFormat::BzImage) => p.bzimage.clone(),
            (true, KernelFormat::Vmlinux) => p.own_image_dir.join(files::VMLINUX),
            (true, KernelFormat::BzImage) => p.own_image_dir.join(files::BZIMAGE),
        }
    }

    /// Program and arguments for this boot, given where things are.
    pub fn command(&self, p: &BootPaths) -> (PathBuf, Vec<String>) {
        let kernel = &self.kernel_path(p);
        let s = |p: &Path| p.to_string_lossy().to_string();
        match self.vmm {
            Vmm::Agentvm => {
                let agent = self.mode == GuestMode::Agent;
                let mut args: Vec<String> = vec!["boot".into()];
                if agent {
                    // The image as it is: its kernel and command line.
                    let image = if self.own_kernel {
                        &p.own_image_dir
                    } else {
                        &p.image_dir
                    };
                    args.extend(["--image".into(), s(image)]);
                } else {
                    args.extend([
                        "--kernel".into(),
                        s(kernel),
                        "--initrd".into(),
                        s(&p.initrd),
                    ]);
                }
                if agent {
                    if !self.extra_cmdline.is_empty() {
                        // The image's command line, and more.
                        let cmdline =
                            format!("{} {}", agentvm_image::DEFAULT_CMDLINE, self.extra_cmdline);
                        args.extend(["--cmdline".into(), cmdline]);
                    }
                    args.extend(["--vsock".into(), s(&self.vsock_path(&p.sock_dir))]);
                }
                args.extend([
                    "--memory".into(),
                    self.memory_mib.to_string(),
                    "--vcpus".into(),
                    self.vcpus.to_string(),
                ]);
                if !agent {
                    args.extend(["--cmdline".into(), self.cmdline()]);
                }
                if self.serial_only {
                    args.extend(["--no-rng".into(), "--no-balloon".into()]);
                }
                args.extend(self.extra_args.iter().cloned());
                (p.agentvm.clone(), args)
            }
            Vmm::QemuMicrovm => {
                let mut args: Vec<String> = Vec::new();
                if let Some(dir) = &p.qemu_datadir {
                    args.extend(["-L".into(), s(dir)]);
                }
                let rest = [
                    "-M",
                    "microvm,acpi=on",
                    "-enable-kvm",
                    "-cpu",
                    "host",
                    "-nodefaults",
                    "-no-user-config",
                    "-display",
                    "none",
                    "-serial",
                    "stdio",
                    "-no-reboot",
                    // Threads by name (`CPU 0/KVM`), for the CPU by thread.
                    "-name",
                    "debug-threads=on",
                ];
                args.extend(rest.iter().map(|a| a.to_string()));
                if !self.serial_only {
                    args.extend(["-device".into(), "virtio-rng-device".into()]);
                }
                args.extend([
                    "-m".into(),
                    self.memory_mib.to_string(),
                    "-smp".into(),
                    self.vcpus.to_string(),
                    "-kernel".into(),
                    s(kernel),
                    "-initrd".into(),
                    s(&p.initrd),
                    "-append".into(),
                    self.cmdline(),
                ]);
                (p.qemu.clone(), args)
            }
            Vmm::Firecracker => {
                let config = self.firecracker_config_path(&p.sock_dir);
                let args = ["--no-api".into(), "--config-file".into(), s(&config)];
                (p.firecracker.clone(), args.into())
            }
            Vmm::CloudHypervisor => {
                let args = [
                    "--kernel".into(),
                    s(kernel),
                    "--initramfs".into(),
                    s(&p.initrd),
                    "--cmdline".into(),
                    self.cmdline(),
                    "--cpus".into(),
                    format!("boot={}", self.vcpus),
                    "--memory".into(),
                    format!("size={}M", self.memory_mib),
                    "--serial".into(),
                    "tty".into(),
                    "--console".into(),
                    "off".into(),
                ];
                (p.cloud_hypervisor.clone(), args.into())
            }
        }
    }
}

/// Where the VMMs, helpers and L2 files are (inside L1, or on the host).
#[derive(Debug, Clone)]
pub struct BootPaths {
    /// agentvm.
    pub agentvm: PathBuf,
    /// rig-stamp.
    pub stamp: PathBuf,
    /// rig-vsock.
    pub vsock_helper: PathBuf,
    /// dbclient.
    pub dbclient: PathBuf,
    /// The SSH client key.
    pub ssh_key: PathBuf,
    /// Where vsock sockets go.
    pub sock_dir: PathBuf,
    /// The L2 image directory (`vmlinux`, `initrd.img`, `cmdline`).
    pub image_dir: PathBuf,
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// QEMU's `-L` directory, if not the default.
    pub qemu_datadir: Option<PathBuf>,
    /// L2 vmlinux.
    pub vmlinux: PathBuf,
    /// L2 bzImage.
    pub bzimage: PathBuf,
    /// L2 initramfs.
    pub initrd: PathBuf,
    /// The default image with agentvm's own kernel
    /// ([`crate::peers::own_image`]; on the scenario's disk in L1): an image
    /// directory with `vmlinux`, `bzImage`, `initrd.img` and `cmdline`.
    pub own_image_dir: PathBuf,
    /// Firecracker (a benchmark peer, on the scenario's disk in L1).
    pub firecracker: PathBuf,
    /// cloud-hypervisor (a benchmark peer, on the scenario's disk in L1).
    pub cloud_hypervisor: PathBuf,
}

impl BootPaths {
    /// The paths inside the rig's L1 image.
    pub fn in_l1() -> Self {
        use crate::image::{l1_paths as p, QEMU_DATADIR};
        use agentvm_image::files;
        let l2 = Path::new(p::L2_DIR);
        BootPaths {
            agentvm: p::AGENTVM.into(),
            stamp: p::STAMP.into(),
            vsock_helper: p::VSOCK_HELPER.into(),
            dbclient: p::DBCLIENT.into(),
            ssh_key: p::SSH_KEY.into(),
            sock_dir: p::SOCK_DIR.into(),
            image_dir: l2.into(),
            qemu: p::QEMU.into(),
            qemu_datadir: Some(QEMU_DATADIR.into()),
            vmlinux: l2.join(files::VMLINUX),
            bzimage: l2.join(files::BZIMAGE),
            initrd: l2.join(files::INITRD),
            own_image_dir: Path::new(p::DISK_DIR).join(OWN_KERNEL_DIR),
            firecracker: "/usr/bin/firecracker".into(),
            cloud_hypervisor: "/usr/bin/cloud-hypervisor".into(),
        }
    }
}

/// A scenario: boots run one after the other (inside one L1 in the nested
/// tier).
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name (used for the run directory).
    pub name: String,
    /// The boots.
    pub boots: Vec<Boot>,
    /// A read-only disk image for L1 (`/dev/vda`, e.g. from
    /// [`crate::image::disk_image`]), for payloads too large for L1's
    /// initramfs.
    pub disk: Option<PathBuf>,
}

impl Scenario {
    /// A scenario with these boots.
    pub fn new(name: &str, boots: Vec<Boot>) -> Self {
        Scenario {
            name: name.to_string(),
            boots,
            disk: None,
        }
    }

    /// With a read-only disk for L1 (nested tier only: the direct tier has
    /// no L1 to attach it to, and reads the files where they are).
    pub fn with_disk(mut self, image: PathBuf) -> Self {
        self.disk = Some(image);
        self
    }

    /// Whether any boot uses agentvm's own kernel (the scenario's disk then
    /// carries it, under [`OWN_KERNEL_DIR`]).
    pub fn needs_own_kernel(&self) -> bool {
        self.boots.iter().any(|b| b.own_kernel)
    }

    /// Whether any boot uses QEMU (the L1 image then carries it).
    pub fn needs_qemu(&self) -> bool {
        self.boots.iter().any(|b| b.vmm == Vmm::QemuMicrovm)
    }

    /// Whether any boot shares a directory (L1 then carries virtiofsd).
    pub fn needs_virtiofsd(&self) -> bool {
        self.boots
            .iter()
            .any(|b| b.virtiofsd || b.extra_args.iter().any(|a| a == "--share"))
    }

    /// Whether any boot's script uses tmux.
    pub fn needs_tmux(&self) -> bool {
        self.boots.iter().any(|b| b.tmux)
    }

    /// Whether any boot needs the SSH peer.
    pub fn needs_ssh(&self) -> bool {
        self.boots.iter().any(|b| b.ssh)
    }

    /// The most vCPUs any boot asks for (at least 1).
    pub fn max_vcpus(&self) -> u8 {
        self.boots.iter().map(|b| b.vcpus).max().unwrap_or(1).max(1)
    }

    /// The L1 shell script: one `rig-stamp` run per boot, each boot's own
    /// script written to a file first.
    pub fn l1_script(&self, paths: &BootPaths) -> String {
        let mut s = String::from("# generated by agentvm-rig\n");
        for b in &self.boots {
            if let Some(setup) = &b.setup {
                s.push_str(setup);
                s.push('\n');
            }
            for (path, text) in b.vmm_files(paths) {
                s.push_str(&format!(
                    "cat > {} <<'RIG_VMM_FILE_END'\n{text}RIG_VMM_FILE_END\n",
                    shell_quote(&path.to_string_lossy())
                ));
            }
            let (prog, args) = b.command(paths);
            let mut line = vec![
                paths.stamp.to_string_lossy().to_string(),
                "--name".into(),
                b.name.clone(),
                "--timeout".into(),
                b.timeout.as_secs().to_string(),
                "--first-line".into(),
                b.first_line().into(),
                "--guest-mib".into(),
                b.memory_mib.to_string(),
            ];
            if let Some(text) = b.script_text(paths) {
                let file = paths.sock_dir.join(format!("{}.sh", b.name));
                let file = file.to_string_lossy().to_string();
                s.push_str(&format!(
                    "cat > {} <<'RIG_SCRIPT_END'\n{text}RIG_SCRIPT_END\n",
                    shell_quote(&file)
                ));
                line.extend(["--then".into(), file]);
            }
            line.extend(["--".into(), prog.to_string_lossy().to_string()]);
            line.extend(args);
            let quoted: Vec<String> = line.iter().map(|a| shell_quote(a)).collect();
            s.push_str(&quoted.join(" "));
            s.push('\n');
        }
        s
    }
}

/// Where a scenario's disk holds agentvm's own kernel (`vmlinux`,
/// `bzImage`).
pub const OWN_KERNEL_DIR: &str = "own-kernel";

/// The first line of the L2 init.
pub const FIRST_LINE: &str = "RIG-L2 init=start";
/// The guest agent's line once it serves exec.
pub const AGENT_READY: &str = "agentvm-guest: ready";
/// The rig's init inside L2.
pub use crate::image::RIG_INIT;

/// Single-quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A `RIG-<source> key=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// `L1`, `VMM` or `L2`.
    pub source: String,
    /// The key.
    pub key: String,
    /// Everything after the first `=` (may contain spaces).
    pub value: String,
}

/// Finds a marker anywhere in `line` (kernel messages may precede it).
pub fn parse_marker(line: &str) -> Option<Marker> {
    let at = line.find("RIG-")?;
    let rest = &line[at + 4..];
    let (source, kv) = rest.split_once(' ')?;
    if source.is_empty() || !source.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let (key, value) = kv.split_once('=')?;
    if key.is_empty() || key.contains(' ') {
        return None;
    }
    Some(Marker {
        source: source.to_string(),
        key: key.to_string(),
        value: value.trim_end().to_string(),
    })
}

/// The result of one boot.
#[derive(Debug, Clone, PartialEq)]
pub struct BootResult {
    /// The boot's name.
    pub name: String,
    /// How the VMM ended.
    pub exit: VmmExit,
    /// VMM start → the L2 init's first line.
    pub first_line: Option<Duration>,
    /// VMM start → VMM exit.
    pub exit_after: Duration,
    /// VMM start → its first line of output.
    pub first_output: Option<Duration>,
    /// The VMM's resident memory outside guest RAM at the first line, KiB.
    pub vmm_rss_kib: Option<u64>,
    /// The CPU each VMM thread had used at the first line: `(name, ms)`.
    pub vmm_threads_cpu: Vec<(String, u64)>,
    /// `RIG-L2` markers in order.
    pub markers: Vec<(String, String)>,
    /// `RIG-EXEC` markers (the boot's script) in order.
    pub exec: Vec<(String, String)>,
    /// How the boot's script ended, if one ran.
    pub script_exit: Option<VmmExit>,
    /// Every console line of the boot (L2 console and VMM messages).
    pub console: Vec<String>,
}

impl BootResult {
    /// The CPU the VMM's threads other than its vCPUs had used at the
    /// first line, ms (vCPU threads are `vcpuN` in agentvm and
    /// cloud-hypervisor, `fc_vcpu N` in Firecracker, `CPU N/KVM` in QEMU).
    pub fn vmm_cpu_beside_vcpus_ms(&self) -> Option<u64> {
        let is_vcpu = |name: &str| {
            name.to_ascii_lowercase().contains("vcpu")
                || (name.starts_with("CPU") && name.ends_with("/KVM"))
        };
        (!self.vmm_threads_cpu.is_empty()).then(|| {
            self.vmm_threads_cpu
                .iter()
                .filter(|(name, _)| !is_vcpu(name))
                .map(|(_, ms)| ms)
                .sum()
        })
    }

    /// The first value of the L2 marker `key`.
    pub fn marker(&self, key: &str) -> Option<&str> {
        self.markers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of the script's marker `key`.
    pub fn exec_marker(&self, key: &str) -> Option<&str> {
        self.exec
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the L2 marker `key`.
    pub fn markers_named<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.markers
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The L2 marker `key` parsed as a number.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.marker(key)?.trim().parse().ok()
    }

    /// Whether some console line contains `text`.
    pub fn console_contains(&self, text: &str) -> bool {
        self.console.iter().any(|l| l.contains(text))
    }

    /// The VMM's exit code, if it exited normally.
    pub fn exit_code(&self) -> Option<i32> {
        match self.exit {
            VmmExit::Code(c) => Some(c),
            _ => None,
        }
    }

    /// The last `n` console lines, for failure messages.
    pub fn console_tail(&self, n: usize) -> String {
        let start = self.console.len().saturating_sub(n);
        self.console[start..].join("\n")
    }
}

/// How a scenario was run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// T4: straight on the host's hardware KVM.
    Direct,
    /// T3: inside an L1 guest under QEMU TCG with SVM.
    Nested,
}

/// The parsed outcome of a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub name: String,
    /// Direct or nested.
    pub tier: Tier,
    /// The full console log (kept).
    pub log_path: PathBuf,
    /// Wall time of the whole run (L1 boot included).
    pub elapsed: Duration,
    /// Host time from QEMU start until L1 was ready to run the scenario.
    pub l1_ready: Option<Duration>,
    /// `RIG-L1` markers.
    pub l1_markers: Vec<(String, String)>,
    /// One entry per completed boot, in order.
    pub boots: Vec<BootResult>,
}

impl ScenarioResult {
    /// The boot called `name`.
    pub fn boot(&self, name: &str) -> Option<&BootResult> {
        self.boots.iter().find(|b| b.name == name)
    }

    /// What a failed assertion about `boot` should show: where the whole
    /// log is, and the end of the boot's console.
    pub fn context(&self, boot: &BootResult) -> String {
        format!(
            "log {}; console tail:\n{}",
            self.log_path.display(),
            boot.console_tail(40)
        )
    }

    /// The first value of the L1 marker `key`.
    pub fn l1_marker(&self, key: &str) -> Option<&str> {
        self.l1_markers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a console log into L1 markers and per-boot results.
pub fn parse_log(log: &str) -> (Vec<(String, String)>, Vec<BootResult>) {
    let mut l1 = Vec::new();
    let mut boots = Vec::new();
    let mut cur: Option<BootResult> = None;
    for raw in log.lines() {
        let line = raw.replace('\r', "");
        let marker = parse_marker(&line);
        match (&marker, cur.as_mut()) {
            (Some(m), _) if m.source == "L1" => l1.push((m.key.clone(), m.value.clone())),
            (Some(m), _) if m.source == "VMM" && m.key == "begin" => {
                cur = Some(BootResult {
                    name: m.value.clone(),
                    exit: VmmExit::TimedOut,
                    first_line: None,
                    exit_after: Duration::ZERO,
                    first_output: None,
                    vmm_rss_kib: None,
                    vmm_threads_cpu: Vec::new(),
                    markers: Vec::new(),
                    exec: Vec::new(),
                    script_exit: None,
                    console: Vec::new(),
                });
            }
            (Some(m), Some(b)) if m.source == "VMM" => match m.key.as_str() {
                "exit" => b.exit = VmmExit::from_marker(&m.value).unwrap_or(VmmExit::Code(-1)),
                "first_line_ms" => {
                    b.first_line = m
                        .value
                        .parse::<f64>()
                        .ok()
                        .map(|v| Duration::from_secs_f64(v / 1e3))
                }
                "exit_ms" => {
                    b.exit_after = m
                        .value
                        .parse::<f64>()
                        .map(|v| Duration::from_secs_f64(v / 1e3))
                        .unwrap_or_default()
                }
                "first_output_ms" => {
                    b.first_output = m
                        .value
                        .parse::<f64>()
                        .ok()
                        .map(|v| Duration::from_secs_f64(v / 1e3))
                }
                "vmm_rss_kib" => b.vmm_rss_kib = m.value.parse().ok(),
                "threads_cpu_ms" => {
                    b.vmm_threads_cpu = m
                        .value
                        .split(',')
                        .filter_map(|t| {
                            let (name, ms) = t.rsplit_once(':')?;
                            Some((name.to_string(), ms.parse().ok()?))
                        })
                        .collect()
                }
                "script_exit" => b.script_exit = VmmExit::from_marker(&m.value),
                "end" => boots.extend(cur.take()),
                "error" => {
                    b.exit = VmmExit::Code(-1);
                    b.console.push(line);
                }
                _ => {}
            },
            (_, Some(b)) => {
                match &marker {
                    Some(m) if m.source == "L2" => b.markers.push((m.key.clone(), m.value.clone())),
                    Some(m) if m.source == "EXEC" => b.exec.push((m.key.clone(), m.value.clone())),
                    _ => {}
                }
                b.console.push(line);
            }
            _ => {}
        }
    }
    (l1, boots)
}

/// A boot's script markers, with what a failed assertion about them should
/// show (the scenario's context for the boot).
pub struct Markers<'a> {
    /// The boot whose markers these are.
    pub boot: &'a BootResult,
    /// [`ScenarioResult::context`] of the boot.
    pub ctx: String,
}

impl<'a> Markers<'a> {
    /// The markers of `boot` in `result`.
    pub fn new(result: &ScenarioResult, boot: &'a BootResult) -> Markers<'a> {
        Markers {
            boot,
            ctx: result.context(boot),
        }
    }

    /// The marker `key`'s value, `<missing>` when the script never printed it.
    pub fn m(&self, key: &str) -> &'a str {
        self.boot.exec_marker(key).unwrap_or("<missing>")
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn paths() -> BootPaths {
        BootPaths::in_l1()
    }

    #[test]
    fn markers() {
        let m = parse_marker("[    6.1] foo RIG-L2 acpi_msg=ACPI Error: x = y\r").unwrap();
        assert_eq!(
            (m.source.as_str(), m.key.as_str(), m.value.as_str()),
            ("L2", "acpi_msg", "ACPI Error: x = y")
        );
        assert_eq!(parse_marker("RIG-L2 init=start").unwrap().value, "start");
        assert!(parse_marker("no marker").is_none());
        assert!(parse_marker("RIG-L2 not a marker").is_none());
    }

    #[test]
    fn commands_and_script() {
        let b = Boot::agentvm("pvh-2", KernelFormat::Vmlinux)
            .vcpus(2)
            .memory_mib(768);
        let (prog, args) = b.command(&paths());
        assert_eq!(prog, Path::new("/bin/agentvm"));
        assert_eq!(args[..3], ["boot", "--kernel", "/l2/vmlinux"]);
        assert!(args.windows(2).any(|w| w == ["--vcpus", "2"]));
        assert!(args.windows(2).any(|w| w == ["--memory", "768"]));
        assert_eq!(
            args.last().unwrap(),
            "console=ttyS0 reboot=k panic=1 pci=off quiet rdinit=/rig/init rig.mode=report"
        );
        assert!(!args.iter().any(|a| a == "--no-rng" || a == "--no-balloon"));
        let q = Boot::qemu("q", KernelFormat::BzImage).mode(GuestMode::Bench);
        let (prog, args) = q.command(&paths());
        assert_eq!(prog, Path::new("/bin/qemu-system-x86_64"));
        assert!(args.windows(2).any(|w| w == ["-kernel", "/l2/bzImage"]));
        assert!(args.windows(2).any(|w| w == ["-M", "microvm,acpi=on"]));
        assert!(args
            .windows(2)
            .any(|w| w == ["-device", "virtio-rng-device"]));
        // Serial only: neither adds a device.
        let mut bare = Boot::agentvm("bare", KernelFormat::Vmlinux);
        bare.serial_only = true;
        let (_, args) = bare.command(&paths());
        assert!(args.windows(2).any(|w| w == ["--no-rng", "--no-balloon"]));
        let (_, args) = bare.under(Vmm::QemuMicrovm).command(&paths());
        assert!(!args.iter().any(|a| a == "-device"), "{args:?}");
        let a = Boot::agent("exec", "echo \"RIG-EXEC x=$UDS\"");
        let (_, args) = a.command(&paths());
        assert_eq!(
            args,
            [
                "boot",
                "--image",
                "/l2",
                "--vsock",
                "/tmp/exec.vsock",
                "--memory",
                "512",
                "--vcpus",
                "1"
            ]
        );
        let s = Scenario::new("s", vec![b, q, a]);
        assert!(s.needs_qemu());
        assert!(!s.needs_ssh());
        assert!(!s.needs_tmux());
        assert!(Scenario::new("t", vec![Boot::agent("t", "").with_tmux()]).needs_tmux());
        assert_eq!(s.max_vcpus(), 2);
        let script = s.l1_script(&paths());
        assert!(script.contains("/bin/rig-stamp --name pvh-2 --timeout 120 --first-line 'RIG-L2 init=start' --guest-mib 768 -- /bin/agentvm boot"));
        assert!(script.contains(
            "'console=ttyS0 reboot=k panic=1 pci=off quiet rdinit=/rig/init rig.mode=bench'"
        ));
        assert!(script.contains(
            "cat > /tmp/exec.sh <<'RIG_SCRIPT_END'\nAGENTVM=/bin/agentvm\nUDS=/tmp/exec.vsock\n"
        ));
        assert!(script.contains("echo \"RIG-EXEC x=$UDS\"\nRIG_SCRIPT_END\n"));
        assert!(script.contains(
            "--first-line 'agentvm-guest: ready' --guest-mib 512 --then /tmp/exec.sh -- /bin/agentvm boot --image /l2"
        ));
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn peers_and_the_own_kernel() {
        let fc = Boot::agentvm("fc", KernelFormat::Vmlinux)
            .under(Vmm::Firecracker)
            .own_kernel()
            .mode(GuestMode::Bench)
            .vcpus(2)
            .memory_mib(256);
        let (prog, args) = fc.command(&paths());
        assert_eq!(prog, Path::new("/usr/bin/firecracker"));
        assert_eq!(
            args,
            ["--no-api", "--config-file", "/tmp/fc.firecracker.json"]
        );
        assert!(fc.cmdline().ends_with("rig.mode=bench rig.halt=reboot"));
        let files = fc.vmm_files(&paths());
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, Path::new("/tmp/fc.firecracker.json"));
        let json = &files[0].1;
        assert!(
            json.contains("\"kernel_image_path\": \"/disk/own-kernel/vmlinux\""),
            "{json}"
        );
        assert!(
            json.contains("\"initrd_path\": \"/l2/initrd.img\""),
            "{json}"
        );
        assert!(
            json.contains("\"vcpu_count\": 2, \"mem_size_mib\": 256"),
            "{json}"
        );
        assert!(json.contains("rig.halt=reboot\"}"), "{json}");

        let ch = Boot::agentvm("ch", KernelFormat::Vmlinux)
            .under(Vmm::CloudHypervisor)
            .mode(GuestMode::Bench);
        let (prog, args) = ch.command(&paths());
        assert_eq!(prog, Path::new("/usr/bin/cloud-hypervisor"));
        assert!(args.windows(2).any(|w| w == ["--kernel", "/l2/vmlinux"]));
        assert!(args.windows(2).any(|w| w == ["--cpus", "boot=1"]));
        assert!(args.windows(2).any(|w| w == ["--memory", "size=512M"]));
        assert!(!ch.cmdline().contains("rig.halt"));
        assert!(ch.vmm_files(&paths()).is_empty());

        let mut oa = Boot::agent("oa", "").own_kernel();
        oa.extra_cmdline = "acpi=off".into();
        let (_, args) = oa.command(&paths());
        let cmdline = format!("{} acpi=off", agentvm_image::DEFAULT_CMDLINE);
        assert_eq!(
            args[..5],
            [
                "boot",
                "--image",
                "/disk/own-kernel",
                "--cmdline",
                cmdline.as_str()
            ]
        );
        assert!(args.windows(2).any(|w| w == ["--vsock", "/tmp/oa.vsock"]));
        assert!(!args.iter().any(|a| a == "--kernel" || a == "--initrd"));

        let s = Scenario::new("p", vec![fc, ch]);
        assert!(s.needs_own_kernel());
        let script = s.l1_script(&paths());
        assert!(
            script
                .contains("cat > /tmp/fc.firecracker.json <<'RIG_VMM_FILE_END'\n{\"boot-source\""),
            "{script}"
        );
        let written = script
            .find("RIG_VMM_FILE_END\n/bin/rig-stamp --name fc")
            .unwrap();
        assert!(written > 0);
    }

    #[test]
    fn first_output_and_memory_are_parsed() {
        let log = "RIG-VMM begin=a\nRIG-L2 init=start\nRIG-VMM exit=0\n\
                   RIG-VMM first_line_ms=900.0\nRIG-VMM exit_ms=1000.0\n\
                   RIG-VMM first_output_ms=120.5\nRIG-VMM vmm_rss_kib=5120\n\
                   RIG-VMM threads_cpu_ms=agentvm:120,vcpu0:900,fc_vcpu_0:5,CPU_0/KVM:7,console:3\n\
                   RIG-VMM end=a\nRIG-VMM begin=b\nRIG-VMM vmm_rss_kib=lots\nRIG-VMM end=b\n";
        let (_, boots) = parse_log(log);
        assert_eq!(boots[0].first_output, Some(Duration::from_micros(120_500)));
        assert_eq!(boots[0].vmm_rss_kib, Some(5120));
        assert_eq!(boots[0].vmm_threads_cpu.len(), 5);
        assert_eq!(boots[0].vmm_cpu_beside_vcpus_ms(), Some(123));
        assert_eq!(boots[1].vmm_cpu_beside_vcpus_ms(), None);
        assert_eq!((boots[1].first_output, boots[1].vmm_rss_kib), (None, None));
    }

    #[test]
    fn log_parsing() {
        let log = "SeaBIOS\r\nRIG-L1 up=1.5\nRIG-L1 kvm=1\nRIG-VMM begin=a\nRIG-L2 init=start\r\n\
                   [ 1.0] Kernel panic - not syncing: boom\nRIG-L2 cpus=2\nRIG-VMM exit=2\n\
                   RIG-VMM first_line_ms=1500.5\nRIG-VMM exit_ms=3000.0\nRIG-VMM end=a\n\
                   RIG-VMM begin=b\nRIG-VMM exit=timeout\nRIG-VMM first_line_ms=none\nRIG-VMM exit_ms=120000.0\n\
                   RIG-VMM end=b\nRIG-VMM begin=c\nRIG-L2 init=start\nRIG-L1 done=9.0\n\
                   RIG-VMM begin=d\nagentvm-guest: ready\nRIG-EXEC uname=6.1.0-56-cloud-amd64\n\
                   RIG-VMM exit=0\nRIG-VMM script_exit=0\nRIG-VMM end=d\n";
        let (l1, boots) = parse_log(log);
        assert_eq!(
            l1,
            [
                ("up".into(), "1.5".into()),
                ("kvm".into(), "1".into()),
                ("done".into(), "9.0".into())
            ]
        );
        assert_eq!(boots.len(), 3, "the unfinished boot c is not reported");
        assert_eq!(boots[2].exec_marker("uname"), Some("6.1.0-56-cloud-amd64"));
        assert!(boots[2].markers.is_empty());
        assert_eq!(boots[2].script_exit, Some(VmmExit::Code(0)));
        assert_eq!(boots[0].script_exit, None);
        let a = &boots[0];
        assert_eq!(a.exit_code(), Some(2));
        assert_eq!(a.first_line, Some(Duration::from_micros(1_500_500)));
        assert_eq!(a.exit_after, Duration::from_secs(3));
        assert_eq!(a.number("cpus"), Some(2.0));
        assert!(a.console_contains("Kernel panic"));
        assert_eq!(a.console.len(), 3);
        assert_eq!(boots[1].exit, VmmExit::TimedOut);
        assert_eq!(boots[1].first_line, None);
    }
}
