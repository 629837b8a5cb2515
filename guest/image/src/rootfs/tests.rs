//! Unit tests of the root file system build: keys, recipes, command
//! lines and error messages (no network, no mmdebstrap run).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::mmdebstrap::{self, AgentsRun, Mode};
use super::run::has_subordinate_range;
use super::*;

fn recipe(p: &[&str], n: &[&str]) -> RootfsRecipe {
    RootfsRecipe::new(
        p.iter().map(|s| s.to_string()).collect(),
        n.iter().map(|s| s.to_string()).collect(),
    )
}

#[test]
fn keys_follow_their_inputs() {
    let v = "mmdebstrap 1.3.5";
    let a = LayerKeys::compute(&recipe(&["htop"], &["opencode-ai"]), v);
    let b = LayerKeys::compute(&recipe(&["htop", "strace"], &["opencode-ai"]), v);
    assert_eq!(a.base, b.base);
    assert_ne!(a.packages, b.packages);
    assert_ne!(a.agents, b.agents);
    let c = LayerKeys::compute(&recipe(&["htop"], &["opencode-ai", "@openai/codex"]), v);
    assert_eq!((&a.base, &a.packages), (&c.base, &c.packages));
    assert_ne!(a.agents, c.agents);
    // Order and duplicates do not matter.
    let d = LayerKeys::compute(&recipe(&["strace", "htop", "htop"], &[" opencode-ai"]), v);
    assert_eq!(b, d);
    let e = LayerKeys::compute(
        &RootfsRecipe {
            packages: vec!["strace".into(), "htop".into()],
            npm: vec!["opencode-ai".into()],
        },
        v,
    );
    assert_eq!(b, e);
    // A new mmdebstrap rebuilds everything.
    let f = LayerKeys::compute(&recipe(&["htop"], &["opencode-ai"]), "mmdebstrap 1.5.0");
    assert_ne!(a.base, f.base);
    assert_ne!(a.agents, f.agents);
}

#[test]
fn names_are_validated() {
    assert!(recipe(
        &["htop", "g++", "libc6=2.36-9", "foo/bookworm-backports"],
        &[]
    )
    .validate()
    .is_ok());
    for bad in ["-y", "a b", "x;rm", "Upper", "a"] {
        let err = recipe(&[bad], &[]).validate().unwrap_err().to_string();
        assert!(err.contains("Invalid Debian package name"), "{err}");
    }
    let err = recipe(&[], &["--prefix=/"])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("Invalid npm package name"), "{err}");
}

#[test]
fn base_command_line() {
    let a = mmdebstrap::base_args(Mode::Unshare, Path::new("/c/base.tar"));
    assert_eq!(a[0], "--mode=unshare");
    assert_eq!(a[1], "--variant=apt");
    assert!(a.contains(&"--dpkgopt=path-exclude=/usr/share/man/*".to_string()));
    let include = a.iter().find(|x| x.starts_with("--include=")).unwrap();
    for p in [
        "bash",
        "git",
        "python3-venv",
        "ripgrep",
        "ca-certificates",
        "sudo",
    ] {
        assert!(include.split([',', '=']).any(|x| x == p), "{p}");
    }
    assert!(!include.contains("man-db") && !include.contains("nodejs"));
    let pos = a.iter().position(|x| x == "bookworm").unwrap();
    assert_eq!(a[pos + 1], "/c/base.tar");
    assert!(a[pos + 2..].iter().any(|m| m.contains("bookworm-security")));
    assert_eq!(
        mmdebstrap::base_args(Mode::Root, Path::new("/x"))[0],
        "--mode=root"
    );
}

#[test]
fn packages_command_line() {
    let a = mmdebstrap::packages_args(
        Mode::Root,
        Path::new("/c/it's/base.tar"),
        &["htop".into(), "g++".into()],
        Path::new("/c/p.tar"),
    );
    assert!(a.contains(&"--variant=custom".to_string()));
    assert!(a.contains(
        &"--setup-hook=tar -C \"$1\" --exclude=./dev/* -xf '/c/it'\\''s/base.tar'".to_string()
    ));
    let hook = a
        .iter()
        .find(|x| x.starts_with("--customize-hook="))
        .unwrap();
    assert!(hook.contains("chroot \"$1\""), "{hook}");
    assert!(
        hook.ends_with("apt-get install -y --no-install-recommends 'htop' 'g++'"),
        "{hook}"
    );
}

#[test]
fn agents_command_line() {
    let npm = vec![
        "@anthropic-ai/claude-code".to_string(),
        "left-pad@1".to_string(),
    ];
    let a = mmdebstrap::agents_args(&AgentsRun {
        mode: Mode::Unshare,
        packages_tar: Path::new("/c/p.tar"),
        node_tgz: Path::new("/c/node.tgz"),
        npm_tgz: Path::new("/c/npm.tgz"),
        npm: &npm,
        out_dir: Path::new("/c/out"),
        host_ca: Some(Path::new("/etc/ca.crt")),
        proxy_env: vec![("HTTPS_PROXY".into(), "http://p:3128".into())],
    });
    let all = a.join("\n");
    assert!(a.iter().any(|x| x.starts_with("--skip=update")));
    assert!(all.contains("-xzf '/c/node.tgz' package/bin/node"), "{all}");
    assert!(all.contains("ln -sf ../lib/node_modules/npm/bin/npm-cli.js \"$1\"/usr/local/bin/npm"));
    assert!(all.contains("cp '/etc/ca.crt' \"$1\"/tmp/agentvm-host-ca.crt"));
    assert!(all.contains(
        "NODE_EXTRA_CA_CERTS=/tmp/agentvm-host-ca.crt 'HTTPS_PROXY=http://p:3128' npm install -g"
    ));
    assert!(all.contains(
        "npm install -g --no-fund --no-audit --no-update-notifier \
         --allow-scripts='@anthropic-ai/claude-code,left-pad' '@anthropic-ai/claude-code' 'left-pad@1'"
    ), "{all}");
    // Only known agents are checked, and with the chroot's own PATH.
    assert!(all.contains("claude --version"));
    assert!(!all.contains("left-pad --version"));
    assert!(all.contains("mkfs.erofs '--quiet' '-zlz4hc'"), "{all}");
    assert!(all.contains("'/c/out/rootfs.erofs' \"$m\""), "{all}");
    assert!(all.contains("mount --bind \"$1\" \"$m\""), "{all}");
    assert_eq!(a[a.len() - 4..a.len() - 3], ["/dev/null".to_string()]);
    // No npm packages: Node and npm only, no install.
    let none = mmdebstrap::agents_args(&AgentsRun {
        mode: Mode::Root,
        packages_tar: Path::new("/p"),
        node_tgz: Path::new("/n"),
        npm_tgz: Path::new("/m"),
        npm: &[],
        out_dir: Path::new("/o"),
        host_ca: None,
        proxy_env: vec![],
    });
    let none = none.join("\n");
    assert!(!none.contains("npm install") && !none.contains("host-ca"));
}

#[test]
fn mkfs_erofs_command_line() {
    assert_eq!(
        mmdebstrap::mkfs_erofs_args("/o/rootfs.erofs", "/t"),
        [
            "--quiet",
            "-zlz4hc",
            "--preserve-mtime",
            "--exclude-regex=^(proc|sys|dev|run|tmp)/.",
            "/o/rootfs.erofs",
            "/t"
        ]
    );
}

#[test]
fn subordinate_ranges() {
    let text = "alice:100000:65536\n1001:200000:65536\nbob:300000:1000\n";
    assert!(has_subordinate_range(text, "alice", 1000));
    assert!(has_subordinate_range(text, "carol", 1001));
    assert!(!has_subordinate_range(text, "bob", 1002));
    assert!(!has_subordinate_range("", "alice", 1000));
}

#[test]
fn error_messages_say_what_to_do() {
    let e = RootfsError::MissingTool {
        tool: "mmdebstrap",
        hint: "install it (apt-get install mmdebstrap uidmap erofs-utils)".into(),
    };
    assert_eq!(
        e.to_string(),
        "mmdebstrap is not installed: install it (apt-get install mmdebstrap uidmap erofs-utils)"
    );
    let hint = install_hint("mmdebstrap uidmap");
    assert!(
        hint == "install it (apt-get install mmdebstrap uidmap)"
            || hint.contains("nix build .#guest-image"),
        "{hint}"
    );
    let e = RootfsError::NoSubordinateIds {
        user: "alice".into(),
        kind: "subuid",
    };
    assert!(e
        .to_string()
        .contains("usermod --add-subuids 100000-165535"));
    assert!(e.to_string().contains("/etc/subuid"));
    let e: ImageError = RootfsError::AgentBroken("claude".into()).into();
    assert!(e.to_string().contains("`claude --version` failed"), "{e}");
}

#[test]
fn list_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path().to_path_buf()).unwrap();
    let keys = |n: &str| LayerKeys {
        base: "b".into(),
        packages: format!("p{n}"),
        agents: format!("a{n}"),
    };
    let mk = |kind: &str, key: &str| {
        let d = cache.root().join(format!("rootfs-{kind}-{key}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("layer.tar"), b"1234").unwrap();
        d
    };
    mk("base", "b");
    mk("packages", "p1");
    mk("packages", "p2");
    for (n, age) in [("1", 100), ("2", 0)] {
        let d = mk("agents", &format!("a{n}"));
        let mut m = manifest_for(keys(n));
        m.erofs_bytes = 4;
        std::fs::write(d.join(files::MANIFEST), m.to_json()).unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
        std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
    }
    std::fs::create_dir_all(cache.root().join("rootfs-base-x.tmp-1")).unwrap();
    let l = list(&cache);
    assert_eq!(l.len(), 5);
    assert_eq!((l[0].kind.as_str(), l[0].key.as_str()), ("agents", "a2"));
    assert!(l[0].manifest.is_some());
    let removed = prune(&cache, 1, &[]);
    let mut gone: Vec<String> = removed.iter().map(|l| l.key.clone()).collect();
    gone.sort();
    assert_eq!(gone, ["a1", "p1"]);
    assert!(!cache.root().join("rootfs-base-x.tmp-1").exists());
    assert!(prune(&cache, 0, &[keys("2")]).is_empty());
    assert_eq!(prune(&cache, 0, &[]).len(), 3);
}

fn manifest_for(keys: LayerKeys) -> Manifest {
    Manifest {
        format: manifest::FORMAT,
        suite: SUITE.into(),
        keys,
        mmdebstrap: String::new(),
        node: String::new(),
        npm_version: String::new(),
        packages: vec![],
        npm_requested: vec![],
        npm: Default::default(),
        agents: Default::default(),
        debian: Default::default(),
        erofs_bytes: 0,
        tree_bytes: 0,
    }
}
