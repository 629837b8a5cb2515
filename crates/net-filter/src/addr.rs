//! The addresses of the guest's network (slirp's defaults, so guests and
//! users that know QEMU's user networking find what they expect) and the
//! host addresses no guest flow may reach.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use smoltcp::wire::EthernetAddress;

/// The address the DHCP server hands the guest.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway: the stack itself (answers ARP and ping).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The DNS server: the stack's resolver with the allowlist.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// Prefix length of the guest's network (10.0.2.0/24).
pub const PREFIX_LEN: u8 = 24;
/// The stack's own MAC address (gateway and DNS server answer with it).
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);
/// The MAC address the virtio-net device gives the guest.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Where the guest sees the host's loopback: 127.0.B.C of the host is
/// 198.18.B.C to the guest (in 198.18.0.0/15, RFC 2544's benchmarking
/// range, which no public service uses). A guest routes 127.0.0.0/8 to its
/// own loopback, so a `hosts` pin to the host's 127.0.0.1 — how tests and
/// local dev servers are reached — is answered with 198.18.0.1, and the
/// stack connects to 127.0.0.1 on the host for it.
pub const LOOPBACK_ALIAS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

/// The address the guest sees for the host's `ip`: the loopback alias for
/// 127.0.0.0/16, `ip` itself otherwise.
pub fn guest_view(ip: Ipv4Addr) -> Ipv4Addr {
    match ip.octets() {
        [127, 0, b, c] => {
            let [a0, a1, _, _] = LOOPBACK_ALIAS.octets();
            Ipv4Addr::new(a0, a1, b, c)
        }
        _ => ip,
    }
}

/// The host address behind `ip` as the guest sees it (inverse of
/// [`guest_view`]).
pub fn host_view(ip: Ipv4Addr) -> Ipv4Addr {
    let [_, _, b, c] = ip.octets();
    if is_loopback_alias(ip) {
        Ipv4Addr::new(127, 0, b, c)
    } else {
        ip
    }
}

/// Whether `ip` is in the loopback alias range (198.18.0.0/16).
pub fn is_loopback_alias(ip: Ipv4Addr) -> bool {
    ip.octets()[..2] == LOOPBACK_ALIAS.octets()[..2]
}

/// Whether `ip` lies in the guest's own network.
pub fn in_guest_network(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == GUEST_IP.octets()[..3]
}

/// The ranges no guest flow reaches whatever the mode, unless a `hosts`
/// pin names an address in them: every block of IANA's IPv4
/// special-purpose registry (RFC 6890 and its updates: private, shared,
/// loopback, link-local, documentation, benchmarking, protocol
/// assignments, AS112, AMT, the old 6to4 relay, reserved), multicast, and
/// the provider-internal addresses outside them (Azure's wire server;
/// Alibaba's metadata server, 100.100.100.200, is in 100.64/10). Ordered
/// so that the narrowest reason is found first where blocks overlap.
const SPECIAL_RANGES: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "\"this network\" address (0/8)",
    ),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private address (10/8)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared or provider-internal address (100.64/10)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "host loopback"),
    (
        Ipv4Addr::new(168, 63, 129, 16),
        32,
        "provider-internal address (Azure wire server)",
    ),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local or cloud metadata address",
    ),
    (
        Ipv4Addr::new(172, 16, 0, 0),
        12,
        "private address (172.16/12)",
    ),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignment (192.0.0/24)",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation address (192.0.2/24)",
    ),
    (
        Ipv4Addr::new(192, 31, 196, 0),
        24,
        "AS112 address (192.31.196/24)",
    ),
    (
        Ipv4Addr::new(192, 52, 193, 0),
        24,
        "AMT address (192.52.193/24)",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay address (192.88.99/24)",
    ),
    (
        Ipv4Addr::new(192, 168, 0, 0),
        16,
        "private address (192.168/16)",
    ),
    (
        Ipv4Addr::new(192, 175, 48, 0),
        24,
        "AS112 address (192.175.48/24)",
    ),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking address (198.18/15)",
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation address (198.51.100/24)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation address (203.0.113/24)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast address"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast address"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved address (240/4)"),
];

/// Whether `ip` lies in `net`/`len`.
fn in_range(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The special-purpose range `ip` lies in (the table above), as a
/// reason for the audit log; `None` for an ordinary public address.
pub fn special_range(ip: Ipv4Addr) -> Option<&'static str> {
    if is_loopback_alias(ip) {
        return Some("host loopback");
    }
    SPECIAL_RANGES
        .iter()
        .find(|(net, len, _)| in_range(ip, *net, *len))
        .map(|(_, _, why)| *why)
}

/// Why an address is out of reach even for a `hosts` pin: the guest's
/// own network (the stack's addresses) and the host's own addresses
/// other than loopback (a pin to the host's loopback goes through
/// [`LOOPBACK_ALIAS`]); `None` otherwise.
pub fn never_reachable(ip: Ipv4Addr, host_addrs: &[IpAddr]) -> Option<&'static str> {
    if in_guest_network(ip) {
        Some("the guest's own network")
    } else if !ip.is_loopback() && host_addrs.contains(&IpAddr::V4(ip)) {
        Some("one of the host's own addresses")
    } else {
        None
    }
}

/// Why an address is out of reach whatever the mode unless a `hosts` pin
/// names it (see [`never_reachable`] for what no pin opens), or `None`
/// when it is an ordinary public address.
pub fn always_blocked(ip: Ipv4Addr, host_addrs: &[IpAddr]) -> Option<&'static str> {
    never_reachable(ip, host_addrs).or_else(|| special_range(ip))
}

/// Why `ip` cannot be a `hosts` pin's address, or `None` when it can.
/// A pin names one host to reach: an address that is no host (this
/// network, broadcast, multicast, reserved), one the stack gives another
/// meaning (the loopback alias range, the guest's network, the host's
/// loopback beyond 127.0.0.0/16) or the host itself on another interface
/// is refused.
pub fn pin_refusal(ip: Ipv4Addr, host_addrs: &[IpAddr]) -> Option<&'static str> {
    let [a, b, _, _] = ip.octets();
    if a == 0 {
        Some("is no host's address (0.0.0.0/8 means \"this network\")")
    } else if ip.is_broadcast() {
        Some("is the broadcast address")
    } else if ip.is_multicast() {
        Some("is a multicast address")
    } else if a >= 240 {
        Some("is a reserved address (240.0.0.0/4)")
    } else if ip.is_loopback() && b != 0 {
        Some("is a loopback address outside 127.0.0.0/16; the guest reaches the host's loopback only there (e.g. 127.0.0.1)")
    } else if is_loopback_alias(ip) {
        Some("is in 198.18.0.0/16, where the guest sees the host's loopback; pin the 127.0.B.C address instead")
    } else if in_guest_network(ip) {
        Some("is in the guest's own network (10.0.2.0/24)")
    } else if !ip.is_loopback() && host_addrs.contains(&IpAddr::V4(ip)) {
        Some("is one of this host's own addresses; pin 127.0.0.1 to reach a service on this host")
    } else {
        None
    }
}

/// How long the host's address list is trusted before it is read again:
/// an address the host gains (a VPN coming up, a new lease) is blocked
/// within this time, for one `getifaddrs` a second at most.
const HOST_ADDRS_TTL: Duration = Duration::from_secs(1);

/// The host's own addresses, read again when they are older than a
/// second.
#[derive(Debug)]
pub struct HostAddrs {
    addrs: Vec<IpAddr>,
    read_at: Instant,
}

impl HostAddrs {
    /// The addresses now.
    pub fn read(now: Instant) -> Self {
        HostAddrs {
            addrs: host_addresses(),
            read_at: now,
        }
    }

    /// Reads the list again if it is stale.
    pub fn refresh(&mut self, now: Instant) {
        if now.saturating_duration_since(self.read_at) >= HOST_ADDRS_TTL {
            *self = HostAddrs::read(now);
        }
    }

    /// The list as last read.
    pub fn get(&self) -> &[IpAddr] {
        &self.addrs
    }
}

/// The host's own IPv4 addresses (every interface). An error leaves the
/// list empty: loopback, private and link-local ranges stay blocked by
/// range regardless.
pub fn host_addresses() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(list) => list
            .filter_map(|ifa| {
                ifa.address?
                    .as_sockaddr_in()
                    .map(|sin| IpAddr::V4(sin.ip()))
            })
            .collect(),
        Err(e) => {
            tracing::warn!("net: cannot list the host's addresses: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every special range: its first and last address, and the public
    /// addresses just outside it.
    #[test]
    fn every_special_range_is_blocked_to_its_edges_and_public_neighbours_are_not() {
        let host = [IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7))];
        for (net, len, _) in SPECIAL_RANGES {
            let first = u32::from(*net);
            let last = first | u32::MAX.checked_shr(u32::from(*len)).unwrap_or(0);
            for ip in [first, last] {
                let ip = Ipv4Addr::from(ip);
                assert!(always_blocked(ip, &host).is_some(), "{ip} in {net}/{len}");
            }
        }
        for (ip, blocked) in [
            ("127.0.0.1", true),
            ("127.5.6.7", true),
            ("169.254.169.254", true),
            ("100.100.100.200", true),
            ("168.63.129.16", true),
            ("168.63.129.17", false),
            ("0.0.0.0", true),
            ("255.255.255.255", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("10.0.2.2", true),
            ("10.0.3.1", true),
            ("192.168.1.7", true),
            ("192.168.1.8", true),
            ("172.15.255.255", false),
            ("172.32.0.0", false),
            ("100.63.255.255", false),
            ("100.128.0.0", false),
            ("192.0.1.255", false),
            ("198.17.255.255", false),
            ("198.18.0.1", true),
            ("198.19.0.1", true),
            ("198.20.0.0", false),
            ("140.82.112.3", false),
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("223.255.255.255", false),
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(always_blocked(ip, &host).is_some(), blocked, "{ip}");
        }
    }

    #[test]
    fn the_guest_network_and_the_hosts_own_addresses_are_out_of_reach_of_pins() {
        let host = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7)),
            IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)),
        ];
        for (ip, never) in [
            ("10.0.2.2", true),
            ("10.0.2.15", true),
            ("192.168.1.7", true),
            ("93.184.216.34", true),
            ("127.0.0.1", false),
            ("10.0.3.1", false),
            ("192.168.1.8", false),
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(never_reachable(ip, &host).is_some(), never, "{ip}");
        }
    }

    #[test]
    fn pins_name_one_reachable_host() {
        let host = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7)),
        ];
        for (ip, ok) in [
            ("127.0.0.1", true),
            ("127.0.3.4", true),
            ("10.77.0.1", true),
            ("192.168.1.8", true),
            ("169.254.169.254", true),
            ("140.82.112.3", true),
            ("198.19.0.1", true),
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("255.255.255.255", false),
            ("224.0.0.251", false),
            ("239.1.2.3", false),
            ("240.0.0.1", false),
            ("127.1.0.1", false),
            ("198.18.0.1", false),
            ("10.0.2.2", false),
            ("10.0.2.15", false),
            ("192.168.1.7", false),
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(pin_refusal(ip, &host).is_none(), ok, "{ip}");
        }
    }

    #[test]
    fn host_addresses_are_read_again_once_stale() {
        let start = Instant::now();
        let mut addrs = HostAddrs {
            addrs: Vec::new(),
            read_at: start,
        };
        addrs.refresh(start);
        assert!(addrs.get().is_empty(), "fresh list read again");
        addrs.refresh(start + HOST_ADDRS_TTL);
        assert!(addrs.get().contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn the_host_loopback_has_an_alias_the_guest_can_route() {
        let host = Ipv4Addr::new(127, 0, 3, 4);
        assert_eq!(guest_view(host), Ipv4Addr::new(198, 18, 3, 4));
        assert_eq!(host_view(guest_view(host)), host);
        for other in ["8.8.8.8", "127.1.0.1", "10.0.2.2", "198.19.0.1"] {
            let ip: Ipv4Addr = other.parse().unwrap();
            assert_eq!(guest_view(ip), ip, "{other}");
            if !is_loopback_alias(ip) {
                assert_eq!(host_view(ip), ip, "{other}");
            }
        }
    }

    #[test]
    fn host_addresses_include_loopback() {
        assert!(host_addresses().contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
