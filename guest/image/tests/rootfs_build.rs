//! Builds the real root file system (mmdebstrap, the npm registry,
//! mkfs.erofs) — opt-in, since a cold build downloads ~1.5 GB and takes
//! minutes: it runs when `AGENTVM_ROOTFS_BUILD=1` (the agents' npm
//! packages: all built-in ones, or `AGENTVM_ROOTFS_NPM="a b"`), in the
//! cache `$AGENTVM_IMAGE_CACHE` (else `~/.cache/agentvm/image-build`).
//! It builds twice: the second build must find every layer cached.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Instant;

use agentvm_image::rootfs::{self, Rootfs, RootfsRecipe, BUILTIN_AGENTS};
use agentvm_image::Cache;

#[test]
fn rootfs_builds_and_is_cached() {
    if std::env::var("AGENTVM_ROOTFS_BUILD").as_deref() != Ok("1") {
        eprintln!("skipped: set AGENTVM_ROOTFS_BUILD=1 to build the root file system");
        return;
    }
    let npm: Vec<String> = match std::env::var("AGENTVM_ROOTFS_NPM") {
        Ok(list) => list.split_whitespace().map(String::from).collect(),
        Err(_) => BUILTIN_AGENTS.iter().map(|s| s.to_string()).collect(),
    };
    let cache = Cache::from_env("AGENTVM_IMAGE_CACHE", "image-build").unwrap();
    let _lock = cache.lock().unwrap();
    let recipe = RootfsRecipe::new(vec!["htop".into()], npm.clone());
    let mut progress = |l: &str| eprintln!("{l}");
    let t = Instant::now();
    let fs = Rootfs::build(&cache, &recipe, &mut progress).unwrap();
    eprintln!(
        "first build: {:.1} s, {:?}",
        t.elapsed().as_secs_f64(),
        fs.timings
    );
    let t = Instant::now();
    let again = Rootfs::build(&cache, &recipe, &mut progress).unwrap();
    eprintln!("second build: {:.3} s", t.elapsed().as_secs_f64());
    assert!(again.timings.iter().all(|(_, t)| t.is_none()));
    assert_eq!(again.erofs, fs.erofs);

    let m = &fs.manifest;
    eprintln!(
        "erofs {} MB, tree {} MB, node {}, npm {:?}, agents {:?}",
        m.erofs_bytes / 1_000_000,
        m.tree_bytes / 1_000_000,
        m.node,
        m.npm,
        m.agents
    );
    assert!(m.node.starts_with("v22."), "{}", m.node);
    for p in [
        "bash",
        "git",
        "python3",
        "ripgrep",
        "sudo",
        "ca-certificates",
        "htop",
    ] {
        assert!(m.debian.contains_key(p), "{p} not installed");
    }
    assert!(!m.debian.contains_key("man-db"));
    for spec in &npm {
        assert!(m.npm.contains_key(rootfs::node::npm_name(spec)), "{spec}");
    }
    if npm.iter().any(|s| s == "@anthropic-ai/claude-code") {
        assert!(m.agents.contains_key("claude"), "{:?}", m.agents);
    }
    // Owners and modes as Debian made them, read from the image itself.
    let out = Command::new("dump.erofs")
        .arg("--path=/usr/bin/sudo")
        .arg(&fs.erofs)
        .output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("{text}");
        // dump.erofs 1.5 shows the permission bits only; the mount below
        // checks the set-uid bit.
        assert!(text.contains("Uid: 0   Gid: 0"), "{text}");
    }
    // As root, mount the image and run the agent from it.
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&fs.erofs)
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped the mounted checks: cannot mount the erofs image here");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let sudo = std::fs::metadata(mnt.path().join("usr/bin/sudo")).unwrap();
    let shadow = std::fs::metadata(mnt.path().join("etc/shadow")).unwrap();
    let claude = Command::new("chroot")
        .arg(mnt.path())
        .args(["/usr/local/bin/claude", "--version"])
        .output();
    let _ = Command::new("umount").arg(mnt.path()).status();
    assert_eq!((sudo.mode() & 0o7777, sudo.uid()), (0o4755, 0));
    assert_eq!((shadow.mode() & 0o777, shadow.gid()), (0o640, 42));
    if npm.iter().any(|s| s == "@anthropic-ai/claude-code") {
        let out = claude.unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Claude Code"),
            "{out:?}"
        );
    }
}
