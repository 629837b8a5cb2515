//! Secrets substituted by the stack (T0 of issue 15): the smoltcp guest
//! runs a rustls client trusting the workspace CA; the upstream is a
//! rustls server with its own test CA on 127.0.44.N:443, reached through a
//! pin, its CA given as `upstream_roots_pem`. A placeholder reaches the
//! bound host as the real value (and is audited, by name), reaches another
//! allowed host verbatim without interception, and the real value is in
//! no frame the guest gets nor in any audit line.
//!
//! The servers bind port 443 of 127.0.44.N, which needs root or
//! CAP_NET_BIND_SERVICE (the test machine and CI have it).
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use agentvm_net::intercept::ca::Minter;
use agentvm_net::intercept::{Ca, InterceptConfig};
use agentvm_net::secrets::{Secret, SecretValue};
use agentvm_net::testing::{Guest, SocketWriter};
use agentvm_net::{Audit, AuditEvent, Mode, NetStack, Policy, StackConfig, Verdict};
use common::{found, guest, lookup, Events};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use simple_dns::TYPE;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

const VALUE: &str = "sk-ant-api03-REAL-secret-value-0123456789";
const PLACEHOLDER: &str = "sk-ant-api03-placeholder-AAAAAAAAAAAA";
const OTHER_VALUE: &str = "ghp_REALotherSecretValue987654";
const OTHER_PLACEHOLDER: &str = "ghp_placeholderBBBBBBBBBBBB";
const LONG: Duration = Duration::from_secs(60);

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ------------------------------------------------------------ upstream

/// A TLS server on `addr`:443 for the names `names`, certified by its own
/// CA. It records every request (head and body) and answers each with a
/// small body naming its path, or, for `/stream`, with `stream` (a whole
/// chunked response).
struct Upstream {
    ca_pem: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start(ip: Ipv4Addr, names: &[&str], stream: Arc<Vec<u8>>) -> Self {
        let ca = Ca::generate("upstream test CA").unwrap();
        let minter = Minter::new(&ca.cert_pem, &ca.key_pem).unwrap();
        let mut certs = Vec::new();
        for name in names {
            certs.push(minter.leaf(name).unwrap());
        }
        // One name per server in these tests is enough: the first.
        let (cert, key) = certs.remove(0);
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind(SocketAddrV4::new(ip, 443))
            .unwrap_or_else(|e| panic!("cannot listen on {ip}:443: {e}"));
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = requests.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (config, seen, stream) = (config.clone(), seen.clone(), stream.clone());
                thread::spawn(move || serve(conn, config, &seen, &stream));
            }
        });
        Upstream {
            ca_pem: ca.cert_pem,
            requests,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, config: Arc<ServerConfig>, seen: &Mutex<Vec<String>>, stream: &[u8]) {
    let server = ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(server, conn);
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0; 4096];
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        while buf.len() < end + 4 + length {
            let mut chunk = [0; 4096];
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buf.drain(..end + 4 + length).collect();
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&request).into_owned());
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let written = if path == "/stream" {
            tls.write_all(stream)
        } else {
            let body = format!("you asked for {path}");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tls.write_all(response.as_bytes())
        };
        if written.and_then(|()| tls.flush()).is_err() {
            return;
        }
    }
}

// --------------------------------------------------------------- guest

/// A rustls client over a guest TCP socket.
struct GuestTls {
    conn: ClientConnection,
    sock: SocketHandle,
    /// Plaintext received.
    plain: Vec<u8>,
    /// The TLS error, if the connection failed.
    error: Option<rustls::Error>,
}

impl GuestTls {
    /// Connects from `port` to `remote`, TLS for `name` trusting `ca_pem`.
    fn connect(
        g: &mut Guest,
        stack: &mut NetStack,
        remote: SocketAddrV4,
        port: u16,
        name: &str,
        ca_pem: &str,
    ) -> Self {
        Self::connect_with(g, stack, remote, port, name, ca_pem, |_| {})
    }

    /// [`GuestTls::connect`], the client's configuration changed by `tweak`.
    fn connect_with(
        g: &mut Guest,
        stack: &mut NetStack,
        remote: SocketAddrV4,
        port: u16,
        name: &str,
        ca_pem: &str,
        tweak: impl FnOnce(&mut ClientConfig),
    ) -> Self {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Offers h2 first: the stack must answer http/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tweak(&mut config);
        let conn = ClientConnection::new(
            Arc::new(config),
            ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let sock = g.tcp_connect(remote, port, 256 << 10);
        g.run_until(stack, common::SOON, |g, _| {
            g.tcp(sock).state() == State::Established
        });
        assert_eq!(g.tcp(sock).state(), State::Established, "connect {remote}");
        GuestTls {
            conn,
            sock,
            plain: Vec::new(),
            error: None,
        }
    }

    /// Moves TLS bytes between the client and the socket.
    fn pump(&mut self, g: &mut Guest) {
        let s = g.tcp(self.sock);
        while self.conn.wants_write() && s.can_send() {
            let mut w = SocketWriter(s);
            if self.conn.write_tls(&mut w).unwrap_or(0) == 0 {
                break;
            }
        }
        while self.error.is_none() && s.can_recv() && self.conn.wants_read() {
            let conn = &mut self.conn;
            let used = s
                .recv(|buf| {
                    let mut rd: &[u8] = buf;
                    let _ = conn.read_tls(&mut rd);
                    let used = buf.len() - rd.len();
                    (used, used)
                })
                .unwrap();
            if let Err(e) = self.conn.process_new_packets() {
                self.error = Some(e);
                // The alert goes out.
                while self.conn.wants_write() && s.can_send() {
                    if self.conn.write_tls(&mut SocketWriter(s)).unwrap_or(0) == 0 {
                        break;
                    }
                }
                break;
            }
            let _ = self.conn.reader().read_to_end(&mut self.plain);
            if used == 0 {
                break;
            }
        }
    }

    /// Sends `request` and runs until `done(plaintext so far)`, the
    /// connection closes or fails, or `timeout` passes.
    fn exchange(
        &mut self,
        g: &mut Guest,
        stack: &mut NetStack,
        request: &str,
        timeout: Duration,
        mut done: impl FnMut(&[u8]) -> bool,
    ) -> bool {
        self.conn.writer().write_all(request.as_bytes()).unwrap();
        g.run_until(stack, timeout, |g, _| {
            self.pump(g);
            done(&self.plain) || self.error.is_some() || !g.tcp(self.sock).is_open()
        });
        done(&self.plain)
    }
}

/// Whether `plain` holds `n` complete small responses.
fn responses(n: usize) -> impl FnMut(&[u8]) -> bool {
    move |plain| {
        String::from_utf8_lossy(plain)
            .matches("you asked for")
            .count()
            >= n
    }
}

// --------------------------------------------------------------- setup

/// Secrets: `VALUE` bound to `api.test`, `OTHER_VALUE` to `gh.test`.
fn secrets() -> Vec<Secret> {
    vec![
        Secret {
            name: "ANTHROPIC_API_KEY".into(),
            placeholder: PLACEHOLDER.into(),
            value: SecretValue::new(VALUE),
            hosts: vec!["api.test".into()],
        },
        Secret {
            name: "GH_TOKEN".into(),
            placeholder: OTHER_PLACEHOLDER.into(),
            value: SecretValue::new(OTHER_VALUE),
            hosts: vec!["gh.test".into()],
        },
    ]
}

struct Setup {
    stack: NetStack,
    events: Events,
    g: Guest,
    ws_ca: String,
    /// `api.test` (bound) as the guest addresses it.
    api: SocketAddrV4,
    /// `plain.test` (allowed, nothing bound) as the guest addresses it.
    plain: SocketAddrV4,
}

/// `api.test` pinned to 127.0.44.`n`, `plain.test` to 127.0.45.`n`,
/// served by `up` and `up_plain`; the stack trusts `roots` upstream.
fn setup(n: u8, roots: Vec<String>, budget: usize) -> Setup {
    setup_with(n, roots, budget, false)
}

/// [`setup`], the host's trust store counting too when `host_roots`.
fn setup_with(n: u8, roots: Vec<String>, budget: usize, host_roots: bool) -> Setup {
    let mut policy = Policy::new(Mode::Filtered);
    policy
        .pin("api.test", Ipv4Addr::new(127, 0, 44, n))
        .unwrap();
    policy
        .pin("plain.test", Ipv4Addr::new(127, 0, 45, n))
        .unwrap();
    policy.ports = vec![443];
    let ws = Ca::generate("agentvm workspace test CA").unwrap();
    let events: Events = Arc::default();
    let sink = events.clone();
    let mut stack = NetStack::new(StackConfig {
        policy,
        audit: Audit::callback(move |e| sink.lock().unwrap().push(e.clone())),
        memory_budget: budget,
        intercept: Some(InterceptConfig {
            ca_cert_pem: ws.cert_pem.clone(),
            ca_key_pem: ws.key_pem.clone(),
            secrets: secrets(),
            upstream_roots_pem: roots,
            host_roots,
        }),
        ..StackConfig::default()
    })
    .unwrap();
    let mut g = guest(&mut stack);
    let api = Ipv4Addr::new(198, 18, 44, n);
    let plain = Ipv4Addr::new(198, 18, 45, n);
    assert_eq!(lookup(&mut g, &mut stack, "api.test", TYPE::A), found(api));
    assert_eq!(
        lookup(&mut g, &mut stack, "plain.test", TYPE::A),
        found(plain)
    );
    Setup {
        stack,
        events,
        g,
        ws_ca: ws.cert_pem,
        api: SocketAddrV4::new(api, 443),
        plain: SocketAddrV4::new(plain, 443),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// No audit line holds a secret's value.
fn assert_audit_clean(events: &Events) {
    for e in events.lock().unwrap().iter() {
        let line = e.to_line();
        assert!(
            !line.contains(VALUE) && !line.contains(OTHER_VALUE),
            "{line}"
        );
    }
}

fn audited(events: &Events, reason: &str) -> Vec<AuditEvent> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.reason == reason)
        .cloned()
        .collect()
}

// --------------------------------------------------------------- tests

#[test]
fn placeholders_reach_the_bound_host_as_the_value_and_never_come_back() {
    let up = Upstream::start(Ipv4Addr::new(127, 0, 44, 70), &["api.test"], Arc::default());
    let mut s = setup(70, vec![up.ca_pem.clone()], 0);
    s.g.record = true;
    let mut tls = GuestTls::connect(&mut s.g, &mut s.stack, s.api, 50001, "api.test", &s.ws_ca);
    // Two requests on one connection (keep-alive), the second with a body.
    let first = format!(
        "GET /v1/models?beta=true HTTP/1.1\r\nHost: api.test\r\nx-api-key: {PLACEHOLDER}\r\n\r\n"
    );
    let second = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\
         Content-Length: 11\r\n\r\nhello world"
    );
    assert!(
        tls.exchange(&mut s.g, &mut s.stack, &first, LONG, responses(1)),
        "{:?}",
        tls.error
    );
    assert!(tls.exchange(&mut s.g, &mut s.stack, &second, LONG, responses(2)));
    // The guest was served by the workspace CA (its only root), with
    // HTTP/1.1 though it offered h2 first.
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].contains(&format!("x-api-key: {VALUE}\r\n")),
        "{}",
        seen[0]
    );
    assert!(seen[1].contains(&format!("Authorization: Bearer {VALUE}\r\n")));
    assert!(seen[1].ends_with("\r\n\r\nhello world"));
    assert!(!seen.iter().any(|r| r.contains(PLACEHOLDER)));
    // Every byte of every frame the guest got, and what it decrypted.
    let frames: Vec<u8> = s.g.seen.concat();
    assert!(!frames.is_empty());
    assert!(!contains(&frames, VALUE));
    assert!(!contains(&tls.plain, VALUE));
    // One audit line per substitution: name, host, method, path without
    // query; never the value.
    let subs = audited(&s.events, "secret substituted");
    let summary: Vec<_> = subs
        .iter()
        .map(|e| {
            (
                e.verdict,
                e.name.clone().unwrap(),
                e.secret.clone().unwrap(),
                e.method.clone().unwrap(),
                e.path.clone().unwrap(),
            )
        })
        .collect();
    let sub = |m: &str, p: &str| {
        (
            Verdict::Allow,
            "api.test".to_string(),
            "ANTHROPIC_API_KEY".to_string(),
            m.to_string(),
            p.to_string(),
        )
    };
    assert_eq!(
        summary,
        [sub("GET", "/v1/models"), sub("POST", "/v1/messages")]
    );
    assert_audit_clean(&s.events);
}

#[test]
fn another_allowed_host_gets_the_placeholder_verbatim_and_is_not_intercepted() {
    let up = Upstream::start(
        Ipv4Addr::new(127, 0, 45, 71),
        &["plain.test"],
        Arc::default(),
    );
    let mut s = setup(71, vec![up.ca_pem.clone()], 0);
    // The guest trusts the upstream's own CA only: the handshake works
    // only if the stack did not step in.
    let mut tls = GuestTls::connect(
        &mut s.g,
        &mut s.stack,
        s.plain,
        50002,
        "plain.test",
        &up.ca_pem,
    );
    let request = format!(
        "GET /x HTTP/1.1\r\nHost: plain.test\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\r\n"
    );
    assert!(
        tls.exchange(&mut s.g, &mut s.stack, &request, LONG, responses(1)),
        "{:?}",
        tls.error
    );
    // Not intercepted: the upstream chose the ALPN (h2, the first offered).
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    let seen = up.requests();
    assert!(seen[0].contains(&format!("Authorization: Bearer {PLACEHOLDER}\r\n")));
    assert!(!seen[0].contains(VALUE));
    assert!(audited(&s.events, "secret substituted").is_empty());
}

#[test]
fn a_placeholder_of_a_secret_bound_elsewhere_is_blocked_and_audited() {
    let up = Upstream::start(Ipv4Addr::new(127, 0, 44, 72), &["api.test"], Arc::default());
    let mut s = setup(72, vec![up.ca_pem.clone()], 0);
    let mut tls = GuestTls::connect(&mut s.g, &mut s.stack, s.api, 50003, "api.test", &s.ws_ca);
    let request = format!(
        "GET /repos?token=1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: token {OTHER_PLACEHOLDER}\r\n\r\n"
    );
    assert!(!tls.exchange(
        &mut s.g,
        &mut s.stack,
        &request,
        Duration::from_secs(10),
        responses(1)
    ));
    assert!(!s.g.tcp(tls.sock).is_open(), "the guest is reset");
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    let blocked = audited(&s.events, "placeholder of a secret not bound to this host");
    assert_eq!(blocked.len(), 1, "{:?}", s.events.lock().unwrap());
    assert_eq!(blocked[0].verdict, Verdict::Deny);
    assert_eq!(blocked[0].secret.as_deref(), Some("GH_TOKEN"));
    assert_eq!(blocked[0].name.as_deref(), Some("api.test"));
    assert_eq!(blocked[0].path.as_deref(), Some("/repos"));
    assert_audit_clean(&s.events);
}

#[test]
fn a_bad_upstream_certificate_fails_the_guests_request_and_is_audited() {
    let up = Upstream::start(Ipv4Addr::new(127, 0, 44, 73), &["api.test"], Arc::default());
    // The stack trusts another CA than the upstream's.
    let other = Ca::generate("not the upstream's").unwrap();
    let mut s = setup(73, vec![other.cert_pem], 0);
    let mut tls = GuestTls::connect(&mut s.g, &mut s.stack, s.api, 50004, "api.test", &s.ws_ca);
    let request =
        format!("GET /v1/models HTTP/1.1\r\nHost: api.test\r\nx-api-key: {PLACEHOLDER}\r\n\r\n");
    assert!(!tls.exchange(
        &mut s.g,
        &mut s.stack,
        &request,
        Duration::from_secs(10),
        responses(1)
    ));
    assert!(!String::from_utf8_lossy(&tls.plain).contains("you asked"));
    assert!(up.requests().is_empty());
    let failed = audited(&s.events, "upstream certificate rejected");
    assert_eq!(failed.len(), 1, "{:?}", s.events.lock().unwrap());
    assert_eq!(failed[0].verdict, Verdict::Deny);
    assert_eq!(failed[0].name.as_deref(), Some("api.test"));
    assert_audit_clean(&s.events);
}

#[test]
fn the_hosts_trust_store_counts_for_the_upstream_certificate() {
    // The upstream's CA only in the host's store (SSL_CERT_FILE, which
    // rustls-native-certs reads first): with host roots the request goes
    // through; without them it fails. (Each test is its own process
    // under nextest; nothing else here reads the variable.)
    let up = Upstream::start(Ipv4Addr::new(127, 0, 44, 75), &["api.test"], Arc::default());
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("host-store.pem");
    std::fs::write(&store, &up.ca_pem).unwrap();
    std::env::set_var("SSL_CERT_FILE", &store);
    let request =
        format!("GET /v1/models HTTP/1.1\r\nHost: api.test\r\nx-api-key: {PLACEHOLDER}\r\n\r\n");
    for (host_roots, through) in [(false, false), (true, true)] {
        let mut s = setup_with(75, vec![], 0, host_roots);
        let mut tls = GuestTls::connect(&mut s.g, &mut s.stack, s.api, 50006, "api.test", &s.ws_ca);
        let done = tls.exchange(
            &mut s.g,
            &mut s.stack,
            &request,
            Duration::from_secs(10),
            responses(1),
        );
        assert_eq!(done, through, "host_roots {host_roots}");
        assert_eq!(
            audited(&s.events, "upstream certificate rejected").len(),
            usize::from(!through),
            "host_roots {host_roots}: {:?}",
            s.events.lock().unwrap()
        );
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains(VALUE), "{seen:?}");
}

#[test]
fn a_10_mb_chunked_event_stream_streams_through_with_bounded_memory() {
    // The whole response, chunked like an SSE stream.
    let mut stream =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let event: Vec<u8> =
        b"data: {\"type\":\"content_block_delta\",\"text\":\"0123456789abcdef\"}\n\n".repeat(128);
    let mut body = 0;
    while body < 10 << 20 {
        stream.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
        stream.extend_from_slice(&event);
        stream.extend_from_slice(b"\r\n");
        body += event.len();
    }
    stream.extend_from_slice(b"0\r\n\r\n");
    let stream = Arc::new(stream);
    let up = Upstream::start(Ipv4Addr::new(127, 0, 44, 74), &["api.test"], stream.clone());
    // A small budget: the stream must fit in it.
    let budget = 8 << 20;
    let mut s = setup(74, vec![up.ca_pem.clone()], budget);
    let mut tls = GuestTls::connect(&mut s.g, &mut s.stack, s.api, 50005, "api.test", &s.ws_ca);
    let request =
        format!("GET /stream HTTP/1.1\r\nHost: api.test\r\nx-api-key: {PLACEHOLDER}\r\n\r\n");
    let want = stream.len();
    assert!(
        tls.exchange(&mut s.g, &mut s.stack, &request, LONG, |p| p.len() >= want),
        "got {} of {want} bytes ({:?})",
        tls.plain.len(),
        tls.error
    );
    assert!(tls.plain == *stream, "the stream arrives intact");
    let stats = s.stack.stats();
    assert!(stats.memory_peak <= budget, "{stats:?}");
    assert!(stats.memory_peak < stream.len() / 2, "{stats:?}");
}

#[test]
fn a_client_hello_without_a_server_name_is_not_intercepted() {
    let up = Upstream::start(Ipv4Addr::new(127, 0, 44, 75), &["api.test"], Arc::default());
    let mut s = setup(75, vec![up.ca_pem.clone()], 0);
    // No SNI to a pinned address passes the policy, but interception
    // needs the name in the ClientHello: the guest (trusting only the
    // upstream's CA) reaches the upstream itself, the placeholder stays.
    let mut tls = GuestTls::connect_with(
        &mut s.g,
        &mut s.stack,
        s.api,
        50006,
        "api.test",
        &up.ca_pem,
        |c| c.enable_sni = false,
    );
    let request =
        format!("GET /v1/models HTTP/1.1\r\nHost: api.test\r\nx-api-key: {PLACEHOLDER}\r\n\r\n");
    assert!(
        tls.exchange(&mut s.g, &mut s.stack, &request, LONG, responses(1)),
        "{:?}",
        tls.error
    );
    let seen = up.requests();
    assert!(seen[0].contains(&format!("x-api-key: {PLACEHOLDER}\r\n")));
    assert!(audited(&s.events, "secret substituted").is_empty());
}
