//! `agentvm up`: start the workspace's VM in the background and wait until
//! its guest is ready.

use std::fs::File;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use agentvm_protocol::client::{self, connect_vsock_within};
use agentvm_protocol::{Start, EXEC_PORT};
use anyhow::{bail, Context};
use clap::Args;

use super::control::Client;
use super::timings;
use super::{
    check_private, make_private, run_hooks, RootLock, Snapshot, StateDir, VmState, VMM_SUBCOMMAND,
};
use crate::attach::Agent;
use crate::boot::choose_kernel;
use crate::config::{self, env};

/// Arguments of `agentvm up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// The workspace: `.agentvm/config.toml` is looked for in DIR and its
    /// parents [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Give up if the guest is not ready after SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Stop the VM and remove its state when a script fails (by default it
    /// is left running for inspection).
    #[arg(long)]
    rm_on_failure: bool,
    /// Where virtiofsd can sandbox itself neither in namespaces nor in a
    /// chroot, run it without a sandbox (it then sees the host's files as
    /// you do) instead of refusing the shares.
    #[arg(long)]
    allow_unsandboxed_virtiofsd: bool,
    /// When the VM is running, stop it (as `agentvm down` does) and start
    /// it again with the current configuration and image; without it, `up`
    /// on a running VM only says what differs.
    #[arg(long)]
    restart: bool,
    /// With --restart: seconds the guest gets to power off before its VMM
    /// is killed (`agentvm down --timeout`).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stop_timeout: u64,
    /// After starting, print where the time went: each step from the
    /// command to the guest's ready line (this side, the VMM, the kernel,
    /// the guest agent) and the steps after it.
    #[arg(long)]
    timings: bool,
    /// Report on stderr, not stdout: `run`, `shell` and `agent` start the
    /// VM this way, and their stdout is the command's.
    #[arg(skip)]
    report_on_stderr: bool,
}

impl UpArgs {
    /// Prints `line` where these arguments say.
    fn report(&self, line: &str) {
        if self.report_on_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// `up` in `dir` as another command starts it.
    pub fn for_dir(dir: Option<PathBuf>) -> UpArgs {
        UpArgs {
            dir,
            timeout: 60,
            rm_on_failure: false,
            allow_unsandboxed_virtiofsd: false,
            restart: false,
            stop_timeout: 10,
            timings: false,
            report_on_stderr: true,
        }
    }

    /// The same, restarting a running VM (`shell --restart`).
    pub fn restarting(self, restart: bool) -> UpArgs {
        UpArgs { restart, ..self }
    }
}

/// Starts the VM, or says it already runs.
pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut stamps = timings::UpStamps::start();
    let cfg = config::load(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    // Before anything of the configuration takes effect: nothing it says
    // runs or is shared until the user approved exactly this content.
    crate::trust::require(&cfg)?;
    let root = super::state_root();
    check_private(&root)?;
    let state = StateDir::of_workspace(&cfg.workspace);
    check_private(&state.dir)?;
    // After the approval check: an unapproved change stops nothing.
    if args.restart && matches!(wait_started(&state, args.timeout), VmState::Running(_)) {
        args.report(&format!(
            "agentvm: stopping {} to start it with the current configuration",
            cfg.name
        ));
        let live = super::mount::describe(&state);
        if !live.is_empty() {
            args.report(&format!(
                "agentvm: live mounts are not kept across a restart; `agentvm mount` them                  again: {}",
                live.join(", ")
            ));
        }
        super::down::bring_down(&state, Duration::from_secs(args.stop_timeout))?;
    }
    if let Some(code) = already_up(&state, &cfg, &args, false)? {
        return Ok(code);
    }
    stamps.mark("configuration");
    let mut snap = base_snapshot(&cfg)?;
    snap.allow_unsandboxed_virtiofsd = args.allow_unsandboxed_virtiofsd;
    // The VMM's environment is scrubbed: the agent's socket goes in the
    // snapshot (a path, no secret).
    let home = std::env::var_os("HOME").map(PathBuf::from);
    snap.ssh_agent = crate::ssh_agent::host::Forward::prepare(
        &cfg.ssh,
        std::env::var_os("SSH_AUTH_SOCK").as_deref(),
        &crate::ssh_agent::host::known_hosts_files(home.as_deref()),
    )?;
    if cfg.kernel.is_none() {
        // A self-contained image directory brings its own root file system;
        // else the one the workspace's packages ask for, else the default
        // image's (if `image build --rootfs` made one).
        let built = match cfg.image {
            Some(_) => None,
            None => crate::image::workspace_rootfs(&cfg)?,
        };
        snap.root_image = built.or_else(|| {
            crate::image::load(cfg.image.as_deref())
                .ok()
                .filter(|i| i.has_rootfs)
                .map(|i| i.dir)
        });
    }
    if cfg.persistent_root {
        match &snap.root_image {
            Some(_) => snap.persistent_root = Some(persistent_layer(&cfg)?),
            None => eprintln!(
                "agentvm: warning: `persistent_root` needs an image with a root file system \
                 (this one boots into memory only); ignored"
            ),
        }
    }

    stamps.mark("image");
    for mount in &cfg.mounts {
        mount.prepare_source()?;
    }
    let guest_env = env::resolve(&cfg.env, &env::host_lookup);
    for left in guest_env.left_out.iter().filter(|l| l.worth_a_warning()) {
        eprintln!("agentvm: warning: {left}");
    }
    if !run_hooks("pre_up", &cfg.hooks.pre_up, &cfg.workspace) {
        bail!("a pre_up hook failed, so the VM was not started; fix the hook or remove it");
    }
    // After the hooks: a pre_up hook may be what logs in.
    let bound = bind_secrets(&cfg)?;
    snap.secrets = bound
        .secrets
        .iter()
        .map(|s| super::SnapshotSecret {
            name: s.name.clone(),
            hosts: s.hosts.clone(),
        })
        .collect();
    // After the hooks too (one may write a file); before the VM starts, so
    // that a missing or refused source stops `up` with nothing running.
    let host_files = super::files::read_all(&cfg)?;
    snap.files = host_files.iter().map(|f| f.snapshot()).collect();
    make_private(&root)?;
    let lock = RootLock::take(&root)?;
    // Another `up` may have started it meanwhile.
    if let Some(code) = already_up(&state, &cfg, &args, true)? {
        return Ok(code);
    }
    if let Some(r) = snap.recorded.as_mut() {
        r.image = image_identity(
            &snap.kernel,
            snap.initrd.as_deref(),
            snap.root_image.as_deref(),
        );
    }
    make_private(&state.dir)?;
    // Before the guest can write a byte.
    if let Err(e) = super::git_guard::record(&state, &snap.guarded) {
        let _ = state.clean();
        return Err(e);
    }
    let json = serde_json::to_vec_pretty(&snap).context("cannot encode the configuration")?;
    std::fs::write(state.snapshot(), json)
        .with_context(|| format!("cannot write {}", state.snapshot().display()))?;
    stamps.mark("prepared");
    let mut child = spawn_vmm(&state, bound.handoff.as_ref())?;
    stamps.mark("spawned");
    if let Err(e) = std::fs::write(state.pid_file(), format!("{}\n", child.id())) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = state.clean();
        return Err(
            anyhow::Error::new(e).context(format!("cannot write {}", state.pid_file().display()))
        );
    }
    drop(lock);
    let vmm_stamps = match wait_ready(&state, &mut child, Duration::from_secs(args.timeout)) {
        Ok(reply) => reply.boot,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = console_tail(&state.console());
            let _ = state.clean();
            return Err(if tail.is_empty() {
                anyhow::anyhow!("{} did not start: {e:#}", cfg.name)
            } else {
                anyhow::anyhow!(
                    "{} did not start ({e:#}); its console ended with:\n{tail}",
                    cfg.name
                )
            });
        }
    };
    let boot = started.elapsed();
    stamps.mark("ready");

    let guest_vars = crate::secrets::guest_env(&guest_env.vars, &bound.secrets);
    if !guest_vars.is_empty() || bound.ca_cert_pem.is_some() {
        let vars = guest_vars
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect();
        if let Err(e) = configure(&state.vsock(), vars, bound.ca_cert_pem.as_deref()) {
            eprintln!(
                "agentvm: warning: cannot give the guest its [env] ({e:#}); \
                 commands in the guest will not see it (run `agentvm down` and `agentvm up` \
                 to retry)"
            );
        }
    }
    if snap.ssh_agent.is_some() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let files = crate::ssh_agent::host::known_hosts_files(home.as_deref());
        let identity = crate::ssh_agent::host::identity(&cfg.ssh, &files);
        if let Err(e) = send_identity(&state.vsock(), identity) {
            eprintln!(
                "agentvm: warning: cannot give the guest your known_hosts and git identity \
                 ({e:#}); ssh in the guest will ask about host keys (rebuild the image with \
                 `agentvm image build` if it predates this agentvm)"
            );
        }
    }
    // Before the scripts, which may use them.
    if let Some(line) = super::files::copy_in(&state, &mut snap, &host_files) {
        args.report(&line);
    }
    stamps.mark("configured");
    let agent = Agent {
        uds: &state.vsock(),
        port: EXEC_PORT,
        wait: Some(args.timeout as f64),
    };
    for script in &snap.scripts {
        if let Err(e) = run_script(&agent, script, &snap) {
            // What the script did to the shared repositories is undone
            // either way.
            super::git_guard::undo(&state, &snap);
            if args.rm_on_failure {
                let _ = super::down::stop(&state, Duration::from_secs(10));
                let _ = state.clean();
                bail!("{e:#}\nthe VM was stopped and its state removed (--rm-on-failure)");
            }
            bail!(
                "{e:#}\nthe VM is still running for inspection: `agentvm shell` opens a shell, \
                 `agentvm down` stops it"
            );
        }
    }
    super::git_guard::undo(&state, &snap);
    run_hooks("post_up", &cfg.hooks.post_up, &cfg.workspace);
    stamps.mark("scripts");
    args.report(&format!(
        "agentvm: {} is up in {} ms (pid {}); `agentvm shell` opens a shell, `agentvm down` \
         stops it",
        cfg.name,
        boot.as_millis(),
        child.id()
    ));
    if args.timings {
        let guest = guest_boot_times(&agent, &snap);
        let rows = timings::report(&stamps, vmm_stamps.as_ref(), &guest);
        args.report(&format!(
            "agentvm: where `up` spent its time:\n{}",
            timings::render(&rows).trim_end()
        ));
        if guest.is_empty() {
            args.report(
                "agentvm: the guest's steps are missing: its image predates them \
                 (`agentvm image build` makes a new one)",
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The guest agent's milestones ([`timings::GUEST_FILE`]), empty when it
/// has none.
fn guest_boot_times(agent: &Agent<'_>, snap: &Snapshot) -> Vec<(String, u64)> {
    let out = Tail::default();
    let read = agent.connect("cat").and_then(|stream| {
        let writer = stream
            .try_clone()
            .context("cannot use the guest agent's socket")?;
        let stdio = client::Stdio {
            stdin: None,
            stdout: Box::new(out.clone()),
            stderr: Box::new(std::io::sink()),
        };
        let argv = vec![b"cat".to_vec(), timings::GUEST_FILE.as_bytes().to_vec()];
        client::run(stream, writer, guest_start(argv, snap, false), stdio)
            .context("cannot read the guest's boot times")
    });
    match read {
        Ok(status) if status.shell_code() == 0 => timings::parse_guest(&out.text()),
        _ => Vec::new(),
    }
}

/// The snapshot of `cfg` before `up` finds its root file system, agent and
/// secrets: the kernel chosen, the configuration's values.
fn base_snapshot(cfg: &config::ResolvedConfig) -> anyhow::Result<Snapshot> {
    let kernel = choose_kernel(
        cfg.kernel.clone(),
        cfg.image.as_deref(),
        cfg.initrd.clone(),
        None,
    )?;
    Ok(Snapshot::new(
        cfg,
        kernel.kernel,
        kernel.initrd,
        kernel.cmdline,
    ))
}

/// The snapshot `up` would write for `cfg` now, as far as it is known
/// without doing anything: no hook or secret command runs, no root file
/// system is built (one built from `packages` is left out: its packages
/// are compared instead), no directory is made, nothing is printed.
/// Secrets are their names and hosts, as `up` records them.
pub fn planned(cfg: &config::ResolvedConfig) -> anyhow::Result<Snapshot> {
    let mut snap = base_snapshot(cfg)?;
    snap.files = super::files::planned(cfg);
    let built = cfg.kernel.is_none()
        && cfg.image.is_none()
        && !(cfg.packages.is_empty() && cfg.npm.is_empty());
    if cfg.kernel.is_none() && !built {
        snap.root_image = crate::image::load(cfg.image.as_deref())
            .ok()
            .filter(|i| i.has_rootfs)
            .map(|i| i.dir);
    }
    if cfg.persistent_root && (built || snap.root_image.is_some()) {
        snap.persistent_root =
            crate::paths::data_dir().map(|data| crate::paths::persistent_root(&data, &cfg.id));
    }
    if cfg.network.mode != config::NetworkMode::Off {
        // As `up` would bind them: one whose host variables are unset or
        // empty is left out; one read by a command is taken to be there
        // (the command is not run).
        snap.secrets = cfg
            .secrets
            .iter()
            .filter(|(_, s)| match &s.source {
                config::SecretSource::Value(v) => {
                    v.expand(&env::host_lookup).is_ok_and(|v| !v.is_empty())
                }
                config::SecretSource::Command(_) => true,
            })
            .map(|(name, s)| super::SnapshotSecret {
                name: name.clone(),
                hosts: s.hosts.clone(),
            })
            .collect();
    }
    if let Some(r) = snap.recorded.as_mut() {
        r.image = image_identity(
            &snap.kernel,
            snap.initrd.as_deref(),
            snap.root_image.as_deref(),
        );
    }
    Ok(snap)
}

/// [`super::changes::image_identity`] of the files a VM boots from.
fn image_identity(kernel: &Path, initrd: Option<&Path>, root: Option<&Path>) -> Option<String> {
    let rootfs = root.map(|r| r.join(crate::image::ROOTFS));
    let mut files = vec![kernel];
    files.extend(initrd);
    files.extend(rootfs.as_deref());
    super::changes::image_identity(&files)
}

/// Says that the VM of `cfg` runs, and what differs between it and the
/// configuration now ([`super::changes`]).
fn report_running(state: &StateDir, cfg: &config::ResolvedConfig, pid: i32, args: &UpArgs) {
    let name = &cfg.name;
    let compared = state
        .read_snapshot()
        .and_then(|running| Ok(super::changes::differences(&running, &planned(cfg)?)));
    match compared {
        Ok(diff) if diff.is_empty() => args.report(&format!(
            "agentvm: {name} is already running (pid {pid}) and up to date with its configuration"
        )),
        Ok(diff) => {
            let mut text = format!(
                "agentvm: {name} is already running (pid {pid}), and the running VM differs \
                 from the configuration:"
            );
            for change in &diff {
                text.push_str(&format!("\n  {change}"));
            }
            text.push_str("\n`agentvm up --restart` applies it");
            if super::mount::any(state) {
                text.push_str(" (live mounts are not kept across a restart)");
            }
            args.report(&text);
        }
        Err(e) => {
            args.report(&format!("agentvm: {name} is already running (pid {pid})"));
            eprintln!("agentvm: warning: cannot compare it with the configuration: {e:#}");
        }
    }
}

/// The state of the VM of `state`, once it is no longer starting (or
/// `timeout` seconds have passed).
fn wait_started(state: &StateDir, timeout: u64) -> VmState {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        match state.state() {
            VmState::Starting(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// The size the persistent root layer may grow to (a sparse file: it takes
/// only what the guest writes).
const PERSISTENT_ROOT_BYTES: u64 = 64 << 30;

/// The workspace's persistent root layer: a directory of the user's with a
/// sparse ext4 image the guest mounts as its root's writable layer (an
/// ext4 image rather than the share itself: overlayfs needs owners and
/// extended attributes virtiofsd cannot set as an ordinary user).
fn persistent_layer(cfg: &config::ResolvedConfig) -> anyhow::Result<PathBuf> {
    let data = crate::paths::data_dir()
        .context("neither XDG_DATA_HOME nor HOME is set: nowhere to keep the persistent root")?;
    let dir = crate::paths::persistent_root(&data, &cfg.id);
    make_private(&dir)?;
    let image = dir.join(crate::share::UPPER);
    if image.exists() {
        return Ok(dir);
    }
    let tmp = dir.join(format!(".{}.tmp", crate::share::UPPER));
    let made = File::create(&tmp)
        .and_then(|f| f.set_len(PERSISTENT_ROOT_BYTES))
        .context("cannot create the persistent root layer")
        .and_then(|()| {
            let status = Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-O", "^metadata_csum"])
                .arg(&tmp)
                .status()
                .context("cannot run mke2fs (install e2fsprogs) to make the persistent root")?;
            if !status.success() {
                bail!("mke2fs failed ({status}) making the persistent root");
            }
            std::fs::rename(&tmp, &image).context("cannot put the persistent root in place")
        });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("in {}", dir.display())));
    }
    eprintln!(
        "agentvm: the guest's root keeps its changes in {}",
        image.display()
    );
    Ok(dir)
}

/// Lines of a failed script's output `up` shows.
const SCRIPT_TAIL_LINES: usize = 20;
/// Bytes of a script's output kept for that tail.
const SCRIPT_TAIL_BYTES: usize = 64 << 10;

/// Runs one configured script in the guest, its output kept (the last
/// [`SCRIPT_TAIL_BYTES`]); an error names the script, its exit code and the
/// end of its output, escaped (the guest wrote it).
fn run_script(agent: &Agent<'_>, script: &str, snap: &Snapshot) -> anyhow::Result<()> {
    eprintln!("agentvm: running script `{}`", crate::escape::line(script));
    let tail = Tail::default();
    let stream = agent.connect("sh")?;
    let writer = stream
        .try_clone()
        .context("cannot use the guest agent's socket")?;
    let stdio = client::Stdio {
        stdin: None,
        stdout: Box::new(tail.clone()),
        stderr: Box::new(tail.clone()),
    };
    let status = client::run(stream, writer, shell_start(script, snap, false), stdio)
        .with_context(|| format!("script `{}` did not run", crate::escape::line(script)))?;
    let code = status.shell_code();
    if code == 0 {
        return Ok(());
    }
    let out = tail.text();
    let lines: Vec<&str> = out.lines().collect();
    let shown: Vec<String> = lines[lines.len().saturating_sub(SCRIPT_TAIL_LINES)..]
        .iter()
        .map(|l| format!("  {}", crate::escape::line(l.trim_end_matches('\r'))))
        .collect();
    bail!(
        "script `{}` exited with {code}{}",
        crate::escape::line(script),
        if shown.is_empty() {
            " and printed nothing".to_string()
        } else {
            format!("; its output ended with:\n{}", shown.join("\n"))
        }
    )
}

/// The end of a command's output, shared by its stdout and stderr.
#[derive(Clone, Default)]
struct Tail(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Tail {
    fn text(&self) -> String {
        let buf = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl std::io::Write for Tail {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buf.extend_from_slice(data);
        let excess = buf.len().saturating_sub(SCRIPT_TAIL_BYTES);
        buf.drain(..excess);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long a VM whose VMM process lives may look stale before `up`
/// cleans it away.
const STALE_GRACE: Duration = Duration::from_secs(5);

/// Says so, with what differs from the configuration ([`report_running`]),
/// and returns `Some` when the VM runs (waiting for one that is starting);
/// with `clean` (only under [`RootLock`]: another `up` may be writing the
/// directory) cleans up after one that is gone.
fn already_up(
    state: &StateDir,
    cfg: &config::ResolvedConfig,
    args: &UpArgs,
    clean: bool,
) -> anyhow::Result<Option<ExitCode>> {
    let name = &cfg.name;
    let timeout = args.timeout;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let grace = Instant::now() + STALE_GRACE;
    loop {
        match state.state() {
            VmState::Running(pid) => {
                report_running(state, cfg, pid, args);
                return Ok(Some(ExitCode::SUCCESS));
            }
            VmState::Starting(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            VmState::Starting(pid) => {
                bail!("{name} is still starting (pid {pid}) after {timeout} s; see `agentvm logs`")
            }
            VmState::Stale(_) | VmState::Stopped if !clean => return Ok(None),
            // The process the pid file names lives: a VMM another `up`
            // has just started can look stale for a moment (its
            // command line is empty while exec completes, its control
            // socket not yet answering). Only one still so after the
            // grace period is cleaned away (and killed).
            VmState::Stale(_)
                if Instant::now() < grace && state.pid().is_some_and(super::is_alive) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            VmState::Stale(_) => {
                eprintln!(
                    "agentvm: {name}: cleaning up after a VM that is gone ({}); the end of its log:",
                    state.dir.display()
                );
                for line in super::status::log_tail(&state.console(), 10) {
                    eprintln!("  | {line}");
                }
                state.clean()?;
                return Ok(None);
            }
            VmState::Stopped => {
                state.clean()?;
                return Ok(None);
            }
        }
    }
}

/// `sh -c script` in the guest's workspace.
pub fn shell_start(script: &str, snap: &Snapshot, tty: bool) -> Start {
    let argv = vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()];
    guest_start(argv, snap, tty)
}

/// `argv` in the guest's workspace (the user's home when the workspace is
/// not shared), on a terminal when `tty`.
pub fn guest_start(argv: Vec<Vec<u8>>, snap: &Snapshot, tty: bool) -> Start {
    Start {
        argv,
        env: Vec::new(),
        cwd: snap
            .workspace_in_guest()
            .map(|p| p.as_os_str().as_encoded_bytes().to_vec()),
        user: None,
        tty: tty.then_some(agentvm_protocol::WinSize { rows: 24, cols: 80 }),
    }
}

/// The variables the VMM process keeps from ours; it gets no other (a
/// host secret such as a cloud key or a token in our environment must not
/// sit in the memory of a process that parses guest data). Everything else
/// it needs comes from its state directory.
const VMM_ENV: &[&str] = &[
    // Finding virtiofsd: $PATH, ~/.cargo/bin, or an explicit binary.
    "PATH",
    "HOME",
    agentvm_devices::virtio::fs::locate::ENV_VAR,
    // Its log level, and the language of its messages.
    "AGENTVM_LOG",
    "LANG",
    "LC_ALL",
];

/// Starts `agentvm __vmm --state DIR` in its own session, its output in
/// the console log, only [`VMM_ENV`] in its environment and the secrets,
/// if any, on its stdin ([`crate::secrets::handoff`]).
fn spawn_vmm(
    state: &StateDir,
    handoff: Option<&crate::secrets::handoff::Handoff>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the agentvm binary to start")?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(state.console())
        .with_context(|| format!("cannot create {}", state.console().display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg(VMM_SUBCOMMAND)
        .arg("--state")
        .arg(&state.dir)
        // Not the workspace: the VMM must not keep it busy.
        .current_dir("/")
        .env_clear()
        .envs(
            VMM_ENV
                .iter()
                .filter_map(|&k| Some((k, std::env::var_os(k)?))),
        )
        .stdin(if handoff.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: the closure only calls setsid, which is async-signal-safe
    // and touches no memory; it detaches the VMM from our terminal and
    // session, so it outlives this command.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the VMM process")?;
    if let (Some(h), Some(stdin)) = (handoff, child.stdin.take()) {
        // Dropping `stdin` after the write is the message's end.
        if let Err(e) = h.send(stdin) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    Ok(child)
}

/// Waits until the VMM says its guest is ready; its last status reply.
fn wait_ready(
    state: &StateDir,
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<super::control::StatusReply> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("cannot watch the VMM")? {
            bail!("the VMM exited ({status})");
        }
        if let Ok(reply) = Client::connect(&state.control()).and_then(|mut vmm| vmm.status()) {
            if reply.ready {
                return Ok(reply);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the guest did not print `agentvm-guest: ready` within {} s \
                 (see `agentvm logs`; `--timeout` gives it longer)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends the guest environment to the agent (kept in its memory only),
/// with the workspace CA for it to trust when secrets are bound. An agent
/// from before the CA field refuses the CA: it then gets the environment
/// alone, and the user is told to rebuild the image.
fn configure(
    vsock: &Path,
    vars: agentvm_protocol::frame::EnvList,
    ca_cert_pem: Option<&str>,
) -> anyhow::Result<()> {
    let connect = || {
        connect_vsock_within(vsock, EXEC_PORT, Some(Duration::from_secs(10)))
            .context("cannot reach the guest agent")
    };
    if let Some(pem) = ca_cert_pem {
        match client::configure_with_ca(connect()?, vars.clone(), pem.as_bytes().to_vec()) {
            Ok(()) => return Ok(()),
            // The agent answered, and refused: an image from before the CA.
            Err(e @ client::ClientError::Remote { .. }) => eprintln!(
                "agentvm: warning: the guest agent did not install the workspace CA ({}); \
                 TLS to the hosts secrets are bound to will fail in the guest (an image \
                 older than secrets needs `agentvm image build`)",
                crate::escape::line(&e.to_string())
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e).context("the guest agent refused the environment"))
            }
        }
    }
    client::configure(connect()?, vars).context("the guest agent refused the environment")
}

/// The secrets of one `up`, ready for the VMM and the guest.
#[derive(Default)]
struct Bound {
    /// Each secret with its value and placeholder.
    secrets: Vec<crate::secrets::Resolved>,
    /// The workspace CA's certificate, for the guest to trust.
    ca_cert_pem: Option<String>,
    /// What the VMM process gets on its stdin.
    handoff: Option<crate::secrets::handoff::Handoff>,
}

/// Reads the secrets' values (running their approved commands), draws the
/// placeholders and loads (or makes) the workspace CA. Nothing when the
/// network is off: no value could be sent anywhere.
fn bind_secrets(cfg: &config::ResolvedConfig) -> anyhow::Result<Bound> {
    if let Some(e) = cfg.env.get(config::plugins::OAUTH_IN_GUEST) {
        if matches!(e.origin, config::Origin::BuiltIn(_))
            && env::host_lookup(config::plugins::OAUTH_IN_GUEST).is_some_and(|v| !v.is_empty())
        {
            eprintln!(
                "agentvm: warning: {} enters the guest as it is (Claude Code checks it itself \
                 before sending it, so it cannot be a placeholder): a program in the VM can \
                 read it; ANTHROPIC_API_KEY stays on the host",
                config::plugins::OAUTH_IN_GUEST
            );
        }
    }
    if cfg.network.mode == config::NetworkMode::Off {
        let written: Vec<&str> = cfg
            .secrets
            .iter()
            .filter(|(_, s)| !matches!(s.origin, config::Origin::BuiltIn(_)))
            .map(|(name, _)| name.as_str())
            .collect();
        if !written.is_empty() {
            eprintln!(
                "agentvm: warning: the network is off, so the secrets {} are left out of the \
                 guest (their commands do not run)",
                crate::escape::line(&written.join(", "))
            );
        }
        return Ok(Bound::default());
    }
    if cfg.secrets.is_empty() {
        return Ok(Bound::default());
    }
    let resolved = crate::secrets::resolve(&cfg.secrets, &env::host_lookup, &cfg.workspace)?;
    for w in &resolved.warnings {
        eprintln!("agentvm: warning: {}", crate::escape::line(w));
    }
    if resolved.secrets.is_empty() {
        return Ok(Bound::default());
    }
    let data = crate::paths::data_dir()
        .context("neither XDG_DATA_HOME nor HOME is set: nowhere to keep the workspace CA")?;
    let dir = crate::secrets::ca::dir(&data, &cfg.id);
    if let Some(m) = crate::secrets::ca::exposing(&cfg.mounts, &dir) {
        bail!(
            "{}: the mount of {} holds {}, where the workspace CA's key is kept: the guest \
             could forge the certificates it trusts; mount a narrower directory",
            m.origin,
            m.source.display(),
            dir.display()
        );
    }
    let ca = crate::secrets::ca::load_or_create(&dir, &format!("agentvm {}", cfg.name))?;
    let upstream = cfg
        .network
        .upstream_ca
        .iter()
        .map(|u| u.pem.clone())
        .collect();
    Ok(Bound {
        handoff: Some(crate::secrets::handoff(&ca, &resolved.secrets, upstream)?),
        ca_cert_pem: Some(ca.cert_pem),
        secrets: resolved.secrets,
    })
}

/// Sends the host user's known hosts and git identity to the agent.
fn send_identity(vsock: &Path, identity: agentvm_protocol::frame::Identity) -> anyhow::Result<()> {
    let stream = connect_vsock_within(vsock, EXEC_PORT, Some(Duration::from_secs(10)))
        .context("cannot reach the guest agent")?;
    client::identity(stream, identity).context("the guest agent refused them")
}

/// The last lines of the console log, escaped (the guest wrote them).
fn console_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..]
        .iter()
        .map(|l| format!("  {}", crate::escape::line(l.trim_end_matches('\r'))))
        .collect::<Vec<_>>()
        .join("\n")
}
