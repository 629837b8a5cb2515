//! Replacing the policy of a running stack ([`agentvm_net::NetHandle`]):
//! flows the new policy still allows carry on untouched, flows it no
//! longer allows are reset (TCP) or dropped (UDP), and names it denies
//! stop resolving at once.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use agentvm_net::{Proto, Verdict};
use common::{
    connect, echo_roundtrip, found, guest, host_loopback, lookup, nxdomain, on_host, pinned,
    prohibited, stack_with, udp_exchange, udp_frame, TcpEcho, TestResolver, UdpEcho, AT_ONCE, DNS,
    GUEST_IP, SILENCE, SOON,
};
use simple_dns::{Name, Packet, Question, CLASS, TYPE};
use smoltcp::socket::tcp::State;

/// An address the test resolver hands out (in IANA's example.com block: public, and nothing there answers the test ports).
const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 20);

#[test]
fn unrelated_changes_keep_open_tcp_and_udp_flows_transferring() {
    let tcp = TcpEcho::start();
    let udp = UdpEcho::start();
    let mut policy = pinned("api.test", &[tcp.port, udp.port]);
    policy.allow("unrelated.test").unwrap();
    let (mut stack, events) = stack_with(policy.clone(), vec![]);
    let handle = stack.handle();
    let mut g = guest(&mut stack);
    g.record = true;
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let (conn, state) = connect(&mut g, &mut stack, on_host(tcp.port), 40000);
    assert_eq!(state, State::Established);
    let dgram = g.udp_bind(6000);
    let echo = on_host(udp.port);
    assert!(echo_roundtrip(&mut g, &mut stack, conn, b"before"));
    assert!(udp_exchange(&mut g, &mut stack, dgram, echo, b"before", SOON).is_some());

    let mut changes = Vec::new();
    let mut p = policy.clone();
    p.allow("added.test").unwrap();
    changes.push(p.clone());
    p.deny("unrelated.test").unwrap();
    changes.push(p.clone());
    p.pin("other.test", Ipv4Addr::new(127, 0, 0, 9)).unwrap();
    p.ports.push(8443);
    changes.push(p);
    for (i, p) in changes.into_iter().enumerate() {
        handle.set_policy(p);
        let data = format!("after change {i}").into_bytes();
        assert!(
            echo_roundtrip(&mut g, &mut stack, conn, &data),
            "tcp, change {i}"
        );
        let reply = udp_exchange(&mut g, &mut stack, dgram, echo, &data, SOON);
        assert_eq!(reply, Some((data, echo)), "udp, change {i}");
    }
    assert_eq!(g.tcp(conn).state(), State::Established);
    assert_eq!((stack.stats().tcp_flows, stack.stats().udp_flows), (1, 1));
    assert!(common::resets(&g.seen).is_empty());
    assert_eq!(tcp.accepted(), 1);
    assert_eq!(tcp.closed(), 0);
    assert!(!events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.verdict == Verdict::Deny));
}

#[test]
fn removing_the_pin_resets_its_open_connection_at_once() {
    let server = TcpEcho::start();
    let policy = pinned("api.test", &[server.port]);
    let (mut stack, events) = stack_with(policy.clone(), vec![]);
    let mut g = guest(&mut stack);
    g.record = true;
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let remote = on_host(server.port);
    let (conn, state) = connect(&mut g, &mut stack, remote, 40000);
    assert_eq!(state, State::Established);
    assert!(echo_roundtrip(&mut g, &mut stack, conn, b"hello"));

    let mut unpinned = policy;
    unpinned.hosts.clear();
    stack.handle().set_policy(unpinned);
    let start = Instant::now();
    assert!(g.run_until(&mut stack, SOON, |g, _| g.tcp(conn).state()
        == State::Closed));
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    assert_eq!(common::resets(&g.seen), [remote]);
    assert!(g.run_until(&mut stack, SOON, |_, _| server.closed() == 1));
    assert_eq!(stack.stats().tcp_flows, 0);
    assert!(events.lock().unwrap().iter().any(|e| e.proto == Proto::Tcp
        && e.verdict == Verdict::Deny
        && e.ip == Some(host_loopback().into())
        && e.port == Some(server.port)));
    // The name is gone too, and so is the address.
    assert_eq!(lookup(&mut g, &mut stack, "api.test", TYPE::A), nxdomain());
    let (_, state) = connect(&mut g, &mut stack, remote, 40001);
    assert_eq!(state, State::Closed);
    assert_eq!(server.accepted(), 1);
}

#[test]
fn removing_the_pin_resets_a_connection_still_connecting_at_once() {
    // A listener whose accept queue is full: the host connect hangs (its
    // SYNs are dropped), so the guest's SYN stays parked.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket_ipv4().unwrap();
    let fillers: Vec<socket2::Socket> = (0..4)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            s
        })
        .collect();
    let policy = pinned("api.test", &[addr.port()]);
    let (mut stack, _) = stack_with(policy.clone(), vec![]);
    let mut g = guest(&mut stack);
    g.record = true;
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let remote = on_host(addr.port());
    let conn = g.tcp_connect(remote, 40000, 4096);
    g.run_until(&mut stack, SILENCE, |_, _| false);
    assert_eq!(g.tcp(conn).state(), State::SynSent);
    assert_eq!(stack.stats().tcp_flows, 1);

    let mut unpinned = policy;
    unpinned.hosts.clear();
    stack.handle().set_policy(unpinned);
    let start = Instant::now();
    assert!(g.run_until(&mut stack, SOON, |g, _| g.tcp(conn).state()
        == State::Closed));
    // At once, not when the guest retransmits its SYN.
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    assert_eq!(common::resets(&g.seen), [remote]);
    assert_eq!(stack.stats().tcp_flows, 0);
    drop(fillers);
}

#[test]
fn removing_the_domain_drops_its_udp_flow_and_prohibits_the_next_datagram() {
    let resolver = TestResolver::new(&[("udp.test", PUBLIC)]);
    let mut policy = agentvm_net::Policy::new(agentvm_net::Mode::Filtered);
    policy.allow("udp.test").unwrap();
    policy.ports = vec![5000];
    let (mut stack, _) = stack_with(policy.clone(), resolver.addrs());
    let mut g = guest(&mut stack);
    g.record = true;
    assert_eq!(
        lookup(&mut g, &mut stack, "udp.test", TYPE::A),
        found(PUBLIC)
    );
    // One datagram to a documentation address opens the flow (nothing
    // answers offline; the flow's host socket is what this checks).
    let remote = SocketAddrV4::new(PUBLIC, 5000);
    let sock = g.udp_bind(6000);
    g.udp(sock).send_slice(b"first", (PUBLIC, 5000)).unwrap();
    assert!(g.run_until(&mut stack, SOON, |_, s| s.stats().udp_flows == 1));
    assert!(prohibited(&g.seen).is_empty());

    let mut without = policy;
    without.deny("udp.test").unwrap();
    stack.handle().set_policy(without);
    g.udp(sock).send_slice(b"second", (PUBLIC, 5000)).unwrap();
    assert!(g.run_until(&mut stack, SOON, |g, _| !prohibited(&g.seen).is_empty()));
    assert_eq!(prohibited(&g.seen), [remote]);
    assert_eq!(stack.stats().udp_flows, 0);
    assert_eq!(lookup(&mut g, &mut stack, "udp.test", TYPE::A), nxdomain());
    assert_eq!(resolver.asked(), ["udp.test"]);
}

#[test]
fn pinning_the_name_elsewhere_drops_the_flows_to_its_old_address() {
    let resolver = TestResolver::new(&[("udp.test", PUBLIC)]);
    let mut policy = agentvm_net::Policy::new(agentvm_net::Mode::Filtered);
    policy.allow("udp.test").unwrap();
    policy.ports = vec![5000];
    let (mut stack, _) = stack_with(policy.clone(), resolver.addrs());
    let mut g = guest(&mut stack);
    lookup(&mut g, &mut stack, "udp.test", TYPE::A);
    let sock = g.udp_bind(6000);
    g.udp(sock).send_slice(b"first", (PUBLIC, 5000)).unwrap();
    assert!(g.run_until(&mut stack, SOON, |_, s| s.stats().udp_flows == 1));
    let mut repinned = policy;
    repinned
        .pin("udp.test", Ipv4Addr::new(93, 184, 215, 21))
        .unwrap();
    stack.handle().set_policy(repinned);
    assert!(g.run_until(&mut stack, SOON, |_, s| s.stats().udp_flows == 0));
}

#[test]
fn switching_to_off_resets_every_flow_and_closes_the_forwards() {
    let tcp = TcpEcho::start();
    let udp = UdpEcho::start();
    let forward_port = common::free_port();
    let mut policy = pinned("api.test", &[tcp.port, udp.port]);
    policy.forwards.push(agentvm_net::Forward {
        host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, forward_port),
        guest_port: 8080,
    });
    let (mut stack, _) = stack_with(policy.clone(), vec![]);
    let mut g = guest(&mut stack);
    g.record = true;
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let remote = on_host(tcp.port);
    let (conn, state) = connect(&mut g, &mut stack, remote, 40000);
    assert_eq!(state, State::Established);
    let dgram = g.udp_bind(6000);
    let echo = on_host(udp.port);
    assert!(udp_exchange(&mut g, &mut stack, dgram, echo, b"on", SOON).is_some());
    assert!(std::net::TcpStream::connect(("127.0.0.1", forward_port)).is_ok());

    policy.mode = agentvm_net::Mode::Off;
    stack.handle().set_policy(policy);
    assert!(g.run_until(&mut stack, SOON, |g, _| g.tcp(conn).state()
        == State::Closed));
    assert_eq!(common::resets(&g.seen), [remote]);
    assert!(g.run_until(&mut stack, SOON, |_, s| s.stats().tcp_flows == 0));
    assert_eq!(stack.stats().udp_flows, 0);
    let refused = std::net::TcpStream::connect(("127.0.0.1", forward_port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // The next datagram goes nowhere, not even an ICMP error back.
    let received = udp.received();
    assert_eq!(
        udp_exchange(&mut g, &mut stack, dgram, echo, b"off", SILENCE),
        None
    );
    assert_eq!(udp.received(), received);
    assert!(prohibited(&g.seen).is_empty());
}

#[test]
fn a_name_denied_by_a_new_policy_is_not_forwarded_even_before_the_next_poll() {
    let resolver = TestResolver::new(&[("example.test", PUBLIC)]);
    let mut policy = agentvm_net::Policy::new(agentvm_net::Mode::Filtered);
    policy.allow("example.test").unwrap();
    let (mut stack, _) = stack_with(policy.clone(), resolver.addrs());
    let mut g = guest(&mut stack);
    assert_eq!(
        lookup(&mut g, &mut stack, "example.test", TYPE::A),
        found(PUBLIC)
    );
    let mut query = Packet::new_query(7);
    query.questions.push(Question::new(
        Name::new_unchecked("example.test"),
        TYPE::A.into(),
        CLASS::IN.into(),
        false,
    ));
    let frame = udp_frame(
        SocketAddrV4::new(GUEST_IP, 5353),
        DNS,
        &query.build_bytes_vec().unwrap(),
    );
    policy.deny("example.test").unwrap();
    stack.handle().set_policy(policy);
    // The query arrives before the stack polled (its event loop may not
    // have woken yet): the new policy decides it all the same.
    stack.push_frame(&frame);
    g.run_until(&mut stack, SILENCE, |_, _| false);
    assert_eq!(resolver.asked(), ["example.test"]);
}

#[test]
fn an_unrelated_change_keeps_a_connection_the_dns_table_no_longer_names() {
    // The DNS server remembers at most 8 names per address: eight more
    // names answered with the pinned address push the pin's entry out.
    // The connection opened by the pin is still allowed by it.
    let cdn: Vec<String> = (0..8).map(|i| format!("n{i}.cdn.test")).collect();
    let records: Vec<(&str, Ipv4Addr)> =
        cdn.iter().map(|n| (n.as_str(), host_loopback())).collect();
    let resolver = TestResolver::new(&records);
    let server = TcpEcho::start();
    let mut policy = pinned("api.test", &[server.port]);
    policy.allow("cdn.test").unwrap();
    let (mut stack, _) = stack_with(policy.clone(), resolver.addrs());
    let mut g = guest(&mut stack);
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let remote = on_host(server.port);
    let (conn, state) = connect(&mut g, &mut stack, remote, 40000);
    assert_eq!(state, State::Established);
    for name in &cdn {
        assert_eq!(
            lookup(&mut g, &mut stack, name, TYPE::A),
            found(host_loopback())
        );
    }
    let mut unrelated = policy;
    unrelated.allow("unrelated.test").unwrap();
    stack.handle().set_policy(unrelated);
    assert!(echo_roundtrip(&mut g, &mut stack, conn, b"still here"));
    assert_eq!(g.tcp(conn).state(), State::Established);
}

#[test]
fn an_unrelated_change_keeps_a_connection_whose_dns_answer_expired() {
    let server = TcpEcho::start();
    let policy = pinned("api.test", &[server.port]);
    let (mut stack, _) = stack_with(policy.clone(), vec![]);
    let mut g = guest(&mut stack);
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let remote = on_host(server.port);
    let (conn, state) = connect(&mut g, &mut stack, remote, 40000);
    assert_eq!(state, State::Established);
    assert!(echo_roundtrip(&mut g, &mut stack, conn, b"before"));
    // A long transfer outlives the answer the guest connected by.
    std::thread::sleep(std::time::Duration::from_secs(61));
    g.run_until(&mut stack, SILENCE, |_, _| false);
    let mut unrelated = policy;
    unrelated.allow("unrelated.test").unwrap();
    stack.handle().set_policy(unrelated);
    assert!(echo_roundtrip(&mut g, &mut stack, conn, b"after"));
    assert_eq!(g.tcp(conn).state(), State::Established);
}
