//! Approvals: a workspace's configuration runs host commands (hooks),
//! shares host directories, hands host values to the guest and sets the
//! egress policy, and it lives in the workspace, where the guest (or
//! whoever wrote a cloned repository) can change it. So it takes effect
//! only once the user approved its exact content.
//!
//! An approval is a file outside every share,
//! `$XDG_CONFIG_HOME/agentvm/approved/<workspace id>.json`, holding the
//! approved [`View`] and its digest. The id is the digest of the
//! workspace's canonical path, so moving a workspace needs a new approval;
//! the view includes every plugin file's digest, so editing one does too.
//! `agentvm init` approves what it writes; `agentvm trust` approves what is
//! there now, after showing it. A workspace without a configuration file
//! runs on agentvm's defaults, which need no approval: nothing in the
//! workspace chose them.

pub mod summary;
pub mod view;

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::config::{self, ResolvedConfig};
pub use view::View;

/// An approval as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Approval {
    /// The workspace it is for.
    workspace: PathBuf,
    /// [`View::digest`] of `view`.
    digest: String,
    /// What was approved, to show what changed since.
    view: View,
}

/// Where approvals live.
fn approvals_dir() -> anyhow::Result<PathBuf> {
    crate::paths::config_dir()
        .map(|d| crate::paths::approvals(&d))
        .context(
            "neither XDG_CONFIG_HOME nor HOME is set, so agentvm has nowhere to keep approvals",
        )
}

fn approval_path(dir: &Path, cfg: &ResolvedConfig) -> PathBuf {
    dir.join(format!("{}.json", cfg.id))
}

/// How the current configuration stands.
#[derive(Debug)]
pub enum Standing {
    /// Approved as it is.
    Approved,
    /// Never approved (or the workspace moved).
    New(Box<View>),
    /// Approved once, changed since.
    Changed {
        /// What was approved.
        old: Box<View>,
        /// What is there now.
        new: Box<View>,
    },
}

impl Standing {
    /// The summary for the user.
    pub fn summary(&self) -> String {
        match self {
            Standing::Approved => String::new(),
            Standing::New(v) => summary::full(v),
            Standing::Changed { old, new } => summary::changes(old, new),
        }
    }
}

/// Whether `cfg` is approved as it is.
pub fn standing(cfg: &ResolvedConfig) -> anyhow::Result<Standing> {
    standing_in(&approvals_dir()?, cfg)
}

/// Whether `cfg` is approved in the approvals directory `dir`.
fn standing_in(dir: &Path, cfg: &ResolvedConfig) -> anyhow::Result<Standing> {
    let new = View::of(cfg);
    let path = approval_path(dir, cfg);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Standing::New(Box::new(new)))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
        }
    };
    // A damaged or foreign record approves nothing.
    let Ok(old) = serde_json::from_slice::<Approval>(&text) else {
        return Ok(Standing::New(Box::new(new)));
    };
    // Approved is the digest; the view is kept to say what changed.
    if old.workspace == cfg.workspace && old.digest == new.digest() {
        return Ok(Standing::Approved);
    }
    if old.workspace != cfg.workspace {
        return Ok(Standing::New(Box::new(new)));
    }
    Ok(Standing::Changed {
        old: Box::new(old.view),
        new: Box::new(new),
    })
}

/// Fails, with the summary and what to do, unless `cfg` is approved and
/// no read-write share exposes the approvals themselves.
pub fn require(cfg: &ResolvedConfig) -> anyhow::Result<()> {
    // No file, no plugins: agentvm's own defaults (the workspace shared,
    // nothing run on the host), which nothing in the workspace chose.
    if cfg.file.is_none() {
        return check_shares(cfg);
    }
    let standing = standing(cfg)?;
    let why = match &standing {
        Standing::Approved => return check_shares(cfg),
        Standing::New(_) => "is not approved yet",
        Standing::Changed { .. } => "changed since you approved it",
    };
    let file = cfg
        .file
        .as_deref()
        .map_or_else(|| "its defaults".to_string(), |f| f.display().to_string());
    bail!(
        "the configuration of {} {why}; nothing was started and no hook ran.\n{}\
         Review it ({}{}), then run `agentvm trust` to approve it",
        crate::escape::line(&cfg.workspace.display().to_string()),
        standing.summary(),
        crate::escape::line(&file),
        if cfg.plugin_files.is_empty() {
            ""
        } else {
            " and its plugin files"
        },
    )
}

/// A read-write share that holds agentvm's approvals would let the guest
/// approve its own configuration.
pub fn check_shares(cfg: &ResolvedConfig) -> anyhow::Result<()> {
    let Some(dir) = crate::paths::config_dir() else {
        return Ok(());
    };
    if let Some(m) = exposing(cfg, &dir) {
        bail!(
            "{}: the read-write mount of {} holds {}, where agentvm keeps your approvals: \
             the guest could approve its own configuration; mount a narrower directory or \
             make it read-only",
            m.origin,
            m.source.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The first read-write share of `cfg` that holds `dir`.
fn exposing<'a>(cfg: &'a ResolvedConfig, dir: &Path) -> Option<&'a config::Mount> {
    cfg.mounts
        .iter()
        .find(|m| !m.read_only && dir.starts_with(&m.source))
}

/// Records `cfg` as approved.
pub fn approve(cfg: &ResolvedConfig) -> anyhow::Result<PathBuf> {
    approve_in(&approvals_dir()?, cfg)
}

/// Records `cfg` as approved in the approvals directory `dir`.
fn approve_in(dir: &Path, cfg: &ResolvedConfig) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let view = View::of(cfg);
    let record = Approval {
        workspace: cfg.workspace.clone(),
        digest: view.digest(),
        view,
    };
    let json = serde_json::to_vec_pretty(&record).context("cannot encode the approval")?;
    let path = approval_path(dir, cfg);
    let tmp = dir.join(format!(".{}.{}.tmp", cfg.id, std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    Ok(path)
}

/// Arguments of `agentvm trust`.
#[derive(Args, Debug)]
pub struct TrustArgs {
    /// The workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Shows the configuration (or what changed) and approves it.
pub fn run(args: TrustArgs) -> anyhow::Result<ExitCode> {
    let cfg = config::load(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    check_shares(&cfg)?;
    let ws = crate::escape::line(&cfg.workspace.display().to_string()).into_owned();
    match standing(&cfg)? {
        Standing::Approved => {
            println!("agentvm: the configuration of {ws} is already approved");
            return Ok(ExitCode::SUCCESS);
        }
        s @ Standing::New(_) => print!(
            "agentvm: approving the configuration of {ws}:\n{}",
            s.summary()
        ),
        s @ Standing::Changed { .. } => print!(
            "agentvm: approving these changes to the configuration of {ws}:\n{}",
            s.summary()
        ),
    }
    let path = approve(&cfg)?;
    println!("agentvm: approved (recorded in {})", path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
