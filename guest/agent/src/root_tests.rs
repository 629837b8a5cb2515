//! T0 (root only): the real mount sequence in a private mount namespace.
//!
//! Each scenario re-runs this test binary as a child (`ns_child`, ignored
//! unless asked for) that `unshare(CLONE_NEWNS)`s before exec, so the
//! switch of `/` happens to that child alone. Shares are bind mounts of
//! directories standing in for virtio-fs; the image is a real erofs file
//! (when `mkfs.erofs` exists; a directory tree otherwise) on a real loop
//! device, the persistent layer a real ext4 file (`mke2fs`).
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// Set in the child: which scenario to run, and the directory it works in.
const SCENARIO: &str = "AGENTVM_ROOT_TEST";
const BASE: &str = "AGENTVM_ROOT_TEST_DIR";

/// Bind mounts `base/<tag>` in place of virtio-fs.
struct BindShares(PathBuf);

impl ShareMounter for BindShares {
    fn mount_share(&self, tag: &str, target: &Path, read_only: bool) -> nix::Result<()> {
        let src = self.0.join(tag);
        mount(
            Some(&src),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        if read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, target, None::<&str>, flags, None::<&str>)?;
        }
        Ok(())
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .output()
        .map(|o| o.status.code().is_some())
        .unwrap_or(false)
}

/// A lower tree: `etc/marker`, `usr/`, and this test binary at `/probe`
/// with the libraries it needs (from `ldd`), so a process can be started
/// inside the new root.
fn make_tree(tree: &Path) {
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::write(tree.join("etc/marker"), "lower\n").unwrap();
    let exe = std::env::current_exe().unwrap();
    std::fs::copy(&exe, tree.join("probe")).unwrap();
    let out = Command::new("ldd").arg(&exe).output().unwrap();
    for lib in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = tree.join(&lib[1..]);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(lib, dest).unwrap();
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    erofs: bool,
}

/// `shares/image/{tree/,rootfs.erofs}` and `shares/state/upper.ext4`.
fn fixture() -> Option<Fixture> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for mount namespaces");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shares/image");
    let state = dir.path().join("shares/state");
    std::fs::create_dir_all(&state).unwrap();
    make_tree(&image.join("tree"));
    let erofs = have("mkfs.erofs")
        && Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(image.join("rootfs.erofs"))
            .arg(image.join("tree"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !erofs {
        eprintln!("note: no mkfs.erofs; the lower layer is a directory tree");
    }
    Some(Fixture { dir, erofs })
}

/// Runs scenario `name` in a child in its own mount namespace.
fn run_child(fx: &Fixture, name: &str) -> Option<bool> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "root::tests::ns_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(SCENARIO, name)
    .env(BASE, fx.dir.path())
    .env("AGENTVM_ROOT_TEST_EROFS", if fx.erofs { "1" } else { "" });
    // SAFETY: the closure makes one system call (unshare), which is
    // async-signal-safe, and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.status() {
        Ok(s) => Some(s.success()),
        Err(e) => {
            eprintln!("skipped: cannot start a child in a mount namespace: {e}");
            None
        }
    }
}

#[test]
fn switch_root_to_an_overlay_with_a_tmpfs_layer() {
    let Some(fx) = fixture() else { return };
    if let Some(ok) = run_child(&fx, "tmpfs") {
        assert!(ok, "the child failed; see its output above");
    }
    // The host's view is untouched.
    assert!(!fx.dir.path().join("newroot/etc").exists());
}

#[test]
fn persistent_layer_survives_a_second_boot() {
    let Some(fx) = fixture() else { return };
    if !have("mke2fs") {
        eprintln!("skipped: no mke2fs");
        return;
    }
    let img = fx.dir.path().join("shares/state/upper.ext4");
    let made = Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-O", "^metadata_csum"])
        .arg(&img)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success());
    for scenario in ["persist-write", "persist-read"] {
        if let Some(ok) = run_child(&fx, scenario) {
            assert!(ok, "{scenario} failed; see its output above");
        }
    }
}

#[test]
fn failures_leave_the_old_root() {
    let Some(fx) = fixture() else { return };
    if let Some(ok) = run_child(&fx, "failures") {
        assert!(ok, "the child failed; see its output above");
    }
}

/// Mount point → file system type, from `/proc/self/mountinfo` (the last
/// mount on a point wins).
fn fstype_of(point: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&point)).then(|| f.get(sep + 1).map(|s| s.to_string()))?
    })
}

fn layout(base: &Path) -> Layout {
    Layout {
        state: base.join("run/agentvm"),
        newroot: base.join("newroot"),
        carry: vec![
            (base.join("run"), PathBuf::from("run")),
            (PathBuf::from("/proc"), PathBuf::from("proc")),
            (PathBuf::from("/dev"), PathBuf::from("dev")),
        ],
    }
}

/// The child side (ignored in normal runs: it changes the process's root).
#[test]
#[ignore = "run by the namespace tests in a child"]
fn ns_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    if scenario == "probe" {
        // Started by path inside the new root; sees its parent's change.
        assert_eq!(std::fs::read_to_string("/etc/marker").unwrap(), "changed\n");
        assert_eq!(fstype_of("/").as_deref(), Some("overlay"));
        std::fs::write("/from-probe", "written by a child\n").unwrap();
        return;
    }
    let base = PathBuf::from(std::env::var(BASE).unwrap());
    // Nothing we do may propagate back to the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    std::fs::create_dir_all(base.join("run")).unwrap();
    mount(
        Some("tmpfs"),
        &base.join("run"),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let shares = BindShares(base.join("shares"));
    let erofs = std::env::var("AGENTVM_ROOT_TEST_EROFS").is_ok_and(|v| v == "1");
    let rootfs = RootFs {
        tag: "image".into(),
        file: if erofs { "rootfs.erofs" } else { "tree" }.into(),
    };
    let persistent = Upper::Image {
        tag: "state".into(),
        file: "upper.ext4".into(),
    };
    let l = layout(&base);
    match scenario.as_str() {
        "tmpfs" => {
            let notes = setup(&rootfs, &Upper::Tmpfs, &l, &shares).unwrap();
            assert!(notes.is_empty(), "{notes:?}");
            assert_eq!(std::env::current_dir().unwrap(), Path::new("/"));
            assert_eq!(std::fs::read_to_string("/etc/marker").unwrap(), "lower\n");
            assert_eq!(fstype_of("/").as_deref(), Some("overlay"));
            if erofs {
                assert_eq!(fstype_of("/run/agentvm/lower").as_deref(), Some("erofs"));
            }
            assert_eq!(fstype_of("/run/agentvm/rw").as_deref(), Some("tmpfs"));
            // Writes land in the upper layer, the lower stays as it was.
            std::fs::write("/etc/marker", "changed\n").unwrap();
            std::fs::write("/new-file", "new\n").unwrap();
            let upper = Path::new("/run/agentvm/rw/upper");
            assert_eq!(
                std::fs::read_to_string(upper.join("new-file")).unwrap(),
                "new\n"
            );
            assert_eq!(
                std::fs::read_to_string(upper.join("etc/marker")).unwrap(),
                "changed\n"
            );
            if !erofs {
                let lower = Path::new("/run/agentvm/image/tree/etc/marker");
                assert_eq!(std::fs::read_to_string(lower).unwrap(), "lower\n");
            }
            // A new process started by its path in the new root sees it as /.
            let status = Command::new("/probe")
                .args([
                    "--exact",
                    "root::tests::ns_child",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(SCENARIO, "probe")
                .status()
                .unwrap();
            assert!(status.success());
            assert!(upper.join("from-probe").exists());
        }
        "persist-write" => {
            let notes = setup(&rootfs, &persistent, &l, &shares).unwrap();
            assert!(notes.is_empty(), "{notes:?}");
            assert_eq!(fstype_of("/run/agentvm/rw").as_deref(), Some("ext4"));
            std::fs::write("/etc/persisted", "kept\n").unwrap();
            std::fs::remove_file("/etc/marker").unwrap();
            nix::unistd::sync();
        }
        "persist-read" => {
            setup(&rootfs, &persistent, &l, &shares).unwrap();
            assert_eq!(std::fs::read_to_string("/etc/persisted").unwrap(), "kept\n");
            // The deletion persisted too (a whiteout in the ext4 layer).
            assert!(!Path::new("/etc/marker").exists());
        }
        "failures" => {
            let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let missing = RootFs {
                tag: "image".into(),
                file: "absent.erofs".into(),
            };
            let e = setup(&missing, &Upper::Tmpfs, &l, &shares).unwrap_err();
            assert!(matches!(e, RootError::Missing(..)), "{e}");
            let not_root = RootFs {
                tag: "image".into(),
                file: "tree/etc".into(),
            };
            let e = setup(&not_root, &Upper::Tmpfs, &l, &shares).unwrap_err();
            assert!(matches!(e, RootError::NotARoot(..)), "{e}");
            let e = setup(
                &RootFs {
                    tag: "nosuchtag".into(),
                    file: "x".into(),
                },
                &Upper::Tmpfs,
                &l,
                &shares,
            )
            .unwrap_err();
            assert!(matches!(e, RootError::Share { .. }), "{e}");
            // Every mount was undone; / is what it was.
            let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let points = |s: &str| {
                s.lines()
                    .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
                    .collect::<Vec<_>>()
            };
            assert_eq!(points(&before), points(&after));
            // A missing persistent layer falls back to tmpfs, with a note.
            let notes = setup(&rootfs, &persistent, &l, &shares).unwrap();
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert!(notes[0].contains("will not survive"), "{notes:?}");
            assert_eq!(fstype_of("/run/agentvm/rw").as_deref(), Some("tmpfs"));
        }
        other => panic!("unknown scenario {other}"),
    }
}
