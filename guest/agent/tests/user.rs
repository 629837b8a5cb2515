//! T0: the default user (`serve --user`, as `agentvm.user` sets it in the
//! guest) and the environment every command gets. Needs root to switch
//! users; skips otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use agentvm_protocol::ExitStatus;
use common::{start, Agent};

const SCRIPT: &str = "id -u; id -g; id -G; echo $HOME; echo $USER $LOGNAME $SHELL; \
                      echo $IS_SANDBOX $LANG; echo $PATH; pwd";

/// A root directory with `etc/passwd`, `etc/group` and a home for `tester`.
fn passwd_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // The user must be able to enter its home inside the temporary dir.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home/tester");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(4321), Some(4322)).unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\ntester:x:4321:4322::{}:/bin/sh\n",
            home.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("etc/group"),
        "root:x:0:\ntester:x:4322:\nextra:x:4400:other,tester\n",
    )
    .unwrap();
    dir
}

#[test]
fn requests_without_a_user_run_as_the_default_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let root = passwd_root();
    let home = root.path().join("home/tester");
    let agent = Agent::start_with(&["--root", root.path().to_str().unwrap(), "--user", "tester"]);
    let (status, out, err) = agent.run(&["sh", "-c", SCRIPT], b"");
    assert_eq!(
        status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&err)
    );
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let home = home.to_str().unwrap();
    assert_eq!(
        lines,
        [
            "4321",
            "4322",
            "4322 4400",
            home,
            "tester tester /bin/sh",
            "1 C.UTF-8",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            home,
        ]
    );
    // A file it creates is its own.
    let (status, _, _) = agent.run(&["sh", "-c", "echo x > f"], b"");
    assert_eq!(status, ExitStatus::Code(0));
    let meta = std::fs::metadata(root.path().join("home/tester/f")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta)
        ),
        (4321, 4322)
    );
}

#[test]
fn an_explicit_root_request_still_runs_as_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let root = passwd_root();
    let agent = Agent::start_with(&["--root", root.path().to_str().unwrap(), "--user", "tester"]);
    let mut req = start(&["sh", "-c", "id -u; echo $HOME $USER $IS_SANDBOX"]);
    req.user = Some("root".into());
    let (status, out, _) = agent.run_start(req, b"").unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(String::from_utf8(out).unwrap(), "0\n/root root 1\n");
}

#[test]
fn a_default_user_that_does_not_exist_is_an_error_not_root() {
    let root = passwd_root();
    let agent = Agent::start_with(&["--root", root.path().to_str().unwrap(), "--user", "ghost"]);
    let err = agent.run_start(start(&["id", "-u"]), b"").unwrap_err();
    assert!(format!("{err}").contains("ghost"), "{err}");
}

#[test]
fn serve_rejects_bad_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentvm-guest"))
        .args(["serve", "--listen", "unix:/x", "--user"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
