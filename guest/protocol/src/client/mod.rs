//! Host client: runs one command through the guest agent over any stream.
//!
//! Blocking and thread-based, no async runtime. [`Session`] is the low-level
//! form (send frames through a cloneable [`Control`], read [`Event`]s);
//! [`run`] streams stdin/stdout/stderr and returns the exit status;
//! [`Agent`] runs a [`Command`] and collects its [`Output`], the form for
//! library users;
//! [`terminal::run_terminal`] adds the host terminal (raw mode, `SIGWINCH`,
//! signal forwarding) on top of it.

mod agent;
pub mod terminal;
mod vsock;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};

pub use agent::{Agent, Command, Output, DEFAULT_MAX_OUTPUT, DEFAULT_READY_TIMEOUT};
pub use vsock::{connect_vsock, connect_vsock_within};

use crate::frame::EnvList;
use crate::io::{write_frame, FrameReader, ReadError, WriteError};
use crate::{ErrorCode, ExitStatus, Frame, Start, WinSize, MAX_DATA, PROTOCOL_VERSION};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The Unix socket could not be connected.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The VMM did not answer `CONNECT <port>` with `OK`.
    #[error("vsock handshake failed: {0}")]
    Handshake(String),
    /// Receiving from the agent failed.
    #[error("receiving from the agent failed")]
    Read(#[source] ReadError),
    /// Sending to the agent failed.
    #[error("sending to the agent failed")]
    Write(#[source] WriteError),
    /// Local I/O (stdout, stderr, terminal) failed.
    #[error("local I/O failed")]
    Local(#[source] io::Error),
    /// The agent refused or failed the request.
    #[error("agent error ({code:?}): {message}")]
    Remote {
        /// The error code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
    },
    /// The agent speaks a protocol version this client does not.
    #[error("agent speaks protocol version {0}, this client speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u16),
    /// The agent sent a frame that does not belong here.
    #[error("unexpected frame type {0:#04x} from the agent")]
    Unexpected(u8),
    /// The connection ended before the command's exit status arrived.
    #[error("connection closed before the command's exit status arrived")]
    ClosedBeforeExit,
    /// The VM's vsock socket went away while waiting for its agent: the VM
    /// stopped.
    #[error("the VM behind {0} stopped before its guest agent answered")]
    VmStopped(String),
    /// The command printed more than the caller's limit (bytes, per stream).
    #[error("the command printed more than {0} bytes")]
    OutputTooLarge(usize),
}

/// What the agent reports during a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Output on stdout (or the terminal).
    Stdout(Vec<u8>),
    /// Output on stderr.
    Stderr(Vec<u8>),
    /// The command ended; no more events follow.
    Exit(ExitStatus),
}

/// Sends frames to the agent; cloneable and usable from any thread.
pub struct Control<W> {
    inner: Arc<Mutex<W>>,
}

impl<W> Clone for Control<W> {
    fn clone(&self) -> Self {
        Control {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<W: Write> Control<W> {
    fn send(&self, frame: &Frame) -> Result<(), ClientError> {
        let mut w = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&mut *w, frame).map_err(ClientError::Write)
    }

    /// Sends bytes for the command's stdin, split into frames of at most
    /// [`MAX_DATA`].
    pub fn stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(MAX_DATA) {
            self.send(&Frame::Stdin(chunk.to_vec()))?;
        }
        Ok(())
    }

    /// Closes the command's stdin.
    pub fn stdin_eof(&self) -> Result<(), ClientError> {
        self.send(&Frame::StdinEof)
    }

    /// Tells the agent the terminal's new size.
    pub fn resize(&self, size: WinSize) -> Result<(), ClientError> {
        self.send(&Frame::Resize(size))
    }

    /// Sends a signal to the command's process group.
    pub fn signal(&self, signo: i32) -> Result<(), ClientError> {
        self.send(&Frame::Signal(signo))
    }
}

/// One running command.
pub struct Session<R, W> {
    reader: FrameReader<R>,
    control: Control<W>,
    pid: Option<u32>,
    version_seen: bool,
}

impl<R: Read, W: Write> Session<R, W> {
    /// Sends `Hello` and `Start` in one write and returns without waiting.
    pub fn start(reader: R, mut writer: W, start: Start) -> Result<Self, ClientError> {
        let mut bytes = Frame::hello()
            .encode()
            .map_err(|e| ClientError::Write(WriteError::Encode(e)))?;
        Frame::Start(start)
            .encode_into(&mut bytes)
            .map_err(|e| ClientError::Write(WriteError::Encode(e)))?;
        writer
            .write_all(&bytes)
            .map_err(|e| ClientError::Write(WriteError::Io(e)))?;
        Ok(Session {
            reader: FrameReader::new(reader),
            control: Control {
                inner: Arc::new(Mutex::new(writer)),
            },
            pid: None,
            version_seen: false,
        })
    }

    /// A handle to send stdin, resizes and signals.
    pub fn control(&self) -> Control<W> {
        self.control.clone()
    }

    /// The command's pid in the guest, once `Started` has arrived.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The next output or the exit status.
    pub fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            let frame = match self.reader.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Err(ClientError::ClosedBeforeExit),
                Err(e) => return Err(ClientError::Read(e)),
            };
            match frame {
                Frame::Hello { version } if !self.version_seen => {
                    if version != PROTOCOL_VERSION {
                        return Err(ClientError::UnsupportedVersion(version));
                    }
                    self.version_seen = true;
                }
                Frame::Started { pid } => self.pid = Some(pid),
                Frame::Stdout(d) => return Ok(Event::Stdout(d)),
                Frame::Stderr(d) => return Ok(Event::Stderr(d)),
                Frame::Exit(status) => return Ok(Event::Exit(status)),
                Frame::Error { code, message } => {
                    return Err(ClientError::Remote { code, message })
                }
                other => return Err(ClientError::Unexpected(other.kind())),
            }
        }
    }
}

/// Where a command's standard streams go on the host.
pub struct Stdio {
    /// Read by a background thread and sent as stdin; `None` sends end of
    /// file at once.
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Receives stdout (flushed after every chunk).
    pub stdout: Box<dyn Write>,
    /// Receives stderr (flushed after every chunk).
    pub stderr: Box<dyn Write>,
}

/// Runs `start` to completion: stdin pumped from `stdio.stdin` on a detached
/// thread (which ends at end of input or when sending fails), output written
/// as it arrives. End of stdin is forwarded in pipe mode only.
pub fn run<R, W>(
    reader: R,
    writer: W,
    start: Start,
    stdio: Stdio,
) -> Result<ExitStatus, ClientError>
where
    R: Read,
    W: Write + Send + 'static,
{
    run_with(reader, writer, start, stdio, |_| {})
}

/// [`run`], calling `on_start` with the session's [`Control`] once the
/// request is sent (to hook up resizes and signal forwarding).
pub fn run_with<R, W>(
    reader: R,
    writer: W,
    start: Start,
    mut stdio: Stdio,
    on_start: impl FnOnce(Control<W>),
) -> Result<ExitStatus, ClientError>
where
    R: Read,
    W: Write + Send + 'static,
{
    let tty = start.tty.is_some();
    let mut session = Session::start(reader, writer, start)?;
    let control = session.control();
    on_start(control.clone());
    match stdio.stdin.take() {
        Some(input) => {
            // Detached: a read from a terminal cannot be interrupted, so the
            // thread may outlive the session; it ends with its input or at
            // the first failed send.
            std::thread::spawn(move || pump_stdin(input, &control, tty));
        }
        // Best effort: a command that has already ended, behind an agent
        // that has closed the connection, refuses it; the outcome is read
        // below either way.
        None if !tty => {
            let _ = control.stdin_eof();
        }
        None => {}
    }
    loop {
        match session.next_event()? {
            Event::Stdout(d) => write_flush(&mut stdio.stdout, &d)?,
            Event::Stderr(d) => write_flush(&mut stdio.stderr, &d)?,
            Event::Exit(status) => return Ok(status),
        }
    }
}

fn write_flush(w: &mut dyn Write, data: &[u8]) -> Result<(), ClientError> {
    w.write_all(data)
        .and_then(|()| w.flush())
        .map_err(ClientError::Local)
}

fn pump_stdin<W: Write>(mut input: Box<dyn Read + Send>, control: &Control<W>, tty: bool) {
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if control.stdin(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if !tty {
        let _ = control.stdin_eof();
    }
}

/// Runs `start` over a connected Unix stream (see [`connect_vsock`]).
pub fn run_unix(stream: UnixStream, start: Start, stdio: Stdio) -> Result<ExitStatus, ClientError> {
    let writer = stream.try_clone().map_err(ClientError::Local)?;
    run(stream, writer, start, stdio)
}

/// Replaces the environment the agent adds to every later command (API keys
/// and other secrets: the agent keeps them in memory only).
pub fn configure<S: Read + Write>(stream: S, env: EnvList) -> Result<(), ClientError> {
    request(stream, Frame::Configure { env, ca: None })
}

/// [`configure`], and has the guest trust the CA certificates in `ca_pem`
/// (added to its trust store; `SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`,
/// `REQUESTS_CA_BUNDLE` and `GIT_SSL_CAINFO` point at them in every later
/// command).
pub fn configure_with_ca<S: Read + Write>(
    stream: S,
    env: EnvList,
    ca_pem: Vec<u8>,
) -> Result<(), ClientError> {
    request(
        stream,
        Frame::Configure {
            env,
            ca: Some(ca_pem),
        },
    )
}

/// Gives the agent the host user's known ssh hosts and git identity.
pub fn identity<S: Read + Write>(
    stream: S,
    identity: crate::frame::Identity,
) -> Result<(), ClientError> {
    request(stream, Frame::Identity(identity))
}

/// Has the agent write one host file into the guest (`[[files]]`), owned
/// by the guest's default user.
pub fn put_file<S: Read + Write>(
    stream: S,
    file: crate::frame::FileCopy,
) -> Result<(), ClientError> {
    request(stream, Frame::File(file))
}

/// Asks the agent to make a live mount: bind the filled hot-plug slot and
/// mount its tag. Returns once the agent has acknowledged.
pub fn mount<S: Read + Write>(
    stream: S,
    mount: crate::frame::LiveMount,
) -> Result<(), ClientError> {
    request(stream, Frame::Mount(mount))
}

/// Asks the agent to unmount a live mount and unbind its slot.
pub fn unmount<S: Read + Write>(
    stream: S,
    unmount: crate::frame::LiveUnmount,
) -> Result<(), ClientError> {
    request(stream, Frame::Unmount(unmount))
}

/// Asks the agent to power the guest off; returns once it has acknowledged.
pub fn poweroff<S: Read + Write>(stream: S) -> Result<(), ClientError> {
    request(stream, Frame::Poweroff)
}

fn request<S: Read + Write>(mut stream: S, frame: Frame) -> Result<(), ClientError> {
    let mut bytes = Frame::hello()
        .encode()
        .map_err(|e| ClientError::Write(WriteError::Encode(e)))?;
    frame
        .encode_into(&mut bytes)
        .map_err(|e| ClientError::Write(WriteError::Encode(e)))?;
    stream
        .write_all(&bytes)
        .map_err(|e| ClientError::Write(WriteError::Io(e)))?;
    let mut reader = FrameReader::new(stream);
    loop {
        match reader.read_frame().map_err(ClientError::Read)? {
            Some(Frame::Hello { version }) if version != PROTOCOL_VERSION => {
                return Err(ClientError::UnsupportedVersion(version))
            }
            Some(Frame::Hello { .. }) => {}
            Some(Frame::Ack) => return Ok(()),
            Some(Frame::Error { code, message }) => {
                return Err(ClientError::Remote { code, message })
            }
            Some(other) => return Err(ClientError::Unexpected(other.kind())),
            None => return Err(ClientError::ClosedBeforeExit),
        }
    }
}
