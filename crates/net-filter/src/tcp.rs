//! Guest TCP connections, terminated in smoltcp and spliced to host
//! sockets.
//!
//! A guest SYN that the policy allows starts a non-blocking connect on the
//! host and is parked; the guest's retransmissions of it are dropped. Only
//! when the host connect succeeds does a smoltcp socket listen on the
//! SYN's destination and take the parked SYN, so the guest sees the
//! handshake complete exactly when the remote accepted — and a RST at once
//! when it refused. Data then moves between the smoltcp socket's buffers
//! and the host socket as each side has room: a full buffer on one side
//! stops reading on the other (back-pressure both ways, bounded memory).
//! A FIN from either side half-closes the other.
//!
//! Host→guest port forwards use the same flows, started from the other
//! end: an accepted host connection and a smoltcp socket connecting to the
//! guest. They count against the same cap and budget as the guest's own.
//!
//! Every flow is charged to the stack's [`Budget`]: its bookkeeping and
//! parked SYN from the start, its buffers (smoltcp's and the host
//! socket's, sized together by [`BufferSize`]) once the host end is
//! connected. A flow that does not fit is refused, never left hanging.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use smoltcp::iface::{Interface, PollResult};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::IpListenEndpoint;
use tracing::debug;

use crate::addr::{GATEWAY_IP, GUEST_IP};
use crate::budget::{Budget, Charge};
use crate::buffers::{AddError, BufferSize, SockId, TcpSockets};
use crate::intercept::flow::FLOW_MEMORY;
use crate::intercept::InterceptFlow;
use crate::intercepted::{Intercepted, Report};
use crate::peek::{Gate, Peeked, Protocol};
use crate::phy::Phy;

/// Connections (TCP, connecting ones and forwarded ones included) at most.
pub const MAX_FLOWS: usize = 4096;
/// What a flow costs besides its buffers: its entry here, its smoltcp
/// socket, the maps that find it — doubled for the maps' spare room.
const FLOW_OVERHEAD: usize =
    2 * (size_of::<Flow>() + size_of::<tcp::Socket<'static>>() + 4 * size_of::<FlowKey>() + 64);
/// How long a host connect may take before the guest gets a RST.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long smoltcp waits for a guest that stopped acknowledging.
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// First local port of forwarded connections (10.0.2.2:port → guest).
const FORWARD_PORTS: u16 = 49152;

/// A connection as the guest sees it: its port and the remote end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The guest's port.
    pub guest_port: u16,
    /// The other end (a real address, or 10.0.2.2 for forwards).
    pub remote: SocketAddrV4,
}

enum State {
    /// Waiting for the host connect; the guest's SYN is parked (its bytes
    /// are part of the flow's charge).
    Connecting { syn: Vec<u8>, since: Instant },
    /// Host connected, SYN handed to the smoltcp socket.
    Open { socket: SockId },
}

/// One connection.
struct Flow {
    /// The flow's bookkeeping and parked SYN in the budget (its buffers
    /// are charged with them, in [`TcpSockets`]).
    charge: Charge,
    host: TcpStream,
    token: Token,
    state: State,
    /// A forward's flow (kept while the forward exists).
    forward: bool,
    /// The name the policy allowed the flow for (a new policy judges the
    /// flow by it: the DNS answer the guest connected by may have expired
    /// since).
    name: Option<String>,
    host_readable: bool,
    host_writable: bool,
    /// The host closed its side; the smoltcp socket was closed.
    host_eof: bool,
    /// The guest closed its side; the host socket was shut for writing.
    guest_eof: bool,
    /// Holds the guest's bytes (and the host's) until the name its first
    /// message asks for is judged ([`crate::peek`]).
    gate: Option<Gate>,
    /// Taken over by TLS interception: pumped through it, never spliced.
    intercept: Option<Box<Intercepted>>,
}

/// What to do with a connect that finished.
pub enum Connected {
    /// The host end is connected: hand `syn` to a socket listening on the
    /// flow's remote end.
    Ready {
        /// The flow.
        key: FlowKey,
        /// The parked SYN frame.
        syn: Vec<u8>,
    },
    /// The connect failed or timed out: answer the SYN with a RST.
    Failed {
        /// The flow.
        key: FlowKey,
        /// The parked SYN frame.
        syn: Vec<u8>,
        /// Why.
        error: io::Error,
    },
}

/// A held flow whose first message is in ([`TcpFlows::peeked`]).
pub struct HeldFlow {
    /// The flow.
    pub key: FlowKey,
    /// Its gate's protocol.
    pub protocol: Protocol,
    /// The name it was allowed for.
    pub opened_for: Option<String>,
    /// What its first message says.
    pub peeked: Peeked,
    /// Whether the message decides if it passes ([`Gate::judges`]).
    pub judges: bool,
}

/// A flow a new policy refused.
pub struct Refused {
    /// The flow.
    pub key: FlowKey,
    /// A forward's flow.
    pub forward: bool,
    /// The parked SYN of a flow that was still connecting (already
    /// dropped): the guest's RST is made from it.
    pub syn: Option<Vec<u8>>,
}

/// Why a flow was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// [`MAX_FLOWS`] connections are open.
    #[error("too many connections")]
    TooMany,
    /// The memory budget has no room for another flow.
    #[error("network memory budget exhausted")]
    Memory,
    /// The host end could not be set up.
    #[error("host socket: {0}")]
    Host(#[source] io::Error),
}

impl StartError {
    /// Whether a cap (rather than the host) refused the flow.
    pub fn is_cap(&self) -> bool {
        !matches!(self, StartError::Host(_))
    }
}

/// Every TCP connection of a stack.
///
/// Only flows with something to do are visited in a poll: those a host
/// socket event, a guest frame or a state change of their smoltcp socket
/// marked ("dirty"), and the few that are watched each poll (connecting,
/// held for their first message, intercepted). An idle connection costs
/// nothing per poll.
pub struct TcpFlows {
    flows: HashMap<FlowKey, Flow>,
    by_token: HashMap<Token, FlowKey>,
    by_socket: HashMap<SockId, FlowKey>,
    /// Flows to visit at the next splice.
    dirty: HashSet<FlowKey>,
    /// Flows the last splice visited (reaped if their socket closed).
    visited: Vec<FlowKey>,
    /// Flows visited every poll: connecting, held, or intercepted.
    watched: HashSet<FlowKey>,
    sockets: TcpSockets,
    budget: Budget,
    next_port: u16,
    /// What intercepted flows did since the last [`TcpFlows::take_reports`].
    reports: Vec<Report>,
}

impl TcpFlows {
    /// No connections yet; each one is charged to `budget`.
    pub fn new(budget: Budget) -> Self {
        TcpFlows {
            flows: HashMap::new(),
            by_token: HashMap::new(),
            by_socket: HashMap::new(),
            dirty: HashSet::new(),
            visited: Vec::new(),
            watched: HashSet::new(),
            sockets: TcpSockets::default(),
            budget,
            next_port: 0,
            reports: Vec::new(),
        }
    }

    /// The smoltcp sockets of the open flows.
    pub fn sockets(&mut self) -> &mut TcpSockets {
        &mut self.sockets
    }

    /// Charges a new flow's bookkeeping and `parked` bytes, if the flow
    /// cap and the budget let it start.
    fn admit(&self, parked: usize) -> Result<Charge, StartError> {
        if self.flows.len() >= MAX_FLOWS {
            return Err(StartError::TooMany);
        }
        self.budget
            .charge(FLOW_OVERHEAD + parked)
            .ok_or(StartError::Memory)
    }

    /// Buffers for a flow whose host end is `host`: the host socket's
    /// kernel buffers are sized like smoltcp's (which also keeps the
    /// kernel from growing them on its own), so the budget bounds them too.
    fn buffers_for(&self, host: &TcpStream) -> Result<BufferSize, StartError> {
        let size = BufferSize::for_new_flow(&self.budget).ok_or(StartError::Memory)?;
        let sock = socket2::SockRef::from(host);
        let option = size.host_socket_option();
        sock.set_recv_buffer_size(option)
            .and_then(|()| sock.set_send_buffer_size(option))
            .map_err(StartError::Host)?;
        Ok(size)
    }

    /// Number of connections (connecting ones included).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether `key` is a connection; `Some(true)` while it connects.
    pub fn state_of(&self, key: &FlowKey) -> Option<bool> {
        self.flows
            .get(key)
            .map(|f| matches!(f.state, State::Connecting { .. }))
    }

    /// The flow a host socket token belongs to.
    pub fn key_of(&self, token: Token) -> Option<FlowKey> {
        self.by_token.get(&token).copied()
    }

    /// Starts the host connect for a guest SYN the policy allowed (for
    /// `name`).
    pub fn connect(
        &mut self,
        key: FlowKey,
        syn: Vec<u8>,
        name: Option<String>,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) -> Result<(), StartError> {
        let charge = self.admit(syn.len())?;
        let mut host = TcpStream::connect(host_address(key.remote)).map_err(StartError::Host)?;
        // The stack writes what it has when it has it: the guest's TCP
        // already coalesced its segments, and the interceptor's own TLS
        // writes (Finished, then the request) must not wait for the
        // upstream's delayed ACK (~40 ms per new connection with Nagle).
        host.set_nodelay(true).map_err(StartError::Host)?;
        registry
            .register(&mut host, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(StartError::Host)?;
        self.insert(
            key,
            Flow {
                charge,
                host,
                token,
                state: State::Connecting { syn, since: now },
                forward: false,
                name,
                host_readable: false,
                host_writable: false,
                host_eof: false,
                guest_eof: false,
                gate: None,
                intercept: None,
            },
        );
        Ok(())
    }

    /// Holds a flow's data until its first message is judged (see
    /// [`TcpFlows::peeked`]).
    pub fn hold(&mut self, key: &FlowKey, gate: Gate) {
        if let Some(flow) = self.flows.get_mut(key) {
            flow.gate = Some(gate);
        }
        self.rewatch(key);
    }

    /// Files `key` among the watched flows if it is connecting, held or
    /// intercepted, takes it out otherwise.
    fn rewatch(&mut self, key: &FlowKey) {
        let watched = self.flows.get(key).is_some_and(|f| {
            matches!(f.state, State::Connecting { .. }) || f.gate.is_some() || f.intercept.is_some()
        });
        if watched {
            self.watched.insert(*key);
        } else {
            self.watched.remove(key);
        }
    }

    /// Has the flow of `key` visited at the next splice, its socket polled.
    fn mark(&mut self, key: &FlowKey) {
        if let Some(flow) = self.flows.get(key) {
            self.dirty.insert(*key);
            if let State::Open { socket } = flow.state {
                self.sockets.wake(socket);
            }
        }
    }

    /// Lets smoltcp process the guest's frames and send for the sockets
    /// with work; the flows whose socket it ran for are visited next.
    pub fn poll_sockets(&mut self, iface: &mut Interface, phy: &mut Phy) -> PollResult {
        let result = self.sockets.poll(iface, SmolInstant::now(), phy);
        for id in self.sockets.take_touched() {
            if let Some(key) = self.by_socket.get(&id) {
                self.dirty.insert(*key);
            }
        }
        result
    }

    /// Has smoltcp process the guest's `frame` for the flow of `key` at
    /// once (no copy); false when it cannot, and the caller queues it.
    pub fn ingest(
        &mut self,
        key: &FlowKey,
        iface: &mut Interface,
        phy: &mut Phy,
        frame: &[u8],
    ) -> bool {
        let Some(socket) = self.socket_of(key) else {
            return false;
        };
        if !self
            .sockets
            .ingest(socket, iface, SmolInstant::now(), phy, frame)
        {
            return false;
        }
        self.dirty.insert(*key);
        true
    }

    /// The smoltcp socket of an open flow (where its frames go).
    pub fn socket_of(&self, key: &FlowKey) -> Option<SockId> {
        match self.flows.get(key).map(|f| &f.state) {
            Some(State::Open { socket }) => Some(*socket),
            _ => None,
        }
    }

    /// Lets smoltcp process what `phy` holds for the flow of `key` alone
    /// (its parked SYN), in its socket.
    pub fn poll_alone(&mut self, key: &FlowKey, iface: &mut Interface, phy: &mut Phy) {
        if let Some(socket) = self.socket_of(key) {
            self.sockets
                .poll_one(socket, iface, SmolInstant::now(), phy);
            self.dirty.insert(*key);
        }
    }

    /// How often smoltcp ran for the socket of `key` (0 without one).
    pub fn socket_polls(&self, key: &FlowKey) -> u64 {
        match self.flows.get(key).map(|f| &f.state) {
            Some(State::Open { socket }) => self.sockets.polls(*socket),
            _ => 0,
        }
    }

    /// Whether flows wait for a visit (the next poll has work).
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Held flows whose first message is decided, with its protocol, what
    /// it says and the name each was allowed for; each stays held until the caller
    /// lifts its gate ([`TcpFlows::release`]) or refuses it.
    pub fn peeked(&mut self, now: Instant) -> Vec<HeldFlow> {
        let mut decided = Vec::new();
        for key in &self.watched {
            let Some(flow) = self.flows.get_mut(key) else {
                continue;
            };
            let (Some(gate), State::Open { socket, .. }) = (&mut flow.gate, &flow.state) else {
                continue;
            };
            if let Some(Some(peeked)) = self.sockets.with(*socket, |socket| gate.look(socket, now))
            {
                decided.push(HeldFlow {
                    key: *key,
                    protocol: gate.protocol(),
                    opened_for: flow.name.clone(),
                    peeked,
                    judges: gate.judges(),
                });
            }
        }
        decided
    }

    /// Resets a held flow whose first message was refused: the guest gets
    /// a RST, nothing it sent reaches the host (the gate stays shut), the
    /// flow is reaped with its socket.
    pub fn refuse(&mut self, key: &FlowKey) {
        if let Some(State::Open { socket, .. }) = self.flows.get(key).map(|f| &f.state) {
            self.sockets.with(*socket, |socket| socket.abort());
        }
        self.mark(key);
    }

    /// Lets a held flow's data move, allowed from now on for `name` (what
    /// its first message asked for).
    pub fn release(&mut self, key: &FlowKey, name: Option<String>) {
        if let Some(flow) = self.flows.get_mut(key) {
            flow.name = name;
            flow.gate = None;
        }
        self.rewatch(key);
        self.mark(key);
    }

    /// Takes a held flow over for TLS interception (before its gate is
    /// lifted): from now on its bytes go through `flow`, which intercepts
    /// it for `host`. [`StartError::Memory`] when the budget has no room
    /// for its buffers ([`crate::intercept::flow::FLOW_MEMORY`]).
    pub fn intercept(
        &mut self,
        key: &FlowKey,
        flow: InterceptFlow,
        host: String,
    ) -> Result<(), StartError> {
        let charge = self.budget.charge(FLOW_MEMORY).ok_or(StartError::Memory)?;
        if let Some(f) = self.flows.get_mut(key) {
            f.intercept = Some(Box::new(Intercepted::new(flow, host, key.remote, charge)));
        }
        self.rewatch(key);
        Ok(())
    }

    /// What intercepted flows did since the last call.
    pub fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }

    /// Starts a forwarded connection: `host` was accepted on the host,
    /// the smoltcp socket connects from 10.0.2.2 to the guest's
    /// `guest_port`. Refused (and `host` closed) when the flow cap or the
    /// budget is reached, as a guest's own connection would be.
    pub fn forward(
        &mut self,
        mut host: TcpStream,
        guest_port: u16,
        iface: &mut Interface,
        registry: &Registry,
        token: Token,
    ) -> Result<(), StartError> {
        let charge = self.admit(0)?;
        let local_port = self
            .free_forward_port(guest_port)
            .map_err(StartError::Host)?;
        let key = FlowKey {
            guest_port,
            remote: SocketAddrV4::new(GATEWAY_IP, local_port),
        };
        let size = self.buffers_for(&host)?;
        let socket = self
            .sockets
            .add(size, |socket| {
                configure(socket);
                socket.connect(
                    iface.context(),
                    (GUEST_IP, guest_port),
                    (GATEWAY_IP, local_port),
                )
            })
            .map_err(|e| match e {
                AddError::Memory(e) => StartError::Host(e),
                AddError::Configure(e) => StartError::Host(io::Error::other(format!(
                    "cannot connect to the guest: {e}"
                ))),
            })?;
        if let Err(e) = registry.register(&mut host, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.sockets.remove(socket);
            return Err(StartError::Host(e));
        }
        self.insert(
            key,
            Flow {
                charge,
                host,
                token,
                state: State::Open { socket },
                forward: true,
                name: None,
                // Whatever the host sent already is read once the guest
                // accepted.
                host_readable: true,
                host_writable: true,
                host_eof: false,
                guest_eof: false,
                gate: None,
                intercept: None,
            },
        );
        Ok(())
    }

    fn insert(&mut self, key: FlowKey, flow: Flow) {
        self.by_token.insert(flow.token, key);
        if let State::Open { socket } = flow.state {
            self.by_socket.insert(socket, key);
        }
        self.flows.insert(key, flow);
        self.rewatch(&key);
        self.mark(&key);
    }

    fn free_forward_port(&mut self, guest_port: u16) -> io::Result<u16> {
        for _ in 0..=(u16::MAX - FORWARD_PORTS) {
            self.next_port = self.next_port.max(FORWARD_PORTS).wrapping_add(1);
            if self.next_port < FORWARD_PORTS {
                self.next_port = FORWARD_PORTS;
            }
            let key = FlowKey {
                guest_port,
                remote: SocketAddrV4::new(GATEWAY_IP, self.next_port),
            };
            if !self.flows.contains_key(&key) {
                return Ok(self.next_port);
            }
        }
        Err(io::Error::other(
            "no local port left for a forwarded connection",
        ))
    }

    /// Notes what epoll said about a host socket.
    pub fn on_event(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(key) = self.by_token.get(&token).copied() else {
            return;
        };
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        flow.host_readable |= readable;
        flow.host_writable |= writable;
        self.dirty.insert(key);
    }

    /// Connects that finished (or timed out) since the last call.
    pub fn finished_connects(&mut self, now: Instant) -> Vec<Connected> {
        let mut done = Vec::new();
        for key in &self.watched {
            let Some(flow) = self.flows.get_mut(key) else {
                continue;
            };
            let since = match &flow.state {
                State::Connecting { since, .. } => *since,
                State::Open { .. } => continue,
            };
            let outcome = if flow.host_writable || flow.host_readable {
                match (flow.host.take_error(), flow.host.peer_addr()) {
                    (Ok(Some(e)), _) | (Err(e), _) => Some(Err(e)),
                    (Ok(None), Ok(_)) => Some(Ok(())),
                    (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => None,
                    (Ok(None), Err(e)) => Some(Err(e)),
                }
            } else if now.duration_since(since) > CONNECT_TIMEOUT {
                Some(Err(io::Error::from(io::ErrorKind::TimedOut)))
            } else {
                None
            };
            let Some(outcome) = outcome else {
                flow.host_readable = false;
                flow.host_writable = false;
                continue;
            };
            // The parked SYN leaves the flow: so do its bytes.
            flow.charge.shrink_to(FLOW_OVERHEAD);
            let State::Connecting { syn, .. } = std::mem::replace(
                &mut flow.state,
                State::Connecting {
                    syn: Vec::new(),
                    since,
                },
            ) else {
                continue;
            };
            done.push(match outcome {
                Ok(()) => Connected::Ready { key: *key, syn },
                Err(error) => Connected::Failed {
                    key: *key,
                    syn,
                    error,
                },
            });
        }
        done
    }

    /// Gives a connected flow its smoltcp socket, listening on the remote
    /// end so the parked SYN lands in it. [`StartError::Memory`] when the
    /// budget has no room for its buffers (the guest is then reset).
    pub fn listen(&mut self, key: &FlowKey) -> Result<(), StartError> {
        let Some(flow) = self.flows.get(key) else {
            return Err(StartError::Host(io::ErrorKind::NotFound.into()));
        };
        let size = self.buffers_for(&flow.host)?;
        let endpoint = IpListenEndpoint {
            addr: Some((*key.remote.ip()).into()),
            port: key.remote.port(),
        };
        let socket = self
            .sockets
            .add(size, |socket| {
                configure(socket);
                socket.listen(endpoint)
            })
            .map_err(|e| match e {
                AddError::Memory(e) => StartError::Host(e),
                AddError::Configure(e) => StartError::Host(io::Error::other(format!("{e}"))),
            })?;
        match self.flows.get_mut(key) {
            Some(flow) => {
                flow.state = State::Open { socket };
                self.by_socket.insert(socket, *key);
                self.rewatch(key);
                self.mark(key);
            }
            None => self.sockets.remove(socket),
        }
        Ok(())
    }

    /// Whether the flow's socket took its SYN (it is past LISTEN).
    pub fn took_syn(&self, key: &FlowKey) -> bool {
        match self.flows.get(key).map(|f| &f.state) {
            Some(State::Open { socket }) => self.sockets.state(*socket) != tcp::State::Listen,
            _ => false,
        }
    }

    /// Drops a flow at once (its socket too), deregistering the host end.
    pub fn remove(&mut self, key: &FlowKey, registry: &Registry) {
        if let Some(mut flow) = self.flows.remove(key) {
            self.by_token.remove(&flow.token);
            self.dirty.remove(key);
            self.watched.remove(key);
            let _ = registry.deregister(&mut flow.host);
            if let State::Open { socket } = flow.state {
                self.by_socket.remove(&socket);
                self.sockets.remove(socket);
            }
        }
    }

    /// Moves data both ways on the flows with something to do (dirty and
    /// watched ones); true if anything moved.
    pub fn splice(&mut self) -> bool {
        let mut progress = false;
        let mut visit: Vec<FlowKey> = (self.watched.iter())
            .filter(|k| !self.dirty.contains(k))
            .copied()
            .collect();
        visit.extend(self.dirty.drain());
        self.visited.clear();
        for key in &visit {
            let Some(flow) = self.flows.get_mut(key) else {
                continue;
            };
            let State::Open { socket } = flow.state else {
                continue;
            };
            if flow.gate.is_some() {
                continue;
            }
            let reports = &mut self.reports;
            let moved = self
                .sockets
                .with(socket, |socket| match flow.intercept.as_mut() {
                    Some(i) => i.pump(
                        socket,
                        &mut flow.host,
                        &mut flow.host_readable,
                        &mut flow.host_writable,
                        &mut flow.guest_eof,
                        &mut flow.host_eof,
                        reports,
                    ),
                    None => splice_one(key, flow, socket),
                })
                .unwrap_or(false);
            if moved {
                // Data or a close for smoltcp to send, room to announce.
                self.sockets.wake(socket);
                progress = true;
            }
        }
        self.visited = visit;
        progress
    }

    /// Removes flows whose smoltcp socket is closed (after smoltcp had its
    /// chance to send a final RST or FIN). Returns how many went.
    pub fn reap(&mut self, registry: &Registry) -> usize {
        // A socket closes only in smoltcp (which marks its flow dirty) or
        // by an abort or close here (on a flow the last splice visited).
        let gone: Vec<FlowKey> = (self.dirty.iter())
            .chain(&self.visited)
            .filter_map(|k| self.flows.get_key_value(k))
            .filter(|(_, f)| match f.state {
                State::Open { socket } => matches!(
                    self.sockets.state(socket),
                    tcp::State::Closed | tcp::State::TimeWait
                ),
                State::Connecting { .. } => false,
            })
            .map(|(k, _)| *k)
            .collect();
        let mut reaped = 0;
        for key in &gone {
            // A key in both lists comes twice; it is removed once.
            if self.flows.contains_key(key) {
                self.remove(key, registry);
                reaped += 1;
            }
        }
        self.visited.clear();
        reaped
    }

    /// Aborts (RST to the guest, host end dropped) every flow `keep`
    /// refuses (given the flow and the name it was allowed for); forwards'
    /// flows are judged by `keep_forward`. Returns the refused flows.
    pub fn retain(
        &mut self,
        registry: &Registry,
        mut keep: impl FnMut(&FlowKey, Option<&str>) -> bool,
        mut keep_forward: impl FnMut(&FlowKey) -> bool,
    ) -> Vec<Refused> {
        let mut refused = Vec::new();
        for (key, flow) in &mut self.flows {
            let kept = if flow.forward {
                keep_forward(key)
            } else {
                keep(key, flow.name.as_deref())
            };
            if kept {
                continue;
            }
            let syn = match &mut flow.state {
                // Reaped after smoltcp sent the RST.
                State::Open { socket } => {
                    self.sockets.with(*socket, |s| s.abort());
                    self.sockets.wake(*socket);
                    self.dirty.insert(*key);
                    None
                }
                State::Connecting { syn, .. } => Some(std::mem::take(syn)),
            };
            refused.push(Refused {
                key: *key,
                forward: flow.forward,
                syn,
            });
        }
        for r in &refused {
            if r.syn.is_some() {
                self.remove(&r.key, registry);
            }
        }
        refused
    }

    /// The earliest connect or gate deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.watched
            .iter()
            .filter_map(|k| self.flows.get(k))
            .filter_map(|f| match f.state {
                State::Connecting { since, .. } => Some(since + CONNECT_TIMEOUT),
                State::Open { .. } => f.gate.as_ref().and_then(Gate::deadline),
            })
            .min()
    }
}

/// The host end of a flow to `remote` as the guest addressed it (the
/// loopback alias leads to the host's loopback).
pub fn host_address(remote: SocketAddrV4) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        crate::addr::host_view(*remote.ip()),
        remote.port(),
    ))
}

/// A new connection's socket settings.
fn configure(socket: &mut tcp::Socket<'_>) {
    socket.set_nagle_enabled(false);
    socket.set_timeout(Some(GUEST_TIMEOUT.into()));
}

/// Moves what each side has room for; true if anything moved.
fn splice_one(key: &FlowKey, flow: &mut Flow, socket: &mut tcp::Socket<'_>) -> bool {
    let mut progress = false;
    // Guest → host.
    while flow.host_writable && socket.can_recv() {
        let host = &mut flow.host;
        match socket.recv(|buf| match host.write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        }) {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => progress = true,
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => flow.host_writable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                debug!("net: {key:?}: host write failed ({e}); resetting the guest's side");
                socket.abort();
                return true;
            }
            Err(_) => break,
        }
    }
    // The guest's FIN, once everything before it reached the host.
    let guest_closed = matches!(
        socket.state(),
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    );
    if !flow.guest_eof && guest_closed && socket.recv_queue() == 0 {
        flow.guest_eof = true;
        let _ = flow.host.shutdown(Shutdown::Write);
        progress = true;
    }
    // Host → guest.
    while flow.host_readable && !flow.host_eof && socket.can_send() {
        let host = &mut flow.host;
        match socket.send(|buf| match host.read(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        }) {
            Ok(Ok(0)) => {
                flow.host_eof = true;
                socket.close();
                progress = true;
            }
            Ok(Ok(_)) => progress = true,
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => flow.host_readable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                debug!("net: {key:?}: host read failed ({e}); resetting the guest's side");
                socket.abort();
                return true;
            }
            Err(_) => break,
        }
    }
    progress
}
