//! [`Agent`]: run commands in a VM's guest and collect what they print, the
//! way a library user wants it (`std::process::Command`'s shape), knowing
//! nothing about frames or the vsock handshake.
//!
//! The output is bounded: the guest is not trusted, and a command that
//! prints without end would otherwise grow the host's memory without end.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{connect_vsock_within, ClientError, Event, Session};
use crate::{ExitStatus, Start, EXEC_PORT};

/// How long [`Agent`] waits by default for the guest agent to answer (a VM
/// that has just started is still booting).
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How much stdout and stderr [`Agent::output`] keeps by default, each.
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 20;
/// Pause between connection attempts while the guest boots.
const RETRY: Duration = Duration::from_millis(20);

/// The guest agent of one VM, reached through the VM's vsock Unix socket
/// (`agentvm_vmm::VmHandle::agent_socket`).
///
/// ```no_run
/// use agentvm_protocol::client::{Agent, Command};
///
/// # fn main() -> Result<(), agentvm_protocol::client::ClientError> {
/// let agent = Agent::new("/run/user/1000/agentvm/vsock.sock");
/// let out = agent.output(&Command::new("uname").arg("-r"))?;
/// assert!(out.status.success());
/// print!("{}", String::from_utf8_lossy(&out.stdout));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Agent {
    uds: PathBuf,
    port: u32,
    ready_timeout: Duration,
}

impl Agent {
    /// The agent behind the vsock socket `uds`, serving on [`EXEC_PORT`].
    pub fn new(uds: impl Into<PathBuf>) -> Agent {
        Agent {
            uds: uds.into(),
            port: EXEC_PORT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// Another guest port (an agent started with another port).
    pub fn port(mut self, port: u32) -> Agent {
        self.port = port;
        self
    }

    /// How long to wait for the agent to answer before giving up
    /// ([`DEFAULT_READY_TIMEOUT`]); zero tries once.
    pub fn ready_timeout(mut self, timeout: Duration) -> Agent {
        self.ready_timeout = timeout;
        self
    }

    /// The vsock socket.
    pub fn socket(&self) -> &Path {
        &self.uds
    }

    /// Waits until the agent answers, within the ready timeout.
    pub fn wait_ready(&self) -> Result<(), ClientError> {
        self.connect().map(drop)
    }

    /// Runs `command` to its end and returns its status and output.
    ///
    /// Output beyond the command's limit ([`Command::max_output`]) ends the
    /// session with [`ClientError::OutputTooLarge`]; closing the connection
    /// makes the agent kill the command.
    pub fn output(&self, command: &Command) -> Result<Output, ClientError> {
        let mut session = self.start(command)?;
        let mut out = Output {
            status: ExitStatus::Code(0),
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        loop {
            let (buf, data) = match session.next_event()? {
                Event::Stdout(d) => (&mut out.stdout, d),
                Event::Stderr(d) => (&mut out.stderr, d),
                Event::Exit(status) => {
                    out.status = status;
                    return Ok(out);
                }
            };
            if buf.len() + data.len() > command.max_output {
                return Err(ClientError::OutputTooLarge(command.max_output));
            }
            buf.extend_from_slice(&data);
        }
    }

    /// Runs `command`, its output going to `stdout` and `stderr` as it
    /// arrives (nothing kept), and returns its status.
    pub fn run(
        &self,
        command: &Command,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitStatus, ClientError> {
        let mut session = self.start(command)?;
        loop {
            match session.next_event()? {
                Event::Stdout(d) => super::write_flush(stdout, &d)?,
                Event::Stderr(d) => super::write_flush(stderr, &d)?,
                Event::Exit(status) => return Ok(status),
            }
        }
    }

    /// Starts `command` on a new connection and sends all of its stdin.
    fn start(&self, command: &Command) -> Result<Session<UnixStream, UnixStream>, ClientError> {
        let stream = self.connect()?;
        let writer = stream.try_clone().map_err(ClientError::Local)?;
        let session = Session::start(stream, writer, command.start.clone())?;
        let control = session.control();
        control.stdin(&command.stdin)?;
        control.stdin_eof()?;
        Ok(session)
    }

    /// Replaces the environment the agent adds to every later command.
    pub fn configure(&self, env: &[(&str, &str)]) -> Result<(), ClientError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        super::configure(self.connect()?, env)
    }

    /// Asks the guest to power off; returns once the agent has acknowledged.
    pub fn poweroff(&self) -> Result<(), ClientError> {
        super::poweroff(self.connect()?)
    }

    /// A stream to the agent, for a [`Session`] of one's own (terminals,
    /// signals, streaming stdin). Retries while the socket has not appeared
    /// or the guest does not answer yet, within the ready timeout; a socket
    /// that appeared and went away means the VM stopped
    /// ([`ClientError::VmStopped`]): no point waiting on.
    pub fn connect(&self) -> Result<UnixStream, ClientError> {
        let deadline = Instant::now() + self.ready_timeout;
        let mut seen = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match connect_vsock_within(&self.uds, self.port, Some(left.max(RETRY))) {
                Ok(stream) => return Ok(stream),
                Err(e) => e,
            };
            let exists = self.uds.exists();
            seen |= exists;
            if seen && !exists {
                return Err(ClientError::VmStopped(self.uds.display().to_string()));
            }
            let retry = matches!(err, ClientError::Connect { .. } | ClientError::Handshake(_));
            if !retry || Instant::now() + RETRY >= deadline {
                return Err(err);
            }
            std::thread::sleep(RETRY);
        }
    }
}

/// A command to run in the guest.
#[derive(Debug, Clone)]
pub struct Command {
    start: Start,
    stdin: Vec<u8>,
    max_output: usize,
}

impl Command {
    /// Runs `program` (looked up in the guest's `PATH`), in pipe mode, as
    /// the agent's default user in its home directory.
    pub fn new(program: impl AsRef<[u8]>) -> Command {
        Command {
            start: Start {
                argv: vec![program.as_ref().to_vec()],
                env: Vec::new(),
                cwd: None,
                user: None,
                tty: None,
            },
            stdin: Vec::new(),
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }

    /// A shell command line (`sh -c LINE`).
    pub fn shell(line: impl AsRef<[u8]>) -> Command {
        Command::new("sh").arg("-c").arg(line)
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<[u8]>) -> Command {
        self.start.argv.push(arg.as_ref().to_vec());
        self
    }

    /// Adds arguments.
    pub fn args<I, A>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        self.start
            .argv
            .extend(args.into_iter().map(|a| a.as_ref().to_vec()));
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Command {
        self.start
            .env
            .push((key.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// The working directory in the guest.
    pub fn cwd(mut self, dir: impl AsRef<[u8]>) -> Command {
        self.start.cwd = Some(dir.as_ref().to_vec());
        self
    }

    /// The user to run as (a name or a decimal uid).
    pub fn user(mut self, user: impl Into<String>) -> Command {
        self.start.user = Some(user.into());
        self
    }

    /// Bytes for the command's stdin (then end of file).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Command {
        self.stdin = bytes.into();
        self
    }

    /// The most stdout, and the most stderr, [`Agent::output`] keeps
    /// ([`DEFAULT_MAX_OUTPUT`]).
    pub fn max_output(mut self, bytes: usize) -> Command {
        self.max_output = bytes;
        self
    }

    /// The request as it goes to the agent.
    pub fn start(&self) -> &Start {
        &self.start
    }
}

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    use super::*;
    use crate::io::FrameReader;
    use crate::Frame;

    /// A VMM socket with an agent behind it that reads one request and
    /// answers with `frames`; returns the request and the stdin it got.
    fn agent(frames: Vec<Frame>) -> (tempfile::TempDir, PathBuf, JoinHandle<(Start, Vec<u8>)>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = [0u8; 13];
            conn.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"CONNECT 1024\n");
            conn.write_all(b"OK 7\n").unwrap();
            let mut reader = FrameReader::new(conn.try_clone().unwrap());
            let mut start = None;
            let mut stdin = Vec::new();
            loop {
                match reader.read_frame().unwrap() {
                    Some(Frame::Hello { .. }) => {}
                    Some(Frame::Start(s)) => start = Some(s),
                    Some(Frame::Stdin(d)) => stdin.extend(d),
                    Some(Frame::StdinEof) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut out = Frame::hello().encode().unwrap();
            out.extend(Frame::Started { pid: 42 }.encode().unwrap());
            for f in frames {
                f.encode_into(&mut out).unwrap();
            }
            // The client may hang up early (output limit): ignore that.
            let _ = conn.write_all(&out);
            (start.unwrap(), stdin)
        });
        (dir, path, t)
    }

    #[test]
    fn output_collects_both_streams_and_the_status() {
        let (_dir, path, t) = agent(vec![
            Frame::Stdout(b"hel".to_vec()),
            Frame::Stderr(b"warn\n".to_vec()),
            Frame::Stdout(b"lo\n".to_vec()),
            Frame::Exit(ExitStatus::Code(3)),
        ]);
        let cmd = Command::new("cat")
            .arg("-")
            .env("A", "1")
            .cwd("/work")
            .user("agent")
            .stdin(b"input".to_vec());
        let out = Agent::new(&path).output(&cmd).unwrap();
        assert_eq!(
            out,
            Output {
                status: ExitStatus::Code(3),
                stdout: b"hello\n".to_vec(),
                stderr: b"warn\n".to_vec(),
            }
        );
        let (start, stdin) = t.join().unwrap();
        assert_eq!(start.argv, [b"cat".to_vec(), b"-".to_vec()]);
        assert_eq!(start.env, [(b"A".to_vec(), b"1".to_vec())]);
        assert_eq!(start.cwd.as_deref(), Some(&b"/work"[..]));
        assert_eq!(start.user.as_deref(), Some("agent"));
        assert!(start.tty.is_none());
        assert_eq!(stdin, b"input");
    }

    #[test]
    fn a_guest_that_prints_without_end_hits_the_limit() {
        let (_dir, path, t) = agent(vec![
            Frame::Stdout(vec![b'x'; 600]),
            Frame::Stdout(vec![b'x'; 600]),
            Frame::Exit(ExitStatus::Code(0)),
        ]);
        let cmd = Command::shell("yes").max_output(1000);
        let err = Agent::new(&path).output(&cmd).unwrap_err();
        assert!(matches!(err, ClientError::OutputTooLarge(1000)), "{err}");
        t.join().unwrap();
    }

    #[test]
    fn run_streams_the_output() {
        let (_dir, path, t) = agent(vec![
            Frame::Stdout(b"out".to_vec()),
            Frame::Stderr(b"err".to_vec()),
            Frame::Exit(ExitStatus::Signal(9)),
        ]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = Agent::new(&path)
            .run(&Command::shell("true"), &mut out, &mut err)
            .unwrap();
        assert_eq!(status, ExitStatus::Signal(9));
        assert_eq!((out, err), (b"out".to_vec(), b"err".to_vec()));
        let (start, _) = t.join().unwrap();
        assert_eq!(start.argv[..2], [b"sh".to_vec(), b"-c".to_vec()]);
    }

    #[test]
    fn the_agent_is_waited_for_until_the_socket_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.sock");
        let late = path.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let listener = UnixListener::bind(&late).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = [0u8; 13];
            conn.read_exact(&mut line).unwrap();
            conn.write_all(b"OK 1\n").unwrap();
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).unwrap();
            rest
        });
        Agent::new(&path)
            .ready_timeout(Duration::from_secs(10))
            .wait_ready()
            .unwrap();
        assert!(t.join().unwrap().is_empty());
    }

    #[test]
    fn no_agent_within_the_timeout_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Agent::new(dir.path().join("none.sock"))
            .ready_timeout(Duration::from_millis(100))
            .wait_ready()
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }

    #[test]
    fn a_socket_that_goes_away_means_the_vm_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let gone = path.clone();
        let t = std::thread::spawn(move || {
            // Refuse the first attempt (the guest is not listening yet),
            // then the VM stops and its socket disappears.
            drop(listener.accept().unwrap());
            let (conn, _) = listener.accept().unwrap();
            std::fs::remove_file(&gone).unwrap();
            drop(conn);
        });
        let err = Agent::new(&path)
            .ready_timeout(Duration::from_secs(10))
            .wait_ready()
            .unwrap_err();
        t.join().unwrap();
        assert!(matches!(err, ClientError::VmStopped(_)), "{err}");
    }
}
