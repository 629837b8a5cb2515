//! The agentvm exec protocol, shared by the host and the guest agent.
//!
//! The host runs a command in the guest by opening a stream to the guest agent
//! (vsock port [`EXEC_PORT`]; on the host side, a Unix socket to the VMM's vsock
//! device followed by the `CONNECT 1024\n` / `OK <n>\n` handshake, see
//! [`client::connect_vsock`]) and exchanging frames on it.
//!
//! # Sessions
//!
//! **One request per connection.** The VMM's vsock already gives every
//! `CONNECT` its own stream with its own flow control, so the protocol does not
//! multiplex: a connection carries one command (or one `Configure`, or one
//! `Poweroff`), and closing it ends the session. Many sessions run at once by
//! opening many connections.
//!
//! A session, host side first:
//!
//! ```text
//! host → guest   Hello{version}  Start{…}  [Stdin…] [StdinEof] [Resize] [Signal]
//! guest → host   Hello{version}  Started{pid}  [Stdout…] [Stderr…]  Exit{code|signal}
//! ```
//!
//! The host sends `Hello` and `Start` back to back without waiting (no extra
//! round trip). The agent answers `Hello` with its own version, then `Started`,
//! the output, and `Exit` as the last frame; then it closes the connection. If
//! the first frame is not a `Hello` of a version the agent speaks, or the frame
//! is malformed or too large, or the command cannot be spawned, the agent sends
//! one `Error` frame and closes the connection. Instead of `Start`, the host may
//! send `Configure`, `Identity`, `File`, `Mount` or `Unmount` (answered by `Ack`) or `Poweroff` (answered
//! by `Ack`, then the guest powers off).
//!
//! In pipe mode the command's stdin, stdout and stderr are three pipes, and
//! `Exit` follows the command's exit *and* end of file on both output pipes, so
//! every byte written arrives before `Exit` (like ssh, a background process that
//! keeps the pipes open keeps the session open). In PTY mode the command runs as
//! a session leader on a new pseudo-terminal; all output comes as `Stdout`;
//! `StdinEof` is ignored (send the terminal's EOF character instead) and `Exit`
//! follows the command's exit once the terminal has been drained.
//!
//! If the host closes the connection before `Exit`, the agent kills the
//! command's process group with `SIGKILL`.
//!
//! # Wire format
//!
//! Every frame is a 5-byte header and a payload. All integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | payload length `N` (u32), at most [`MAX_PAYLOAD`] (1 MiB) |
//! | 4 | 1 | frame type |
//! | 5 | `N` | payload |
//!
//! Field types in payloads: `bytes` is a u32 length then that many bytes;
//! `opt` is a u8 (0 absent, 1 present) followed, when present, by `bytes`;
//! `env` is a u32 count then count × (`bytes` key, `bytes` value).
//!
//! | type | name | direction | payload |
//! |---|---|---|---|
//! | 0x01 | Hello | both | version: u16 |
//! | 0x02 | Start | host → guest | tty: u8 (0/1), rows: u16, cols: u16 (both 0 when tty is 0), argc: u32, argc × `bytes` argv, `env` env, `opt` cwd, `opt` user (UTF-8 name or decimal uid) |
//! | 0x03 | Stdin | host → guest | data (≤ [`MAX_DATA`], 64 KiB) |
//! | 0x04 | StdinEof | host → guest | empty |
//! | 0x05 | Resize | host → guest | rows: u16, cols: u16 |
//! | 0x06 | Signal | host → guest | signo: i32 (Linux numbering) |
//! | 0x07 | Configure | host → guest | `env`, then optionally `opt` ca (PEM certificates, ≤ [`MAX_CA`], 64 KiB; present when the flag is 1, the field left out when there is none) |
//! | 0x08 | Poweroff | host → guest | empty |
//! | 0x09 | Identity | host → guest | known_hosts: `bytes`, git user.name: `opt`, git user.email: `opt` |
//! | 0x0a | File | host → guest | target: `bytes` (absolute or `~/…`, no `.`/`..`/empty components, ≤ [`MAX_FILE_TARGET`]), mode: u32 (≤ 0o777), content: `bytes` (≤ [`MAX_FILE`]) |
//! | 0x0b | Mount | host → guest | base: u64 (the hot-plug slot's MMIO base), tag: `bytes` (UTF-8), target: `bytes`, read_only: u8 (0/1) |
//! | 0x0c | Unmount | host → guest | base: u64, target: `bytes` |
//! | 0x80 | Started | guest → host | pid: u32 |
//! | 0x81 | Stdout | guest → host | data (≤ 64 KiB) |
//! | 0x82 | Stderr | guest → host | data (≤ 64 KiB) |
//! | 0x83 | Exit | guest → host | kind: u8 (0 exited, 1 killed by signal), value: i32 (exit code or signal number) |
//! | 0x84 | Error | guest → host | code: u16 ([`ErrorCode`]), message: `bytes` (UTF-8) |
//! | 0x85 | Ack | guest → host | empty |
//!
//! A payload with bytes after its last field, an unknown type, a data frame
//! over 64 KiB or a header announcing more than 1 MiB is malformed.
//!
//! `Configure`'s CA field came after version 1 was fixed, without a new
//! version: a `Configure` without it is byte for byte the old frame, so an
//! older agent still takes every host's environment; an older agent refuses
//! one with a CA (trailing bytes), and the host then sends the environment
//! alone and says the guest image is too old to trust the CA.
//!
//! # Versions
//!
//! This is version [`PROTOCOL_VERSION`] (1). A peer that gets a `Hello` with a
//! version it does not speak answers with `Error{UnsupportedVersion}` and closes.
//! A later version that changes a frame bumps the number. A new request type
//! (host → guest) may come without one: an agent that predates it answers
//! `Error{Malformed}` (unknown frame type), and the host carries on without
//! it (`Identity`, 0x09, and `File`, 0x0a, came this way).

#![deny(missing_docs)]

pub mod client;
pub mod frame;
pub mod io;

pub use frame::{decode, DecodeError, EncodeError, Frame, Start};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The vsock port the guest agent serves exec on.
pub const EXEC_PORT: u32 = 1024;

/// The host vsock port of the forwarded ssh-agent (`[ssh] agent = true`):
/// the guest agent relays each connection to its `SSH_AUTH_SOCK` to this
/// port of the host (CID 2), where the VMM listens on `<vsock uds>_1025`
/// and passes the agent protocol, filtered, to the host's ssh-agent.
pub const SSH_AGENT_PORT: u32 = 1025;

/// Bytes in a frame header: u32 payload length and u8 type.
pub const HEADER_LEN: usize = 5;

/// Largest payload of any frame (1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Largest payload of a data frame (`Stdin`, `Stdout`, `Stderr`): 64 KiB.
pub const MAX_DATA: usize = 64 << 10;

/// Largest CA field of a `Configure` frame: 64 KiB of PEM.
pub const MAX_CA: usize = 64 << 10;

/// Largest content of a `File` frame: 1016 KiB, so that the frame with its
/// target fits in [`MAX_PAYLOAD`].
pub const MAX_FILE: usize = MAX_PAYLOAD - (8 << 10);

/// Longest target path of a `File` frame (Linux's `PATH_MAX`).
pub const MAX_FILE_TARGET: usize = 4096;

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Whether the command exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Why the agent refused or failed a request (the `code` of an `Error` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The `Hello` version is not one the agent speaks.
    UnsupportedVersion,
    /// A frame could not be decoded.
    Malformed,
    /// A frame announced a payload over [`MAX_PAYLOAD`] or data over [`MAX_DATA`].
    TooLarge,
    /// A frame came where the session does not allow it.
    UnexpectedFrame,
    /// The command could not be started (not found, bad cwd, unknown user …).
    SpawnFailed,
    /// The agent failed on its side.
    Internal,
    /// A code from a newer version.
    Other(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::Malformed => 2,
            ErrorCode::TooLarge => 3,
            ErrorCode::UnexpectedFrame => 4,
            ErrorCode::SpawnFailed => 5,
            ErrorCode::Internal => 6,
            ErrorCode::Other(n) => n,
        }
    }

    /// From the wire value; unknown values are kept as [`ErrorCode::Other`].
    pub fn from_wire(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::Malformed,
            3 => ErrorCode::TooLarge,
            4 => ErrorCode::UnexpectedFrame,
            5 => ErrorCode::SpawnFailed,
            6 => ErrorCode::Internal,
            n => ErrorCode::Other(n),
        }
    }
}

impl From<&DecodeError> for ErrorCode {
    fn from(e: &DecodeError) -> ErrorCode {
        match e {
            DecodeError::TooLarge(_) | DecodeError::DataTooLarge(_) => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}
