//! What differs between a running VM and the workspace's configuration as
//! it is now: `up` on a running VM lists it, `up --restart` applies it.
//!
//! [`differences`] is pure: it compares the running VM's [`Snapshot`]
//! (`config.json`) with the one `up` would write now ([`super::up::planned`],
//! which runs nothing: no hook, no secret command). It never prints a value
//! of `[env]` or `[secrets]` (they may be credentials): an `[env]` entry is
//! compared by a digest of its text as written ([`env_digest`]), a secret by
//! its name and hosts, a copied file (`[[files]]`) by its source, target,
//! mode and a digest of its content.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Snapshot;

/// One difference, in the group it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `resources`, `mounts`, `files`, `network`, `env`, `secrets`, `ssh`, `image`,
    /// `plugins`, `agent_home`, `persistent_root`, `seccomp`, `scripts`,
    /// `hooks`, `user`.
    pub group: &'static str,
    /// What changed, for a person (escaped: no control characters).
    pub what: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.group, self.what)
    }
}

/// The digest [`Snapshot`] keeps of an `[env]` entry: of its name and its
/// text as written (unexpanded), never the text itself.
pub fn env_digest(name: &str, template: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"agentvm env entry\0");
    h.update(name.as_bytes());
    h.update([0]);
    h.update(template.as_bytes());
    crate::paths::hex(&h.finalize())
}

/// An identity of the image files `paths` (device, inode, size and
/// modification time of each): a rebuilt image has another, though its
/// paths are the same. Cheap (no file is read). `None` when one is missing.
pub fn image_identity(paths: &[&Path]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(b"agentvm image identity\0");
    for path in paths {
        let m = std::fs::metadata(path).ok()?;
        h.update(path.as_os_str().as_encoded_bytes());
        h.update([0]);
        for n in [m.dev(), m.ino(), m.size()] {
            h.update(n.to_le_bytes());
        }
        h.update(m.mtime().to_le_bytes());
        h.update(m.mtime_nsec().to_le_bytes());
    }
    Some(crate::paths::hex(&h.finalize()))
}

/// Everything that differs from `running` (the running VM's snapshot) in
/// `current` (the one the configuration would give now), grouped in a
/// fixed order. Empty: the VM runs the current configuration.
pub fn differences(running: &Snapshot, current: &Snapshot) -> Vec<Change> {
    let mut out = Diff(Vec::new());
    resources(&mut out, running, current);
    mounts(&mut out, running, current);
    files(&mut out, running, current);
    network(&mut out, running, current);
    env(&mut out, running, current);
    secrets(&mut out, running, current);
    ssh(&mut out, running, current);
    image(&mut out, running, current);
    rest(&mut out, running, current);
    out.0
}

struct Diff(Vec<Change>);

impl Diff {
    fn push(&mut self, group: &'static str, what: String) {
        self.0.push(Change {
            group,
            what: crate::escape::line(&what).into_owned(),
        });
    }

    /// `group: NAME OLD → NEW` when they differ.
    fn value<T: PartialEq + fmt::Display>(&mut self, group: &'static str, name: &str, a: T, b: T) {
        if a != b {
            self.push(group, format!("{name} {a} → {b}"));
        }
    }

    /// `group: NAME + added, - removed` when the sets differ.
    fn set<T: Ord + fmt::Display>(
        &mut self,
        group: &'static str,
        name: &str,
        a: impl IntoIterator<Item = T>,
        b: impl IntoIterator<Item = T>,
    ) {
        let a: BTreeSet<T> = a.into_iter().collect();
        let b: BTreeSet<T> = b.into_iter().collect();
        let mut parts: Vec<String> = b.difference(&a).map(|x| format!("+{x}")).collect();
        parts.extend(a.difference(&b).map(|x| format!("-{x}")));
        if !parts.is_empty() {
            self.push(group, format!("{name} {}", parts.join(" ")));
        }
    }
}

fn resources(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    d.value("resources", "vcpus", a.vcpus, b.vcpus);
    d.value("resources", "memory", Mib(a.memory_mib), Mib(b.memory_mib));
    d.value(
        "resources",
        "log_max",
        Mib(a.log_max_mib),
        Mib(b.log_max_mib),
    );
    d.value(
        "resources",
        "net_memory",
        Mib(a.net_memory_mib),
        Mib(b.net_memory_mib),
    );
    d.value(
        "resources",
        "hotplug_slots",
        a.hotplug_slots,
        b.hotplug_slots,
    );
}

#[derive(PartialEq)]
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => write!(f, "default"),
            n => write!(f, "{n} MiB"),
        }
    }
}

fn mounts(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    let show = |s: &Snapshot| -> Vec<String> {
        s.mounts
            .iter()
            .map(|m| {
                format!(
                    "{}:{}{}",
                    m.source.display(),
                    m.target.display(),
                    if m.read_only { ":ro" } else { "" }
                )
            })
            .collect()
    };
    d.set("mounts", "shares", show(a), show(b));
}

/// Which files, and for the same file whether its mode or content (by
/// digest: never the content) changed.
fn files(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    let show = |s: &Snapshot| -> Vec<String> {
        s.files
            .iter()
            .map(|f| format!("{}:{}", f.source.display(), f.target))
            .collect()
    };
    d.set("files", "files", show(a), show(b));
    for f in &a.files {
        let Some(g) = b
            .files
            .iter()
            .find(|g| g.source == f.source && g.target == f.target)
        else {
            continue;
        };
        if g.sha256 == "unreadable" {
            d.push(
                "files",
                format!("{} cannot be read now", f.source.display()),
            );
        } else if g.sha256 != f.sha256 {
            d.push("files", format!("{} changed", f.target));
        }
        if g.mode != f.mode && g.sha256 != "unreadable" {
            d.push(
                "files",
                format!("{} mode {:o} → {:o}", f.target, f.mode, g.mode),
            );
        }
    }
}

fn network(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    d.value("network", "mode", &a.network_mode, &b.network_mode);
    let (p, q) = (&a.policy, &b.policy);
    d.set("network", "domains", &p.domains, &q.domains);
    d.set("network", "ports", &p.ports, &q.ports);
    let hosts = |m: &BTreeMap<String, std::net::Ipv4Addr>| -> Vec<String> {
        m.iter().map(|(n, ip)| format!("{n}={ip}")).collect()
    };
    d.set("network", "hosts", hosts(&p.hosts), hosts(&q.hosts));
    let forwards = |f: &[agentvm_net::Forward]| -> Vec<String> {
        f.iter()
            .map(|f| format!("{}:{}", f.host, f.guest_port))
            .collect()
    };
    d.set(
        "network",
        "forwards",
        forwards(&p.forwards),
        forwards(&q.forwards),
    );
}

/// Names only: a value is never shown, a changed one is "env NAME changed".
fn env(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    d.set("env", "names", &a.env_keys, &b.env_keys);
    let (Some(ra), Some(rb)) = (&a.recorded, &b.recorded) else {
        return;
    };
    for (name, digest) in &ra.env {
        if rb.env.get(name).is_some_and(|other| other != digest) {
            d.push("env", format!("env {name} changed"));
        }
    }
}

/// Names and hosts: secrets' values are never read for this.
fn secrets(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    d.set(
        "secrets",
        "names",
        a.secrets.iter().map(|s| &s.name),
        b.secrets.iter().map(|s| &s.name),
    );
    for s in &a.secrets {
        if let Some(t) = b.secrets.iter().find(|t| t.name == s.name) {
            d.set("secrets", &format!("{} hosts", s.name), &s.hosts, &t.hosts);
        }
    }
}

fn ssh(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    let (Some(ra), Some(rb)) = (&a.recorded, &b.recorded) else {
        return;
    };
    d.value("ssh", "agent", OnOff(ra.ssh_agent), OnOff(rb.ssh_agent));
    d.set("ssh", "keys", &ra.ssh_keys, &rb.ssh_keys);
    d.set("ssh", "hosts", &ra.ssh_hosts, &rb.ssh_hosts);
}

#[derive(PartialEq)]
struct OnOff(bool);

impl fmt::Display for OnOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "on" } else { "off" })
    }
}

#[derive(PartialEq)]
struct OptPath<'a>(Option<&'a Path>);

impl fmt::Display for OptPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("none"),
        }
    }
}

fn image(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    d.value(
        "image",
        "kernel",
        OptPath(Some(&a.kernel)),
        OptPath(Some(&b.kernel)),
    );
    d.value(
        "image",
        "initrd",
        OptPath(a.initrd.as_deref()),
        OptPath(b.initrd.as_deref()),
    );
    d.value("image", "cmdline", &a.cmdline, &b.cmdline);
    let (ra, rb) = (a.recorded.as_ref(), b.recorded.as_ref());
    // A root file system built from `packages`/`npm` is found (or built)
    // only by `up`: compare what it is built from instead.
    let built = rb.is_some_and(|r| !r.packages.is_empty() || !r.npm.is_empty());
    if !built {
        d.value(
            "image",
            "root file system",
            OptPath(a.root_image.as_deref()),
            OptPath(b.root_image.as_deref()),
        );
    }
    let (Some(ra), Some(rb)) = (ra, rb) else {
        return;
    };
    d.set("image", "packages", &ra.packages, &rb.packages);
    d.set("image", "npm", &ra.npm, &rb.npm);
    let same_paths = a.kernel == b.kernel && a.initrd == b.initrd && a.root_image == b.root_image;
    if same_paths && !built && ra.image.is_some() && rb.image.is_some() && ra.image != rb.image {
        d.push("image", "rebuilt since the VM started".to_string());
    }
}

fn rest(d: &mut Diff, a: &Snapshot, b: &Snapshot) {
    if let (Some(ra), Some(rb)) = (&a.recorded, &b.recorded) {
        d.set("plugins", "plugins", &ra.plugins, &rb.plugins);
        d.value(
            "agent_home",
            "agent_home",
            OptPath(ra.agent_home.as_deref()),
            OptPath(rb.agent_home.as_deref()),
        );
    }
    d.value(
        "persistent_root",
        "persistent_root",
        OptPath(a.persistent_root.as_deref()),
        OptPath(b.persistent_root.as_deref()),
    );
    d.value("seccomp", "seccomp", a.seccomp.as_str(), b.seccomp.as_str());
    if a.scripts != b.scripts {
        d.push("scripts", "scripts changed".to_string());
    }
    if a.pre_down != b.pre_down || a.post_down != b.post_down {
        d.push("hooks", "down hooks changed".to_string());
    }
    d.value(
        "user",
        "user",
        a.user.as_deref().unwrap_or("root"),
        b.user.as_deref().unwrap_or("root"),
    );
}

#[cfg(test)]
mod tests;
