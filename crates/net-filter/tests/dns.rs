//! DNS end to end through the stack: the guest asks 10.0.2.3, the stack
//! answers allowed names from an upstream test resolver (a UDP socket on
//! 127.0.0.1 that counts what it is asked), refuses the rest locally —
//! a refused name never reaches upstream — and prohibits DNS to any
//! other server.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use agentvm_net::{Mode, Policy, Proto, Verdict};
use common::{
    found, guest, lookup, nxdomain, prohibited, stack_with, Lookup, TestResolver, AT_ONCE, SOON,
};
use simple_dns::{RCODE, TYPE};

const EXAMPLE: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 7);

fn filtered(domains: &[&str]) -> Policy {
    let mut p = Policy::new(Mode::Filtered);
    for d in domains {
        p.allow(d).unwrap();
    }
    p
}

#[test]
fn allowed_name_is_resolved_upstream_and_answered() {
    let resolver = TestResolver::new(&[("example.test", EXAMPLE)]);
    let (mut stack, events) = stack_with(filtered(&["example.test"]), resolver.addrs());
    let mut g = guest(&mut stack);
    assert_eq!(
        lookup(&mut g, &mut stack, "example.test", TYPE::A),
        found(EXAMPLE)
    );
    assert_eq!(resolver.asked(), ["example.test"]);
    let events = events.lock().unwrap();
    assert!(events.iter().any(|e| e.proto == Proto::Dns
        && e.verdict == Verdict::Allow
        && e.name.as_deref() == Some("example.test")));
}

#[test]
fn denied_name_gets_nxdomain_and_never_reaches_the_upstream_resolver() {
    let resolver = TestResolver::new(&[("example.test", EXAMPLE), ("evil.test", EXAMPLE)]);
    let (mut stack, events) = stack_with(filtered(&["example.test"]), resolver.addrs());
    let mut g = guest(&mut stack);
    for qtype in [TYPE::A, TYPE::AAAA, TYPE::TXT, TYPE::MX] {
        assert_eq!(
            lookup(&mut g, &mut stack, "evil.test", qtype),
            nxdomain(),
            "{qtype:?}"
        );
    }
    // The resolver would have answered; it was never asked.
    assert!(resolver.asked().is_empty(), "{:?}", resolver.asked());
    let events = events.lock().unwrap();
    let denied = events
        .iter()
        .filter(|e| e.verdict == Verdict::Deny && e.name.as_deref() == Some("evil.test"))
        .count();
    assert_eq!(denied, 4);
}

#[test]
fn names_are_allowed_at_or_below_a_domain_on_label_boundaries_only() {
    let names = [
        ("example.test", true),
        ("api.example.test", true),
        ("a.b.example.test", true),
        ("API.Example.TEST", true),
        ("evilexample.test", false),
        ("xample.test", false),
        ("example.test.evil.net", false),
        ("test", false),
        ("example.tes", false),
    ];
    let records: Vec<(&str, Ipv4Addr)> = names.iter().map(|(n, _)| (*n, EXAMPLE)).collect();
    let resolver = TestResolver::new(&records);
    let (mut stack, _) = stack_with(filtered(&["Example.Test."]), resolver.addrs());
    let mut g = guest(&mut stack);
    for (name, allowed) in names {
        let want = if allowed { found(EXAMPLE) } else { nxdomain() };
        assert_eq!(lookup(&mut g, &mut stack, name, TYPE::A), want, "{name}");
    }
    let upstream: Vec<String> = names
        .iter()
        .filter(|(_, allowed)| *allowed)
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    assert_eq!(resolver.asked(), upstream);
}

#[test]
fn pinned_name_is_answered_locally_without_asking_upstream() {
    let resolver = TestResolver::new(&[("api.test", EXAMPLE)]);
    let mut policy = Policy::new(Mode::Filtered);
    policy.pin("api.test", Ipv4Addr::LOCALHOST).unwrap();
    let (mut stack, _) = stack_with(policy, resolver.addrs());
    let mut g = guest(&mut stack);
    assert_eq!(
        lookup(&mut g, &mut stack, "api.test", TYPE::A),
        found(common::host_loopback())
    );
    assert!(resolver.asked().is_empty(), "{:?}", resolver.asked());
}

#[test]
fn aaaa_for_an_allowed_name_is_answered_empty_without_asking_upstream() {
    let resolver = TestResolver::new(&[("example.test", EXAMPLE)]);
    let (mut stack, _) = stack_with(filtered(&["example.test"]), resolver.addrs());
    let mut g = guest(&mut stack);
    assert_eq!(
        lookup(&mut g, &mut stack, "example.test", TYPE::AAAA),
        Lookup::Answer(RCODE::NoError, vec![])
    );
    assert!(resolver.asked().is_empty(), "{:?}", resolver.asked());
}

#[test]
fn upstream_that_does_not_know_an_allowed_name_relays_nxdomain() {
    let resolver = TestResolver::new(&[]);
    let (mut stack, _) = stack_with(filtered(&["example.test"]), resolver.addrs());
    let mut g = guest(&mut stack);
    assert_eq!(
        lookup(&mut g, &mut stack, "gone.example.test", TYPE::A),
        nxdomain()
    );
    assert_eq!(resolver.asked(), ["gone.example.test"]);
}

#[test]
fn dns_to_another_server_is_prohibited_at_once_and_nothing_is_sent() {
    let resolver = TestResolver::new(&[("example.test", EXAMPLE)]);
    let (mut stack, events) = stack_with(filtered(&["example.test"]), resolver.addrs());
    let mut g = guest(&mut stack);
    g.record = true;
    let google = SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53);
    let sock = g.udp_bind(5353);
    let start = Instant::now();
    g.udp(sock)
        .send_slice(b"\x12\x34query", (*google.ip(), google.port()))
        .unwrap();
    assert!(g.run_until(&mut stack, SOON, |g, _| !prohibited(&g.seen).is_empty()));
    assert!(start.elapsed() < AT_ONCE, "{:?}", start.elapsed());
    assert_eq!(prohibited(&g.seen), [google]);
    // No host socket was opened for it: nothing can have left.
    assert_eq!(stack.stats().udp_flows, 0);
    assert!(resolver.asked().is_empty());
    let events = events.lock().unwrap();
    assert!(events.iter().any(|e| e.proto == Proto::Udp
        && e.verdict == Verdict::Deny
        && e.ip == Some(Ipv4Addr::new(8, 8, 8, 8).into())
        && e.port == Some(53)));
}
