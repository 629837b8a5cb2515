//! One connection: the request, and for `Start` the command's I/O loop.
//!
//! The loop is single-threaded over non-blocking descriptors and `poll`, with
//! every buffer bounded: output is read from the command only while less than
//! [`OUT_HIGH`] bytes wait for the host (so a slow host slows the command
//! instead of growing memory), and frames are read from the host only while
//! less than [`STDIN_HIGH`] bytes wait for the command's stdin.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use agentvm_protocol::frame::{data_header, decode, kind};
use agentvm_protocol::io::{FrameReader, ReadError};
use agentvm_protocol::{ErrorCode, ExitStatus, Frame, MAX_DATA, PROTOCOL_VERSION};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::spawn::{self, Spawned};
use crate::Agent;

/// Output bytes that may wait for the host before the command is throttled.
const OUT_HIGH: usize = 256 << 10;
/// Stdin bytes that may wait for the command before the host is throttled.
const STDIN_HIGH: usize = 1 << 20;
/// In PTY mode, how long the terminal may stay quiet after the command exited
/// before the session ends (a background job may hold the terminal open).
const PTY_DRAIN: Duration = Duration::from_millis(100);

/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection to the end.
pub fn serve(conn: OwnedFd, agent: &Arc<Agent>) {
    // A peer that connects and says nothing must not hold a thread forever.
    let timeout = nix::sys::time::TimeVal::new(REQUEST_TIMEOUT.as_secs() as _, 0);
    let _ =
        nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::ReceiveTimeout, &timeout);
    let mut file = File::from(conn);
    let request = match read_request(&mut file) {
        Ok(r) => r,
        Err(frame) => {
            let _ = send(&mut file, &[frame]);
            return;
        }
    };
    match request {
        Frame::Start(start) => {
            let defaults = agent.env();
            let spawned = spawn::spawn(
                &start,
                &spawn::Defaults {
                    root: &agent.root,
                    env: &defaults,
                    user: agent.default_user(),
                },
                &agent.reaper,
            );
            match spawned {
                Ok(s) => {
                    let pid = s.pid.as_raw() as u32;
                    let hello = [Frame::hello(), Frame::Started { pid }];
                    let tty = start.tty.is_some();
                    run(OwnedFd::from(file), s, &hello, tty);
                }
                Err(e) => {
                    let msg = error_chain(&e);
                    let _ = send(&mut file, &[Frame::error(ErrorCode::SpawnFailed, msg)]);
                }
            }
        }
        Frame::Configure { env, ca } => match agent.configure(env, ca.as_deref()) {
            Ok(()) => {
                let _ = send(&mut file, &[Frame::hello(), Frame::Ack]);
            }
            Err(msg) => {
                crate::log!("cannot take the host's configuration: {msg}");
                let _ = send(&mut file, &[Frame::error(ErrorCode::Internal, msg)]);
            }
        },
        Frame::Identity(id) => {
            let reply = match crate::identity::apply(&agent.root, &id) {
                Ok(()) => Frame::Ack,
                Err(e) => Frame::error(
                    ErrorCode::Internal,
                    format!("cannot write the host's known hosts and git identity: {e}"),
                ),
            };
            let _ = send(&mut file, &[Frame::hello(), reply]);
        }
        Frame::File(copy) => {
            let reply = match agent.put_file(&copy) {
                Ok(()) => Frame::Ack,
                Err(msg) => {
                    crate::log!("cannot write a host file: {msg}");
                    Frame::error(ErrorCode::Internal, msg)
                }
            };
            let _ = send(&mut file, &[Frame::hello(), reply]);
        }
        Frame::Mount(m) => {
            let done = crate::live_mount::mount(m.base, &m.tag, &m.target, m.read_only);
            let _ = send(&mut file, &[Frame::hello(), ack_or_error(done)]);
        }
        Frame::Unmount(u) => {
            let done = crate::live_mount::unmount(u.base, &u.target);
            let _ = send(&mut file, &[Frame::hello(), ack_or_error(done)]);
        }
        Frame::Poweroff => {
            let _ = send(&mut file, &[Frame::hello(), Frame::Ack]);
            drop(file);
            agent.shutdown();
        }
        other => {
            let msg = format!("frame type {:#04x} cannot start a session", other.kind());
            let _ = send(&mut file, &[Frame::error(ErrorCode::UnexpectedFrame, msg)]);
        }
    }
}

/// `Ack` for a request carried out, else an `Error` saying why.
fn ack_or_error(done: Result<(), crate::live_mount::LiveMountError>) -> Frame {
    match done {
        Ok(()) => Frame::Ack,
        Err(e) => {
            crate::log!("live mount: {e}");
            Frame::error(ErrorCode::Internal, e.to_string())
        }
    }
}

/// Reads `Hello` and the request; on failure, the `Error` frame to send.
fn read_request(file: &mut File) -> Result<Frame, Frame> {
    let mut reader = FrameReader::new(file);
    let mut next = || match reader.read_frame() {
        Ok(Some(f)) => Ok(f),
        Ok(None) | Err(ReadError::Truncated) | Err(ReadError::Io(_)) => Err(Frame::error(
            ErrorCode::Malformed,
            "connection ended before a request",
        )),
        Err(ReadError::Decode(e)) => Err(Frame::error(ErrorCode::from(&e), e.to_string())),
    };
    match next()? {
        Frame::Hello {
            version: PROTOCOL_VERSION,
        } => {}
        Frame::Hello { version } => {
            return Err(Frame::error(
                ErrorCode::UnsupportedVersion,
                format!(
                "protocol version {version} is not supported; this agent speaks {PROTOCOL_VERSION}"
            ),
            ))
        }
        other => {
            return Err(Frame::error(
                ErrorCode::UnexpectedFrame,
                format!("expected Hello, got frame type {:#04x}", other.kind()),
            ))
        }
    }
    next()
}

fn send(w: &mut impl Write, frames: &[Frame]) -> io::Result<()> {
    let mut out = Vec::new();
    for f in frames {
        f.encode_into(&mut out).map_err(io::Error::other)?;
    }
    w.write_all(&out)
}

/// `e` and its sources, joined by `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Bytes waiting to go to the host.
#[derive(Default)]
struct OutBuf {
    buf: Vec<u8>,
    head: usize,
}

impl OutBuf {
    fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    fn push(&mut self, f: &Frame) {
        // Only small control frames pass through here; they always encode.
        let _ = f.encode_into(&mut self.buf);
    }

    /// Reads up to [`MAX_DATA`] bytes from `fd` straight into a data frame.
    /// `Ok(0)` is end of file.
    fn read_frame_from(&mut self, fd: &OwnedFd, kind: u8) -> nix::Result<usize> {
        let start = self.buf.len();
        self.buf.resize(start + 5 + MAX_DATA, 0);
        let r = nix::unistd::read(fd, &mut self.buf[start + 5..]);
        let n = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(start + 5 + n);
        match data_header(kind, n) {
            Ok(h) if n > 0 => self.buf[start..start + 5].copy_from_slice(&h),
            _ => self.buf.truncate(start),
        }
        r
    }

    fn write_to(&mut self, fd: &OwnedFd) -> nix::Result<()> {
        let n = nix::unistd::write(fd, &self.buf[self.head..])?;
        self.head += n;
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        } else if self.head >= OUT_HIGH {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        Ok(())
    }
}

/// A poll slot for `fd`, or a no-event slot on `conn` when `fd` is absent.
fn slot<'a>(conn: &'a OwnedFd, fd: Option<&'a OwnedFd>, ev: PollFlags) -> PollFd<'a> {
    match fd {
        Some(fd) => PollFd::new(fd.as_fd(), ev),
        None => PollFd::new(conn.as_fd(), PollFlags::empty()),
    }
}

/// How a session's loop ended.
enum End {
    /// `Exit` was sent and flushed.
    Done,
    /// The host went away or broke the protocol: kill the command.
    Abort,
}

struct Loop {
    conn: OwnedFd,
    inbuf: Vec<u8>,
    out: OutBuf,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    pid: Pid,
    tty: bool,
    status: Option<ExitStatus>,
    exit_sent: bool,
}

fn run(conn: OwnedFd, s: Spawned, first: &[Frame], tty: bool) {
    if spawn::set_nonblocking(&conn).is_err() {
        let _ = killpg(s.pid, Signal::SIGKILL);
        return;
    }
    let mut l = Loop {
        conn,
        inbuf: Vec::new(),
        out: OutBuf::default(),
        stdin: Some(s.stdin),
        stdin_buf: Vec::new(),
        stdin_eof: false,
        stdout: Some(s.stdout),
        stderr: s.stderr,
        pid: s.pid,
        tty,
        status: None,
        exit_sent: false,
    };
    for f in first {
        l.out.push(f);
    }
    let mut exit = Some(s.exit);
    let end = loop {
        if let Some(end) = l.step(&mut exit) {
            break end;
        }
    };
    if let End::Abort = end {
        let _ = killpg(l.pid, Signal::SIGKILL);
    }
}

impl Loop {
    /// One `poll` round; `Some` when the session is over.
    fn step(&mut self, exit: &mut Option<crate::reaper::ExitWatch>) -> Option<End> {
        if self.status.is_some() && self.stdout.is_none() && self.stderr.is_none() {
            if !self.exit_sent {
                if let Some(st) = self.status {
                    self.out.push(&Frame::Exit(st));
                }
                self.exit_sent = true;
            }
            if self.out.len() == 0 {
                return Some(End::Done);
            }
        }
        let out_room = self.out.len() < OUT_HIGH;
        let mut conn_ev = PollFlags::empty();
        if !self.exit_sent && self.stdin_buf.len() < STDIN_HIGH {
            conn_ev |= PollFlags::POLLIN;
        }
        if self.out.len() > 0 {
            conn_ev |= PollFlags::POLLOUT;
        }
        let in_ev = |on: bool| {
            if on {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            }
        };
        let stdin_ev = if self.stdin_buf.is_empty() {
            PollFlags::empty()
        } else {
            PollFlags::POLLOUT
        };
        // Fixed slots: conn, stdout, stderr, stdin, exit. Absent fds are
        // polled on the connection with no events (ignored).
        let conn = &self.conn;
        let slot = |fd, ev| slot(conn, fd, ev);
        let mut fds = [
            PollFd::new(self.conn.as_fd(), conn_ev),
            slot(self.stdout.as_ref(), in_ev(out_room)),
            slot(self.stderr.as_ref(), in_ev(out_room)),
            slot(self.stdin.as_ref(), stdin_ev),
            slot(exit.as_ref().map(|e| e.fd()), PollFlags::POLLIN),
        ];
        let timeout = if self.tty && self.status.is_some() {
            PollTimeout::try_from(PTY_DRAIN).unwrap_or(PollTimeout::MAX)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) => {
                // Quiet terminal after the command exited: done.
                self.stdout = None;
                return None;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return Some(End::Abort),
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        let any = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        let has = |i: usize, f: PollFlags| ready[i].intersects(f);
        if !self.exit_sent
            && !conn_ev.contains(PollFlags::POLLIN)
            && has(0, PollFlags::POLLHUP | PollFlags::POLLERR)
        {
            // The host is gone while its stdin backlog waits: nobody to serve.
            return Some(End::Abort);
        }

        if has(4, any) {
            if let Some(w) = exit.take() {
                match w.read() {
                    Ok(st) => self.status = Some(st),
                    Err(_) => return Some(End::Abort),
                }
            }
        }
        if has(
            0,
            PollFlags::POLLOUT | PollFlags::POLLERR | PollFlags::POLLHUP,
        ) && self.out.len() > 0
        {
            match self.out.write_to(&self.conn) {
                Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(_) => return Some(End::Abort),
            }
        }
        if conn_ev.contains(PollFlags::POLLIN) && has(0, any) {
            if let Some(end) = self.read_conn() {
                return Some(end);
            }
        }
        for (i, k) in [(1, kind::STDOUT), (2, kind::STDERR)] {
            if !has(i, any) {
                continue;
            }
            let fd = if i == 1 {
                &mut self.stdout
            } else {
                &mut self.stderr
            };
            let Some(f) = fd.as_ref() else { continue };
            match self.out.read_frame_from(f, k) {
                Ok(n) if n > 0 => {}
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                // 0 is end of file; EIO is how a PTY master reports that the
                // last slave descriptor closed.
                Ok(_) | Err(_) => *fd = None,
            }
        }
        if has(
            3,
            PollFlags::POLLOUT | PollFlags::POLLERR | PollFlags::POLLHUP,
        ) {
            self.write_stdin();
        }
        if self.stdin_eof && self.stdin_buf.is_empty() {
            self.stdin = None;
        }
        None
    }

    /// Reads and handles frames from the host.
    fn read_conn(&mut self) -> Option<End> {
        let start = self.inbuf.len();
        self.inbuf.resize(start + MAX_DATA + 5, 0);
        let r = nix::unistd::read(&self.conn, &mut self.inbuf[start..]);
        let n = *r.as_ref().unwrap_or(&0);
        self.inbuf.truncate(start + n);
        match r {
            Ok(0) => return Some(End::Abort),
            Ok(_) => {}
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return None,
            Err(_) => return Some(End::Abort),
        }
        let mut used = 0;
        loop {
            match decode(&self.inbuf[used..]) {
                Ok(Some((frame, n))) => {
                    used += n;
                    if let Err(e) = self.handle(frame) {
                        return self.fail(e);
                    }
                }
                Ok(None) => break,
                Err(e) => return self.fail(Frame::error(ErrorCode::from(&e), e.to_string())),
            }
        }
        self.inbuf.drain(..used);
        None
    }

    /// Sends `error` (best effort, blocking briefly) and aborts.
    fn fail(&mut self, error: Frame) -> Option<End> {
        self.out.push(&error);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while self.out.len() > 0 && std::time::Instant::now() < deadline {
            match self.out.write_to(&self.conn) {
                Ok(()) => {}
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                    let mut fds = [PollFd::new(self.conn.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(100u8));
                }
                Err(_) => break,
            }
        }
        Some(End::Abort)
    }

    fn handle(&mut self, frame: Frame) -> Result<(), Frame> {
        match frame {
            Frame::Stdin(d) => {
                if self.stdin.is_some() && !self.stdin_eof {
                    self.stdin_buf.extend_from_slice(&d);
                }
            }
            Frame::StdinEof => {
                if !self.tty {
                    self.stdin_eof = true;
                }
            }
            Frame::Resize(size) => {
                if let (true, Some(master)) = (self.tty, &self.stdout) {
                    let _ = spawn::set_winsize(master, size);
                }
            }
            Frame::Signal(n) => {
                // Unknown numbers are ignored: the command may be gone, and a
                // signal is advisory anyway.
                if let Ok(sig) = Signal::try_from(n) {
                    let _ = killpg(self.pid, sig);
                }
            }
            other => {
                return Err(Frame::error(
                    ErrorCode::UnexpectedFrame,
                    format!("frame type {:#04x} not allowed in a session", other.kind()),
                ))
            }
        }
        Ok(())
    }

    fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_buf.clear();
            return;
        };
        match nix::unistd::write(fd, &self.stdin_buf) {
            Ok(n) => {
                self.stdin_buf.drain(..n);
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            // EPIPE: the command closed its stdin; drop what is left.
            Err(_) => {
                self.stdin = None;
                self.stdin_buf.clear();
            }
        }
    }
}
