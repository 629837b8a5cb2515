//! `agentvm boot --share`: what the user sees — a one-line error when
//! virtiofsd is missing, bad specs refused, and a VM with a share that
//! boots and leaves no virtiofsd or socket behind.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use common::{agentvm, hello_guest, stderr};

/// virtiofsd processes whose command line names `dir`.
fn daemons_for(dir: &std::path::Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("virtiofsd") && c.contains(&needle))
        .count()
}

#[test]
fn a_missing_virtiofsd_is_one_line_naming_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let share = format!("{}:work", dir.path().display());
    let kernel = dir.path().join("k");
    std::fs::write(&kernel, b"x").unwrap();
    let o = agentvm(
        &[
            "boot",
            "--kernel",
            kernel.to_str().unwrap(),
            "--share",
            &share,
        ],
        &[("AGENTVM_VIRTIOFSD", "/nonexistent/virtiofsd")],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("cargo install --locked virtiofsd"),
        "{err}"
    );
    assert!(lines[0].contains("/nonexistent/virtiofsd"), "{err}");
}

#[test]
fn bad_share_specs_are_refused() {
    for (spec, why) in [
        ("nocolon", "expected HOST_DIR:TAG[:ro]"),
        ("/d:a b", "may not contain spaces"),
    ] {
        let o = agentvm(&["boot", "--kernel", "/k", "--share", spec], &[]);
        assert_eq!(o.status.code(), Some(2), "{spec}");
        assert!(stderr(&o).contains(why), "{spec}: {}", stderr(&o));
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("k");
    std::fs::write(&kernel, b"x").unwrap();
    let d = dir.path().display().to_string();
    let o = agentvm(
        &[
            "boot",
            "--kernel",
            kernel.to_str().unwrap(),
            "--share",
            &format!("{d}:same"),
            "--share",
            &format!("{d}:same:ro"),
        ],
        &[],
    );
    assert!(
        stderr(&o).contains("the tag same is used twice"),
        "{}",
        stderr(&o)
    );
    let o = agentvm(
        &[
            "boot",
            "--kernel",
            kernel.to_str().unwrap(),
            "--share",
            "/nonexistent/dir:t",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/dir"), "{}", stderr(&o));
}

#[test]
fn a_vm_with_a_share_boots_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = hello_guest(dir.path(), "hello with a share\n") else {
        return;
    };
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let o = agentvm(
        &[
            "boot",
            "--memory",
            "128",
            "--kernel",
            kernel.to_str().unwrap(),
            "--share",
            &format!("{}:work", shared.display()),
        ],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    if stderr(&o).contains("Cannot find virtiofsd") && std::env::var_os("CI").is_none() {
        eprintln!("skipped: {}", stderr(&o));
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello with a share\n");
    assert_eq!(daemons_for(&shared), 0, "a virtiofsd outlived agentvm");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the state directory with the socket was left behind"
    );
}
