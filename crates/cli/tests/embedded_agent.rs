//! An installed agentvm is complete: copied out of the build tree and run
//! from a directory outside the checkout, with no cargo on PATH and no
//! cargo variables, it still knows its guest agent, and `image build` puts
//! exactly that agent (the bytes built into the binary) in the initramfs.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The agent the build script embedded (the same file `include_bytes!`
/// reads).
fn embedded() -> Vec<u8> {
    std::fs::read(concat!(env!("OUT_DIR"), "/agentvm-guest")).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// agentvm "installed": a copy in its own `bin/` under a temporary
/// directory, nothing next to it.
struct Installed {
    dir: tempfile::TempDir,
}

impl Installed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::create_dir(dir.path().join("cwd")).unwrap();
        std::fs::copy(
            env!("CARGO_BIN_EXE_agentvm"),
            dir.path().join("bin/agentvm"),
        )
        .unwrap();
        Installed { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `agentvm ARGS…` from `cwd/` with the environment cleared but for
    /// HOME and a PATH of the installed `bin/` and this PATH's directories
    /// without cargo or rustc.
    fn run(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut dirs = vec![self.path("bin")];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path).filter(|d| {
                !d.join("cargo").exists() && !d.join("rustc").exists() && d.is_absolute()
            }));
        }
        let path = std::env::join_paths(&dirs).unwrap();
        let mut cmd = Command::new(self.path("bin/agentvm"));
        cmd.args(args)
            .current_dir(self.path("cwd"))
            .env_clear()
            .env("PATH", &path)
            .env("AGENTVM_LOG", "error");
        for var in ["HOME", "XDG_CACHE_HOME"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // The precondition: nothing could build an agent here.
        let has_cargo = std::env::split_paths(&path).any(|d| d.join("cargo").exists());
        assert!(!has_cargo, "cargo is still on {path:?}");
        cmd.output().unwrap()
    }
}

#[test]
fn version_names_the_built_in_agent_without_cargo_or_sources() {
    let agentvm = Installed::new();
    let o = agentvm.run(&["--version"], &[]);
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    let digest = hex(&Sha256::digest(embedded()));
    assert!(
        text.contains(&format!("guest agent: built in, sha256 {digest}")),
        "{text}"
    );
    // `-V` stays one line.
    let o = agentvm.run(&["-V"], &[]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
}

/// The entries of a newc cpio archive: `(name, data)`.
fn cpio_entries(mut d: &[u8]) -> Vec<(String, Vec<u8>)> {
    let field = |h: &[u8], i: usize| {
        let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap();
        usize::from_str_radix(s, 16).unwrap()
    };
    let pad = |n: usize| n.div_ceil(4) * 4;
    let mut out = Vec::new();
    // Bounded: every entry consumes at least its 110-byte header.
    while d.len() >= 110 {
        assert_eq!(&d[..6], b"070701", "not a newc header");
        let (size, name_len) = (field(d, 6), field(d, 11));
        let name = String::from_utf8_lossy(&d[110..110 + name_len - 1]).into_owned();
        if name == "TRAILER!!!" {
            break;
        }
        let data_at = pad(110 + name_len);
        out.push((name, d[data_at..data_at + size].to_vec()));
        d = &d[pad(data_at + size).min(d.len())..];
    }
    out
}

/// The whole path on a machine with apt (as the other image build tests):
/// Debian's kernel and busybox-static through apt, the agent from inside
/// the binary.
#[test]
fn image_build_outside_the_checkout_installs_the_built_in_agent() {
    let has_apt = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("apt-get").is_file()));
    if !has_apt {
        eprintln!("skipped: needs apt-get");
        return;
    }
    let agentvm = Installed::new();
    let out = agentvm.path("image");
    let o = agentvm.run(
        &["image", "build", "--out", out.to_str().unwrap()],
        &[("XDG_DATA_HOME", &agentvm.path("data"))],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let embedded = embedded();
    let digest = hex(&Sha256::digest(&embedded));
    assert!(
        stdout.contains(&format!("agent built in (sha256 {digest})")),
        "{stdout}"
    );
    let initrd = std::fs::read(out.join("initrd.img")).unwrap();
    let init = cpio_entries(&initrd)
        .into_iter()
        .find(|(name, _)| name == "init")
        .expect("no /init in initrd.img")
        .1;
    assert!(init == embedded, "/init is not the built-in agent");
    assert_eq!(&init[..4], b"\x7fELF");
    let copy = agentvm.path("init");
    std::fs::write(&copy, &init).unwrap();
    assert!(agentvm_image::is_static(&copy).unwrap());
}
