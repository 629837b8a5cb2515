//! Boot benchmark: VMM overhead with a tiny ELF guest.
//!
//! For each VMM and memory size, starts the VMM process N times and measures
//! process start → first guest serial byte on stdout, process start → exit,
//! and peak RSS (from `wait4`). The guest prints one line and resets. The
//! peer is `qemu-system-x86_64 -M microvm -enable-kvm` on the same guest
//! file in the same run; the report gives medians and agentvm/peer ratios.
//!
//! Usage: `cargo run --release -p agentvm-benches --bin bench-boot -- [RUNS]`
//! (builds nothing itself: run `cargo build --release -p agentvm` first, or
//! set `AGENTVM_BIN`).

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

struct Sample {
    first_byte: Duration,
    exit: Duration,
    max_rss_kib: u64,
}

fn wait4(pid: u32) -> anyhow::Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, status and usage point to live locals.
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    if rc < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok((status, usage.ru_maxrss as u64))
}

fn run_once(cmd: &mut Command) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut byte = [0u8; 1];
    let n = out.read(&mut byte)?;
    let first_byte = start.elapsed();
    if n == 0 {
        bail!("the guest printed nothing");
    }
    let mut rest = Vec::new();
    out.read_to_end(&mut rest)?;
    let (status, max_rss_kib) = wait4(child.id())?;
    let exit = start.elapsed();
    // The child is reaped; keep std from waiting on it again.
    std::mem::forget(child);
    let status = std::process::ExitStatus::from_raw(status);
    if status.signal().is_some() {
        bail!("VMM killed by a signal: {status}");
    }
    Ok(Sample {
        first_byte,
        exit,
        max_rss_kib,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Summary {
    first_byte_ms: f64,
    exit_ms: f64,
    rss_mib: f64,
}

fn measure(name: &str, runs: usize, mut make: impl FnMut() -> Command) -> anyhow::Result<Summary> {
    // One warm-up run so page cache and binary loading do not count.
    run_once(&mut make()).with_context(|| format!("{name}: warm-up run failed"))?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        samples.push(run_once(&mut make()).with_context(|| format!("{name} run failed"))?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Summary {
        first_byte_ms: median(samples.iter().map(|s| ms(s.first_byte)).collect()),
        exit_ms: median(samples.iter().map(|s| ms(s.exit)).collect()),
        rss_mib: median(
            samples
                .iter()
                .map(|s| s.max_rss_kib as f64 / 1024.0)
                .collect(),
        ),
    })
}

fn agentvm_bin() -> PathBuf {
    std::env::var_os("AGENTVM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/agentvm"))
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let dir = tempfile_dir()?;
    let guest = dir.join("bench-guest.elf");
    std::fs::write(&guest, agentvm_testguest::programs::bench_guest()?)?;
    let agentvm = agentvm_bin();
    if !agentvm.exists() {
        bail!(
            "{} not found: run `cargo build --release -p agentvm` or set AGENTVM_BIN",
            agentvm.display()
        );
    }
    let qemu = which("qemu-system-x86_64");

    println!("boot benchmark: tiny ELF guest, 1 vCPU, {runs} runs each, medians");
    println!(
        "{:<10} {:>8} {:>14} {:>10} {:>9}",
        "vmm", "memory", "first byte ms", "exit ms", "RSS MiB"
    );
    for mem in [128u64, 2048] {
        let ours = measure("agentvm", runs, || {
            let mut c = Command::new(&agentvm);
            c.args(["boot", "--memory", &mem.to_string(), "--kernel"])
                .arg(&guest);
            c.env("AGENTVM_LOG", "error");
            c
        })?;
        println!(
            "{:<10} {:>6}M {:>14.2} {:>10.2} {:>9.2}",
            "agentvm", mem, ours.first_byte_ms, ours.exit_ms, ours.rss_mib
        );
        let Some(qemu) = &qemu else {
            println!(
                "qemu-system-x86_64 not found: no peer, no ratio (apt-get install qemu-system-x86)"
            );
            continue;
        };
        let peer = measure("qemu", runs, || {
            let mut c = Command::new(qemu);
            // arch-capabilities off: PVM hosts refuse MSR 0x10a and QEMU aborts.
            c.args([
                "-M",
                "microvm",
                "-enable-kvm",
                "-cpu",
                "host,-arch-capabilities",
                "-m",
                &format!("{mem}M"),
            ]);
            c.args([
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
            ]);
            c.args(["-device", "isa-debug-exit,iobase=0xf4", "-kernel"])
                .arg(&guest);
            c
        })?;
        println!(
            "{:<10} {:>6}M {:>14.2} {:>10.2} {:>9.2}",
            "qemu", mem, peer.first_byte_ms, peer.exit_ms, peer.rss_mib
        );
        println!(
            "{:<10} {:>6}M {:>14.3} {:>10.3} {:>9.3}",
            "ratio",
            mem,
            ours.first_byte_ms / peer.first_byte_ms,
            ours.exit_ms / peer.exit_ms,
            ours.rss_mib / peer.rss_mib
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("agentvm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}
