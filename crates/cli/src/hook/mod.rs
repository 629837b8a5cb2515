//! `agentvm hook bash|zsh|fish`: the shell hook that opens `agentvm shell`
//! when the user `cd`s into a workspace whose configuration they approved
//! (nixcage's auto-enter), and `agentvm __hook-check`, which decides.
//!
//! The shell code ([`BASH`], [`ZSH`], [`FISH`]) stays tiny: at each prompt
//! whose directory differs from the last one it asks `__hook-check`, passing
//! the workspace it was in before, and runs `agentvm shell` when told to.
//! Every decision is here, in [`decide`]:
//! - outside a workspace with a configuration file: nothing (a directory
//!   without one runs on agentvm's defaults, and the hook must not turn
//!   every directory into a VM); the home directory is never entered, even
//!   with a `~/.agentvm/config.toml`;
//! - in the same workspace as before (a `cd` within it, or the prompt after
//!   leaving `agentvm shell`): nothing, so leaving the shell does not open
//!   it again;
//! - in an approved workspace, newly: enter;
//! - in a workspace whose configuration is not approved, changed since, or
//!   does not load: one line saying to run `agentvm trust` (or what is
//!   wrong), once per arrival, and nothing else;
//! - `AGENTVM_HOOK=off`: nothing, ever.
//!
//! `__hook-check` prints the workspace it found (or nothing) on stdout, for
//! the shell to pass back next time, and exits 0 only to say "enter". It
//! never fails loudly: any error means "do not enter". It reads the
//! workspace's configuration to check its approval, as `up` does, and runs
//! nothing from it.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::escape;
use crate::trust::Standing;

/// The bash hook.
pub const BASH: &str = include_str!("hook.bash");
/// The zsh hook.
pub const ZSH: &str = include_str!("hook.zsh");
/// The fish hook.
pub const FISH: &str = include_str!("hook.fish");

/// The environment variable that turns the hook off (`off`).
pub const OPT_OUT: &str = "AGENTVM_HOOK";

/// The shells agentvm has a hook for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// bash: `eval "$(agentvm hook bash)"` in ~/.bashrc.
    Bash,
    /// zsh: `eval "$(agentvm hook zsh)"` in ~/.zshrc.
    Zsh,
    /// fish: `agentvm hook fish | source` in ~/.config/fish/config.fish.
    Fish,
}

impl Shell {
    /// The hook's text.
    pub fn script(self) -> &'static str {
        match self {
            Shell::Bash => BASH,
            Shell::Zsh => ZSH,
            Shell::Fish => FISH,
        }
    }
}

/// Arguments of `agentvm hook`.
#[derive(Args, Debug)]
pub struct HookArgs {
    /// The shell to print the hook for.
    shell: Shell,
}

/// Prints the hook.
pub fn run(args: HookArgs) -> anyhow::Result<ExitCode> {
    print!("{}", args.shell.script());
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `agentvm __hook-check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The workspace the shell was in at its last check (empty: none).
    #[arg(long, value_name = "DIR", default_value = "")]
    previous: OsString,
    /// The directory the shell is in now.
    dir: PathBuf,
}

/// What the hook does in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not in a workspace (with a configuration file) the hook enters.
    Outside,
    /// In the workspace it was in before: nothing again.
    Same(PathBuf),
    /// Newly in an approved workspace: open `agentvm shell`.
    Enter(PathBuf),
    /// Newly in a workspace it must not enter; the line says why.
    Refused(PathBuf, String),
}

/// Answers the hook: the workspace on stdout, exit 0 to enter.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if std::env::var_os(OPT_OUT).is_some_and(|v| v == "off") {
        return Ok(ExitCode::FAILURE);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let previous = Some(Path::new(&args.previous)).filter(|p| !p.as_os_str().is_empty());
    let verdict = decide(&args.dir, previous, home.as_deref(), &|ws| {
        let cfg = crate::config::load(ws)?;
        crate::trust::standing(&cfg)
    });
    let ws = match &verdict {
        Verdict::Outside => return Ok(ExitCode::FAILURE),
        Verdict::Same(ws) | Verdict::Enter(ws) | Verdict::Refused(ws, _) => ws,
    };
    // Its bytes as they are: the shell passes them back as `--previous`.
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(ws.as_os_str().as_encoded_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match verdict {
        Verdict::Enter(_) => Ok(ExitCode::SUCCESS),
        Verdict::Refused(_, why) => {
            eprintln!("agentvm: {why}");
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::FAILURE),
    }
}

/// What the hook does in `dir`, having been in the workspace `previous`;
/// `standing` says how a workspace's configuration stands.
pub fn decide(
    dir: &Path,
    previous: Option<&Path>,
    home: Option<&Path>,
    standing: &dyn Fn(&Path) -> anyhow::Result<Standing>,
) -> Verdict {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Verdict::Outside;
    };
    let home = home.and_then(|h| std::fs::canonicalize(h).ok());
    let ws = crate::config::find_workspace(&dir, home.as_deref());
    if ws.config.is_none() || Some(&ws.dir) == home.as_ref() {
        return Verdict::Outside;
    }
    if previous == Some(ws.dir.as_path()) {
        return Verdict::Same(ws.dir);
    }
    let shown = escape::line(&ws.dir.display().to_string()).into_owned();
    let why = match standing(&ws.dir) {
        Ok(Standing::Approved) => return Verdict::Enter(ws.dir),
        Ok(Standing::New(_)) => format!(
            "the configuration of {shown} is not approved: run `agentvm trust` there to \
             review it and have the hook open its VM"
        ),
        Ok(Standing::Changed { .. }) => format!(
            "the configuration of {shown} changed since you approved it: run `agentvm trust` \
             there to review the changes and have the hook open its VM"
        ),
        Err(e) => format!(
            "the configuration of {shown} does not load, so the hook does not open its VM \
             (`agentvm config` there shows why): {}",
            escape::line(&format!("{e:#}"))
        ),
    };
    Verdict::Refused(ws.dir, why)
}

#[cfg(test)]
mod tests;
