//! Floods against the stack's caps: thousands of stalled TCP flows with
//! full buffers both ways, SYN floods to an address that never answers,
//! a local process opening forwarded connections in a loop. Each stays
//! under the memory budget (the budget's own account, and the process's
//! resident memory measured around the flood), every refused connection
//! is refused at once (RST, or the host end closed), and each cap counts
//! its hits. The measured numbers are printed (`--nocapture`).
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use agentvm_net::testing::wait_readable;
use agentvm_net::{
    AuditEvent, Forward, NetStack, Proto, StackConfig, Verdict, DEFAULT_BUDGET, MAX_TCP_FLOWS,
};
use common::{free_port, guest, ipv4_frame, lookup, on_host, pinned, Events, AT_ONCE, SOON};
use simple_dns::TYPE;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, IpProtocol, Ipv4Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use socket2::{Domain, Socket, Type};
use std::os::fd::AsRawFd;

/// The window scale the raw guest offers: the stack may then open
/// windows as large as its buffers.
const GUEST_WSCALE: u8 = 8;
/// Payload of each data segment the raw guest sends.
const SEGMENT: usize = 16 << 10;
/// Room for what the test itself allocates while it measures (frames in
/// flight, its own tables, the allocator's slack).
const TEST_SLACK: u64 = 16 << 10;

// ------------------------------------------------------------ measuring

/// A field of /proc/self/status, KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Resident memory now, and its peak so far (KiB).
fn rss() -> (u64, u64) {
    (status_kib("VmRSS:"), status_kib("VmHWM:"))
}

/// Kernel memory of all TCP sockets on the host, KiB (`mem` of TCP in
/// /proc/net/sockstat, in pages): the stack's host sockets and the test's
/// own peers both count.
fn tcp_kernel_kib() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "mem")
                .nth(1)?
                .parse()
                .ok()
        })
        .map_or(0, |pages: u64| pages * 4)
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

// ------------------------------------------------------------ the stack

/// A stack with the default budget pinning `flood.test` to the host's
/// loopback on `ports`, the name resolved (so direct connects to it are
/// allowed), its audit events kept.
fn flood_stack(ports: &[u16], forwards: Vec<Forward>) -> (NetStack, Events, Ipv4Addr) {
    let mut policy = pinned("flood.test", ports);
    policy.forwards = forwards;
    let events: Events = Default::default();
    let sink = events.clone();
    let mut stack = NetStack::new(StackConfig {
        policy,
        audit: agentvm_net::Audit::callback(move |e| sink.lock().unwrap().push(e.clone())),
        ..StackConfig::default()
    })
    .unwrap();
    let mut g = guest(&mut stack);
    let addr = *on_host(0).ip();
    assert_eq!(
        lookup(&mut g, &mut stack, "flood.test", TYPE::A),
        common::found(addr)
    );
    (stack, events, addr)
}

fn denials(events: &Events, proto: Proto, reason: &str) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e: &&AuditEvent| {
            e.proto == proto && e.verdict == Verdict::Deny && e.reason == reason
        })
        .count()
}

// ------------------------------------------------------- the raw guest

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    SynSent,
    Established,
    Reset,
}

/// One guest connection driven by hand: it sends what its peer's window
/// allows and never acknowledges what it receives (so the stack's send
/// buffer stays full too).
#[derive(Debug)]
struct RawFlow {
    remote: SocketAddrV4,
    phase: Phase,
    /// Next sequence number to send.
    nxt: TcpSeqNumber,
    /// Oldest unacknowledged.
    una: TcpSeqNumber,
    /// The stack's initial sequence number + 1.
    ack: TcpSeqNumber,
    /// The stack's window, bytes.
    window: usize,
    /// The stack's window scale.
    scale: u8,
}

/// A TCP segment from the guest as an Ethernet frame.
fn segment(
    port: u16,
    remote: SocketAddrV4,
    control: TcpControl,
    seq: TcpSeqNumber,
    ack: Option<TcpSeqNumber>,
    payload: &[u8],
) -> Vec<u8> {
    let syn = control == TcpControl::Syn;
    let repr = TcpRepr {
        src_port: port,
        dst_port: remote.port(),
        control,
        seq_number: seq,
        ack_number: ack,
        window_len: u16::MAX,
        window_scale: syn.then_some(GUEST_WSCALE),
        max_seg_size: syn.then_some(u16::MAX - 40),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let mut l4 = vec![0; repr.buffer_len()];
    let guest_ip = common::GUEST_IP.into();
    // No checksum: the stack does not check the guest's (and computing
    // it for thousands of 64 KiB SYNs would slow the flood down).
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        &guest_ip,
        &(*remote.ip()).into(),
        &ChecksumCapabilities::ignored(),
    );
    ipv4_frame(common::GUEST_IP, *remote.ip(), IpProtocol::Tcp, &l4)
}

/// The guest's connections by guest port.
#[derive(Default)]
struct RawGuest {
    flows: HashMap<u16, RawFlow>,
}

impl RawGuest {
    /// Sends a SYN (with `payload`) from `port` to `remote`.
    fn syn(&mut self, stack: &mut NetStack, port: u16, remote: SocketAddrV4, payload: &[u8]) {
        let isn = TcpSeqNumber(i32::from(port) * 7919);
        stack.push_frame(&segment(port, remote, TcpControl::Syn, isn, None, payload));
        self.flows.insert(
            port,
            RawFlow {
                remote,
                phase: Phase::SynSent,
                nxt: isn + 1 + payload.len(),
                una: isn + 1,
                ack: TcpSeqNumber(0),
                window: 0,
                scale: 0,
            },
        );
    }

    /// Takes every frame the stack has for the guest and notes what it
    /// says about each connection.
    fn take_frames(&mut self, stack: &mut NetStack) {
        while let Some(frame) = stack.pop_frame() {
            let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
                continue;
            };
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                continue;
            };
            if ip.next_header() != IpProtocol::Tcp {
                continue;
            }
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                continue;
            };
            let Some(flow) = self.flows.get_mut(&tcp.dst_port()) else {
                continue;
            };
            if tcp.rst() {
                flow.phase = Phase::Reset;
                continue;
            }
            if tcp.syn() && tcp.ack() && flow.phase == Phase::SynSent {
                let repr = TcpRepr::parse(
                    &tcp,
                    &ip.src_addr().into(),
                    &ip.dst_addr().into(),
                    &ChecksumCapabilities::ignored(),
                )
                .unwrap();
                flow.scale = repr.window_scale.unwrap_or(0);
                flow.ack = tcp.seq_number() + 1;
                flow.phase = Phase::Established;
                // A SYN's payload is not taken before the handshake ends.
                flow.nxt = flow.una;
                let ack = segment(
                    tcp.dst_port(),
                    flow.remote,
                    TcpControl::None,
                    flow.nxt,
                    Some(flow.ack),
                    &[],
                );
                stack.push_frame(&ack);
            }
            if tcp.ack() && tcp.ack_number() > flow.una {
                flow.una = tcp.ack_number();
            }
            flow.window = usize::from(tcp.window_len()) << flow.scale;
        }
    }

    /// Sends one segment on every connection whose window has room; how
    /// many were sent.
    fn send_data(&mut self, stack: &mut NetStack, data: &[u8]) -> usize {
        let mut sent = 0;
        let ports: Vec<u16> = self.flows.keys().copied().collect();
        for port in ports {
            let flow = self.flows.get_mut(&port).unwrap();
            if flow.phase != Phase::Established {
                continue;
            }
            let in_flight = flow.nxt - flow.una;
            let room = flow.window.saturating_sub(in_flight).min(data.len());
            if room == 0 {
                continue;
            }
            let frame = segment(
                port,
                flow.remote,
                TcpControl::Psh,
                flow.nxt,
                Some(flow.ack),
                &data[..room],
            );
            stack.push_frame(&frame);
            flow.nxt += room;
            sent += 1;
            if sent % 256 == 0 {
                stack.poll();
                self.take_frames_later(stack);
            }
        }
        sent
    }

    /// Lets the stack work and reads its frames.
    fn take_frames_later(&mut self, stack: &mut NetStack) {
        stack.poll();
        self.take_frames(stack);
    }

    fn count(&self, phase: Phase) -> usize {
        self.flows.values().filter(|f| f.phase == phase).count()
    }
}

// -------------------------------------------------------- host servers

/// A listener on 127.0.0.1 whose connections are never read; each gets
/// as much written to it as it takes. Its sockets' buffers are small so
/// that filling the stack's side does not need gigabytes.
struct Sink {
    listener: TcpListener,
    conns: Vec<TcpStream>,
    port: u16,
}

impl Sink {
    fn new() -> Self {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        socket
            .bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        socket.listen(4096).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener: TcpListener = socket.into();
        let port = listener.local_addr().unwrap().port();
        Sink {
            listener,
            conns: Vec::new(),
            port,
        }
    }

    /// Accepts what waits and writes to every connection until it blocks.
    fn serve(&mut self, data: &[u8]) {
        while let Ok((conn, _)) = self.listener.accept() {
            conn.set_nonblocking(true).unwrap();
            self.conns.push(conn);
        }
        for conn in &mut self.conns {
            while conn.write(data).is_ok_and(|n| n > 0) {}
        }
    }
}

/// A listener on 127.0.0.1 that never accepts, its queue full: further
/// SYNs to it are dropped, so connects to it hang (a black hole).
struct BlackHole {
    _listener: Socket,
    _fillers: Vec<Socket>,
    port: u16,
}

impl BlackHole {
    fn new() -> Self {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        listener.listen(0).unwrap();
        let port = listener
            .local_addr()
            .unwrap()
            .as_socket_ipv4()
            .unwrap()
            .port();
        // Backlog 0 holds one connection; a second one fills the queue
        // for good measure.
        let fillers: Vec<Socket> = (0..2)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.set_nonblocking(true).unwrap();
                let _ = s.connect(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into());
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let probe = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
        assert!(
            probe
                .connect_timeout(&to, Duration::from_millis(300))
                .is_err(),
            "the black hole answers connects"
        );
        BlackHole {
            _listener: listener,
            _fillers: fillers,
            port,
        }
    }
}

// --------------------------------------------------------------- tests

#[test]
fn four_thousand_stalled_flows_with_full_buffers_stay_under_the_budget() {
    let mut sink = Sink::new();
    let (mut stack, events, addr) = flood_stack(&[sink.port], vec![]);
    let remote = SocketAddrV4::new(addr, sink.port);
    let data = vec![0x5a; SEGMENT];
    let (rss_before, _) = rss();
    let kernel_before = tcp_kernel_kib();
    let mut g = RawGuest::default();
    for i in 0..MAX_TCP_FLOWS as u16 {
        g.syn(&mut stack, 10_000 + i, remote, &[]);
        if i % 64 == 63 {
            g.take_frames_later(&mut stack);
            sink.serve(&data);
        }
    }
    // Every SYN is answered at once: a handshake or a RST.
    let answered = Instant::now() + SOON;
    while g.count(Phase::SynSent) > 0 && Instant::now() < answered {
        g.take_frames_later(&mut stack);
        sink.serve(&data);
        wait_readable(stack.as_raw_fd(), Duration::from_millis(1));
    }
    assert_eq!(g.count(Phase::SynSent), 0, "SYNs left unanswered");
    // Fill every buffer: the guest sends while windows are open, the host
    // writes while its sockets take data, nobody reads.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_rounds = 0;
    while quiet_rounds < 20 && Instant::now() < deadline {
        let sent = g.send_data(&mut stack, &data);
        sink.serve(&data);
        g.take_frames_later(&mut stack);
        quiet_rounds = if sent == 0 { quiet_rounds + 1 } else { 0 };
        if sent == 0 {
            wait_readable(stack.as_raw_fd(), Duration::from_millis(20));
        }
    }
    assert!(quiet_rounds >= 20, "windows never closed");
    let (rss_after, rss_peak) = rss();
    let stats = stack.stats();
    let established = g.count(Phase::Established);
    let reset = g.count(Phase::Reset);
    println!(
        "stalled flows: {established} open with full buffers, {reset} reset; budget {} of {} KiB \
         used (peak {} KiB); RSS {rss_before} KiB before, {rss_after} KiB after, peak {rss_peak} \
         KiB; {} refused by the budget; kernel TCP memory (both ends) {kernel_before} KiB \
         before, {} KiB after",
        stats.memory_used >> 10,
        stats.memory_limit >> 10,
        stats.memory_peak >> 10,
        stats.tcp_refused_memory,
        tcp_kernel_kib()
    );
    assert_eq!(established + reset, MAX_TCP_FLOWS);
    assert!(established >= 100, "only {established} flows fit");
    assert!(reset > 0, "the budget never refused a flow");
    assert_eq!(stats.tcp_refused_memory, reset as u64);
    assert_eq!(
        denials(&events, Proto::Tcp, "network memory budget exhausted"),
        reset
    );
    assert!(stats.memory_peak <= stats.memory_limit);
    assert!(
        rss_peak - rss_before <= (DEFAULT_BUDGET as u64 >> 10) + TEST_SLACK,
        "resident memory grew by {} KiB",
        rss_peak - rss_before
    );
}

#[test]
fn a_syn_flood_of_large_syns_to_a_black_hole_is_refused_at_the_budget() {
    let hole = BlackHole::new();
    let (mut stack, events, addr) = flood_stack(&[hole.port], vec![]);
    let remote = SocketAddrV4::new(addr, hole.port);
    // SYNs carrying as much as a frame holds: each one parked costs 64 KiB.
    let payload = vec![0xa5; 65_000];
    let (rss_before, _) = rss();
    let mut g = RawGuest::default();
    let started = Instant::now();
    for i in 0..MAX_TCP_FLOWS as u16 {
        g.syn(&mut stack, 10_000 + i, remote, &payload);
        g.take_frames(&mut stack);
    }
    g.take_frames_later(&mut stack);
    let flood_time = started.elapsed();
    let (rss_after, rss_peak) = rss();
    let stats = stack.stats();
    let reset = g.count(Phase::Reset);
    println!(
        "large-SYN flood: {} pending, {reset} reset in {flood_time:?}; budget {} of {} KiB \
         (peak {} KiB); RSS {rss_before} KiB before, {rss_after} KiB after, peak {rss_peak} KiB",
        stats.tcp_flows,
        stats.memory_used >> 10,
        stats.memory_limit >> 10,
        stats.memory_peak >> 10,
    );
    assert_eq!(g.count(Phase::Established), 0, "the black hole answered");
    assert_eq!(stats.tcp_flows + reset, MAX_TCP_FLOWS);
    assert!(reset > 0 && stats.tcp_refused_memory == reset as u64);
    assert_eq!(
        denials(&events, Proto::Tcp, "network memory budget exhausted"),
        reset
    );
    assert!(stats.memory_peak <= stats.memory_limit);
    assert!(
        rss_peak - rss_before <= (DEFAULT_BUDGET as u64 >> 10) + TEST_SLACK,
        "resident memory grew by {} KiB",
        rss_peak - rss_before
    );
}

#[test]
fn a_syn_flood_to_a_black_hole_stops_at_the_flow_cap_and_forwards_count_against_it() {
    let hole = BlackHole::new();
    let forward_port = free_port();
    let forward = Forward {
        host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, forward_port),
        guest_port: 8080,
    };
    let (mut stack, events, addr) = flood_stack(&[hole.port], vec![forward]);
    let remote = SocketAddrV4::new(addr, hole.port);
    let (rss_before, _) = rss();
    let mut g = RawGuest::default();
    for i in 0..MAX_TCP_FLOWS as u16 {
        g.syn(&mut stack, 10_000 + i, remote, &[]);
        g.take_frames(&mut stack);
    }
    g.take_frames_later(&mut stack);
    assert_eq!(g.count(Phase::Reset), 0, "a SYN below the cap was refused");
    assert_eq!(stack.stats().tcp_flows, MAX_TCP_FLOWS);
    // One more from the guest: reset at once.
    let t = Instant::now();
    g.syn(&mut stack, 9_999, remote, &[]);
    g.take_frames(&mut stack);
    assert_eq!(g.flows[&9_999].phase, Phase::Reset);
    assert!(t.elapsed() < AT_ONCE);
    // One more from a local process through the forward: closed at once.
    let mut client = TcpStream::connect(forward.host).unwrap();
    client.set_read_timeout(Some(SOON)).unwrap();
    let closed = Instant::now() + SOON;
    let mut got = None;
    while got.is_none() && Instant::now() < closed {
        wait_readable(stack.as_raw_fd(), Duration::from_millis(5));
        stack.poll();
        client.set_nonblocking(true).unwrap();
        got = match client.read(&mut [0; 16]) {
            Ok(n) => Some(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(_) => Some(0),
        };
    }
    assert_eq!(got, Some(0), "the forwarded connection was not closed");
    let (_, rss_peak) = rss();
    let stats = stack.stats();
    println!(
        "small-SYN flood: {} pending at the cap; budget {} KiB (peak {} KiB); RSS peak grew \
         {} KiB",
        stats.tcp_flows,
        stats.memory_used >> 10,
        stats.memory_peak >> 10,
        rss_peak - rss_before
    );
    assert_eq!(stats.tcp_refused_cap, 2);
    assert_eq!(stats.tcp_flows, MAX_TCP_FLOWS);
    // What `agentvm status` reads, from another thread.
    stack.poll();
    assert_eq!(stack.handle().stats().tcp_refused_cap, 2);
    assert_eq!(denials(&events, Proto::Tcp, "too many connections"), 1);
    assert_eq!(denials(&events, Proto::Forward, "too many connections"), 1);
    assert!(rss_peak - rss_before <= (DEFAULT_BUDGET as u64 >> 10) + TEST_SLACK);
}

#[test]
fn a_forwarded_connection_flood_is_bounded_by_the_budget_and_holds_no_fds() {
    let port = free_port();
    let forward = Forward {
        host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        guest_port: 8080,
    };
    let (mut stack, events, _) = flood_stack(&[], vec![forward]);
    let (rss_before, _) = rss();
    let fds_before = open_fds();
    const CLIENTS: usize = 64 * 94;
    let mut clients = Vec::with_capacity(CLIENTS);
    while clients.len() < CLIENTS {
        for _ in 0..64 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&forward.host.into());
            clients.push(s);
        }
        // The guest never answers the forwarded connections' SYNs.
        for _ in 0..4 {
            wait_readable(stack.as_raw_fd(), Duration::from_millis(1));
            stack.poll();
            while stack.pop_frame().is_some() {}
        }
    }
    let settle = Instant::now() + Duration::from_secs(30);
    while Instant::now() < settle {
        wait_readable(stack.as_raw_fd(), Duration::from_millis(5));
        stack.poll();
        while stack.pop_frame().is_some() {}
        let stats = stack.stats();
        let decided = stats.tcp_flows as u64 + stats.tcp_refused_memory + stats.tcp_refused_cap;
        if decided >= CLIENTS as u64 {
            break;
        }
    }
    let stats = stack.stats();
    let (rss_after, rss_peak) = rss();
    // The stack's fds beyond the clients' own: one per flow it holds.
    let stack_fds = open_fds() - fds_before - CLIENTS;
    println!(
        "forward flood: {CLIENTS} connections, {} held, {} refused by the budget, {} by the cap; \
         {stack_fds} fds held by the stack; budget peak {} of {} KiB; RSS {rss_before} KiB \
         before, {rss_after} KiB after, peak {rss_peak} KiB",
        stats.tcp_flows,
        stats.tcp_refused_memory,
        stats.tcp_refused_cap,
        stats.memory_peak >> 10,
        stats.memory_limit >> 10,
    );
    let refused = stats.tcp_refused_memory + stats.tcp_refused_cap;
    assert_eq!(stats.tcp_flows as u64 + refused, CLIENTS as u64);
    assert!(refused > 0, "no forwarded connection was refused");
    assert!(stats.tcp_flows <= MAX_TCP_FLOWS);
    assert!(
        stack_fds <= stats.tcp_flows + 16,
        "{stack_fds} fds for {} flows",
        stats.tcp_flows
    );
    assert_eq!(
        denials(&events, Proto::Forward, "network memory budget exhausted") as u64
            + denials(&events, Proto::Forward, "too many connections") as u64,
        refused
    );
    assert!(stats.memory_peak <= stats.memory_limit);
    assert!(rss_peak - rss_before <= (DEFAULT_BUDGET as u64 >> 10) + TEST_SLACK);
}

#[test]
fn a_flood_of_audited_denials_keeps_the_audit_log_under_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net-audit.jsonl");
    let audit = agentvm_net::Audit::to_file(&path).unwrap();
    let mut stack = common::stack_audited(pinned("flood.test", &[443]), vec![], audit);
    let mut g = guest(&mut stack);
    // Denied datagrams: each one is judged, audited and refused again.
    let guest_end = SocketAddrV4::new(common::GUEST_IP, 5353);
    let denied = common::udp_frame(
        guest_end,
        SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53),
        b"x",
    );
    let line_len = {
        stack.push_frame(&denied);
        std::fs::metadata(&path).unwrap().len()
    };
    let cap = agentvm_net::rotating::DEFAULT_MAX_BYTES;
    // Enough denials for two and a half caps.
    let flood = (5 * cap / 2 / line_len) as usize;
    let started = Instant::now();
    for i in 0..flood {
        stack.push_frame(&denied);
        if i % 1024 == 0 {
            while stack.pop_frame().is_some() {}
        }
    }
    let rotated = agentvm_net::rotating::RotatingFile::rotated_path(&path);
    let (live, old) = (
        std::fs::metadata(&path).unwrap().len(),
        std::fs::metadata(&rotated).unwrap().len(),
    );
    println!(
        "audit flood: {flood} denials ({} MiB of lines) in {:?}; net-audit.jsonl {live} bytes, \
         net-audit.jsonl.1 {old} bytes (cap {cap})",
        (flood as u64 * line_len) >> 20,
        started.elapsed()
    );
    assert!(live <= cap && old <= cap && old > cap - 2 * line_len);
    // Every line in both files is a whole event; the newest one is there.
    for file in [&rotated, &path] {
        let lines = common::audit_lines(file);
        assert!(lines.iter().all(|l| l["verdict"] == "deny"));
    }
    let newest = common::audit_lines(&path);
    assert_eq!(newest.last().unwrap()["ip"], "8.8.8.8");
    // The stack still serves after the flood.
    assert_eq!(
        lookup(&mut g, &mut stack, "flood.test", TYPE::A),
        common::found(*on_host(0).ip())
    );
}

#[test]
fn udp_flows_past_the_cap_evict_the_least_recently_used_and_the_newest_still_work() {
    let echo = common::UdpEcho::start();
    let (mut stack, _, addr) = flood_stack(&[echo.port], vec![]);
    let remote = SocketAddrV4::new(addr, echo.port);
    const FLOWS: u16 = 300;
    for port in 0..FLOWS {
        let guest_end = SocketAddrV4::new(common::GUEST_IP, 20_000 + port);
        stack.push_frame(&common::udp_frame(guest_end, remote, b"ping"));
    }
    let stats = stack.stats();
    println!(
        "udp flood: {FLOWS} flows opened, {} kept, {} evicted",
        stats.udp_flows, stats.udp_evicted
    );
    assert_eq!(stats.udp_flows, 256);
    assert_eq!(stats.udp_evicted, u64::from(FLOWS) - 256);
    // The newest flow answers; so does a fresh guest's.
    let mut g = guest(&mut stack);
    let sock = g.udp_bind(45_000);
    let reply = common::udp_exchange(&mut g, &mut stack, sock, remote, b"alive", SOON);
    assert_eq!(reply.map(|(data, _)| data), Some(b"alive".to_vec()));
    assert_eq!(stack.stats().udp_evicted, u64::from(FLOWS) - 255);
}
