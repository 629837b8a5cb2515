//! The VM lifecycle: `up`, `down`, `status`/`ps`, `logs`, `run`, `shell`,
//! and the background VMM process (`__vmm`) they talk to.
//!
//! A VM is its workspace: its state directory is
//! `$XDG_RUNTIME_DIR/agentvm/<workspace id>/` (`/tmp/agentvm-$UID/<id>/`
//! without `XDG_RUNTIME_DIR`; the id is [`crate::paths::workspace_id`]), so
//! two checkouts with the same name have a VM each; the name is for
//! display. Commands find the VM from the workspace they run in, or by
//! `--name` when exactly one VM has that name. Before reading anything in
//! the state root or a VM's directory, every command checks that it is a
//! directory of the user's, mode 0700: in a shared `/tmp` another local
//! user could have made it first and planted hooks or sockets. It holds:
//! - `vmm.pid`: the VMM process (written by `up`, removed by the VMM as it
//!   exits);
//! - `control.sock`: the VMM's control socket, JSON lines ([`control`]);
//! - `vsock.sock`: the guest's vsock (hybrid form), where the agent serves;
//! - `console.log`: the guest's serial console and the VMM's own messages;
//! - `net-audit.jsonl`: the network stack's decisions, one JSON object per
//!   line (only when the VM has a network: mode `filtered` or `open`);
//! - `config.json`: what `up` resolved ([`Snapshot`]); never a secret, since
//!   `[env]` values go to the guest agent over vsock only and `[secrets]`
//!   values to the VMM process on its stdin (the guest gets placeholders);
//!   `[[files]]` by their digests (the content goes to the guest agent).
//!
//! `agentvm net` (allow, deny, show, log) acts on a running VM's network
//! ([`net`]).
//!
//! A VM is *running* when its VMM process lives and answers on the control
//! socket (in any protocol version: `down` stops one of another); *stale* when the pid file names a process that is gone (or no
//! longer answers); *stopped* when the VMM exited on its own (the guest
//! powered off). `up` cleans stale and stopped state before starting.

pub mod agent;
pub mod changes;
pub mod control;
pub mod down;
pub mod exec;
pub mod files;
pub mod git_guard;
pub mod huge_ram;
pub mod mount;
pub mod net;
pub mod reclaim;
pub mod rotated;
pub mod status;
pub mod timings;
pub mod up;
pub mod vmm;

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::config::ResolvedConfig;
pub use crate::paths::state_root;

/// The hidden subcommand `up` starts the VMM with.
pub const VMM_SUBCOMMAND: &str = "__vmm";

/// Fails unless `dir` is a directory (not a link to one) owned by this
/// user with no access for anyone else; `Ok(false)` when it does not exist.
pub fn check_private(dir: &Path) -> anyhow::Result<bool> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", dir.display())))
        }
    };
    let uid = nix::unistd::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid {
        bail!(
            "{} is not a directory of yours (owner uid {}), so agentvm will not use it: \
             another user may have made it to plant hooks or sockets; remove it, or set \
             XDG_RUNTIME_DIR to a private directory",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{} is open to other users (mode {:o}), so agentvm will not use it; \
             `chmod 700 {}` if you made it, else remove it",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        );
    }
    Ok(true)
}

/// Creates `dir` (0700) when missing, then [`check_private`]s it.
pub fn make_private(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    check_private(dir).map(|_| ())
}

/// Which VM a command acts on.
#[derive(Args, Debug, Clone, Default)]
pub struct Target {
    /// The workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The VM called NAME, when only one VM has that name (instead of the
    /// workspace's).
    #[arg(long, value_name = "NAME", conflicts_with = "dir")]
    pub name: Option<String>,
}

impl Target {
    /// The VM's state directory (checked; it need not exist).
    pub fn locate(&self) -> anyhow::Result<StateDir> {
        let root = state_root();
        check_private(&root)?;
        let state = match &self.name {
            Some(name) => by_name(&root, name)?,
            None => {
                let start = self.dir.as_deref().unwrap_or(Path::new("."));
                let start = std::fs::canonicalize(start)
                    .with_context(|| format!("cannot use the directory {}", start.display()))?;
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let ws = crate::config::find_workspace(&start, home.as_deref());
                StateDir::of_workspace(&ws.dir)
            }
        };
        check_private(&state.dir)?;
        Ok(state)
    }
}

/// The one VM under `root` called `name`.
fn by_name(root: &Path, name: &str) -> anyhow::Result<StateDir> {
    let mut found: Vec<(StateDir, Snapshot)> = Vec::new();
    for dir in vm_dirs(root)? {
        check_private(&dir)?;
        let state = StateDir { dir };
        if let Ok(snap) = state.read_snapshot() {
            if snap.name == name {
                found.push((state, snap));
            }
        }
    }
    let shown = crate::escape::line(name);
    match found.len() {
        0 => bail!("no VM is called {shown} (`agentvm status` lists them)"),
        1 => Ok(found.remove(0).0),
        n => bail!(
            "{n} VMs are called {shown}, for {}; say which with --dir",
            found
                .iter()
                .map(|(_, s)| crate::escape::line(&s.workspace.display().to_string()).into_owned())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

/// Every VM directory under `root` (none when it does not exist).
pub fn vm_dirs(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(root) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", root.display())))
        }
    };
    dirs.sort();
    Ok(dirs)
}

/// A VM's state directory and the files in it.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// The directory.
    pub dir: PathBuf,
}

impl StateDir {
    /// The state directory of the VM of `workspace` (canonical), unchecked.
    pub fn of_workspace(workspace: &Path) -> StateDir {
        StateDir {
            dir: state_root().join(crate::paths::workspace_id(workspace)),
        }
    }

    /// The VM's name for messages: its snapshot's, escaped (else the
    /// directory's).
    pub fn label(&self) -> String {
        self.read_snapshot()
            .map(|s| crate::escape::line(&s.name).into_owned())
            .unwrap_or_else(|_| self.name())
    }

    /// The VMM's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("vmm.pid")
    }

    /// The control socket.
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The vsock Unix socket.
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// The console log.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The network audit log (JSON lines).
    pub fn net_audit(&self) -> PathBuf {
        self.dir.join("net-audit.jsonl")
    }

    /// The resolved configuration snapshot.
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The directory's name (the workspace id).
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The pid in the pid file, if there is a readable one.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The VMM's pid when that process is alive and is this VM's VMM (a
    /// recycled pid belongs to someone else).
    pub fn live_vmm(&self) -> Option<i32> {
        self.pid().filter(|&pid| is_vmm_of(pid, &self.dir))
    }

    /// The configuration snapshot `up` wrote.
    pub fn read_snapshot(&self) -> anyhow::Result<Snapshot> {
        let path = self.snapshot();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    /// What the directory says about its VM.
    pub fn state(&self) -> VmState {
        match self.live_vmm() {
            Some(pid) if control::client::answers(&self.control()) => VmState::Running(pid),
            // Still building the VM: the control socket comes next.
            Some(pid) if !self.control().exists() => VmState::Starting(pid),
            // A socket nobody answers on.
            Some(pid) => VmState::Stale(Some(pid)),
            None if self.pid_file().exists() => VmState::Stale(None),
            None => VmState::Stopped,
        }
    }

    /// Removes the directory, first killing a VMM that no longer answers.
    pub fn clean(&self) -> anyhow::Result<()> {
        if let Some(pid) = self.live_vmm() {
            kill_and_wait(pid, std::time::Duration::from_secs(5));
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("cannot remove the state in {}", self.dir.display()))),
        }
    }
}

/// How a state directory's VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// The VMM answers.
    Running(i32),
    /// The VMM process lives and has not opened its control socket yet.
    Starting(i32),
    /// The pid file names a process that is gone or does not answer.
    Stale(Option<i32>),
    /// The VMM exited and cleaned up after itself.
    Stopped,
}

impl VmState {
    /// The word `status` prints.
    pub fn word(self) -> &'static str {
        match self {
            VmState::Running(_) => "running",
            VmState::Starting(_) => "starting",
            VmState::Stale(_) => "stale",
            VmState::Stopped => "stopped",
        }
    }
}

/// What `up` resolved, as `config.json` keeps it: everything the VMM needs
/// to build the VM and `down`/`status` need later. No secret values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The VM's name.
    pub name: String,
    /// The workspace directory.
    pub workspace: PathBuf,
    /// The kernel booted.
    pub kernel: PathBuf,
    /// The initial ramdisk, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line, before shares are added.
    pub cmdline: String,
    /// Guest memory limit, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Host directories shared with the guest.
    pub mounts: Vec<SnapshotMount>,
    /// Host files copied into the guest (`[[files]]`): paths, modes and
    /// digests, never the content.
    #[serde(default)]
    pub files: Vec<files::SnapshotFile>,
    /// The configured egress mode (`off`, `filtered`, `open`); the running
    /// VM's may since have changed (the control socket's `status` says).
    pub network_mode: String,
    /// The egress policy the VM starts with: no network device in mode
    /// `off` (also for a snapshot from before policies were kept).
    #[serde(default)]
    pub policy: agentvm_net::Policy,
    /// Names of the `[env]` variables (their values are never written).
    pub env_keys: Vec<String>,
    /// Shell commands run in the guest after boot.
    pub scripts: Vec<String>,
    /// Host commands after the VM has stopped (`down` runs them).
    pub post_down: Vec<String>,
    /// Host commands before the VM stops (`down` runs them).
    pub pre_down: Vec<String>,
    /// The image directory whose root file system the guest boots into
    /// (shared read-only), when the image has one.
    #[serde(default)]
    pub root_image: Option<PathBuf>,
    /// The host directory holding the persistent writable root layer
    /// (`[resources] persistent_root`), when there is one.
    #[serde(default)]
    pub persistent_root: Option<PathBuf>,
    /// The guest user (`NAME:UID:GID`) commands run as; root when `None`.
    #[serde(default)]
    pub user: Option<String>,
    /// Repositories whose git hooks and settings `up` recorded (in
    /// `git/<index>` of the state directory), to undo what the guest adds.
    #[serde(default)]
    pub guarded: Vec<PathBuf>,
    /// The VMM's seccomp level (`kill` for a snapshot from before it).
    #[serde(default, with = "crate::config::seccomp_level")]
    pub seccomp: agentvm_vmm::SeccompLevel,
    /// `[resources] log_max_mib` (0, in a snapshot from before it: the
    /// default).
    #[serde(default)]
    pub log_max_mib: u64,
    /// `[resources] net_memory_mib` (0: the default).
    #[serde(default)]
    pub net_memory_mib: u64,
    /// Whether virtiofsd may run without a sandbox where it has none
    /// (`up --allow-unsandboxed-virtiofsd`).
    #[serde(default)]
    pub allow_unsandboxed_virtiofsd: bool,
    /// Empty hot-plug slots for `agentvm mount` (`[resources]
    /// hotplug_slots`; 0 in a snapshot from before them: that VM has none).
    #[serde(default)]
    pub hotplug_slots: u8,
    /// The secrets bound in this VM: names and hosts only (the values went
    /// to the VMM process on its stdin, the guest has placeholders).
    #[serde(default)]
    pub secrets: Vec<SnapshotSecret>,
    /// The host's ssh-agent forwarded to the guest (`[ssh] agent`), with
    /// the agent socket `up` found.
    #[serde(default)]
    pub ssh_agent: Option<crate::ssh_agent::host::Forward>,
    /// What `up --restart` compares besides the above ([`changes`]);
    /// `None` in a snapshot from before it.
    #[serde(default)]
    pub recorded: Option<Recorded>,
}

/// The parts of the configuration [`Snapshot`] keeps only so that `up` can
/// say what changed since the VM started ([`changes::differences`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recorded {
    /// The plugins merged in, as the file lists them.
    pub plugins: Vec<String>,
    /// The built-in agents' home on the host.
    pub agent_home: Option<PathBuf>,
    /// Each `[env]` entry's [`changes::env_digest`] (never its text).
    pub env: std::collections::BTreeMap<String, String>,
    /// The Debian packages of the root file system.
    pub packages: Vec<String>,
    /// The npm packages of the root file system.
    pub npm: Vec<String>,
    /// `[ssh] agent`.
    pub ssh_agent: bool,
    /// `[ssh] keys`.
    pub ssh_keys: Vec<String>,
    /// `[ssh] hosts`.
    pub ssh_hosts: Vec<String>,
    /// The kernel's, initrd's and root file system's
    /// [`changes::image_identity`], when `up` could take it.
    pub image: Option<String>,
}

/// A secret in [`Snapshot`]: never its value or placeholder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotSecret {
    /// The guest variable.
    pub name: String,
    /// Where its real value goes.
    pub hosts: Vec<String>,
}

/// A share in [`Snapshot`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMount {
    /// Host directory.
    pub source: PathBuf,
    /// Guest path.
    pub target: PathBuf,
    /// Read-only in the guest.
    pub read_only: bool,
}

impl Snapshot {
    /// The snapshot of `cfg` booting `kernel`/`initrd` with `cmdline`.
    pub fn new(
        cfg: &ResolvedConfig,
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    ) -> Snapshot {
        Snapshot {
            name: cfg.name.clone(),
            workspace: cfg.workspace.clone(),
            kernel,
            initrd,
            cmdline,
            memory_mib: cfg.memory_mib,
            vcpus: cfg.vcpus,
            mounts: cfg
                .mounts
                .iter()
                .map(|m| SnapshotMount {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            files: Vec::new(),
            network_mode: cfg.network.mode.as_str().to_string(),
            policy: cfg.network.policy(),
            env_keys: cfg.env.keys().cloned().collect(),
            scripts: cfg.scripts.clone(),
            pre_down: cfg.hooks.pre_down.clone(),
            post_down: cfg.hooks.post_down.clone(),
            guarded: git_guard::repos(cfg),
            seccomp: cfg.seccomp,
            root_image: None,
            persistent_root: None,
            user: cfg.guest_user.as_ref().map(|u| u.cmdline_value()),
            log_max_mib: cfg.log_max_mib,
            net_memory_mib: cfg.net_memory_mib,
            allow_unsandboxed_virtiofsd: false,
            hotplug_slots: cfg.hotplug_slots,
            secrets: Vec::new(),
            ssh_agent: None,
            recorded: Some(Recorded {
                plugins: cfg.plugins.clone(),
                agent_home: cfg.agent_home.clone(),
                env: cfg
                    .env
                    .iter()
                    .map(|(k, e)| (k.clone(), changes::env_digest(k, &e.value.template)))
                    .collect(),
                packages: cfg.packages.clone(),
                npm: cfg.npm.clone(),
                ssh_agent: cfg.ssh.agent,
                ssh_keys: cfg.ssh.keys.clone(),
                ssh_hosts: cfg.ssh.hosts.clone(),
                image: None,
            }),
        }
    }

    /// The cap of the console and audit logs, bytes.
    pub fn log_max_bytes(&self) -> u64 {
        match self.log_max_mib {
            0 => crate::config::DEFAULT_LOG_MAX_MIB << 20,
            mib => mib << 20,
        }
    }

    /// The network stack's memory budget, bytes (0: the stack's default).
    pub fn net_memory_bytes(&self) -> usize {
        usize::try_from(self.net_memory_mib << 20).unwrap_or(usize::MAX)
    }

    /// The guest path of the workspace, when it is shared.
    pub fn workspace_in_guest(&self) -> Option<&Path> {
        self.mounts
            .iter()
            .find(|m| m.source == self.workspace)
            .map(|m| m.target.as_path())
    }
}

/// Whether `pid` is alive (not a zombie) and runs `agentvm __vmm` for `dir`.
pub fn is_vmm_of(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let dir = dir.as_os_str().as_encoded_bytes();
    args.contains(&VMM_SUBCOMMAND.as_bytes()) && args.contains(&dir) && is_alive(pid)
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Sends SIGKILL to `pid` and waits up to `timeout` for it to be gone.
pub fn kill_and_wait(pid: i32, timeout: std::time::Duration) -> bool {
    // The caller checked that `pid` is one of our VMMs.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    wait_gone(pid, timeout)
}

/// Waits up to `timeout` for `pid` to exit.
pub fn wait_gone(pid: i32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while is_alive(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Holds an exclusive lock on the state root while `up` checks and starts
/// a VM, so that two `up`s of one workspace start one VM.
pub struct RootLock {
    /// The state root, open and locked; closing it drops the lock.
    _dir: nix::fcntl::Flock<std::fs::File>,
}

impl RootLock {
    /// Waits for the lock.
    pub fn take(root: &Path) -> anyhow::Result<RootLock> {
        let mut dir =
            std::fs::File::open(root).with_context(|| format!("cannot open {}", root.display()))?;
        loop {
            match nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive) {
                Ok(locked) => return Ok(RootLock { _dir: locked }),
                Err((file, nix::errno::Errno::EINTR)) => dir = file,
                Err((_, e)) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot lock {}", root.display()))
                    )
                }
            }
        }
    }
}

/// Runs host hooks with `sh -c` in `dir`; a failure is a warning.
pub fn run_hooks(which: &str, hooks: &[String], dir: &Path) -> bool {
    let mut ok = true;
    for hook in hooks {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(hook)
            .current_dir(dir)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                ok = false;
                eprintln!("agentvm: warning: {which} hook `{hook}` failed ({s})");
            }
            Err(e) => {
                ok = false;
                eprintln!("agentvm: warning: cannot run {which} hook `{hook}`: {e}");
            }
        }
    }
    ok
}
