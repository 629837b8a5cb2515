//! The policy's verdict on a guest flow's destination: allowed or not,
//! for which name, and why (the audit log's `reason`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use crate::addr;
use crate::dns::DnsServer;
use crate::peek::{Peeked, Protocol};
use crate::policy::normalize_name;
use crate::{Mode, Policy};

/// A verdict on a destination.
pub(crate) struct Decision {
    /// Let the flow through.
    pub allow: bool,
    /// The name the address was handed out for, if any.
    pub name: Option<String>,
    /// Why, for the audit log.
    pub reason: &'static str,
}

/// Judges a guest flow to `ip:port` under `policy`, with the addresses
/// `dns` handed out and the host's own addresses `hosts`.
pub(crate) fn judge(
    policy: &Policy,
    dns: &DnsServer,
    hosts: &[IpAddr],
    ip: Ipv4Addr,
    port: u16,
    now: Instant,
) -> Decision {
    let name = dns.name_for(ip, now).map(str::to_owned);
    judge_named(policy, hosts, ip, port, name)
}

/// Judges a guest flow to `ip:port` under `policy` as an address handed
/// out for `name` (`None`: for no name).
pub(crate) fn judge_named(
    policy: &Policy,
    hosts: &[IpAddr],
    ip: Ipv4Addr,
    port: u16,
    name: Option<String>,
) -> Decision {
    let deny = |name, reason| Decision {
        allow: false,
        name,
        reason,
    };
    let pin = name.as_deref().and_then(|n| policy.pinned(n));
    let pinned = pin == Some(ip);
    if policy.mode == Mode::Off {
        return deny(name, "network off");
    }
    if pin.is_some() && !pinned {
        // A flow opened before the name was pinned elsewhere (the DNS
        // server forgets such addresses too).
        return deny(name, "name pinned to another address");
    }
    if let Some(why) = addr::never_reachable(ip, hosts) {
        return deny(name, why);
    }
    if pinned {
        // A pin opens its address on the policy's ports only, in every
        // mode: one service of a host that is otherwise out of reach.
        return match policy.allows_pinned_port(port) {
            true => Decision {
                allow: true,
                name,
                reason: "pinned address",
            },
            false => deny(name, "port not allowed"),
        };
    }
    if let Some(why) = addr::special_range(ip) {
        return deny(name, why);
    }
    if !policy.allows_port(port) {
        return deny(name, "port not allowed");
    }
    let named = name.as_deref().is_some_and(|n| policy.allows_name(n));
    match policy.mode {
        Mode::Open => Decision {
            allow: true,
            name,
            reason: "open mode",
        },
        Mode::Filtered if named => Decision {
            allow: true,
            name,
            reason: "address of an allowed name",
        },
        _ => deny(name, "address not handed out for an allowed name"),
    }
}

/// Which parser must read an allowed TCP flow's first bytes before they
/// leave the host: flows allowed for a name — every flow in `filtered`
/// mode, flows to a pinned address in any mode — to port 443 (TLS) or 80
/// (HTTP). In `open` mode a public address is reachable by its bare IP
/// anyway, so its flows are not held.
pub(crate) fn peek_protocol(
    policy: &Policy,
    decision: &Decision,
    ip: Ipv4Addr,
    port: u16,
) -> Option<Protocol> {
    let pinned = decision.name.as_deref().and_then(|n| policy.pinned(n)) == Some(ip);
    let named = policy.mode == Mode::Filtered || pinned;
    (decision.allow && named)
        .then(|| Protocol::of_port(port))
        .flatten()
}

/// Judges the name a held flow to `ip` asks its server for (`peeked`,
/// complete), the flow having been allowed for `opened_for`;
/// `handed_out(name)` says whether the DNS server handed `ip` out for
/// `name`. The rules:
/// - a name pinned to `ip` passes;
/// - a name pinned elsewhere, or any other name to a pinned special
///   address, does not;
/// - otherwise the name must be allowed and handed out for `ip`;
/// - no name at all (no SNI, no `Host`, only an IP address) passes only
///   to a pinned address, which names one server by itself;
/// - a message that is no ClientHello / request, or is ambiguous, fails.
pub(crate) fn judge_peeked(
    policy: &Policy,
    ip: Ipv4Addr,
    protocol: Protocol,
    opened_for: Option<&str>,
    peeked: Peeked,
    handed_out: impl Fn(&str) -> bool,
) -> Decision {
    let pinned_here = |n: &str| policy.pinned(n) == Some(ip);
    let verdict = |allow, name: Option<&str>, reason| Decision {
        allow,
        name: name.map(str::to_owned),
        reason,
    };
    let raw = match peeked {
        Peeked::Incomplete => return verdict(false, opened_for, protocol.incomplete()),
        Peeked::Malformed(why) => return verdict(false, opened_for, why),
        Peeked::Name(None) => {
            return match opened_for.is_some_and(pinned_here) {
                true => verdict(true, opened_for, "pinned address, no server name"),
                false => verdict(false, opened_for, protocol_none(protocol)),
            };
        }
        Peeked::Name(Some(raw)) => raw,
    };
    let Ok(name) = normalize_name(&raw) else {
        return verdict(false, opened_for, "server name is no host name");
    };
    let n = Some(name.as_str());
    if pinned_here(&name) {
        verdict(true, n, "server name pinned to this address")
    } else if policy.pinned(&name).is_some() {
        verdict(false, n, "server name pinned to another address")
    } else if addr::special_range(ip).is_some() {
        verdict(false, n, "server name not pinned to this address")
    } else if !policy.allows_name(&name) {
        verdict(false, n, "server name not allowed")
    } else if handed_out(&name) {
        verdict(true, n, "server name handed out for this address")
    } else {
        verdict(false, n, "server name not handed out for this address")
    }
}

/// Why a message naming no server is refused.
fn protocol_none(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tls => "no server name (SNI) to an address that is not pinned",
        Protocol::Http => "no Host to an address that is not pinned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(140, 82, 112, 3);
    const ALIAS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn policy(mode: Mode) -> Policy {
        let mut p = Policy::new(mode);
        p.allow("github.com").unwrap();
        p.pin("api.test", Ipv4Addr::LOCALHOST).unwrap();
        p
    }

    fn verdict(p: &Policy, ip: Ipv4Addr, port: u16, name: Option<&str>) -> (bool, &'static str) {
        let host = [IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7))];
        let d = judge_named(p, &host, ip, port, name.map(str::to_string));
        (d.allow, d.reason)
    }

    #[test]
    fn filtered_mode_allows_handed_out_addresses_of_allowed_names_on_allowed_ports() {
        let p = policy(Mode::Filtered);
        assert!(verdict(&p, PUBLIC, 443, Some("api.github.com")).0);
        assert_eq!(
            verdict(&p, PUBLIC, 22, Some("api.github.com")),
            (false, "port not allowed")
        );
        assert_eq!(
            verdict(&p, PUBLIC, 443, None),
            (false, "address not handed out for an allowed name")
        );
        assert!(!verdict(&p, PUBLIC, 443, Some("evil.test")).0);
    }

    #[test]
    fn blocked_addresses_need_a_pin_in_every_mode() {
        for mode in [Mode::Filtered, Mode::Open] {
            let p = policy(mode);
            assert!(verdict(&p, ALIAS, 443, Some("api.test")).0, "{mode:?}");
            assert_eq!(
                verdict(&p, ALIAS, 443, None),
                (false, "host loopback"),
                "{mode:?}"
            );
            let metadata = Ipv4Addr::new(169, 254, 169, 254);
            assert!(!verdict(&p, metadata, 80, Some("github.com")).0, "{mode:?}");
            let own = Ipv4Addr::new(192, 168, 1, 7);
            assert!(!verdict(&p, own, 443, None).0, "{mode:?}");
            // A name pinned elsewhere no longer opens its old address.
            assert_eq!(
                verdict(&p, PUBLIC, 443, Some("api.test")),
                (false, "name pinned to another address")
            );
        }
    }

    #[test]
    fn special_ranges_are_unreachable_in_every_mode_unless_pinned() {
        let special = [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "168.63.129.16",
            "192.0.0.9",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "198.19.255.1",
            "169.254.169.254",
            "127.0.0.1",
            "0.1.2.3",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ];
        for mode in [Mode::Filtered, Mode::Open] {
            let mut p = policy(mode);
            for ip in special {
                let ip: Ipv4Addr = ip.parse().unwrap();
                for name in [None, Some("github.com")] {
                    let (allow, reason) = verdict(&p, ip, 443, name);
                    assert!(!allow, "{mode:?} {ip} {name:?}");
                    assert_ne!(reason, "port not allowed", "{mode:?} {ip}");
                }
            }
            // A pin opens its address, on the policy's ports only.
            p.pin("intranet.test", Ipv4Addr::new(10, 77, 0, 1)).unwrap();
            p.ports = vec![8080];
            let intranet = Ipv4Addr::new(10, 77, 0, 1);
            assert_eq!(
                verdict(&p, intranet, 8080, Some("intranet.test")),
                (true, "pinned address"),
                "{mode:?}"
            );
            assert_eq!(
                verdict(&p, intranet, 22, Some("intranet.test")),
                (false, "port not allowed"),
                "{mode:?}"
            );
            assert_eq!(
                verdict(&p, intranet, 8080, None),
                (false, "private address (10/8)"),
                "{mode:?}"
            );
            // Its neighbour stays closed.
            assert!(!verdict(&p, Ipv4Addr::new(10, 77, 0, 2), 8080, Some("intranet.test")).0);
        }
    }

    #[test]
    fn the_hosts_own_addresses_stay_closed_even_to_a_pin() {
        let mut p = policy(Mode::Open);
        // Pinned while the host did not have it; the host took it since.
        p.hosts
            .insert("lan.test".into(), Ipv4Addr::new(192, 168, 1, 7));
        assert_eq!(
            verdict(&p, Ipv4Addr::new(192, 168, 1, 7), 443, Some("lan.test")),
            (false, "one of the host's own addresses")
        );
    }

    #[test]
    fn open_mode_allows_every_public_address_and_port_off_mode_nothing() {
        let p = policy(Mode::Open);
        assert_eq!(verdict(&p, PUBLIC, 22, None), (true, "open mode"));
        let p = policy(Mode::Off);
        assert_eq!(
            verdict(&p, PUBLIC, 443, Some("github.com")),
            (false, "network off")
        );
    }

    #[test]
    fn held_flows_are_flows_allowed_for_a_name_to_ports_80_and_443() {
        let filtered = policy(Mode::Filtered);
        let open = policy(Mode::Open);
        let allowed = |name: Option<&str>| Decision {
            allow: true,
            name: name.map(str::to_owned),
            reason: "",
        };
        let gh = Some("github.com");
        assert_eq!(
            peek_protocol(&filtered, &allowed(gh), PUBLIC, 443),
            Some(Protocol::Tls)
        );
        assert_eq!(
            peek_protocol(&filtered, &allowed(gh), PUBLIC, 80),
            Some(Protocol::Http)
        );
        assert_eq!(peek_protocol(&filtered, &allowed(gh), PUBLIC, 8443), None);
        let pin = Some("api.test");
        assert_eq!(
            peek_protocol(&open, &allowed(pin), ALIAS, 443),
            Some(Protocol::Tls)
        );
        // Open mode, a public address: reachable by bare IP anyway.
        assert_eq!(peek_protocol(&open, &allowed(gh), PUBLIC, 443), None);
        assert_eq!(peek_protocol(&open, &allowed(None), PUBLIC, 80), None);
        let mut denied = allowed(gh);
        denied.allow = false;
        assert_eq!(peek_protocol(&filtered, &denied, PUBLIC, 443), None);
    }

    #[test]
    fn the_first_message_must_name_what_its_address_was_handed_out_for() {
        let mut p = policy(Mode::Filtered);
        p.allow("cdn.test").unwrap();
        let handed_out = |n: &str| n == "api.github.com" || n == "www.cdn.test";
        let name = |n: &str| Peeked::Name(Some(n.to_string()));
        let check = |p: &Policy, ip, opened_for, peeked| {
            let d = judge_peeked(p, ip, Protocol::Tls, opened_for, peeked, handed_out);
            (d.allow, d.reason, d.name)
        };
        let gh = Some("api.github.com");
        for (ip, opened_for, peeked, want) in [
            (
                PUBLIC,
                gh,
                name("api.github.com"),
                (true, "server name handed out for this address"),
            ),
            (
                PUBLIC,
                gh,
                name("API.GitHub.com."),
                (true, "server name handed out for this address"),
            ),
            // Another allowed name this address was handed out for (a CDN).
            (
                PUBLIC,
                gh,
                name("www.cdn.test"),
                (true, "server name handed out for this address"),
            ),
            (
                PUBLIC,
                gh,
                name("gist.github.com"),
                (false, "server name not handed out for this address"),
            ),
            (
                PUBLIC,
                gh,
                name("evil.test"),
                (false, "server name not allowed"),
            ),
            (
                PUBLIC,
                gh,
                name("api.test"),
                (false, "server name pinned to another address"),
            ),
            (
                PUBLIC,
                gh,
                name("bad name"),
                (false, "server name is no host name"),
            ),
            (
                PUBLIC,
                gh,
                Peeked::Name(None),
                (
                    false,
                    "no server name (SNI) to an address that is not pinned",
                ),
            ),
            (
                PUBLIC,
                gh,
                Peeked::Malformed("not a TLS handshake"),
                (false, "not a TLS handshake"),
            ),
            (
                ALIAS,
                Some("api.test"),
                name("api.test"),
                (true, "server name pinned to this address"),
            ),
            (
                ALIAS,
                Some("api.test"),
                Peeked::Name(None),
                (true, "pinned address, no server name"),
            ),
            (
                ALIAS,
                Some("api.test"),
                name("github.com"),
                (false, "server name not pinned to this address"),
            ),
        ] {
            let (allow, reason, _) = check(&p, ip, opened_for, peeked.clone());
            assert_eq!((allow, reason), want, "{ip} {opened_for:?} {peeked:?}");
        }
        // The name allowed is the one the message asked for.
        let (_, _, n) = check(&p, PUBLIC, gh, name("WWW.cdn.test"));
        assert_eq!(n.as_deref(), Some("www.cdn.test"));
        // Open mode: a pinned address still takes only its own names.
        p.mode = Mode::Open;
        assert!(!check(&p, ALIAS, Some("api.test"), name("anything.test")).0);
        let d = judge_peeked(
            &p,
            PUBLIC,
            Protocol::Http,
            gh,
            Peeked::Name(None),
            handed_out,
        );
        assert_eq!(
            (d.allow, d.reason),
            (false, "no Host to an address that is not pinned")
        );
    }
}
