//! An agent (`agentvm-guest serve`) on a Unix socket, and client helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Cursor, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use agentvm_protocol::client::{self, ClientError, Stdio as ClientStdio};
use agentvm_protocol::{ExitStatus, Start};

pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(&[])
    }

    /// `serve` with extra options (`--root DIR`, `--user NAME`).
    pub fn start_with(extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentvm-guest"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "agentvm-guest: ready\n");
        Agent {
            child,
            socket,
            _dir: dir,
        }
    }

    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).unwrap()
    }

    /// Runs `start` with `stdin`, collecting stdout and stderr.
    pub fn run_start(
        &self,
        start: Start,
        stdin: &[u8],
    ) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), ClientError> {
        let out = Shared::default();
        let err = Shared::default();
        let status = client::run_unix(
            self.connect(),
            start,
            ClientStdio {
                stdin: Some(Box::new(Cursor::new(stdin.to_vec()))),
                stdout: Box::new(out.clone()),
                stderr: Box::new(err.clone()),
            },
        )?;
        Ok((status, out.take(), err.take()))
    }

    pub fn run(&self, argv: &[&str], stdin: &[u8]) -> (ExitStatus, Vec<u8>, Vec<u8>) {
        self.run_start(start(argv), stdin).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(argv: &[&str]) -> Start {
    Start {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        ..Start::default()
    }
}

/// A `Write` whose bytes the test reads afterwards.
#[derive(Clone, Default)]
pub struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (xorshift64).
pub fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Waits until process `pid` has a child that runs `comm`. A shell that
/// printed a line may not have started its next command yet, and dash
/// blocks signals between its vfork and the exec: a signal sent to the group
/// in that gap waits in the shell while the command runs on.
pub fn wait_for_child(pid: u32, comm: &str) {
    let t = std::time::Instant::now();
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let running = children.split_whitespace().any(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == comm)
        });
        if running {
            return;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "process {pid} never started {comm}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
