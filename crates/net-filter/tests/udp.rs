//! Guest UDP beyond DHCP and DNS: a flow to an allowed name's server
//! works both ways on a host socket of its own; a datagram the policy
//! refuses gets ICMP "administratively prohibited" at once and never
//! leaves.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use agentvm_net::{Proto, Verdict};
use common::{
    guest, lookup, on_host, pattern, pinned, prohibited, stack_with, udp_exchange, UdpEcho,
    AT_ONCE, SILENCE, SOON,
};
use simple_dns::TYPE;

#[test]
fn udp_to_a_pinned_names_server_works_both_ways() {
    let server = UdpEcho::start();
    let (mut stack, events) = stack_with(pinned("echo.test", &[server.port]), vec![]);
    let mut g = guest(&mut stack);
    lookup(&mut g, &mut stack, "echo.test", TYPE::A);
    let echo = on_host(server.port);
    let sock = g.udp_bind(6000);
    for (i, len) in [1, 100, 1400, 8000, 60000].into_iter().enumerate() {
        let data = pattern(len, i as u8);
        let reply = udp_exchange(&mut g, &mut stack, sock, echo, &data, SOON);
        assert_eq!(reply, Some((data, echo)), "{len} bytes");
    }
    assert_eq!(server.received(), 5);
    // One flow, judged once.
    assert_eq!(stack.stats().udp_flows, 1);
    let events = events.lock().unwrap();
    let udp: Vec<_> = events.iter().filter(|e| e.proto == Proto::Udp).collect();
    assert_eq!(udp.len(), 1);
    assert_eq!(
        (udp[0].verdict, udp[0].name.as_deref(), udp[0].port),
        (Verdict::Allow, Some("echo.test"), Some(server.port))
    );
}

#[test]
fn udp_to_a_port_the_policy_does_not_allow_is_prohibited_and_never_sent() {
    let allowed = UdpEcho::start();
    let other = UdpEcho::start();
    let (mut stack, _) = stack_with(pinned("echo.test", &[allowed.port]), vec![]);
    let mut g = guest(&mut stack);
    g.record = true;
    lookup(&mut g, &mut stack, "echo.test", TYPE::A);
    let denied = on_host(other.port);
    let sock = g.udp_bind(6000);
    g.udp(sock)
        .send_slice(b"x", (*denied.ip(), denied.port()))
        .unwrap();
    let start = Instant::now();
    assert!(g.run_until(&mut stack, SOON, |g, _| !prohibited(&g.seen).is_empty()));
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    assert_eq!(prohibited(&g.seen), [denied]);
    // Had it been sent, the echo would have answered by now.
    g.run_until(&mut stack, SILENCE, |_, _| false);
    assert_eq!(other.received(), 0);
    assert_eq!(stack.stats().udp_flows, 0);
}

#[test]
fn udp_to_an_address_never_handed_out_is_prohibited_at_once() {
    let (mut stack, events) = stack_with(pinned("echo.test", &[123]), vec![]);
    let mut g = guest(&mut stack);
    g.record = true;
    // NTP to a public address, no DNS first.
    let ntp = SocketAddrV4::new(Ipv4Addr::new(93, 184, 215, 30), 123);
    let sock = g.udp_bind(6000);
    g.udp(sock)
        .send_slice(&[0x23; 48], (*ntp.ip(), 123))
        .unwrap();
    let start = Instant::now();
    assert!(g.run_until(&mut stack, SOON, |g, _| !prohibited(&g.seen).is_empty()));
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    assert_eq!(prohibited(&g.seen), [ntp]);
    assert_eq!(stack.stats().udp_flows, 0);
    let events = events.lock().unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.proto, last.verdict, last.reason.as_str()),
        (
            Proto::Udp,
            Verdict::Deny,
            "address not handed out for an allowed name"
        )
    );
}

#[test]
fn quic_to_a_pinned_address_is_prohibited_so_clients_fall_back_to_tcp() {
    let (mut stack, events) = stack_with(pinned("web.test", &[443]), vec![]);
    let mut g = guest(&mut stack);
    g.record = true;
    let seen = lookup_pinned(&mut g, &mut stack, "web.test");
    let quic = SocketAddrV4::new(seen, 443);
    let sock = g.udp_bind(6001);
    g.udp(sock).send_slice(&[0xc3; 1200], (seen, 443)).unwrap();
    assert!(g.run_until(&mut stack, SOON, |g, _| !prohibited(&g.seen).is_empty()));
    assert_eq!(prohibited(&g.seen), [quic]);
    assert_eq!(stack.stats().udp_flows, 0);
    let events = events.lock().unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.proto, last.verdict, last.reason.as_str()),
        (
            Proto::Udp,
            Verdict::Deny,
            "QUIC (UDP 443) where the server name is checked"
        )
    );
}

/// Looks a pinned name up; the address the guest was given.
fn lookup_pinned(
    g: &mut agentvm_net::testing::Guest,
    stack: &mut agentvm_net::NetStack,
    name: &str,
) -> Ipv4Addr {
    match common::lookup(g, stack, name, simple_dns::TYPE::A) {
        common::Lookup::Answer(_, addrs) => addrs[0],
        other => panic!("{name}: {other:?}"),
    }
}
