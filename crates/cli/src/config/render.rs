//! The resolved configuration as TOML, for `agentvm config`: the merged
//! result in the file's own schema (it parses back as a configuration
//! file), with comments saying where things came from. Values taken from
//! the host's environment are never printed: `${VAR}` stays as written and
//! a comment says `<set>` or `<unset>`.

use std::fmt::Write as _;
use std::path::Path;

use super::env::redacted;
use super::load::toml_key;
use super::{Origin, ResolvedConfig, SecretSource};

/// Renders `cfg`; `lookup` tells which host variables are set.
pub fn render(cfg: &ResolvedConfig, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# agentvm configuration of {}",
        cfg.workspace.display()
    );
    match &cfg.file {
        Some(f) => {
            let _ = writeln!(out, "# file: {}", f.display());
        }
        None => {
            let _ = writeln!(
                out,
                "# no {}: defaults (`agentvm init` writes one)",
                super::config_path(Path::new("")).display()
            );
        }
    }
    if !cfg.plugins.is_empty() {
        let _ = writeln!(out, "# plugins merged in: {}", cfg.plugins.join(", "));
    }
    out.push_str(
        "# Values from the host's environment are not shown: <set> or <unset> says\n\
         # whether the host has them now (an unset one is left out of the guest).\n\n",
    );
    line(&mut out, "name", &string(&cfg.name), None);
    line(&mut out, "scripts", &array(&strings(&cfg.scripts)), None);
    line(&mut out, "packages", &array(&strings(&cfg.packages)), None);
    line(&mut out, "npm", &array(&strings(&cfg.npm)), None);
    for (key, path) in [
        ("kernel", &cfg.kernel),
        ("initrd", &cfg.initrd),
        ("image", &cfg.image),
    ] {
        if let Some(p) = path {
            line(&mut out, key, &path_value(p), None);
        }
    }
    if let Some(p) = &cfg.agent_home {
        line(&mut out, "agent_home", &path_value(p), None);
    }
    let git_hooks = match cfg.git_hooks {
        super::GitHooks::Guard => "guard",
        super::GitHooks::Allow => "allow",
    };
    line(&mut out, "git_hooks", &string(git_hooks), None);
    line(&mut out, "seccomp", &string(cfg.seccomp.as_str()), None);

    out.push_str("\n[resources]\n");
    line(&mut out, "vcpus", &cfg.vcpus.to_string(), None);
    line(&mut out, "memory_mib", &cfg.memory_mib.to_string(), None);
    line(&mut out, "log_max_mib", &cfg.log_max_mib.to_string(), None);
    line(
        &mut out,
        "net_memory_mib",
        &cfg.net_memory_mib.to_string(),
        None,
    );
    line(
        &mut out,
        "hotplug_slots",
        &cfg.hotplug_slots.to_string(),
        None,
    );
    line(
        &mut out,
        "persistent_root",
        &cfg.persistent_root.to_string(),
        None,
    );

    let net = &cfg.network;
    out.push_str("\n[network]\n");
    line(&mut out, "mode", &string(net.mode.as_str()), None);
    line(&mut out, "domains", &array(&strings(&net.domains)), None);
    let ports: Vec<String> = net.ports.iter().map(u16::to_string).collect();
    line(&mut out, "ports", &array(&ports), None);
    let hosts: Vec<String> = net
        .hosts
        .iter()
        .map(|(name, ip)| format!("{} = {}", toml_key(name), string(&ip.to_string())))
        .collect();
    line(&mut out, "hosts", &inline_table(&hosts), None);
    let forwards: Vec<String> = net
        .forwards
        .iter()
        .map(|f| string(&f.to_string()))
        .collect();
    line(&mut out, "forwards", &array(&forwards), None);
    if let Some(ca) = &net.upstream_ca {
        line(&mut out, "upstream_ca", &path_value(&ca.path), None);
    }

    out.push_str("\n[ssh]\n");
    line(&mut out, "agent", &cfg.ssh.agent.to_string(), None);
    line(&mut out, "keys", &array(&strings(&cfg.ssh.keys)), None);
    line(&mut out, "hosts", &array(&strings(&cfg.ssh.hosts)), None);

    out.push_str("\n[env]\n");
    for (key, entry) in &cfg.env {
        let note = match redacted(&entry.value, lookup) {
            Some(state) => format!("{state}; {}", origin(&entry.origin)),
            None => origin(&entry.origin),
        };
        line(
            &mut out,
            &toml_key(key),
            &string(&entry.value.template),
            Some(&note),
        );
    }

    out.push_str("\n[secrets]\n");
    for (key, s) in &cfg.secrets {
        let (source, state) = match &s.source {
            SecretSource::Value(v) => (
                format!("value = {}", string(&v.template)),
                redacted(v, lookup),
            ),
            SecretSource::Command(c) => (format!("command = {}", string(c)), None),
        };
        // An inline table stays on one line, and so does its array.
        let hosts = format!("hosts = [{}]", strings(&s.hosts).join(", "));
        let note = match state {
            Some(state) => format!("{state}; {}", origin(&s.origin)),
            None => origin(&s.origin),
        };
        line(
            &mut out,
            &toml_key(key),
            &inline_table(&[source, hosts]),
            Some(&note),
        );
    }

    out.push_str("\n[hooks]\n");
    for (key, list) in [
        ("pre_up", &cfg.hooks.pre_up),
        ("post_up", &cfg.hooks.post_up),
        ("pre_down", &cfg.hooks.pre_down),
        ("post_down", &cfg.hooks.post_down),
    ] {
        line(&mut out, key, &array(&strings(list)), None);
    }

    for m in &cfg.mounts {
        let _ = writeln!(out, "\n[[mounts]]  # {}", origin(&m.origin));
        line(&mut out, "source", &path_value(&m.source), None);
        line(&mut out, "target", &path_value(&m.target), None);
        line(&mut out, "read_only", &m.read_only.to_string(), None);
        line(&mut out, "create", &m.create.to_string(), None);
    }
    for f in &cfg.files {
        let _ = writeln!(out, "\n[[files]]  # {}", origin(&f.origin));
        line(&mut out, "source", &path_value(&f.source), None);
        line(&mut out, "target", &string(&f.target), None);
        match f.mode {
            Some(m) => line(&mut out, "mode", &string(&format!("{m:04o}")), None),
            None => out.push_str("# mode: the source's\n"),
        }
    }
    out
}

/// Where something came from, as a comment says it.
fn origin(o: &Origin) -> String {
    match o {
        Origin::Default => "default: the workspace, read-write at its own path".to_string(),
        Origin::BuiltIn(_) => format!("from {o}"),
        Origin::File { .. } => format!("from {o}"),
    }
}

fn line(out: &mut String, key: &str, value: &str, comment: Option<&str>) {
    let _ = match comment {
        Some(c) => writeln!(out, "{key} = {value}  # {c}"),
        None => writeln!(out, "{key} = {value}"),
    };
}

/// A TOML string literal.
fn string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn strings(list: &[String]) -> Vec<String> {
    list.iter().map(|s| string(s)).collect()
}

fn path_value(p: &Path) -> String {
    string(&p.to_string_lossy())
}

/// An inline table of rendered `key = value` pairs (TOML keeps an inline
/// table on one line).
fn inline_table(pairs: &[String]) -> String {
    if pairs.is_empty() {
        "{}".to_string()
    } else {
        format!("{{ {} }}", pairs.join(", "))
    }
}

/// An array of rendered values: on one line when short, else one per line.
fn array(items: &[String]) -> String {
    let inline = format!("[{}]", items.join(", "));
    if inline.len() <= 60 || items.len() < 2 {
        return inline;
    }
    let mut out = String::from("[\n");
    for item in items {
        let _ = writeln!(out, "  {item},");
    }
    out.push(']');
    out
}
