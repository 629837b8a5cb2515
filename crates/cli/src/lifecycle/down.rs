//! `agentvm down`: stop the workspace's VM and remove its state.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::control::{self, Request};
use super::{kill_and_wait, run_hooks, wait_gone, StateDir, VmState};
use crate::config;

/// Arguments of `agentvm down`.
#[derive(Args, Debug)]
pub struct DownArgs {
    /// The workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds the guest gets to power off before the VMM is killed.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
}

/// Stops the VM (gracefully, then by force) and removes its state directory.
pub fn run(args: DownArgs) -> anyhow::Result<ExitCode> {
    let cfg = config::load(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    let state = StateDir::of(&cfg.name);
    if !state.dir.exists() {
        println!("agentvm: {} is not running", cfg.name);
        return Ok(ExitCode::SUCCESS);
    }
    let snap = state.read_snapshot().ok();
    let workspace = snap
        .as_ref()
        .map_or(cfg.workspace.clone(), |s| s.workspace.clone());
    if let Some(s) = &snap {
        run_hooks("pre_down", &s.pre_down, &workspace);
    }
    let grace = Duration::from_secs(args.timeout);
    match state.state() {
        VmState::Running(pid) => {
            let asked = control::request(
                &state.control(),
                &Request::Stop {
                    grace_ms: Some(grace.as_millis() as u64),
                },
            );
            if let Err(e) = &asked {
                tracing::debug!("stop request failed: {e:#}");
            }
            // The VMM stops the VM itself after `grace`; a little more
            // before the last resort.
            if asked.is_err() || !wait_gone(pid, grace + Duration::from_secs(2)) {
                eprintln!(
                    "agentvm: warning: {} did not stop within {} s; killing its VMM (pid {pid})",
                    cfg.name, args.timeout
                );
                kill_and_wait(pid, Duration::from_secs(5));
            }
        }
        VmState::Stale(Some(pid)) | VmState::Starting(pid) => {
            kill_and_wait(pid, Duration::from_secs(5));
        }
        VmState::Stale(None) | VmState::Stopped => {}
    }
    state.clean()?;
    if let Some(s) = &snap {
        run_hooks("post_down", &s.post_down, &workspace);
    }
    println!("agentvm: {} is down", cfg.name);
    Ok(ExitCode::SUCCESS)
}
