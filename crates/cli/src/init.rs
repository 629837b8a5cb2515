//! `agentvm init`: write a commented `.agentvm/config.toml` for the
//! workspace.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use crate::config::{self, plugins, template, Host, Source};

/// Arguments of `agentvm init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Merge in a plugin: a built-in (claude-code, codex, gemini, opencode)
    /// or the path of a plugin file (repeatable).
    #[arg(long = "plugin", value_name = "NAME")]
    plugins: Vec<String>,
    /// Overwrite an existing configuration file.
    #[arg(long)]
    force: bool,
    /// The workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Writes the file, after checking that it loads.
pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir().context("cannot tell the current directory")?;
    let given = args.dir.clone().unwrap_or_else(|| cwd.clone());
    let workspace = std::fs::canonicalize(&given)
        .with_context(|| format!("cannot use the directory {}", given.display()))?;
    if !workspace.is_dir() {
        bail!("{} is not a directory", given.display());
    }
    let path = config::config_path(&workspace);
    let shown = Source::new(&path, String::new()).shown;
    if path.exists() && !args.force {
        bail!("{shown} already exists; edit it, or pass --force to overwrite it");
    }
    let mut entries: Vec<String> = Vec::new();
    for p in &args.plugins {
        let entry = plugin_entry(p, &cwd, &workspace)?;
        if !entries.contains(&entry) {
            entries.push(entry);
        }
    }
    let text = template::init_text(&config::default_name(&workspace), &workspace, &entries);
    // What is written must load: a bad plugin file fails here, not at `up`.
    let resolved = config::resolve(
        &workspace,
        Some(&Source::new(&path, text.clone())),
        &Host::detect(),
    )?;
    let dir = workspace.join(config::CONFIG_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .create_new(!args.force)
        .open(&path)
        .with_context(|| format!("cannot write {shown}"))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {shown}"))?;
    // The user wrote this (the plugins they named included): approved. A
    // later change, theirs or the guest's, needs `agentvm trust`.
    crate::trust::approve(&resolved)?;
    println!("wrote {shown} and approved it; `agentvm config` shows the result");
    Ok(ExitCode::SUCCESS)
}

/// A `--plugin` as the file lists it: a built-in's name, or a plugin
/// file's path (given relative to the current directory) made relative to
/// the file's directory when it is inside the workspace.
fn plugin_entry(p: &str, cwd: &Path, workspace: &Path) -> anyhow::Result<String> {
    if !plugins::is_file(p) {
        if plugins::built_in(p).is_none() {
            bail!("--plugin: {}", plugins::unknown_message(p));
        }
        return Ok(p.to_string());
    }
    let abs = config::normalize(&cwd.join(p));
    if !abs.is_file() {
        bail!("--plugin {p}: no such file ({})", abs.display());
    }
    Ok(match abs.strip_prefix(workspace) {
        Ok(rel) if rel.starts_with(config::CONFIG_DIR) => {
            match rel.strip_prefix(config::CONFIG_DIR) {
                Ok(inner) => format!("./{}", inner.display()),
                Err(_) => abs.display().to_string(),
            }
        }
        Ok(rel) => format!("../{}", rel.display()),
        Err(_) => abs.display().to_string(),
    })
}
