//! `agentvm up` on a running VM says what differs from the configuration;
//! `up --restart` stops it and starts it again with the configuration as
//! it is now. Tiny guests on the host's /dev/kvm, as in `lifecycle.rs`
//! (the tiny guest and the workspace ids come from `common`).
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

struct World {
    runtime: tempfile::TempDir,
    kernel: PathBuf,
    _guest_dir: tempfile::TempDir,
}

impl World {
    /// `None` (with the reason printed) where /dev/kvm cannot be opened.
    fn new() -> Option<World> {
        let guest_dir = tempfile::tempdir().unwrap();
        let kernel = common::ready_guest(guest_dir.path(), "")?;
        Some(World {
            runtime: tempfile::Builder::new().prefix("avm").tempdir().unwrap(),
            kernel,
            _guest_dir: guest_dir,
        })
    }

    /// A workspace named `name` booting the tiny guest with `memory_mib`
    /// and `extra` appended to its configuration, approved.
    fn workspace(&self, name: &str, memory_mib: u64, extra: &str) -> PathBuf {
        let dir = self.runtime.path().join("ws").join(name);
        std::fs::create_dir_all(dir.join(".agentvm")).unwrap();
        self.configure(&dir, memory_mib, extra, true);
        dir
    }

    /// Rewrites the configuration of `ws` (the same name and kernel),
    /// approving it when `approve`.
    fn configure(&self, ws: &Path, memory_mib: u64, extra: &str, approve: bool) {
        let name = ws.file_name().unwrap().to_str().unwrap();
        let text = format!(
            "name = \"{name}\"\nkernel = \"{}\"\n\n[resources]\nvcpus = 1\nmemory_mib = \
             {memory_mib}\n{extra}",
            self.kernel.display()
        );
        std::fs::write(ws.join(".agentvm/config.toml"), text).unwrap();
        if approve {
            self.ok(&["trust"], ws);
        }
    }

    /// The state directory of the VM of `ws`.
    fn state(&self, ws: &Path) -> PathBuf {
        self.runtime
            .path()
            .join("agentvm")
            .join(common::workspace_id(ws))
    }

    /// The VMM's pid as its pid file has it.
    fn pid(&self, ws: &Path) -> i32 {
        std::fs::read_to_string(self.state(ws).join("vmm.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The running VM's memory, as its VMM reports it.
    fn memory_mib(&self, ws: &Path) -> u64 {
        let s = UnixStream::connect(self.state(ws).join("control.sock")).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(b"{\"version\":1,\"op\":\"status\"}\n").unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        v["memory_mib"].as_u64().unwrap()
    }

    /// Whether the VMM answers `status` (a VM still starting does not).
    fn memory_mib_ready(&self, ws: &Path) -> bool {
        UnixStream::connect(self.state(ws).join("control.sock")).is_ok()
    }

    fn agentvm(&self, args: &[&str], workspace: &Path) -> Output {
        self.command(args, workspace).output().unwrap()
    }

    /// `agentvm ARGS` in `workspace`, in this world.
    fn command(&self, args: &[&str], workspace: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvm"));
        cmd.args(args)
            .current_dir(workspace)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("XDG_CONFIG_HOME", self.runtime.path().join("config"))
            .env("XDG_DATA_HOME", self.runtime.path().join("data"))
            .env("AGENTVM_LOG", "error")
            .env_remove("AGENTVM_TEST_UNSET");
        cmd
    }

    /// stdout and stderr of a command that must succeed.
    fn ok(&self, args: &[&str], workspace: &Path) -> String {
        let o = self.agentvm(args, workspace);
        assert!(o.status.success(), "agentvm {args:?}: {o:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A failed test must not leave VMMs behind.
        common::kill_vmms(&self.runtime.path().join("agentvm"));
    }
}

#[test]
fn up_says_what_differs_and_up_restart_applies_it() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("mem", 128, "");
    let out = w.ok(&["up"], &ws);
    assert!(out.contains("mem is up in"), "{out}");
    let pid = w.pid(&ws);

    let again = w.ok(&["up"], &ws);
    assert!(again.contains("already running"), "{again}");
    assert!(again.contains("up to date"), "{again}");
    assert!(!again.contains("differs"), "{again}");

    // A new memory size: listed, not applied.
    w.configure(&ws, 256, "", true);
    let changed = w.ok(&["up"], &ws);
    assert!(
        changed.contains("the running VM differs from the configuration:"),
        "{changed}"
    );
    assert!(
        changed.contains("resources: memory 128 MiB → 256 MiB"),
        "{changed}"
    );
    assert!(changed.contains("`agentvm up --restart`"), "{changed}");
    assert!(!changed.contains("up to date"), "{changed}");
    assert_eq!(w.pid(&ws), pid, "`up` alone restarts nothing");
    assert_eq!(w.memory_mib(&ws), 128);

    // --restart: a new VMM with the new size.
    let restarted = w.ok(&["up", "--restart", "--stop-timeout", "2"], &ws);
    assert!(restarted.contains("mem is up in"), "{restarted}");
    let new_pid = w.pid(&ws);
    assert_ne!(new_pid, pid, "{restarted}");
    assert_eq!(w.memory_mib(&ws), 256);
    let snapshot = std::fs::read_to_string(w.state(&ws).join("config.json")).unwrap();
    assert!(snapshot.contains("\"memory_mib\": 256"), "{snapshot}");
    let status = w.ok(&["status"], &ws);
    assert!(status.contains(&new_pid.to_string()), "{status}");

    // And now it is up to date.
    let now = w.ok(&["up"], &ws);
    assert!(now.contains("up to date"), "{now}");
    assert_eq!(w.pid(&ws), new_pid);
    w.ok(&["down"], &ws);
}

#[test]
fn restart_of_a_stopped_vm_is_up() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("cold", 128, "");
    let out = w.ok(&["up", "--restart"], &ws);
    assert!(out.contains("cold is up in"), "{out}");
    assert!(!out.contains("stopping"), "{out}");
    w.ok(&["down"], &ws);
}

#[test]
fn an_env_change_names_the_variable_never_the_value() {
    let Some(w) = World::new() else { return };
    // The host variable is unset, so the entry is left out of the guest
    // (this guest has no agent to give it to); its text is what changes.
    let ws = w.workspace(
        "env",
        128,
        "\n[env]\nFOO = \"s3cret-${AGENTVM_TEST_UNSET}\"\nBAR = \"same-${AGENTVM_TEST_UNSET}\"\n",
    );
    w.ok(&["up"], &ws);
    w.configure(
        &ws,
        128,
        "\n[env]\nFOO = \"0th3r-${AGENTVM_TEST_UNSET}\"\nBAR = \"same-${AGENTVM_TEST_UNSET}\"\n",
        true,
    );
    let out = w.ok(&["up"], &ws);
    assert!(out.contains("env FOO changed"), "{out}");
    assert!(!out.contains("BAR"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    assert!(!out.contains("0th3r"), "{out}");
    let snapshot = std::fs::read_to_string(w.state(&ws).join("config.json")).unwrap();
    assert!(!snapshot.contains("s3cret"), "{snapshot}");
    w.ok(&["down"], &ws);
}

#[test]
fn an_unapproved_change_is_refused_before_anything_stops() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("trust", 128, "");
    w.ok(&["up"], &ws);
    let pid = w.pid(&ws);
    w.configure(&ws, 256, "", false);
    for args in [&["up"][..], &["up", "--restart"]] {
        let o = w.agentvm(args, &ws);
        assert!(!o.status.success(), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("agentvm trust"), "{err}");
        assert_eq!(w.pid(&ws), pid, "{args:?}");
        assert_eq!(w.memory_mib(&ws), 128);
    }
    w.ok(&["down"], &ws);
}

#[test]
fn run_and_shell_restart_before_they_attach() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("attach", 128, "");
    w.ok(&["up"], &ws);
    let mut pid = w.pid(&ws);
    for (args, memory) in [
        (&["run", "--restart", "true"][..], 192),
        (&["shell", "--restart"], 160),
    ] {
        w.configure(&ws, memory, "", true);
        // This guest has no agent, so the command then waits for one: it
        // is killed once the VM has restarted.
        let mut child = w
            .command(args, &ws)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let restarted = loop {
            let now = std::fs::read_to_string(w.state(&ws).join("vmm.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(new) = now.filter(|&p| p != pid) {
                if std::fs::metadata(w.state(&ws).join("control.sock")).is_ok()
                    && w.memory_mib_ready(&ws)
                {
                    break Some(new);
                }
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        let new_pid = restarted.unwrap_or_else(|| panic!("{args:?} did not restart the VM"));
        assert_eq!(w.memory_mib(&ws), memory, "{args:?}");
        pid = new_pid;
    }
    w.ok(&["down"], &ws);
}

#[test]
fn a_richer_configuration_is_up_to_date_until_it_changes() {
    let Some(w) = World::new() else { return };
    let network = |domain: &str, host: &str| {
        format!(
            "\n[[mounts]]\nsource = \"data\"\ntarget = \"/data\"\nread_only = true\n\
             [network]\ndomains = [\"{domain}\", \"api.test\"]\nports = [443, 8443]\n\
             [network.hosts]\n\"db.test\" = \"127.0.0.1\"\n\
             [env]\nPLAIN = \"v-${{AGENTVM_TEST_UNSET}}\"\n\
             [secrets]\nTOKEN = {{ value = \"${{AGENTVM_TEST_UNSET}}\", hosts = [\"{host}\"] }}\n"
        )
    };
    let ws = w.runtime.path().join("ws").join("rich");
    std::fs::create_dir_all(ws.join(".agentvm")).unwrap();
    std::fs::create_dir_all(ws.join("data")).unwrap();
    w.configure(&ws, 128, &network("a.test", "api.test"), true);
    w.ok(&["up"], &ws);
    let pid = w.pid(&ws);
    let same = w.ok(&["up"], &ws);
    assert!(same.contains("up to date"), "{same}");

    w.configure(&ws, 128, &network("b.test", "api.test"), true);
    let changed = w.ok(&["up"], &ws);
    assert!(
        changed.contains("network: domains +b.test -a.test"),
        "{changed}"
    );
    assert!(!changed.contains("mounts:"), "{changed}");
    assert_eq!(w.pid(&ws), pid);
    w.ok(&["down"], &ws);
}

#[test]
fn a_rebuilt_kernel_at_the_same_path_is_a_change() {
    let Some(w) = World::new() else { return };
    let ws = w.workspace("rebuilt", 128, "");
    w.ok(&["up"], &ws);
    // A rebuild writes a new file and renames it over the old one.
    let tmp = w.kernel.with_extension("new");
    std::fs::copy(&w.kernel, &tmp).unwrap();
    std::fs::rename(&tmp, &w.kernel).unwrap();
    let out = w.ok(&["up"], &ws);
    assert!(out.contains("image: rebuilt since the VM started"), "{out}");
    let restarted = w.ok(&["up", "--restart"], &ws);
    assert!(restarted.contains("rebuilt is up in"), "{restarted}");
    let now = w.ok(&["up"], &ws);
    assert!(now.contains("up to date"), "{now}");
    w.ok(&["down"], &ws);
}
