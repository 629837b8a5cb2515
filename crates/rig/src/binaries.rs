//! The binaries the rig puts into its guests: agentvm, `rig-stamp`,
//! `rig-vsock`, `rig-mock-llm` and `rig-tls-echo` (L1), the guest agent
//! `agentvm-guest` (L2) and agentvm-vmm's examples, all built static (`-C target-feature=+crt-static`) into their own target directory
//! so the build does not fight the workspace's normal one.

use std::path::{Path, PathBuf};
use std::process::Command;

use agentvm_image::{run, ImageError};

/// Environment variable naming a prebuilt agentvm binary to use instead of
/// building one.
pub const BIN_ENV: &str = "AGENTVM_RIG_BIN";

/// agentvm-vmm's examples the rig runs.
pub const EXAMPLES: &[&str] = &["boot_and_exec", "vhost_user_net"];

/// The target triple of the static build.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The built binaries.
#[derive(Debug, Clone)]
pub struct StaticBinaries {
    /// agentvm.
    pub agentvm: PathBuf,
    /// rig-stamp.
    pub stamp: PathBuf,
    /// rig-vsock.
    pub vsock: PathBuf,
    /// rig-mock-llm.
    pub mock_llm: PathBuf,
    /// rig-tls-echo.
    pub tls_echo: PathBuf,
    /// The guest agent.
    pub agent: PathBuf,
    /// Where agentvm-vmm's examples are.
    pub examples: PathBuf,
}

impl StaticBinaries {
    /// agentvm-vmm's example `name`.
    pub fn example(&self, name: &str) -> PathBuf {
        self.examples.join(name)
    }
}

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// Builds what is needed: agentvm (unless [`BIN_ENV`] names one),
/// rig-stamp, rig-vsock, the guest agent and the [`EXAMPLES`], in
/// `<workspace>/target/rig-static`.
pub fn build() -> Result<StaticBinaries, ImageError> {
    let ws = workspace_root();
    let target_dir = ws.join("target/rig-static");
    let prebuilt = std::env::var_os(BIN_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&ws)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .args([
            "-p",
            "agentvm-rig",
            "--bin",
            "rig-stamp",
            "--bin",
            "rig-vsock",
            "--bin",
            "rig-mock-llm",
            "--bin",
            "rig-tls-echo",
        ])
        .args(["-p", "agentvm-guest", "--bin", "agentvm-guest"])
        .args(["-p", "agentvm-vmm"])
        .args(EXAMPLES.iter().flat_map(|e| ["--example", e]));
    if prebuilt.is_none() {
        cmd.args(["-p", "agentvm", "--bin", "agentvm"]);
    }
    // The outer cargo may have set flags for the host build; this build's
    // flags are exactly these.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    run(
        &mut cmd,
        "cargo build (static agentvm, guest agent, rig helpers, examples)",
    )?;
    let out = target_dir.join(TARGET).join("release");
    let agentvm = match prebuilt {
        Some(p) if p.is_file() => p,
        Some(p) => {
            return Err(ImageError::io(
                "AGENTVM_RIG_BIN does not name a file:",
                &p,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ))
        }
        None => out.join("agentvm"),
    };
    Ok(StaticBinaries {
        agentvm,
        stamp: out.join("rig-stamp"),
        vsock: out.join("rig-vsock"),
        mock_llm: out.join("rig-mock-llm"),
        tls_echo: out.join("rig-tls-echo"),
        agent: out.join("agentvm-guest"),
        examples: out.join("examples"),
    })
}
