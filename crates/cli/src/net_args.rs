//! The network options of commands that build a VM from the command line
//! (`agentvm boot`): `--net MODE [--allow DOMAIN]… [--port N]…
//! [--host NAME=IP]… [--forward [ADDR:]HOST_PORT:GUEST_PORT]… [--audit FILE]`,
//! turned into the stack's [`Policy`].
//!
//! Every value is checked by clap with the policy's own parsers, so a bad
//! one is refused before anything starts, named in the message. `--net off`
//! (the default) means no network device at all; the other options need a
//! network, and asking for one of them without it is an error rather than
//! an option silently ignored.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use agentvm_net::policy::{normalize_name, parse_host_pin};
use agentvm_net::{Audit, Forward, Mode, Policy};
use anyhow::{bail, Context};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;

use crate::config::validate::check_domain;

/// Network options: mode, allowlist, ports, host pins, forwards, audit log.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[command(next_help_heading = "Network")]
pub struct NetArgs {
    /// Egress mode: `off` (no network device), `filtered` (only --allow'ed
    /// names, on --port ports) or `open` (every public address; private,
    /// LAN and host addresses only through --host pins) [default: off].
    #[arg(long = "net", value_name = "MODE", value_parser = mode_parser())]
    pub mode: Option<Mode>,
    /// In filtered mode, let the guest resolve and reach DOMAIN and every
    /// name below it (`github.com` covers `api.github.com`; repeatable).
    #[arg(long = "allow", value_name = "DOMAIN", value_parser = parse_domain)]
    pub allow: Vec<String>,
    /// A destination port filtered mode allows, and the only ports a
    /// --host pin opens in any mode (repeatable; replaces the default ports
    /// 80 and 443).
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Answer NAME with IP from the VMM's DNS server (repeatable); the only
    /// way to reach an address the filter always blocks (the host's
    /// 127.0.0.1, private and other special-purpose ranges), on --port
    /// ports only. 0.0.0.0, broadcast, multicast and the host's own
    /// addresses cannot be pinned.
    #[arg(long = "host", value_name = "NAME=IP", value_parser = parse_pin)]
    pub hosts: Vec<(String, Ipv4Addr)>,
    /// Forward host TCP port HOST_PORT (on ADDR, default 127.0.0.1) to the
    /// guest's port GUEST_PORT (repeatable).
    #[arg(
        long = "forward",
        value_name = "[ADDR:]HOST_PORT:GUEST_PORT",
        value_parser = parse_forward
    )]
    pub forwards: Vec<Forward>,
    /// Append every egress decision (name resolved or refused, connection
    /// allowed or denied) to FILE, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
}

/// `off`, `filtered` or `open`, listed in `--help` and in the error.
fn mode_parser() -> impl TypedValueParser<Value = Mode> {
    PossibleValuesParser::new([Mode::Off, Mode::Filtered, Mode::Open].map(Mode::as_str))
        .try_map(|word| word.parse::<Mode>())
}

/// A name for the allowlist: the configuration file's checks (which say
/// what to write instead of a URL, a wildcard or an address), then the
/// policy's normalization.
pub fn parse_domain(s: &str) -> Result<String, String> {
    let name = check_domain(s)?;
    normalize_name(&name).map_err(|e| e.to_string())
}

/// `NAME=IPV4`.
fn parse_pin(s: &str) -> Result<(String, Ipv4Addr), agentvm_net::PolicyError> {
    parse_host_pin(s)
}

/// `[ADDR:]HOST_PORT:GUEST_PORT`.
fn parse_forward(s: &str) -> Result<Forward, agentvm_net::PolicyError> {
    s.parse()
}

impl NetArgs {
    /// The mode asked for (`off` when `--net` is not given).
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Off)
    }

    /// The policy these options ask for; `None` for no network device
    /// (`--net off`, the default). An option that needs a network given
    /// without one, or two forwards of one host port to different guest
    /// ports, is an error.
    pub fn policy(&self) -> anyhow::Result<Option<Policy>> {
        let mode = self.mode();
        if mode == Mode::Off {
            if let Some(option) = self.first_network_option() {
                bail!(
                    "{option} needs a network, and the VM has none without --net: \
                     add --net filtered (or --net open)"
                );
            }
            return Ok(None);
        }
        let mut policy = Policy::new(mode);
        for domain in &self.allow {
            policy
                .allow(domain)
                .with_context(|| format!("--allow {domain}"))?;
        }
        if !self.ports.is_empty() {
            policy.ports.clear();
            for &port in &self.ports {
                if !policy.ports.contains(&port) {
                    policy.ports.push(port);
                }
            }
        }
        for (name, ip) in &self.hosts {
            policy
                .pin(name, *ip)
                .with_context(|| format!("--host {name}={ip}"))?;
        }
        for forward in &self.forwards {
            match policy.forwards.iter().find(|f| f.host == forward.host) {
                Some(f) if f.guest_port == forward.guest_port => {}
                Some(f) => bail!(
                    "--forward {}:{}: host address {} is already forwarded to guest port {}",
                    forward.host,
                    forward.guest_port,
                    forward.host,
                    f.guest_port
                ),
                None => policy.forwards.push(*forward),
            }
        }
        Ok(Some(policy))
    }

    /// What the user should know about options that do nothing in the
    /// chosen mode.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.mode() == Mode::Open && !self.allow.is_empty() {
            out.push(
                "--allow only matters with --net filtered; --net open lets the guest reach \
                 every public address on every port"
                    .to_string(),
            );
        }
        if self.mode() == Mode::Open && !self.ports.is_empty() && self.hosts.is_empty() {
            out.push(
                "--port only matters with --net filtered or a --host pin; --net open lets the \
                 guest reach every public address on every port"
                    .to_string(),
            );
        }
        out
    }

    /// Where `--audit` sends decisions (nowhere without it), the file
    /// opened now so a bad path fails before boot.
    pub fn audit(&self) -> anyhow::Result<Audit> {
        match &self.audit {
            None => Ok(Audit::None),
            Some(path) => Audit::to_file(path).with_context(|| {
                format!(
                    "--audit: cannot open {} for appending; choose a file you can write",
                    path.display()
                )
            }),
        }
    }

    /// The first option given that only makes sense with a network.
    fn first_network_option(&self) -> Option<String> {
        if let Some(d) = self.allow.first() {
            return Some(format!("--allow {d}"));
        }
        if let Some(p) = self.ports.first() {
            return Some(format!("--port {p}"));
        }
        if let Some((name, ip)) = self.hosts.first() {
            return Some(format!("--host {name}={ip}"));
        }
        if let Some(f) = self.forwards.first() {
            return Some(format!("--forward {}:{}", f.host, f.guest_port));
        }
        self.audit
            .as_ref()
            .map(|a| format!("--audit {}", a.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        net: NetArgs,
    }

    fn parse(args: &[&str]) -> Result<NetArgs, String> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|c| c.net)
            .map_err(|e| e.to_string())
    }

    fn policy(args: &[&str]) -> anyhow::Result<Option<Policy>> {
        parse(args).map_err(anyhow::Error::msg)?.policy()
    }

    #[test]
    fn every_flag_parses_into_the_policy() {
        let p = policy(&[
            "--net",
            "filtered",
            "--allow",
            "GitHub.com.",
            "--allow",
            "a.test",
            "--allow",
            "github.com",
            "--port",
            "22",
            "--port",
            "443",
            "--port",
            "22",
            "--host",
            "api.test=127.0.0.1",
            "--forward",
            "8080:80",
            "--forward",
            "0.0.0.0:2222:22",
            "--forward",
            "8080:80",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(p.mode, Mode::Filtered);
        assert_eq!(p.domains, ["github.com", "a.test"]);
        assert_eq!(p.ports, [22, 443], "--port replaces 80 and 443");
        assert_eq!(p.hosts["api.test"], Ipv4Addr::LOCALHOST);
        // The guest is given the host loopback's alias.
        assert_eq!(p.pinned("api.test"), Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(
            p.forwards,
            [
                Forward {
                    host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080),
                    guest_port: 80
                },
                Forward {
                    host: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 2222),
                    guest_port: 22
                },
            ]
        );
    }

    #[test]
    fn modes_and_defaults() {
        for (args, want) in [
            (&[][..], None),
            (&["--net", "off"][..], None),
            (&["--net", "open"][..], Some(Policy::new(Mode::Open))),
            (
                &["--net", "filtered"][..],
                Some(Policy::new(Mode::Filtered)),
            ),
        ] {
            assert_eq!(policy(args).unwrap(), want, "{args:?}");
        }
        assert_eq!(
            policy(&["--net", "filtered"]).unwrap().unwrap().ports,
            [80, 443]
        );
        let open = parse(&["--net", "open", "--allow", "a.test"]).unwrap();
        assert_eq!(open.warnings().len(), 1);
        // --port matters in open mode to a pin: the ports it opens.
        let ports = parse(&["--net", "open", "--port", "8080"]).unwrap();
        assert_eq!(ports.warnings().len(), 1);
        let pinned = [
            "--net",
            "open",
            "--port",
            "8080",
            "--host",
            "a.test=127.0.0.1",
        ];
        assert!(parse(&pinned).unwrap().warnings().is_empty());
        assert_eq!(open.policy().unwrap().unwrap().domains, ["a.test"]);
        assert!(parse(&["--net", "filtered", "--allow", "a.test"])
            .unwrap()
            .warnings()
            .is_empty());
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for (args, expect) in [
            (&["--net", "bridge"][..], "bridge"),
            (
                &["--net", "bridge"][..],
                "possible values: off, filtered, open",
            ),
            (
                &["--allow", "https://github.com"][..],
                "write the name only",
            ),
            (&["--allow", "*.github.com"][..], "write \"github.com\""),
            (&["--allow", "a..b"][..], "\"a..b\" is not a host name"),
            (&["--allow", "1.2.3.4"][..], "is an IP address"),
            (&["--allow", "github.com:443"][..], "ports go in"),
            (&["--port", "0"][..], "'0'"),
            (&["--port", "65536"][..], "'65536'"),
            (&["--port", "http"][..], "'http'"),
            (&["--host", "api.test"][..], "`api.test` is not a host pin"),
            (
                &["--host", "api.test=0.0.0.0"][..],
                "cannot pin api.test to 0.0.0.0: 0.0.0.0 is no host's address",
            ),
            (
                &["--host", "api.test=255.255.255.255"][..],
                "255.255.255.255 is the broadcast address",
            ),
            (
                &["--host", "api.test=224.0.0.1"][..],
                "is a multicast address",
            ),
            (&["--host", "api.test=::1"][..], "expected NAME=IPV4"),
            (&["--host", "=1.2.3.4"][..], "`=1.2.3.4`"),
            (&["--forward", "80"][..], "`80` is not a port forward"),
            (&["--forward", "0:80"][..], "`0:80`"),
            (&["--forward", "8080:70000"][..], "ports 1-65535"),
            (&["--forward", "x.y:1:2"][..], "`x.y:1:2`"),
        ] {
            let err = parse(args).expect_err(&format!("{args:?}"));
            assert!(err.contains(expect), "{args:?}: {err}");
            assert!(err.contains(args[0]), "{args:?} names its flag: {err}");
        }
    }

    #[test]
    fn network_options_without_a_network_are_errors() {
        for (args, named) in [
            (&["--allow", "a.test"][..], "--allow a.test"),
            (&["--net", "off", "--port", "22"][..], "--port 22"),
            (&["--host", "a.test=1.2.3.4"][..], "--host a.test=1.2.3.4"),
            (&["--forward", "8080:80"][..], "--forward 127.0.0.1:8080:80"),
            (&["--audit", "/tmp/x.jsonl"][..], "--audit /tmp/x.jsonl"),
        ] {
            let err = format!("{:#}", policy(args).expect_err(&format!("{args:?}")));
            assert!(err.contains(named), "{args:?}: {err}");
            assert!(err.contains("add --net filtered"), "{args:?}: {err}");
        }
    }

    #[test]
    fn one_host_port_cannot_go_to_two_guest_ports() {
        let err = policy(&[
            "--net",
            "open",
            "--forward",
            "8080:80",
            "--forward",
            "127.0.0.1:8080:81",
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("127.0.0.1:8080 is already forwarded to guest port 80"),
            "{err}"
        );
    }

    #[test]
    fn the_audit_file_opens_now_or_says_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let args = parse(&["--net", "open", "--audit", path.to_str().unwrap()]).unwrap();
        assert!(matches!(args.audit().unwrap(), Audit::File(_)));
        assert!(path.exists());
        let bad = parse(&["--net", "open", "--audit", "/nonexistent/dir/a.jsonl"]).unwrap();
        let err = format!("{:#}", bad.audit().unwrap_err());
        assert!(
            err.contains("--audit: cannot open /nonexistent/dir/a.jsonl"),
            "{err}"
        );
        assert!(matches!(parse(&[]).unwrap().audit().unwrap(), Audit::None));
    }
}
