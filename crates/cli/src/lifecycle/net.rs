//! `agentvm net allow|deny|show|log`: the network of the workspace's running
//! VM, through its control socket; and [`NetControl`], the VMM's side of
//! those requests.
//!
//! Changes last until the VM stops: the configuration file is not edited
//! (the messages say how to keep a change).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use agentvm_net::policy::{is_at_or_below, normalize_name};
use agentvm_net::{Mode, NetHandle, Policy};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::control::{Client, PolicyChange, Reply, Request};
use super::exec::running;
use super::rotated::RotatedLog;
use super::{Target, VmState};
use crate::net_args::parse_domain;

/// Arguments of `agentvm net`.
#[derive(Args, Debug)]
pub struct NetArgs {
    /// The workspace [default: the current directory].
    #[arg(long, value_name = "DIR", global = true)]
    dir: Option<PathBuf>,
    /// The VM called NAME, when only one VM has that name.
    #[arg(long, value_name = "NAME", global = true, conflicts_with = "dir")]
    name: Option<String>,
    #[command(subcommand)]
    command: NetCommand,
}

/// What `agentvm net` does.
#[derive(Subcommand, Debug)]
enum NetCommand {
    /// Let the running VM resolve and reach DOMAIN and every name below it
    /// (until the VM stops).
    Allow(Domains),
    /// Take DOMAIN off the running VM's allowlist (until the VM stops).
    Deny(Domains),
    /// Print the running VM's network policy.
    Show {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the VM's network audit log: every name resolved or refused,
    /// every connection allowed or denied.
    Log {
        /// Keep printing new decisions until the VM stops (or Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print the log's JSON lines as they are.
        #[arg(long)]
        json: bool,
    },
}

/// Names given to `allow` or `deny`.
#[derive(Args, Debug)]
struct Domains {
    /// Host names (`github.com` covers `api.github.com`).
    #[arg(required = true, value_name = "DOMAIN", value_parser = parse_domain)]
    domains: Vec<String>,
}

/// Runs `agentvm net …`.
pub fn run(args: NetArgs) -> anyhow::Result<ExitCode> {
    let target = Target {
        dir: args.dir,
        name: args.name,
    };
    let dir = &target;
    match args.command {
        NetCommand::Allow(d) => edit(dir, d.domains, true),
        NetCommand::Deny(d) => edit(dir, d.domains, false),
        NetCommand::Show { json } => show(dir, json),
        NetCommand::Log { follow, json } => log(dir, follow, json),
    }
}

/// Sends `net_allow` or `net_deny` and says what changed.
fn edit(dir: &Target, domains: Vec<String>, allow: bool) -> anyhow::Result<ExitCode> {
    let (state, snap) = running(dir)?;
    let name = snap.name;
    let PolicyChange { policy, changed } = Client::connect(&state.control())
        .and_then(|mut vmm| {
            if allow {
                vmm.net_allow(domains.clone())
            } else {
                vmm.net_deny(domains.clone())
            }
        })
        .with_context(|| format!("cannot change {name}'s network policy"))?;
    for d in &domains {
        let was_changed = changed.contains(d);
        match (allow, was_changed) {
            (true, true) => println!("agentvm: {name}: {d} allowed"),
            (true, false) => println!("agentvm: {name}: {d} was already allowed"),
            (false, true) => println!("agentvm: {name}: {d} no longer allowed"),
            (false, false) => {
                let covering: Vec<&str> = policy
                    .domains
                    .iter()
                    .filter(|c| is_at_or_below(d, c))
                    .map(String::as_str)
                    .collect();
                if covering.is_empty() {
                    println!("agentvm: {name}: {d} was not on the allowlist");
                } else {
                    println!(
                        "agentvm: {name}: {d} is not on the allowlist itself; {} still \
                         allows it (deny that instead)",
                        covering.join(", ")
                    );
                }
            }
        }
    }
    match policy.mode {
        Mode::Filtered => {}
        Mode::Open => eprintln!(
            "agentvm: note: {name}'s network is open: every name resolves whatever the allowlist"
        ),
        Mode::Off => eprintln!("agentvm: note: {name}'s network is off: nothing gets through"),
    }
    if !changed.is_empty() {
        let list = if allow { "in" } else { "out of" };
        eprintln!(
            "agentvm: the change lasts until {name} stops; to keep it, edit `[network] domains` \
             {list} .agentvm/config.toml"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the policy in force.
fn show(dir: &Target, as_json: bool) -> anyhow::Result<ExitCode> {
    let (state, snap) = running(dir)?;
    let policy = Client::connect(&state.control())
        .and_then(|mut vmm| vmm.net())
        .with_context(|| format!("cannot read {}'s network policy", snap.name))?;
    if as_json {
        let text = serde_json::to_string_pretty(&policy).context("cannot encode the policy")?;
        println!("{text}");
    } else {
        print!("{}", render(&policy));
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy as `net show` prints it.
pub fn render(p: &Policy) -> String {
    let or_none = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let mut out = format!("mode      {}\n", p.mode.as_str());
    out += &format!("domains   {}\n", or_none(p.domains.clone()));
    out += &format!(
        "ports     {}\n",
        or_none(p.ports.iter().map(u16::to_string).collect())
    );
    out += &format!(
        "hosts     {}\n",
        or_none(p.hosts.iter().map(|(n, ip)| format!("{n}={ip}")).collect())
    );
    out += &format!(
        "forwards  {}\n",
        or_none(
            p.forwards
                .iter()
                .map(|f| format!("{} -> guest port {}", f.host, f.guest_port))
                .collect()
        )
    );
    out
}

/// Prints the audit log, following it with `follow`.
fn log(target: &Target, follow: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let state = target.locate()?;
    let label = state.label();
    let path = state.net_audit();
    let file = match RotatedLog::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let snap = state.read_snapshot().ok();
            if snap.is_some_and(|s| s.policy.mode == Mode::Off) {
                bail!(
                    "{} has no network (mode off), so nothing is logged; set `[network] \
                     mode` in .agentvm/config.toml and restart it",
                    label
                );
            }
            match state.state() {
                VmState::Stopped if !state.dir.exists() => {
                    bail!("the workspace's VM is not running; start it with `agentvm up`")
                }
                _ => bail!("{label} has no network audit log ({})", path.display()),
            }
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
        }
    };
    let mut reader = BufReader::new(file);
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    loop {
        // A line the stack is still writing stays in `line` until its end.
        let n = reader
            .read_line(&mut line)
            .context("cannot read the network audit log")?;
        if n > 0 && line.ends_with('\n') {
            // The names in the log are the guest's DNS questions.
            let text = if as_json {
                crate::escape::json_line(&line).into_owned()
            } else {
                format!("{}\n", human(line.trim_end()))
            };
            out.write_all(text.as_bytes())
                .context("cannot write the network audit log")?;
            line.clear();
            continue;
        }
        if n > 0 {
            continue;
        }
        if !follow || state.live_vmm().is_none() {
            // A last line without its end (the VMM was killed mid-write).
            out.write_all(crate::escape::line(&line).as_bytes())
                .context("cannot write the network audit log")?;
            break;
        }
        out.flush().context("cannot write the network audit log")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    out.flush().context("cannot write the network audit log")?;
    Ok(ExitCode::SUCCESS)
}

/// One audit event as a line a person reads:
/// `TIME VERDICT PROTO DEST NAME (REASON)`; a line that is not an event
/// as it is.
/// Every field is escaped: names are what the guest asked for.
pub fn human(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return crate::escape::line(line).into_owned();
    };
    let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("-");
    let dest = match (v.get("ip").and_then(Value::as_str), v.get("port")) {
        (Some(ip), Some(Value::Number(port))) => format!("{ip}:{port}"),
        (Some(ip), _) => ip.to_string(),
        (None, _) => "-".to_string(),
    };
    let text = |key: &str| crate::escape::line(text(key)).into_owned();
    let mut out = format!(
        "{} {:<5} {:<7} {:<21} {} ({})",
        text("time"),
        text("verdict"),
        text("proto"),
        crate::escape::line(&dest),
        text("name"),
        text("reason")
    );
    // An intercepted request: what it asked for and which secret's name
    // (the stack never writes a value, and neither does this).
    let present = |key: &str| v.get(key).and_then(Value::as_str).is_some();
    if present("method") || present("path") {
        out.push_str(&format!(" {} {}", text("method"), text("path")));
    }
    if present("secret") {
        out.push_str(&format!(" secret {}", text("secret")));
    }
    out
}

/// The VMM's side of the `net*` control requests: reads and edits the
/// policy of the VM's network stack, one edit at a time.
pub struct NetControl {
    /// The stack's handle; `None` when the VM has no network device.
    handle: Option<NetHandle>,
    /// Held while a request reads, edits and replaces the policy.
    edits: Mutex<()>,
}

impl NetControl {
    /// Serves the policy of `handle` (`None`: the VM has no network).
    pub fn new(handle: Option<NetHandle>) -> Self {
        NetControl {
            handle,
            edits: Mutex::new(()),
        }
    }

    /// The mode in force (`off` without a network device).
    pub fn mode(&self) -> Mode {
        self.handle.as_ref().map_or(Mode::Off, |h| h.policy().mode)
    }

    /// Answers a `net*` request (any other is an error).
    pub fn answer(&self, request: &Request) -> Result<Reply, String> {
        match request {
            Request::Net => self
                .edit(|_| Ok(()))
                .map(|(policy, ())| Reply::Net { policy }),
            Request::NetAllow { domains } => self
                .edit(|p| {
                    let mut changed = Vec::new();
                    for d in domains {
                        let name = checked_name(d)?;
                        if !p.domains.contains(&name) {
                            p.allow(&name).map_err(|e| e.to_string())?;
                            changed.push(name);
                        }
                    }
                    Ok(changed)
                })
                .map(|(policy, changed)| Reply::NetAllow(PolicyChange { policy, changed })),
            Request::NetDeny { domains } => self
                .edit(|p| {
                    let mut changed = Vec::new();
                    for d in domains {
                        let name = checked_name(d)?;
                        if p.deny(&name).map_err(|e| e.to_string())? {
                            changed.push(name);
                        }
                    }
                    Ok(changed)
                })
                .map(|(policy, changed)| Reply::NetDeny(PolicyChange { policy, changed })),
            Request::NetPolicy { policy } => self
                .edit(|p| {
                    *p = checked_policy(policy)?;
                    Ok(())
                })
                .map(|(policy, ())| Reply::NetPolicy { policy }),
            other => Err(format!("not a network request: {}", other.op())),
        }
    }

    /// Runs `change` on a copy of the policy; every name checked, installs
    /// the result and returns it with what `change` returned.
    fn edit<T>(
        &self,
        change: impl FnOnce(&mut Policy) -> Result<T, String>,
    ) -> Result<(Policy, T), String> {
        let handle = self.handle.as_ref().ok_or_else(|| {
            "this VM has no network (mode off when it started); set `[network] mode` and \
             restart it"
                .to_string()
        })?;
        let _one_at_a_time = self.edits.lock().unwrap_or_else(|p| p.into_inner());
        let before = handle.policy();
        let mut policy = before.clone();
        let out = change(&mut policy)?;
        if policy != before {
            tracing::info!(
                mode = policy.mode.as_str(),
                domains = policy.domains.len(),
                "network policy replaced"
            );
            handle.set_policy(policy.clone());
        }
        Ok((policy, out))
    }
}

/// A name from a request, normalized, or the reason it is refused.
fn checked_name(name: &str) -> Result<String, String> {
    normalize_name(name).map_err(|e| e.to_string())
}

/// `policy` with every name normalized and checked and no port 0.
fn checked_policy(policy: &Policy) -> Result<Policy, String> {
    let mut out = Policy {
        mode: policy.mode,
        domains: Vec::new(),
        ports: Vec::new(),
        hosts: Default::default(),
        forwards: policy.forwards.clone(),
    };
    for d in &policy.domains {
        out.allow(d).map_err(|e| e.to_string())?;
    }
    for &port in &policy.ports {
        if port == 0 {
            return Err("port 0 is not a port (1 to 65535)".into());
        }
        if !out.ports.contains(&port) {
            out.ports.push(port);
        }
    }
    for (name, ip) in &policy.hosts {
        out.pin(name, *ip).map_err(|e| e.to_string())?;
    }
    if let Some(f) = policy
        .forwards
        .iter()
        .find(|f| f.host.port() == 0 || f.guest_port == 0)
    {
        return Err(format!(
            "forward {} -> {}: ports are 1 to 65535",
            f.host, f.guest_port
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use agentvm_net::{NetStack, StackConfig};

    use super::*;

    fn control(policy: Policy) -> (NetStack, NetControl) {
        let stack = NetStack::new(StackConfig {
            policy,
            ..StackConfig::default()
        })
        .unwrap();
        let control = NetControl::new(Some(stack.handle()));
        (stack, control)
    }

    fn ok(c: &NetControl, r: Request) -> Reply {
        c.answer(&r).unwrap()
    }

    /// The policy and the changed names of an allow or deny reply.
    fn change(reply: Reply) -> (Policy, Vec<String>) {
        match reply {
            Reply::NetAllow(c) | Reply::NetDeny(c) => (c.policy, c.changed),
            other => panic!("not a change: {other:?}"),
        }
    }

    #[test]
    fn allow_and_deny_edit_the_stacks_policy() {
        let (stack, c) = control(Policy::new(Mode::Filtered));
        assert_eq!(c.mode(), Mode::Filtered);
        let (policy, changed) = change(ok(
            &c,
            Request::NetAllow {
                domains: vec!["A.test.".into(), "b.test".into()],
            },
        ));
        assert_eq!(changed, ["a.test", "b.test"]);
        assert_eq!(policy.domains, ["a.test", "b.test"]);
        assert_eq!(stack.handle().policy().domains, ["a.test", "b.test"]);
        let again = ok(
            &c,
            Request::NetAllow {
                domains: vec!["a.test".into()],
            },
        );
        assert!(
            matches!(&again, Reply::NetAllow(c) if c.changed.is_empty()),
            "{again:?}"
        );
        let (policy, changed) = change(ok(
            &c,
            Request::NetDeny {
                domains: vec!["a.test".into(), "x.test".into()],
            },
        ));
        assert_eq!(changed, ["a.test"]);
        assert_eq!(policy.domains, ["b.test"]);
        assert_eq!(stack.handle().policy().domains, ["b.test"]);
        assert_eq!(
            ok(&c, Request::Net),
            Reply::Net {
                policy: stack.handle().policy()
            }
        );
        assert!(c.answer(&Request::Status).is_err(), "not a net request");
    }

    #[test]
    fn a_bad_name_changes_nothing() {
        let (stack, c) = control(Policy::new(Mode::Filtered));
        let err = c
            .answer(&Request::NetAllow {
                domains: vec!["good.test".into(), "bad name".into()],
            })
            .unwrap_err();
        assert!(err.contains("`bad name` is not a domain name"), "{err}");
        assert!(stack.handle().policy().domains.is_empty());
    }

    #[test]
    fn a_whole_policy_is_checked_then_installed() {
        let (stack, c) = control(Policy::new(Mode::Filtered));
        let mut p = Policy::new(Mode::Open);
        p.domains = vec!["Upper.Test".into()];
        p.ports = vec![22, 22, 443];
        let r = ok(&c, Request::NetPolicy { policy: p });
        let now = stack.handle().policy();
        assert_eq!(
            r,
            Reply::NetPolicy {
                policy: now.clone()
            }
        );
        assert_eq!(now.domains, ["upper.test"]);
        assert_eq!(now.mode, Mode::Open);
        assert_eq!(now.ports, [22, 443]);
        assert_eq!(c.mode(), Mode::Open);
        let mut bad = Policy::new(Mode::Filtered);
        bad.ports = vec![0];
        let err = c.answer(&Request::NetPolicy { policy: bad }).unwrap_err();
        assert!(err.contains("port 0"), "{err}");
        let mut bad = Policy::new(Mode::Filtered);
        bad.domains = vec!["a..b".into()];
        assert!(c.answer(&Request::NetPolicy { policy: bad }).is_err());
        // A pin to an address that is no single host, sent around the
        // CLI's own checks, is refused by the running VM too.
        for ip in [[0, 0, 0, 0], [255, 255, 255, 255], [224, 0, 0, 251]] {
            let mut bad = Policy::new(Mode::Open);
            bad.hosts.insert("a.test".into(), ip.into());
            let err = c.answer(&Request::NetPolicy { policy: bad }).unwrap_err();
            assert!(err.contains("cannot pin a.test to "), "{err}");
        }
        assert_eq!(stack.handle().policy().mode, Mode::Open, "unchanged");
    }

    #[test]
    fn without_a_network_every_net_request_says_so() {
        let c = NetControl::new(None);
        assert_eq!(c.mode(), Mode::Off);
        for r in [
            Request::Net,
            Request::NetAllow {
                domains: vec!["a.test".into()],
            },
            Request::NetDeny {
                domains: vec!["a.test".into()],
            },
            Request::NetPolicy {
                policy: Policy::new(Mode::Open),
            },
        ] {
            let err = c.answer(&r).unwrap_err();
            assert!(err.contains("no network"), "{err}");
        }
    }

    #[test]
    fn policies_and_events_read_well() {
        let mut p = Policy::new(Mode::Filtered);
        p.allow("a.test").unwrap();
        p.pin("api.test", std::net::Ipv4Addr::LOCALHOST).unwrap();
        p.forwards.push("8080:80".parse().unwrap());
        assert_eq!(
            render(&p),
            "mode      filtered\ndomains   a.test\nports     80, 443\n\
             hosts     api.test=127.0.0.1\nforwards  127.0.0.1:8080 -> guest port 80\n"
        );
        assert!(render(&Policy::new(Mode::Open)).contains("domains   none\n"));
        // The stack's own events, as its audit file has them.
        use agentvm_net::{AuditEvent, Proto, Verdict};
        let mut tcp = AuditEvent::now(Proto::Tcp, Verdict::Deny, "port not allowed")
            .name("a.test")
            .dest(std::net::Ipv4Addr::new(1, 2, 3, 4), 22);
        tcp.time = "2026-11-23T13:00:00.000Z".into();
        assert_eq!(
            human(tcp.to_line().trim_end()),
            "2026-11-23T13:00:00.000Z deny  tcp     1.2.3.4:22            a.test (port not allowed)"
        );
        let mut dns = AuditEvent::now(Proto::Dns, Verdict::Allow, "allowlisted").name("b.test");
        dns.time = "t".into();
        assert_eq!(
            human(dns.to_line().trim_end()),
            "t allow dns     -                     b.test (allowlisted)"
        );
        assert_eq!(human("not json"), "not json");
        // An intercepted request names its method, path and secret.
        let mut req = AuditEvent::now(Proto::Tcp, Verdict::Allow, "secret substituted")
            .name("api.test")
            .dest(std::net::Ipv4Addr::new(1, 2, 3, 4), 443);
        req.time = "t".into();
        req.method = Some("POST".into());
        req.path = Some("/v1/messages".into());
        req.secret = Some("KEY".into());
        assert_eq!(
            human(req.to_line().trim_end()),
            "t allow tcp     1.2.3.4:443           api.test (secret substituted) POST \
             /v1/messages secret KEY"
        );
        // A hostile path cannot forge a second line.
        req.path = Some("/x\n2026 allow dns".into());
        assert!(!human(req.to_line().trim_end()).contains('\n'));
    }
}
