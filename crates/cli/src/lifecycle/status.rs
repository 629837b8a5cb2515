//! `agentvm status` (`ps`): every VM under the state root; `agentvm logs`:
//! a VM's console.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::control::{Client, Limits};
use super::rotated::RotatedLog;
use super::vmm::rss_kib;
use super::{check_private, state_root, vm_dirs, StateDir, Target, VmState};

/// One VM as `status` shows it.
struct Row {
    name: String,
    workspace: String,
    pid: String,
    uptime: String,
    rss: String,
    network: String,
    state: String,
    /// The caps the VM hit, in words (empty: none).
    limits: Vec<String>,
    /// The secrets bound, `NAME -> host, host` (never a value).
    secrets: Vec<String>,
    /// The guest targets of the host files copied at `up`.
    files: Vec<String>,
    /// The live mounts, `HOST -> GUEST`.
    mounts: Vec<String>,
}

/// Lists every VM with its pid, uptime, resident memory, network mode and
/// state.
pub fn run() -> anyhow::Result<ExitCode> {
    let root = state_root();
    check_private(&root)?;
    let dirs = vm_dirs(&root)?;
    for dir in &dirs {
        check_private(dir)?;
    }
    if dirs.is_empty() {
        println!("no VMs (`agentvm up` starts one)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Row> = dirs.into_iter().map(|dir| row(StateDir { dir })).collect();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<width$}  {:>8}  {:>9}  {:>10}  {:<8}  {:<8}  WORKSPACE",
        "NAME", "PID", "UPTIME", "RSS", "NETWORK", "STATE"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:>9}  {:>10}  {:<8}  {:<8}  {}",
            r.name, r.pid, r.uptime, r.rss, r.network, r.state, r.workspace
        );
    }
    for r in rows.iter().filter(|r| !r.secrets.is_empty()) {
        let _ = writeln!(
            out,
            "{}: secrets (the guest holds placeholders): {}",
            r.name,
            r.secrets.join("; ")
        );
    }
    for r in rows.iter().filter(|r| !r.files.is_empty()) {
        let _ = writeln!(
            out,
            "{}: {} host file{} copied in at up: {}",
            r.name,
            r.files.len(),
            if r.files.len() == 1 { "" } else { "s" },
            r.files.join(", ")
        );
    }
    for r in rows.iter().filter(|r| !r.mounts.is_empty()) {
        let _ = writeln!(out, "{}: live mounts: {}", r.name, r.mounts.join("; "));
    }
    for r in rows.iter().filter(|r| !r.limits.is_empty()) {
        let _ = writeln!(out, "{}: limits hit: {}", r.name, r.limits.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

fn row(state: StateDir) -> Row {
    let snap = state.read_snapshot().ok();
    let shown = |s: &str| crate::escape::line(s).into_owned();
    let network = snap
        .as_ref()
        .map_or_else(|| "-".to_string(), |s| shown(&s.network_mode));
    let vm = state.state();
    let mut row = Row {
        name: state.label(),
        workspace: snap.as_ref().map_or_else(
            || "-".to_string(),
            |s| shown(&s.workspace.display().to_string()),
        ),
        pid: "-".into(),
        uptime: "-".into(),
        rss: "-".into(),
        network,
        state: vm.word().into(),
        limits: Vec::new(),
        secrets: snap
            .as_ref()
            .map_or_else(Vec::new, |s| secrets_shown(&s.secrets)),
        files: snap.as_ref().map_or_else(Vec::new, |s| {
            s.files.iter().map(|f| shown(&f.target)).collect()
        }),
        mounts: super::mount::describe(&state)
            .iter()
            .map(|m| crate::escape::line(m).into_owned())
            .collect(),
    };
    if let VmState::Starting(pid) | VmState::Stale(Some(pid)) = vm {
        row.pid = pid.to_string();
    }
    if let VmState::Running(pid) = vm {
        row.pid = pid.to_string();
        row.rss = format!("{} MiB", rss_kib(pid as u32) / 1024);
        if let Ok(reply) = Client::connect(&state.control()).and_then(|mut vmm| vmm.status()) {
            row.uptime = uptime(Duration::from_millis(reply.uptime_ms));
            if !reply.ready {
                row.state = "booting".into();
            }
            // The mode in force: `agentvm net` may have changed it.
            row.network = reply.network_mode.as_str().into();
            row.limits = limits_hit(&reply.limits);
        }
    }
    row
}

/// A VM's secrets as `status` lists them: names and hosts, escaped (the
/// snapshot is ours, but the names came from the workspace's file).
fn secrets_shown(secrets: &[super::SnapshotSecret]) -> Vec<String> {
    secrets
        .iter()
        .map(|s| {
            let line = format!("{} -> {}", s.name, s.hosts.join(", "));
            crate::escape::line(&line).into_owned()
        })
        .collect()
}

/// The caps a VM's `limits` (its control socket's status) says were hit,
/// in words.
fn limits_hit(limits: &Limits) -> Vec<String> {
    let net = limits.net.clone().unwrap_or_default();
    let mut out = Vec::new();
    if net.tcp_refused_cap > 0 {
        out.push(format!(
            "{} TCP connections refused at the cap of {}",
            net.tcp_refused_cap, net.tcp_flows_max
        ));
    }
    if net.tcp_refused_memory > 0 {
        out.push(format!(
            "{} TCP connections refused by the network memory budget ({} of {} MiB used, peak {})",
            net.tcp_refused_memory,
            net.net_memory_used_kib >> 10,
            net.net_memory_limit_kib >> 10,
            net.net_memory_peak_kib >> 10
        ));
    }
    if limits.vsock_refused > 0 {
        out.push(format!(
            "{} vsock connections refused at the cap of {}",
            limits.vsock_refused, limits.vsock_connections_max
        ));
    }
    if net.udp_evicted > 0 {
        out.push(format!(
            "{} UDP flows dropped for new ones",
            net.udp_evicted
        ));
    }
    if net.dns_busy > 0 {
        out.push(format!(
            "{} DNS queries refused (too many upstream)",
            net.dns_busy
        ));
    }
    out
}

/// `1h02m`, `3m05s`, `12s`.
fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// Arguments of `agentvm logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    target: Target,
    /// The console's bytes as the guest wrote them, terminal control
    /// sequences included (by default they are shown escaped).
    #[arg(long)]
    raw: bool,
    /// Keep printing what the console writes, until the VM stops.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// The longest console line held back waiting for its end.
const MAX_LINE: usize = 64 << 10;

/// Prints the VM's console log (`console.log.1`, then `console.log`),
/// escaped unless `--raw`.
pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let state = args.target.locate()?;
    let path = state.console();
    let file = RotatedLog::open(&path).with_context(|| {
        format!(
            "{} has no console log ({}); is it up?",
            state.label(),
            path.display()
        )
    })?;
    let mut file = BufReader::new(file);
    let mut out = std::io::stdout().lock();
    let mut line = Vec::new();
    loop {
        // Whole lines, so that escaping never splits a character or a CR LF.
        let n = (&mut file)
            .take((MAX_LINE - line.len().min(MAX_LINE)) as u64)
            .read_until(b'\n', &mut line)
            .context("cannot read the console log")?;
        let done = !args.follow || state.live_vmm().is_none();
        if line.ends_with(b"\n") || line.len() >= MAX_LINE || (n == 0 && done) {
            let text = if args.raw {
                std::borrow::Cow::Borrowed(&line[..])
            } else {
                std::borrow::Cow::Owned(crate::escape::bytes(&line).into_bytes())
            };
            out.write_all(&text)
                .context("cannot write the console log")?;
            line.clear();
        }
        if n > 0 {
            continue;
        }
        if done {
            break;
        }
        out.flush().context("cannot write the console log")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    out.flush().context("cannot write the console log")?;
    Ok(ExitCode::SUCCESS)
}

/// The last `max` lines of the console log at `path` (from its last 16
/// KiB), escaped for a terminal: what a VM that stopped by itself said
/// last, before its state is cleaned away. Empty when there is no log.
pub fn log_tail(path: &std::path::Path, max: usize) -> Vec<String> {
    use std::io::{Seek, SeekFrom};
    const TAIL: u64 = 16 << 10;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(TAIL);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(TAIL).read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // A cut first line is left out, and so is the empty rest after the
    // last newline.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let skip = lines.len().saturating_sub(max);
    lines[skip..]
        .iter()
        .map(|l| crate::escape::line(&String::from_utf8_lossy(l)).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_is_the_last_lines_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        assert!(log_tail(&path, 5).is_empty());
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str("agentvm: seccomp: \x1b]0;owned\x07 the last words\n");
        std::fs::write(&path, &text).unwrap();
        let tail = log_tail(&path, 3);
        assert_eq!(tail.len(), 3, "{tail:?}");
        assert_eq!(tail[0], "line 4998");
        assert_eq!(tail[1], "line 4999");
        assert!(tail[2].starts_with("agentvm: seccomp: "), "{tail:?}");
        assert!(
            !tail[2].contains('\x1b') && !tail[2].contains('\x07'),
            "{tail:?}"
        );
    }

    #[test]
    fn secrets_show_names_and_hosts_escaped() {
        let shown = secrets_shown(&[
            super::super::SnapshotSecret {
                name: "ANTHROPIC_API_KEY".into(),
                hosts: vec!["api.anthropic.com".into()],
            },
            super::super::SnapshotSecret {
                name: "X\u{1b}[2J".into(),
                hosts: vec!["a.test".into(), "b.test".into()],
            },
        ]);
        assert_eq!(shown[0], "ANTHROPIC_API_KEY -> api.anthropic.com");
        assert!(!shown[1].contains('\u{1b}'), "{}", shown[1]);
        assert!(shown[1].ends_with(" -> a.test, b.test"));
    }

    #[test]
    fn only_the_caps_hit_are_shown() {
        use super::super::control::NetLimits;
        let none = Limits {
            vsock_refused: 0,
            vsock_connections_max: 1024,
            net: None,
        };
        assert!(limits_hit(&none).is_empty());
        let quiet = Limits {
            net: Some(NetLimits {
                tcp_flows: 9,
                tcp_flows_max: 4096,
                ..NetLimits::default()
            }),
            ..none.clone()
        };
        assert!(limits_hit(&quiet).is_empty());
        let hit = Limits {
            vsock_refused: 3,
            vsock_connections_max: 1024,
            net: Some(NetLimits {
                tcp_refused_cap: 2,
                tcp_flows_max: 4096,
                tcp_refused_memory: 7,
                net_memory_used_kib: 65536,
                net_memory_limit_kib: 65536,
                net_memory_peak_kib: 65536,
                dns_busy: 1,
                ..NetLimits::default()
            }),
        };
        assert_eq!(
            limits_hit(&hit),
            [
                "2 TCP connections refused at the cap of 4096",
                "7 TCP connections refused by the network memory budget (64 of 64 MiB used, peak 64)",
                "3 vsock connections refused at the cap of 1024",
                "1 DNS queries refused (too many upstream)",
            ]
        );
    }

    #[test]
    fn uptimes_read_well() {
        assert_eq!(uptime(Duration::from_secs(12)), "12s");
        assert_eq!(uptime(Duration::from_secs(185)), "3m05s");
        assert_eq!(uptime(Duration::from_secs(3720)), "1h02m");
    }
}
