//! An intercepted flow between in-memory pipes: a rustls client trusting
//! the workspace CA plays the guest, a rustls server with its own test CA
//! plays the upstream.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::{self, Read, Write};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, RootCertStore, ServerConnection};

use super::*;
use crate::secrets::SecretValue;

const VALUE: &str = "sk-ant-REAL-VALUE-0123456789";
const PLACEHOLDER: &str = "sk-ant-placeholder-XYZ";

/// One direction's bytes, bounded.
#[derive(Default)]
struct Half {
    bytes: Vec<u8>,
    closed: bool,
}

/// A pipe end: reads one half, writes the other.
struct End<'a> {
    rx: &'a mut Half,
    tx: &'a mut Half,
}

impl Read for End<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rx.bytes.is_empty() {
            return match self.rx.closed {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = buf.len().min(self.rx.bytes.len());
        buf[..n].copy_from_slice(&self.rx.bytes[..n]);
        self.rx.bytes.drain(..n);
        Ok(n)
    }
}

impl Write for End<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A small socket buffer: back-pressure is exercised.
        let room = (32usize << 10).saturating_sub(self.tx.bytes.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = room.min(buf.len());
        self.tx.bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A test upstream: its CA and a server config for `name`.
fn upstream(name: &str) -> (String, Arc<ServerConfig>) {
    let ca = Ca::generate("upstream test CA").unwrap();
    let minter = ca::Minter::new(&ca.cert_pem, &ca.key_pem).unwrap();
    let (cert, key) = minter.leaf(name).unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    (ca.cert_pem, Arc::new(config))
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The guest's TLS client trusting `ca_pem`, offering `alpn`.
fn guest_client(ca_pem: &str, name: &str, alpn: &[&[u8]]) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap()
}

struct Rig {
    flow: InterceptFlow,
    guest: ClientConnection,
    server: ServerConnection,
    /// guest → flow, flow → guest, flow → upstream, upstream → flow.
    g_in: Half,
    g_out: Half,
    u_in: Half,
    u_out: Half,
    /// Plaintext the guest received / the upstream received.
    guest_got: Vec<u8>,
    server_got: Vec<u8>,
    /// Every TLS byte the flow sent the guest.
    guest_wire: Vec<u8>,
    /// Bytes of `g_out` already copied to `guest_wire`.
    wire_seen: usize,
}

fn rig(trust_upstream: bool) -> Rig {
    let (up_ca, up_config) = upstream("api.test");
    let ws = Ca::generate("workspace CA").unwrap();
    let mut roots = vec![];
    if trust_upstream {
        roots.push(up_ca);
    } else {
        // Another CA entirely.
        roots.push(Ca::generate("other").unwrap().cert_pem);
    }
    let mut interceptor = Interceptor::new(&InterceptConfig {
        ca_cert_pem: ws.cert_pem.clone(),
        ca_key_pem: ws.key_pem.clone(),
        secrets: vec![Secret {
            name: "ANTHROPIC_API_KEY".into(),
            placeholder: PLACEHOLDER.into(),
            value: SecretValue::new(VALUE),
            hosts: vec!["api.test".into()],
        }],
        upstream_roots_pem: roots,
        host_roots: false,
    })
    .unwrap();
    assert!(interceptor.binds("api.test") && !interceptor.binds("x.api.test"));
    Rig {
        flow: interceptor.start("api.test").unwrap(),
        guest: guest_client(&ws.cert_pem, "api.test", &[b"h2", b"http/1.1"]),
        server: ServerConnection::new(up_config).unwrap(),
        g_in: Half::default(),
        g_out: Half::default(),
        u_in: Half::default(),
        u_out: Half::default(),
        guest_got: Vec::new(),
        server_got: Vec::new(),
        guest_wire: Vec::new(),
        wire_seen: 0,
    }
}

impl Rig {
    /// Runs every party until nothing moves; the flow's error, if any.
    fn run(&mut self) -> Result<(), FlowError> {
        for _ in 0..10_000 {
            let mut moved = false;
            // The guest client.
            while self.guest.wants_write() && self.g_in.bytes.len() < (32 << 10) {
                self.guest.write_tls(&mut self.g_in.bytes).unwrap();
                moved = true;
            }
            self.guest_wire
                .extend_from_slice(&self.g_out.bytes[self.wire_seen..]);
            self.wire_seen = self.g_out.bytes.len();
            if !self.g_out.bytes.is_empty() {
                let mut rd = &self.g_out.bytes[..];
                while !rd.is_empty() && matches!(self.guest.read_tls(&mut rd), Ok(1..)) {
                    if self.guest.process_new_packets().is_err() {
                        break;
                    }
                    let _ = self.guest.reader().read_to_end(&mut self.guest_got);
                }
                let used = self.g_out.bytes.len() - rd.len();
                self.g_out.bytes.drain(..used);
                self.wire_seen -= used;
                moved |= used > 0;
            }
            // The flow.
            let pumped = self.flow.pump(
                &mut End {
                    rx: &mut self.g_in,
                    tx: &mut self.g_out,
                },
                &mut End {
                    rx: &mut self.u_out,
                    tx: &mut self.u_in,
                },
            )?;
            moved |= pumped.progress;
            // The upstream server.
            if !self.u_in.bytes.is_empty() {
                let mut rd = &self.u_in.bytes[..];
                while !rd.is_empty() && matches!(self.server.read_tls(&mut rd), Ok(1..)) {
                    self.server.process_new_packets().unwrap();
                    let _ = self.server.reader().read_to_end(&mut self.server_got);
                }
                let used = self.u_in.bytes.len() - rd.len();
                self.u_in.bytes.drain(..used);
                moved |= used > 0;
            }
            while self.server.wants_write() && self.u_out.bytes.len() < (32 << 10) {
                self.server.write_tls(&mut self.u_out.bytes).unwrap();
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
        panic!("no quiescence");
    }
}

#[test]
fn the_upstream_gets_the_value_the_guest_never_does() {
    let mut r = rig(true);
    let request = format!(
        "GET /v1/models?x=1 HTTP/1.1\r\nHost: api.test\r\nx-api-key: {PLACEHOLDER}\r\n\r\n\
         POST /v1/messages HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\
         Content-Length: 4\r\n\r\nbody"
    );
    r.guest.writer().write_all(request.as_bytes()).unwrap();
    r.run().unwrap();
    assert_eq!(r.flow.guest_alpn(), Some(&b"http/1.1"[..]));
    let got = String::from_utf8(r.server_got.clone()).unwrap();
    assert_eq!(got.matches(VALUE).count(), 2, "{got}");
    assert!(!got.contains(PLACEHOLDER));
    let events = r.flow.take_events();
    assert_eq!(events.len(), 2);
    // A response that echoes the placeholder's position streams back.
    let body = vec![b'd'; 3 << 20];
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    r.server.writer().write_all(head.as_bytes()).unwrap();
    let mut sent = 0;
    while sent < body.len() {
        sent += r.server.writer().write(&body[sent..]).unwrap();
        r.run().unwrap();
    }
    r.run().unwrap();
    assert_eq!(r.guest_got.len(), head.len() + body.len());
    let wire = &r.guest_wire;
    assert!(!wire.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()));
}

#[test]
fn a_bad_upstream_certificate_fails_the_flow() {
    let mut r = rig(false);
    r.guest
        .writer()
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: api.test\r\nx-api-key: {PLACEHOLDER}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let e = r.run().unwrap_err();
    assert_eq!(e.reason(), "upstream certificate rejected", "{e:?}");
    assert!(r.server_got.is_empty());
}

#[test]
fn another_hosts_name_in_the_head_fails_the_flow() {
    let mut r = rig(true);
    r.guest
        .writer()
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: evil.test\r\nx-api-key: {PLACEHOLDER}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let e = r.run().unwrap_err();
    assert_eq!(e.reason(), "request names another host");
    assert!(!String::from_utf8_lossy(&r.server_got).contains(VALUE));
}

#[test]
fn a_guest_offering_only_h2_is_refused() {
    let mut r = rig(true);
    let ws_ca = {
        // The rig's guest trusts the workspace CA; make another offering h2 only.
        let ws = Ca::generate("ws").unwrap();
        let mut i = Interceptor::new(&InterceptConfig {
            ca_cert_pem: ws.cert_pem.clone(),
            ca_key_pem: ws.key_pem.clone(),
            secrets: vec![],
            upstream_roots_pem: vec![],
            host_roots: false,
        })
        .unwrap();
        r.flow = i.start("api.test").unwrap();
        ws.cert_pem
    };
    r.guest = guest_client(&ws_ca, "api.test", &[b"h2"]);
    let e = r.run().unwrap_err();
    assert_eq!(e.reason(), "guest TLS failed");
}

#[test]
fn an_upgraded_connection_passes_both_ways_and_closes_cleanly() {
    let mut r = rig(true);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Authorization: Bearer {PLACEHOLDER}\r\n\r\n"
    );
    r.guest.writer().write_all(request.as_bytes()).unwrap();
    r.run().unwrap();
    assert!(String::from_utf8_lossy(&r.server_got).contains(VALUE));
    r.server
        .writer()
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x01server")
        .unwrap();
    r.run().unwrap();
    assert!(r.guest_got.ends_with(b"\r\n\r\n\x01server"));
    // Not an HTTP head, with a placeholder: passes verbatim in the tunnel.
    r.server_got.clear();
    let frame = format!("\x01guest {PLACEHOLDER}");
    r.guest.writer().write_all(frame.as_bytes()).unwrap();
    r.run().unwrap();
    assert_eq!(r.server_got, frame.as_bytes());
    // The upstream closes: the guest gets a close_notify, the flow says
    // the guest's side may close.
    r.server.send_close_notify();
    r.run().unwrap();
    let mut rest = Vec::new();
    assert_eq!(r.guest.reader().read_to_end(&mut rest).unwrap(), 0);
    let pumped = r
        .flow
        .pump(
            &mut End {
                rx: &mut r.g_in,
                tx: &mut r.g_out,
            },
            &mut End {
                rx: &mut r.u_out,
                tx: &mut r.u_in,
            },
        )
        .unwrap();
    assert!(pumped.close_guest && !pumped.close_upstream, "{pumped:?}");
}

#[test]
fn the_configuration_never_prints_the_ca_key_or_a_value() {
    let ws = Ca::generate("ws").unwrap();
    let config = InterceptConfig {
        ca_cert_pem: ws.cert_pem.clone(),
        ca_key_pem: ws.key_pem.clone(),
        secrets: vec![Secret {
            name: "K".into(),
            placeholder: PLACEHOLDER.into(),
            value: SecretValue::new(VALUE),
            hosts: vec!["api.test".into()],
        }],
        upstream_roots_pem: vec![],
        host_roots: false,
    };
    let shown = format!("{config:?} {:?}", Interceptor::new(&config).unwrap());
    assert!(!shown.contains(VALUE), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains(ws.key_pem.expose().lines().nth(1).unwrap()));
}
