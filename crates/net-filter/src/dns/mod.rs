//! The DNS server at 10.0.2.3:53, the only resolver the guest has.
//!
//! Every query is decided here, before anything leaves the host:
//!
//! - mode `off`: no answer at all;
//! - a name pinned in `hosts`: answered locally with the pinned address;
//! - a name the policy does not allow (or that is no valid name):
//!   NXDOMAIN, answered locally. Never forwarded (a forwarded query is an
//!   exfiltration channel: the name itself reaches someone's
//!   authoritative server) and never REFUSED (glibc retries other servers
//!   and the guest hangs);
//! - AAAA: an empty answer, locally (the stack has no IPv6);
//! - anything else: forwarded to the first upstream resolver under a
//!   fresh transaction id, and the answer relayed back once it is checked
//!   to come from that resolver for that question. Its A records go into
//!   the handed-out table under the name the guest asked (CNAME chains
//!   included), which is what lets a `filtered` guest reach them.
//!
//! Malformed messages are dropped. A query with other than one question
//! gets FORMERR, one with an opcode other than QUERY gets NOTIMP (the
//! guest learns at once rather than timing out).
//!
//! Queries come as datagrams or over TCP ([`tcp`]), decided alike. A
//! truncated upstream answer keeps its TC bit for a guest on UDP (which
//! then asks over TCP); for a guest on TCP the server asks the resolver
//! again over TCP for the whole answer (`upstream_tcp.rs`).

mod handed_out;
mod message;
pub mod tcp;
#[cfg(test)]
mod tests;
mod upstream_tcp;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::Interest;
use simple_dns::rdata::RData;
use simple_dns::{Packet, PacketFlag, CLASS, OPCODE, RCODE, TYPE};
use tracing::debug;

use crate::{Audit, AuditEvent, Mode, Policy, Proto, Verdict};
use handed_out::HandedOut;
use message::Asked;
use upstream_tcp::{Progress, UpstreamTcp, MAX_UPSTREAM_TCP};

/// How long upstream has to answer before the guest gets SERVFAIL.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries waiting for upstream at most; beyond, new ones get SERVFAIL.
const MAX_PENDING: usize = 256;
/// TTL of a pinned name's answer.
const PINNED_TTL: u32 = 60;
/// Bounds on how long an upstream address stays in the handed-out table:
/// at least a minute (guests cache longer than they should), at most a
/// day.
const MIN_TABLE_TTL: u32 = 60;
const MAX_TABLE_TTL: u32 = 86_400;
/// Datagrams read per [`DnsServer::upstream_ready`] call: every pending
/// query answered several times over; a flood beyond waits for the next
/// readiness event.
const MAX_READS: usize = 4 * MAX_PENDING;
/// Tries at a transaction id not already waiting.
const ID_TRIES: usize = 8;

/// Errors starting the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The upstream socket could not be created or registered.
    #[error("Cannot open the DNS server's upstream socket")]
    Socket(#[source] std::io::Error),
}

/// Where a guest query came from, and so where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A datagram from this guest endpoint.
    Udp(SocketAddrV4),
    /// A message on this DNS-over-TCP connection ([`tcp`]).
    Tcp(u64),
}

impl From<SocketAddrV4> for Client {
    fn from(guest: SocketAddrV4) -> Self {
        Client::Udp(guest)
    }
}

/// A query forwarded upstream, waiting for its answer.
#[derive(Debug)]
struct Pending {
    /// Where the guest asked from.
    guest: Client,
    /// What it asked (with its own transaction id).
    asked: Asked<'static>,
    /// The name asked, normalized: where the answer's addresses go.
    name: String,
    /// When the guest gets SERVFAIL instead.
    deadline: Instant,
    /// Asked again over TCP (its datagram answer was truncated): only
    /// that connection's answer counts.
    over_tcp: bool,
}

/// The stack's DNS server: answers guest queries locally or forwards them
/// upstream, and remembers which addresses it handed out for which names.
pub struct DnsServer {
    resolvers: Vec<SocketAddr>,
    socket: UdpSocket,
    /// By the transaction id used upstream.
    pending: HashMap<u16, Pending>,
    handed_out: HandedOut,
    /// Keys for upstream transaction ids (SipHash of a counter with random
    /// keys: unpredictable to whoever would spoof answers).
    id_keys: RandomState,
    id_counter: u64,
    /// Receive buffer for upstream datagrams.
    buf: Vec<u8>,
    /// Queries asked again over TCP, by upstream transaction id; their
    /// sockets share the UDP socket's token.
    upstream_tcp: HashMap<u16, UpstreamTcp>,
    registry: mio::Registry,
    token: mio::Token,
    /// Queries answered SERVFAIL because `MAX_PENDING` were upstream.
    busy: u64,
}

impl DnsServer {
    /// A server forwarding to `resolvers`, its upstream socket registered
    /// in `registry` under `token`.
    pub fn new(
        resolvers: Vec<SocketAddr>,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> Result<Self, DnsError> {
        let any: IpAddr = match resolvers.first() {
            Some(SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
            _ => Ipv4Addr::UNSPECIFIED.into(),
        };
        let mut socket = UdpSocket::bind(SocketAddr::new(any, 0)).map_err(DnsError::Socket)?;
        registry
            .register(&mut socket, token, Interest::READABLE)
            .map_err(DnsError::Socket)?;
        Ok(DnsServer {
            resolvers,
            socket,
            pending: HashMap::new(),
            handed_out: HandedOut::default(),
            id_keys: RandomState::new(),
            id_counter: 0,
            buf: vec![0; usize::from(u16::MAX)],
            upstream_tcp: HashMap::new(),
            registry: registry.try_clone().map_err(DnsError::Socket)?,
            token,
            busy: 0,
        })
    }

    /// How many queries were answered SERVFAIL because too many were
    /// already upstream.
    pub fn busy(&self) -> u64 {
        self.busy
    }

    /// A query (a UDP payload, or a message from a TCP stream) the guest
    /// sent from `from`; returns the reply when it is answered locally,
    /// `None` when it went upstream (or was malformed and dropped).
    pub fn query(
        &mut self,
        now: Instant,
        policy: &Policy,
        from: impl Into<Client>,
        payload: &[u8],
        audit: &Audit,
    ) -> Option<Vec<u8>> {
        let from = from.into();
        if policy.mode == Mode::Off {
            return None;
        }
        let query = Packet::parse(payload).ok()?;
        if query.has_flags(PacketFlag::RESPONSE) {
            return None;
        }
        if query.opcode() != OPCODE::StandardQuery {
            return message::bare_reply(&query, RCODE::NotImplemented);
        }
        let [question] = query.questions.as_slice() else {
            return message::bare_reply(&query, RCODE::FormatError);
        };
        let mut asked = Asked::new(&query, question);
        if matches!(from, Client::Tcp(_)) {
            // A client asking over TCP wants the whole answer: ask
            // upstream for the largest one a datagram brings.
            asked.widen();
        }
        let event = |verdict, reason| AuditEvent::now(Proto::Dns, verdict, reason);

        let Some(name) = asked.name() else {
            let shown = asked.question.qname.to_string();
            audit.record(event(Verdict::Deny, "invalid name").name(shown));
            return asked.reply(RCODE::NameError, None);
        };
        if let Some(ip) = policy.pinned(&name) {
            let expires = now + Duration::from_secs(PINNED_TTL.into());
            self.handed_out.record(now, ip, &name, expires, true);
            audit.record(event(Verdict::Allow, "pinned").name(&name));
            return asked.reply(RCODE::NoError, Some((ip, PINNED_TTL)));
        }
        if !policy.allows_name(&name) {
            audit.record(event(Verdict::Deny, "name not allowed").name(&name));
            return asked.reply(RCODE::NameError, None);
        }
        if asked.is(TYPE::AAAA) {
            return asked.reply(RCODE::NoError, None);
        }
        let reason = match policy.mode {
            Mode::Open => "open mode",
            _ => "allowlisted",
        };
        audit.record(event(Verdict::Allow, reason).name(&name));
        self.forward(now, from, asked, name)
    }

    /// Sends `asked` to the first resolver; SERVFAIL when it cannot.
    fn forward(
        &mut self,
        now: Instant,
        guest: Client,
        asked: Asked<'_>,
        name: String,
    ) -> Option<Vec<u8>> {
        let servfail = |asked: &Asked| asked.reply(RCODE::ServerFailure, None);
        let Some(&resolver) = self.resolvers.first() else {
            return servfail(&asked);
        };
        if self.pending.len() >= MAX_PENDING {
            debug!("dns: {MAX_PENDING} queries already upstream, SERVFAIL for {name}");
            self.busy += 1;
            return servfail(&asked);
        }
        let Some(id) = self.fresh_id() else {
            return servfail(&asked);
        };
        let query = asked.upstream_query(id)?;
        if let Err(e) = self.socket.send_to(&query, resolver) {
            debug!("dns: cannot send a query to {resolver}: {e}");
            return servfail(&asked);
        }
        self.pending.insert(
            id,
            Pending {
                guest,
                asked: asked.into_owned(),
                name,
                deadline: now + UPSTREAM_TIMEOUT,
                over_tcp: false,
            },
        );
        None
    }

    /// A transaction id no pending query uses.
    fn fresh_id(&mut self) -> Option<u16> {
        (0..ID_TRIES).find_map(|_| {
            self.id_counter = self.id_counter.wrapping_add(1);
            // Truncation intended: any 16 bits of the hash will do.
            let id = self.id_keys.hash_one(self.id_counter) as u16;
            (!self.pending.contains_key(&id)).then_some(id)
        })
    }

    /// Reads what upstream answered: (guest endpoint, reply payload) pairs.
    pub fn upstream_ready(&mut self, now: Instant) -> Vec<(Client, Vec<u8>)> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut replies = Vec::new();
        for _ in 0..MAX_READS {
            let (len, from) = match self.socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("dns: upstream socket: {e}");
                    continue;
                }
            };
            if self.resolvers.first() != Some(&from) {
                debug!("dns: dropped a datagram from {from}, not the resolver");
                continue;
            }
            if let Some(reply) = buf.get(..len).and_then(|d| self.relay(now, d, false)) {
                replies.push(reply);
            }
        }
        self.buf = buf;
        replies.extend(self.upstream_tcp_ready(now));
        replies
    }

    /// Moves the queries asked over TCP along; the answers (or SERVFAIL
    /// for a connection that failed) that are complete.
    fn upstream_tcp_ready(&mut self, now: Instant) -> Vec<(Client, Vec<u8>)> {
        let mut done = Vec::new();
        for (&id, conn) in &mut self.upstream_tcp {
            match conn.advance() {
                Progress::Waiting => {}
                progress => done.push((id, progress)),
            }
        }
        let mut replies = Vec::new();
        for (id, progress) in done {
            if let Some(conn) = self.upstream_tcp.remove(&id) {
                conn.close(&self.registry);
            }
            let reply = match progress {
                Progress::Answer(answer) => self.relay(now, &answer, true),
                _ => {
                    debug!("dns: the resolver's TCP connection failed");
                    let p = self.pending.remove(&id);
                    p.and_then(|p| Some((p.guest, p.asked.reply(RCODE::ServerFailure, None)?)))
                }
            };
            replies.extend(reply);
        }
        replies
    }

    /// Asks the resolver again over TCP for pending query `id` (its
    /// datagram answer was truncated); false when it cannot.
    fn ask_over_tcp(&mut self, id: u16, now: Instant) -> bool {
        let (Some(&resolver), Some(pending)) = (self.resolvers.first(), self.pending.get_mut(&id))
        else {
            return false;
        };
        if self.upstream_tcp.len() >= MAX_UPSTREAM_TCP {
            return false;
        }
        let Some(query) = pending.asked.upstream_query(id) else {
            return false;
        };
        match UpstreamTcp::start(resolver, &query, &self.registry, self.token) {
            Ok(conn) => {
                self.upstream_tcp.insert(id, conn);
                pending.over_tcp = true;
                pending.deadline = now + UPSTREAM_TIMEOUT;
                true
            }
            Err(e) => {
                debug!("dns: cannot ask {resolver} over TCP: {e}");
                false
            }
        }
    }

    /// The guest's copy of upstream `response` (a datagram, or the answer
    /// on a TCP connection when `via_tcp`), if it answers a pending query;
    /// records its addresses on the way. A truncated datagram answer for
    /// a guest on TCP is asked again over TCP instead.
    fn relay(&mut self, now: Instant, response: &[u8], via_tcp: bool) -> Option<(Client, Vec<u8>)> {
        let parsed = Packet::parse(response).ok()?;
        let id = parsed.id();
        let pending = self.pending.get(&id)?;
        if pending.over_tcp != via_tcp {
            return None;
        }
        if !pending.asked.answered_by(&parsed) {
            debug!("dns: dropped an answer to another question");
            return None;
        }
        let retry = !via_tcp
            && parsed.has_flags(PacketFlag::TRUNCATION)
            && matches!(pending.guest, Client::Tcp(_));
        if retry && self.ask_over_tcp(id, now) {
            return None;
        }
        let pending = self.pending.remove(&id)?;
        if parsed.rcode() == RCODE::NoError {
            for record in parsed.answers.iter().filter(|r| r.class == CLASS::IN) {
                if let RData::A(a) = &record.rdata {
                    let ttl = record.ttl.clamp(MIN_TABLE_TTL, MAX_TABLE_TTL);
                    let expires = now + Duration::from_secs(ttl.into());
                    let ip = Ipv4Addr::from(a.address);
                    self.handed_out
                        .record(now, ip, &pending.name, expires, false);
                }
            }
        }
        let reply = message::with_id(response, pending.asked.id);
        Some((pending.guest, reply))
    }

    /// Queries upstream never answered in time, answered SERVFAIL now.
    pub fn expire(&mut self, now: Instant) -> Vec<(Client, Vec<u8>)> {
        self.handed_out.prune(now);
        let (pending, registry) = (&self.pending, &self.registry);
        self.upstream_tcp
            .extract_if(|id, _| pending.get(id).is_none_or(|p| p.deadline <= now))
            .for_each(|(_, conn)| conn.close(registry));
        self.pending
            .extract_if(|_, p| p.deadline <= now)
            .filter_map(|(_, p)| Some((p.guest, p.asked.reply(RCODE::ServerFailure, None)?)))
            .collect()
    }

    /// Queries `client` has waiting for upstream.
    pub fn pending_for(&self, client: Client) -> usize {
        self.pending.values().filter(|p| p.guest == client).count()
    }

    /// Queries of a TCP connection that went away: their answers have
    /// nowhere to go.
    pub fn forget_client(&mut self, client: Client) {
        self.pending.retain(|_, p| p.guest != client);
        let (pending, registry) = (&self.pending, &self.registry);
        self.upstream_tcp
            .extract_if(|id, _| !pending.contains_key(id))
            .for_each(|(_, conn)| conn.close(registry));
    }

    /// When [`DnsServer::expire`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// The allowed name the server handed `ip` out for (unexpired), if any.
    pub fn name_for(&self, ip: Ipv4Addr, now: Instant) -> Option<&str> {
        self.handed_out.name_for(ip, now)
    }

    /// Whether the server handed `ip` out for `name` (normalized) and the
    /// answer has not expired.
    pub fn handed_out_for(&self, ip: Ipv4Addr, name: &str, now: Instant) -> bool {
        self.handed_out.was_handed_out(ip, name, now)
    }

    /// Drops handed-out addresses whose names `policy` no longer allows
    /// (a pinned name keeps only its pinned address).
    pub fn retain_allowed(&mut self, policy: &Policy) {
        self.handed_out.retain_allowed(policy);
    }
}

/// The `nameserver` lines of a resolv.conf, as port-53 socket addresses
/// (addresses with a zone id, `fe80::1%eth0`, are skipped).
pub fn resolvers_from(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}
