//! T3 for networking: agentvm boots the default image with
//! `--net filtered`, a name pinned to L1's loopback, one allowed port, a
//! port forward and an audit file. Test servers run on L1's loopback. In
//! the guest: DHCP gives eth0 its address, the allowed name resolves (to
//! 198.18.0.1, the guest's view of L1's 127.0.0.1) and its server answers,
//! a denied name does not resolve, a bare IP (198.18.0.2: L1's 127.0.0.2,
//! where a server listens, never handed out by the DNS server) and a port
//! that is not allowed fail within a second; the audit file has a line for each decision; the forward
//! reaches a guest `nc -l` from L1.
//!
//! The image's busybox is static: its `wget` cannot resolve names (glibc's
//! resolver needs NSS modules the image does not carry), so the guest
//! resolves with busybox's own `nslookup` and fetches by address — which
//! is exactly what the stack allows: addresses it handed out for allowed
//! names.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::{error_chain, Boot, Rig, Scenario, Tier};

/// Before agentvm starts: two web servers on L1's loopback.
const SETUP: &str = r#"ip link set lo up
rm -rf /tmp/www-a /tmp/www-b /tmp/audit.jsonl
mkdir -p /tmp/www-a /tmp/www-b
echo allowed-ok > /tmp/www-a/index.html
echo other-port > /tmp/www-b/index.html
busybox httpd -p 127.0.0.1:8080 -h /tmp/www-a
busybox httpd -p 127.0.0.1:8081 -h /tmp/www-b
busybox httpd -p 127.0.0.2:8080 -h /tmp/www-b"#;

/// Once the agent is ready.
const SCRIPT: &str = r#"A="$AGENTVM attach --uds $UDS"
one_line() { head -c 300 "$1" | tr '\n' ' '; }
$A -- sh -c 'for i in $(seq 1 100); do ip -4 addr show dev eth0 | grep -q 10.0.2.15 && break; sleep 0.1; done; ip -4 addr show dev eth0 | grep inet' >/tmp/ip.out 2>&1
echo "RIG-EXEC ip=$(one_line /tmp/ip.out)"
echo "RIG-EXEC resolv=$($A -- cat /etc/resolv.conf | tr '\n' ' ')"
$A -- nslookup allowed.test >/tmp/ns1.out 2>&1; echo "RIG-EXEC ns_allowed_rc=$?"
echo "RIG-EXEC ns_allowed=$(one_line /tmp/ns1.out)"
$A -- nslookup denied.test >/tmp/ns2.out 2>&1; echo "RIG-EXEC ns_denied_rc=$?"
echo "RIG-EXEC ns_denied=$(one_line /tmp/ns2.out)"
resolve='nslookup allowed.test | sed -n "s/^Address: *\([0-9.]*\)$/\1/p" | tail -n 1'
echo "RIG-EXEC allowed_ip=$($A -- sh -c "$resolve")"
echo "RIG-EXEC get_allowed=$($A -- sh -c "timeout 10 wget -q -O - http://\$($resolve):8080/" 2>&1 | tr '\n' ' ')"
timed() { $A -- sh -c "t0=\$(cut -d' ' -f1 /proc/uptime); timeout 10 $1 >/dev/null 2>&1; rc=\$?; t1=\$(cut -d' ' -f1 /proc/uptime); echo \$rc \$t0 \$t1"; }
echo "RIG-EXEC get_ip=$(timed 'wget -q -O - http://198.18.0.2:8080/')"
echo "RIG-EXEC get_port=$(timed 'wget -q -O - http://198.18.0.1:8081/')"
$A -- sh -c 'echo from-guest | timeout 20 nc -l -p 7070' >/tmp/fwd.guest 2>&1 &
guest_nc=$!
sleep 3
(echo from-l1; sleep 2) | timeout 10 nc 127.0.0.1 9090 >/tmp/fwd.l1 2>&1; echo "RIG-EXEC fwd_l1_rc=$?"
wait $guest_nc
echo "RIG-EXEC fwd_l1=$(one_line /tmp/fwd.l1)"
echo "RIG-EXEC fwd_guest=$(one_line /tmp/fwd.guest)"
au() { grep "$1" /tmp/audit.jsonl | grep -c "$2"; }
echo "RIG-EXEC audit_lines=$(wc -l < /tmp/audit.jsonl)"
echo "RIG-EXEC audit_dns_denied=$(au '"name":"denied.test"' '"verdict":"deny"')"
echo "RIG-EXEC audit_tcp_allowed=$(au '"proto":"tcp".*"port":8080' '"verdict":"allow"')"
echo "RIG-EXEC audit_tcp_denied=$(au '"proto":"tcp"' '"verdict":"deny"')"
echo "RIG-EXEC audit_forward=$(au '"proto":"forward"' '"verdict":"allow"')"
echo "RIG-EXEC audit_sample=$(head -c 600 /tmp/audit.jsonl | tr '\n' ' ')"
$A --poweroff; echo "RIG-EXEC poweroff_rc=$?"
"#;

/// `rc t0 t1` of a timed guest command: its exit code and seconds taken.
fn timed(marker: &str) -> Option<(i32, f64)> {
    let mut it = marker.split_whitespace();
    let rc = it.next()?.parse().ok()?;
    let t0: f64 = it.next()?.parse().ok()?;
    let t1: f64 = it.next()?.parse().ok()?;
    Some((rc, t1 - t0))
}

#[test]
fn filtered_network_resolves_and_reaches_only_what_the_policy_allows() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let mut boot = Boot::agent("net", SCRIPT).setup(SETUP).args(&[
        "--net",
        "filtered",
        "--host",
        "allowed.test=127.0.0.1",
        "--port",
        "8080",
        "--forward",
        "9090:7070",
        "--audit",
        "/tmp/audit.jsonl",
    ]);
    boot.timeout = Duration::from_secs(600);
    let r = rig
        .run(&Scenario::new("net", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("net").expect("boot ran");
    let ctx = || r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!(
        "scenario net ({:?}): {:.1} s; bare ip {} / port {}; audit: {}",
        r.tier,
        r.elapsed.as_secs_f64(),
        m("get_ip"),
        m("get_port"),
        m("audit_sample")
    );
    assert!(
        m("ip").contains("10.0.2.15/24"),
        "DHCP: {}; {}",
        m("ip"),
        ctx()
    );
    assert!(m("resolv").contains("10.0.2.3"), "{}", ctx());
    assert_eq!(m("ns_allowed_rc"), "0", "{}; {}", m("ns_allowed"), ctx());
    assert!(m("ns_allowed").contains("198.18.0.1"), "{}", ctx());
    assert_ne!(m("ns_denied_rc"), "0", "{}; {}", m("ns_denied"), ctx());
    assert!(!m("ns_denied").contains("198.18."), "{}", ctx());
    // L1's 127.0.0.1 as the guest sees it (its own 127/8 is its loopback).
    assert_eq!(m("allowed_ip"), "198.18.0.1", "{}", ctx());
    assert_eq!(m("get_allowed").trim(), "allowed-ok", "{}", ctx());
    for key in ["get_ip", "get_port"] {
        let (rc, secs) = timed(m(key)).unwrap_or_else(|| panic!("{key}: {}; {}", m(key), ctx()));
        assert_ne!(rc, 0, "{key} succeeded; {}", ctx());
        assert!(secs < 1.0, "{key} took {secs:.2} s; {}", ctx());
    }
    assert!(
        m("fwd_l1").contains("from-guest"),
        "forward: {}; {}",
        m("fwd_l1"),
        ctx()
    );
    assert!(
        m("fwd_guest").contains("from-l1"),
        "forward: {}; {}",
        m("fwd_guest"),
        ctx()
    );
    let count = |k: &str| m(k).trim().parse::<u32>().unwrap_or(0);
    assert!(count("audit_dns_denied") >= 1, "{}", ctx());
    assert!(count("audit_tcp_allowed") >= 1, "{}", ctx());
    // The bare IP and the port that is not allowed.
    assert!(count("audit_tcp_denied") >= 2, "{}", ctx());
    assert!(count("audit_forward") >= 1, "{}", ctx());
    assert_eq!(m("poweroff_rc"), "0", "{}", ctx());
    assert_eq!(b.exit_code(), Some(0), "{}", ctx());
    if r.tier == Tier::Nested {
        assert!(
            r.l1_marker("done").is_some(),
            "L1 never finished; {}",
            ctx()
        );
    }
}
