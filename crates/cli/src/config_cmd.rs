//! `agentvm config`: print the workspace's resolved configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{self, env, render};

/// Arguments of `agentvm config`.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Start looking for `.agentvm/config.toml` in DIR and its parents
    /// [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the configuration as TOML, plugins merged, defaults filled in,
/// host secrets redacted.
pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let cfg = config::load(&dir)?;
    // The file is the workspace's, which the guest may have written.
    print!(
        "{}",
        crate::escape::text(&render::render(&cfg, &env::host_lookup))
    );
    Ok(ExitCode::SUCCESS)
}
