//! The summary `up` and `agentvm trust` print: what a configuration does
//! on the host and lets the guest reach, or what changed since the user
//! approved it. The riskiest parts first (host commands, shares, host
//! values handed to the guest), every line escaped: the file is in the
//! workspace, so the guest may have written it.

use std::fmt::Write;
use std::path::Path;

use super::view::View;
use crate::escape;

/// One section of the summary: a title and its items as lines.
struct Section {
    title: &'static str,
    items: Vec<String>,
}

fn opt_path(key: &str, p: &Option<std::path::PathBuf>) -> Vec<String> {
    p.iter().map(|p| format!("{key} {}", p.display())).collect()
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The sections of `v`, riskiest first.
fn sections(v: &View) -> Vec<Section> {
    vec![
        Section {
            title: "host commands (hooks)",
            items: v.hooks.iter().map(|(w, c)| format!("{w}: {c}")).collect(),
        },
        Section {
            title: "secrets (the guest sees placeholders; commands run on this host at up)",
            items: v
                .secrets
                .iter()
                .map(|(k, s)| format!("{k} = {} -> {}", s.source, s.hosts.join(", ")))
                .collect(),
        },
        Section {
            title: "shared host directories (mounts)",
            items: v
                .mounts
                .iter()
                .map(|m| {
                    format!(
                        "{} -> {} ({}{})",
                        show(&m.source),
                        show(&m.target),
                        if m.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        },
                        if m.create { ", created if missing" } else { "" }
                    )
                })
                .collect(),
        },
        Section {
            title: "host files copied into the guest at up (files)",
            items: v
                .files
                .iter()
                .map(|f| {
                    format!(
                        "{} -> {} ({})",
                        show(&f.source),
                        f.target,
                        f.mode.map_or_else(
                            || "mode of the source".to_string(),
                            |m| format!("mode {m:04o}")
                        )
                    )
                })
                .collect(),
        },
        Section {
            title: "guest environment (env; ${VAR} is read from this host)",
            items: v.env.iter().map(|(k, t)| format!("{k} = {t}")).collect(),
        },
        Section {
            title: "network",
            items: std::iter::once(format!("mode {}", v.network_mode))
                .chain(v.domains.iter().map(|d| format!("domain {d}")))
                .chain(v.ports.iter().map(|p| format!("port {p}")))
                .chain(v.hosts.iter().map(|(n, ip)| format!("host {n} = {ip}")))
                .chain(v.forwards.iter().map(|f| format!("forward {f}")))
                .chain(v.upstream_ca.iter().map(|f| {
                    format!(
                        "upstream_ca {} (sha256 {})",
                        show(&f.path),
                        f.sha256.get(..12).unwrap_or(&f.sha256)
                    )
                }))
                .collect(),
        },
        Section {
            title: "ssh-agent (the guest may use your ssh keys)",
            items: if v.ssh.agent {
                // Saying "every" out loud: dropping a restriction shows as
                // an added line, not only a removed one.
                let keys = if v.ssh.keys.is_empty() {
                    vec!["key: every key in your agent".to_string()]
                } else {
                    v.ssh.keys.iter().map(|k| format!("key {k}")).collect()
                };
                let hosts = if v.ssh.hosts.is_empty() {
                    vec!["host: any server".to_string()]
                } else {
                    v.ssh.hosts.iter().map(|h| format!("host {h}")).collect()
                };
                std::iter::once("agent forwarded".to_string())
                    .chain(keys)
                    .chain(hosts)
                    .collect()
            } else {
                Vec::new()
            },
        },
        Section {
            title: "plugins",
            items: v
                .plugins
                .iter()
                .map(|p| format!("plugin {p}"))
                .chain(v.plugin_files.iter().map(|f| {
                    format!(
                        "file {} (sha256 {})",
                        show(&f.path),
                        f.sha256.get(..12).unwrap_or(&f.sha256)
                    )
                }))
                .collect(),
        },
        Section {
            title: "guest commands at up (scripts)",
            items: v.scripts.clone(),
        },
        Section {
            title: "image packages (their install scripts run when the image is built)",
            items: v
                .packages
                .iter()
                .map(|p| format!("debian {p}"))
                .chain(v.npm.iter().map(|p| format!("npm {p}")))
                .collect(),
        },
        Section {
            title: "boot files",
            items: opt_path("kernel", &v.kernel)
                .into_iter()
                .chain(opt_path("initrd", &v.initrd))
                .chain(opt_path("image", &v.image))
                .collect(),
        },
        Section {
            title: "other",
            items: vec![
                format!("name {}", v.name),
                format!("vcpus {}", v.vcpus),
                format!("memory_mib {}", v.memory_mib),
                format!("persistent_root {}", v.persistent_root),
                format!(
                    "agent_home {}",
                    v.agent_home.as_deref().map_or("-".into(), show)
                ),
                format!(
                    "git_hooks {}",
                    match v.git_hooks {
                        crate::config::GitHooks::Guard => "guard",
                        crate::config::GitHooks::Allow => "allow",
                    }
                ),
                format!("seccomp {}", v.seccomp),
            ],
        },
    ]
}

/// Everything in `v`, for a configuration never approved.
pub fn full(v: &View) -> String {
    let mut out = String::new();
    for s in sections(v).into_iter().filter(|s| !s.items.is_empty()) {
        let _ = writeln!(out, "  {}:", s.title);
        for item in &s.items {
            let _ = writeln!(out, "    {}", escape::line(item));
        }
    }
    out
}

/// What differs between the approved `old` and the current `new`: `-`
/// for what is gone, `+` for what is new, sections without changes left
/// out.
pub fn changes(old: &View, new: &View) -> String {
    let mut out = String::new();
    for (o, n) in sections(old).into_iter().zip(sections(new)) {
        let gone: Vec<&String> = o.items.iter().filter(|i| !n.items.contains(i)).collect();
        let added: Vec<&String> = n.items.iter().filter(|i| !o.items.contains(i)).collect();
        if gone.is_empty() && added.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {}:", n.title);
        for item in gone {
            let _ = writeln!(out, "    - {}", escape::line(item));
        }
        for item in added {
            let _ = writeln!(out, "    + {}", escape::line(item));
        }
    }
    out
}
