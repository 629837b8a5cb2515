//! Guest TCP through the stack to host servers: bulk data both ways,
//! half-close, refusals answered at once.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use agentvm_net::{Mode, Policy, Verdict};
use common::{guest, lookup, stack_with, Lookup};
use simple_dns::{RCODE, TYPE};
use smoltcp::socket::tcp::State;

/// Deterministic payload bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What the guest is given for a name pinned to the host's 127.0.0.1.
const ALIAS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// A policy allowing `api.test`, pinned to 127.0.0.1, on `port`.
fn pinned_policy(port: u16) -> Policy {
    let mut p = Policy::new(Mode::Filtered);
    p.pin("api.test", Ipv4Addr::LOCALHOST).unwrap();
    p.ports = vec![port];
    p
}

#[test]
fn ten_megabytes_each_way_with_half_close() {
    const LEN: usize = 10 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The server reads until the guest half-closes, then answers with its
    // own 10 MB and closes.
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(&pattern(LEN, 7)).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        got
    });
    let (mut stack, events) = stack_with(pinned_policy(port), vec![]);
    let mut g = guest(&mut stack);
    // The guest is given the host loopback's alias; the stack connects to
    // the host's 127.0.0.1 for it.
    assert_eq!(
        lookup(&mut g, &mut stack, "api.test", TYPE::A),
        Lookup::Answer(RCODE::NoError, vec![ALIAS])
    );
    let sock = g.tcp_connect(SocketAddrV4::new(ALIAS, port), 40000, 1 << 20);
    let upload = pattern(LEN, 3);
    let mut sent = 0;
    let mut received = Vec::with_capacity(LEN);
    let done = g.run_until(&mut stack, Duration::from_secs(120), |g, _| {
        let s = g.tcp(sock);
        if sent < LEN && s.can_send() {
            sent += s.send_slice(&upload[sent..]).unwrap();
            if sent == LEN {
                // Half-close: the host sees EOF, the guest still reads.
                s.close();
            }
        }
        while s.can_recv() {
            s.recv(|b| {
                received.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        received.len() == LEN && !s.may_recv()
    });
    assert!(done, "sent {sent}, received {}", received.len());
    assert!(received == pattern(LEN, 7), "download differs");
    let got = server.join().unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got == upload, "upload differs");
    // Both sides closed: the stack lets the connection go.
    assert!(g.run_until(&mut stack, Duration::from_secs(5), |_, s| stack_idle(s)));
    let events = events.lock().unwrap();
    assert!(events.iter().any(|e| e.verdict == Verdict::Allow
        && e.port == Some(port)
        && e.name.as_deref() == Some("api.test")));
}

fn stack_idle(stack: &agentvm_net::NetStack) -> bool {
    stack.stats().tcp_flows == 0
}

#[test]
fn refused_host_connect_resets_the_guest_at_once() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut stack, _) = stack_with(pinned_policy(port), vec![]);
    let mut g = guest(&mut stack);
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let sock = g.tcp_connect(SocketAddrV4::new(ALIAS, port), 40001, 4096);
    let start = Instant::now();
    assert!(g.run_until(&mut stack, Duration::from_secs(5), |g, _| {
        g.tcp(sock).state() == State::Closed
    }));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stack.stats().tcp_flows, 0);
}

#[test]
fn idle_connections_are_left_alone_while_another_moves_data() {
    let echo = common::TcpEcho::start();
    let (mut stack, _) = stack_with(pinned_policy(echo.port), vec![]);
    let mut g = guest(&mut stack);
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let remote = SocketAddrV4::new(ALIAS, echo.port);
    let idle: Vec<_> = (0..20)
        .map(|i| {
            let (sock, state) = common::connect(&mut g, &mut stack, remote, 41000 + i);
            assert_eq!(state, State::Established);
            (41000 + i, sock)
        })
        .collect();
    let (busy, state) = common::connect(&mut g, &mut stack, remote, 42000);
    assert_eq!(state, State::Established);
    // The handshakes' last ACKs are in; from here the idle connections
    // have no frame, no host event and no timer due.
    for _ in 0..10 {
        stack.poll();
    }
    let polls = |stack: &agentvm_net::NetStack| -> Vec<u64> {
        (idle.iter())
            .map(|(port, _)| stack.tcp_socket_polls(*port, remote))
            .collect()
    };
    let before = polls(&stack);
    assert!(before.iter().all(|&n| n > 0), "{before:?}");
    let busy_before = stack.tcp_socket_polls(42000, remote);
    assert!(common::echo_roundtrip(
        &mut g,
        &mut stack,
        busy,
        &pattern(512 << 10, 5)
    ));
    assert!(stack.tcp_socket_polls(42000, remote) > busy_before + 10);
    assert_eq!(polls(&stack), before, "idle connections were polled");
    // A segment for one idle connection (here: its data) runs smoltcp for
    // that one only; it still works.
    let (first_port, first) = idle[0];
    assert!(common::echo_roundtrip(
        &mut g,
        &mut stack,
        first,
        b"still here"
    ));
    let after = polls(&stack);
    assert!(after[0] > before[0]);
    assert_eq!(
        after[1..],
        before[1..],
        "other idle connections were polled"
    );
    assert_eq!(stack.tcp_socket_polls(first_port, remote), after[0]);
}
