//! The audit log a stack writes to a file ([`agentvm_net::Audit::to_file`]):
//! one JSON line per decision, in order, with what was asked or reached,
//! the verdict and why.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::net::Ipv4Addr;

use agentvm_net::Audit;
use common::{
    audit_lines, connect, free_port, guest, lookup, pinned, prohibited, stack_audited, TcpEcho,
    TestResolver, SOON,
};
use serde_json::{json, Value};
use simple_dns::TYPE;

#[test]
fn every_decision_is_one_json_line_with_proto_name_ip_port_verdict_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net-audit.jsonl");
    let server = TcpEcho::start();
    let closed_port = free_port();
    let resolver = TestResolver::new(&[("example.test", Ipv4Addr::new(93, 184, 215, 7))]);
    let mut policy = pinned("api.test", &[server.port]);
    policy.allow("example.test").unwrap();
    let mut stack = stack_audited(policy, resolver.addrs(), Audit::to_file(&path).unwrap());
    let mut g = guest(&mut stack);
    g.record = true;
    lookup(&mut g, &mut stack, "example.test", TYPE::A);
    lookup(&mut g, &mut stack, "evil.test", TYPE::A);
    lookup(&mut g, &mut stack, "api.test", TYPE::A);
    let loopback = common::on_host;
    connect(&mut g, &mut stack, loopback(server.port), 40000);
    connect(&mut g, &mut stack, loopback(closed_port), 40001);
    let sock = g.udp_bind(6000);
    g.udp(sock)
        .send_slice(b"q", (Ipv4Addr::new(8, 8, 8, 8), 53))
        .unwrap();
    assert!(g.run_until(&mut stack, SOON, |g, _| !prohibited(&g.seen).is_empty()));

    let loopback_ip = common::host_loopback().to_string();
    let lines = audit_lines(&path);
    for line in &lines {
        let time = line["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
    }
    let fields: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!([
                l["proto"],
                l["name"],
                l["ip"],
                l["port"],
                l["verdict"],
                l["reason"]
            ])
        })
        .collect();
    let expected = [
        json!(["dns", "example.test", null, null, "allow", "allowlisted"]),
        json!(["dns", "evil.test", null, null, "deny", "name not allowed"]),
        json!(["dns", "api.test", null, null, "allow", "pinned"]),
        json!([
            "tcp",
            "api.test",
            loopback_ip,
            server.port,
            "allow",
            "pinned address"
        ]),
        json!([
            "tcp",
            "api.test",
            loopback_ip,
            closed_port,
            "deny",
            "port not allowed"
        ]),
        // The port is judged before the address.
        json!(["udp", null, "8.8.8.8", 53, "deny", "port not allowed"]),
    ];
    assert_eq!(fields, expected);
}
