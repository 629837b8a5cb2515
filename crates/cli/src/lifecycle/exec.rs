//! `agentvm run` and `agentvm shell`: commands in the workspace's running
//! VM, through the same agent client as `agentvm attach`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use agentvm_protocol::EXEC_PORT;
use anyhow::bail;
use clap::Args;

use super::up::{guest_start, shell_start, UpArgs};
use super::{Snapshot, StateDir, Target, VmState};
use crate::attach::Agent;

/// Arguments of `agentvm run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Run on a pseudo-terminal [default: when stdin is a terminal].
    #[arg(long, short = 't')]
    tty: bool,
    /// Stop the running VM and start it with the current configuration
    /// first (`agentvm up --restart`).
    #[arg(long)]
    restart: bool,
    /// The command, run with `sh -c` in the guest's workspace (its words
    /// are joined with spaces).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Arguments of `agentvm shell`.
#[derive(Args, Debug)]
pub struct ShellArgs {
    #[command(flatten)]
    target: Target,
    /// Stop the running VM and start it with the current configuration
    /// first (`agentvm up --restart`).
    #[arg(long)]
    restart: bool,
}

/// Runs the command; its exit code is `run`'s.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (state, snap) = running_or_started(&args.target, args.restart)?;
    let tty = args.tty || std::io::stdin().is_terminal();
    let start = shell_start(&args.command.join(" "), &snap, tty);
    let code = agent(&state.vsock()).exec(start);
    super::git_guard::undo(&state, &snap);
    code
}

/// Opens a login shell in the guest's workspace.
pub fn shell(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let (state, snap) = running_or_started(&args.target, args.restart)?;
    let start = guest_start(vec![b"sh".to_vec(), b"-l".to_vec()], &snap, true);
    let code = agent(&state.vsock()).exec(start);
    super::git_guard::undo(&state, &snap);
    code
}

fn agent(uds: &Path) -> Agent<'_> {
    Agent {
        uds,
        port: EXEC_PORT,
        wait: None,
    }
}

/// The target's VM, started (with `up`'s checks and output, on stderr)
/// when it is not running and the target is a workspace, so that
/// `cd repo && agentvm shell` is the whole workflow. With `restart`, a
/// running VM is stopped and started again first (`up --restart`; by
/// `--name`, the named VM's workspace).
fn running_or_started(target: &Target, restart: bool) -> anyhow::Result<(StateDir, Snapshot)> {
    let dir = match &target.name {
        Some(_) if restart => Some(target.locate()?.read_snapshot()?.workspace),
        _ => target.dir.clone(),
    };
    let start = restart
        || (target.name.is_none() && !matches!(target.locate()?.state(), VmState::Running(_)));
    if start {
        let code = super::up::run(UpArgs::for_dir(dir).restarting(restart))?;
        if code != ExitCode::SUCCESS {
            bail!("the workspace's VM did not start");
        }
    }
    running(target)
}

/// The target's VM, which must be running.
pub(super) fn running(target: &Target) -> anyhow::Result<(StateDir, Snapshot)> {
    let state = target.locate()?;
    let label = state.label();
    match state.state() {
        VmState::Running(_) => {}
        VmState::Starting(_) => bail!("{label} is still starting; wait for `agentvm up` to finish"),
        VmState::Stale(_) => bail!(
            "{label}'s VM is gone (stale state in {}); `agentvm up` starts it again",
            state.dir.display()
        ),
        VmState::Stopped => bail!("the workspace's VM is not running; start it with `agentvm up`"),
    }
    let snap = state.read_snapshot()?;
    Ok((state, snap))
}
