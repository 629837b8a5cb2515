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
//! A second scenario boots with `--net open`, a name pinned to L1's
//! loopback on ports 80 and 443 only, and L1 serving HTTP on a private
//! address of one of its interfaces (10.77.0.1 on `lo`), on a private
//! range it routes to itself without an interface address (10.88.0.0/24,
//! `ip route add local`: blocked by range alone, not as a host address)
//! and on its loopback. The guest reaches none of them; through the pin it
//! reaches the pinned server with its own name (HTTP `Host`, TLS server
//! name) and is reset when it asks for another name there; a query over
//! TCP to the DNS server is answered.
//!
//! The image's busybox is static: its `wget` cannot resolve names (glibc's
//! resolver needs NSS modules the image does not carry), so the guest
//! resolves with busybox's own `nslookup` and fetches by address — which
//! is exactly what the stack allows: addresses it handed out for allowed
//! names.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::fmt::Write as _;
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

/// Before agentvm starts (in L1): one HTTP server on every address at
/// port 8080, reachable from L1 on a private address of `lo`, a private
/// range routed locally and the loopback; the pinned name's servers on
/// 127.0.0.1:80 and :443 (busybox httpd answers a TLS ClientHello with
/// `400 Bad Request`, which is what shows the hello reached it).
const OPEN_SETUP: &str = r#"ip link set lo up
ip addr add 10.77.0.1/24 dev lo
ip route add local 10.88.0.0/24 dev lo
rm -rf /tmp/www /tmp/audit.jsonl
mkdir -p /tmp/www
echo l1-ok > /tmp/www/index.html
busybox httpd -p 8080 -h /tmp/www
busybox httpd -p 127.0.0.1:80 -h /tmp/www
busybox httpd -p 127.0.0.1:443 -h /tmp/www"#;

/// A TLS record with a ClientHello asking for `name`, as `printf` octal
/// escapes.
fn client_hello(name: &str) -> String {
    let name = name.as_bytes();
    let mut sni = Vec::new();
    sni.extend((name.len() as u16 + 3).to_be_bytes());
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut ext = vec![0, 0];
    ext.extend((sni.len() as u16).to_be_bytes());
    ext.extend(sni);
    let mut body = vec![3, 3];
    body.extend([0x5a; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hello = vec![1, 0];
    hello.extend((body.len() as u16).to_be_bytes());
    hello.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend((hello.len() as u16).to_be_bytes());
    record.extend(hello);
    record.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "\\{b:03o}");
        out
    })
}

/// Once the agent is ready (in L1).
fn open_script() -> String {
    format!(
        r#"A="$AGENTVM attach --uds $UDS"
$A -- sh -c 'for i in $(seq 1 100); do ip -4 addr show dev eth0 | grep -q 10.0.2.15 && break; sleep 0.1; done'
echo "RIG-EXEC l1_private=$(busybox wget -q -O - http://10.77.0.1:8080/) $(busybox wget -q -O - http://10.88.0.5:8080/) $(busybox wget -q -O - http://127.0.0.2:8080/)"
resolve='nslookup web.test | sed -n "s/^Address: *\([0-9.]*\)$/\1/p" | tail -n 1'
echo "RIG-EXEC web_ip=$($A -- sh -c "$resolve")"
timed() {{ $A -- sh -c "t0=\$(cut -d' ' -f1 /proc/uptime); timeout 10 $1 >/dev/null 2>&1; rc=\$?; t1=\$(cut -d' ' -f1 /proc/uptime); echo \$rc \$t0 \$t1"; }}
echo "RIG-EXEC get_lo_addr=$(timed 'wget -q -O - http://10.77.0.1:8080/')"
echo "RIG-EXEC get_private=$(timed 'wget -q -O - http://10.88.0.5:8080/')"
echo "RIG-EXEC get_loopback=$(timed 'wget -q -O - http://198.18.0.2:8080/')"
send() {{ $A -- sh -c "(printf '$2'; sleep 2) | timeout 8 nc 198.18.0.1 $1" 2>/dev/null | head -c 600 | tr '\r\n' '  '; }}
echo "RIG-EXEC http_ok=$(send 80 'GET / HTTP/1.0\r\nHost: web.test\r\n\r\n')"
echo "RIG-EXEC http_fronted=$(send 80 'GET / HTTP/1.0\r\nHost: evil.test\r\n\r\n')"
echo "RIG-EXEC tls_ok=$(send 443 '{web}')"
echo "RIG-EXEC tls_fronted=$(send 443 '{evil}')"
dnsq='\000\032\022\064\001\000\000\001\000\000\000\000\000\000\003web\004test\000\000\001\000\001'
echo "RIG-EXEC dns_tcp=$($A -- sh -c "(printf '$dnsq'; sleep 1) | timeout 5 nc 10.0.2.3 53 | od -An -tx1" 2>&1 | tr -s ' \n' '  ')"
au() {{ grep -c "$1" /tmp/audit.jsonl; }}
echo "RIG-EXEC audit_private=$(au '"ip":"10.88.0.5".*"reason":"private address (10/8)"')"
echo "RIG-EXEC audit_lo_addr=$(au '"ip":"10.77.0.1".*"verdict":"deny"')"
echo "RIG-EXEC audit_loopback=$(au '"ip":"198.18.0.2".*"reason":"host loopback"')"
echo "RIG-EXEC audit_fronted=$(au '"name":"evil.test".*"reason":"server name not pinned to this address"')"
echo "RIG-EXEC audit_sample=$(grep evil.test /tmp/audit.jsonl | head -c 600 | tr '\n' ' ')"
$A --poweroff; echo "RIG-EXEC poweroff_rc=$?"
"#,
        web = client_hello("web.test"),
        evil = client_hello("evil.test"),
    )
}

#[test]
fn open_network_reaches_no_private_or_loopback_address_and_no_fronted_name() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let script = open_script();
    let mut boot = Boot::agent("net-open", &script).setup(OPEN_SETUP).args(&[
        "--net",
        "open",
        "--host",
        "web.test=127.0.0.1",
        "--port",
        "80",
        "--port",
        "443",
        "--audit",
        "/tmp/audit.jsonl",
    ]);
    boot.timeout = Duration::from_secs(600);
    let r = rig
        .run(&Scenario::new("net-open", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("net-open").expect("boot ran");
    let ctx = || r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!(
        "scenario net-open ({:?}): {:.1} s; lo addr {} / private {} / loopback {}; \
         http {:?} / fronted {:?}; tls {:?} / fronted {:?}; dns over tcp {:?}; audit: {}",
        r.tier,
        r.elapsed.as_secs_f64(),
        m("get_lo_addr"),
        m("get_private"),
        m("get_loopback"),
        m("http_ok"),
        m("http_fronted"),
        m("tls_ok"),
        m("tls_fronted"),
        m("dns_tcp"),
        m("audit_sample")
    );
    // The servers are there: L1 reaches each of them.
    assert_eq!(m("l1_private").trim(), "l1-ok l1-ok l1-ok", "{}", ctx());
    assert_eq!(m("web_ip"), "198.18.0.1", "{}", ctx());
    for key in ["get_lo_addr", "get_private", "get_loopback"] {
        let (rc, secs) = timed(m(key)).unwrap_or_else(|| panic!("{key}: {}; {}", m(key), ctx()));
        assert_ne!(rc, 0, "{key} reached L1; {}", ctx());
        assert!(secs < 1.0, "{key} took {secs:.2} s; {}", ctx());
    }
    // Through the pin, with the pinned name: the server answers.
    assert!(m("http_ok").contains("l1-ok"), "{}", ctx());
    assert!(m("tls_ok").contains("400"), "{}", ctx());
    // Asking the pinned address for another name: reset, nothing back.
    assert_eq!(m("http_fronted").trim(), "", "{}", ctx());
    assert_eq!(m("tls_fronted").trim(), "", "{}", ctx());
    // DNS over TCP answers (a length-prefixed query for the pinned name:
    // its answer carries 198.18.0.1, c6 12 00 01).
    assert!(m("dns_tcp").contains("c6 12 00 01"), "{}", ctx());
    let count = |k: &str| m(k).trim().parse::<u32>().unwrap_or(0);
    assert!(count("audit_private") >= 1, "{}", ctx());
    assert!(count("audit_lo_addr") >= 1, "{}", ctx());
    assert!(count("audit_loopback") >= 1, "{}", ctx());
    assert!(count("audit_fronted") >= 2, "{}", ctx());
    assert_eq!(m("poweroff_rc"), "0", "{}", ctx());
    assert_eq!(b.exit_code(), Some(0), "{}", ctx());
}
