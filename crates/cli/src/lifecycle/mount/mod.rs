//! `agentvm mount HOST_DIR GUEST_PATH [--ro]` and `agentvm unmount
//! GUEST_PATH`: live mounts on a running VM.
//!
//! The VM declares empty hot-plug slots at boot (`[resources]
//! hotplug_slots`). `mount` starts virtiofsd for the host directory itself
//! — the VMM is confined by Landlock and seccomp by then and may start no
//! daemon for a directory it was not given — detached, with its socket and
//! log in the private state directory; asks the VMM (`attach_fs`) to fill
//! a free slot with a virtio-fs device connected to it; and asks the guest
//! agent (`Mount`) to bind the slot's device and mount the tag. `unmount`
//! asks the guest to unmount and unbind, then the VMM to empty the slot
//! (`detach_fs`), and makes sure the daemon is gone. The host's side never
//! depends on the guest: whatever the agent answers, the slot is emptied
//! and the daemon ended, so the directory is out of reach.
//!
//! Both are recorded (`record.rs`): the live mounts for `status`,
//! `unmount` and `down`, and one audit line each. Live mounts are not
//! kept across a restart of the VM (`down`, `up --restart`).

pub mod record;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentvm_devices::virtio::fs::{
    launch_detached_in, stop_detached, DaemonError, Detached, FsConfig, Sandbox, Search, Virtiofsd,
};
use agentvm_protocol::client::{self, connect_vsock_within};
use agentvm_protocol::frame::{LiveMount as MountFrame, LiveUnmount};
use agentvm_protocol::EXEC_PORT;
use anyhow::{bail, Context};
use clap::Args;

use super::control::{Client, SlotReply};
use super::{StateDir, Target, VmState};
use record::LiveMount;

/// How long the guest agent gets to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon gets to end by itself once its connection closed.
const DAEMON_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `agentvm mount`.
#[derive(Args, Debug)]
pub struct MountArgs {
    #[command(flatten)]
    target: Target,
    /// The host directory to share.
    host_dir: PathBuf,
    /// Where the guest sees it (an absolute path).
    guest_path: PathBuf,
    /// The guest may read but not change it.
    #[arg(long)]
    ro: bool,
}

/// Arguments of `agentvm unmount`.
#[derive(Args, Debug)]
pub struct UnmountArgs {
    #[command(flatten)]
    target: Target,
    /// The guest path of a live mount.
    guest_path: PathBuf,
}

/// The running VM of `target`.
fn running(target: &Target) -> anyhow::Result<StateDir> {
    let state = target.locate()?;
    match state.state() {
        VmState::Running(_) => Ok(state),
        _ => bail!("the workspace's VM is not running (`agentvm up` starts it)"),
    }
}

/// Makes a live mount.
pub fn mount(args: MountArgs) -> anyhow::Result<ExitCode> {
    let state = running(&args.target)?;
    let snap = state.read_snapshot()?;
    if snap.hotplug_slots == 0 {
        bail!(
            "this VM has no hot-plug slots (`[resources] hotplug_slots`), so it takes no \
             live mounts; set it and restart the VM (`agentvm up --restart`)"
        );
    }
    let host_dir = args
        .host_dir
        .canonicalize()
        .with_context(|| format!("cannot find {}", args.host_dir.display()))?;
    if !host_dir.is_dir() {
        bail!("{} is not a directory", host_dir.display());
    }
    let guest_path = record::guest_path(&args.guest_path)?;
    let _lock = record::lock(&state)?;
    let mut mounts = record::load(&state)?;
    let shares: Vec<PathBuf> = snap.mounts.iter().map(|m| m.target.clone()).collect();
    record::check_free(&guest_path, &shares, &mounts)?;
    if mounts.len() >= usize::from(snap.hotplug_slots) {
        bail!(
            "all {} hot-plug slots of this VM are in use; `agentvm unmount` one first",
            snap.hotplug_slots
        );
    }
    let tag = record::free_tag(&mounts);

    // The daemon, detached, as a share's is started.
    let mut config = FsConfig::new(tag.clone(), host_dir.clone(), state.dir.clone());
    config.read_only = args.ro;
    config.allow_unsandboxed = snap.allow_unsandboxed_virtiofsd;
    let bin = Search::from_env(None).find()?;
    let (daemon, start_time, slot) = start_and_attach(&state, &bin, &config)?;
    let live = LiveMount {
        tag: tag.clone(),
        host_dir,
        guest_path,
        read_only: args.ro,
        pid: daemon.pid,
        start_time,
        base: slot.base,
    };
    mounts.push(live.clone());
    record::save(&state, &mounts)?;

    // The guest binds the device and mounts it.
    let asked = guest_mount(&state, &live);
    if let Err(e) = asked {
        let note = format!("the guest failed: {e:#}");
        detach_and_end(&state, &live);
        mounts.retain(|m| m.tag != live.tag);
        record::save(&state, &mounts)?;
        record::audit(&state, "mount-failed", &live, note)?;
        return Err(e.context(format!(
            "the guest could not mount it at {}; nothing is left attached",
            live.guest_path.display()
        )));
    }
    record::audit(&state, "mount", &live, String::new())?;
    println!(
        "agentvm: mounted {} at {} in {}{} (tag {}, slot {:#x})",
        live.host_dir.display(),
        live.guest_path.display(),
        state.label(),
        if live.read_only { ", read-only" } else { "" },
        live.tag,
        live.base
    );
    Ok(ExitCode::SUCCESS)
}

/// Starts the daemon for `config` and has the VMM attach it to a slot,
/// in the sandbox modes of [`Sandbox::choices`] in turn: a daemon whose
/// namespace sandbox fails may exit only after its socket appeared, and
/// the VMM's handshake then fails (as for shares, the next mode is tried).
/// Returns the daemon, its start time and the slot.
fn start_and_attach(
    state: &StateDir,
    bin: &Virtiofsd,
    config: &FsConfig,
) -> anyhow::Result<(Detached, u64, SlotReply)> {
    let log = record::daemon_log(state, &config.tag);
    let choices = Sandbox::choices(config.allow_unsandboxed);
    let mut last = None;
    for (i, &sandbox) in choices.iter().enumerate() {
        let next = choices.get(i + 1).filter(|_| sandbox == Sandbox::Namespace);
        let daemon = match launch_detached_in(bin, config, &log, sandbox) {
            Ok(d) => d,
            Err(e @ DaemonError::Exited { .. }) if next.is_some() => {
                Sandbox::namespace_failed();
                last = Some(anyhow::Error::new(e));
                continue;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot start virtiofsd for {}",
                    config.shared_dir.display()
                )))
            }
        };
        let start_time = record::start_time(daemon.pid).unwrap_or(0);
        let attached = Client::connect(&state.control())
            .and_then(|mut c| c.attach_fs(&config.tag, daemon.pid));
        match attached {
            Ok(slot) => return Ok((daemon, start_time, slot)),
            Err(e) => {
                let exited = daemon.has_exited(Duration::from_secs(1));
                stop_detached(daemon.pid, &daemon.socket, DAEMON_GRACE, || {
                    record::start_time(daemon.pid) == Some(start_time)
                });
                match next {
                    Some(next) if exited => {
                        eprintln!(
                            "agentvm: virtiofsd cannot use --sandbox namespace here; using \
                             --sandbox {next}"
                        );
                        Sandbox::namespace_failed();
                        last = Some(e);
                    }
                    _ => {
                        return Err(e.context(format!(
                            "the VMM did not attach the directory (virtiofsd's log: {})",
                            log.display()
                        )))
                    }
                }
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no sandbox mode is left to run virtiofsd in"))
        .context(format!(
            "cannot start virtiofsd for {} (its log: {})",
            config.shared_dir.display(),
            log.display()
        )))
}

fn guest_mount(state: &StateDir, live: &LiveMount) -> anyhow::Result<()> {
    let stream = connect_vsock_within(state.vsock(), EXEC_PORT, Some(AGENT_TIMEOUT))
        .context("cannot reach the guest agent")?;
    stream.set_read_timeout(Some(AGENT_TIMEOUT)).ok();
    let frame = MountFrame {
        base: live.base,
        tag: live.tag.clone(),
        target: live.guest_path.as_os_str().as_encoded_bytes().to_vec(),
        read_only: live.read_only,
    };
    client::mount(stream, frame).context("the guest agent refused")
}

fn guest_unmount(state: &StateDir, live: &LiveMount) -> anyhow::Result<()> {
    let stream = connect_vsock_within(state.vsock(), EXEC_PORT, Some(AGENT_TIMEOUT))
        .context("cannot reach the guest agent")?;
    stream.set_read_timeout(Some(AGENT_TIMEOUT)).ok();
    let frame = LiveUnmount {
        base: live.base,
        target: live.guest_path.as_os_str().as_encoded_bytes().to_vec(),
    };
    client::unmount(stream, frame).context("the guest agent refused")
}

/// The host's half of an unmount: the VMM empties the slot, the daemon
/// ends (killed when it does not by itself). Returns a note on what did
/// not go as planned (empty when all did).
fn detach_and_end(state: &StateDir, live: &LiveMount) -> String {
    let mut notes = Vec::new();
    if let Err(e) = Client::connect(&state.control()).and_then(|mut c| c.detach_fs(&live.tag)) {
        notes.push(format!("the VMM did not detach it ({e:#})"));
    }
    let socket = state.dir.join(format!("virtiofs-{}.sock", live.tag));
    if !stop_detached(live.pid, &socket, DAEMON_GRACE, || {
        record::is_its_daemon(live)
    }) {
        notes.push(format!("virtiofsd (pid {}) outlived SIGKILL", live.pid));
    }
    notes.join("; ")
}

/// Undoes a live mount.
pub fn unmount(args: UnmountArgs) -> anyhow::Result<ExitCode> {
    let state = args.target.locate()?;
    let guest_path = record::guest_path(&args.guest_path)?;
    if !state.dir.exists() {
        bail!("the workspace's VM is not running, so it has no live mounts");
    }
    let _lock = record::lock(&state)?;
    let mut mounts = record::load(&state)?;
    let Some(live) = mounts.iter().find(|m| m.guest_path == guest_path).cloned() else {
        let listed: Vec<String> = mounts
            .iter()
            .map(|m| m.guest_path.display().to_string())
            .collect();
        bail!(
            "{} is not a live mount of this VM (live mounts: {})",
            guest_path.display(),
            if listed.is_empty() {
                "none".to_owned()
            } else {
                listed.join(", ")
            }
        );
    };
    let mut notes = Vec::new();
    if matches!(state.state(), VmState::Running(_)) {
        if let Err(e) = guest_unmount(&state, &live) {
            // The host's half goes on regardless: the guest loses the
            // device either way.
            let note = format!("the guest did not unmount cleanly: {e:#}");
            eprintln!("agentvm: warning: {}", crate::escape::text(&note));
            notes.push(note);
        }
    }
    let host = detach_and_end(&state, &live);
    if !host.is_empty() {
        eprintln!("agentvm: warning: {host}");
        notes.push(host);
    }
    mounts.retain(|m| m.tag != live.tag);
    record::save(&state, &mounts)?;
    record::audit(&state, "unmount", &live, notes.join("; "))?;
    println!(
        "agentvm: unmounted {} (was {}) from {}",
        live.guest_path.display(),
        live.host_dir.display(),
        state.label()
    );
    Ok(ExitCode::SUCCESS)
}

/// Ends the daemons of every recorded live mount (the VM is gone, or
/// going: `down`). Their connections closed with the VMM, so they have
/// ended by themselves unless something went wrong.
pub fn end_all(state: &StateDir) {
    let Ok(mounts) = record::load(state) else {
        return;
    };
    for live in &mounts {
        let socket = state.dir.join(format!("virtiofs-{}.sock", live.tag));
        if !stop_detached(live.pid, &socket, DAEMON_GRACE, || {
            record::is_its_daemon(live)
        }) {
            eprintln!(
                "agentvm: warning: virtiofsd of live mount {} (pid {}) outlived SIGKILL",
                live.guest_path.display(),
                live.pid
            );
        }
    }
}

/// The live mounts of `state`, one line each, for `status`.
pub fn describe(state: &StateDir) -> Vec<String> {
    record::load(state)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            format!(
                "{} -> {}{}",
                m.host_dir.display(),
                m.guest_path.display(),
                if m.read_only { " (ro)" } else { "" }
            )
        })
        .collect()
}

/// Whether `state` has live mounts (that a restart would drop).
pub fn any(state: &StateDir) -> bool {
    record::load(state).is_ok_and(|m| !m.is_empty())
}
