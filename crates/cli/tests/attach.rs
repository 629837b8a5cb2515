//! `agentvm attach` end to end against the real guest agent (`agentvm-guest
//! serve`) behind a stand-in for the VMM's hybrid vsock socket: exit codes,
//! streams, stdin, and `--tty` under a real pseudo-terminal. No VM.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest agent binary: next to `agentvm` when the workspace was built
/// (CI builds every binary), else built into its own target directory.
fn agent_binary() -> PathBuf {
    let sibling = Path::new(env!("CARGO_BIN_EXE_agentvm")).with_file_name("agentvm-guest");
    if sibling.is_file() {
        return sibling;
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = ws.join("target/cli-tests");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&ws)
        .args([
            "build",
            "-q",
            "-p",
            "agentvm-guest",
            "--bin",
            "agentvm-guest",
        ])
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .unwrap();
    assert!(status.success());
    target.join("debug/agentvm-guest")
}

/// An agent, and a socket that behaves like the VMM's vsock UDS in front of it.
struct Guest {
    agent: Child,
    uds: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

fn guest() -> Guest {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let mut agent = Command::new(agent_binary())
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", agent_sock.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(agent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "agentvm-guest: ready\n");
    let uds = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    std::thread::spawn(move || {
        for host in listener.incoming() {
            let agent_sock = agent_sock.clone();
            std::thread::spawn(move || splice(host.unwrap(), &agent_sock));
        }
    });
    Guest {
        agent,
        uds,
        _dir: dir,
    }
}

/// `CONNECT 1024\n` → `OK <n>\n`, then bytes both ways.
fn splice(mut host: UnixStream, agent_sock: &Path) {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        host.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert_eq!(line, b"CONNECT 1024\n");
    host.write_all(b"OK 1073741824\n").unwrap();
    let guest = UnixStream::connect(agent_sock).unwrap();
    let mut host_r = host.try_clone().unwrap();
    let mut guest_w = guest.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut host_r, &mut guest_w);
        let _ = guest_w.shutdown(std::net::Shutdown::Write);
    });
    let mut guest_r = guest;
    let _ = std::io::copy(&mut guest_r, &mut host);
    let _ = host.shutdown(std::net::Shutdown::Both);
}

fn attach(g: &Guest, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .arg("attach")
        .arg("--uds")
        .arg(&g.uds)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    child.wait_with_output().unwrap()
}

#[test]
fn attach_without_a_vm_says_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .args(["attach", "--uds", "/nonexistent/vsock.sock", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the VM running with --vsock"), "{err}");
}

/// `agentvm attach --uds UDS ARGS…` as a child with its output collected.
fn attach_at(uds: &Path, args: &[&str]) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .arg("attach")
        .arg("--uds")
        .arg(uds)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, t.elapsed())
}

#[test]
fn attach_wait_connects_once_the_vm_socket_appears() {
    let g = guest();
    let late = g._dir.path().join("late.sock");
    let target = g.uds.clone();
    let link = late.clone();
    let appear = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::os::unix::fs::symlink(target, link).unwrap();
    });
    let (out, _) = attach_at(&late, &["--wait", "30", "--", "echo", "up"]);
    appear.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"up\n");
}

#[test]
fn attach_wait_gives_up_when_the_vm_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    // A VM whose guest never listens: the VMM closes every connection.
    let listener = UnixListener::bind(&uds).unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let gone = uds.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        std::fs::remove_file(gone).unwrap();
    });
    let (out, took) = attach_at(&uds, &["--wait", "60", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stopped before its guest agent answered"),
        "{err}"
    );
    assert!(took < Duration::from_secs(50), "waited the whole minute");
}

#[test]
fn attach_wait_has_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = attach_at(
        &dir.path().join("never.sock"),
        &["--wait", "0.3", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gave up after waiting 0.3 s"), "{err}");
    assert!(err.contains("is the VM running with --vsock"), "{err}");
    let (out, _) = attach_at(&dir.path().join("never.sock"), &["--wait=-1", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a number of seconds"));
}

#[test]
fn attach_streams_and_propagates_exit_codes() {
    let g = guest();
    let out = attach(
        &g,
        &["--", "sh", "-c", "echo out; echo err >&2; exit 7"],
        b"",
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let out = attach(&g, &["--", "sh", "-c", "kill -TERM $$"], b"");
    assert_eq!(out.status.code(), Some(143), "killed by SIGTERM is 128+15");

    let input: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = attach(&g, &["--", "cat"], &input);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == input, "cat echoed {} bytes", out.stdout.len());

    let out = attach(
        &g,
        &[
            "-e",
            "GREETING=hi",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $GREETING $(pwd)",
        ],
        b"",
    );
    assert_eq!(out.stdout, b"hi /tmp\n");

    let out = attach(&g, &["--", "/no/such/program"], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot run /no/such/program in the guest"),
        "{err}"
    );
}

/// Opens a PTY pair sized `rows` × `cols`.
fn pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let p = nix::pty::openpty(Some(&ws), None).unwrap();
    (p.master, p.slave)
}

fn set_size(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a live local.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0);
}

/// Reads from the PTY master until the text contains `needle`.
fn read_until(master: &mut std::fs::File, acc: &mut String, needle: &str) {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    while !acc.contains(needle) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no {needle:?} in {acc:?}"
        );
        match master.read(&mut buf) {
            Ok(0) => panic!("EOF before {needle:?}: {acc:?}"),
            Ok(n) => acc.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("{e} before {needle:?}: {acc:?}"),
        }
    }
}

#[test]
fn attach_tty_is_raw_follows_resizes_and_restores_the_terminal() {
    let g = guest();
    let (master, slave) = pty(33, 101);
    let before = nix::sys::termios::tcgetattr(&slave).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvm"));
    cmd.arg("attach")
        .arg("--uds")
        .arg(&g.uds)
        .args([
            "--tty",
            "--",
            "sh",
            "-c",
            "tty; stty size; read x; stty size; exit 5",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and TIOCSCTTY are plain system calls; the child makes the
    // PTY its controlling terminal so that it gets SIGWINCH like a shell would.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut m = std::fs::File::from(master.try_clone().unwrap());
    let mut acc = String::new();
    read_until(&mut m, &mut acc, "33 101");
    assert!(acc.contains("/dev/pts/"), "{acc:?}");
    // Raw mode while attached: no local echo, no line editing.
    let raw = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert!(!raw
        .local_flags
        .contains(nix::sys::termios::LocalFlags::ICANON));
    set_size(&master, 40, 120); // the kernel sends SIGWINCH to agentvm
    std::thread::sleep(Duration::from_millis(300));
    m.write_all(b"\r").unwrap();
    acc.clear();
    read_until(&mut m, &mut acc, "40 120");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5));
    let after = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert_eq!(after.local_flags, before.local_flags, "terminal restored");
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
}

#[test]
fn attach_poweroff_asks_the_agent_to_power_off() {
    let mut g = guest();
    let (out, _) = attach_at(&g.uds, &["--poweroff"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let t = Instant::now();
    while g.agent.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the agent still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (out, _) = attach_at(&g.uds, &["--poweroff", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a command with --poweroff is a usage error"
    );
}
