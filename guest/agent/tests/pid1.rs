//! T0: the agent as PID 1 — in a new PID, mount, UTS and network namespace
//! on the host (`unshare`), serving on a Unix socket instead of vsock: the
//! API file systems, the host name, reaping as the real init, and poweroff
//! (which the kernel turns into the namespace's init dying of SIGINT).
//! Needs root and util-linux `unshare`; skips otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentvm_protocol::client;
use agentvm_protocol::ExitStatus;
use common::{start, Shared};

/// The fd number the listening socket has in init.
const INHERITED_FD: i32 = 100;

struct Init {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn boot() -> Option<Init> {
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root for namespaces");
        return None;
    }
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--uts", "--net", "true"])
        .status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        eprintln!("skipped: unshare cannot create namespaces here");
        return None;
    }
    // init mounts a tmpfs over /tmp (where the target directory may be), so
    // it gets the socket already listening, as an inherited fd.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount",
        "--uts",
        "--net",
        "--propagation",
        "private",
    ])
    .arg(env!("CARGO_BIN_EXE_agentvm-guest"))
    .args(["init", "--listen"])
    .arg(format!("fd:{INHERITED_FD}"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; `fd` stays open in the parent
    // until spawn returns, and the copy (without CLOEXEC) is the child's.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, INHERITED_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.any(|l| l.unwrap() == "agentvm-guest: ready");
    assert!(ready, "no ready line");
    Some(Init {
        child,
        socket,
        _dir: dir,
    })
}

fn run(init: &Init, script: &str) -> (ExitStatus, String) {
    let out = Shared::default();
    let st = client::run_unix(
        UnixStream::connect(&init.socket).unwrap(),
        start(&["sh", "-c", script]),
        client::Stdio {
            stdin: None,
            stdout: Box::new(out.clone()),
            stderr: Box::new(std::io::stderr()),
        },
    )
    .unwrap();
    (st, String::from_utf8(out.take()).unwrap())
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "init did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pid1_sets_up_the_system_reaps_and_powers_off() {
    let Some(mut init) = boot() else { return };
    let (st, out) = run(
        &init,
        "cat /proc/1/comm; hostname; \
         for m in /proc /sys /dev /dev/pts /run /tmp; do \
           grep -q \" $m \" /proc/mounts && echo mounted $m; done; \
         test -c /dev/null && echo devnull",
    );
    assert_eq!(st, ExitStatus::Code(0));
    assert_eq!(
        out,
        "agentvm-guest\nagentvm\nmounted /proc\nmounted /sys\nmounted /dev\n\
         mounted /dev/pts\nmounted /run\nmounted /tmp\ndevnull\n"
    );
    // Orphans land on PID 1 itself here, and must not linger as zombies.
    let (st, _) = run(
        &init,
        "for i in 1 2 3; do (sleep 0.1 &); done >/dev/null 2>&1",
    );
    assert_eq!(st, ExitStatus::Code(0));
    std::thread::sleep(Duration::from_millis(500));
    let (_, zombies) = run(&init, "grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l");
    assert_eq!(zombies.trim(), "0");
    assert_eq!(run(&init, "exit 3").0, ExitStatus::Code(3));

    client::poweroff(UnixStream::connect(&init.socket).unwrap()).unwrap();
    let st = wait_exit(&mut init.child);
    // reboot(POWER_OFF) in a PID namespace: its init dies of SIGINT, which
    // unshare passes on.
    assert!(st.signal() == Some(2) || st.code() == Some(130), "{st:?}");
}

#[test]
fn pid1_powers_off_on_sigterm() {
    let Some(mut init) = boot() else { return };
    // The agent is unshare's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", init.child.id())).unwrap();
    let agent_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let (_, out) = run(&init, "sleep 60 >/dev/null 2>&1 & echo started");
    assert_eq!(out, "started\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_exit(&mut init.child);
    assert!(st.signal() == Some(2) || st.code() == Some(130), "{st:?}");
    assert!(!Path::new(&format!("/proc/{agent_pid}")).exists());
}
