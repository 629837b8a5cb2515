//! The egress policy: which names resolve, which ports and addresses a
//! guest flow may reach, which host ports forward into the guest. A policy
//! is plain data; the stack consults the current one at every decision and
//! a new one can replace it on a running stack ([`crate::NetHandle`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Ports a `filtered` policy allows when it names none.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// Errors in a policy's parts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Not a valid DNS name.
    #[error("`{0}` is not a domain name (letters, digits, `-` and `_` in dot-separated labels of at most 63 bytes)")]
    BadDomain(String),
    /// A port forward not of the form `[ADDR:]HOST_PORT:GUEST_PORT`.
    #[error("`{0}` is not a port forward (expected HOST_PORT:GUEST_PORT or ADDR:HOST_PORT:GUEST_PORT, ports 1-65535)")]
    BadForward(String),
    /// A `hosts` pin not of the form `NAME=IPV4`.
    #[error("`{0}` is not a host pin (expected NAME=IPV4, e.g. api.test=127.0.0.1)")]
    BadHost(String),
    /// A `hosts` pin to an address no pin may name
    /// ([`crate::addr::pin_refusal`]).
    #[error("cannot pin {name} to {ip}: {ip} {why}")]
    RefusedPin {
        /// The pinned name.
        name: String,
        /// The address.
        ip: Ipv4Addr,
        /// Why it is refused.
        why: &'static str,
    },
    /// An unknown mode.
    #[error("unknown network mode `{0}` (expected off, filtered or open)")]
    BadMode(String),
}

/// Network egress modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nothing gets through: no DHCP, no DNS, no flows.
    #[default]
    Off,
    /// Only allowlisted names resolve, and only the addresses the DNS server
    /// handed out for them are reachable, on the allowed ports.
    Filtered,
    /// Every public address on every port. Private, provider-internal
    /// and other special-purpose addresses ([`crate::addr::special_range`])
    /// stay unreachable, as in every mode, unless pinned.
    Open,
}

impl Mode {
    /// The mode's name as the CLI and config spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Filtered => "filtered",
            Mode::Open => "open",
        }
    }
}

impl FromStr for Mode {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "filtered" => Ok(Mode::Filtered),
            "open" => Ok(Mode::Open),
            other => Err(PolicyError::BadMode(other.to_string())),
        }
    }
}

/// A host→guest TCP port forward: connections to `host` are spliced to
/// the guest's `guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// Where the stack listens on the host (127.0.0.1 unless given).
    pub host: SocketAddrV4,
    /// The guest port connections go to.
    pub guest_port: u16,
}

impl FromStr for Forward {
    type Err = PolicyError;

    /// `HOST_PORT:GUEST_PORT` (listening on 127.0.0.1) or
    /// `ADDR:HOST_PORT:GUEST_PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PolicyError::BadForward(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        let (addr, host_port, guest_port) = match parts.as_slice() {
            [h, g] => (Ipv4Addr::LOCALHOST, *h, *g),
            [a, h, g] => (a.parse().map_err(|_| bad())?, *h, *g),
            _ => return Err(bad()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        Ok(Forward {
            host: SocketAddrV4::new(addr, port(host_port)?),
            guest_port: port(guest_port)?,
        })
    }
}

/// The egress policy of one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Off, filtered or open.
    pub mode: Mode,
    /// Allowed names (normalized: lower case, no trailing dot); each allows
    /// itself and every name below it.
    pub domains: Vec<String>,
    /// Destination ports guest flows may use in `filtered` mode, and to
    /// pinned addresses in every mode.
    pub ports: Vec<u16>,
    /// Names answered locally with a fixed address (allowed in any mode
    /// but `off`, and the only way to reach a blocked address such as
    /// 127.0.0.1 or a private one). A pin opens only `ports` of its
    /// address, in every mode.
    pub hosts: BTreeMap<String, Ipv4Addr>,
    /// Host→guest TCP port forwards.
    pub forwards: Vec<Forward>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Off,
            domains: Vec::new(),
            ports: DEFAULT_PORTS.to_vec(),
            hosts: BTreeMap::new(),
            forwards: Vec::new(),
        }
    }
}

impl Policy {
    /// A policy of `mode` with default ports and nothing else.
    pub fn new(mode: Mode) -> Self {
        Policy {
            mode,
            ..Policy::default()
        }
    }

    /// Adds an allowed domain (normalized; duplicates are kept once).
    pub fn allow(&mut self, domain: &str) -> Result<(), PolicyError> {
        let name = normalize_name(domain)?;
        if !self.domains.contains(&name) {
            self.domains.push(name);
        }
        Ok(())
    }

    /// Removes an allowed domain; false if it was not in the list.
    pub fn deny(&mut self, domain: &str) -> Result<bool, PolicyError> {
        let name = normalize_name(domain)?;
        let before = self.domains.len();
        self.domains.retain(|d| *d != name);
        Ok(self.domains.len() != before)
    }

    /// Pins `name` to `ip` (`NAME=IPV4` on the command line). Addresses
    /// that name no single reachable host are refused
    /// ([`crate::addr::pin_refusal`]: this network, broadcast, multicast,
    /// the host's own addresses but loopback, a host loopback address
    /// outside 127.0.0.0/16, which the guest could not be given through
    /// [`crate::addr::LOOPBACK_ALIAS`]).
    pub fn pin(&mut self, name: &str, ip: Ipv4Addr) -> Result<(), PolicyError> {
        let name = normalize_name(name)?;
        check_pin_address(&name, ip)?;
        self.hosts.insert(name, ip);
        Ok(())
    }

    /// Whether a flow to a pinned address may use `port`: only the
    /// policy's ports, whatever the mode (a pin opens one service of a
    /// blocked host, not the host).
    pub fn allows_pinned_port(&self, port: u16) -> bool {
        self.mode != Mode::Off && self.ports.contains(&port)
    }

    /// The address the guest is given for `name` (already normalized) when
    /// it is pinned: the pinned address, or its loopback alias
    /// ([`crate::addr::guest_view`]).
    pub fn pinned(&self, name: &str) -> Option<Ipv4Addr> {
        self.hosts.get(name).copied().map(crate::addr::guest_view)
    }

    /// Whether the DNS server may answer `name` (already normalized) with
    /// real addresses: in `open` mode every name, in `filtered` mode a
    /// pinned name or one at or below an allowed domain (on a label
    /// boundary: `github.com` allows `api.github.com`, not
    /// `evilgithub.com`), in `off` mode none.
    pub fn allows_name(&self, name: &str) -> bool {
        match self.mode {
            Mode::Off => false,
            Mode::Open => true,
            Mode::Filtered => {
                self.hosts.contains_key(name)
                    || self.domains.iter().any(|d| is_at_or_below(name, d))
            }
        }
    }

    /// Whether guest flows may use destination `port`.
    pub fn allows_port(&self, port: u16) -> bool {
        match self.mode {
            Mode::Off => false,
            Mode::Open => true,
            Mode::Filtered => self.ports.contains(&port),
        }
    }
}

/// Whether `name` is `domain` or a name below it (both normalized).
pub fn is_at_or_below(name: &str, domain: &str) -> bool {
    name == domain
        || (name.len() > domain.len()
            && name.ends_with(domain)
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
}

/// Lower-cases `name`, drops one trailing dot and checks it is a DNS name.
pub fn normalize_name(name: &str) -> Result<String, PolicyError> {
    let bad = || PolicyError::BadDomain(name.to_string());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad());
    }
    for label in trimmed.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty() || label.len() > 63 || !ok_chars {
            return Err(bad());
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// A pin's address must name one host the guest can be given
/// ([`crate::addr::pin_refusal`], against the host's addresses now).
fn check_pin_address(name: &str, ip: Ipv4Addr) -> Result<(), PolicyError> {
    match crate::addr::pin_refusal(ip, &crate::addr::host_addresses()) {
        Some(why) => Err(PolicyError::RefusedPin {
            name: name.to_string(),
            ip,
            why,
        }),
        None => Ok(()),
    }
}

/// Parses a `NAME=IPV4` host pin.
pub fn parse_host_pin(s: &str) -> Result<(String, Ipv4Addr), PolicyError> {
    let bad = || PolicyError::BadHost(s.to_string());
    let (name, ip) = s.split_once('=').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.trim().parse().map_err(|_| bad())?;
    let name = normalize_name(name.trim()).map_err(|_| bad())?;
    check_pin_address(&name, ip)?;
    Ok((name, ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(domains: &[&str]) -> Policy {
        let mut p = Policy::new(Mode::Filtered);
        for d in domains {
            p.allow(d).unwrap();
        }
        p
    }

    #[test]
    fn names_match_on_label_boundaries_only() {
        let p = filtered(&["github.com", "Example.ORG."]);
        for (name, allowed) in [
            ("github.com", true),
            ("api.github.com", true),
            ("a.b.github.com", true),
            ("evilgithub.com", false),
            ("github.com.evil.net", false),
            ("com", false),
            ("example.org", true),
            ("www.example.org", true),
            ("xexample.org", false),
        ] {
            assert_eq!(p.allows_name(name), allowed, "{name}");
        }
    }

    #[test]
    fn modes_decide_names_and_ports() {
        let mut p = filtered(&["a.test"]);
        p.pin("pinned.test", Ipv4Addr::LOCALHOST).unwrap();
        assert!(p.allows_name("pinned.test"));
        // The guest is given the host loopback's alias.
        assert_eq!(p.pinned("pinned.test"), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(p.hosts["pinned.test"], Ipv4Addr::LOCALHOST);
        assert!(!p.allows_name("b.test"));
        assert!(p.allows_port(443) && p.allows_port(80) && !p.allows_port(22));
        p.mode = Mode::Open;
        assert!(p.allows_name("b.test") && p.allows_port(22));
        p.mode = Mode::Off;
        assert!(!p.allows_name("a.test") && !p.allows_name("pinned.test") && !p.allows_port(443));
    }

    #[test]
    fn pins_to_addresses_that_are_no_single_reachable_host_are_refused() {
        let own = crate::addr::host_addresses()
            .into_iter()
            .find_map(|ip| match ip {
                std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(v4.to_string()),
                _ => None,
            });
        let mut refused = vec![
            "0.0.0.0",
            "0.0.0.7",
            "255.255.255.255",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "127.1.0.1",
            "198.18.0.1",
            "10.0.2.2",
        ];
        refused.extend(own.as_deref());
        for ip in refused {
            let pin = format!("a.test={ip}");
            let err = parse_host_pin(&pin).unwrap_err();
            assert!(
                matches!(err, PolicyError::RefusedPin { .. }),
                "{pin}: {err:?}"
            );
            assert!(
                err.to_string().starts_with("cannot pin a.test to "),
                "{err}"
            );
            let mut p = Policy::new(Mode::Open);
            assert_eq!(p.pin("a.test", ip.parse().unwrap()), Err(err), "{pin}");
            assert!(p.hosts.is_empty());
        }
        for ip in [
            "127.0.0.1",
            "127.0.9.9",
            "10.77.0.1",
            "169.254.169.254",
            "140.82.112.3",
        ] {
            let pin = format!("a.test={ip}");
            assert!(parse_host_pin(&pin).is_ok(), "{pin}");
        }
    }

    #[test]
    fn a_pin_opens_only_the_policys_ports_in_every_mode() {
        for mode in [Mode::Filtered, Mode::Open] {
            let mut p = Policy::new(mode);
            p.ports = vec![8080];
            assert!(p.allows_pinned_port(8080), "{mode:?}");
            assert!(
                !p.allows_pinned_port(22) && !p.allows_pinned_port(443),
                "{mode:?}"
            );
        }
        assert!(!Policy::new(Mode::Off).allows_pinned_port(443));
    }

    #[test]
    fn allow_and_deny_edit_the_list() {
        let mut p = filtered(&["a.test"]);
        p.allow("A.TEST").unwrap();
        assert_eq!(p.domains, ["a.test"]);
        assert!(p.deny("a.test.").unwrap());
        assert!(!p.deny("a.test").unwrap());
        assert!(p.domains.is_empty());
    }

    #[test]
    fn bad_names_forwards_pins_and_modes_are_errors() {
        for bad in ["", ".", "a..b", "a b.com", &"x".repeat(64), "é.com"] {
            assert!(normalize_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            "8080:80".parse::<Forward>().unwrap(),
            Forward {
                host: "127.0.0.1:8080".parse().unwrap(),
                guest_port: 80
            }
        );
        assert_eq!(
            "0.0.0.0:2222:22".parse::<Forward>().unwrap().host,
            "0.0.0.0:2222".parse().unwrap()
        );
        for bad in ["80", "0:80", "a:80", "1:2:3:4", "70000:1", "x.y:1:2"] {
            assert!(bad.parse::<Forward>().is_err(), "{bad}");
        }
        assert_eq!(
            parse_host_pin("Api.Test=127.0.0.1").unwrap(),
            ("api.test".to_string(), Ipv4Addr::LOCALHOST)
        );
        for bad in ["api.test", "api.test=::1", "=1.2.3.4", "a=1.2.3"] {
            assert!(
                matches!(parse_host_pin(bad), Err(PolicyError::BadHost(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "bridge".parse::<Mode>(),
            Err(PolicyError::BadMode("bridge".into()))
        );
        assert_eq!("filtered".parse::<Mode>().unwrap().as_str(), "filtered");
    }
}
