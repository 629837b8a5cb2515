//! `agentvm destroy` end to end: the real binary with its own runtime,
//! configuration, data and home directories. Most tests plant what `up`,
//! `trust` and the secrets leave (so they need no KVM); one starts a real
//! VM with the tiny guest where /dev/kvm opens.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

/// A test's directories: `run/` (runtime), `config/`, `data/`, `home/`,
/// and workspaces under `ws/`.
struct World {
    root: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World {
            root: tempfile::Builder::new().prefix("avm").tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// A workspace with a configuration booting `kernel`, approved, and a
    /// file of the user's.
    fn workspace(&self, name: &str, kernel: &Path) -> PathBuf {
        let ws = self.path(&format!("ws/{name}"));
        std::fs::create_dir_all(ws.join(".agentvm")).unwrap();
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::write(ws.join("src/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(
            ws.join(".agentvm/config.toml"),
            format!(
                "name = \"{name}\"\nkernel = \"{}\"\n\n[resources]\nvcpus = 1\nmemory_mib = 128\n",
                kernel.display()
            ),
        )
        .unwrap();
        let o = self.agentvm(&["trust"], &ws);
        assert!(o.status.success(), "{o:?}");
        ws
    }

    fn id(&self, ws: &Path) -> String {
        common::workspace_id(ws)
    }

    /// Every place agentvm keeps something for `ws`.
    fn places(&self, ws: &Path) -> Vec<PathBuf> {
        let id = self.id(ws);
        vec![
            self.path(&format!("run/agentvm/{id}")),
            self.path(&format!("data/agentvm/homes/{id}")),
            self.path(&format!("data/agentvm/roots/{id}")),
            self.path(&format!("data/agentvm/ca/{id}")),
            self.path(&format!("config/agentvm/approved/{id}.json")),
        ]
    }

    /// Plants what `up` and its secrets leave: a state directory with a
    /// console log and git guard records, an agent home, a persistent root
    /// layer, a workspace CA (the approval `trust` made).
    fn plant(&self, ws: &Path) {
        let id = self.id(ws);
        let private = |p: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .unwrap()
        };
        private(&self.path("run/agentvm"));
        let state = self.path(&format!("run/agentvm/{id}"));
        private(&state.join("git/0"));
        std::fs::write(state.join("console.log"), vec![b'x'; 200_000]).unwrap();
        std::fs::write(state.join("git/0/manifest.json"), "{}").unwrap();
        let home = self.path(&format!("data/agentvm/homes/{id}"));
        private(&home.join("claude/projects"));
        std::fs::write(
            home.join("claude/projects/session.jsonl"),
            vec![b'y'; 300_000],
        )
        .unwrap();
        let root = self.path(&format!("data/agentvm/roots/{id}"));
        private(&root);
        std::fs::write(root.join("upper.ext4"), vec![b'z'; 100_000]).unwrap();
        let ca = self.path(&format!("data/agentvm/ca/{id}"));
        private(&ca);
        std::fs::write(ca.join("ca.pem"), "cert").unwrap();
        std::fs::write(ca.join("ca.key"), "key").unwrap();
    }

    fn command(&self, args: &[&str], ws: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvm"));
        cmd.args(args)
            .current_dir(ws)
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("HOME", self.path("home"))
            .env("AGENTVM_LOG", "error")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `agentvm ARGS` in `ws` with no terminal.
    fn agentvm(&self, args: &[&str], ws: &Path) -> Output {
        self.command(args, ws).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A kernel that is never booted (the tests that plant need none).
fn no_kernel(w: &World) -> PathBuf {
    let k = w.path("vmlinux");
    std::fs::write(&k, b"not booted").unwrap();
    k
}

#[test]
fn destroy_removes_every_place_keeps_the_workspace_and_a_second_run_finds_nothing() {
    let w = World::new();
    let ws = w.workspace("one", &no_kernel(&w));
    let other = w.workspace("other", &no_kernel(&w));
    w.plant(&ws);
    w.plant(&other);
    for p in w.places(&ws) {
        assert!(p.exists(), "{} was not planted", p.display());
    }
    // From a subdirectory: the workspace is found as `down` finds it.
    let o = w.agentvm(&["destroy", "--yes"], &ws.join("src"));
    let out = text(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    for p in w.places(&ws) {
        assert!(!p.exists(), "{} is still there", p.display());
        assert!(out.contains(&p.display().to_string()), "{out}");
    }
    // Sizes: each place's, then what was freed (600 kB planted, at least).
    assert!(out.contains("agent home"), "{out}");
    let freed = out
        .lines()
        .find_map(|l| l.strip_prefix("agentvm: freed "))
        .unwrap();
    assert!(freed.ends_with("KiB") || freed.ends_with("MiB"), "{out}");
    let kib: f64 = freed.split(' ').next().unwrap().parse().unwrap();
    assert!(freed.ends_with("MiB") || kib >= 500.0, "{out}");
    // The user's files and configuration stay, and the output says so.
    assert!(ws.join("src/main.rs").is_file());
    assert!(ws.join(".agentvm/config.toml").is_file());
    assert!(out.contains("your configuration"), "{out}");
    // Only this workspace's places.
    for p in w.places(&other) {
        assert!(p.exists(), "{} of the other workspace went", p.display());
    }
    // The approval went with it: `up` asks again.
    let up = w.agentvm(&["up"], &ws);
    assert!(text(&up.stderr).contains("not approved"), "{up:?}");

    let again = w.agentvm(&["destroy", "--yes"], &ws);
    assert!(again.status.success(), "{again:?}");
    assert!(
        text(&again.stdout).contains("nothing to remove"),
        "{again:?}"
    );
}

#[test]
fn without_a_terminal_destroy_needs_yes_and_on_one_it_asks() {
    let w = World::new();
    let ws = w.workspace("one", &no_kernel(&w));
    w.plant(&ws);
    let o = w.agentvm(&["destroy"], &ws);
    assert!(!o.status.success(), "{o:?}");
    assert!(text(&o.stderr).contains("--yes"), "{o:?}");
    // It showed what it would remove, and removed nothing.
    assert!(text(&o.stdout).contains("agent home"), "{o:?}");
    for p in w.places(&ws) {
        assert!(p.exists(), "{} went without --yes", p.display());
    }

    // On a terminal: `n` (or just Enter) keeps everything, `y` removes.
    for (answer, removed) in [("n\n", false), ("\n", false), ("y\n", true)] {
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut master = std::fs::File::from(pty.master);
        master.write_all(answer.as_bytes()).unwrap();
        let o = w
            .command(&["destroy"], &ws)
            .stdin(Stdio::from(pty.slave))
            .output()
            .unwrap();
        assert!(o.status.success(), "{answer:?}: {o:?}");
        assert!(text(&o.stderr).contains("[y/N]"), "{o:?}");
        for p in w.places(&ws) {
            assert_eq!(!p.exists(), removed, "{answer:?}: {}", p.display());
        }
    }
}

#[test]
fn a_link_the_guest_planted_in_the_agent_home_is_removed_not_followed() {
    let w = World::new();
    let ws = w.workspace("one", &no_kernel(&w));
    w.plant(&ws);
    // Host files the guest must not get deleted: a directory and a file.
    let precious = w.path("home/precious");
    std::fs::create_dir_all(precious.join("deep")).unwrap();
    std::fs::write(precious.join("deep/keep.txt"), "mine").unwrap();
    std::fs::write(w.path("home/.bashrc"), "rc").unwrap();
    let home = w.path(&format!("data/agentvm/homes/{}", w.id(&ws)));
    std::os::unix::fs::symlink(&precious, home.join("claude/escape")).unwrap();
    std::os::unix::fs::symlink(w.path("home/.bashrc"), home.join("claude/rc")).unwrap();
    std::os::unix::fs::symlink("/", home.join("root")).unwrap();
    // And a directory it locked, and one pointing at the workspace.
    std::os::unix::fs::symlink(&ws, home.join("ws")).unwrap();
    std::fs::create_dir(home.join("locked")).unwrap();
    std::fs::write(home.join("locked/f"), "x").unwrap();
    std::fs::set_permissions(home.join("locked"), std::fs::Permissions::from_mode(0o500)).unwrap();

    let o = w.agentvm(&["destroy", "--yes"], &ws);
    assert!(o.status.success(), "{o:?}");
    assert!(!home.exists(), "{o:?}");
    assert_eq!(
        std::fs::read_to_string(precious.join("deep/keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_to_string(w.path("home/.bashrc")).unwrap(),
        "rc"
    );
    assert!(ws.join("src/main.rs").is_file());
    assert!(ws.join(".agentvm/config.toml").is_file());
}

#[test]
fn what_a_removed_workspace_left_goes_with_its_path() {
    let w = World::new();
    let ws = w.workspace("gone", &no_kernel(&w));
    w.plant(&ws);
    let places = w.places(&ws);
    let path = std::fs::canonicalize(&ws).unwrap();
    std::fs::remove_dir_all(&ws).unwrap();
    let o = w.agentvm(
        &["destroy", "--yes", "--dir", path.to_str().unwrap()],
        w.root.path(),
    );
    assert!(o.status.success(), "{o:?}");
    assert!(text(&o.stdout).contains("does not exist"), "{o:?}");
    for p in places {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    // A path agentvm never kept anything for: nothing to remove.
    let o = w.agentvm(
        &["destroy", "--yes", "--dir", "relative/typo"],
        w.root.path(),
    );
    assert!(text(&o.stdout).contains("nothing to remove"), "{o:?}");
}

#[test]
fn an_agent_home_that_is_a_link_goes_as_a_link() {
    let w = World::new();
    let ws = w.workspace("one", &no_kernel(&w));
    let precious = w.path("home/precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("keep.txt"), "mine").unwrap();
    let homes = w.path("data/agentvm/homes");
    std::fs::create_dir_all(&homes).unwrap();
    std::os::unix::fs::symlink(&precious, homes.join(w.id(&ws))).unwrap();
    let o = w.agentvm(&["destroy", "--yes"], &ws);
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::symlink_metadata(homes.join(w.id(&ws))).is_err());
    assert_eq!(
        std::fs::read_to_string(precious.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn a_running_vm_is_stopped_only_with_force() {
    let w = World::new();
    let Some(kernel) = common::ready_guest(w.root.path(), "") else {
        return;
    };
    let ws = w.workspace("live", &kernel);
    let up = w.agentvm(&["up"], &ws);
    assert!(up.status.success(), "{up:?}");
    let state = w.path(&format!("run/agentvm/{}", w.id(&ws)));
    let pid: i32 = std::fs::read_to_string(state.join("vmm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let o = w.agentvm(&["destroy", "--yes"], &ws);
    assert!(!o.status.success(), "{o:?}");
    let err = text(&o.stderr);
    assert!(err.contains("is running: `agentvm down` first"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(state.join("console.log").exists());

    let o = w.agentvm(&["destroy", "--yes", "--force"], &ws);
    assert!(o.status.success(), "{o:?}");
    assert!(text(&o.stdout).contains("stopping live first"), "{o:?}");
    for p in w.places(&ws) {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    let gone = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
    });
    assert!(gone, "the VMM still runs");
}
