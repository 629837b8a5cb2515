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

/// Writes the tiny guest that prints `banner`, then the guest agent's
/// ready line, then halts for good (the vCPU sleeps in KVM: a pause loop
/// would burn a host CPU per VM) to `dir`; `None` (with the reason
/// printed) where /dev/kvm cannot be opened.
pub fn ready_guest(dir: &Path, banner: &str) -> Option<PathBuf> {
    use agentvm_testguest::{Asm64, Format, Program};
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        eprintln!("skipped: /dev/kvm cannot be opened ({e})");
        return None;
    }
    let mut code = Asm64::new().unwrap();
    code.serial_print(&format!("{banner}agentvm-guest: ready\n"))
        .unwrap();
    let mut top = code.create_label();
    code.set_label(&mut top).unwrap();
    code.cli().unwrap();
    code.hlt().unwrap();
    code.jmp(top).unwrap();
    let guest = Program::new("ready")
        .with_long64(code)
        .build(Format::Elf64)
        .unwrap();
    Some(guest.write_to(dir).unwrap())
}

/// The workspace id agentvm names `ws`'s state directory (and its other
/// places) by: the first 16 hex digits of the sha256 of its real path.
pub fn workspace_id(ws: &Path) -> String {
    use sha2::Digest;
    let path = std::fs::canonicalize(ws).unwrap();
    let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..16].to_string()
}

/// Kills the VMM of every state directory in `state_root`, so that a
/// failed test leaves no VMM behind.
pub fn kill_vmms(state_root: &Path) {
    let Ok(dirs) = std::fs::read_dir(state_root) else {
        return;
    };
    for d in dirs.flatten() {
        if let Ok(pid) = std::fs::read_to_string(d.path().join("vmm.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}
