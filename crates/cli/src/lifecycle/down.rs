//! `agentvm down`: stop the workspace's VM and remove its state.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::control::{Client, VersionMismatch};
use super::{kill_and_wait, run_hooks, wait_gone, StateDir, Target, VmState};

/// Arguments of `agentvm down`.
#[derive(Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds the guest gets to power off before the VMM is killed.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
}

/// Stops the VM (gracefully, then by force) and removes its state directory.
pub fn run(args: DownArgs) -> anyhow::Result<ExitCode> {
    // Found from the workspace's path, not its configuration file: the
    // guest may have damaged that, and `down` must still work.
    let state = args.target.locate()?;
    if !state.dir.exists() {
        println!("agentvm: the workspace's VM is not running");
        return Ok(ExitCode::SUCCESS);
    }
    let label = state.label();
    bring_down(&state, Duration::from_secs(args.timeout))?;
    println!("agentvm: {label} is down");
    Ok(ExitCode::SUCCESS)
}

/// What `down` does to the VM of `state` (which exists): the `pre_down`
/// hooks, [`stop`] within `grace`, the git guard's last check, removing the
/// state directory, the `post_down` hooks. `destroy --force` uses it too.
pub fn bring_down(state: &StateDir, grace: Duration) -> anyhow::Result<()> {
    // The hooks are the ones `up` approved, from the checked state
    // directory; never from the workspace's (guest-writable) file.
    let snap = state.read_snapshot().ok();
    if let Some(s) = &snap {
        run_hooks("pre_down", &s.pre_down, &s.workspace);
    }
    stop(state, grace);
    // Live mounts' daemons end with their connections; make sure.
    super::mount::end_all(state);
    // The guest is gone: the last check, which nothing can race.
    if let Some(s) = &snap {
        super::git_guard::undo(state, s);
    }
    state.clean()?;
    if let Some(s) = &snap {
        run_hooks("post_down", &s.post_down, &s.workspace);
    }
    Ok(())
}

/// Stops the VM of `state`: asks the guest to power off within `grace`,
/// then kills the VMM if it still runs. Returns whether it had to kill.
pub fn stop(state: &StateDir, grace: Duration) -> bool {
    match state.state() {
        VmState::Running(pid) => {
            let asked = Client::connect(&state.control()).and_then(|mut vmm| vmm.stop(grace));
            match &asked {
                // It cannot be asked: only killed.
                Err(e) if e.is::<VersionMismatch>() => {
                    eprintln!(
                        "agentvm: warning: {} was started by a different agentvm version; \
                         killing its VMM (pid {pid})",
                        state.label()
                    );
                    kill_and_wait(pid, Duration::from_secs(5));
                    return true;
                }
                Err(e) => tracing::debug!("stop request failed: {e:#}"),
                Ok(()) => {}
            }
            // The VMM stops the VM itself after `grace`; a little more
            // before the last resort.
            if asked.is_err() || !wait_gone(pid, grace + Duration::from_secs(2)) {
                eprintln!(
                    "agentvm: warning: {} did not stop within {} s; killing its VMM (pid {pid})",
                    state.label(),
                    grace.as_secs()
                );
                kill_and_wait(pid, Duration::from_secs(5));
                return true;
            }
            false
        }
        VmState::Stale(Some(pid)) | VmState::Starting(pid) => {
            kill_and_wait(pid, Duration::from_secs(5));
            true
        }
        VmState::Stale(None) | VmState::Stopped => false,
    }
}
