//! Flows held at their first bytes: a connection to port 443 or 80 that
//! the policy allowed for a name passes only when its TLS ClientHello's
//! server name or its HTTP `Host` is a name pinned to (or handed out for)
//! the address; otherwise the guest gets a RST, the server gets none of
//! its bytes, and the audit log says why. Whatever the guest sends, the
//! decision comes within 16 KiB and 10 s, and an allowed flow streams as
//! any other.
//!
//! The servers listen on ports 443 and 80 of 127.0.44.N (a pinned host
//! loopback address, so no internet is needed): binding them needs root
//! or CAP_NET_BIND_SERVICE, which the test machine and CI have.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use agentvm_net::peek::tls::build::{client_hello, hello, records, sni};
use agentvm_net::peek::PEEK_TIMEOUT;
use agentvm_net::testing::Guest;
use agentvm_net::{Mode, NetStack, Policy, Proto, Verdict};
use common::{found, guest, lookup, pattern, stack_with, Events, TcpEcho, SOON};
use simple_dns::TYPE;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

/// A stack whose `web.test` is pinned to a server on 127.0.44.`n`:`port`
/// (in `mode`), the guest having looked the name up.
fn pinned_server(n: u8, port: u16, mode: Mode) -> (NetStack, Events, Guest, TcpEcho, SocketAddrV4) {
    let host = Ipv4Addr::new(127, 0, 44, n);
    let server = TcpEcho::start_on(SocketAddrV4::new(host, port));
    let mut policy = Policy::new(mode);
    policy.pin("web.test", host).unwrap();
    policy
        .pin("other.test", Ipv4Addr::new(127, 0, 45, n))
        .unwrap();
    let (mut stack, events) = stack_with(policy, vec![]);
    let mut g = guest(&mut stack);
    let seen = Ipv4Addr::new(198, 18, 44, n);
    assert_eq!(lookup(&mut g, &mut stack, "web.test", TYPE::A), found(seen));
    (stack, events, g, server, SocketAddrV4::new(seen, port))
}

/// What became of one connection.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Everything sent came back from the echo server.
    Echoed,
    /// Reset before anything came back.
    Reset,
}

/// Connects, sends `chunks` one by one (the stack running between them,
/// so each is its own segment), and waits for the echo of all of them or
/// a reset.
fn send(
    g: &mut Guest,
    stack: &mut NetStack,
    remote: SocketAddrV4,
    port: u16,
    chunks: &[&[u8]],
) -> Outcome {
    let sock = g.tcp_connect(remote, port, 512 << 10);
    g.run_until(stack, SOON, |g, _| {
        g.tcp(sock).state() == State::Established
    });
    assert_eq!(
        g.tcp(sock).state(),
        State::Established,
        "connect to {remote}"
    );
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut got = 0;
    for chunk in chunks {
        let mut sent = 0;
        g.run_until(stack, SOON, |g, _| {
            let s = g.tcp(sock);
            if s.can_send() {
                sent += s.send_slice(&chunk[sent..]).unwrap_or(0);
            }
            got += drain(g, sock);
            sent == chunk.len() || !g.tcp(sock).is_open()
        });
        // Let the segment leave on its own before the next one.
        g.run_until(stack, Duration::from_millis(30), |_, _| false);
    }
    g.run_until(stack, SOON, |g, _| {
        got += drain(g, sock);
        got >= total || !g.tcp(sock).is_open()
    });
    match (got, g.tcp(sock).state()) {
        (n, _) if n == total => Outcome::Echoed,
        (0, State::Closed) => Outcome::Reset,
        (n, state) => panic!("{n} of {total} bytes back, socket {state}"),
    }
}

fn drain(g: &mut Guest, sock: SocketHandle) -> usize {
    let s = g.tcp(sock);
    let mut n = 0;
    while s.can_recv() {
        n += s.recv(|b| (b.len(), b.len())).unwrap_or(0);
    }
    n
}

/// The reason of the last TCP decision recorded.
fn last_tcp(events: &Events) -> (Verdict, String, Option<String>) {
    let events = events.lock().unwrap();
    let e = events.iter().rev().find(|e| e.proto == Proto::Tcp).unwrap();
    (e.verdict, e.reason.clone(), e.name.clone())
}

#[test]
fn tls_flows_pass_only_with_the_pinned_server_name() {
    let (mut stack, events, mut g, server, remote) = pinned_server(1, 443, Mode::Open);
    let web = client_hello("web.test");
    let mut web_then_data = web.clone();
    web_then_data.extend(pattern(300 << 10, 7));
    let alpn_only = records(&hello(&[(16, vec![0, 3, 2, b'h', b'2'])]), 1 << 14);
    let padded = hello(&[(21, vec![0; 20 << 10]), sni(&[b"web.test"])]);
    let oversized = records(&padded, 1 << 14);
    let (a, b) = web.split_at(9);
    let (b, c) = b.split_at(20);
    type Case<'a> = (&'a str, Vec<&'a [u8]>, Outcome, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "allowed, then 300 KiB",
            vec![&web_then_data],
            Outcome::Echoed,
            None,
        ),
        (
            "mismatched",
            vec![client_hello("evil.test").leak()],
            Outcome::Reset,
            Some("server name not pinned to this address"),
        ),
        (
            "pinned elsewhere",
            vec![client_hello("other.test").leak()],
            Outcome::Reset,
            Some("server name pinned to another address"),
        ),
        ("absent", vec![&alpn_only], Outcome::Echoed, None),
        (
            "split across segments",
            vec![a, b, c],
            Outcome::Echoed,
            None,
        ),
        (
            "oversized",
            vec![&oversized],
            Outcome::Reset,
            Some("first message over 16 KiB"),
        ),
        (
            "malformed",
            vec![b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"],
            Outcome::Reset,
            Some("not a TLS handshake"),
        ),
    ];
    for (i, (what, chunks, want, reason)) in cases.into_iter().enumerate() {
        let before = server.received();
        let outcome = send(&mut g, &mut stack, remote, 40000 + i as u16, &chunks);
        assert_eq!(outcome, want, "{what}");
        if let Some(reason) = reason {
            assert_eq!(
                server.received(),
                before,
                "{what}: bytes reached the server"
            );
            let (verdict, why, _) = last_tcp(&events);
            assert_eq!((verdict, why.as_str()), (Verdict::Deny, reason), "{what}");
        }
    }
    // The three allowed flows stay open; the refused ones are gone.
    stack.poll();
    assert_eq!(stack.stats().tcp_flows, 3);
}

#[test]
fn http_flows_pass_only_with_the_pinned_host() {
    let (mut stack, events, mut g, server, remote) = pinned_server(2, 80, Mode::Filtered);
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: web.test\r\nX: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    type Case<'a> = (&'a str, Vec<&'a [u8]>, Outcome, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "allowed",
            vec![b"GET / HTTP/1.1\r\nHost: Web.Test:80\r\n\r\n"],
            Outcome::Echoed,
            None,
        ),
        (
            "mismatched",
            vec![b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"],
            Outcome::Reset,
            Some("server name not pinned to this address"),
        ),
        (
            "absolute target",
            vec![b"GET http://evil.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n"],
            Outcome::Reset,
            Some("request target and Host name different hosts"),
        ),
        (
            "two hosts",
            vec![b"GET / HTTP/1.1\r\nHost: web.test\r\nHost: evil.test\r\n\r\n"],
            Outcome::Reset,
            Some("two Host headers"),
        ),
        (
            "absent",
            vec![b"GET / HTTP/1.0\r\n\r\n"],
            Outcome::Echoed,
            None,
        ),
        (
            "split across segments",
            vec![b"GET / HTTP/1.1\r\nHo", b"st: web.te", b"st\r\n\r\nbody"],
            Outcome::Echoed,
            None,
        ),
        (
            "oversized",
            vec![long_header.as_bytes()],
            Outcome::Reset,
            Some("first message over 16 KiB"),
        ),
        (
            "malformed",
            vec![client_hello("web.test").leak()],
            Outcome::Reset,
            Some("not an HTTP/1 request"),
        ),
    ];
    for (i, (what, chunks, want, reason)) in cases.into_iter().enumerate() {
        let before = server.received();
        let outcome = send(&mut g, &mut stack, remote, 41000 + i as u16, &chunks);
        assert_eq!(outcome, want, "{what}");
        if let Some(reason) = reason {
            assert_eq!(
                server.received(),
                before,
                "{what}: bytes reached the server"
            );
            let (verdict, why, _) = last_tcp(&events);
            assert_eq!((verdict, why.as_str()), (Verdict::Deny, reason), "{what}");
        }
    }
}

#[test]
fn a_first_message_that_never_completes_is_reset_at_the_timeout() {
    let (mut stack, events, mut g, server, remote) = pinned_server(3, 443, Mode::Open);
    let hello = client_hello("web.test");
    let sock = g.tcp_connect(remote, 42000, 64 << 10);
    g.run_until(&mut stack, SOON, |g, _| {
        g.tcp(sock).state() == State::Established
    });
    g.tcp(sock).send_slice(&hello[..hello.len() / 2]).unwrap();
    let start = Instant::now();
    let limit = PEEK_TIMEOUT + Duration::from_secs(2);
    // The stack's own deadline (poll_delay) is what wakes it.
    g.run_until(&mut stack, limit, |g, _| {
        g.tcp(sock).state() == State::Closed
    });
    let waited = start.elapsed();
    assert_eq!(g.tcp(sock).state(), State::Closed);
    assert!(
        waited >= PEEK_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );
    assert_eq!(server.received(), 0);
    let (verdict, why, _) = last_tcp(&events);
    assert_eq!(
        (verdict, why.as_str()),
        (Verdict::Deny, "no complete TLS ClientHello")
    );
}
