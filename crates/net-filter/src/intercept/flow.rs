//! One intercepted flow: the guest's TLS terminated by a rustls server,
//! its plaintext rewritten by a [`RequestStream`], re-encrypted by a rustls
//! client toward the real upstream; the upstream's plaintext (responses,
//! streams, a tunnel after an upgrade) goes back unparsed.
//!
//! Sans-socket: [`InterceptFlow::pump`] moves what each end has room for
//! between two byte pipes (`Read + Write`, `WouldBlock` when empty or
//! full, `Ok(0)` read at the end). Memory is bounded: each rustls end
//! holds at most [`BUFFER_LIMIT`] unsent bytes and one TLS record of
//! received data (rustls reads only when its plaintext was taken), a
//! head is at most [`super::http::MAX_HEAD`], and at most one
//! `CHUNK` (16 KiB) of plaintext waits between the two ends each way.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};

use super::http::{HttpError, HttpEvent, RequestStream};
use crate::secrets::Secret;

/// Unsent bytes (plaintext before the handshake, TLS records after) each
/// rustls end holds at most.
pub const BUFFER_LIMIT: usize = 64 << 10;
/// Plaintext moved per step.
const CHUNK: usize = 16 << 10;
/// Steps per pump, at most (the caller pumps again when asked).
const STEPS: usize = 32;
/// What a flow holds at most, to charge it up front: both rustls ends
/// (unsent bytes; received bytes, up to a whole 64 KiB handshake message
/// while handshaking; a record's plaintext), a head collected and
/// substituted, the plaintext waiting each way.
pub const FLOW_MEMORY: usize = 2 * (BUFFER_LIMIT + (64 << 10) + 2 * (18 << 10))
    + super::http::MAX_HEAD
    + super::http::MAX_HEAD_OUT
    + 2 * CHUNK;

/// Why an intercepted flow failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The guest's TLS.
    #[error("guest TLS")]
    Guest(#[source] rustls::Error),
    /// The upstream's TLS (its certificate included).
    #[error("upstream TLS")]
    Upstream(#[source] rustls::Error),
    /// A request refused.
    #[error("request refused")]
    Http(#[source] HttpError),
    /// A socket.
    #[error("socket")]
    Io(#[source] io::Error),
}

impl FlowError {
    /// The audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            FlowError::Upstream(rustls::Error::InvalidCertificate(_)) => {
                "upstream certificate rejected"
            }
            FlowError::Upstream(_) => "upstream TLS failed",
            FlowError::Guest(_) => "guest TLS failed",
            FlowError::Http(e) => e.reason(),
            FlowError::Io(_) => "intercepted connection failed",
        }
    }
}

/// What a pump did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    /// Bytes moved somewhere.
    pub progress: bool,
    /// The upstream is done and everything it sent reached the guest's
    /// pipe: close the guest's side.
    pub close_guest: bool,
    /// The guest is done and everything it sent reached the upstream's
    /// pipe: close the upstream's side for writing.
    pub close_upstream: bool,
}

/// How a side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    /// With a close_notify (passed on as one).
    Clean,
    /// The transport closed without one (passed on as a bare close).
    Abrupt,
}

/// One intercepted connection.
pub struct InterceptFlow {
    guest: ServerConnection,
    upstream: ClientConnection,
    requests: RequestStream,
    /// Rewritten guest plaintext not yet taken by the upstream end.
    to_upstream: Vec<u8>,
    /// Upstream plaintext not yet taken by the guest end.
    to_guest: Vec<u8>,
    events: Vec<HttpEvent>,
    guest_end: End,
    upstream_end: End,
    guest_notified: bool,
    upstream_notified: bool,
    /// The guest's pipe ended.
    guest_eof: bool,
    /// The upstream's pipe ended.
    upstream_eof: bool,
}

impl std::fmt::Debug for InterceptFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterceptFlow").finish_non_exhaustive()
    }
}

impl InterceptFlow {
    /// A flow to `host`: the guest is served with `server`, the upstream
    /// reached with `client`, the placeholders of `secrets` bound to `host`
    /// replaced.
    pub fn new(
        host: &str,
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        secrets: Arc<[Secret]>,
    ) -> Result<Self, FlowError> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| FlowError::Upstream(rustls::Error::General("bad server name".into())))?;
        let mut guest = ServerConnection::new(server).map_err(FlowError::Guest)?;
        let mut upstream = ClientConnection::new(client, name).map_err(FlowError::Upstream)?;
        guest.set_buffer_limit(Some(BUFFER_LIMIT));
        upstream.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(InterceptFlow {
            guest,
            upstream,
            requests: RequestStream::new(host, secrets),
            to_upstream: Vec::new(),
            to_guest: Vec::new(),
            events: Vec::new(),
            guest_end: End::Open,
            upstream_end: End::Open,
            guest_notified: false,
            upstream_notified: false,
            guest_eof: false,
            upstream_eof: false,
        })
    }

    /// The substitutions made since the last call.
    pub fn take_events(&mut self) -> Vec<HttpEvent> {
        std::mem::take(&mut self.events)
    }

    /// The ALPN protocol agreed with the guest.
    pub fn guest_alpn(&self) -> Option<&[u8]> {
        self.guest.alpn_protocol()
    }

    /// Moves what both ends have room for. On an error (an alert rustls
    /// made for the guest was offered to its pipe) the caller resets both
    /// ends.
    pub fn pump(
        &mut self,
        guest_io: &mut (impl Read + Write),
        upstream_io: &mut (impl Read + Write),
    ) -> Result<Pumped, FlowError> {
        let mut pumped = Pumped::default();
        for _ in 0..STEPS {
            let mut progress = false;
            let read = read_tls(
                &mut self.guest,
                guest_io,
                &mut self.guest_eof,
                FlowError::Guest,
            );
            // An alert rustls made for the guest goes out before the reset.
            progress |= read.inspect_err(|_| {
                let _ = write_tls(&mut self.guest, guest_io);
            })?;
            progress |= self.guest_to_upstream()?;
            progress |= write_tls(&mut self.upstream, upstream_io)?;
            progress |= read_tls(
                &mut self.upstream,
                upstream_io,
                &mut self.upstream_eof,
                FlowError::Upstream,
            )?;
            progress |= self.upstream_to_guest();
            progress |= write_tls(&mut self.guest, guest_io)?;
            pumped.progress |= progress;
            if !progress {
                break;
            }
        }
        pumped.close_guest =
            self.upstream_end != End::Open && self.to_guest.is_empty() && !self.guest.wants_write();
        pumped.close_upstream = self.guest_end != End::Open
            && self.to_upstream.is_empty()
            && !self.upstream.wants_write();
        Ok(pumped)
    }

    /// Guest plaintext → request rewriter → upstream end.
    fn guest_to_upstream(&mut self) -> Result<bool, FlowError> {
        let mut progress = self.flush_to_upstream();
        if self.to_upstream.is_empty() && self.guest_end == End::Open {
            let mut buf = [0u8; CHUNK];
            match self.guest.reader().read(&mut buf) {
                Ok(0) => self.guest_end = End::Clean,
                Ok(n) => {
                    self.requests
                        .push(&buf[..n], &mut self.to_upstream, &mut self.events)
                        .map_err(FlowError::Http)?;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.guest_end = End::Abrupt,
            }
            progress |= self.flush_to_upstream();
        }
        if self.guest_end != End::Open && self.to_upstream.is_empty() && !self.upstream_notified {
            self.upstream_notified = true;
            if self.guest_end == End::Clean {
                self.upstream.send_close_notify();
            }
            progress = true;
        }
        Ok(progress)
    }

    fn flush_to_upstream(&mut self) -> bool {
        flush(&mut self.to_upstream, &mut self.upstream.writer())
    }

    /// Upstream plaintext → guest end, unparsed.
    fn upstream_to_guest(&mut self) -> bool {
        let mut progress = flush(&mut self.to_guest, &mut self.guest.writer());
        if self.to_guest.is_empty() && self.upstream_end == End::Open {
            let mut buf = [0u8; CHUNK];
            match self.upstream.reader().read(&mut buf) {
                Ok(0) => self.upstream_end = End::Clean,
                Ok(n) => {
                    self.to_guest.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.upstream_end = End::Abrupt,
            }
            progress |= flush(&mut self.to_guest, &mut self.guest.writer());
        }
        if self.upstream_end != End::Open && self.to_guest.is_empty() && !self.guest_notified {
            self.guest_notified = true;
            if self.upstream_end == End::Clean {
                self.guest.send_close_notify();
            }
            progress = true;
        }
        progress
    }
}

/// Hands `pending` to `writer` as far as it takes it.
fn flush(pending: &mut Vec<u8>, writer: &mut impl Write) -> bool {
    if pending.is_empty() {
        return false;
    }
    match writer.write(pending) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            pending.drain(..n.min(pending.len()));
            true
        }
    }
}

/// Feeds a rustls end what its pipe has, while it wants more; `eof`
/// notes the pipe's end. `wrap` names the end in errors.
fn read_tls<D>(
    conn: &mut ConnectionCommon<D>,
    io: &mut impl Read,
    eof: &mut bool,
    wrap: fn(rustls::Error) -> FlowError,
) -> Result<bool, FlowError> {
    let mut progress = false;
    // Bounded: each read takes at most one record's room.
    for _ in 0..4 {
        if *eof || !conn.wants_read() {
            break;
        }
        match conn.read_tls(io) {
            Ok(0) => {
                *eof = true;
                conn.process_new_packets().map_err(wrap)?;
                progress = true;
            }
            Ok(_) => {
                conn.process_new_packets().map_err(wrap)?;
                progress = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // rustls' back-pressure ("plaintext buffer full").
            Err(e) if e.kind() == io::ErrorKind::Other => break,
            Err(e) => return Err(FlowError::Io(e)),
        }
    }
    Ok(progress)
}

/// Sends what a rustls end has for its pipe.
fn write_tls<D>(conn: &mut ConnectionCommon<D>, io: &mut impl Write) -> Result<bool, FlowError> {
    let mut progress = false;
    for _ in 0..8 {
        if !conn.wants_write() {
            break;
        }
        match conn.write_tls(io) {
            Ok(0) => break,
            Ok(_) => progress = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FlowError::Io(e)),
        }
    }
    Ok(progress)
}
