//! Frames: the typed form ([`Frame`]), and pure encode/decode functions.
//!
//! Decoding never panics and never allocates more than the bytes it was given:
//! every length and count is checked against what remains of the payload before
//! anything is reserved, so a peer cannot make the decoder allocate 4 GiB with a
//! 9-byte frame. That makes [`decode`] a fuzz target as it stands.

use crate::{
    ErrorCode, ExitStatus, WinSize, HEADER_LEN, MAX_CA, MAX_DATA, MAX_FILE, MAX_FILE_TARGET,
    MAX_PAYLOAD, PROTOCOL_VERSION,
};

/// Frame type bytes. Host → guest types are below 0x80, guest → host at or above.
pub mod kind {
    /// Version exchange, both directions.
    pub const HELLO: u8 = 0x01;
    /// Start a command.
    pub const START: u8 = 0x02;
    /// Bytes for the command's stdin.
    pub const STDIN: u8 = 0x03;
    /// The host's stdin reached end of file.
    pub const STDIN_EOF: u8 = 0x04;
    /// New terminal size.
    pub const RESIZE: u8 = 0x05;
    /// Send a signal to the command's process group.
    pub const SIGNAL: u8 = 0x06;
    /// Set the environment every later command gets.
    pub const CONFIGURE: u8 = 0x07;
    /// Power the guest off.
    pub const POWEROFF: u8 = 0x08;
    /// The host user's known ssh hosts and git identity.
    pub const IDENTITY: u8 = 0x09;
    /// Write one host file at a path in the guest (`[[files]]`).
    pub const FILE: u8 = 0x0a;
    /// Bind a filled hot-plug slot and mount its virtio-fs tag.
    pub const MOUNT: u8 = 0x0b;
    /// Unmount a live mount and unbind its slot.
    pub const UNMOUNT: u8 = 0x0c;
    /// The command was spawned.
    pub const STARTED: u8 = 0x80;
    /// Bytes the command wrote to stdout (or to the terminal in PTY mode).
    pub const STDOUT: u8 = 0x81;
    /// Bytes the command wrote to stderr.
    pub const STDERR: u8 = 0x82;
    /// The command ended.
    pub const EXIT: u8 = 0x83;
    /// The request failed; the agent closes the connection after it.
    pub const ERROR: u8 = 0x84;
    /// A `Configure`, `Identity`, `Mount`, `Unmount` or `Poweroff` request
    /// was carried out.
    pub const ACK: u8 = 0x85;
}

/// Environment entries: `KEY`, `VALUE` byte strings.
pub type EnvList = Vec<(Vec<u8>, Vec<u8>)>;

/// What a command to run looks like on the wire.
///
/// Arguments, environment and working directory are byte strings: Unix allows
/// any bytes but NUL in them, and the protocol does not force UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Start {
    /// Program and arguments; `argv[0]` is looked up in the command's `PATH`.
    pub argv: Vec<Vec<u8>>,
    /// Environment entries added to (and overriding) the agent's defaults.
    pub env: EnvList,
    /// Working directory; the user's home directory (or `/`) when absent.
    pub cwd: Option<Vec<u8>>,
    /// User name or numeric uid to run as. When absent: the guest's default
    /// user (`agentvm.user` on the kernel command line), or the agent's own
    /// user (root) if there is none. `Some("root")` always means root.
    pub user: Option<String>,
    /// Run on a new pseudo-terminal of this size instead of pipes.
    pub tty: Option<WinSize>,
}

/// What an `Identity` frame carries: public data only (the keys stay in
/// the host's ssh-agent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// known_hosts lines (the host's, or those of the allowed servers);
    /// empty: leave the guest's as they are.
    pub known_hosts: Vec<u8>,
    /// git `user.name`.
    pub git_name: Option<Vec<u8>>,
    /// git `user.email`.
    pub git_email: Option<Vec<u8>>,
}

/// What a `File` frame carries: one host file for the guest (`[[files]]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileCopy {
    /// Where in the guest: an absolute path, or `~/…` under the default
    /// user's home; never `.` or `..` components (at most
    /// [`MAX_FILE_TARGET`] bytes, no NUL).
    pub target: Vec<u8>,
    /// Permission bits (at most `0o777`: never setuid, setgid or sticky).
    pub mode: u32,
    /// The file's content (at most [`MAX_FILE`] bytes).
    pub content: Vec<u8>,
}

/// A live mount for the guest to make (`Mount`): the host filled the
/// hot-plug slot at `base` with a virtio-fs device for `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveMount {
    /// Guest-physical base of the slot's virtio-mmio window.
    pub base: u64,
    /// The virtio-fs tag.
    pub tag: String,
    /// Where to mount it (an absolute path).
    pub target: Vec<u8>,
    /// Mount it read-only.
    pub read_only: bool,
}

/// A live mount for the guest to undo (`Unmount`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveUnmount {
    /// Guest-physical base of the slot's virtio-mmio window.
    pub base: u64,
    /// Where it is mounted.
    pub target: Vec<u8>,
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Protocol version of the sender.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u16,
    },
    /// Run a command.
    Start(Start),
    /// Bytes for the command's stdin (at most [`MAX_DATA`]).
    Stdin(Vec<u8>),
    /// No more stdin: the agent closes the command's stdin pipe.
    StdinEof,
    /// The host terminal changed size.
    Resize(WinSize),
    /// Deliver this (Linux-numbered) signal to the command's process group.
    Signal(i32),
    /// Replace the environment added to every later command, and trust a
    /// CA.
    Configure {
        /// `KEY`, `VALUE` pairs (placeholders stand in for secrets).
        env: EnvList,
        /// PEM certificates the guest adds to its trust store and names in
        /// `SSL_CERT_FILE` and the like for every later command (the
        /// workspace CA of the flows the VMM intercepts). At most
        /// [`MAX_CA`] bytes.
        ca: Option<Vec<u8>>,
    },
    /// Power the guest off (or end `serve` when the agent is not PID 1).
    Poweroff,
    /// The host user's public identity for ssh and git, with the forwarded
    /// ssh-agent: the agent writes the guest's system-wide known hosts and
    /// git identity from it.
    Identity(Identity),
    /// Write a host file into the guest, owned by the default user.
    File(FileCopy),
    /// Probe the hot-plug slot again (its driver's `bind`) and mount the
    /// new virtio-fs device.
    Mount(LiveMount),
    /// Unmount a live mount and unbind its slot's device.
    Unmount(LiveUnmount),
    /// The command runs with this process id.
    Started {
        /// Process id in the guest.
        pid: u32,
    },
    /// Output on stdout, or on the terminal in PTY mode (at most [`MAX_DATA`]).
    Stdout(Vec<u8>),
    /// Output on stderr (at most [`MAX_DATA`]).
    Stderr(Vec<u8>),
    /// The command ended; the last frame of a successful session.
    Exit(ExitStatus),
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The request was carried out.
    Ack,
}

/// Why a byte sequence is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces more than [`MAX_PAYLOAD`] bytes.
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(u32),
    /// A data frame carries more than [`MAX_DATA`] bytes.
    #[error("data frame of {0} bytes exceeds the chunk limit")]
    DataTooLarge(usize),
    /// The frame type byte is not one this version knows.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The payload ends before a field it announces.
    #[error("frame type {0:#04x} is truncated")]
    Truncated(u8),
    /// The payload has bytes after its last field.
    #[error("frame type {0:#04x} has trailing bytes")]
    TrailingBytes(u8),
    /// A field has a value the protocol does not allow.
    #[error("frame type {kind:#04x}: {what}")]
    Invalid {
        /// Frame type.
        kind: u8,
        /// What was wrong.
        what: &'static str,
    },
}

/// Why a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload would exceed [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A data frame would exceed [`MAX_DATA`]; split it with `chunks(MAX_DATA)`.
    #[error("data frame of {0} bytes exceeds the chunk limit")]
    DataTooLarge(usize),
    /// A `Configure` frame's CA would exceed [`MAX_CA`].
    #[error("CA of {0} bytes exceeds the limit")]
    CaTooLarge(usize),
    /// A `File` frame's target, mode or content is out of bounds.
    #[error("file frame: {0}")]
    BadFile(&'static str),
}

impl Frame {
    /// The type byte of this frame.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Start(_) => kind::START,
            Frame::Stdin(_) => kind::STDIN,
            Frame::StdinEof => kind::STDIN_EOF,
            Frame::Resize(_) => kind::RESIZE,
            Frame::Signal(_) => kind::SIGNAL,
            Frame::Configure { .. } => kind::CONFIGURE,
            Frame::Poweroff => kind::POWEROFF,
            Frame::Identity(_) => kind::IDENTITY,
            Frame::File(_) => kind::FILE,
            Frame::Mount(_) => kind::MOUNT,
            Frame::Unmount(_) => kind::UNMOUNT,
            Frame::Started { .. } => kind::STARTED,
            Frame::Stdout(_) => kind::STDOUT,
            Frame::Stderr(_) => kind::STDERR,
            Frame::Exit(_) => kind::EXIT,
            Frame::Error { .. } => kind::ERROR,
            Frame::Ack => kind::ACK,
        }
    }

    /// A `Hello` carrying this crate's [`PROTOCOL_VERSION`].
    pub fn hello() -> Frame {
        Frame::Hello {
            version: PROTOCOL_VERSION,
        }
    }

    /// An `Error` frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error {
            code,
            message: message.into(),
        }
    }

    /// Appends the encoded frame (header and payload) to `out`.
    ///
    /// On error `out` is left as it was.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        out[start + 4] = self.kind();
        self.encode_payload(out);
        let len = out.len() - start - HEADER_LEN;
        let err = match self {
            Frame::Stdin(d) | Frame::Stdout(d) | Frame::Stderr(d) if d.len() > MAX_DATA => {
                Some(EncodeError::DataTooLarge(d.len()))
            }
            Frame::Configure { ca: Some(ca), .. } if ca.len() > MAX_CA => {
                Some(EncodeError::CaTooLarge(ca.len()))
            }
            Frame::File(f) => check_file(f).err().map(EncodeError::BadFile),
            _ if len > MAX_PAYLOAD => Some(EncodeError::TooLarge(len)),
            _ => None,
        };
        if let Some(err) = err {
            out.truncate(start);
            return Err(err);
        }
        // len <= MAX_PAYLOAD (1 MiB) fits in u32.
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }

    /// The encoded frame as a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello { version } => out.extend_from_slice(&version.to_le_bytes()),
            Frame::Start(s) => {
                out.push(u8::from(s.tty.is_some()));
                let size = s.tty.unwrap_or_default();
                out.extend_from_slice(&size.rows.to_le_bytes());
                out.extend_from_slice(&size.cols.to_le_bytes());
                put_u32(out, s.argv.len());
                for arg in &s.argv {
                    put_bytes(out, arg);
                }
                put_env(out, &s.env);
                put_opt(out, s.cwd.as_deref());
                put_opt(out, s.user.as_deref().map(str::as_bytes));
            }
            Frame::Stdin(d) | Frame::Stdout(d) | Frame::Stderr(d) => out.extend_from_slice(d),
            Frame::StdinEof | Frame::Poweroff | Frame::Ack => {}
            Frame::Resize(size) => {
                out.extend_from_slice(&size.rows.to_le_bytes());
                out.extend_from_slice(&size.cols.to_le_bytes());
            }
            Frame::Signal(sig) => out.extend_from_slice(&sig.to_le_bytes()),
            Frame::Configure { env, ca } => {
                put_env(out, env);
                // Absent, the field is left out: the frame is then exactly
                // what agents from before the field accept.
                if let Some(ca) = ca {
                    put_opt(out, Some(ca));
                }
            }
            Frame::Identity(id) => {
                put_bytes(out, &id.known_hosts);
                put_opt(out, id.git_name.as_deref());
                put_opt(out, id.git_email.as_deref());
            }
            Frame::File(f) => {
                put_bytes(out, &f.target);
                out.extend_from_slice(&f.mode.to_le_bytes());
                put_bytes(out, &f.content);
            }
            Frame::Mount(m) => {
                out.extend_from_slice(&m.base.to_le_bytes());
                put_bytes(out, m.tag.as_bytes());
                put_bytes(out, &m.target);
                out.push(u8::from(m.read_only));
            }
            Frame::Unmount(u) => {
                out.extend_from_slice(&u.base.to_le_bytes());
                put_bytes(out, &u.target);
            }
            Frame::Started { pid } => out.extend_from_slice(&pid.to_le_bytes()),
            Frame::Exit(status) => {
                let (k, v) = match *status {
                    ExitStatus::Code(c) => (0u8, c),
                    ExitStatus::Signal(s) => (1u8, s),
                };
                out.push(k);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Frame::Error { code, message } => {
                out.extend_from_slice(&code.to_wire().to_le_bytes());
                put_bytes(out, message.as_bytes());
            }
        }
    }
}

/// Writes the header of a data frame (`Stdin`, `Stdout`, `Stderr`) whose
/// `len`-byte payload the caller appends itself: lets a sender read straight
/// into its output buffer without an intermediate copy.
pub fn data_header(kind: u8, len: usize) -> Result<[u8; HEADER_LEN], EncodeError> {
    if len > MAX_DATA {
        return Err(EncodeError::DataTooLarge(len));
    }
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4] = kind;
    Ok(h)
}

/// Reads the header at the start of `buf`: `Ok(None)` if fewer than
/// [`HEADER_LEN`] bytes are there, else the payload length and type byte.
///
/// Rejects a length over [`MAX_PAYLOAD`] before any payload arrives, so a
/// receiver never buffers an oversized frame.
pub fn decode_header(buf: &[u8]) -> Result<Option<(usize, u8)>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if len as usize > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge(len));
    }
    Ok(Some((len as usize, header[4])))
}

/// Decodes one frame from the start of `buf`.
///
/// `Ok(None)`: `buf` holds only part of a frame; call again with more bytes.
/// `Ok(Some((frame, n)))`: the frame and how many bytes of `buf` it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some((len, kind)) = decode_header(buf)? else {
        return Ok(None);
    };
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let frame = decode_payload(kind, payload)?;
    Ok(Some((frame, HEADER_LEN + len)))
}

/// Decodes a payload of the given type (the header already parsed).
pub fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame, DecodeError> {
    let mut r = Cursor { buf: payload, kind };
    let frame = match kind {
        kind::HELLO => Frame::Hello { version: r.u16()? },
        kind::START => {
            let tty = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(r.invalid("tty flag is not 0 or 1")),
            };
            let size = WinSize {
                rows: r.u16()?,
                cols: r.u16()?,
            };
            if !tty && size != WinSize::default() {
                return Err(r.invalid("size given without tty"));
            }
            let argc = r.count(4)?;
            let mut argv = Vec::with_capacity(argc);
            for _ in 0..argc {
                argv.push(r.bytes()?.to_vec());
            }
            if argv.is_empty() {
                return Err(r.invalid("empty argv"));
            }
            let env = r.env()?;
            let cwd = r.opt()?.map(<[u8]>::to_vec);
            let user = match r.opt()? {
                Some(u) => Some(
                    std::str::from_utf8(u)
                        .map_err(|_| r.invalid("user is not UTF-8"))?
                        .to_owned(),
                ),
                None => None,
            };
            Frame::Start(Start {
                argv,
                env,
                cwd,
                user,
                tty: tty.then_some(size),
            })
        }
        kind::STDIN | kind::STDOUT | kind::STDERR => {
            if payload.len() > MAX_DATA {
                return Err(DecodeError::DataTooLarge(payload.len()));
            }
            r.buf = &[];
            let data = payload.to_vec();
            match kind {
                kind::STDIN => Frame::Stdin(data),
                kind::STDOUT => Frame::Stdout(data),
                _ => Frame::Stderr(data),
            }
        }
        kind::STDIN_EOF => Frame::StdinEof,
        kind::POWEROFF => Frame::Poweroff,
        kind::ACK => Frame::Ack,
        kind::RESIZE => Frame::Resize(WinSize {
            rows: r.u16()?,
            cols: r.u16()?,
        }),
        kind::SIGNAL => Frame::Signal(r.i32()?),
        kind::CONFIGURE => {
            let env = r.env()?;
            let ca = if r.buf.is_empty() {
                None
            } else {
                match r.opt()? {
                    Some(ca) if ca.len() > MAX_CA => return Err(r.invalid("CA over the limit")),
                    Some(ca) => Some(ca.to_vec()),
                    None => return Err(r.invalid("an absent CA is left out")),
                }
            };
            Frame::Configure { env, ca }
        }
        kind::IDENTITY => Frame::Identity(Identity {
            known_hosts: r.bytes()?.to_vec(),
            git_name: r.opt()?.map(<[u8]>::to_vec),
            git_email: r.opt()?.map(<[u8]>::to_vec),
        }),
        kind::FILE => {
            let file = FileCopy {
                target: r.bytes()?.to_vec(),
                mode: r.u32()?,
                content: r.bytes()?.to_vec(),
            };
            check_file(&file).map_err(|what| r.invalid(what))?;
            Frame::File(file)
        }
        kind::MOUNT => Frame::Mount(LiveMount {
            base: r.u64()?,
            tag: String::from_utf8(r.bytes()?.to_vec())
                .map_err(|_| r.invalid("tag is not UTF-8"))?,
            target: r.bytes()?.to_vec(),
            read_only: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(r.invalid("read_only is not 0 or 1")),
            },
        }),
        kind::UNMOUNT => Frame::Unmount(LiveUnmount {
            base: r.u64()?,
            target: r.bytes()?.to_vec(),
        }),
        kind::STARTED => Frame::Started { pid: r.u32()? },
        kind::EXIT => match r.u8()? {
            0 => Frame::Exit(ExitStatus::Code(r.i32()?)),
            1 => Frame::Exit(ExitStatus::Signal(r.i32()?)),
            _ => return Err(r.invalid("exit kind is not 0 or 1")),
        },
        kind::ERROR => {
            let code = ErrorCode::from_wire(r.u16()?);
            let message = String::from_utf8_lossy(r.bytes()?).into_owned();
            Frame::Error { code, message }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(kind));
    }
    Ok(frame)
}

/// The bounds of a `File` frame, the same on both sides: a target of at
/// most [`MAX_FILE_TARGET`] bytes that is absolute or `~/…`, without NUL,
/// empty, `.` or `..` components; a mode of at most `0o777`; at most
/// [`MAX_FILE`] bytes of content. The guest agent checks the target again
/// where it writes (`guest/agent/src/files.rs`).
pub fn check_file(f: &FileCopy) -> Result<(), &'static str> {
    if f.content.len() > MAX_FILE {
        return Err("content over the limit");
    }
    if f.mode & !0o777 != 0 {
        return Err("mode has bits beyond 0777 (setuid, setgid, sticky)");
    }
    check_target(&f.target)
}

/// See [`check_file`]: the target alone.
pub fn check_target(t: &[u8]) -> Result<(), &'static str> {
    if t.len() > MAX_FILE_TARGET {
        return Err("target over the limit");
    }
    if t.contains(&0) {
        return Err("target holds a NUL byte");
    }
    let rest = if let Some(rest) = t.strip_prefix(b"~/") {
        rest
    } else if let Some(rest) = t.strip_prefix(b"/") {
        rest
    } else {
        return Err("target is neither absolute nor under ~/");
    };
    if rest.is_empty() {
        return Err("target names no file");
    }
    for part in rest.split(|&b| b == b'/') {
        match part {
            b"" => return Err("target has an empty component (// or a trailing /)"),
            b"." | b".." => return Err("target has a . or .. component"),
            _ => {}
        }
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Callers keep every count and length far below u32::MAX: a frame that
    // large is refused by the MAX_PAYLOAD check in `encode_into`. Saturate
    // rather than wrap so an oversized field can never encode as a small one.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn put_env(out: &mut Vec<u8>, env: &[(Vec<u8>, Vec<u8>)]) {
    put_u32(out, env.len());
    for (k, v) in env {
        put_bytes(out, k);
        put_bytes(out, v);
    }
}

/// Bounds-checked reader over a payload.
struct Cursor<'a> {
    buf: &'a [u8],
    kind: u8,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(self.kind));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min_item` bytes long, checked against
    /// the bytes left so that `Vec::with_capacity(count)` stays bounded.
    fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(DecodeError::Truncated(self.kind));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn opt(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(self.invalid("option flag is not 0 or 1")),
        }
    }

    fn env(&mut self) -> Result<EnvList, DecodeError> {
        let n = self.count(8)?;
        let mut env = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.bytes()?.to_vec();
            let v = self.bytes()?.to_vec();
            env.push((k, v));
        }
        Ok(env)
    }

    fn invalid(&self, what: &'static str) -> DecodeError {
        DecodeError::Invalid {
            kind: self.kind,
            what,
        }
    }
}

#[cfg(test)]
mod tests;
