//! `agentvm doctor` in a workspace, from the user's side: the
//! configuration's standing (unapproved, approved, changed, invalid) is
//! reported with what to do, and an unapproved one makes doctor fail.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A workspace and a home directory in a temporary directory.
struct Dirs {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    home: PathBuf,
}

fn dirs(config: &str) -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("proj");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(ws.join(".agentvm")).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(ws.join(".agentvm/config.toml"), config).unwrap();
    Dirs {
        _tmp: tmp,
        ws,
        home,
    }
}

/// `agentvm ARGS` in `cwd` with HOME at `home` (approvals and images there).
fn agentvm(cwd: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .args(args)
        .current_dir(cwd)
        .env("AGENTVM_LOG", "error")
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap()
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"))
}

const CONFIG: &str = "[resources]\nvcpus = 1\nmemory_mib = 512\n";

#[test]
fn doctor_fails_on_an_unapproved_configuration_and_says_how_to_approve() {
    let d = dirs(CONFIG);
    let o = agentvm(&d.ws, &d.home, &["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let file = std::fs::canonicalize(d.ws.join(".agentvm/config.toml")).unwrap();
    assert_eq!(
        line(&out, "configuration: "),
        format!(
            "configuration: FAIL: {} is not approved yet, so `up` will not start the VM: \
             review it, then run `agentvm trust`",
            file.display()
        )
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
    // The other workspace checks ran too; the home has no image.
    assert!(
        line(&out, "image: ").starts_with("image: warning: none at "),
        "{out}"
    );
    assert!(
        line(&out, "memory: ").contains("(memory_mib 512 + network 64 + "),
        "{out}"
    );

    // Approved, the configuration is fine; from elsewhere with --dir too.
    let t = agentvm(&d.ws, &d.home, &["trust"]);
    assert!(t.status.success(), "{t:?}");
    let o = agentvm(
        &d.home,
        &d.home,
        &["doctor", "--dir", d.ws.to_str().unwrap()],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        line(&out, "configuration: "),
        format!(
            "configuration: ok: {} is valid and approved",
            file.display()
        )
    );

    // Changed since: fails again, saying so.
    std::fs::write(
        d.ws.join(".agentvm/config.toml"),
        CONFIG.replace("512", "640"),
    )
    .unwrap();
    let o = agentvm(&d.ws, &d.home, &["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        line(&out, "configuration: ").contains("changed since you approved it"),
        "{out}"
    );
    assert_eq!(o.status.code(), Some(1), "{out}");
}

#[test]
fn doctor_reports_an_invalid_configuration_at_its_line() {
    let d = dirs("[resources]\nmemroy_mib = 512\n");
    let o = agentvm(&d.ws, &d.home, &["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let l = line(&out, "configuration: ");
    assert!(l.starts_with("configuration: FAIL: does not load"), "{l}");
    assert!(l.contains("memroy_mib"), "{l}");
    assert!(l.contains("config.toml:2"), "{l}");
    assert_eq!(o.status.code(), Some(1), "{out}");
    // Nothing to measure memory against without a configuration.
    assert!(!out.contains("memory: "), "{out}");
}
