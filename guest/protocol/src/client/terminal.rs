//! The host terminal side of a session: raw mode, window size, signals.

use std::io::{self, IsTerminal, Stdin};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use nix::sys::termios::{self, SetArg, Termios};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
use signal_hook::iterator::Signals;

use super::{run_with, ClientError, Control, Stdio};
use crate::{ExitStatus, Start, WinSize};

/// Puts the host terminal (stdin) in raw mode; restores it when dropped.
pub struct RawMode {
    stdin: Stdin,
    saved: Termios,
}

impl RawMode {
    /// Enters raw mode on stdin, which must be a terminal.
    pub fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { stdin, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.stdin.as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The size of the terminal on the host's stdout (else stdin), if either is one.
pub fn window_size() -> Option<WinSize> {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO]
        .into_iter()
        .find_map(|fd| {
            let mut ws = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
            // points at a live, properly aligned local; fds 0/1 stay open for
            // the life of the process (a closed one just fails with EBADF).
            let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
            (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(WinSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            })
        })
}

/// Forwards host signals to a session until dropped: `SIGWINCH` becomes a
/// `Resize` (in PTY mode), `SIGINT`, `SIGQUIT`, `SIGTERM`, `SIGHUP` become
/// `Signal` frames (the client itself keeps running until the command exits).
pub struct SignalForwarder {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignalForwarder {
    /// Installs the handlers and starts the forwarding thread.
    pub fn start<W: io::Write + Send + 'static>(
        control: Control<W>,
        tty: bool,
    ) -> io::Result<SignalForwarder> {
        let mut signals = Signals::new([SIGWINCH, SIGINT, SIGQUIT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            for sig in signals.forever() {
                let sent = if sig == SIGWINCH {
                    match window_size() {
                        Some(size) if tty => control.resize(size),
                        _ => Ok(()),
                    }
                } else {
                    control.signal(sig)
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        Ok(SignalForwarder {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `start` over `stream` with the host's own stdin/stdout/stderr.
///
/// In PTY mode (`start.tty` set) the size is taken from the host terminal
/// (the given size is kept if there is none), `TERM` is passed on unless
/// `start.env` sets it, and the host terminal is in raw mode until the
/// command ends. Signals are forwarded as [`SignalForwarder`] says.
pub fn run_terminal(stream: UnixStream, mut start: Start) -> Result<ExitStatus, ClientError> {
    let tty = start.tty.is_some();
    let _raw = if tty {
        if let Some(size) = window_size() {
            start.tty = Some(size);
        }
        if !start.env.iter().any(|(k, _)| k == b"TERM") {
            let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
            start.env.push((b"TERM".to_vec(), term.into_bytes()));
        }
        if io::stdin().is_terminal() {
            Some(RawMode::enter().map_err(ClientError::Local)?)
        } else {
            None
        }
    } else {
        None
    };
    let writer = stream.try_clone().map_err(ClientError::Local)?;
    let stdio = Stdio {
        stdin: Some(Box::new(io::stdin())),
        stdout: Box::new(io::stdout()),
        stderr: Box::new(io::stderr()),
    };
    let mut forwarder = None;
    let mut forward_err = None;
    let result = run_with(
        stream,
        writer,
        start,
        stdio,
        |control| match SignalForwarder::start(control, tty) {
            Ok(f) => forwarder = Some(f),
            Err(e) => forward_err = Some(e),
        },
    );
    drop(forwarder);
    if let Some(e) = forward_err {
        return Err(ClientError::Local(e));
    }
    result
}
