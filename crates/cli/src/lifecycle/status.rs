//! `agentvm status` (`ps`): every VM under the state root; `agentvm logs`:
//! a VM's console.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::control::{self, Request};
use super::vmm::rss_kib;
use super::{state_root, StateDir, VmState};
use crate::config;

/// One VM as `status` shows it.
struct Row {
    name: String,
    pid: String,
    uptime: String,
    rss: String,
    network: String,
    state: String,
}

/// Lists every VM with its pid, uptime, resident memory, network mode and
/// state.
pub fn run() -> anyhow::Result<ExitCode> {
    let root = state_root();
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", root.display())))
        }
    };
    dirs.sort();
    if dirs.is_empty() {
        println!("no VMs (`agentvm up` starts one)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Row> = dirs.into_iter().map(|dir| row(StateDir { dir })).collect();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<width$}  {:>8}  {:>9}  {:>10}  {:<8}  STATE",
        "NAME", "PID", "UPTIME", "RSS", "NETWORK"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:>9}  {:>10}  {:<8}  {}",
            r.name, r.pid, r.uptime, r.rss, r.network, r.state
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn row(state: StateDir) -> Row {
    let network = state
        .read_snapshot()
        .map_or_else(|_| "-".to_string(), |s| s.network_mode);
    let vm = state.state();
    let mut row = Row {
        name: state.name(),
        pid: "-".into(),
        uptime: "-".into(),
        rss: "-".into(),
        network,
        state: vm.word().into(),
    };
    if let VmState::Starting(pid) | VmState::Stale(Some(pid)) = vm {
        row.pid = pid.to_string();
    }
    if let VmState::Running(pid) = vm {
        row.pid = pid.to_string();
        row.rss = format!("{} MiB", rss_kib(pid as u32) / 1024);
        if let Ok(reply) = control::request(&state.control(), &Request::Status) {
            if let Some(ms) = reply.get("uptime_ms").and_then(|v| v.as_u64()) {
                row.uptime = uptime(Duration::from_millis(ms));
            }
            if reply.get("ready").and_then(|v| v.as_bool()) == Some(false) {
                row.state = "booting".into();
            }
            // The mode in force: `agentvm net` may have changed it.
            if let Some(mode) = reply.get("network_mode").and_then(|v| v.as_str()) {
                row.network = mode.to_string();
            }
        }
    }
    row
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
    /// The workspace [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep printing what the console writes, until the VM stops.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// Prints the VM's console log.
pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let cfg = config::load(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    let state = StateDir::of(&cfg.name);
    let path = state.console();
    let mut file = std::fs::File::open(&path).with_context(|| {
        format!(
            "{} has no console log ({}); is it up?",
            cfg.name,
            path.display()
        )
    })?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).context("cannot read the console log")?;
        if n > 0 {
            out.write_all(&buf[..n])
                .context("cannot write the console log")?;
            continue;
        }
        if !args.follow || state.live_vmm().is_none() {
            break;
        }
        out.flush().context("cannot write the console log")?;
        std::thread::sleep(Duration::from_millis(100));
        // A new `up` truncates by recreating the file: start over.
        let pos = file.stream_position().unwrap_or(0);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() < pos) {
            file.seek(SeekFrom::Start(0))
                .context("cannot read the console log")?;
        }
    }
    out.flush().context("cannot write the console log")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_well() {
        assert_eq!(uptime(Duration::from_secs(12)), "12s");
        assert_eq!(uptime(Duration::from_secs(185)), "3m05s");
        assert_eq!(uptime(Duration::from_secs(3720)), "1h02m");
    }
}
