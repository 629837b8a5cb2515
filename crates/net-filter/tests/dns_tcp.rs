//! DNS over TCP at 10.0.2.3:53: length-prefixed queries under the same
//! policy as datagrams (allowed names go upstream and their addresses
//! become reachable, the rest get NXDOMAIN locally), answered on the
//! connection; a length no query has resets it; connections beyond the
//! bound are reset at their SYN.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::Ipv4Addr;

use agentvm_net::dns::tcp::MAX_CONNECTIONS;
use agentvm_net::testing::Guest;
use agentvm_net::{Mode, NetStack, Policy};
use common::{guest, stack_with, TestResolver, DNS, SOON};
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

const ALLOWED: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 40);

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    let bytes = q.build_bytes_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend(bytes);
    framed
}

fn open(g: &mut Guest, stack: &mut NetStack, port: u16) -> (SocketHandle, State) {
    let sock = g.tcp_connect(DNS, port, 64 << 10);
    g.run_until(stack, SOON, |g, _| {
        matches!(g.tcp(sock).state(), State::Established | State::Closed)
    });
    let state = g.tcp(sock).state();
    (sock, state)
}

/// Sends `bytes` and reads `n` length-prefixed answers: (id, rcode,
/// addresses) each.
fn exchange(
    g: &mut Guest,
    stack: &mut NetStack,
    sock: SocketHandle,
    bytes: &[u8],
    n: usize,
) -> Vec<(u16, RCODE, Vec<Ipv4Addr>)> {
    g.tcp(sock).send_slice(bytes).unwrap();
    let mut got = Vec::new();
    g.run_until(stack, SOON, |g, _| {
        let s = g.tcp(sock);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        count(&got) >= n || !s.is_open()
    });
    let mut out = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let p = Packet::parse(&rest[2..2 + len]).unwrap();
        let addrs = p
            .answers
            .iter()
            .filter_map(|r| match &r.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .collect();
        out.push((p.id(), p.rcode(), addrs));
        rest = &rest[2 + len..];
    }
    out
}

/// Whole messages in a length-prefixed stream.
fn count(mut stream: &[u8]) -> usize {
    let mut n = 0;
    while stream.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([stream[0], stream[1]]));
        if stream.len() < 2 + len {
            break;
        }
        n += 1;
        stream = &stream[2 + len..];
    }
    n
}

fn filtered() -> Policy {
    let mut p = Policy::new(Mode::Filtered);
    p.allow("allowed.test").unwrap();
    p
}

#[test]
fn queries_over_tcp_get_the_same_answers_as_datagrams_pipelined() {
    let resolver = TestResolver::new(&[("allowed.test", ALLOWED)]);
    let (mut stack, _) = stack_with(filtered(), resolver.addrs());
    let mut g = guest(&mut stack);
    let (sock, state) = open(&mut g, &mut stack, 50000);
    assert_eq!(state, State::Established);
    // Two queries in one segment: one goes upstream, one is refused
    // locally; both come back, in any order.
    let mut both = query(1, "allowed.test");
    both.extend(query(2, "denied.test"));
    let mut answers = exchange(&mut g, &mut stack, sock, &both, 2);
    answers.sort_by_key(|a| a.0);
    assert_eq!(
        answers,
        [
            (1, RCODE::NoError, vec![ALLOWED]),
            (2, RCODE::NameError, vec![])
        ]
    );
    assert_eq!(resolver.asked(), ["allowed.test"]);
    // A query split across segments.
    let q = query(3, "allowed.test");
    g.tcp(sock).send_slice(&q[..5]).unwrap();
    g.run_until(&mut stack, std::time::Duration::from_millis(50), |_, _| {
        false
    });
    let answers = exchange(&mut g, &mut stack, sock, &q[5..], 1);
    assert_eq!(answers, [(3, RCODE::NoError, vec![ALLOWED])]);
    // The guest closes; the server closes its side and the connection goes.
    g.tcp(sock).close();
    assert!(g.run_until(&mut stack, SOON, |g, _| matches!(
        g.tcp(sock).state(),
        State::Closed | State::TimeWait
    )));
}

#[test]
fn a_length_no_query_has_resets_the_connection() {
    let (mut stack, _) = stack_with(filtered(), vec![]);
    let mut g = guest(&mut stack);
    for (port, prefix) in [(50100, [0xff, 0xff]), (50101, [0, 0])] {
        let (sock, state) = open(&mut g, &mut stack, port);
        assert_eq!(state, State::Established);
        g.tcp(sock).send_slice(&prefix).unwrap();
        g.tcp(sock).send_slice(&[0; 64]).unwrap();
        assert!(
            g.run_until(&mut stack, SOON, |g, _| g.tcp(sock).state()
                == State::Closed),
            "{prefix:?}: {}",
            g.tcp(sock).state()
        );
    }
}

#[test]
fn connections_beyond_the_bound_are_reset_and_the_rest_still_answer() {
    let (mut stack, _) = stack_with(filtered(), vec![]);
    let mut g = guest(&mut stack);
    let mut open_socks = Vec::new();
    for i in 0..MAX_CONNECTIONS as u16 {
        let (sock, state) = open(&mut g, &mut stack, 51000 + i);
        assert_eq!(state, State::Established, "connection {i}");
        open_socks.push(sock);
    }
    for i in 0..8 {
        let (_, state) = open(&mut g, &mut stack, 52000 + i);
        assert_eq!(state, State::Closed, "connection beyond the bound {i}");
    }
    let answers = exchange(
        &mut g,
        &mut stack,
        open_socks[0],
        &query(9, "denied.test"),
        1,
    );
    assert_eq!(answers, [(9, RCODE::NameError, vec![])]);
    // Once one closes (both sides), a new one gets in.
    g.tcp(open_socks[1]).close();
    g.run_until(&mut stack, std::time::Duration::from_millis(300), |_, _| {
        false
    });
    let (_, state) = open(&mut g, &mut stack, 53000);
    assert_eq!(state, State::Established);
}

#[test]
fn off_mode_has_no_dns_over_tcp_either() {
    let resolver = TestResolver::new(&[("allowed.test", ALLOWED)]);
    let (mut stack, _) = stack_with(filtered(), resolver.addrs());
    let mut g = guest(&mut stack);
    let mut off = filtered();
    off.mode = Mode::Off;
    stack.handle().set_policy(off);
    let sock = g.tcp_connect(DNS, 54000, 4096);
    g.run_until(&mut stack, std::time::Duration::from_millis(300), |_, _| {
        false
    });
    assert_ne!(g.tcp(sock).state(), State::Established);
    assert!(resolver.asked().is_empty());
}
