//! The network a guest finds: a DHCP lease with slirp's addresses, the
//! gateway and DNS addresses answering ping, nothing else answering.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::Ipv4Addr;

use agentvm_net::testing::Guest;
use agentvm_net::{Mode, NetStack, Policy};
use common::{guest, stack_with, SILENCE, SOON};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{dhcpv4, icmp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress};

#[test]
fn dhcp_leases_the_guest_address_with_gateway_and_dns_server() {
    let (mut stack, _) = stack_with(Policy::new(Mode::Filtered), vec![]);
    let mut g = Guest::new();
    let handle = g.sockets.add(dhcpv4::Socket::new());
    let mut lease = None;
    let got = g.run_until(&mut stack, SOON, |g, _| {
        if let Some(dhcpv4::Event::Configured(c)) =
            g.sockets.get_mut::<dhcpv4::Socket>(handle).poll()
        {
            lease = Some((
                c.address,
                c.router,
                c.dns_servers.to_vec(),
                c.server.address,
            ));
        }
        lease.is_some()
    });
    assert!(got, "no lease");
    let (address, router, dns, server) = lease.unwrap();
    assert_eq!(address.to_string(), "10.0.2.15/24");
    assert_eq!(router, Some(Ipv4Addr::new(10, 0, 2, 2)));
    assert_eq!(dns, [Ipv4Addr::new(10, 0, 2, 3)]);
    assert_eq!(server, Ipv4Addr::new(10, 0, 2, 2));
}

/// An ICMP socket for echo requests with identifier `ident`.
fn pinger(g: &mut Guest, ident: u16) -> SocketHandle {
    let buffer = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let mut socket = icmp::Socket::new(buffer(), buffer());
    socket.bind(icmp::Endpoint::Ident(ident)).unwrap();
    g.sockets.add(socket)
}

/// Sends one echo request to `to`; the echo reply that came back (its
/// sequence number and data) within `timeout`, if any.
fn ping(
    g: &mut Guest,
    stack: &mut NetStack,
    to: Ipv4Addr,
    seq_no: u16,
    timeout: std::time::Duration,
) -> Option<(u16, Vec<u8>)> {
    const IDENT: u16 = 0x2a2a;
    let sock = pinger(g, IDENT);
    let data = format!("ping {seq_no}").into_bytes();
    let request = Icmpv4Repr::EchoRequest {
        ident: IDENT,
        seq_no,
        data: &data,
    };
    let mut bytes = vec![0; request.buffer_len()];
    request.emit(
        &mut Icmpv4Packet::new_unchecked(&mut bytes[..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    let socket = g.sockets.get_mut::<icmp::Socket>(sock);
    socket.send_slice(&bytes, IpAddress::Ipv4(to)).unwrap();
    let mut reply = None;
    g.run_until(stack, timeout, |g, _| {
        let socket = g.sockets.get_mut::<icmp::Socket>(sock);
        if let Ok((payload, IpAddress::Ipv4(from))) = socket.recv() {
            let packet = Icmpv4Packet::new_checked(payload).unwrap();
            let caps = smoltcp::phy::ChecksumCapabilities::default();
            if let Ok(Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            }) = Icmpv4Repr::parse(&packet, &caps)
            {
                if from == to && ident == IDENT {
                    reply = Some((seq_no, data.to_vec()));
                }
            }
        }
        reply.is_some()
    });
    g.sockets.remove(sock);
    reply
}

#[test]
fn ping_to_the_gateway_and_the_dns_address_is_answered() {
    let (mut stack, _) = stack_with(Policy::new(Mode::Filtered), vec![]);
    let mut g = guest(&mut stack);
    for (seq, to) in [
        (1, Ipv4Addr::new(10, 0, 2, 2)),
        (2, Ipv4Addr::new(10, 0, 2, 3)),
    ] {
        assert_eq!(
            ping(&mut g, &mut stack, to, seq, SOON),
            Some((seq, format!("ping {seq}").into_bytes())),
            "{to}"
        );
    }
}

#[test]
fn ping_to_any_other_address_gets_no_reply_even_in_open_mode() {
    let (mut stack, _) = stack_with(Policy::new(Mode::Open), vec![]);
    let mut g = guest(&mut stack);
    let before = stack.stats();
    for to in [
        Ipv4Addr::new(8, 8, 8, 8),
        Ipv4Addr::new(10, 0, 2, 4),
        Ipv4Addr::new(1, 1, 1, 1),
    ] {
        assert_eq!(ping(&mut g, &mut stack, to, 1, SILENCE), None, "{to}");
    }
    let after = stack.stats();
    // Three echo requests (and the ARP requests for 10.0.2.4, which the
    // stack does not answer either).
    assert!(after.dropped - before.dropped >= 3, "{after:?}");
    assert_eq!(after.frames_out, before.frames_out, "{after:?}");
}
