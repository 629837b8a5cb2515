//! `agentvm.*` settings from the kernel command line.
//!
//! | parameter | meaning |
//! |---|---|
//! | `agentvm.ip=ADDR/PREFIX` | static IPv4 address of `eth0` (`dhcp`, the default: ask by DHCP; `off`: leave unconfigured) |
//! | `agentvm.gw=ADDR` | default gateway (static mode) |
//! | `agentvm.dns=ADDR[,ADDR…]` | name servers for `/etc/resolv.conf` (static mode; may repeat) |
//! | `agentvm.hostname=NAME` | host name (default `agentvm`) |
//! | `agentvm.share=TAG:/mount/point[:ro\|:rw]` | mount virtio-fs `TAG` (may repeat; default `rw`) |
//! | `agentvm.port=N` | vsock port for exec (default 1024) |
//!
//! Parameters with a dot are not passed to init by the kernel, so the agent
//! reads them from `/proc/cmdline`.

use std::net::Ipv4Addr;

/// How `eth0` gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpMode {
    /// Ask a DHCP server (in the background; exec does not wait for it).
    Dhcp,
    /// Fixed address and prefix length.
    Static(Ipv4Addr, u8),
    /// Bring the link up without an address.
    Off,
}

/// A virtio-fs share to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The virtio-fs tag.
    pub tag: String,
    /// Absolute mount point (created if missing).
    pub mount_point: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// Everything the command line configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `eth0` address.
    pub ip: IpMode,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// Host name.
    pub hostname: String,
    /// virtio-fs shares, in order.
    pub shares: Vec<Share>,
    /// vsock port for exec.
    pub port: u32,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            ip: IpMode::Dhcp,
            gateway: None,
            dns: Vec::new(),
            hostname: "agentvm".into(),
            shares: Vec::new(),
            port: agentvm_protocol::EXEC_PORT,
        }
    }
}

/// Parses a command line; returns the settings and one warning per
/// `agentvm.*` parameter that was ignored.
pub fn parse(cmdline: &str) -> (BootConfig, Vec<String>) {
    let mut cfg = BootConfig::default();
    let mut warnings = Vec::new();
    for word in split(cmdline) {
        let Some(rest) = word.strip_prefix("agentvm.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let ok = match key {
            "ip" => parse_ip(value).map(|ip| cfg.ip = ip).is_some(),
            "gw" => value.parse().map(|gw| cfg.gateway = Some(gw)).is_ok(),
            "dns" => {
                let addrs: Result<Vec<Ipv4Addr>, _> = value.split(',').map(str::parse).collect();
                addrs.map(|a| cfg.dns.extend(a)).is_ok()
            }
            "hostname" => {
                let valid = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if valid {
                    cfg.hostname = value.to_owned();
                }
                valid
            }
            "share" => parse_share(value).map(|s| cfg.shares.push(s)).is_some(),
            "port" => value.parse().map(|p| cfg.port = p).is_ok(),
            _ => false,
        };
        if !ok {
            warnings.push(format!("ignoring {word}"));
        }
    }
    (cfg, warnings)
}

fn parse_ip(v: &str) -> Option<IpMode> {
    match v {
        "dhcp" => Some(IpMode::Dhcp),
        "off" => Some(IpMode::Off),
        _ => {
            let (addr, prefix) = v.split_once('/').unwrap_or((v, "24"));
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
            Some(IpMode::Static(addr.parse().ok()?, prefix))
        }
    }
}

fn parse_share(v: &str) -> Option<Share> {
    let mut parts = v.split(':');
    let tag = parts.next().filter(|t| !t.is_empty())?;
    let mount_point = parts.next().filter(|m| m.starts_with('/'))?;
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Share {
        tag: tag.to_owned(),
        mount_point: mount_point.to_owned(),
        read_only,
    })
}

/// Splits on whitespace; double quotes group words (the kernel's rule).
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let (cfg, warnings) = parse(
            "console=ttyS0 quiet agentvm.ip=10.0.2.15/24 agentvm.gw=10.0.2.2 \
             agentvm.dns=10.0.2.3,1.1.1.1 agentvm.hostname=box-1 \
             agentvm.share=work:/workspace agentvm.share=\"cache:/var/cache x:ro\" \
             agentvm.share=ro:/ro:ro agentvm.share=x:/y:bogus agentvm.port=2000\n",
        );
        assert_eq!(cfg.ip, IpMode::Static(Ipv4Addr::new(10, 0, 2, 15), 24));
        assert_eq!(cfg.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            cfg.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(cfg.hostname, "box-1");
        assert_eq!(cfg.port, 2000);
        assert_eq!(
            cfg.shares,
            [
                Share {
                    tag: "work".into(),
                    mount_point: "/workspace".into(),
                    read_only: false
                },
                Share {
                    tag: "cache".into(),
                    mount_point: "/var/cache x".into(),
                    read_only: true
                },
                Share {
                    tag: "ro".into(),
                    mount_point: "/ro".into(),
                    read_only: true
                },
            ]
        );
        assert_eq!(warnings, ["ignoring agentvm.share=x:/y:bogus"]);
    }

    #[test]
    fn defaults_and_bad_values() {
        let (cfg, w) =
            parse("agentvm.ip=1.2.3.4/33 agentvm.share=t:rel agentvm.bogus agentvm.hostname=a_b");
        assert_eq!(cfg, BootConfig::default());
        assert_eq!(w.len(), 4);
        assert_eq!(parse("agentvm.ip=off").0.ip, IpMode::Off);
        assert_eq!(
            parse("agentvm.ip=192.168.1.9").0.ip,
            IpMode::Static(Ipv4Addr::new(192, 168, 1, 9), 24)
        );
    }
}
