//! The user-mode network stack with live flows: a smoltcp guest opens TCP
//! connections through the stack to an echo server on the host's loopback
//! (reached through a pin) and sends data, while the fuzzer injects raw
//! Ethernet frames, IPv4 packets with any payload, UDP datagrams, and TCP
//! segments forged on the live flows (their addresses, ports and sequence
//! numbers taken from the guest's own last segment, checksums correct) so
//! that they reach the flows' state machines rather than the checksum
//! check.
#![no_main]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::OnceLock;

use agentvm_net::addr::{DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC};
use agentvm_net::testing::Guest;
use agentvm_net::{Mode, NetStack, Policy, StackConfig};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

/// A DNS query (id 1, recursion desired) for `echo.test`, type A.
const ECHO_QUERY: &[u8] =
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04echo\x04test\x00\x00\x01\x00\x01";
/// Actions per input at most.
const MAX_ACTIONS: usize = 32;
/// Guest TCP connections per input at most.
const MAX_FLOWS: usize = 4;

#[derive(Debug, Arbitrary)]
enum Dst {
    /// The pinned name's address (the host's loopback).
    Pinned,
    /// The gateway.
    Gateway,
    /// The DNS server.
    Dns,
    /// Any address.
    Any([u8; 4]),
}

impl Dst {
    fn ip(&self, pinned: Ipv4Addr) -> Ipv4Addr {
        match self {
            Dst::Pinned => pinned,
            Dst::Gateway => GATEWAY_IP,
            Dst::Dns => DNS_IP,
            Dst::Any(b) => Ipv4Addr::from(*b),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Action {
    /// The guest connects to the echo server (or to a closed port).
    Connect { closed: bool },
    /// The guest sends on its n-th connection.
    Send { which: u8, data: Vec<u8> },
    /// The guest closes (FIN) or aborts (RST) its n-th connection.
    Close { which: u8, abort: bool },
    /// Rounds of frames moving both ways.
    Exchange(u8),
    /// A TCP segment forged on the guest's last segment's flow.
    Segment {
        seq: i16,
        ack: i16,
        control: u8,
        ack_flag: bool,
        window: u16,
        payload: Vec<u8>,
    },
    /// A UDP datagram from the guest.
    Udp {
        dst: Dst,
        port: u16,
        payload: Vec<u8>,
    },
    /// An IPv4 packet from the guest with any protocol and payload.
    Ip { dst: Dst, proto: u8, l4: Vec<u8> },
    /// Any Ethernet frame.
    Raw(Vec<u8>),
    /// A frame the guest sent, with one byte flipped.
    Mutate { which: u8, at: u16, xor: u8 },
}

/// The host's echo server (one thread per connection), started once.
fn echo_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
        let port = listener.local_addr().expect("bound").port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    })
}

/// An Ethernet frame from the guest to the gateway carrying `l4`.
fn ipv4_frame(dst: Ipv4Addr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: 64,
    };
    let mut frame = vec![0; 14 + ip.buffer_len() + l4.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: GATEWAY_MAC,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    packet.payload_mut().copy_from_slice(l4);
    frame
}

/// The (destination, source port, destination port, seq, ack) of the last
/// TCP segment the guest sent.
fn last_segment(sent: &[Vec<u8>]) -> Option<(Ipv4Addr, u16, u16, TcpSeqNumber, TcpSeqNumber)> {
    sent.iter().rev().find_map(|frame| {
        let eth = EthernetFrame::new_checked(&frame[..]).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.next_header() != IpProtocol::Tcp {
            return None;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        let seq = tcp.seq_number() + tcp.payload().len();
        Some((
            ip.dst_addr(),
            tcp.src_port(),
            tcp.dst_port(),
            seq,
            tcp.ack_number(),
        ))
    })
}

/// `n` moved by `by` (either way).
fn shifted(n: TcpSeqNumber, by: i16) -> TcpSeqNumber {
    let distance = usize::from(by.unsigned_abs());
    if by < 0 {
        n - distance
    } else {
        n + distance
    }
}

fn forged(
    sent: &[Vec<u8>],
    (seq, ack, control, ack_flag, window, payload): (i16, i16, u8, bool, u16, &[u8]),
) -> Option<Vec<u8>> {
    let (dst, src_port, dst_port, last_seq, last_ack) = last_segment(sent)?;
    let control = match control % 4 {
        0 => TcpControl::None,
        1 => TcpControl::Syn,
        2 => TcpControl::Fin,
        _ => TcpControl::Rst,
    };
    let repr = TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: shifted(last_seq, seq),
        ack_number: ack_flag.then(|| shifted(last_ack, ack)),
        window_len: window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let mut l4 = vec![0; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut l4[..]),
        &GUEST_IP.into(),
        &dst.into(),
        &ChecksumCapabilities::default(),
    );
    Some(ipv4_frame(dst, IpProtocol::Tcp, &l4))
}

fn udp_frame(dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: 40000,
        dst_port: port,
    };
    let mut l4 = vec![0; udp.header_len() + payload.len()];
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut l4[..]),
        &GUEST_IP.into(),
        &dst.into(),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    ipv4_frame(dst, IpProtocol::Udp, &l4)
}

fuzz_target!(|actions: Vec<Action>| {
    let port = echo_port();
    let mut policy = Policy::new(Mode::Filtered);
    policy
        .pin("echo.test", Ipv4Addr::LOCALHOST)
        .expect("a valid pin");
    policy.ports = vec![port, 9];
    let pinned = policy.pinned("echo.test").expect("pinned");
    let Ok(mut stack) = NetStack::new(StackConfig {
        policy,
        // A resolver nobody answers: nothing the fuzzer asks leaves the host.
        resolvers: vec!["127.0.0.1:9".parse().expect("an address")],
        ..StackConfig::default()
    }) else {
        return;
    };
    let mut guest = Guest::new();
    guest.record = true;
    guest.configure_with(&mut stack);
    // In filtered mode an address is reachable once the stack's DNS
    // server handed it out: look the pin up, as a guest would.
    stack.push_frame(&udp_frame(DNS_IP, 53, ECHO_QUERY));
    stack.poll();
    let mut flows = Vec::new();
    for action in actions.into_iter().take(MAX_ACTIONS) {
        match action {
            Action::Connect { closed } => {
                if flows.len() < MAX_FLOWS {
                    let dst = SocketAddrV4::new(pinned, if closed { 9 } else { port });
                    let local = 45000 + flows.len() as u16;
                    flows.push(guest.tcp_connect(dst, local, 8192));
                }
            }
            Action::Send { which, data } => {
                if let Some(&h) = flows.get(usize::from(which) % flows.len().max(1)) {
                    let _ = guest.tcp(h).send_slice(&data);
                }
            }
            Action::Close { which, abort } => {
                if let Some(&h) = flows.get(usize::from(which) % flows.len().max(1)) {
                    if abort {
                        guest.tcp(h).abort();
                    } else {
                        guest.tcp(h).close();
                    }
                }
            }
            Action::Exchange(rounds) => {
                for _ in 0..rounds % 4 + 1 {
                    guest.exchange(&mut stack);
                }
            }
            Action::Segment {
                seq,
                ack,
                control,
                ack_flag,
                window,
                payload,
            } => {
                let fields = (seq, ack, control, ack_flag, window, &payload[..]);
                if let Some(frame) = forged(&guest.sent, fields) {
                    stack.push_frame(&frame);
                }
            }
            Action::Udp { dst, port, payload } => {
                stack.push_frame(&udp_frame(dst.ip(pinned), port, &payload));
            }
            Action::Ip { dst, proto, l4 } => {
                stack.push_frame(&ipv4_frame(dst.ip(pinned), IpProtocol::from(proto), &l4));
            }
            Action::Raw(frame) => stack.push_frame(&frame),
            Action::Mutate { which, at, xor } => {
                let n = usize::from(which) % guest.sent.len().max(1);
                if let Some(mut frame) = guest.sent.get(n).cloned() {
                    let len = frame.len();
                    if let Some(b) = frame.get_mut(usize::from(at) % len.max(1)) {
                        *b ^= xor;
                    }
                    stack.push_frame(&frame);
                }
            }
        }
        stack.poll();
        // What the stack answered goes to the guest, whose flows live on.
        while let Some(frame) = stack.pop_frame() {
            guest.phy.rx.push_back(frame);
        }
        assert!(stack.stats().tcp_flows <= MAX_FLOWS + MAX_ACTIONS);
    }
});
