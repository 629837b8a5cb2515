//! The egress policy as the guest meets it: only addresses the DNS server
//! handed out for allowed names are reachable (no direct-IP connects),
//! only on allowed ports; host loopback and cloud metadata stay out of
//! reach in every mode; `open` widens names and ports; `off` answers
//! nothing at all.
//!
//! What `open` allows is proven offline as far as it can be: any name is
//! resolved upstream, any port reaches a pinned 127.0.0.1 server, and a
//! UDP flow to an address never handed out is opened (its one datagram
//! goes to 93.184.215.0/24, IANA's example.com block). A TCP connect to a
//! public address would need the internet.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use agentvm_net::{Mode, Policy, Proto, Verdict};
use common::{
    connect, echo_roundtrip, found, guest, host_loopback, lookup, nxdomain, on_host, pinned,
    prohibited, stack_with, TcpEcho, TestResolver, AT_ONCE, SILENCE, SOON,
};
use simple_dns::TYPE;
use smoltcp::socket::tcp::State;

/// An address the test resolver hands out (in IANA's example.com block: public, and nothing there answers the test ports).
const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 7);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

#[test]
fn direct_ip_connect_to_a_pinned_address_is_refused_until_the_name_is_resolved() {
    let server = TcpEcho::start();
    let (mut stack, events) = stack_with(pinned("api.test", &[server.port]), vec![]);
    let mut g = guest(&mut stack);
    let remote = on_host(server.port);
    let start = Instant::now();
    let (_, state) = connect(&mut g, &mut stack, remote, 40000);
    assert_eq!(state, State::Closed);
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    assert_eq!(server.accepted(), 0);
    assert!(events.lock().unwrap().iter().any(|e| e.proto == Proto::Tcp
        && e.verdict == Verdict::Deny
        && e.reason == "host loopback"));
    // The same address once the DNS server handed it out: connected.
    assert_eq!(
        lookup(&mut g, &mut stack, "api.test", TYPE::A),
        found(host_loopback())
    );
    let (sock, state) = connect(&mut g, &mut stack, remote, 40001);
    assert_eq!(state, State::Established);
    assert!(echo_roundtrip(&mut g, &mut stack, sock, b"hello"));
    assert_eq!(server.accepted(), 1);
}

#[test]
fn direct_ip_connect_to_an_allowed_names_address_is_refused_until_the_name_is_resolved() {
    let resolver = TestResolver::new(&[("example.test", PUBLIC)]);
    let mut policy = Policy::new(Mode::Filtered);
    policy.allow("example.test").unwrap();
    let (mut stack, events) = stack_with(policy, resolver.addrs());
    let mut g = guest(&mut stack);
    let remote = SocketAddrV4::new(PUBLIC, 443);
    let (_, state) = connect(&mut g, &mut stack, remote, 40000);
    assert_eq!(state, State::Closed);
    assert_eq!(stack.stats().tcp_flows, 0);
    {
        let events = events.lock().unwrap();
        let last = events.last().unwrap();
        assert_eq!(
            (
                last.proto,
                last.verdict,
                last.reason.as_str(),
                last.name.as_deref()
            ),
            (
                Proto::Tcp,
                Verdict::Deny,
                "address not handed out for an allowed name",
                None
            )
        );
    }
    assert_eq!(
        lookup(&mut g, &mut stack, "example.test", TYPE::A),
        found(PUBLIC)
    );
    // Now the policy lets the SYN through: the stack connects on the host
    // (offline that goes nowhere; the verdict is what this test checks).
    let sock = g.tcp_connect(remote, 40001, 4096);
    assert!(g.run_until(&mut stack, SOON, |_, s| s.stats().tcp_flows == 1));
    g.tcp(sock).abort();
    let events = events.lock().unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.proto, last.verdict, last.name.as_deref(), last.port),
        (Proto::Tcp, Verdict::Allow, Some("example.test"), Some(443))
    );
}

#[test]
fn denied_port_is_refused_at_once_and_never_reaches_the_host() {
    let allowed = TcpEcho::start();
    let other = TcpEcho::start();
    let (mut stack, events) = stack_with(pinned("api.test", &[allowed.port]), vec![]);
    let mut g = guest(&mut stack);
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let start = Instant::now();
    let (_, state) = connect(&mut g, &mut stack, on_host(other.port), 40000);
    assert_eq!(state, State::Closed);
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    assert_eq!(other.accepted(), 0);
    assert!(events.lock().unwrap().iter().any(|e| e.proto == Proto::Tcp
        && e.verdict == Verdict::Deny
        && e.port == Some(other.port)
        && e.reason == "port not allowed"));
    // The allowed port of the same name works.
    let (sock, state) = connect(&mut g, &mut stack, on_host(allowed.port), 40001);
    assert_eq!(state, State::Established);
    assert!(echo_roundtrip(&mut g, &mut stack, sock, b"hi"));
}

#[test]
fn metadata_address_is_refused_at_once_even_in_open_mode_and_when_dns_hands_it_out() {
    let resolver = TestResolver::new(&[("metadata.test", METADATA)]);
    let (mut stack, events) = stack_with(Policy::new(Mode::Open), resolver.addrs());
    let mut g = guest(&mut stack);
    let remote = SocketAddrV4::new(METADATA, 80);
    let start = Instant::now();
    let (_, state) = connect(&mut g, &mut stack, remote, 40000);
    assert_eq!(state, State::Closed);
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    // A name resolving to it (DNS rebinding) does not open it either.
    assert_eq!(
        lookup(&mut g, &mut stack, "metadata.test", TYPE::A),
        found(METADATA)
    );
    let start = Instant::now();
    let (_, state) = connect(&mut g, &mut stack, remote, 40001);
    assert_eq!(state, State::Closed);
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    assert_eq!(stack.stats().tcp_flows, 0);
    let events = events.lock().unwrap();
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.proto == Proto::Tcp)
        .map(|e| (e.verdict, e.reason.as_str(), e.name.as_deref()))
        .collect();
    let why = "link-local or cloud metadata address";
    assert_eq!(
        refusals,
        [
            (Verdict::Deny, why, None),
            (Verdict::Deny, why, Some("metadata.test"))
        ]
    );
}

#[test]
fn open_mode_resolves_any_name_and_reaches_public_addresses_and_pins_on_their_ports() {
    let resolver = TestResolver::new(&[("anything.example", PUBLIC)]);
    let server = TcpEcho::start();
    // A pinned server on a port the `ports` list does not name.
    let mut policy = pinned("api.test", &[80]);
    policy.mode = Mode::Open;
    let (mut stack, events) = stack_with(policy.clone(), resolver.addrs());
    let mut g = guest(&mut stack);
    assert_eq!(
        lookup(&mut g, &mut stack, "anything.example", TYPE::A),
        found(PUBLIC)
    );
    assert_eq!(resolver.asked(), ["anything.example"]);
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let loopback = on_host(server.port);
    // A pin opens only the policy's ports of its address, `open` or not.
    let (_, state) = connect(&mut g, &mut stack, loopback, 39999);
    assert_eq!(state, State::Closed);
    policy.ports.push(server.port);
    stack.handle().set_policy(policy.clone());
    let (sock, state) = connect(&mut g, &mut stack, loopback, 40000);
    assert_eq!(state, State::Established);
    assert!(echo_roundtrip(&mut g, &mut stack, sock, b"open"));
    // An address no name was handed out for: a UDP flow opens (the same
    // datagram in `filtered` mode is prohibited, see tests/udp.rs).
    g.record = true;
    let udp = g.udp_bind(6000);
    let never_resolved = SocketAddrV4::new(Ipv4Addr::new(93, 184, 215, 9), 9);
    g.udp(udp)
        .send_slice(b"discard me", (*never_resolved.ip(), 9))
        .unwrap();
    assert!(g.run_until(&mut stack, SOON, |_, s| s.stats().udp_flows == 1));
    assert!(prohibited(&g.seen).is_empty());
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.proto == Proto::Udp && e.verdict == Verdict::Allow && e.reason == "open mode"));
    // Host loopback without the pin stays refused in `open` mode.
    let (_, state) = connect(
        &mut g,
        &mut stack,
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), server.port),
        40001,
    );
    assert_eq!(state, State::Closed);
    // And the pinned server is refused in `filtered` once its port is
    // out of the list again.
    policy.mode = Mode::Filtered;
    policy.ports = vec![80];
    stack.handle().set_policy(policy);
    let (_, state) = connect(&mut g, &mut stack, loopback, 40002);
    assert_eq!(state, State::Closed);
}

#[test]
fn off_mode_drops_every_frame_no_dhcp_no_dns_no_flows() {
    let resolver = TestResolver::new(&[("example.test", PUBLIC)]);
    let server = TcpEcho::start();
    let mut policy = pinned("api.test", &[server.port]);
    policy.allow("example.test").unwrap();
    // What a guest sends while it gets a lease, looks names up and
    // connects, recorded against a stack that is on (whose port list
    // refuses the connection, so the server sees nothing yet).
    let mut recorded = {
        let mut on = policy.clone();
        on.ports.clear();
        let (mut stack, _) = stack_with(on, vec![]);
        let mut g = agentvm_net::testing::Guest::new();
        g.record = true;
        g.dhcp(&mut stack, SOON).unwrap();
        lookup(&mut g, &mut stack, "api.test", TYPE::A);
        lookup(&mut g, &mut stack, "example.test", TYPE::A);
        let remote = on_host(server.port);
        assert_eq!(connect(&mut g, &mut stack, remote, 40000).1, State::Closed);
        g.sent
    };
    policy.mode = Mode::Off;
    let (mut stack, events) = stack_with(policy, resolver.addrs());
    // A guest asking for a lease hears nothing.
    let mut g = agentvm_net::testing::Guest::new();
    g.record = true;
    assert_eq!(g.dhcp(&mut stack, SILENCE), None);
    recorded.append(&mut g.sent);
    // Nor does one replaying every frame of a working session.
    for frame in &recorded {
        stack.push_frame(frame);
        stack.poll();
    }
    g.run_until(&mut stack, SILENCE, |_, _| false);
    let stats = stack.stats();
    // DHCP discover and request, two ARP requests, two queries, a SYN,
    // and the new guest's discover.
    assert!(recorded.len() >= 8, "{}", recorded.len());
    assert!(stats.frames_in as usize >= recorded.len());
    assert_eq!(stats.frames_out, 0, "{stats:?}");
    assert_eq!(stats.dropped, stats.frames_in, "{stats:?}");
    assert!(g.seen.is_empty());
    assert_eq!(server.accepted(), 0);
    assert!(resolver.asked().is_empty());
    assert!(events.lock().unwrap().is_empty());
    // Turned on, the same stack answers.
    let mut on = pinned("api.test", &[server.port]);
    on.allow("example.test").unwrap();
    stack.handle().set_policy(on);
    let mut g = guest(&mut stack);
    assert_eq!(
        lookup(&mut g, &mut stack, "example.test", TYPE::A),
        found(PUBLIC)
    );
    assert_eq!(
        lookup(&mut g, &mut stack, "other.test", TYPE::A),
        nxdomain()
    );
}
