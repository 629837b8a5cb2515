//! Density benchmark: memory per VMM process with many small networked VMs.
//!
//! Starts N (default 64) `agentvm boot` processes at once, each a tiny
//! guest (prints one line, then `cli; hlt` for good) with 128 MiB of
//! guest memory, a filtered network (`--net filtered --allow example.com`),
//! a vsock device, and the default rng and balloon devices. Once every
//! guest printed its line (and a short settle), it reads each VMM's
//! `VmRSS`, `RssAnon`, `RssFile`, `RssShmem` and thread count from
//! `/proc/PID/status` and `Pss` from `/proc/PID/smaps_rollup`, reports the
//! median and maximum per VMM, and stops them all.
//!
//! Guest memory is a memfd, so what the guest (and the loader) touched is
//! `RssShmem`; the VMM's own memory is `RssAnon + RssFile`, reported as
//! `own`.
//!
//! The peer: with `AGENTVM_BENCH_FIRECRACKER=/path/to/firecracker`, the
//! same count of Firecracker VMs (`--no-api --config-file`) on the same
//! guest with a vsock device and, where a tap device can be opened
//! (`AGENTVM_BENCH_FIRECRACKER_TAP`, a prefix: VM i gets `PREFIXi`), a
//! network interface; rootless hosts have no tap, and the report says
//! that Firecracker ran without one. Without the variable the peer is
//! skipped, and the report says so.
//!
//! Usage: `cargo run --release -p agentvm-benches --bin bench-density --
//! [--vms N] [--memory MIB] [--settle-ms MS] [--keep N]` (run
//! `cargo build --release -p agentvm` first, or set `AGENTVM_BIN`).
//! `--keep N` leaves the first N agentvm VMMs running after the report
//! (their PIDs printed) to look at their `/proc/PID/smaps`; stop them with
//! `kill`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long all VMs together may take to print their line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Options {
    vms: usize,
    memory_mib: u64,
    settle: Duration,
    keep: usize,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        vms: 64,
        memory_mib: 128,
        settle: Duration::from_millis(1000),
        keep: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            let v = args
                .next()
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} {v}: not a number"))
        };
        match arg.as_str() {
            "--vms" => options.vms = usize::try_from(value("--vms")?)?,
            "--memory" => options.memory_mib = value("--memory")?,
            "--settle-ms" => options.settle = Duration::from_millis(value("--settle-ms")?),
            "--keep" => options.keep = usize::try_from(value("--keep")?)?,
            other => bail!(
                "unknown argument {other}: usage: bench-density [--vms N] [--memory MIB] \
                 [--settle-ms MS] [--keep N]"
            ),
        }
    }
    if options.vms == 0 {
        bail!("--vms must be at least 1");
    }
    Ok(options)
}

/// One VMM process's memory, in KiB.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    shmem: u64,
    pss: u64,
    threads: u64,
}

impl Memory {
    /// The VMM's own resident memory: everything but guest memory (shmem).
    fn own(&self) -> u64 {
        self.anon + self.file
    }
}

fn status_field(status: &str, key: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .with_context(|| format!("no {key} in /proc/PID/status"))?;
    let number = line
        .split_whitespace()
        .next()
        .with_context(|| format!("empty {key}"))?;
    number
        .parse()
        .with_context(|| format!("{key} {number}: not a number"))
}

fn read_memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (did the VMM exit?)"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("cannot read /proc/{pid}/smaps_rollup"))?;
    Ok(Memory {
        rss: status_field(&status, "VmRSS:")?,
        anon: status_field(&status, "RssAnon:")?,
        file: status_field(&status, "RssFile:")?,
        shmem: status_field(&status, "RssShmem:")?,
        pss: status_field(&rollup, "Pss:")?,
        threads: status_field(&status, "Threads:")?,
    })
}

/// Median and maximum of one column.
fn median_max(values: impl Iterator<Item = u64>) -> (f64, f64) {
    let mut v: Vec<u64> = values.collect();
    v.sort_unstable();
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    };
    (median, v.last().copied().unwrap_or(0) as f64)
}

/// The report's columns, medians then maxima, in MiB.
struct Summary {
    median: [f64; 7],
    max: [f64; 7],
}

const COLUMNS: [&str; 7] = [
    "VmRSS", "RssAnon", "RssFile", "RssShmem", "own", "Pss", "threads",
];

fn summarize(samples: &[Memory]) -> Summary {
    let mib = |kib: f64| kib / 1024.0;
    let columns: [fn(&Memory) -> u64; 7] = [
        |m| m.rss,
        |m| m.anon,
        |m| m.file,
        |m| m.shmem,
        |m| m.own(),
        |m| m.pss,
        |m| m.threads,
    ];
    let mut median = [0.0; 7];
    let mut max = [0.0; 7];
    for (i, column) in columns.iter().enumerate() {
        let (me, ma) = median_max(samples.iter().map(column));
        // Threads are a count, the rest KiB.
        let scale = |x: f64| if i == 6 { x } else { mib(x) };
        median[i] = scale(me);
        max[i] = scale(ma);
    }
    Summary { median, max }
}

fn print_header() {
    print!("{:<12} {:<6}", "vmm", "stat");
    for c in COLUMNS {
        print!(" {c:>9}");
    }
    println!();
}

fn print_row(name: &str, stat: &str, values: &[f64; 7]) {
    print!("{name:<12} {stat:<6}");
    for (i, v) in values.iter().enumerate() {
        if i == 6 {
            print!(" {v:>9.0}");
        } else {
            print!(" {v:>9.2}");
        }
    }
    println!();
}

/// A started VMM whose console goes to `console`.
struct Vmm {
    child: Child,
    console: PathBuf,
}

/// Starts every VMM `make(i, console)` builds, waits until each console
/// shows the ready line, settles, and measures them all. Every VMM is
/// stopped before this returns, except the first `keep` on success.
fn run_fleet(
    name: &str,
    options: &Options,
    dir: &Path,
    keep: usize,
    mut make: impl FnMut(usize) -> anyhow::Result<Command>,
) -> anyhow::Result<Vec<Memory>> {
    let mut vmms = Vec::with_capacity(options.vms);
    let result = (|| {
        for i in 0..options.vms {
            let console = dir.join(format!("{name}-{i}.console"));
            let out = std::fs::File::create(&console)
                .with_context(|| format!("cannot create {}", console.display()))?;
            let err = out.try_clone()?;
            let child = make(i)?
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("cannot start {name} VM {i}"))?;
            vmms.push(Vmm { child, console });
        }
        wait_ready(name, &mut vmms)?;
        std::thread::sleep(options.settle);
        vmms.iter()
            .map(|v| read_memory(v.child.id()))
            .collect::<anyhow::Result<Vec<_>>>()
    })();
    let kept = if result.is_ok() { keep } else { 0 };
    for (i, v) in vmms.iter_mut().enumerate() {
        if i < kept {
            println!("{name}: left VM {i} running as PID {}", v.child.id());
            continue;
        }
        let _ = v.child.kill();
        let _ = v.child.wait();
    }
    result
}

fn wait_ready(name: &str, vmms: &mut [Vmm]) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut ready = vec![false; vmms.len()];
    while ready.iter().any(|r| !r) {
        for (i, v) in vmms.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            let text = std::fs::read_to_string(&v.console).unwrap_or_default();
            if text.contains(agentvm_testguest::programs::BENCH_READY) {
                ready[i] = true;
            } else if let Some(status) = v.child.try_wait()? {
                bail!(
                    "{name} VM {i} exited ({status}) before its guest was up; its output:\n{}",
                    text.trim_end()
                );
            }
        }
        if start.elapsed() > READY_TIMEOUT {
            let missing = ready.iter().filter(|r| !**r).count();
            bail!("{missing} {name} VMs not up after {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn agentvm_bin() -> PathBuf {
    std::env::var_os("AGENTVM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/agentvm"))
}

/// Firecracker's configuration for VM `i`: the guest, memory, a vsock
/// device and, with `tap`, a network interface on it.
fn firecracker_config(guest: &Path, memory_mib: u64, vsock: &Path, tap: Option<&str>) -> String {
    let net = match tap {
        Some(tap) => format!(
            r#", "network-interfaces": [{{"iface_id": "eth0", "guest_mac": "06:00:0a:00:02:0f", "host_dev_name": "{tap}"}}]"#
        ),
        None => String::new(),
    };
    format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}},
"machine-config": {{"vcpu_count": 1, "mem_size_mib": {memory_mib}}},
"drives": [],
"vsock": {{"guest_cid": 3, "uds_path": "{}"}}{net}}}"#,
        guest.display(),
        vsock.display()
    )
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let dir = std::env::temp_dir().join(format!("agentvm-bench-density-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let outcome = run(&options, &dir);
    if options.keep == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    let guest = dir.join("idle-guest.elf");
    std::fs::write(&guest, agentvm_testguest::programs::idle_guest()?)?;
    let agentvm = agentvm_bin();
    if !agentvm.exists() {
        bail!(
            "{} not found: run `cargo build --release -p agentvm` or set AGENTVM_BIN",
            agentvm.display()
        );
    }
    let n = options.vms;
    let mem = options.memory_mib;
    println!(
        "density benchmark: {n} VMs at once, tiny guest, {mem} MiB, 1 vCPU; per VMM, MiB \
         (threads: count); own = RssAnon + RssFile (RssShmem is guest memory)"
    );
    // `boot` keeps its state directory in TMPDIR: ours, removed at the end.
    let ours = run_fleet("agentvm", options, dir, options.keep, |i| {
        let mut c = Command::new(&agentvm);
        c.args(["boot", "--memory", &mem.to_string(), "--kernel"])
            .arg(&guest)
            .args(["--net", "filtered", "--allow", "example.com", "--vsock"])
            .arg(dir.join(format!("agentvm-{i}.vsock")));
        c.env("AGENTVM_LOG", "error").env("TMPDIR", dir);
        Ok(c)
    })?;
    let ours = summarize(&ours);
    print_header();
    print_row("agentvm", "median", &ours.median);
    print_row("agentvm", "max", &ours.max);

    let Some(firecracker) = std::env::var_os("AGENTVM_BENCH_FIRECRACKER").map(PathBuf::from) else {
        println!(
            "firecracker: skipped (set AGENTVM_BENCH_FIRECRACKER to a firecracker binary to \
             compare)"
        );
        return Ok(());
    };
    if !firecracker.exists() {
        bail!(
            "AGENTVM_BENCH_FIRECRACKER={}: no such file",
            firecracker.display()
        );
    }
    let tap_prefix = std::env::var("AGENTVM_BENCH_FIRECRACKER_TAP").ok();
    if tap_prefix.is_none() {
        println!(
            "firecracker: without a network device (it needs a tap device, which a rootless \
             host cannot create; set AGENTVM_BENCH_FIRECRACKER_TAP=PREFIX for taps PREFIX0…)"
        );
    }
    let peer = run_fleet("firecracker", options, dir, 0, |i| {
        let vsock = dir.join(format!("firecracker-{i}.vsock"));
        let tap = tap_prefix.as_ref().map(|p| format!("{p}{i}"));
        let config = dir.join(format!("firecracker-{i}.json"));
        std::fs::write(
            &config,
            firecracker_config(&guest, mem, &vsock, tap.as_deref()),
        )?;
        let mut c = Command::new(&firecracker);
        c.args(["--no-api", "--level", "Error", "--id"])
            .arg(format!("bench{i}"))
            .arg("--config-file")
            .arg(&config);
        Ok(c)
    })?;
    let peer = summarize(&peer);
    print_row("firecracker", "median", &peer.median);
    print_row("firecracker", "max", &peer.max);
    let mut ratio = [0.0; 7];
    for (i, r) in ratio.iter_mut().enumerate() {
        *r = if peer.median[i] > 0.0 {
            ours.median[i] / peer.median[i]
        } else {
            f64::NAN
        };
    }
    print!("{:<12} {:<6}", "ratio", "median");
    for r in ratio {
        print!(" {r:>9.3}");
    }
    println!();
    Ok(())
}
