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
use serde_json::Value;

use super::control::{self, Request};
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
}

/// Starts the VM, or says it already runs.
pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let cfg = config::load(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    // Before anything of the configuration takes effect: nothing it says
    // runs or is shared until the user approved exactly this content.
    crate::trust::require(&cfg)?;
    let root = super::state_root();
    check_private(&root)?;
    let state = StateDir::of_workspace(&cfg.workspace);
    check_private(&state.dir)?;
    if let Some(code) = already_up(&state, &cfg.name, args.timeout, false)? {
        return Ok(code);
    }
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
    let kernel = choose_kernel(
        cfg.kernel.clone(),
        cfg.image.as_deref(),
        cfg.initrd.clone(),
        None,
    )?;
    let snap = Snapshot::new(&cfg, kernel.kernel, kernel.initrd, kernel.cmdline);

    make_private(&root)?;
    let lock = RootLock::take(&root)?;
    // Another `up` may have started it meanwhile.
    if let Some(code) = already_up(&state, &cfg.name, args.timeout, true)? {
        return Ok(code);
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
    let mut child = spawn_vmm(&state)?;
    if let Err(e) = std::fs::write(state.pid_file(), format!("{}\n", child.id())) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = state.clean();
        return Err(
            anyhow::Error::new(e).context(format!("cannot write {}", state.pid_file().display()))
        );
    }
    drop(lock);
    if let Err(e) = wait_ready(&state, &mut child, Duration::from_secs(args.timeout)) {
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
    let boot = started.elapsed();

    if !guest_env.vars.is_empty() {
        let vars = guest_env
            .vars
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect();
        if let Err(e) = configure(&state.vsock(), vars) {
            eprintln!(
                "agentvm: warning: cannot give the guest its [env] ({e:#}); \
                 commands in the guest will not see it (run `agentvm down` and `agentvm up` \
                 to retry)"
            );
        }
    }
    let agent = Agent {
        uds: &state.vsock(),
        port: EXEC_PORT,
        wait: Some(args.timeout as f64),
    };
    for script in &snap.scripts {
        match agent.exec_code(shell_start(script, &snap, false)) {
            Ok(0) => {}
            Ok(code) => eprintln!("agentvm: warning: script `{script}` exited with {code}"),
            Err(e) => eprintln!("agentvm: warning: script `{script}`: {e:#}"),
        }
    }
    run_hooks("post_up", &cfg.hooks.post_up, &cfg.workspace);
    println!(
        "agentvm: {} is up in {} ms (pid {}); `agentvm shell` opens a shell, `agentvm down` \
         stops it",
        cfg.name,
        boot.as_millis(),
        child.id()
    );
    Ok(ExitCode::SUCCESS)
}

/// Says so and returns `Some` when the VM runs (waiting for one that is
/// starting); with `clean` (only under [`RootLock`]: another `up` may be
/// writing the directory) cleans up after one that is gone.
fn already_up(
    state: &StateDir,
    name: &str,
    timeout: u64,
    clean: bool,
) -> anyhow::Result<Option<ExitCode>> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        match state.state() {
            VmState::Running(pid) => {
                println!("agentvm: {name} is already running (pid {pid})");
                return Ok(Some(ExitCode::SUCCESS));
            }
            VmState::Starting(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            VmState::Starting(pid) => {
                bail!("{name} is still starting (pid {pid}) after {timeout} s; see `agentvm logs`")
            }
            VmState::Stale(_) | VmState::Stopped if !clean => return Ok(None),
            VmState::Stale(_) => {
                eprintln!(
                    "agentvm: {name}: cleaning up after a VM that is gone ({})",
                    state.dir.display()
                );
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

/// Starts `agentvm __vmm --state DIR` in its own session, its output in
/// the console log.
fn spawn_vmm(state: &StateDir) -> anyhow::Result<Child> {
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
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory; it detaches
    // the VMM from our terminal and session, so it outlives this command.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().context("cannot start the VMM process")
}

/// Waits until the VMM says its guest is ready.
fn wait_ready(state: &StateDir, child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("cannot watch the VMM")? {
            bail!("the VMM exited ({status})");
        }
        if let Ok(reply) = control::request(&state.control(), &Request::Status) {
            if reply.get("ready") == Some(&Value::Bool(true)) {
                return Ok(());
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

/// Sends the guest environment to the agent (kept in its memory only).
fn configure(vsock: &Path, vars: agentvm_protocol::frame::EnvList) -> anyhow::Result<()> {
    let stream = connect_vsock_within(vsock, EXEC_PORT, Some(Duration::from_secs(10)))
        .context("cannot reach the guest agent")?;
    client::configure(stream, vars).context("the guest agent refused the environment")
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
