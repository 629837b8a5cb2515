//! `agentvm up` / `status` / `down` end to end with tiny guests on the
//! host's /dev/kvm: background VMMs, their state directories, the control
//! socket, stale state, and 64 VMs at once. Each test has its own
//! `XDG_RUNTIME_DIR`, so its state root is its own.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agentvm_testguest::{Asm64, Format, Program};

mod common;

/// A test's world: its runtime directory (the state root's parent), its
/// workspaces, and the tiny guest they boot.
struct World {
    runtime: tempfile::TempDir,
    kernel: PathBuf,
    _guest_dir: tempfile::TempDir,
}

impl World {
    /// `None` (with the reason printed) where /dev/kvm cannot be opened.
    fn new() -> Option<World> {
        let guest_dir = tempfile::tempdir().unwrap();
        // With terminal escapes a hostile guest would print: `logs` must
        // show them escaped.
        let kernel = common::ready_guest(
            guest_dir.path(),
            "tiny guest booted\n\x1b]52;c;ZXZpbA==\x07\x1b[1A\x1b[2Kforged\n",
        )?;
        Some(World {
            runtime: tempfile::Builder::new().prefix("avm").tempdir().unwrap(),
            kernel,
            _guest_dir: guest_dir,
        })
    }

    fn state_root(&self) -> PathBuf {
        self.runtime.path().join("agentvm")
    }

    /// A workspace whose VM is `name`, booting the tiny guest, approved.
    fn workspace(&self, name: &str) -> PathBuf {
        self.workspace_at(&format!("ws/{name}"), name)
    }

    /// The workspace `rel` (under the runtime directory) named `name`.
    fn workspace_at(&self, rel: &str, name: &str) -> PathBuf {
        let dir = self.runtime.path().join(rel);
        std::fs::create_dir_all(dir.join(".agentvm")).unwrap();
        self.configure(
            &dir,
            &format!(
                "name = \"{name}\"\nkernel = \"{}\"\n\n[resources]\nvcpus = 1\nmemory_mib = 128\n",
                self.kernel.display()
            ),
        );
        dir
    }

    /// Writes the workspace's configuration and approves it (when it loads).
    fn configure(&self, ws: &Path, text: &str) {
        std::fs::write(ws.join(".agentvm/config.toml"), text).unwrap();
        let _ = self.agentvm(&["trust"], ws);
    }

    /// The state directory of the VM of `ws`: keyed by the workspace's
    /// canonical path, not its name.
    fn state(&self, ws: &Path) -> PathBuf {
        self.state_root().join(common::workspace_id(ws))
    }

    fn agentvm(&self, args: &[&str], workspace: &Path) -> Output {
        self.agentvm_with(args, workspace, &[])
    }

    /// [`World::agentvm`] with `env` added.
    fn agentvm_with(&self, args: &[&str], workspace: &Path, env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_agentvm"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(workspace)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("XDG_CONFIG_HOME", self.runtime.path().join("config"))
            .env("XDG_DATA_HOME", self.runtime.path().join("data"))
            .env("AGENTVM_LOG", "error")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str], workspace: &Path) -> String {
        let o = self.agentvm(args, workspace);
        assert!(o.status.success(), "agentvm {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Live processes whose command line names this test's state root
    /// (VMMs and their virtiofsd).
    fn processes(&self) -> Vec<String> {
        let root = self.state_root();
        let root = root.to_str().unwrap();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(root) {
                found.push(cmdline);
            }
        }
        found
    }

    /// Resident memory of every process [`World::processes`] finds, KiB.
    fn rss_kib(&self) -> u64 {
        let root = self.state_root();
        let root = root.to_str().unwrap();
        let mut total = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if !String::from_utf8_lossy(&cmdline).contains(root) {
                continue;
            }
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    /// VMM processes of this test.
    fn vmms(&self) -> usize {
        self.processes()
            .iter()
            .filter(|c| c.contains("__vmm"))
            .count()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A failed test must not leave VMMs behind.
        common::kill_vmms(&self.state_root());
    }
}

fn control(sock: &Path, line: &str) -> serde_json::Value {
    let s = UnixStream::connect(sock).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn up_status_down_leaves_nothing_behind() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("one");
    let out = w.ok(&["up"], &ws);
    assert!(out.contains("one is up in"), "{out}");
    eprintln!("{out}");
    let state = w.state(&ws);
    for f in [
        "vmm.pid",
        "control.sock",
        "vsock.sock",
        "console.log",
        "config.json",
    ] {
        assert!(state.join(f).exists(), "{f} missing");
    }
    // Only the user reaches the VM: its directory and sockets are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&w.state_root()), 0o700);
    assert_eq!(mode(&state), 0o700);
    for sock in ["control.sock", "vsock.sock"] {
        assert_eq!(mode(&state.join(sock)), 0o600, "{sock}");
    }
    let console = std::fs::read_to_string(state.join("console.log")).unwrap();
    assert!(console.contains("agentvm-guest: ready"), "{console}");
    let snapshot = std::fs::read_to_string(state.join("config.json")).unwrap();
    assert!(snapshot.contains("\"memory_mib\": 128"), "{snapshot}");
    // Guest RAM, shared with the workspace's virtiofsd, is an unnamed file
    // on a private huge-page tmpfs (this machine allows user namespaces),
    // not a memfd.
    let pid = std::fs::read_to_string(state.join("vmm.pid")).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", pid.trim())).unwrap();
    let ram: Vec<&str> = maps
        .lines()
        .filter(|l| {
            let range = l.split(' ').next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let len = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            len == 128 << 20
        })
        .collect();
    assert_eq!(ram.len(), 1, "one 128 MiB mapping: {maps}");
    assert!(ram[0].contains(" rw-s "), "shared: {}", ram[0]);
    assert!(!ram[0].contains("memfd:"), "not a memfd: {}", ram[0]);
    assert!(ram[0].ends_with("(deleted)"), "an unnamed file: {}", ram[0]);

    let again = w.ok(&["up"], &ws);
    assert!(again.contains("already running"), "{again}");
    assert_eq!(w.vmms(), 1, "a second up starts no second VMM");

    let status = w.ok(&["status"], &ws);
    let line = status.lines().find(|l| l.starts_with("one ")).unwrap();
    assert!(line.contains(" running "), "{status}");
    assert!(line.contains("filtered"), "{status}");
    assert!(line.ends_with(ws.to_str().unwrap()), "{status}");
    let ps = w.ok(&["ps"], &ws);
    assert!(ps.lines().any(|l| l.starts_with("one ")), "{ps}");

    // The control socket: versioned JSON lines, errors keep the connection.
    let sock = state.join("control.sock");
    let st = control(&sock, "{\"version\":1,\"op\":\"status\"}\n");
    assert_eq!(st["version"], 1, "{st}");
    assert_eq!(st["reply"], "status", "{st}");
    assert_eq!(st["memory_mib"], 128);
    assert_eq!(st["vcpus"], 1);
    assert_eq!(st["ready"], true);
    // The start's steps, for `up --timings`, in order.
    let boot = &st["boot"];
    let at = |k: &str| boot[k].as_u64().unwrap_or_else(|| panic!("boot.{k}: {st}"));
    assert!(at("started_us") > 0, "{st}");
    assert!(at("started_us") <= at("build_us"), "{st}");
    assert!(at("build_us") <= at("running_us"), "{st}");
    assert!(at("running_us") <= at("ready_us"), "{st}");
    assert_eq!(st["network_mode"], "filtered");
    assert!(st["rss_kib"].as_u64().unwrap() > 0);
    // The caps and their counters (none hit by this guest).
    assert_eq!(
        st["limits"]["net"]["net_memory_limit_kib"],
        64 << 10,
        "{st}"
    );
    assert_eq!(st["limits"]["net"]["tcp_flows_max"], 4096, "{st}");
    assert_eq!(st["limits"]["net"]["tcp_refused_memory"], 0, "{st}");
    assert_eq!(st["limits"]["vsock_connections_max"], 1024, "{st}");
    assert_eq!(st["limits"]["vsock_refused"], 0, "{st}");
    let s = UnixStream::connect(&sock).unwrap();
    let mut wr = s.try_clone().unwrap();
    let mut rd = BufReader::new(s);
    let mut ask = |line: &str| {
        wr.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        rd.read_line(&mut reply).unwrap();
        serde_json::from_str::<serde_json::Value>(&reply).unwrap()
    };
    assert_eq!(ask("not json\n")["kind"], "bad_request");
    assert_eq!(
        ask(&format!("{}\n", "x".repeat(10_000)))["kind"],
        "bad_request"
    );
    // A request of the untyped protocol (an older agentvm's) is refused
    // with what to do.
    let old = ask("{\"op\":\"status\"}\n");
    assert_eq!(old["kind"], "version", "{old}");
    assert!(
        old["error"].as_str().unwrap().contains("`agentvm down`"),
        "{old}"
    );
    let stats = ask("{\"version\":1,\"op\":\"stats\"}\n");
    assert_eq!(stats["reply"], "stats", "{stats}");
    assert!(
        stats["balloon"].get("unavailable").is_some(),
        "no balloon driver: {stats}"
    );
    assert_eq!(
        ask("{\"version\":1,\"op\":\"balloon\",\"target_mib\":16}\n")["reply"],
        "balloon"
    );

    let logs = w.ok(&["logs"], &ws);
    assert!(logs.contains("tiny guest booted"), "{logs}");
    // The guest's escape sequences reach the terminal as text, unless asked
    // for raw.
    assert!(!logs.contains('\x1b') && !logs.contains('\x07'), "{logs:?}");
    assert!(
        logs.contains("\\x1b]52;c;ZXZpbA==\\x07\\x1b[1A\\x1b[2Kforged\n"),
        "{logs}"
    );
    let raw = w.ok(&["logs", "--raw"], &ws);
    assert!(
        raw.contains("\x1b]52;c;ZXZpbA==\x07\x1b[1A\x1b[2Kforged\n"),
        "{raw:?}"
    );

    let mut follow = Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .args(["logs", "-f"])
        .current_dir(&ws)
        .env("XDG_RUNTIME_DIR", w.runtime.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let down = w.ok(&["down", "--timeout", "5"], &ws);
    eprintln!("down took {:?}", t.elapsed());
    assert!(down.contains("one is down"), "{down}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while follow.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "logs -f goes on after down");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut followed = String::new();
    std::io::Read::read_to_string(&mut follow.stdout.take().unwrap(), &mut followed).unwrap();
    assert!(followed.contains("agentvm-guest: ready"), "{followed}");
    assert!(!state.exists(), "state directory left");
    assert!(w.processes().is_empty(), "{:?}", w.processes());
    let none = w.ok(&["status"], &ws);
    assert!(none.starts_with("no VMs"), "{none}");
    let again = w.ok(&["down"], &ws);
    assert!(again.contains("not running"), "{again}");
}

#[test]
fn a_killed_vmm_leaves_stale_state_that_the_next_up_cleans() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("stale");
    w.ok(&["up"], &ws);
    let state = w.state(&ws);
    let pid = std::fs::read_to_string(state.join("vmm.pid")).unwrap();
    let pid = pid.trim().to_string();
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.vmms() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(w.vmms(), 0);
    assert!(
        state.join("control.sock").exists(),
        "a kill -9 leaves sockets"
    );
    let status = w.ok(&["status"], &ws);
    assert!(status.contains("stale"), "{status}");
    // Commands that need a running VM and do not start one say so (`run`
    // and `shell` would start it again: see the auto-start test).
    let o = w.agentvm(&["net", "show"], &ws);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("`agentvm up` starts it again"),
        "{o:?}"
    );

    // What the dead VMM wrote last is shown (escaped) before its state goes.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(state.join("console.log"))
        .unwrap();
    writeln!(log, "the last words of the VMM \x1b[31m").unwrap();
    drop(log);
    let o = w.agentvm(&["up"], &ws);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cleaning up"), "{o:?}");
    assert!(err.contains("  | the last words of the VMM "), "{o:?}");
    assert!(!err.contains('\x1b'), "{o:?}");
    let new_pid = std::fs::read_to_string(state.join("vmm.pid")).unwrap();
    assert_ne!(new_pid.trim(), pid);
    assert_eq!(w.vmms(), 1);
    w.ok(&["down"], &ws);
    assert!(!state.exists());
    assert!(w.processes().is_empty(), "{:?}", w.processes());
}

#[test]
fn a_vm_that_cannot_start_says_why_and_leaves_nothing() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("broken");
    let notes = w.runtime.path().join("notes.txt");
    std::fs::write(&notes, "not a kernel, just text ".repeat(100)).unwrap();
    let config = ws.join(".agentvm/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(w.kernel.to_str().unwrap(), notes.to_str().unwrap());
    w.configure(&ws, &text);
    let o = w.agentvm(&["up"], &ws);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken did not start"), "{err}");
    let error_lines = err.lines().filter(|l| l.starts_with("agentvm: error:"));
    assert_eq!(error_lines.count(), 1, "{err}");
    assert!(
        err.contains("neither an ELF vmlinux nor a bzImage"),
        "{err}"
    );
    assert!(!w.state(&ws).exists());
    assert!(w.processes().is_empty(), "{:?}", w.processes());
}

#[test]
fn sigterm_stops_the_vm_and_the_vmm_cleans_up() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("term");
    w.ok(&["up"], &ws);
    let state = w.state(&ws);
    let pid = std::fs::read_to_string(state.join("vmm.pid")).unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.vmms() > 0 {
        assert!(Instant::now() < deadline, "the VMM ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    for f in ["vmm.pid", "control.sock", "vsock.sock"] {
        assert!(!state.join(f).exists(), "{f} left");
    }
    let status = w.ok(&["status"], &ws);
    assert!(status.contains("stopped"), "{status}");
    let console = std::fs::read_to_string(state.join("console.log")).unwrap();
    assert!(console.contains("stopping the VM"), "{console}");
    w.ok(&["down"], &ws);
    assert!(!state.exists());
}

#[test]
fn two_ups_at_once_start_one_vm() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("twice");
    let outs: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| w.ok(&["up"], &ws));
        let b = s.spawn(|| w.ok(&["up"], &ws));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(w.vmms(), 1, "{outs:?}");
    assert_eq!(
        outs.iter()
            .filter(|o| o.contains("already running"))
            .count(),
        1,
        "{outs:?}"
    );
    w.ok(&["down"], &ws);
    assert!(w.processes().is_empty(), "{:?}", w.processes());
}

#[test]
fn sixty_four_vms_come_up_are_listed_and_go_down() {
    let Some(w) = World::new() else { return };
    const N: usize = 64;
    let fds = open_fds();
    let spaces: Vec<PathBuf> = (0..N).map(|i| w.workspace(&format!("vm-{i:02}"))).collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for ws in &spaces {
            let w = &w;
            s.spawn(move || w.ok(&["up", "--timeout", "120"], ws));
        }
    });
    let up = t.elapsed();
    assert_eq!(w.vmms(), N);
    let status = w.ok(&["status"], &spaces[0]);
    let running: Vec<&str> = status.lines().filter(|l| l.contains(" running ")).collect();
    assert_eq!(running.len(), N, "{status}");
    let rss_mib: u64 = running
        .iter()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // NAME PID UPTIME RSS "MiB" NETWORK STATE
            cols[3].parse::<u64>().unwrap()
        })
        .sum();
    let all_rss_mib = w.rss_kib() / 1024;
    let t = Instant::now();
    std::thread::scope(|s| {
        for ws in &spaces {
            let w = &w;
            s.spawn(move || w.ok(&["down", "--timeout", "5"], ws));
        }
    });
    let down = t.elapsed();
    eprintln!(
        "{N} VMs: up in {up:?}, VMM RSS {rss_mib} MiB as status shows it, \
         {all_rss_mib} MiB with virtiofsd, down in {down:?}"
    );
    assert!(w.processes().is_empty(), "{:?}", w.processes());
    let left: Vec<_> = std::fs::read_dir(w.state_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(open_fds(), fds, "file descriptors leaked");
}

#[test]
fn net_allow_deny_show_and_log_act_on_the_running_vm() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("netvm");
    let config = ws.join(".agentvm/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[network]\ndomains = [\"a.test\"]\nports = [443]\nforwards = [\"0:0\"]\n");
    // A bad forward is refused at `up`, at its line.
    std::fs::write(&config, &text).unwrap();
    let o = w.agentvm(&["up"], &ws);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("network.forwards[0]"),
        "{o:?}"
    );
    w.configure(&ws, &text.replace("forwards = [\"0:0\"]\n", ""));

    let o = w.agentvm(&["net", "show"], &ws);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the workspace's VM is not running"),
        "{o:?}"
    );
    w.ok(&["up"], &ws);
    let state = w.state(&ws);
    let sock = state.join("control.sock");
    assert!(state.join("net-audit.jsonl").exists());
    let policy = |sock: &Path| {
        let r = control(sock, "{\"version\":1,\"op\":\"net\"}\n");
        assert_eq!(r["reply"], "net", "{r}");
        r["policy"].clone()
    };
    let p = policy(&sock);
    assert_eq!(p["mode"], "filtered", "{p}");
    assert_eq!(p["domains"], serde_json::json!(["a.test"]), "{p}");
    assert_eq!(p["ports"], serde_json::json!([443]), "{p}");

    let out = w.ok(&["net", "allow", "X.test", "b.test"], &ws);
    assert!(out.contains("x.test allowed"), "{out}");
    assert!(out.contains("b.test allowed"), "{out}");
    assert_eq!(
        policy(&sock)["domains"],
        serde_json::json!(["a.test", "x.test", "b.test"])
    );
    let out = w.ok(&["net", "allow", "x.test"], &ws);
    assert!(out.contains("x.test was already allowed"), "{out}");
    let out = w.ok(&["net", "deny", "a.test", "api.b.test"], &ws);
    assert!(out.contains("a.test no longer allowed"), "{out}");
    assert!(out.contains("b.test still allows it"), "{out}");
    assert_eq!(
        policy(&sock)["domains"],
        serde_json::json!(["x.test", "b.test"])
    );
    let show = w.ok(&["net", "show"], &ws);
    assert!(show.contains("mode      filtered"), "{show}");
    assert!(show.contains("domains   x.test, b.test"), "{show}");
    assert!(show.contains("ports     443"), "{show}");
    let json: serde_json::Value =
        serde_json::from_str(&w.ok(&["net", "show", "--json"], &ws)).unwrap();
    assert_eq!(json["domains"], serde_json::json!(["x.test", "b.test"]));

    let o = w.agentvm(&["net", "allow", "https://c.test"], &ws);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("write the name only"),
        "{o:?}"
    );
    // No decisions yet: an empty log, printed as such.
    assert_eq!(w.ok(&["net", "log"], &ws), "");
    assert_eq!(w.ok(&["net", "log", "--json"], &ws), "");

    // A whole policy through the socket; status shows the mode in force.
    let r = control(
        &sock,
        "{\"version\":1,\"op\":\"net_policy\",\"policy\":{\"mode\":\"open\",\"domains\":[],\"ports\":[],\"hosts\":{},\"forwards\":[]}}\n",
    );
    assert_eq!(r["reply"], "net_policy", "{r}");
    let status = w.ok(&["status"], &ws);
    let line = status.lines().find(|l| l.starts_with("netvm ")).unwrap();
    assert!(line.contains(" open "), "{status}");

    let mut follow = Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .args(["net", "log", "-f"])
        .current_dir(&ws)
        .env("XDG_RUNTIME_DIR", w.runtime.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(follow.try_wait().unwrap().is_none(), "-f follows");
    w.ok(&["down", "--timeout", "5"], &ws);
    let deadline = Instant::now() + Duration::from_secs(5);
    while follow.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "net log -f goes on after down");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!state.exists(), "state directory left");
    assert!(w.processes().is_empty(), "{:?}", w.processes());
}

#[test]
fn a_vm_without_network_has_no_device_and_says_so() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("offline");
    let config = ws.join(".agentvm/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[network]\nmode = \"off\"\n");
    w.configure(&ws, &text);
    w.ok(&["up"], &ws);
    let state = w.state(&ws);
    assert!(!state.join("net-audit.jsonl").exists());
    let r = control(
        &state.join("control.sock"),
        "{\"version\":1,\"op\":\"status\"}\n",
    );
    assert_eq!(r["network_mode"], "off", "{r}");
    assert_eq!(r["limits"]["net"], serde_json::Value::Null, "{r}");
    let r = control(
        &state.join("control.sock"),
        "{\"version\":1,\"op\":\"net_allow\",\"domains\":[\"x.test\"]}\n",
    );
    assert_eq!(r["kind"], "failed", "{r}");
    for args in [&["net", "allow", "x.test"][..], &["net", "log"][..]] {
        let o = w.agentvm(args, &ws);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no network"), "{args:?}: {err}");
        assert!(err.contains("[network]"), "{args:?}: {err}");
    }
    let status = w.ok(&["status"], &ws);
    assert!(status.contains(" off "), "{status}");
    w.ok(&["down"], &ws);
    assert!(w.processes().is_empty(), "{:?}", w.processes());
}

#[test]
fn an_unapproved_configuration_starts_nothing_and_runs_no_hook() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("gate");
    let marker = w.runtime.path().join("pwned");
    let config = ws.join(".agentvm/config.toml");
    let approved = std::fs::read_to_string(&config).unwrap();
    // What a guest (or a cloned repository) would append.
    let hostile = format!(
        "{approved}\n[hooks]\npre_up = [\"touch {}\"]\n[[mounts]]\nsource = \"..\"\ntarget = \"/host\"\n\
         [network]\nmode = \"open\"\n",
        marker.display()
    );
    std::fs::write(&config, &hostile).unwrap();
    let o = w.agentvm(&["up"], &ws);
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("changed since you approved it"), "{err}");
    assert!(
        err.contains(&format!("+ pre_up: touch {}", marker.display())),
        "{err}"
    );
    let parent = ws.parent().unwrap().display().to_string();
    assert!(
        err.contains(&format!("+ {parent} -> /host (read-write)")),
        "{err}"
    );
    assert!(
        err.contains("- mode filtered") && err.contains("+ mode open"),
        "{err}"
    );
    assert!(err.contains("agentvm trust"), "{err}");
    assert!(!marker.exists(), "an unapproved hook ran");
    assert!(!w.state(&ws).exists());
    assert_eq!(w.vmms(), 0);
    // `trust` shows the same and approves; then (and only then) it runs.
    let trusted = w.ok(&["trust"], &ws);
    assert!(
        trusted.contains(&format!("+ pre_up: touch {}", marker.display())),
        "{trusted}"
    );
    std::fs::write(
        &config,
        hostile.replace("[[mounts]]\nsource = \"..\"\ntarget = \"/host\"\n", ""),
    )
    .unwrap();
    let o = w.agentvm(&["up"], &ws);
    assert!(
        !o.status.success(),
        "a changed file needs a new approval: {o:?}"
    );
    assert!(!marker.exists());
    w.ok(&["trust"], &ws);
    w.ok(&["up"], &ws);
    assert!(marker.exists(), "the approved hook did not run");
    w.ok(&["down"], &ws);
}

#[test]
fn secrets_run_only_once_approved_and_their_values_stay_out_of_the_state() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("keys");
    let marker = w.runtime.path().join("secret-command-ran");
    let config = ws.join(".agentvm/config.toml");
    let approved = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{approved}\n[network]\ndomains = [\"api.test\"]\n[secrets]\n\
             TOKEN = {{ command = \"touch {} && echo tok-hunter2-from-command\", hosts = [\"api.test\"] }}\n\
             KEY = {{ value = \"${{TEST_SECRET_VALUE}}\", hosts = [\"api.test\"] }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let env = [("TEST_SECRET_VALUE", "sk-proj-hunter3-from-env")];
    let o = w.agentvm_with(&["up"], &ws, &env);
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("+ TOKEN = command touch"), "{err}");
    assert!(!marker.exists(), "an unapproved secret command ran");
    assert!(!w.state(&ws).exists());
    w.ok(&["trust"], &ws);
    let o = w.agentvm_with(&["up"], &ws, &env);
    assert!(o.status.success(), "{o:?}");
    assert!(marker.exists(), "the approved command did not run");
    // `status` names the secrets and their hosts, never a value.
    let status = String::from_utf8_lossy(&w.agentvm(&["status"], &ws).stdout).into_owned();
    assert!(
        status.contains(
            "keys: secrets (the guest holds placeholders): KEY -> api.test; TOKEN -> api.test"
        ),
        "{status}"
    );
    // Neither value is anywhere in the VM's state directory, nor in the
    // VMM's environment or command line.
    let state = w.state(&ws);
    let pid: i32 = std::fs::read_to_string(state.join("vmm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&state).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            seen.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    for f in ["environ", "cmdline"] {
        let p = PathBuf::from(format!("/proc/{pid}/{f}"));
        seen.push((p.clone(), std::fs::read(&p).unwrap()));
    }
    for (p, bytes) in &seen {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("hunter"), "{} holds a value", p.display());
    }
    let snapshot = std::fs::read_to_string(state.join("config.json")).unwrap();
    assert!(snapshot.contains("\"TOKEN\""), "{snapshot}");
    // The VMM built its network stack with interception for the bound
    // host (it says so in its log, naming no value).
    let console = std::fs::read_to_string(state.join("console.log")).unwrap();
    assert!(
        console.contains(
            "agentvm: TLS interception is on for the secrets' hosts: KEY -> api.test; \
             TOKEN -> api.test"
        ),
        "{console}"
    );
    assert!(!console.contains("cannot intercept"), "{console}");
    // The workspace CA: made once, its key the user's alone.
    let ca = w
        .runtime
        .path()
        .join("data/agentvm/ca")
        .join(state.file_name().unwrap());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cert = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    w.ok(&["down"], &ws);
    w.ok(&["up"], &ws);
    assert_eq!(std::fs::read_to_string(ca.join("ca.pem")).unwrap(), cert);
    w.ok(&["down"], &ws);
}

#[test]
fn two_workspaces_with_one_name_have_a_vm_each() {
    let Some(w) = World::new() else { return };
    let a = w.workspace_at("a/api", "api");
    let b = w.workspace_at("b/api", "api");
    w.ok(&["up"], &a);
    let out = w.ok(&["up"], &b);
    assert!(
        out.contains("api is up in"),
        "a second workspace's VM started: {out}"
    );
    assert_eq!(w.vmms(), 2);
    assert_ne!(w.state(&a), w.state(&b));
    let status = w.ok(&["status"], &a);
    let rows: Vec<&str> = status.lines().filter(|l| l.starts_with("api ")).collect();
    assert_eq!(rows.len(), 2, "{status}");
    assert!(
        rows.iter().any(|r| r.ends_with(a.to_str().unwrap())),
        "{status}"
    );
    assert!(
        rows.iter().any(|r| r.ends_with(b.to_str().unwrap())),
        "{status}"
    );
    // A name two VMs share does not pick one.
    let o = w.agentvm(&["logs", "--name", "api"], &a);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 VMs are called api"), "{err}");
    // `down` in one workspace stops that one only.
    w.ok(&["down"], &a);
    assert!(!w.state(&a).exists());
    assert!(w.state(&b).exists());
    assert_eq!(w.vmms(), 1);
    // Now the name is unique.
    let logs = w.ok(&["logs", "--name", "api"], &a);
    assert!(logs.contains("tiny guest booted"), "{logs}");
    w.ok(&["down", "--name", "api"], &a);
    assert_eq!(w.vmms(), 0);
}

#[test]
fn a_state_root_that_is_not_private_is_refused_by_every_command() {
    use std::os::unix::fs::PermissionsExt;
    let Some(w) = World::new() else { return };
    let ws = w.workspace("guarded");
    let marker = w.runtime.path().join("hooked");
    // What another local user would plant: a VM directory with a config
    // whose pre_down hook runs as whoever calls `down`.
    let plant = |root: &Path| {
        let dir = w.state(&ws);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::json!({
                "name": "guarded", "workspace": ws, "kernel": w.kernel, "initrd": null,
                "cmdline": "", "memory_mib": 128, "vcpus": 1, "mounts": [],
                "network_mode": "off", "env_keys": [], "scripts": [],
                "pre_down": [format!("touch {}", marker.display())], "post_down": []
            })
            .to_string(),
        )
        .unwrap();
        std::fs::write(dir.join("vmm.pid"), "1\n").unwrap();
        assert!(dir.starts_with(root));
    };
    let root = w.state_root();
    plant(&root);
    let cases: &[&[&str]] = &[
        &["up"],
        &["down"],
        &["status"],
        &["logs"],
        &["run", "true"],
        &["shell"],
        &["net", "show"],
        &["net", "log"],
    ];
    let refused = |why: &str| {
        for args in cases {
            let o = w.agentvm(args, &ws);
            assert!(!o.status.success(), "{args:?} with {why}: {o:?}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("agentvm will not use it"),
                "{args:?} with {why}: {err}"
            );
            assert!(!marker.exists(), "{args:?} ran a planted hook");
        }
    };
    // Open to others.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(w.state(&ws), std::fs::Permissions::from_mode(0o700)).unwrap();
    refused("the root 0755");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(w.state(&ws), std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("the VM's directory 0777");
    std::fs::set_permissions(w.state(&ws), std::fs::Permissions::from_mode(0o700)).unwrap();
    // Another user's: only root can make one here.
    if nix_chown(&root, 65534) {
        refused("the root owned by uid 65534");
        assert!(nix_chown(&root, 0));
    } else {
        eprintln!("not root: the other-owner case is covered by the mode cases only");
    }
}

/// `chown path uid:uid`; false when not permitted.
fn nix_chown(path: &Path, uid: u32) -> bool {
    Command::new("chown")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn down_undoes_the_git_hooks_and_settings_the_guest_added() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("gitvm");
    std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
    std::fs::write(
        ws.join(".git/config"),
        "[core]\n\trepositoryformatversion = 0\n",
    )
    .unwrap();
    w.ok(&["up"], &ws);
    // What the guest writes through the share while the VM runs.
    std::fs::write(
        ws.join(".git/hooks/post-checkout"),
        "#!/bin/sh\ntouch /tmp/x\n",
    )
    .unwrap();
    let mut config = std::fs::read_to_string(ws.join(".git/config")).unwrap();
    config.push_str(
        "\tfsmonitor = touch /tmp/y\n[remote \"origin\"]\n\turl = https://example.com/r.git\n",
    );
    std::fs::write(ws.join(".git/config"), config).unwrap();
    let o = w.agentvm(&["down"], &ws);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hook post-checkout added"), "{err}");
    assert!(
        err.contains("core.fsmonitor = \"touch /tmp/y\" added"),
        "{err}"
    );
    assert!(!ws.join(".git/hooks/post-checkout").exists());
    let config = std::fs::read_to_string(ws.join(".git/config")).unwrap();
    assert!(!config.contains("fsmonitor"), "{config}");
    // What git does not run stays as the guest left it.
    assert!(
        config.contains("url = https://example.com/r.git"),
        "{config}"
    );
    assert!(ws
        .join(".git/agentvm-quarantine/1/hooks/post-checkout")
        .exists());

    // `git_hooks = "allow"`: the user's choice, approved.
    let text = std::fs::read_to_string(ws.join(".agentvm/config.toml")).unwrap();
    w.configure(&ws, &format!("git_hooks = \"allow\"\n{text}"));
    w.ok(&["up"], &ws);
    std::fs::write(ws.join(".git/hooks/pre-commit"), "#!/bin/sh\n").unwrap();
    let o = w.agentvm(&["down"], &ws);
    assert!(o.status.success(), "{o:?}");
    assert!(ws.join(".git/hooks/pre-commit").exists());
}

#[test]
fn run_starts_the_workspaces_vm_when_it_is_not_running() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("auto");
    assert_eq!(w.vmms(), 0);
    // The tiny guest has no agent to answer the command (its connection
    // waits), but the VM comes up first, reported on stderr: stdout is the
    // command's.
    let err_path = w.runtime.path().join("run.err");
    let out_path = w.runtime.path().join("run.out");
    let mut run = Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .args(["run", "true"])
        .current_dir(&ws)
        .env("XDG_RUNTIME_DIR", w.runtime.path())
        .env("XDG_CONFIG_HOME", w.runtime.path().join("config"))
        .env("XDG_DATA_HOME", w.runtime.path().join("data"))
        .env("AGENTVM_LOG", "error")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        let err = std::fs::read_to_string(&err_path).unwrap();
        if err.contains("auto is up in") || Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = run.kill();
    let _ = run.wait();
    assert!(err.contains("auto is up in"), "{err}");
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "");
    assert_eq!(w.vmms(), 1);
    // An unapproved change is refused before anything starts.
    w.ok(&["down"], &ws);
    let config = ws.join(".agentvm/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[hooks]\npre_up = [\"true\"]\n")).unwrap();
    let o = w.agentvm(&["shell"], &ws);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("agentvm trust"),
        "{o:?}"
    );
    assert_eq!(w.vmms(), 0);
}

/// `Seccomp:` of every thread of process `pid`.
fn seccomp_modes(pid: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map(|v| v.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_vmm_confines_its_threads_as_the_configuration_says() {
    let Some(w) = World::new() else { return };
    for (name, key, want) in [("strict", None, "2"), ("loose", Some("off"), "0")] {
        let ws = w.workspace(name);
        if let Some(level) = key {
            let config = ws.join(".agentvm/config.toml");
            let mut text = std::fs::read_to_string(&config).unwrap();
            text.insert_str(0, &format!("seccomp = \"{level}\"\n"));
            w.configure(&ws, &text);
        }
        w.ok(&["up"], &ws);
        let pid = std::fs::read_to_string(w.state(&ws).join("vmm.pid")).unwrap();
        let modes = seccomp_modes(pid.trim());
        // Main, vCPU, activation, signals, control at least.
        assert!(modes.len() >= 5, "{name}: {modes:?}");
        assert!(modes.iter().all(|m| m == want), "{name}: {modes:?}");
        w.ok(&["down"], &ws);
    }
}

#[test]
fn a_guest_printing_forever_keeps_its_console_log_under_the_cap_and_logs_follows_the_rotation() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("chatty");
    // Prints the ready line, then one line after another for good.
    let mut code = Asm64::new().unwrap();
    code.serial_print("agentvm-guest: ready\n").unwrap();
    let mut top = code.create_label();
    code.set_label(&mut top).unwrap();
    code.serial_print("the guest has something to say, again and again and again\n")
        .unwrap();
    code.jmp(top).unwrap();
    let guest = Program::new("chatty")
        .with_long64(code)
        .build(Format::Elf64)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest.write_to(dir.path()).unwrap();
    w.configure(
        &ws,
        &format!(
            "name = \"chatty\"\nkernel = \"{}\"\n\n[resources]\nvcpus = 1\nmemory_mib = 128\n\
             log_max_mib = 1\nnet_memory_mib = 8\n",
            kernel.display()
        ),
    );
    w.ok(&["up"], &ws);
    let state = w.state(&ws);
    // The network budget from the same section reached the stack.
    let st = control(
        &state.join("control.sock"),
        "{\"version\":1,\"op\":\"status\"}\n",
    );
    assert_eq!(st["limits"]["net"]["net_memory_limit_kib"], 8 << 10, "{st}");
    let (live, rotated) = (state.join("console.log"), state.join("console.log.1"));
    let mut follow = Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .args(["logs", "-f"])
        .current_dir(&ws)
        .env("XDG_RUNTIME_DIR", w.runtime.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes: a full pipe would hold `logs -f` back.
    let mut out = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut followed = String::new();
        std::io::Read::read_to_string(&mut out, &mut followed).unwrap();
        followed
    });
    // Past the cap once, and on into the next file (the console runs at
    // some 30 KB/s on this KVM: each byte is an exit).
    let t = Instant::now();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    while size(&rotated) == 0 || size(&live) < 64 << 10 {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the console never rotated"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = w.ok(&["logs"], &ws);
    let sizes = (size(&live), size(&rotated));
    w.ok(&["down", "--timeout", "1"], &ws);
    let _ = follow.wait();
    let followed = reader.join().unwrap();
    println!(
        "console flood: rotated in {:?}; console.log {} bytes, console.log.1 {} bytes (cap {}); \
         `logs` printed {} bytes, `logs -f` {} bytes",
        t.elapsed(),
        sizes.0,
        sizes.1,
        1 << 20,
        logs.len(),
        followed.len()
    );
    assert!(sizes.0 <= 1 << 20 && sizes.1 <= 1 << 20, "{sizes:?}");
    assert!(
        sizes.1 > (1 << 20) - 64,
        "the rotated file is not full: {sizes:?}"
    );
    // `logs` shows both files: more than the live one holds.
    assert!(logs.len() as u64 > sizes.0 + (1 << 19), "{}", logs.len());
    assert!(logs.contains("again and again"));
    // `logs -f` read on across the rotation, past what one file holds.
    assert!(
        followed.len() as u64 > (1 << 20) + (32 << 10),
        "{} bytes followed",
        followed.len()
    );
    assert!(followed.starts_with("agentvm-guest: ready\n"));
}

#[test]
fn the_background_vmm_gets_no_host_secret_and_no_inherited_fd() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("clean");
    let inherited = std::fs::File::create(w.runtime.path().join("inherited")).unwrap();
    // Without CLOEXEC: `up`, and any child that does not close it, has it.
    let _dup = nix::unistd::dup(&inherited).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .arg("up")
        .current_dir(&ws)
        .env("XDG_RUNTIME_DIR", w.runtime.path())
        .env("XDG_CONFIG_HOME", w.runtime.path().join("config"))
        .env("XDG_DATA_HOME", w.runtime.path().join("data"))
        .env("AGENTVM_LOG", "error")
        .env("AWS_SECRET_ACCESS_KEY", "not-for-the-vmm")
        .env("GITHUB_TOKEN", "ghp_not_for_the_vmm")
        .env("ANTHROPIC_API_KEY", "sk-ant-not-for-the-vmm")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let pid = std::fs::read_to_string(w.state(&ws).join("vmm.pid")).unwrap();
    let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
    let environ = std::fs::read(proc.join("environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let names: Vec<&str> = vars.iter().filter_map(|v| v.split('=').next()).collect();
    for name in &names {
        assert!(
            [
                "PATH",
                "HOME",
                "AGENTVM_VIRTIOFSD",
                "AGENTVM_LOG",
                "LANG",
                "LC_ALL"
            ]
            .contains(name),
            "{name} reached the VMM: {names:?}"
        );
    }
    assert!(names.contains(&"AGENTVM_LOG"), "{names:?}");
    assert!(
        !vars.iter().any(|v| v.contains("not-for-the-vmm")),
        "{vars:?}"
    );
    let open: Vec<PathBuf> = std::fs::read_dir(proc.join("fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    let leaked = w.runtime.path().join("inherited");
    assert!(!open.contains(&leaked), "inherited fd kept: {open:?}");
    // Every thread of it (main, control, vCPU, devices) has no_new_privs.
    for task in std::fs::read_dir(proc.join("task")).unwrap().flatten() {
        // A thread may end between the listing and the read (the control
        // connection `up` just closed).
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        assert!(
            status.lines().any(|l| l == "NoNewPrivs:\t1"),
            "{}",
            status.lines().take(2).collect::<Vec<_>>().join(" ")
        );
    }
    w.ok(&["down"], &ws);
}

/// One ssh-agent request on `conn` (`body`: type and contents), its answer.
fn agent_ask(conn: &mut UnixStream, body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut msg = (body.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(body);
    conn.write_all(&msg).unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut answer).unwrap();
    answer
}

#[test]
fn the_vmm_relays_the_hosts_ssh_agent_filtered_under_its_confinement() {
    let Some(w) = World::new() else { return };
    if Command::new("ssh-agent").arg("-?").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "openssh-client is needed");
        eprintln!("skipped: no ssh-agent (apt-get install openssh-client)");
        return;
    }
    // The host's agent, with one key, in a directory Landlock leaves the
    // VMM no access to.
    let keys = tempfile::tempdir().unwrap();
    let sock = keys.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let key = keys.path().join("k");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");

    let ws = w.workspace("keys");
    let text = std::fs::read_to_string(ws.join(".agentvm/config.toml")).unwrap();
    w.configure(&ws, &format!("{text}\n[ssh]\nagent = true\n"));
    let up = w.agentvm_with(&["up"], &ws, &[("SSH_AUTH_SOCK", sock.to_str().unwrap())]);
    assert!(up.status.success(), "{up:?}");
    let state = w.state(&ws);
    let relay = state.join("vsock.sock_1025");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&relay).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let snapshot = std::fs::read_to_string(state.join("config.json")).unwrap();
    assert!(snapshot.contains("agent.sock"), "{snapshot}");

    // What the guest's vsock connection to port 1025 reaches.
    let mut conn = UnixStream::connect(&relay).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let listed = agent_ask(&mut conn, &[11]);
    assert_eq!(listed[0], 12, "{listed:?}");
    assert_eq!(&listed[1..5], &1u32.to_be_bytes());
    // LOCK and REMOVE_ALL_IDENTITIES: refused, the agent untouched.
    assert_eq!(agent_ask(&mut conn, &[22, 0, 0, 0, 1, b'p']), [5]);
    assert_eq!(agent_ask(&mut conn, &[19]), [5]);
    let listed = Command::new("ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    drop(conn);
    // The VMM is still there (no seccomp kill), and cleans up at down.
    assert_eq!(w.vmms(), 1);
    w.ok(&["down"], &ws);
    assert!(!relay.exists());
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_files_source_that_is_missing_or_guest_writable_stops_up_before_the_vm() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("files");
    let config = ws.join(".agentvm/config.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    let missing = w.runtime.path().join("no-such-gitconfig");
    w.configure(
        &ws,
        &format!(
            "{base}\n[[files]]\nsource = \"{}\"\ntarget = \"~/.gitconfig\"\n",
            missing.display()
        ),
    );
    let o = w.agentvm(&["up"], &ws);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{} does not exist", missing.display()))
            && err.contains("config.toml:"),
        "{err}"
    );
    assert!(!w.state(&ws).exists());
    // A source in the workspace (shared read-write) is the guest's to
    // swap for a link to any of the user's files: refused.
    std::fs::write(ws.join("gitconfig"), "[user]\n").unwrap();
    w.configure(
        &ws,
        &format!("{base}\n[[files]]\nsource = \"gitconfig\"\ntarget = \"~/.gitconfig\"\n"),
    );
    let o = w.agentvm(&["up"], &ws);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("inside the read-write share"), "{err}");
    assert!(!w.state(&ws).exists());
    assert!(w.processes().is_empty(), "{:?}", w.processes());
    // The approval prompt names each source and target.
    std::fs::write(
        &config,
        format!("{base}\n[[files]]\nsource = \"/etc/hostname\"\ntarget = \"/etc/x\"\n"),
    )
    .unwrap();
    let o = w.agentvm(&["up"], &ws);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("+ /etc/hostname -> /etc/x (mode of the source)"),
        "{err}"
    );
}
