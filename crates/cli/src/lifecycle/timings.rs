//! `agentvm up --timings`: where a start's time went, from the command to
//! the guest's ready line and through the steps after it.
//!
//! Three clocks meet here. `up` and the VMM process stamp the host's
//! monotonic clock (the same in every process); the guest agent writes its
//! milestones and the kernel's in microseconds of guest uptime
//! ([`GUEST_FILE`]). The two are aligned at the ready line: the guest
//! noted its uptime just before printing it and the VMM the host time it
//! saw it, so guest uptime `g` happened at host time `ready - (g_ready - g)`
//! (the console's latency, well under a millisecond, is the error).

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// The guest agent's milestones file (agentvm-guest's `boot_times`).
pub const GUEST_FILE: &str = "/run/agentvm/boot-times";
/// The most lines of the guest's file read (it has a dozen).
const MAX_GUEST_LINES: usize = 64;

/// Microseconds of the host's monotonic clock.
pub fn now_us() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| u64::try_from(Duration::from(t).as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub use super::control::VmmStamps;

/// `up`'s own stamps (host monotonic microseconds).
#[derive(Debug, Clone, Default)]
pub struct UpStamps {
    marks: Vec<(&'static str, u64)>,
}

impl UpStamps {
    /// Starts at the command's start.
    pub fn start() -> Self {
        UpStamps {
            marks: vec![("start", now_us())],
        }
    }

    /// Notes that `step` is done now.
    pub fn mark(&mut self, step: &'static str) {
        self.marks.push((step, now_us()));
    }

    fn at(&self, step: &str) -> Option<u64> {
        self.marks.iter().find(|(n, _)| *n == step).map(|(_, t)| *t)
    }
}

/// Parses the guest's file: `NAME MICROSECONDS` lines, names of letters,
/// digits and `_`. The guest wrote it, so anything else is dropped, and
/// at most [`MAX_GUEST_LINES`] are read.
pub fn parse_guest(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .take(MAX_GUEST_LINES)
        .filter_map(|line| {
            let (name, us) = line.trim_end().split_once(' ')?;
            let ok = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            Some((name.to_string(), us.parse().ok()?)).filter(|_| ok)
        })
        .collect()
}

/// One row of the report: a step and when it ended (ms from the command).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What the step was.
    pub step: String,
    /// How long it took, ms.
    pub took_ms: f64,
    /// When it ended, ms after the command started.
    pub at_ms: f64,
}

/// The guest steps in the order the agent takes them, with their labels.
const GUEST_STEPS: &[(&str, &str)] = &[
    (
        "agent_start",
        "kernel: from init to the agent's first instruction",
    ),
    ("modules_loaded", "agent: kernel modules"),
    ("root_ready", "agent: root file system"),
    ("network_started", "agent: network"),
    ("shares_mounted", "agent: shares and tmpfs"),
    ("user_and_ssh_agent", "agent: ssh-agent relay"),
    ("startup_scripts", "agent: startup scripts"),
    ("ready", "agent: serving on vsock"),
];

/// The rows from the command's start to its end. Without the VMM's stamps
/// (an older VMM) or the guest's file (an older image) their rows are left
/// out.
pub fn report(up: &UpStamps, vmm: Option<&VmmStamps>, guest: &[(String, u64)]) -> Vec<Row> {
    let Some(t0) = up.at("start") else {
        return Vec::new();
    };
    let mut line = Timeline {
        t0,
        last: t0,
        rows: Vec::new(),
    };
    for (mark, label) in [
        ("configuration", "configuration, approval, state"),
        ("image", "image and root file system checks"),
        ("prepared", "hooks, secrets, host files"),
    ] {
        if let Some(t) = up.at(mark) {
            line.push(label, t);
        }
    }
    let guest_at = |name: &str| guest.iter().find(|(n, _)| n == name).map(|(_, us)| *us);
    let vmm = vmm.filter(|v| v.ready_us != 0);
    if let Some(t) = vmm.map(|v| v.started_us).or_else(|| up.at("spawned")) {
        line.push("starting the VMM process", t);
    }
    if let Some(v) = vmm {
        line.push("VMM: reading its configuration", v.build_us);
        for (label, took) in [
            ("VMM: devices and virtiofsd", v.devices_us),
            ("VMM: VM and guest RAM", v.memory_us),
            ("VMM: kernel and initrd loaded", v.boot_image_us),
            ("VMM: vCPUs", v.vcpus_us),
        ] {
            line.push(label, line.last.saturating_add(took));
        }
        line.push("VMM: starting the vCPUs", v.running_us);
        if let Some(g_ready) = guest_at("ready") {
            let host = |g: u64| v.ready_us.saturating_sub(g_ready.saturating_sub(g));
            line.push("kernel: entry (clock starts)", host(0));
            if let (Some(a), Some(b)) = (guest_at("initramfs_start"), guest_at("initramfs_end")) {
                line.push("kernel: early boot", host(a));
                line.push("kernel: initramfs unpacked", host(b));
            }
            if let Some(g) = guest_at("kernel_runs_init") {
                line.push("kernel: rest of its init", host(g));
            }
            for (name, label) in GUEST_STEPS {
                if let Some(g) = guest_at(name) {
                    line.push(label, host(g));
                }
            }
        }
        line.push("ready line seen by the VMM", v.ready_us);
    }
    for (mark, label) in [
        ("ready", "ready seen by `up`"),
        (
            "configured",
            "[env], identity and host files into the guest",
        ),
        ("scripts", "scripts and hooks"),
    ] {
        if let Some(t) = up.at(mark) {
            line.push(label, t);
        }
    }
    line.rows
}

/// Rows being added, each ending where the next begins; a step that
/// claims to end before the last one ended (a guest's lie, clock skew)
/// takes no time.
struct Timeline {
    t0: u64,
    last: u64,
    rows: Vec<Row>,
}

impl Timeline {
    fn push(&mut self, step: &str, end: u64) {
        let end = end.max(self.last);
        self.rows.push(Row {
            step: step.to_string(),
            took_ms: (end - self.last) as f64 / 1000.0,
            at_ms: end.saturating_sub(self.t0) as f64 / 1000.0,
        });
        self.last = end;
    }
}

/// The report as text, one row a line.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!("{:<52} {:>9} {:>9}\n", "step", "ms", "at ms");
    for r in rows {
        out.push_str(&format!(
            "{:<52} {:>9.1} {:>9.1}\n",
            r.step, r.took_ms, r.at_ms
        ));
    }
    if let Some(end) = rows.last() {
        out.push_str(&format!("{:<52} {:>9} {:>9.1}\n", "total", "", end.at_ms));
    }
    out
}

#[cfg(test)]
mod tests;
