//! Host→guest port forwards: a host connection to the forward's port is
//! spliced to the listening guest (from 10.0.2.2), data flows both ways,
//! and taking the forward out of the policy closes its listener and its
//! connections.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};

use agentvm_net::testing::Guest;
use agentvm_net::{Forward, Mode, NetStack, Policy, Proto, Verdict};
use common::{free_port, guest, stack_with, Events, GATEWAY_IP, GUEST_IP, SOON};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::wire::IpAddress;

const GUEST_PORT: u16 = 8080;

/// A stack forwarding 127.0.0.1:<free port> to guest port 8080, and the
/// host port.
fn forwarding() -> (NetStack, Events, Policy, u16) {
    let port = free_port();
    let mut policy = Policy::new(Mode::Filtered);
    policy.forwards.push(Forward {
        host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        guest_port: GUEST_PORT,
    });
    let (stack, events) = stack_with(policy.clone(), vec![]);
    (stack, events, policy, port)
}

/// Reads what `host` (non-blocking) has: `Some(bytes)` (empty at EOF or
/// reset), `None` when nothing is there yet.
fn host_read(host: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = [0; 4096];
    match host.read(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(_) => Some(Vec::new()),
    }
}

/// Connects to the forward, sends a greeting and waits until the guest
/// socket `listen` has it; returns the host end.
fn open(g: &mut Guest, stack: &mut NetStack, listen: SocketHandle, port: u16) -> TcpStream {
    let mut host = TcpStream::connect(("127.0.0.1", port)).unwrap();
    host.write_all(b"hello guest").unwrap();
    host.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let arrived = g.run_until(stack, SOON, |g, _| {
        let s = g.tcp(listen);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got.len() >= 11
    });
    assert!(arrived, "guest got {got:?}");
    assert_eq!(got, b"hello guest");
    host
}

#[test]
fn forward_splices_a_host_connection_to_the_listening_guest_both_ways() {
    let (mut stack, events, _, port) = forwarding();
    let mut g = guest(&mut stack);
    let listen = g.tcp_listen(GUEST_PORT, 64 << 10);
    let mut host = open(&mut g, &mut stack, listen, port);
    let remote = g.tcp(listen).remote_endpoint().unwrap();
    assert_eq!(remote.addr, IpAddress::Ipv4(GATEWAY_IP));
    g.tcp(listen).send_slice(b"hello host").unwrap();
    let mut got = Vec::new();
    assert!(g.run_until(&mut stack, SOON, |_, _| {
        if let Some(b) = host_read(&mut host) {
            got.extend(b);
        }
        got.len() >= 10
    }));
    assert_eq!(got, b"hello host");
    let events = events.lock().unwrap();
    assert!(events.iter().any(|e| e.proto == Proto::Forward
        && e.verdict == Verdict::Allow
        && e.ip == Some(GUEST_IP.into())
        && e.port == Some(GUEST_PORT)));
}

#[test]
fn removing_the_forward_closes_its_listener_and_resets_its_connections() {
    let (mut stack, events, mut policy, port) = forwarding();
    let mut g = guest(&mut stack);
    g.record = true;
    let listen = g.tcp_listen(GUEST_PORT, 64 << 10);
    let mut host = open(&mut g, &mut stack, listen, port);
    assert_eq!(g.tcp(listen).state(), State::Established);

    policy.forwards.clear();
    stack.handle().set_policy(policy);
    assert!(g.run_until(&mut stack, SOON, |g, _| g.tcp(listen).state()
        == State::Closed));
    assert_eq!(stack.stats().tcp_flows, 0);
    // The host end is closed too.
    let mut ended = false;
    assert!(g.run_until(&mut stack, SOON, |_, _| {
        ended |= host_read(&mut host).is_some_and(|b| b.is_empty());
        ended
    }));
    // And nothing listens any more.
    let refused = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    let events = events.lock().unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (
            last.proto,
            last.verdict,
            last.reason.as_str(),
            last.ip,
            last.port
        ),
        (
            Proto::Forward,
            Verdict::Deny,
            "port forward removed",
            Some(GUEST_IP.into()),
            Some(GUEST_PORT)
        ),
        "{last:?}"
    );
}

#[test]
fn forward_to_a_guest_port_nobody_listens_on_closes_the_host_connection() {
    let (mut stack, events, _, port) = forwarding();
    let mut g = guest(&mut stack);
    let mut host = TcpStream::connect(("127.0.0.1", port)).unwrap();
    host.set_nonblocking(true).unwrap();
    let mut ended = false;
    assert!(g.run_until(&mut stack, SOON, |_, _| {
        ended |= host_read(&mut host).is_some_and(|b| b.is_empty());
        ended
    }));
    assert!(g.run_until(&mut stack, SOON, |_, s| s.stats().tcp_flows == 0));
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.proto == Proto::Forward));
}
