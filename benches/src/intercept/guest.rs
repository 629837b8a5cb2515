//! The guest's side: smoltcp (`agentvm_net::testing::Guest`) wired to the
//! `NetStack` in this thread, a rustls client on each guest TCP
//! connection, and the HTTP/1.1 exchanges the benchmark times.
//!
//! The loop is the tests' (`Guest::exchange`: the guest sends, the stack
//! works, the guest receives), but an idle round waits on the stack's fd
//! only as long as the earliest timer of either side, so no exchange
//! waits out a fixed tick.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentvm_net::addr::DNS_IP;
use agentvm_net::testing::{wait_readable, Guest, SocketWriter};
use agentvm_net::NetStack;
use anyhow::{anyhow, bail, ensure, Context};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, TYPE};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant as SmolInstant;

use crate::upstream::{find, pattern};

/// The longest idle wait (as the tests' loop; timers and the fd end it
/// sooner).
const MAX_WAIT: Duration = Duration::from_millis(1);
/// How long one exchange may take before the run fails.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long a close may take before the guest aborts the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest response head the guest reads.
const MAX_HEAD: usize = 64 << 10;
/// Bytes of upload body handed to rustls at a time.
const CHUNK: usize = 64 << 10;

/// The guest, the stack it talks to, and its TLS settings.
pub struct Net {
    g: Guest,
    /// The stack under test.
    pub stack: NetStack,
    config: Arc<ClientConfig>,
    next_port: u16,
    upload: Vec<u8>,
    /// Connections that did not close within [`CLOSE_TIMEOUT`].
    pub unclean: u64,
}

/// A TLS connection from the guest.
pub struct Conn {
    tls: ClientConnection,
    sock: SocketHandle,
    /// Plaintext received and not consumed yet.
    plain: Vec<u8>,
}

impl Conn {
    /// The end-entity certificate the guest was served (after the
    /// handshake).
    pub fn peer_leaf(&self) -> Option<&CertificateDer<'static>> {
        self.tls.peer_certificates().and_then(|c| c.first())
    }

    /// Moves TLS bytes between rustls and the guest socket, and the
    /// plaintext received into `plain`. Fails on a TLS error or when the
    /// connection closed.
    fn pump(&mut self, g: &mut Guest) -> anyhow::Result<()> {
        let s = g.tcp(self.sock);
        send(&mut self.tls, s);
        while s.can_recv() {
            let tls = &mut self.tls;
            let used = s
                .recv(|buf| {
                    let mut rd: &[u8] = buf;
                    // A full rustls buffer takes nothing now.
                    let _ = tls.read_tls(&mut rd);
                    let used = buf.len() - rd.len();
                    (used, used)
                })
                .map_err(|e| anyhow!("guest socket: {e}"))?;
            self.tls
                .process_new_packets()
                .map_err(|e| anyhow!("guest TLS: {e}"))?;
            match self.tls.reader().read_to_end(&mut self.plain) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => bail!("guest TLS: {e}"),
            }
            if used == 0 {
                break;
            }
        }
        // What reading asked for (handshake messages, acknowledgements).
        send(&mut self.tls, s);
        ensure!(
            s.is_open() && s.state() != State::CloseWait,
            "the connection closed ({})",
            s.state()
        );
        Ok(())
    }
}

/// Writes what rustls has to send into the socket, as far as it fits.
fn send(tls: &mut ClientConnection, s: &mut tcp::Socket<'static>) {
    while tls.wants_write() && s.can_send() {
        match tls.write_tls(&mut SocketWriter(s)) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// A response being read: its body length once the head is in.
#[derive(Default)]
struct Response {
    length: Option<u64>,
    body: u64,
}

impl Response {
    /// Takes what `plain` holds of the response; true once it is whole.
    fn feed(&mut self, plain: &mut Vec<u8>) -> anyhow::Result<bool> {
        let length = match self.length {
            Some(n) => n,
            None => {
                let Some(end) = find(plain, b"\r\n\r\n") else {
                    ensure!(plain.len() <= MAX_HEAD, "response head too long");
                    return Ok(false);
                };
                let head = String::from_utf8_lossy(&plain[..end]).into_owned();
                plain.drain(..end + 4);
                ensure!(head.starts_with("HTTP/1.1 200 "), "response: {head}");
                let n = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (name, v) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<u64>().ok())?
                    })
                    .with_context(|| format!("no Content-Length: {head}"))?;
                self.length = Some(n);
                n
            }
        };
        let take = plain
            .len()
            .min(usize::try_from(length - self.body).unwrap_or(usize::MAX));
        plain.drain(..take);
        self.body += take as u64;
        Ok(self.body == length)
    }
}

impl Net {
    /// The guest with its lease from `stack`; its TLS clients use `config`.
    pub fn new(mut stack: NetStack, config: Arc<ClientConfig>) -> anyhow::Result<Self> {
        let mut g = Guest::new();
        g.dhcp(&mut stack, Duration::from_secs(5))
            .context("no DHCP lease")?;
        Ok(Net {
            g,
            stack,
            config,
            next_port: 20000,
            upload: pattern(CHUNK),
            unclean: 0,
        })
    }

    /// Runs rounds until `done` holds; fails after [`TIMEOUT`] or when
    /// `done` fails.
    fn run_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut Guest) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if done(&mut self.g).context(what.to_owned())? {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "{what}: timed out");
            if !self.g.exchange(&mut self.stack) {
                self.idle();
            }
        }
    }

    /// Waits on the stack's fd until the earliest timer of either side.
    fn idle(&mut self) {
        let guest = self
            .g
            .iface
            .poll_delay(SmolInstant::now(), &self.g.sockets)
            .map(Duration::from);
        let stack = self.stack.poll_delay();
        let wait = [guest, stack]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(MAX_WAIT)
            .min(MAX_WAIT);
        if !wait.is_zero() {
            wait_readable(self.stack.as_raw_fd(), wait);
        }
    }

    /// The address the stack's DNS server gives for `name` (a flow's
    /// address must have been handed out, as for a real guest).
    pub fn resolve(&mut self, name: &str) -> anyhow::Result<Ipv4Addr> {
        let mut query = Packet::new_query(0x1515);
        query.set_flags(PacketFlag::RECURSION_DESIRED);
        query.questions.push(Question::new(
            Name::new(name)?,
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let bytes = query.build_bytes_vec()?;
        let socket = self.g.udp_bind(5353);
        self.g.udp(socket).send_slice(&bytes, (DNS_IP, 53))?;
        let mut reply = Vec::new();
        let got = self.run_until("DNS", |g| {
            let mut buf = vec![0; 4096];
            if let Ok((n, _)) = g.udp(socket).recv_slice(&mut buf) {
                buf.truncate(n);
                reply = buf;
            }
            Ok(!reply.is_empty())
        });
        self.g.sockets.remove(socket);
        got?;
        Packet::parse(&reply)?
            .answers
            .iter()
            .find_map(|r| match &r.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .with_context(|| format!("no address for {name}"))
    }

    /// Opens a connection to `remote` for TLS to `name`, with `buffer`
    /// bytes of socket buffer each way; the handshake runs with the first
    /// request.
    pub fn connect(
        &mut self,
        remote: SocketAddrV4,
        name: &str,
        buffer: usize,
    ) -> anyhow::Result<Conn> {
        let port = self.next_port;
        self.next_port = if port >= 60000 { 20000 } else { port + 1 };
        let server = ServerName::try_from(name.to_owned())?;
        let tls = ClientConnection::new(self.config.clone(), server)?;
        let sock = self.g.tcp_connect(remote, port, buffer);
        // What an HTTP client does (TCP_NODELAY); the stack does it too.
        self.g.tcp(sock).set_nagle_enabled(false);
        Ok(Conn {
            tls,
            sock,
            plain: Vec::new(),
        })
    }

    /// Sends `head` and `upload` bytes of body on `conn` and reads the
    /// whole response, which must be a 200 with `expect` bytes of body.
    pub fn request(
        &mut self,
        conn: &mut Conn,
        head: &[u8],
        upload: u64,
        expect: u64,
    ) -> anyhow::Result<()> {
        conn.tls.writer().write_all(head)?;
        let mut sent = 0u64;
        let mut response = Response::default();
        let upload_buf = std::mem::take(&mut self.upload);
        let result = self.run_until("request", |g| {
            while sent < upload {
                let n = upload_buf
                    .len()
                    .min(usize::try_from(upload - sent).unwrap_or(usize::MAX));
                let w = conn.tls.writer().write(&upload_buf[..n])?;
                if w == 0 {
                    break;
                }
                sent += w as u64;
            }
            conn.pump(g)?;
            if !response.feed(&mut conn.plain)? {
                return Ok(false);
            }
            ensure!(
                response.body == expect,
                "a {}-byte body, {expect} expected",
                response.body
            );
            ensure!(conn.plain.is_empty(), "bytes after the response");
            Ok(true)
        });
        self.upload = upload_buf;
        result
    }

    /// Closes `conn` (close_notify, FIN) and forgets it; aborts it if it
    /// does not close within [`CLOSE_TIMEOUT`].
    pub fn close(&mut self, mut conn: Conn) {
        conn.tls.send_close_notify();
        let sock = conn.sock;
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let mut closing = false;
        loop {
            let s = self.g.tcp(sock);
            send(&mut conn.tls, s);
            if !closing && !conn.tls.wants_write() {
                s.close();
                closing = true;
            }
            // Whatever still comes in is dropped.
            while s.can_recv() {
                if s.recv(|b| (b.len(), ())).is_err() {
                    break;
                }
            }
            if matches!(s.state(), State::Closed | State::TimeWait) {
                break;
            }
            if Instant::now() >= deadline {
                s.abort();
                self.unclean += 1;
                self.g.exchange(&mut self.stack);
                break;
            }
            if !self.g.exchange(&mut self.stack) {
                self.idle();
            }
        }
        self.g.sockets.remove(sock);
    }
}
