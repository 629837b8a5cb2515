//! [`NetStack`]: takes the guest's frames, decides what each one is, and
//! runs the poll loop that moves data between smoltcp and host sockets.
//!
//! What each frame is and where it goes is [`classify`]'s business; what
//! the policy says about a destination is [`crate::judge`]'s.
//!
//! smoltcp runs with "any IP": its sockets answer for whatever remote
//! address the guest connected to, so the guest sees the real peer
//! address on every connection.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use smoltcp::iface::{Config, Interface};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, HardwareAddress, IpCidr, Ipv4Packet, TcpPacket,
};
use tracing::{debug, warn};

use crate::addr::{self, DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, PREFIX_LEN};
use crate::budget::{Budget, Charge};
use crate::caps::Cap;
use crate::dns::tcp::DnsTcp;
use crate::dns::{resolvers_from, Client, DnsServer};
use crate::forward::Forwards;
use crate::intercept::{InterceptConfig, InterceptError, Interceptor};
use crate::judge::{judge, judge_named, judge_peeked, Decision};
use crate::peek::Peeked;
use crate::phy::{Phy, QueueCaps};
use crate::tcp::{Connected, FlowKey, HeldFlow, Refused, StartError, TcpFlows};
use crate::udp::UdpFlows;
use crate::{frames, Audit, AuditEvent, Mode, Policy, Proto, Verdict};

mod classify;
mod intercept;

/// The IP MTU when the configuration names none: the largest that keeps
/// a frame plus virtio header under 64 KiB.
pub const DEFAULT_MTU: usize = 65520;
/// Rounds of "move data, let smoltcp send" per poll, at most.
const ROUNDS: usize = 64;

const WAKER: Token = Token(0);
const DNS_UPSTREAM: Token = Token(1);
const FIRST_TOKEN: usize = 2;

/// Errors starting a stack.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The epoll instance or a host socket could not be created.
    #[error("Cannot set up the network stack's host side")]
    Host(#[source] io::Error),
    /// The DNS server's upstream socket could not be opened.
    #[error("Cannot start the DNS server")]
    Dns(#[source] crate::dns::DnsError),
    /// The interception configuration (secrets, CA, upstream CAs) is
    /// unusable.
    #[error("Cannot set up secret substitution")]
    Intercept(#[source] InterceptError),
}

/// How a stack starts.
#[derive(Debug, Clone, Default)]
pub struct StackConfig {
    /// The egress policy.
    pub policy: Policy,
    /// Where decisions are recorded.
    pub audit: Audit,
    /// Upstream DNS resolvers; empty: the host's (from /etc/resolv.conf).
    pub resolvers: Vec<SocketAddr>,
    /// The largest IP packet either side sends (the MTU the device tells
    /// the guest); 0: [`DEFAULT_MTU`].
    pub mtu: usize,
    /// The most memory the stack's queues and flows take, bytes; 0:
    /// [`crate::DEFAULT_BUDGET`]. Flows that do not fit are refused.
    pub memory_budget: usize,
    /// Secrets substituted on the way to their hosts, and the CA the
    /// stack intercepts those hosts' TLS with ([`crate::intercept`]).
    /// `None`: no flow is ever intercepted.
    pub intercept: Option<InterceptConfig>,
}

/// Counters of a stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Frames taken from the guest.
    pub frames_in: u64,
    /// Frames handed to the guest.
    pub frames_out: u64,
    /// Frames dropped (malformed, spoofed, unsupported, mode off).
    pub dropped: u64,
    /// Open TCP connections.
    pub tcp_flows: usize,
    /// Open UDP flows.
    pub udp_flows: usize,
    /// Bytes charged to the memory budget now.
    pub memory_used: usize,
    /// The most bytes ever charged to the memory budget at once.
    pub memory_peak: usize,
    /// The memory budget, bytes.
    pub memory_limit: usize,
    /// TCP connections (the guest's or forwarded) refused because
    /// [`crate::MAX_TCP_FLOWS`] were open.
    pub tcp_refused_cap: u64,
    /// TCP connections (the guest's or forwarded) refused because the
    /// memory budget had no room.
    pub tcp_refused_memory: u64,
    /// UDP flows dropped to make room for new ones.
    pub udp_evicted: u64,
    /// DNS queries answered SERVFAIL because too many were upstream.
    pub dns_busy: u64,
}

/// What a [`NetHandle`] shares with its stack.
struct Shared {
    policy: Mutex<Policy>,
    generation: AtomicU64,
    waker: Waker,
    /// The counters as of the stack's last poll.
    stats: Mutex<StackStats>,
}

/// Replaces the policy of a running stack from another thread.
#[derive(Clone)]
pub struct NetHandle {
    shared: Arc<Shared>,
}

impl NetHandle {
    /// The policy in force.
    pub fn policy(&self) -> Policy {
        match self.shared.policy.lock() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The stack's counters as of its last poll.
    pub fn stats(&self) -> StackStats {
        match self.shared.stats.lock() {
            Ok(s) => *s,
            Err(s) => *s.into_inner(),
        }
    }

    /// Replaces the policy; the stack applies it at its next poll (woken
    /// through its fd) or frame, whichever comes first, closing flows the
    /// new policy denies and keeping the rest.
    pub fn set_policy(&self, policy: Policy) {
        match self.shared.policy.lock() {
            Ok(mut p) => *p = policy,
            Err(p) => *p.into_inner() = policy,
        }
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.shared.waker.wake() {
            warn!("net: cannot wake the stack for a new policy: {e}");
        }
    }
}

/// The user-mode network stack of one VM.
pub struct NetStack {
    poll: Poll,
    events: Events,
    shared: Arc<Shared>,
    policy: Policy,
    generation: u64,
    audit: Audit,
    host_addrs: addr::HostAddrs,
    iface: Interface,
    budget: Budget,
    /// The queues' byte bounds in the budget.
    _queues: Charge,
    phy: Phy,
    dns: DnsServer,
    dns_tcp: DnsTcp,
    tcp: TcpFlows,
    udp: UdpFlows,
    forwards: Forwards,
    /// TLS interception of flows to hosts a secret is bound to.
    intercept: Option<Interceptor>,
    next_token: usize,
    /// Host sockets left with work by a burst bound (edge-triggered epoll
    /// does not report them again).
    again: Vec<Token>,
    guest_mac: EthernetAddress,
    stats: StackStats,
    flow_cap: Cap,
    memory_cap: Cap,
    udp_cap: Cap,
    dns_cap: Cap,
}

impl NetStack {
    /// Starts a stack (no frames flow until the guest sends some).
    pub fn new(config: StackConfig) -> Result<Self, NetError> {
        let poll = Poll::new().map_err(NetError::Host)?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(NetError::Host)?;
        let resolvers = if config.resolvers.is_empty() {
            resolvers_from(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            config.resolvers
        };
        let dns =
            DnsServer::new(resolvers, poll.registry(), DNS_UPSTREAM).map_err(NetError::Dns)?;
        let mtu = if config.mtu == 0 {
            DEFAULT_MTU
        } else {
            config.mtu
        };
        let budget = Budget::new(config.memory_budget);
        let caps = QueueCaps::of_budget(budget.limit());
        let queues = budget
            .charge(caps.worst_case())
            .ok_or_else(|| NetError::Host(io::Error::other("the memory budget is too small")))?;
        let mut phy = Phy::new(mtu, caps);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(GATEWAY_MAC));
        iface_config.random_seed = RandomState::new().build_hasher().finish();
        let mut iface = Interface::new(iface_config, &mut phy, SmolInstant::now());
        iface.update_ip_addrs(|addrs| {
            for ip in [GATEWAY_IP, DNS_IP] {
                // Room for two addresses is smoltcp's default.
                let _ = addrs.push(IpCidr::new(ip.into(), PREFIX_LEN));
            }
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .map_err(|e| NetError::Host(io::Error::other(format!("{e:?}"))))?;
        iface.set_any_ip(true);
        let intercept = config
            .intercept
            .as_ref()
            .map(Interceptor::new)
            .transpose()
            .map_err(NetError::Intercept)?;
        let mut stack = NetStack {
            poll,
            events: Events::with_capacity(256),
            shared: Arc::new(Shared {
                policy: Mutex::new(config.policy.clone()),
                generation: AtomicU64::new(0),
                waker,
                stats: Mutex::new(StackStats::default()),
            }),
            policy: config.policy,
            generation: 0,
            audit: config.audit,
            host_addrs: addr::HostAddrs::read(Instant::now()),
            iface,
            tcp: TcpFlows::new(budget.clone()),
            budget,
            _queues: queues,
            phy,
            dns,
            dns_tcp: DnsTcp::default(),
            udp: UdpFlows::default(),
            forwards: Forwards::default(),
            intercept,
            next_token: FIRST_TOKEN,
            again: Vec::new(),
            guest_mac: EthernetAddress::BROADCAST,
            stats: StackStats::default(),
            flow_cap: Cap::new(
                "4096 TCP connections open; new ones (the guest's and forwarded ones) are reset",
            ),
            memory_cap: Cap::new("network memory budget exhausted; new TCP connections are reset"),
            udp_cap: Cap::new("256 UDP flows open; the least recently used ones are dropped"),
            dns_cap: Cap::new("256 DNS queries upstream; new ones are answered SERVFAIL"),
        };
        stack.sync_forwards();
        stack.publish_stats();
        Ok(stack)
    }

    /// A handle to replace the policy from another thread.
    pub fn handle(&self) -> NetHandle {
        NetHandle {
            shared: self.shared.clone(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Counters.
    pub fn stats(&self) -> StackStats {
        StackStats {
            tcp_flows: self.tcp.len(),
            udp_flows: self.udp.len(),
            memory_used: self.budget.used(),
            memory_peak: self.budget.peak(),
            memory_limit: self.budget.limit(),
            tcp_refused_cap: self.flow_cap.hits(),
            tcp_refused_memory: self.memory_cap.hits(),
            udp_evicted: self.udp.evicted(),
            dns_busy: self.dns.busy(),
            ..self.stats
        }
    }

    /// The next frame for the guest, if any. Call [`NetStack::poll`]
    /// after taking frames: room in the queue lets smoltcp send more.
    pub fn pop_frame(&mut self) -> Option<Vec<u8>> {
        let frame = self.phy.pop()?;
        self.stats.frames_out += 1;
        Some(frame)
    }

    /// Hands back a frame [`NetStack::pop_frame`] gave, once its bytes
    /// went to the guest: its buffer is reused for a later frame (optional;
    /// a frame not handed back is simply freed).
    pub fn recycle(&mut self, frame: Vec<u8>) {
        self.phy.recycle(frame);
    }

    /// How often smoltcp ran for the socket of the guest's connection from
    /// `guest_port` to `remote` (0 when there is none): an idle connection's
    /// count stays put while others move data.
    pub fn tcp_socket_polls(&self, guest_port: u16, remote: SocketAddrV4) -> u64 {
        self.tcp.socket_polls(&FlowKey { guest_port, remote })
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        self.phy.has_frames()
    }

    /// Takes one Ethernet frame (no virtio header) the guest sent.
    pub fn push_frame(&mut self, frame: &[u8]) {
        // A policy a handle set since the last poll decides this frame
        // already: a name denied a moment ago must not go upstream.
        let now = Instant::now();
        self.host_addrs.refresh(now);
        self.apply_new_policy(now);
        self.stats.frames_in += 1;
        if !self.classify(frame) {
            self.stats.dropped += 1;
        }
    }

    /// How long until [`NetStack::poll`] must run again even if neither
    /// the fd nor a frame says so (`None`: not before then).
    pub fn poll_delay(&mut self) -> Option<Duration> {
        if !self.again.is_empty() || self.phy.rx_waiting() || self.tcp.has_work() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let own = [
            self.dns.next_deadline(),
            self.dns_tcp.next_deadline(),
            self.tcp.next_deadline(),
            self.udp.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now));
        let smol = self
            .tcp
            .sockets()
            .poll_delay(SmolInstant::now())
            .map(Duration::from);
        match (own, smol) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Does the pending work: a new policy, host socket events, frames
    /// the guest sent, timers.
    pub fn poll(&mut self) {
        let now = Instant::now();
        self.host_addrs.refresh(now);
        self.apply_new_policy(now);
        self.host_events(now);
        for _ in 0..ROUNDS {
            let mut progress = self.finish_connects(now);
            progress |= self.judge_first_messages(now);
            progress |= self.tcp.splice();
            self.record_intercepted();
            progress |= self.dns_tcp.serve(
                self.tcp.sockets(),
                &mut self.dns,
                &self.policy,
                &self.audit,
                now,
            );
            let smol = self.tcp.poll_sockets(&mut self.iface, &mut self.phy);
            progress |= smol != smoltcp::iface::PollResult::None;
            progress |= self.tcp.reap(self.poll.registry()) > 0;
            if !progress {
                break;
            }
        }
        for client in self.dns_tcp.reap(self.tcp.sockets(), &self.dns, now) {
            self.dns.forget_client(client);
        }
        for (client, reply) in self.dns.expire(now) {
            self.dns_answer(client, &reply, now);
        }
        self.udp.expire(now, self.poll.registry());
        self.publish_stats();
    }

    /// Hands the counters to the [`NetHandle`]s.
    fn publish_stats(&self) {
        let stats = self.stats();
        match self.shared.stats.lock() {
            Ok(mut s) => *s = stats,
            Err(s) => *s.into_inner() = stats,
        }
    }

    fn token(&mut self) -> Token {
        take_token(&mut self.next_token)
    }

    /// Hands connected flows their parked SYN (one at a time, so each
    /// lands in its own listening socket), resets failed ones.
    fn finish_connects(&mut self, now: Instant) -> bool {
        let done = self.tcp.finished_connects(now);
        let progress = !done.is_empty();
        for connected in done {
            match connected {
                Connected::Ready { key, syn } => {
                    if let Err(e) = self.tcp.listen(&key) {
                        // No room for its buffers: refused at once, as a
                        // connection over the budget is at its SYN.
                        self.tcp.remove(&key, self.poll.registry());
                        self.refuse_started(Proto::Tcp, key.remote, &e);
                        self.reset_from_syn(&syn);
                        continue;
                    }
                    let (tcp, iface) = (&mut self.tcp, &mut self.iface);
                    let (_, untaken) = self.phy.alone(syn, |phy| tcp.poll_alone(&key, iface, phy));
                    if untaken || !self.tcp.took_syn(&key) {
                        // No room to answer, or smoltcp refused the SYN:
                        // the guest retransmits and gets a fresh try.
                        self.tcp.remove(&key, self.poll.registry());
                    }
                }
                Connected::Failed { key, syn, error } => {
                    debug!("net: tcp {}: {error}", key.remote);
                    self.tcp.remove(&key, self.poll.registry());
                    self.reset_from_syn(&syn);
                }
            }
        }
        progress
    }

    /// Judges the first message of held flows that have one: lets them
    /// through, or resets them and records why.
    fn judge_first_messages(&mut self, now: Instant) -> bool {
        let decided = self.tcp.peeked(now);
        let progress = !decided.is_empty();
        for held in decided {
            let HeldFlow {
                key,
                protocol,
                opened_for,
                peeked,
                judges,
            } = held;
            let ip = *key.remote.ip();
            let dns = &self.dns;
            // Interception needs the ClientHello to name the host itself.
            let named = matches!(peeked, Peeked::Name(Some(_)));
            let decision = judge_peeked(
                &self.policy,
                ip,
                protocol,
                opened_for.as_deref(),
                peeked,
                |name| dns.handed_out_for(ip, name, now),
            );
            if !judges {
                // Held only for interception: it passes either way, as the
                // name it was opened for; intercepted only if its server
                // name was handed out for (or pinned to) its address.
                let sni = (decision.allow && named).then_some(decision.name).flatten();
                if self.start_interception(&key, protocol, sni.as_deref()) {
                    self.tcp.release(&key, opened_for);
                }
                continue;
            }
            if decision.allow {
                let sni = decision.name.as_deref().filter(|_| named);
                if !self.start_interception(&key, protocol, sni) {
                    continue;
                }
                self.tcp.release(&key, decision.name);
            } else {
                debug!(
                    "net: tcp {}: first message refused: {}",
                    key.remote, decision.reason
                );
                self.tcp.refuse(&key);
                self.record(Proto::Tcp, &decision, key.remote);
            }
        }
        progress
    }

    fn reset_from_syn(&mut self, syn: &[u8]) {
        let parsed = EthernetFrame::new_checked(syn).ok().and_then(|eth| {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            let len = ip
                .payload()
                .len()
                .saturating_sub(usize::from(tcp.header_len()))
                + 1;
            Some((
                SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
                SocketAddrV4::new(ip.dst_addr(), tcp.dst_port()),
                tcp.seq_number(),
                len,
            ))
        });
        if let Some((guest, remote, seq, len)) = parsed {
            self.phy
                .send(frames::tcp_reset(self.guest_mac, guest, remote, seq, len));
        }
    }

    /// Judges a guest flow to `ip:port` under the current policy.
    fn decide(&self, ip: Ipv4Addr, port: u16, now: Instant) -> Decision {
        judge(
            &self.policy,
            &self.dns,
            self.host_addrs.get(),
            ip,
            port,
            now,
        )
    }

    /// Counts (and records) a flow a cap or the host refused to start.
    fn refuse_started(&mut self, proto: Proto, dst: SocketAddrV4, error: &StartError) {
        let reason = match error {
            StartError::TooMany => {
                self.flow_cap.hit();
                "too many connections"
            }
            StartError::Memory => {
                self.memory_cap.hit();
                "network memory budget exhausted"
            }
            StartError::Host(e) => {
                debug!("net: {proto:?} {dst}: {e}");
                "cannot start the connection"
            }
        };
        let refused = Decision {
            allow: false,
            name: None,
            reason,
        };
        self.record(proto, &refused, dst);
    }

    /// A flow started: the caps had room.
    fn started(&mut self) {
        self.flow_cap.fits();
        self.memory_cap.fits();
    }

    fn record(&self, proto: Proto, decision: &Decision, dst: SocketAddrV4) {
        let verdict = if decision.allow {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let mut event =
            AuditEvent::now(proto, verdict, decision.reason).dest(*dst.ip(), dst.port());
        event.name = decision.name.clone();
        self.audit.record(event);
    }

    /// Sends a DNS answer to the client that asked.
    fn dns_answer(&mut self, client: Client, reply: &[u8], now: Instant) {
        match client {
            Client::Udp(guest) => self.send_udp(SocketAddrV4::new(DNS_IP, 53), guest, reply),
            Client::Tcp(id) => self.dns_tcp.answer(id, reply, self.tcp.sockets(), now),
        }
    }

    fn send_udp(&mut self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        match frames::udp(self.guest_mac, from, to, payload) {
            Some(frame) => {
                if !self.phy.send(frame) {
                    debug!("net: guest queue full, datagram from {from} dropped");
                }
            }
            None => debug!("net: datagram from {from} too large for one packet"),
        }
    }

    fn host_events(&mut self, now: Instant) {
        let mut ready: Vec<(Token, bool, bool)> = std::mem::take(&mut self.again)
            .into_iter()
            .map(|t| (t, true, false))
            .collect();
        match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            Ok(()) => ready.extend(self.events.iter().map(|e| {
                let readable = e.is_readable() || e.is_read_closed() || e.is_error();
                let writable = e.is_writable() || e.is_write_closed() || e.is_error();
                (e.token(), readable, writable)
            })),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => warn!("net: epoll failed: {e}"),
        }
        for (token, readable, writable) in ready {
            match token {
                WAKER => {}
                DNS_UPSTREAM => {
                    for (client, reply) in self.dns.upstream_ready(now) {
                        self.dns_answer(client, &reply, now);
                    }
                }
                t if self.tcp.key_of(t).is_some() => self.tcp.on_event(t, readable, writable),
                t if self.forwards.owns(t) => self.accept_forwards(t),
                t => {
                    let mut more = false;
                    for (key, datagram) in self.udp.receive(t, now, &mut more) {
                        let guest = SocketAddrV4::new(GUEST_IP, key.guest_port);
                        self.send_udp(key.remote, guest, &datagram);
                    }
                    if more {
                        self.again.push(t);
                    }
                }
            }
        }
    }

    fn accept_forwards(&mut self, listener: Token) {
        let mut more = false;
        for (stream, guest_port) in self.forwards.accept(listener, &mut more) {
            let token = self.token();
            let dst = SocketAddrV4::new(GUEST_IP, guest_port);
            // A refused connection's host end is closed here, so a local
            // process opening connections in a loop holds no fds of ours.
            let started = self.tcp.forward(
                stream,
                guest_port,
                &mut self.iface,
                self.poll.registry(),
                token,
            );
            match started {
                Ok(()) => {
                    self.started();
                    let decision = Decision {
                        allow: true,
                        name: None,
                        reason: "port forward",
                    };
                    self.record(Proto::Forward, &decision, dst);
                }
                Err(e) => self.refuse_started(Proto::Forward, dst, &e),
            }
        }
        if more {
            self.again.push(listener);
        }
    }

    fn sync_forwards(&mut self) {
        let wanted = if self.policy.mode == Mode::Off {
            Vec::new()
        } else {
            self.policy.forwards.clone()
        };
        let (registry, next) = (self.poll.registry(), &mut self.next_token);
        let failed = self.forwards.sync(&wanted, registry, || take_token(next));
        for (forward, e) in failed {
            warn!(
                "net: cannot listen on {} for the forward to guest port {}: {e}",
                forward.host, forward.guest_port
            );
        }
    }

    /// Takes a policy a [`NetHandle`] set: forwards follow it, flows it
    /// denies are reset, the rest carry on untouched.
    fn apply_new_policy(&mut self, now: Instant) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        self.policy = match self.shared.policy.lock() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        };
        self.dns.retain_allowed(&self.policy);
        self.sync_forwards();
        let forwarded: Vec<u16> = self
            .forwards
            .active()
            .iter()
            .map(|f| f.guest_port)
            .collect();
        let (policy, dns, hosts) = (&self.policy, &self.dns, self.host_addrs.get());
        // A flow stays if the new policy allows it by the name it was
        // opened for (its DNS answer may have expired since: a long
        // download must survive an unrelated change) or by what the DNS
        // server handed its address out for now.
        let allowed = |key: &FlowKey, opened_for: Option<&str>| {
            let (ip, port) = (*key.remote.ip(), key.remote.port());
            judge_named(policy, hosts, ip, port, opened_for.map(str::to_owned)).allow
                || judge(policy, dns, hosts, ip, port, now).allow
        };
        let tcp = self.tcp.retain(self.poll.registry(), allowed, |key| {
            forwarded.contains(&key.guest_port)
        });
        let mut udp = Vec::new();
        self.udp.retain(self.poll.registry(), |key, name| {
            let ok = allowed(key, name);
            if !ok {
                udp.push(*key);
            }
            ok
        });
        for Refused { key, forward, syn } in tcp {
            if let Some(syn) = syn {
                // Still connecting: refused at once rather than when the
                // guest retransmits its SYN.
                self.reset_from_syn(&syn);
            }
            if forward {
                // Recorded as its start was: the guest port it reached.
                let removed = Decision {
                    allow: false,
                    name: None,
                    reason: "port forward removed",
                };
                let guest = SocketAddrV4::new(GUEST_IP, key.guest_port);
                self.record(Proto::Forward, &removed, guest);
            } else {
                let decision = self.decide(*key.remote.ip(), key.remote.port(), now);
                self.record(Proto::Tcp, &decision, key.remote);
            }
        }
        for key in udp {
            let decision = self.decide(*key.remote.ip(), key.remote.port(), now);
            self.record(Proto::Udp, &decision, key.remote);
        }
    }
}

/// The next epoll token for a host socket (wrapping past the fixed ones).
fn take_token(next: &mut usize) -> Token {
    let t = Token(*next);
    *next = next.wrapping_add(1).max(FIRST_TOKEN);
    t
}

impl AsRawFd for NetStack {
    /// Readable when host sockets have news (an epoll fd).
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}
