//! The guest's side of an intercepted HTTP/1.1 connection, as a stream
//! rewriter: request heads are collected (at most [`MAX_HEAD`] bytes),
//! checked and have the placeholders of secrets bound to the flow's host
//! replaced; bodies (by `Content-Length` or chunked framing) and
//! everything after an `Upgrade` or `CONNECT` pass through as they come,
//! never collected.
//!
//! Sans-IO and panic-free on any input (a fuzz target drives it): the
//! caller feeds the guest's plaintext to [`RequestStream::push`] and sends
//! what it appends to `out` upstream.
//!
//! A head is refused (the flow is then reset) when it is over
//! [`MAX_HEAD`], malformed, ambiguous about where its body ends (both
//! `Transfer-Encoding` and `Content-Length`, differing lengths, a coding
//! other than a final `chunked`), names another host than the flow's
//! (`Host`, or an absolute target's authority: a server behind the same
//! address must not receive the value), or holds the placeholder of a
//! secret that is not bound to this host.

use std::sync::Arc;

use crate::secrets::Secret;

/// The largest request head (request line and headers) collected.
pub const MAX_HEAD: usize = 64 << 10;
/// The largest head after substitution.
pub const MAX_HEAD_OUT: usize = 256 << 10;
/// The longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4 << 10;
/// The most path characters an audit event keeps.
const MAX_AUDIT_PATH: usize = 512;

/// Something an intercepted request did (one audit line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpEvent {
    /// A placeholder was replaced by the secret's value.
    Substituted {
        /// The secret's name.
        secret: String,
        /// The request's method.
        method: String,
        /// The request's path, without query, placeholders shown as
        /// `<NAME>`.
        path: String,
    },
}

/// Why an intercepted request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head grew past [`MAX_HEAD`] (or past [`MAX_HEAD_OUT`] once
    /// substituted).
    #[error("request head too large")]
    TooLarge,
    /// Not an HTTP/1 request head.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// The body's framing is ambiguous or unsupported.
    #[error("ambiguous request framing: {0}")]
    Framing(&'static str),
    /// The head names a host other than the intercepted one.
    #[error("request for another host than the intercepted one")]
    OtherHost,
    /// A chunked body that does not follow the chunked syntax.
    #[error("malformed chunked body")]
    Chunked,
    /// The placeholder of a secret not bound to this host.
    #[error("placeholder of a secret not bound to this host")]
    Unbound {
        /// The secret.
        secret: String,
        /// The request's method.
        method: String,
        /// The request's path (as in [`HttpEvent::Substituted`]).
        path: String,
    },
}

impl HttpError {
    /// The audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::TooLarge => "request head over 64 KiB",
            HttpError::Malformed(_) => "malformed request head",
            HttpError::Framing(_) => "ambiguous request framing",
            HttpError::OtherHost => "request names another host",
            HttpError::Chunked => "malformed chunked body",
            HttpError::Unbound { .. } => "placeholder of a secret not bound to this host",
        }
    }
}

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// `n` more body bytes.
    Body(u64),
    /// A chunk-size line (collected in `line`).
    ChunkSize,
    /// `n` more bytes of chunk data.
    ChunkData(u64),
    /// The CRLF after a chunk's data (`n` of its bytes seen).
    ChunkEnd(u8),
    /// Trailer lines until an empty one.
    Trailers,
    /// Everything passes (after an upgrade or `CONNECT`).
    Tunnel,
    /// A refused request: nothing more passes.
    Failed,
}

/// The guest→upstream half of one intercepted connection.
#[derive(Debug)]
pub struct RequestStream {
    host: String,
    secrets: Arc<[Secret]>,
    state: State,
    /// The head or chunk line being collected.
    buf: Vec<u8>,
    /// Whether the request whose body is passing asked for an upgrade.
    upgrade: bool,
}

/// A parsed, checked request head.
struct Head {
    method: String,
    path: String,
    /// Body framing.
    body: Framing,
    upgrade: bool,
}

enum Framing {
    Length(u64),
    Chunked,
}

impl RequestStream {
    /// A stream of requests to `host` (a normalized name); `secrets` are
    /// all the stack's secrets (those not bound to `host` are refused).
    pub fn new(host: &str, secrets: Arc<[Secret]>) -> Self {
        RequestStream {
            host: host.to_string(),
            secrets,
            state: State::Head,
            buf: Vec::new(),
            upgrade: false,
        }
    }

    /// Bytes held now (a head or chunk line being collected).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the guest's `input`, appends what goes upstream to `out` and
    /// the substitutions made to `events`. After an error nothing passes.
    pub fn push(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<HttpEvent>,
    ) -> Result<(), HttpError> {
        // Each round consumes at least one byte or ends.
        while !input.is_empty() {
            let used = match self.step(input, out, events) {
                Ok(used) => used,
                Err(e) => {
                    self.state = State::Failed;
                    self.buf = Vec::new();
                    return Err(e);
                }
            };
            input = input.get(used..).unwrap_or_default();
        }
        Ok(())
    }

    /// Consumes part of `input`; returns how much.
    fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<HttpEvent>,
    ) -> Result<usize, HttpError> {
        match self.state {
            State::Failed => Err(HttpError::Malformed("stream already refused")),
            State::Tunnel => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            State::Head => self.collect_head(input, out, events),
            State::Body(n) | State::ChunkData(n) => {
                let take = usize::try_from(n).unwrap_or(usize::MAX).min(input.len());
                out.extend_from_slice(&input[..take]);
                let left = n - take as u64;
                self.state = match (self.state, left) {
                    (State::ChunkData(_), 0) => State::ChunkEnd(0),
                    (State::ChunkData(_), n) => State::ChunkData(n),
                    (_, 0) => self.after_request(),
                    (_, n) => State::Body(n),
                };
                Ok(take)
            }
            State::ChunkEnd(seen) => {
                let want = if seen == 0 { b'\r' } else { b'\n' };
                if input.first() != Some(&want) {
                    return Err(HttpError::Chunked);
                }
                out.push(want);
                self.state = match seen {
                    0 => State::ChunkEnd(1),
                    _ => State::ChunkSize,
                };
                Ok(1)
            }
            State::ChunkSize | State::Trailers => {
                let Some(line_end) = self.collect_line(input)? else {
                    out.extend_from_slice(input);
                    return Ok(input.len());
                };
                out.extend_from_slice(&input[..line_end]);
                let line = std::mem::take(&mut self.buf);
                let line = line.strip_suffix(b"\r\n").ok_or(HttpError::Chunked)?;
                self.state = match self.state {
                    State::ChunkSize => match chunk_size(line)? {
                        0 => State::Trailers,
                        n => State::ChunkData(n),
                    },
                    _ if line.is_empty() => self.after_request(),
                    _ => State::Trailers,
                };
                Ok(line_end)
            }
        }
    }

    /// Adds `input` up to a line's end to the chunk line; `Some(n)`: the
    /// line ended after `n` bytes of `input`.
    fn collect_line(&mut self, input: &[u8]) -> Result<Option<usize>, HttpError> {
        let end = input.iter().position(|&b| b == b'\n').map(|i| i + 1);
        let take = end.unwrap_or(input.len());
        if self.buf.len() + take > MAX_CHUNK_LINE {
            return Err(HttpError::Chunked);
        }
        self.buf.extend_from_slice(&input[..take]);
        Ok(end)
    }

    /// What follows a complete request.
    fn after_request(&mut self) -> State {
        match std::mem::take(&mut self.upgrade) {
            true => State::Tunnel,
            false => State::Head,
        }
    }

    fn collect_head(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<HttpEvent>,
    ) -> Result<usize, HttpError> {
        // The terminator may straddle what came before.
        let from = self.buf.len().saturating_sub(3);
        let room = MAX_HEAD - self.buf.len();
        let take = input.len().min(room);
        self.buf.extend_from_slice(&input[..take]);
        let Some(end) = find(&self.buf[from..], b"\r\n\r\n").map(|i| from + i + 4) else {
            if self.buf.len() >= MAX_HEAD {
                return Err(HttpError::TooLarge);
            }
            return Ok(take);
        };
        // Give back what followed the head (the body, read next round).
        let extra = self.buf.len() - end;
        self.buf.truncate(end);
        let used = take - extra;
        let raw = std::mem::take(&mut self.buf);
        let head = self.check(&raw)?;
        let before = out.len();
        self.substitute(&raw, &head, out, events)?;
        if out.len() - before > MAX_HEAD_OUT {
            out.truncate(before);
            return Err(HttpError::TooLarge);
        }
        self.upgrade = head.upgrade;
        self.state = match head.body {
            Framing::Chunked => State::ChunkSize,
            Framing::Length(0) => self.after_request(),
            Framing::Length(n) => State::Body(n),
        };
        Ok(used)
    }

    /// Parses the head and checks its host and framing.
    fn check(&self, raw: &[u8]) -> Result<Head, HttpError> {
        let text = raw
            .strip_suffix(b"\r\n\r\n")
            .ok_or(HttpError::Malformed("no end"))?;
        let mut lines = split_crlf(text);
        let request_line = lines.next().ok_or(HttpError::Malformed("empty"))?;
        let (method, target) = request_line_parts(request_line)?;
        if let Some(authority) = absolute_authority(target) {
            if !self.names_host(authority) {
                return Err(HttpError::OtherHost);
            }
        }
        let mut host = None;
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut upgrade_header = false;
        let mut connection_upgrade = false;
        for line in lines {
            let (name, value) = header(line)?;
            if name.eq_ignore_ascii_case(b"host") {
                if host.replace(value).is_some() {
                    return Err(HttpError::Malformed("more than one Host"));
                }
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_length(value)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::Framing("differing Content-Length"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only the last coding of the last header counts; it must
                // be chunked.
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(trim(last).eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade_header = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                connection_upgrade |= value
                    .split(|&b| b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
            }
        }
        match host {
            Some(h) if self.names_host(h) => {}
            Some(_) => return Err(HttpError::OtherHost),
            None => return Err(HttpError::Malformed("no Host")),
        }
        let body = match (chunked, length) {
            (Some(_), Some(_)) => {
                return Err(HttpError::Framing(
                    "both Transfer-Encoding and Content-Length",
                ))
            }
            (Some(false), None) => return Err(HttpError::Framing("coding other than chunked")),
            (Some(true), None) => Framing::Chunked,
            (None, n) => Framing::Length(n.unwrap_or(0)),
        };
        let method = String::from_utf8_lossy(method).into_owned();
        let upgrade = method == "CONNECT" || (upgrade_header && connection_upgrade);
        Ok(Head {
            path: self.audit_path(target),
            method,
            body,
            upgrade,
        })
    }

    /// Whether a `Host` value or authority names the flow's host (port
    /// 443 or none).
    fn names_host(&self, authority: &[u8]) -> bool {
        let authority = trim(authority);
        let name = match authority.strip_suffix(b":443") {
            Some(n) => n,
            None => authority,
        };
        let name = name.strip_suffix(b".").unwrap_or(name);
        name.eq_ignore_ascii_case(self.host.as_bytes())
    }

    /// The target's path for the audit: no query, bounded, placeholders
    /// named rather than shown.
    fn audit_path(&self, target: &[u8]) -> String {
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let mut path = String::from_utf8_lossy(path).into_owned();
        for s in self.secrets.iter() {
            if path.contains(&s.placeholder) {
                path = path.replace(&s.placeholder, &format!("<{}>", s.name));
            }
        }
        if path.len() > MAX_AUDIT_PATH {
            let mut cut = MAX_AUDIT_PATH;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            path.truncate(cut);
            path.push('…');
        }
        path
    }

    /// Copies `raw` to `out` with every placeholder of a bound secret
    /// replaced; a placeholder of any other secret refuses the request.
    fn substitute(
        &self,
        raw: &[u8],
        head: &Head,
        out: &mut Vec<u8>,
        events: &mut Vec<HttpEvent>,
    ) -> Result<(), HttpError> {
        let mut used: Vec<usize> = Vec::new();
        let mut i = 0;
        let mut copied = 0;
        while i < raw.len() {
            let found = self
                .secrets
                .iter()
                .enumerate()
                .find(|(_, s)| raw[i..].starts_with(s.placeholder.as_bytes()));
            let Some((index, secret)) = found else {
                i += 1;
                continue;
            };
            if !secret.bound_to(&self.host) {
                return Err(HttpError::Unbound {
                    secret: secret.name.clone(),
                    method: head.method.clone(),
                    path: head.path.clone(),
                });
            }
            out.extend_from_slice(&raw[copied..i]);
            out.extend_from_slice(secret.value.expose().as_bytes());
            i += secret.placeholder.len();
            copied = i;
            if !used.contains(&index) {
                used.push(index);
            }
        }
        out.extend_from_slice(&raw[copied..]);
        for index in used {
            if let Some(secret) = self.secrets.get(index) {
                events.push(HttpEvent::Substituted {
                    secret: secret.name.clone(),
                    method: head.method.clone(),
                    path: head.path.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The lines of a head (CRLF-separated; a bare CR or LF is malformed and
/// shows up inside a line, where [`header`] refuses it).
fn split_crlf(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match find(t, b"\r\n") {
            Some(i) => {
                rest = t.get(i + 2..);
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

/// `METHOD SP target SP HTTP/1.x`.
fn request_line_parts(line: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::Malformed("method"));
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic() || b >= 0x80) {
        return Err(HttpError::Malformed("target"));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(HttpError::Malformed("version"));
    }
    Ok((method, target))
}

/// The authority of an absolute-form target (`https://host[:port]/…`).
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let scheme_end = find(target, b"://")?;
    let rest = &target[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // Userinfo is dropped: the host follows the last '@'.
    Some(match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    })
}

/// `name: value`, checked.
fn header(line: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::Malformed("header without colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        // Also refuses obs-fold (a line starting with a space).
        return Err(HttpError::Malformed("header name"));
    }
    if value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(HttpError::Malformed("control character in a header"));
    }
    Ok((name, trim(value)))
}

fn parse_length(value: &[u8]) -> Result<u64, HttpError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::Framing("bad Content-Length"));
    }
    value
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(HttpError::Framing("bad Content-Length"))
}

/// A chunk-size line's size (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let size = line.split(|&b| b == b';').next().unwrap_or_default();
    let size = trim(size);
    if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(HttpError::Chunked);
    }
    let text = std::str::from_utf8(size).map_err(|_| HttpError::Chunked)?;
    u64::from_str_radix(text, 16).map_err(|_| HttpError::Chunked)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else {
        return &[];
    };
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
