//! Embeds the static guest agent in `agentvm`, so that `agentvm image
//! build` works wherever agentvm is installed (no source tree, no cargo at
//! run time).
//!
//! The agent is `AGENTVM_GUEST_AGENT` (a prebuilt static `agentvm-guest`,
//! what the Nix flake passes), else `agentvm-guest` built here from
//! `guest/agent`: release, `x86_64-unknown-linux-gnu` with `+crt-static`,
//! by a nested cargo in its own target directory (`guest-static` in
//! the outer build's, shared by debug, release, test and clippy builds and
//! never locked by the outer cargo). Either way it must be a static x86-64
//! ELF, checked here; the bytes are copied to `OUT_DIR/agentvm-guest` for
//! `include_bytes!` and their sha256 is `AGENTVM_EMBEDDED_AGENT_SHA256`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

#[allow(dead_code)] // the CLI uses the rest
#[path = "src/guest_agent/elf.rs"]
mod elf;

/// A prebuilt static agent to embed instead of building one.
const OVERRIDE: &str = "AGENTVM_GUEST_AGENT";
/// The guest's target: the agent runs on the host's architecture.
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The name of the embedded copy in `OUT_DIR`.
const EMBEDDED: &str = "agentvm-guest";

fn main() {
    if let Err(e) = run() {
        // Cargo shows a failed build script's stderr.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?);
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or("cargo did not set CARGO_MANIFEST_DIR")?,
    );
    println!("cargo:rerun-if-env-changed={OVERRIDE}");
    let prebuilt = env::var_os(OVERRIDE).filter(|v| !v.is_empty());
    let (agent, how) = match prebuilt {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            (path, OVERRIDE.to_string())
        }
        None => {
            let ws = manifest_dir
                .parent()
                .and_then(Path::parent)
                .ok_or("crates/cli has no workspace above it")?;
            (build(ws, &out_dir)?, "built from guest/agent".to_string())
        }
    };
    let bytes = fs::read(&agent)
        .map_err(|e| format!("cannot read the guest agent {}: {e}", agent.display()))?;
    if let Err(why) = elf::check_static_x86_64(&bytes) {
        return Err(format!(
            "the guest agent {} ({how}) is {}; agentvm embeds a static x86-64 agentvm-guest \
             (RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target {TARGET} \
             -p agentvm-guest)",
            agent.display(),
            why.reason()
        ));
    }
    let dest = out_dir.join(EMBEDDED);
    fs::write(&dest, &bytes).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=AGENTVM_EMBEDDED_AGENT_SHA256={digest}");
    Ok(())
}

/// `cargo build --release -p agentvm-guest` for [`TARGET`] with
/// `+crt-static`, locked to the workspace's Cargo.lock; returns the binary.
fn build(ws: &Path, out_dir: &Path) -> Result<PathBuf, String> {
    let agent_dir = ws.join("guest/agent");
    if !agent_dir.join("Cargo.toml").is_file() {
        return Err(format!(
            "the guest agent's sources are not at {}: set {OVERRIDE} to a static agentvm-guest",
            agent_dir.display()
        ));
    }
    // What the agent is built from (crates.io sources never change under a
    // version in Cargo.lock). A directory is scanned as a whole.
    for watched in ["guest/agent", "guest/protocol", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", ws.join(watched).display());
    }
    let target_dir = nested_target_dir(out_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(ws)
        .args(["build", "--locked", "--release", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["-p", "agentvm-guest", "--bin", "agentvm-guest"])
        // Our stdout is read by cargo as instructions.
        .stdout(Stdio::from(std::io::stderr()));
    for (key, _) in env::vars_os() {
        if inherited_by_mistake(&key.to_string_lossy()) {
            cmd.env_remove(&key);
        }
    }
    // The only flags of this build (this variable wins over every other
    // source of rustflags); its intermediate files stay in its own target
    // directory even if a build-dir is configured (the outer cargo holds
    // that one's lock).
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_BUILD_BUILD_DIR", &target_dir);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if !status.success() {
        return Err(format!(
            "cargo could not build the static guest agent ({status}; its output is above); \
             or set {OVERRIDE} to a static agentvm-guest to embed"
        ));
    }
    Ok(target_dir.join(TARGET).join("release/agentvm-guest"))
}

/// Variables the outer cargo (or `cargo clippy`) set that would change
/// what the nested cargo builds or where: the target and its flags, the
/// target directory, clippy's compiler wrapper, this package's build
/// script environment.
fn inherited_by_mistake(key: &str) -> bool {
    matches!(
        key,
        "RUSTFLAGS"
            | "RUSTDOCFLAGS"
            | "RUSTC_WORKSPACE_WRAPPER"
            | "CARGO_TARGET_DIR"
            | "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_PRIMARY_PACKAGE"
            | "OUT_DIR"
            | "TARGET"
            | "HOST"
            | "PROFILE"
            | "OPT_LEVEL"
            | "DEBUG"
    ) || [
        "CARGO_BUILD_",
        "CARGO_ENCODED_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "__CARGO",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// `guest-static` in the outer build's target directory (`OUT_DIR` is
/// `<target>/[<triple>/]<profile>/build/agentvm-<hash>/out`), so every
/// profile of the outer build shares one agent build; in `OUT_DIR` if its
/// layout is another.
fn nested_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent()?.parent())
        .unwrap_or(out_dir)
        .join("guest-static")
}
