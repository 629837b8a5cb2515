//! What the CLI's test files share: running `agentvm`, reading its one-line
//! errors, and the tiny guest that prints a line and resets.
// Each test file uses its own subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `agentvm ARGS…` with `env` added, quiet logging, output collected.
pub fn agentvm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvm"));
    cmd.args(args).env("AGENTVM_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The single `agentvm: error:` line of a failed command.
pub fn one_line_error(o: &Output) -> String {
    assert_ne!(o.status.code(), Some(0), "expected failure, got {o:?}");
    let err = stderr(o);
    let lines: Vec<_> = err
        .lines()
        .filter(|l| l.starts_with("agentvm: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected in {err:?}");
    lines[0].to_string()
}

/// Whether /dev/kvm opens.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Writes the tiny guest that prints `text` and resets to `dir`, or
/// returns `None` (with the reason printed) where /dev/kvm cannot be opened.
pub fn hello_guest(dir: &Path, text: &str) -> Option<PathBuf> {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return None;
    }
    let p = dir.join("hello.elf");
    let guest = agentvm_testguest::programs::hello(text).unwrap();
    std::fs::write(&p, guest).unwrap();
    Some(p)
}
