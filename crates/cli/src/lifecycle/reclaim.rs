//! Reclaim: asks the guest, through its agent, to drop its caches, so that
//! free page reporting hands those pages back to the host.
//!
//! Free page reporting returns memory the guest has freed on its own, but a
//! Linux guest keeps file pages cached for as long as nothing else wants
//! the memory, so a guest that once read a large tree holds that much host
//! memory until asked. [`reclaim`] asks: it runs `sync` and writes
//! `/proc/sys/vm/drop_caches` and `compact_memory` through the agent; the
//! pages freed that way are reported (in 2–4 MiB blocks, a few seconds
//! later) and the balloon device returns them to the host. The VMM serves
//! it on its control socket (`{"op":"reclaim"}`).

use std::path::Path;

use agentvm_protocol::client;
use agentvm_protocol::{ExitStatus, Start, EXEC_PORT};
use anyhow::{bail, Context};

/// What the guest runs for [`reclaim`]. `compact_memory` may be missing
/// (kernels without compaction); that is not an error.
const RECLAIM_SCRIPT: &str = "sync; echo 3 > /proc/sys/vm/drop_caches; \
     [ -w /proc/sys/vm/compact_memory ] && echo 1 > /proc/sys/vm/compact_memory; exit 0";

/// Drops the guest's caches through the guest agent behind the VM's vsock
/// socket `agent` (the host side of its vsock device).
pub fn reclaim(agent: &Path) -> anyhow::Result<()> {
    let reach = || format!("cannot reach the guest agent at {}", agent.display());
    let stream = client::connect_vsock(agent, EXEC_PORT).with_context(reach)?;
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
    match client::run_unix(stream, start, stdio).with_context(reach)? {
        ExitStatus::Code(0) => Ok(()),
        other => bail!("reclaim in the guest ended with {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

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
        reclaim(&path).unwrap();
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
        let (_dir, path, agent) = fake_agent(ExitStatus::Code(1));
        let err = reclaim(&path).unwrap_err();
        assert_eq!(err.to_string(), "reclaim in the guest ended with Code(1)");
        agent.join().unwrap();
        let gone = Path::new("/nonexistent/vsock.sock");
        let err = reclaim(gone).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot reach the guest agent at /nonexistent/vsock.sock"
        );
    }
}
