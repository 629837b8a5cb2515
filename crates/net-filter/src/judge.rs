//! The policy's verdict on a guest flow's destination: allowed or not,
//! for which name, and why (the audit log's `reason`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use crate::addr;
use crate::dns::DnsServer;
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
}
