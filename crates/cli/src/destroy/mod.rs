//! `agentvm destroy`: remove everything agentvm keeps for the workspace
//! ([`places`]), after showing it and asking.
//!
//! What a user gets:
//! - the list of what exists, each with its size, and what is kept (the
//!   workspace and its `.agentvm/config.toml`, which is the user's; an
//!   `agent_home` the configuration names; shared image layers);
//! - a `y/N` question on a terminal; without one, nothing is removed
//!   unless `--yes` says so;
//! - a running VM is not stopped behind the user's back: `destroy` refuses
//!   and names both ways on (`agentvm down`, or `destroy --force`, which
//!   stops it as `down` does: hooks, the git guard's last check);
//! - afterwards, what was removed and how much space that freed; a second
//!   run finds nothing to remove.
//!
//! The workspace is found from its path (as `down` finds it), never from
//! what its configuration says: the guest can write that file.

pub mod places;
pub mod remove;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::escape;
use crate::lifecycle::{check_private, StateDir, VmState};
use places::{Place, Roots};

/// Arguments of `agentvm destroy`.
#[derive(Args, Debug)]
pub struct DestroyArgs {
    /// The workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Remove without asking (what scripts, which have no terminal, need).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Stop the workspace's VM first, as `agentvm down` does, when it runs.
    #[arg(long)]
    force: bool,
    /// Seconds the guest gets to power off (with --force).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
}

/// A place that exists, measured.
struct Found {
    place: Place,
    bytes: u64,
}

/// Lists, confirms and removes.
pub fn run(args: DestroyArgs) -> anyhow::Result<ExitCode> {
    let ws = workspace(args.dir.as_deref())?;
    let shown_ws = escape::line(&ws.dir.display().to_string()).into_owned();
    if !ws.dir.exists() {
        println!(
            "agentvm: {shown_ws} does not exist (any more): looking for what agentvm keeps for \
             that path"
        );
    }
    let roots = Roots::detect();
    check_private(&roots.state_root)?;
    let state = StateDir::of_workspace(&ws.dir);
    check_private(&state.dir)?;
    let vm = state.dir.exists().then(|| state.state());
    if let Some(VmState::Running(_) | VmState::Starting(_)) = vm {
        if !args.force {
            bail!(
                "the VM {} of {shown_ws} is running: `agentvm down` first, or \
                 `agentvm destroy --force` stops it",
                state.label()
            );
        }
    }
    let id = crate::paths::workspace_id(&ws.dir);
    let found = existing(places::of_workspace(&roots, &id), &ws.dir)?;
    if found.is_empty() {
        println!("agentvm: nothing to remove for {shown_ws}");
        print_kept(&ws);
        return Ok(ExitCode::SUCCESS);
    }
    let total: u64 = found.iter().map(|f| f.bytes).sum();
    println!("agentvm: destroy removes what agentvm keeps for {shown_ws}:");
    for f in &found {
        println!(
            "  {:<32} {:>10}  {}",
            f.place.what,
            remove::human(f.bytes),
            escape::line(&f.place.path.display().to_string())
        );
    }
    print_kept(&ws);
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!("nothing was removed: there is no terminal to ask on; run `agentvm destroy --yes` to remove all this");
        }
        if !ask(&format!(
            "Remove all this ({})? [y/N] ",
            remove::human(total)
        ))? {
            println!("agentvm: nothing was removed");
            return Ok(ExitCode::SUCCESS);
        }
    }
    if vm.is_some() {
        // Stopped, stale or (with --force) running: what `down` does, so
        // the hooks run and the git guard checks the workspace a last time
        // before its records go.
        if let Some(VmState::Running(_) | VmState::Starting(_)) = vm {
            println!("agentvm: stopping {} first", state.label());
        }
        crate::lifecycle::down::bring_down(&state, Duration::from_secs(args.timeout))?;
    }
    let mut freed = 0;
    let mut failed = Vec::new();
    for f in &found {
        match remove::remove(&f.place.path) {
            Ok(()) => {
                freed += f.bytes;
                println!(
                    "agentvm: removed {} ({})",
                    f.place.what,
                    escape::line(&f.place.path.display().to_string())
                );
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    println!("agentvm: freed {}", remove::human(freed));
    if !failed.is_empty() {
        bail!("some of it could not be removed: {}", failed.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The workspace of `dir` (default: the current directory), found as
/// `down` finds it. A `--dir` that does not exist (the user removed the
/// checkout first) is taken as the absolute path it names, so that what
/// agentvm kept for it can still go (the id is of the canonical path: give
/// the path without symbolic links, as the workspace was used).
fn workspace(dir: Option<&Path>) -> anyhow::Result<crate::config::Workspace> {
    let start = dir.unwrap_or(Path::new("."));
    let canonical = match std::fs::canonicalize(start) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_some() => {
            let cwd = std::env::current_dir().context("cannot find the current directory")?;
            return Ok(crate::config::Workspace {
                dir: crate::config::normalize(&cwd.join(start)),
                config: None,
            });
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot use the directory {}", start.display())))
        }
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    Ok(crate::config::find_workspace(&canonical, home.as_deref()))
}

/// The places of `all` that exist, measured; fails on one that is not this
/// user's, or that holds the workspace (then something is badly wrong
/// with the directories agentvm was given, and nothing is removed).
fn existing(all: Vec<Place>, workspace: &Path) -> anyhow::Result<Vec<Found>> {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::getuid().as_raw();
    let mut out = Vec::new();
    for place in all {
        let meta = match std::fs::symlink_metadata(&place.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot read {}", place.path.display()))
                )
            }
        };
        if meta.uid() != uid {
            bail!(
                "{} is not yours (owner uid {}), so agentvm removes nothing; look at it first",
                place.path.display(),
                meta.uid()
            );
        }
        if workspace.starts_with(&place.path) {
            bail!(
                "{} holds the workspace, so agentvm removes nothing",
                place.path.display()
            );
        }
        let bytes = remove::disk_usage(&place.path).unwrap_or(0);
        out.push(Found { place, bytes });
    }
    Ok(out)
}

/// Says what `destroy` leaves alone.
fn print_kept(ws: &crate::config::Workspace) {
    if let Some(file) = &ws.config {
        println!(
            "  kept: {} (your configuration; remove it yourself if you want it gone)",
            escape::line(&file.display().to_string())
        );
    }
    println!("  kept: the workspace's files, and the image layers every workspace shares (`agentvm image prune`)");
    // The configuration only names a directory here, for the user to see;
    // it never decides what is removed (the guest can write it).
    let own = crate::paths::data_dir()
        .map(|d| crate::paths::agent_home(&d, &crate::paths::workspace_id(&ws.dir)));
    if let Ok(cfg) = crate::config::load(&ws.dir) {
        if let Some(home) = cfg.agent_home.filter(|h| Some(h) != own.as_ref()) {
            println!(
                "  kept: {} (the agent home your configuration names; remove it yourself)",
                escape::line(&home.display().to_string())
            );
        }
    }
}

/// Asks `question` on the terminal; true for `y` or `yes`.
fn ask(question: &str) -> anyhow::Result<bool> {
    let mut err = std::io::stderr();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
