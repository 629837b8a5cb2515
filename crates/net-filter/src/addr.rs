//! The addresses of the guest's network (slirp's defaults, so guests and
//! users that know QEMU's user networking find what they expect) and the
//! host addresses no guest flow may reach.

use std::net::{IpAddr, Ipv4Addr};

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

/// Why an address is out of reach whatever the mode (unless a forward or a
/// `hosts` pin says otherwise), or `None` when it is an ordinary address.
pub fn always_blocked(ip: Ipv4Addr, host_addrs: &[IpAddr]) -> Option<&'static str> {
    if ip.is_loopback() || is_loopback_alias(ip) {
        Some("host loopback")
    } else if ip.is_link_local() {
        Some("link-local or cloud metadata address")
    } else if ip.is_unspecified() || ip.octets()[0] == 0 {
        Some("unspecified address")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("broadcast or multicast address")
    } else if in_guest_network(ip) {
        Some("the guest's own network")
    } else if host_addrs.contains(&IpAddr::V4(ip)) {
        Some("one of the host's own addresses")
    } else {
        None
    }
}

/// The host's own addresses (every interface), read once when a stack
/// starts. An error leaves the list empty: loopback and link-local stay
/// blocked by range regardless.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head` and returns 0, or
    // returns -1 and leaves it alone; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its
            // real type; only AF_INET is read, as sockaddr_in.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: as above: the family is AF_INET.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_metadata_and_own_network_are_blocked_ordinary_addresses_are_not() {
        let host = [IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7))];
        for (ip, blocked) in [
            ("127.0.0.1", true),
            ("127.5.6.7", true),
            ("169.254.169.254", true),
            ("0.0.0.0", true),
            ("255.255.255.255", true),
            ("224.0.0.1", true),
            ("10.0.2.2", true),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("140.82.112.3", false),
            ("10.0.3.1", false),
            ("198.18.0.1", true),
            ("198.19.0.1", false),
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(always_blocked(ip, &host).is_some(), blocked, "{ip}");
        }
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
