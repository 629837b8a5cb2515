//! Giving guest memory back to the host at run time: the balloon's target,
//! its statistics, and reclaim (drop the guest's caches through the guest
//! agent so that free page reporting can return those pages too).
//!
//! Free page reporting returns memory the guest has freed on its own, but a
//! Linux guest keeps file pages cached for as long as nothing else wants
//! the memory, so a guest that once read a large tree holds that much host
//! memory until asked. [`reclaim`] asks: it runs `sync` and writes
//! `/proc/sys/vm/drop_caches` and `compact_memory` through the agent; the
//! pages freed that way are reported (in 2–4 MiB blocks, a few seconds
//! later) and the balloon device returns them to the host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentvm_devices::virtio::balloon::{BalloonCounters, BalloonError, BalloonHandle, StatsUpdate};
use agentvm_protocol::client::{self, ClientError};
use agentvm_protocol::{ExitStatus, Start, EXEC_PORT};

/// What the guest runs for [`reclaim`]. `compact_memory` may be missing
/// (kernels without compaction); that is not an error.
const RECLAIM_SCRIPT: &str = "sync; echo 3 > /proc/sys/vm/drop_caches; \
     [ -w /proc/sys/vm/compact_memory ] && echo 1 > /proc/sys/vm/compact_memory; exit 0";

/// Errors of the memory controls.
#[derive(Debug, thiserror::Error)]
pub enum MemoryControlError {
    /// The VM was built without a balloon device.
    #[error("This VM has no balloon device")]
    NoBalloon,
    /// The VM was built without a guest agent socket.
    #[error("This VM has no guest agent socket to reclaim memory through")]
    NoAgent,
    /// The balloon device refused the request.
    #[error("Balloon request failed")]
    Balloon(#[source] BalloonError),
    /// The guest sent no statistics in time.
    #[error("The guest sent no balloon statistics within {0:?}")]
    StatsTimeout(Duration),
    /// The guest agent could not be reached or failed.
    #[error("Cannot reach the guest agent at {path}")]
    Agent {
        /// The agent's vsock socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The reclaim command did not succeed in the guest.
    #[error("Reclaim in the guest ended with {0:?}")]
    Command(ExitStatus),
}

/// The balloon's state and the guest's latest statistics.
#[derive(Debug, Clone)]
pub struct BalloonReport {
    /// Target the host set, in 4 KiB pages.
    pub target_pages: u32,
    /// Pages the guest says the balloon holds.
    pub actual_pages: u32,
    /// The device's counters (pages held, reported bytes, ignored input).
    pub counters: BalloonCounters,
    /// The statistics the guest sent in answer to this request.
    pub stats: StatsUpdate,
}

/// Sets the balloon's target size in MiB (memory taken from the guest).
pub fn set_target_mib(balloon: Option<&BalloonHandle>, mib: u64) -> Result<(), MemoryControlError> {
    balloon
        .ok_or(MemoryControlError::NoBalloon)?
        .set_target_mib(mib)
        .map_err(MemoryControlError::Balloon)
}

/// Asks the guest for fresh statistics and waits up to `timeout` for them.
pub fn report(
    balloon: Option<&BalloonHandle>,
    timeout: Duration,
) -> Result<BalloonReport, MemoryControlError> {
    let balloon = balloon.ok_or(MemoryControlError::NoBalloon)?;
    let seen = balloon.stats().map_or(0, |s| s.generation);
    balloon
        .request_stats()
        .map_err(MemoryControlError::Balloon)?;
    let stats = balloon
        .wait_stats(seen, timeout)
        .ok_or(MemoryControlError::StatsTimeout(timeout))?;
    Ok(BalloonReport {
        target_pages: balloon.target_pages(),
        actual_pages: balloon.actual_pages(),
        counters: balloon.counters(),
        stats,
    })
}

/// Drops the guest's caches through the guest agent behind the vsock
/// socket `agent`, so that free page reporting returns them.
pub fn reclaim(agent: Option<&Path>) -> Result<(), MemoryControlError> {
    let path = agent.ok_or(MemoryControlError::NoAgent)?;
    let err = |source| MemoryControlError::Agent {
        path: path.to_path_buf(),
        source,
    };
    let stream = client::connect_vsock(path, EXEC_PORT).map_err(err)?;
    let start = Start {
        argv: vec![
            b"sh".to_vec(),
            b"-c".to_vec(),
            RECLAIM_SCRIPT.as_bytes().to_vec(),
        ],
        env: Vec::new(),
        cwd: None,
        user: None,
        tty: None,
    };
    let stdio = client::Stdio {
        stdin: None,
        stdout: Box::new(std::io::sink()),
        stderr: Box::new(std::io::sink()),
    };
    match client::run_unix(stream, start, stdio).map_err(err)? {
        ExitStatus::Code(0) => Ok(()),
        other => Err(MemoryControlError::Command(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    use agentvm_protocol::io::FrameReader;
    use agentvm_protocol::Frame;

    use super::*;

    /// A stand-in for the VMM's vsock socket with an agent behind it that
    /// answers one command with `exit`; returns the command it was given.
    fn fake_agent(
        exit: ExitStatus,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Start>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let agent = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = [0u8; 13];
            conn.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"CONNECT 1024\n");
            conn.write_all(b"OK 1\n").unwrap();
            let mut reader = FrameReader::new(conn.try_clone().unwrap());
            let start = loop {
                match reader.read_frame().unwrap() {
                    Some(Frame::Start(s)) => break s,
                    Some(_) => {}
                    None => panic!("no Start frame"),
                }
            };
            let mut out = Frame::hello().encode().unwrap();
            out.extend(Frame::Exit(exit).encode().unwrap());
            conn.write_all(&out).unwrap();
            start
        });
        (dir, path, agent)
    }

    #[test]
    fn reclaim_drops_the_guest_caches_through_the_agent() {
        let (_dir, path, agent) = fake_agent(ExitStatus::Code(0));
        reclaim(Some(&path)).unwrap();
        let start = agent.join().unwrap();
        assert_eq!(start.argv[..2], [b"sh".to_vec(), b"-c".to_vec()]);
        let script = String::from_utf8(start.argv[2].clone()).unwrap();
        assert!(
            script.contains("echo 3 > /proc/sys/vm/drop_caches"),
            "{script}"
        );
        assert!(start.tty.is_none());
    }

    #[test]
    fn reclaim_reports_what_went_wrong() {
        assert!(matches!(reclaim(None), Err(MemoryControlError::NoAgent)));
        let (_dir, path, agent) = fake_agent(ExitStatus::Code(1));
        assert!(matches!(
            reclaim(Some(&path)),
            Err(MemoryControlError::Command(ExitStatus::Code(1)))
        ));
        agent.join().unwrap();
        let gone = Path::new("/nonexistent/vsock.sock");
        assert!(matches!(
            reclaim(Some(gone)),
            Err(MemoryControlError::Agent { .. })
        ));
    }

    #[test]
    fn without_a_balloon_the_controls_say_so() {
        assert!(matches!(
            set_target_mib(None, 1),
            Err(MemoryControlError::NoBalloon)
        ));
        assert!(matches!(
            report(None, Duration::ZERO),
            Err(MemoryControlError::NoBalloon)
        ));
    }
}
