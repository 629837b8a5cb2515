//! The upstream: one rustls server on port 443 of a loopback address,
//! certified by a test CA of its own, serving every benchmark name (the
//! certificate chosen by the ClientHello's server name). Each connection
//! gets a thread; each request is counted against the name its connection
//! asked for, with what its `Authorization` header carried.
//!
//! Routes: `/small` answers [`SMALL_BODY`] bytes, `/download/N` answers
//! N bytes, `/upload` reads the request's body (Content-Length) and
//! answers like `/small`.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use agentvm_net::intercept::ca::Minter;
use agentvm_net::intercept::Ca;
use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::server::ResolvesServerCertUsingSni;
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::{provider, ALPN};

/// Bytes of a small response's body.
pub const SMALL_BODY: usize = 100;
/// The longest request head the server reads.
const MAX_HEAD: usize = 64 << 10;
/// Bytes moved per read or write.
const CHUNK: usize = 64 << 10;

/// What one name's requests carried.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    value: AtomicU64,
    placeholder: AtomicU64,
    uploaded: AtomicU64,
}

/// A copy of a name's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests served.
    pub requests: u64,
    /// Requests whose `Authorization` was `Bearer` and the real value.
    pub value: u64,
    /// Requests whose `Authorization` was `Bearer` and the placeholder.
    pub placeholder: u64,
    /// Request body bytes read.
    pub uploaded: u64,
}

/// What the server compares `Authorization` headers with.
struct Tokens {
    value: String,
    placeholder: String,
}

/// The running server (its threads live as long as the process).
pub struct Upstream {
    /// Its CA's certificate, PEM: the stack's extra upstream root, and
    /// one of the guest's roots (for the flow that is not intercepted).
    pub ca_pem: String,
    /// Each name, its leaf certificate and its counts.
    names: Arc<Vec<(String, CertificateDer<'static>, Tally)>>,
}

impl Upstream {
    /// Listens on `addr` (port 443 needs root or CAP_NET_BIND_SERVICE)
    /// for `names`, counting `Authorization: Bearer` with `value` or
    /// `placeholder`.
    pub fn start(
        addr: SocketAddrV4,
        names: &[&str],
        value: &str,
        placeholder: &str,
    ) -> anyhow::Result<Self> {
        let ca = Ca::generate("bench-intercept upstream CA")?;
        let minter = Minter::new(&ca.cert_pem, &ca.key_pem)?;
        let provider = provider();
        let mut resolver = ResolvesServerCertUsingSni::new();
        let mut known = Vec::new();
        for name in names {
            let (cert, key) = minter.leaf(name)?;
            let certified = CertifiedKey::from_der(vec![cert.clone()], key, &provider)?;
            resolver.add(name, certified)?;
            known.push((name.to_string(), cert, Tally::default()));
        }
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![ALPN.to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("listening on {addr} (port 443 needs root)"))?;
        let names = Arc::new(known);
        let tokens = Arc::new(Tokens {
            value: format!("Bearer {value}"),
            placeholder: format!("Bearer {placeholder}"),
        });
        let shared = names.clone();
        thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let (config, names, tokens) = (config.clone(), shared.clone(), tokens.clone());
                    let spawned = thread::Builder::new()
                        .name("upstream-conn".into())
                        .spawn(move || serve(conn, config, &names, &tokens));
                    // No thread: the connection drops, the guest's
                    // request fails loudly.
                    drop(spawned);
                }
            })
            .context("starting the upstream")?;
        Ok(Upstream {
            ca_pem: ca.cert_pem,
            names,
        })
    }

    /// The leaf certificate the server presents for `name`.
    pub fn leaf(&self, name: &str) -> Option<&CertificateDer<'static>> {
        self.names
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(_, c, _)| c)
    }

    /// What `name`'s requests carried so far.
    pub fn counts(&self, name: &str) -> Counts {
        let Some((.., t)) = self.names.iter().find(|(n, ..)| n == name) else {
            return Counts::default();
        };
        Counts {
            requests: t.requests.load(Ordering::SeqCst),
            value: t.value.load(Ordering::SeqCst),
            placeholder: t.placeholder.load(Ordering::SeqCst),
            uploaded: t.uploaded.load(Ordering::SeqCst),
        }
    }
}

/// One connection: requests until EOF or an error.
fn serve(
    conn: TcpStream,
    config: Arc<ServerConfig>,
    names: &[(String, CertificateDer<'static>, Tally)],
    tokens: &Tokens,
) {
    // What an HTTP server does for small responses.
    let _ = conn.set_nodelay(true);
    let Ok(server) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(server, conn);
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut chunk = vec![0u8; CHUNK];
    let body = pattern(CHUNK);
    loop {
        // The head.
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some(tally) = tls
            .conn
            .server_name()
            .and_then(|sni| names.iter().find(|(n, ..)| n == sni))
            .map(|(.., t)| t)
        else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let Ok(length) = header("content-length").map_or(Ok(0), |n| n.parse::<u64>()) else {
            return;
        };
        tally.requests.fetch_add(1, Ordering::SeqCst);
        match header("authorization") {
            Some(a) if a == tokens.value => tally.value.fetch_add(1, Ordering::SeqCst),
            Some(a) if a == tokens.placeholder => tally.placeholder.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        // The body, read and dropped.
        let mut left = length;
        let held = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        buf.drain(..held);
        left -= held as u64;
        while left > 0 {
            let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            match tls.read(&mut chunk[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n as u64,
            }
        }
        tally.uploaded.fetch_add(length, Ordering::SeqCst);
        let sent = match path.strip_prefix("/download/").map(str::parse::<u64>) {
            Some(Ok(n)) => respond(&mut tls, n, &body),
            Some(Err(_)) => return,
            None if path == "/small" || path == "/upload" => {
                respond(&mut tls, SMALL_BODY as u64, &body)
            }
            None => return,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A 200 response with `n` bytes of `body` (repeated).
fn respond(
    tls: &mut StreamOwned<ServerConnection, TcpStream>,
    n: u64,
    body: &[u8],
) -> std::io::Result<()> {
    let mut first = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
    )
    .into_bytes();
    // The head and the start of the body in one write (one TLS record,
    // one segment for a small response), as servers do.
    let start = body.len().min(usize::try_from(n).unwrap_or(usize::MAX));
    first.extend_from_slice(&body[..start]);
    tls.write_all(&first)?;
    let mut left = n - start as u64;
    while left > 0 {
        let take = body.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        tls.write_all(&body[..take])?;
        left -= take as u64;
    }
    tls.flush()
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Deterministic bytes (bodies both ways).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect()
}
