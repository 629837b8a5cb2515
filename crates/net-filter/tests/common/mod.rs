//! What the stack's tests share: a stack with a policy, DNS lookups from
//! the smoltcp guest, host-side test servers (TCP and UDP echo, a DNS
//! resolver that counts what it is asked), and readers for the frames
//! the stack sends the guest.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use agentvm_net::testing::Guest;
use agentvm_net::{Audit, AuditEvent, Mode, NetStack, Policy, StackConfig};
use simple_dns::rdata::{RData, A};
use simple_dns::{
    Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE,
};
use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4DstUnreachable,
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};

/// The DNS server's address as the guest sees it.
pub const DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
/// The guest's address.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway (the stack itself).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// How long a test waits for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(3);
/// "At once": well under a second, and before a guest's first
/// retransmission (1 s), so a refusal that only came on a retry fails.
pub const AT_ONCE: Duration = Duration::from_millis(500);
/// How long a test watches for something that must not happen. The stack
/// answers synchronously (a reply is queued while the frame is pushed), so
/// a short look is enough to see silence.
pub const SILENCE: Duration = Duration::from_millis(200);

/// A stack with `policy`, recording audit events, forwarding DNS to
/// `resolvers` (none: every upstream query fails over to SERVFAIL).
pub fn stack_with(policy: Policy, resolvers: Vec<SocketAddr>) -> (NetStack, Events) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let audit = Audit::callback(move |e| sink.lock().unwrap().push(e.clone()));
    (stack_audited(policy, resolvers, audit), events)
}

/// A stack with `policy` recording to `audit`, forwarding DNS to
/// `resolvers`.
pub fn stack_audited(policy: Policy, resolvers: Vec<SocketAddr>, audit: Audit) -> NetStack {
    NetStack::new(StackConfig {
        policy,
        audit,
        resolvers,
        mtu: 0,
        memory_budget: 0,
        intercept: None,
    })
    .unwrap()
}

/// Audit events a stack recorded.
pub type Events = Arc<Mutex<Vec<AuditEvent>>>;

/// A `filtered` policy pinning `name` to 127.0.0.1 and allowing `ports`.
pub fn pinned(name: &str, ports: &[u16]) -> Policy {
    let mut p = Policy::new(Mode::Filtered);
    p.pin(name, Ipv4Addr::LOCALHOST).unwrap();
    p.ports = ports.to_vec();
    p
}

/// A guest with its lease.
pub fn guest(stack: &mut NetStack) -> Guest {
    let mut guest = Guest::new();
    guest.dhcp(stack, SOON).expect("DHCP lease");
    guest
}

/// The address the guest is given for a name pinned to the host's
/// 127.0.0.1 (as the policy answers it: the pin itself, or an alias the
/// guest can route that leads there).
pub fn host_loopback() -> Ipv4Addr {
    let mut p = Policy::new(Mode::Filtered);
    p.pin("loopback.test", Ipv4Addr::LOCALHOST).unwrap();
    p.pinned("loopback.test").unwrap()
}

/// `port` on the host's 127.0.0.1, as the guest addresses it.
pub fn on_host(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(host_loopback(), port)
}

/// Deterministic payload bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A port on 127.0.0.1 nobody listens on (bound, then let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------- DNS

/// What a DNS lookup got.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Answered with these addresses (maybe none).
    Answer(RCODE, Vec<Ipv4Addr>),
    /// No reply within the time.
    Silence,
}

/// Looks `name` up (type `qtype`) through the stack's DNS server.
pub fn lookup(guest: &mut Guest, stack: &mut NetStack, name: &str, qtype: TYPE) -> Lookup {
    lookup_at(guest, stack, DNS, name, qtype, SOON)
}

/// Looks `name` up at `server`.
pub fn lookup_at(
    guest: &mut Guest,
    stack: &mut NetStack,
    server: SocketAddrV4,
    name: &str,
    qtype: TYPE,
    timeout: Duration,
) -> Lookup {
    let mut query = Packet::new_query(0x4242);
    query.set_flags(PacketFlag::RECURSION_DESIRED);
    query.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    let bytes = query.build_bytes_vec().unwrap();
    let socket = guest.udp_bind(5353);
    guest
        .udp(socket)
        .send_slice(&bytes, (*server.ip(), server.port()))
        .unwrap();
    let mut reply = None;
    guest.run_until(stack, timeout, |g, _| {
        let mut buf = vec![0; 4096];
        if let Ok((n, _)) = g.udp(socket).recv_slice(&mut buf) {
            reply = Some(buf[..n].to_vec());
        }
        reply.is_some()
    });
    guest.sockets.remove(socket);
    let Some(reply) = reply else {
        return Lookup::Silence;
    };
    let packet = Packet::parse(&reply).unwrap();
    assert_eq!(packet.id(), 0x4242);
    let addrs = packet
        .answers
        .iter()
        .filter_map(|r| match &r.rdata {
            RData::A(a) => Some(Ipv4Addr::from(a.address)),
            _ => None,
        })
        .collect();
    Lookup::Answer(packet.rcode(), addrs)
}

/// The answer a lookup of an allowed name gets from [`TestResolver`].
pub fn found(ip: Ipv4Addr) -> Lookup {
    Lookup::Answer(RCODE::NoError, vec![ip])
}

/// The answer a refused name gets.
pub fn nxdomain() -> Lookup {
    Lookup::Answer(RCODE::NameError, vec![])
}

/// An upstream DNS resolver on 127.0.0.1 (the stack's
/// `StackConfig::resolvers`): answers A queries for the names it knows,
/// NXDOMAIN for the rest, and keeps every name it was asked.
pub struct TestResolver {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestResolver {
    /// A resolver knowing `records` (name, address).
    pub fn new(records: &[(&str, Ipv4Addr)]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Vec<(String, Ipv4Addr)> = records
            .iter()
            .map(|(n, ip)| (n.to_ascii_lowercase(), *ip))
            .collect();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (asked.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0; 4096];
            while !halt.load(Ordering::SeqCst) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Some(reply) = resolve(&buf[..len], &records, &log) else {
                    continue;
                };
                socket.send_to(&reply, from).unwrap();
            }
        });
        TestResolver {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens: the stack's resolver list.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        vec![self.addr]
    }

    /// The names it was asked (lower case), in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for TestResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The test resolver's answer to `query`.
fn resolve(
    query: &[u8],
    records: &[(String, Ipv4Addr)],
    log: &Mutex<Vec<String>>,
) -> Option<Vec<u8>> {
    let mut reply = Packet::parse(query).ok()?.into_reply();
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    let question = reply.questions.first()?.clone();
    let name = question.qname.to_string().to_ascii_lowercase();
    log.lock().unwrap().push(name.clone());
    let known = records.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip);
    match known {
        Some(ip) if question.qtype == QTYPE::TYPE(TYPE::A) => {
            reply.answers.push(ResourceRecord::new(
                question.qname.clone(),
                CLASS::IN,
                300,
                RData::A(A::from(ip)),
            ));
        }
        Some(_) => {}
        None => *reply.rcode_mut() = RCODE::NameError,
    }
    reply.build_bytes_vec().ok()
}

// ---------------------------------------------------------- host servers

/// A TCP echo server on 127.0.0.1: echoes each connection until EOF.
pub struct TcpEcho {
    /// Its port.
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
}

impl TcpEcho {
    /// Starts one (its threads live as long as the test process).
    pub fn start() -> Self {
        Self::start_on(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    }

    /// Starts one listening on `addr`.
    pub fn start_on(addr: SocketAddrV4) -> Self {
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("cannot listen on {addr} for a test server: {e}"));
        let port = listener.local_addr().unwrap().port();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let closed: Arc<AtomicUsize> = Arc::default();
        let received: Arc<AtomicUsize> = Arc::default();
        let (a, c, r) = (accepted.clone(), closed.clone(), received.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let (c, r) = (c.clone(), r.clone());
                thread::spawn(move || {
                    let mut buf = [0; 16384];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                r.fetch_add(n, Ordering::SeqCst);
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        TcpEcho {
            port,
            accepted,
            closed,
            received,
        }
    }

    /// Bytes it received so far, over all connections.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections that ended (EOF or reset) so far.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A UDP echo server on 127.0.0.1: sends every datagram back.
pub struct UdpEcho {
    /// Its port.
    pub port: u16,
    received: Arc<AtomicUsize>,
}

impl UdpEcho {
    /// Starts one (its thread lives as long as the test process).
    pub fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let received: Arc<AtomicUsize> = Arc::default();
        let r = received.clone();
        thread::spawn(move || {
            let mut buf = [0; 65536];
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        r.fetch_add(1, Ordering::SeqCst);
                        let _ = socket.send_to(&buf[..n], from);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        UdpEcho { port, received }
    }

    /// Datagrams it received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

// ------------------------------------------------------------ guest TCP

/// Connects from `local_port` to `remote` and waits until the connection
/// is established or refused (or [`SOON`] passes); returns the socket and
/// the state it reached.
pub fn connect(
    g: &mut Guest,
    stack: &mut NetStack,
    remote: SocketAddrV4,
    local_port: u16,
) -> (SocketHandle, State) {
    let sock = g.tcp_connect(remote, local_port, 64 << 10);
    g.run_until(stack, SOON, |g, _| {
        matches!(g.tcp(sock).state(), State::Established | State::Closed)
    });
    let state = g.tcp(sock).state();
    (sock, state)
}

/// Sends `data` on `sock` and waits for the echo server to send it back;
/// true if exactly `data` came back.
pub fn echo_roundtrip(
    g: &mut Guest,
    stack: &mut NetStack,
    sock: SocketHandle,
    data: &[u8],
) -> bool {
    let mut sent = 0;
    let mut got = Vec::new();
    g.run_until(stack, SOON, |g, _| {
        let s = g.tcp(sock);
        if sent < data.len() && s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap();
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got.len() >= data.len() || !s.is_open()
    });
    got == data
}

// ------------------------------------------------------------ guest UDP

/// Sends `data` from the guest's UDP socket `sock` to `to`, and waits for
/// one datagram back (until `timeout`); returns it with its source.
pub fn udp_exchange(
    g: &mut Guest,
    stack: &mut NetStack,
    sock: SocketHandle,
    to: SocketAddrV4,
    data: &[u8],
    timeout: Duration,
) -> Option<(Vec<u8>, SocketAddrV4)> {
    g.udp(sock).send_slice(data, (*to.ip(), to.port())).unwrap();
    let mut reply = None;
    g.run_until(stack, timeout, |g, _| {
        let mut buf = vec![0; 65536];
        if let Ok((n, meta)) = g.udp(sock).recv_slice(&mut buf) {
            let smoltcp::wire::IpAddress::Ipv4(ip) = meta.endpoint.addr;
            reply = Some((buf[..n].to_vec(), SocketAddrV4::new(ip, meta.endpoint.port)));
        }
        reply.is_some()
    });
    reply
}

// ---------------------------------------------------------- raw frames

/// An Ethernet + IPv4 frame from the guest's MAC to the gateway's,
/// carrying `l4` (a whole `proto` packet) from `src` to `dst`.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: 64,
    };
    let mut frame = vec![0; 14 + ip.buffer_len() + l4.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(agentvm_net::addr::GUEST_MAC),
        dst_addr: agentvm_net::addr::GATEWAY_MAC,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    packet.payload_mut().copy_from_slice(l4);
    frame
}

/// A UDP datagram from `src` to `dst` as an Ethernet frame from the guest.
pub fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let mut l4 = vec![0; udp.header_len() + payload.len()];
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut l4[..]),
        &(*src.ip()).into(),
        &(*dst.ip()).into(),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    ipv4_frame(*src.ip(), *dst.ip(), IpProtocol::Udp, &l4)
}

/// The IPv4 packet inside an Ethernet frame, if it is one.
fn ipv4_of(frame: &[u8]) -> Option<Ipv4Packet<&[u8]>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    Ipv4Packet::new_checked(&frame[14..]).ok()
}

/// The destinations of the UDP datagrams that ICMP "communication
/// administratively prohibited" messages among `frames` refuse.
pub fn prohibited(frames: &[Vec<u8>]) -> Vec<SocketAddrV4> {
    frames
        .iter()
        .filter_map(|f| {
            let ip = ipv4_of(f)?;
            if ip.next_header() != IpProtocol::Icmp {
                return None;
            }
            let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
            let code = Icmpv4DstUnreachable::CommProhibited;
            if icmp.msg_type() != Icmpv4Message::DstUnreachable || icmp.msg_code() != u8::from(code)
            {
                return None;
            }
            // The quoted IPv4 header, then the first 8 bytes of UDP.
            let quoted = Ipv4Packet::new_unchecked(icmp.data());
            let l4 = icmp.data().get(usize::from(quoted.header_len())..)?;
            let port = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
            Some(SocketAddrV4::new(quoted.dst_addr(), port))
        })
        .collect()
}

/// The sources of the TCP resets among `frames`.
pub fn resets(frames: &[Vec<u8>]) -> Vec<SocketAddrV4> {
    frames
        .iter()
        .filter_map(|f| {
            let ip = ipv4_of(f)?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            tcp.rst()
                .then(|| SocketAddrV4::new(ip.src_addr(), tcp.src_port()))
        })
        .collect()
}

// ---------------------------------------------------------------- audit

/// The JSON lines of an audit file.
pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
