//! `agentvm agent [ARGS…]`: the workspace's coding agent, in its VM.
//!
//! Starts the VM when it is not running (with `up`'s checks, the approval
//! among them), then runs the workspace's agent — the first built-in agent
//! plugin of its configuration, or `--plugin NAME` — in the guest's
//! workspace, with the flag that lets it act without asking (the VM is the
//! sandbox), on a terminal when stdin is one: `agentvm agent` is an
//! interactive Claude Code session, `agentvm agent -p "fix the tests"` a
//! non-interactive one whose exit status is `agent`'s.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentvm_protocol::EXEC_PORT;
use anyhow::{bail, Context};
use clap::Args;

use super::up::{guest_start, UpArgs};
use super::{Target, VmState};
use crate::attach::Agent;
use crate::config::{self, plugins};

/// Arguments of `agentvm agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The built-in agent plugin to run [default: the configuration's
    /// first].
    #[arg(long, value_name = "NAME")]
    plugin: Option<String>,
    /// Arguments for the agent (e.g. `-p "fix the tests"`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<String>,
}

/// The exit status of a command the guest could not find.
const NOT_FOUND: i32 = 127;

/// Runs the agent; its exit status is ours.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let cfg = config::load(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    let agent = choose(&cfg.plugins, args.plugin.as_deref())?;
    let target = Target {
        dir: Some(cfg.workspace.clone()),
        name: None,
    };
    let state = target.locate()?;
    if !matches!(state.state(), VmState::Running(_)) {
        let code = super::up::run(UpArgs::for_dir(Some(cfg.workspace.clone())))?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    let snap = state.read_snapshot()?;
    let tty = std::io::stdin().is_terminal();
    let mut start = guest_start(argv(agent, &args.args), &snap, tty);
    // Claude Code accepts its skip flag as root only when told it is in a
    // sandbox; harmless for the others.
    start.env.push((b"IS_SANDBOX".to_vec(), b"1".to_vec()));
    let client = Agent {
        uds: &state.vsock(),
        port: EXEC_PORT,
        wait: None,
    };
    let code = client
        .exec_code(start)
        .with_context(|| format!("cannot run {} in the VM", agent.command));
    super::git_guard::undo(&state, &snap);
    let code = code?;
    if code == NOT_FOUND {
        eprintln!(
            "agentvm: `{}` is not in this VM's image; an image with the agents comes from \
             `agentvm image build` with its root file system (see `agentvm image build --help`)",
            agent.command
        );
    }
    Ok(ExitCode::from((code & 0xff) as u8))
}

/// The agent `--plugin` names, or the first built-in agent of `plugins`.
fn choose(plugins: &[String], wanted: Option<&str>) -> anyhow::Result<&'static plugins::BuiltIn> {
    if let Some(name) = wanted {
        return plugins::built_in(name)
            .with_context(|| format!("--plugin: {}", plugins::unknown_message(name)));
    }
    match plugins.iter().find_map(|p| plugins::built_in(p)) {
        Some(b) => Ok(b),
        None => bail!(
            "this workspace's configuration has no agent plugin; add one to `plugins` \
             (built-in: {}) or pass --plugin NAME",
            plugins::built_in_names()
        ),
    }
}

/// The agent's command line: its command, its unattended flags, `args`.
fn argv(agent: &plugins::BuiltIn, args: &[String]) -> Vec<Vec<u8>> {
    std::iter::once(agent.command)
        .chain(agent.unattended.iter().copied())
        .map(|s| s.as_bytes().to_vec())
        .chain(args.iter().map(|a| a.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_agent_plugin_runs_unattended_with_the_users_arguments() {
        let listed = vec![
            "./tools.toml".to_string(),
            "codex".into(),
            "claude-code".into(),
        ];
        assert_eq!(choose(&listed, None).unwrap().name, "codex");
        let claude = choose(&listed, Some("claude-code")).unwrap();
        let args = vec!["-p".to_string(), "fix the tests".into()];
        assert_eq!(
            argv(claude, &args),
            [
                b"claude".to_vec(),
                b"--dangerously-skip-permissions".to_vec(),
                b"-p".to_vec(),
                b"fix the tests".to_vec()
            ]
        );
        let none = choose(&["./x.toml".to_string()], None).unwrap_err();
        assert!(none.to_string().contains("no agent plugin"), "{none}");
        assert!(choose(&listed, Some("vim")).is_err());
    }
}
