//! A guest that sends what no well-behaved stack would: IPv6, spoofed
//! source addresses, truncated, oversized and randomly corrupted frames.
//! Each is dropped or answered as the classifier says — never a panic,
//! never a reply that leaks — and the stack keeps serving afterwards.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use agentvm_net::testing::Guest;
use agentvm_net::NetStack;
use common::{
    connect, echo_roundtrip, found, guest, ipv4_frame, lookup, pinned, stack_with, udp_exchange,
    udp_frame, TcpEcho, TestResolver, UdpEcho, DNS, GUEST_IP, SILENCE, SOON,
};
use simple_dns::{Name, Packet, Question, CLASS, TYPE};
use smoltcp::socket::tcp::State;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpProtocol};

/// A stack pinning `api.test` to 127.0.0.1 with a TCP and a UDP echo
/// server behind it, allowing `example.test` (which the resolver does
/// not know: no public address is ever handed out, so nothing a test
/// here sends can leave the host).
struct Rig {
    stack: NetStack,
    tcp: TcpEcho,
    udp: UdpEcho,
    resolver: TestResolver,
}

impl Rig {
    fn new() -> Self {
        let (tcp, udp) = (TcpEcho::start(), UdpEcho::start());
        let resolver = TestResolver::new(&[]);
        let mut policy = pinned("api.test", &[tcp.port, udp.port]);
        policy.allow("example.test").unwrap();
        let (stack, _) = stack_with(policy, resolver.addrs());
        Rig {
            stack,
            tcp,
            udp,
            resolver,
        }
    }

    /// Whether a fresh guest still gets a lease, resolves the pinned name
    /// and reaches both servers through the stack.
    fn still_serves(&mut self) -> bool {
        let stack = &mut self.stack;
        let mut g = Guest::new();
        if g.dhcp(stack, SOON).is_none() {
            return false;
        }
        if lookup(&mut g, stack, "api.test", TYPE::A) != found(common::host_loopback()) {
            return false;
        }
        let tcp = common::on_host(self.tcp.port);
        let (sock, state) = connect(&mut g, stack, tcp, 45000);
        if state != State::Established || !echo_roundtrip(&mut g, stack, sock, b"alive") {
            return false;
        }
        let udp = common::on_host(self.udp.port);
        let dgram = g.udp_bind(45001);
        udp_exchange(&mut g, stack, dgram, udp, b"alive", SOON).is_some()
    }
}

/// Every frame a guest sends in a session that uses every path of the
/// stack: DHCP, ARP, DNS (pinned, upstream, refused), TCP with data and
/// FIN, UDP, ICMP echo.
fn session_frames(rig: &mut Rig) -> Vec<Vec<u8>> {
    let stack = &mut rig.stack;
    let mut g = Guest::new();
    g.record = true;
    g.dhcp(stack, SOON).unwrap();
    for name in ["api.test", "www.example.test", "evil.test"] {
        lookup(&mut g, stack, name, TYPE::A);
    }
    let tcp = common::on_host(rig.tcp.port);
    let (sock, _) = connect(&mut g, stack, tcp, 40000);
    assert!(echo_roundtrip(&mut g, stack, sock, b"some data"));
    g.tcp(sock).close();
    g.run_until(stack, SOON, |_, s| s.stats().tcp_flows == 0);
    let udp = common::on_host(rig.udp.port);
    let dgram = g.udp_bind(6000);
    assert!(udp_exchange(&mut g, stack, dgram, udp, b"datagram", SOON).is_some());
    let ping = icmp_echo_frame();
    assert_eq!(push(stack, &ping).len(), 1, "no echo reply");
    g.sent.push(ping);
    g.sent
}

/// An ICMP echo request from the guest to the gateway.
fn icmp_echo_frame() -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident: 1,
        seq_no: 1,
        data: b"ping",
    };
    let mut icmp = vec![0; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut icmp[..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    ipv4_frame(GUEST_IP, common::GATEWAY_IP, IpProtocol::Icmp, &icmp)
}

/// A DNS query for `name` as a raw frame from `src`.
fn dns_query_frame(src: SocketAddrV4, name: &str) -> Vec<u8> {
    let mut query = Packet::new_query(9);
    query.questions.push(Question::new(
        Name::new_unchecked(name),
        TYPE::A.into(),
        CLASS::IN.into(),
        false,
    ));
    udp_frame(src, DNS, &query.build_bytes_vec().unwrap())
}

/// Pushes `frame`, lets the stack work, and returns the frames it sent.
fn push(stack: &mut NetStack, frame: &[u8]) -> Vec<Vec<u8>> {
    stack.push_frame(frame);
    stack.poll();
    std::iter::from_fn(|| stack.pop_frame()).collect()
}

#[test]
fn ipv6_frames_are_dropped_and_nothing_goes_out() {
    let mut rig = Rig::new();
    let mut g = guest(&mut rig.stack);
    // UDP to a public resolver, an ICMPv6 echo request, a neighbour
    // solicitation: all from the guest's MAC to the gateway's.
    let google_dns = [
        0x20, 0x01, 0x48, 0x60, 0x48, 0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0x88, 0x88,
    ];
    let mut udp = vec![0xc0, 0x00, 0x00, 0x35, 0x00, 0x10, 0x00, 0x00];
    udp.extend_from_slice(b"\x00\x01\x01\x00\x00\x01\x00\x00");
    let frames = [
        ipv6_frame(17, google_dns, &udp),
        ipv6_frame(58, google_dns, &[128, 0, 0, 0, 0, 1, 0, 1]),
        ipv6_frame(
            58,
            [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2],
            &[135; 24],
        ),
    ];
    let before = rig.stack.stats();
    for frame in &frames {
        assert!(push(&mut rig.stack, frame).is_empty());
    }
    g.run_until(&mut rig.stack, SILENCE, |_, _| false);
    let after = rig.stack.stats();
    assert_eq!(after.dropped - before.dropped, 3);
    assert_eq!(after.frames_out, before.frames_out);
    assert_eq!((after.udp_flows, after.tcp_flows), (0, 0));
    assert!(rig.resolver.asked().is_empty());
}

/// An Ethernet + IPv6 frame from the guest's link-local address.
fn ipv6_frame(next_header: u8, dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&agentvm_net::addr::GATEWAY_MAC.0);
    frame.extend_from_slice(&agentvm_net::addr::GUEST_MAC);
    frame.extend_from_slice(&[0x86, 0xdd]);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&[next_header, 64]);
    frame.extend_from_slice(&[
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56,
    ]);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn frames_from_a_spoofed_source_are_dropped_without_reply() {
    let mut rig = Rig::new();
    let mut g = guest(&mut rig.stack);
    let echo = common::on_host(rig.udp.port);
    let before = rig.stack.stats();
    for src in [
        Ipv4Addr::new(10, 0, 2, 99),
        Ipv4Addr::new(1, 2, 3, 4),
        Ipv4Addr::LOCALHOST,
    ] {
        // A query that would go upstream, one answered locally, a
        // datagram to a server the guest may reach, one it may not.
        let from = SocketAddrV4::new(src, 5353);
        for frame in [
            dns_query_frame(from, "www.example.test"),
            dns_query_frame(from, "api.test"),
            udp_frame(from, echo, b"spoofed"),
            udp_frame(from, SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53), b"x"),
        ] {
            assert!(push(&mut rig.stack, &frame).is_empty(), "from {src}");
        }
    }
    g.run_until(&mut rig.stack, SILENCE, |_, _| false);
    let after = rig.stack.stats();
    assert_eq!(after.dropped - before.dropped, 12);
    assert_eq!(after.frames_out, before.frames_out);
    assert!(rig.resolver.asked().is_empty());
    assert_eq!(rig.udp.received(), 0);
}

#[test]
fn every_truncation_of_a_valid_frame_is_dropped_without_reply() {
    let mut rig = Rig::new();
    let frames = session_frames(&mut rig);
    assert!(frames.len() >= 12, "{}", frames.len());
    let (accepted, received) = (rig.tcp.accepted(), rig.udp.received());
    let mut pushed = 0;
    for frame in &frames {
        for len in 0..frame.len() {
            let before = rig.stack.stats().dropped;
            let out = push(&mut rig.stack, &frame[..len]);
            assert!(out.is_empty(), "{len} of {frame:02x?}");
            assert_eq!(
                rig.stack.stats().dropped,
                before + 1,
                "{len} of {frame:02x?}"
            );
            pushed += 1;
        }
    }
    assert!(pushed > 1000, "{pushed}");
    assert_eq!(rig.tcp.accepted(), accepted);
    assert_eq!(rig.udp.received(), received);
    assert!(rig.still_serves());
}

#[test]
fn oversized_frames_are_dropped_and_ethernet_padding_is_ignored() {
    let mut rig = Rig::new();
    let mut g = guest(&mut rig.stack);
    let query = dns_query_frame(SocketAddrV4::new(GUEST_IP, 5353), "api.test");
    // Padding after the IPv4 packet (as short Ethernet frames carry) is
    // not part of it: the query is answered.
    let mut padded = query.clone();
    padded.extend_from_slice(&[0; 100]);
    assert_eq!(push(&mut rig.stack, &padded).len(), 1);
    // Beyond the largest IPv4 packet: dropped whole, unanswered.
    for extra in [65536 - query.len() + 15, 70000, 1 << 20] {
        let mut big = query.clone();
        big.resize(query.len() + extra, 0xab);
        let before = rig.stack.stats().dropped;
        assert!(push(&mut rig.stack, &big).is_empty(), "{}", big.len());
        assert_eq!(rig.stack.stats().dropped, before + 1);
    }
    g.run_until(&mut rig.stack, SILENCE, |_, _| false);
    assert!(rig.still_serves());
}

/// xorshift64: a fixed, dependency-free pseudo-random sequence.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A corrupted copy of `frame`.
fn mutate(rng: &mut XorShift, frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    match rng.below(6) {
        // Cut short.
        0 => out.truncate(rng.below(frame.len() + 1)),
        // A few bit flips, anywhere.
        1 => {
            for _ in 0..=rng.below(8) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
        }
        // Bit flips in the headers (checksums are not verified, so these
        // reach the deepest parsers).
        2 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(out.len().min(80));
                out[i] ^= 1 << rng.below(8);
            }
        }
        // A run of random bytes.
        3 => {
            let start = rng.below(out.len());
            let end = (start + 1 + rng.below(16)).min(out.len());
            for b in &mut out[start..end] {
                *b = rng.next() as u8;
            }
        }
        // Random bytes appended, sometimes past any packet's size.
        4 => {
            let extra = if rng.below(20) == 0 {
                70_000
            } else {
                rng.below(2000)
            };
            out.extend((0..extra).map(|_| rng.next() as u8));
        }
        // Garbage after a valid Ethernet header.
        _ => {
            out.truncate(14);
            out.extend((0..rng.below(1600)).map(|_| rng.next() as u8));
        }
    }
    out
}

#[test]
fn thousands_of_corrupted_frames_never_panic_and_the_stack_keeps_serving() {
    let mut rig = Rig::new();
    let frames = session_frames(&mut rig);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let before = rig.stack.stats();
    let mut replies = 0;
    for _ in 0..5000 {
        let frame = &frames[rng.below(frames.len())];
        let corrupted = mutate(&mut rng, frame);
        replies += push(&mut rig.stack, &corrupted).len();
    }
    let stats = rig.stack.stats();
    assert_eq!(stats.frames_in - before.frames_in, 5000);
    // Most corruptions are dropped; some still make sense and are answered.
    let dropped = stats.dropped - before.dropped;
    assert!(
        dropped > 1000 && replies > 0,
        "{dropped} dropped, {replies} replies"
    );
    assert!(rig.still_serves());
}

#[test]
fn a_guest_that_floods_without_reading_costs_bounded_memory() {
    let mut rig = Rig::new();
    // A guest that is known (its MAC learnt) first.
    assert!(rig.still_serves());
    // Segments of connections that do not exist: smoltcp answers each with
    // a RST, so while the guest takes nothing the guest-bound queue fills
    // and smoltcp stops taking frames; the stack then drops them.
    let mut segment = vec![0u8; 20];
    segment[0..2].copy_from_slice(&40000u16.to_be_bytes());
    segment[2..4].copy_from_slice(&80u16.to_be_bytes());
    segment[12] = 5 << 4; // header length: 5 words
    segment[13] = 0x10; // ACK
    let frame = common::ipv4_frame(
        common::GUEST_IP,
        Ipv4Addr::new(93, 184, 216, 34),
        IpProtocol::Tcp,
        &segment,
    );
    for _ in 0..20 {
        for _ in 0..1000 {
            rig.stack.push_frame(&frame);
        }
        rig.stack.poll();
    }
    let stats = rig.stack.stats();
    assert!(stats.dropped > 10_000, "{stats:?}");
    let mut queued = 0;
    while rig.stack.pop_frame().is_some() {
        queued += 1;
    }
    assert!(queued <= 1024, "{queued} frames queued for the guest");
    // Once the guest reads again, the stack answers again.
    assert!(Guest::new().dhcp(&mut rig.stack, SOON).is_some());
}
