//! `bench-nested`: boot time and memory of agentvm against its peers on
//! the same kernel and initramfs, in the same L1 (nested tier) or on the
//! host (hardware KVM): QEMU `-M microvm` always, Firecracker and
//! cloud-hypervisor when `AGENTVM_BENCH_FIRECRACKER` and
//! `AGENTVM_BENCH_CLOUD_HYPERVISOR` name their binaries (built by you from
//! their public sources; a line says which are skipped).
//!
//! Each boot is timed from VMM process start to the L2 init's first
//! serial line and to the VMM's exit after the guest halts (a reset for
//! Firecracker, which has no ACPI power-off); with `--verbose` (no `quiet`)
//! also to the VMM's first line of output, the kernel's banner. The VMM's
//! resident memory outside guest RAM is read when the init's line appears.
//! The VMM's CPU beside its vCPU threads until the init's line is read too
//! (in one-CPU L1 it is time the guest did not run); agentvm's own set-up
//! steps are in the log (`set up in … ms`), and so is how L1's direct
//! compaction, huge page and major fault counters moved on the way. With
//! `--dmesg` each guest prints its kernel log (printk times, console still
//! quiet) after the init's line, to compare where each VMM's guest spends
//! its boot (the exit column then includes that printing).
//!
//! The work is the same for all: the same kernel, initramfs and command
//! line, and a serial port as the guest's only device, which is all
//! Firecracker and cloud-hypervisor give it here. `--devices` leaves
//! agentvm its default virtio-rng and virtio-balloon and QEMU a
//! virtio-rng, so their guests probe more than the other two. Boots are
//! interleaved (one of each VMM in turn) so drift in the host's load hits
//! all alike; each VMM and kernel gets a warm-up boot that is not counted.
//! Medians, and each VMM's ratio to the fastest peer.
//!
//! Kernels: agentvm's own (`guest/kernel/build.sh`, built into the kernel
//! cache when missing: minutes), Debian's cloud kernel, or both; always the
//! vmlinux (PVH), which all four VMMs boot.
//!
//! Usage: `cargo run --release -p agentvm-rig --bin bench-nested -- [--runs N]
//! [--kernel own|debian|both] [--vcpus 1,2] [--memory MIB] [--verbose] [--dmesg]
//! [--devices]`

use std::process::ExitCode;
use std::time::Duration;

use agentvm_rig::{
    median, peers, Boot, GuestMode, KernelFormat, Peers, Rig, Scenario, ScenarioResult, Tier, Vmm,
};

struct Args {
    runs: usize,
    own: bool,
    debian: bool,
    vcpus: Vec<u8>,
    memory_mib: u32,
    verbose: bool,
    dmesg: bool,
    devices: bool,
}

const USAGE: &str = "usage: bench-nested [--runs N] [--kernel own|debian|both] [--vcpus 1,2] \
                     [--memory MIB] [--verbose] [--dmesg] [--devices]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        runs: 5,
        own: true,
        debian: false,
        vcpus: vec![1, 2],
        memory_mib: 256,
        verbose: false,
        dmesg: false,
        devices: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--runs" => {
                a.runs = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--runs needs N > 0")?
            }
            "--kernel" => {
                (a.own, a.debian) = match value()?.as_str() {
                    "own" => (true, false),
                    "debian" => (false, true),
                    "both" => (true, true),
                    _ => return Err("--kernel takes own, debian or both".into()),
                }
            }
            "--vcpus" => {
                a.vcpus = value()?
                    .split(',')
                    .map(|v| v.parse().ok().filter(|&n: &u8| (1..=8).contains(&n)))
                    .collect::<Option<_>>()
                    .ok_or("--vcpus takes a list such as 1,2 (each 1 to 8)")?
            }
            "--memory" => {
                a.memory_mib = value()?
                    .parse()
                    .ok()
                    .filter(|&m| m >= 64)
                    .ok_or("--memory needs MIB >= 64")?
            }
            "--verbose" => a.verbose = true,
            "--dmesg" => a.dmesg = true,
            "--devices" => a.devices = true,
            _ => return Err(USAGE.into()),
        }
    }
    Ok(a)
}

/// One configuration: which VMM, kernel and vCPU count.
#[derive(Clone, Copy, PartialEq)]
struct Config {
    vmm: Vmm,
    own_kernel: bool,
    vcpus: u8,
}

impl Config {
    fn label(self) -> String {
        let k = if self.own_kernel { "own" } else { "debian" };
        format!("{}-{k}-{}cpu", self.vmm.name(), self.vcpus)
    }

    fn boot(self, name: &str, a: &Args) -> Boot {
        let mut b = Boot::agentvm(name, KernelFormat::Vmlinux)
            .under(self.vmm)
            .mode(GuestMode::Bench)
            .vcpus(self.vcpus)
            .memory_mib(a.memory_mib);
        b.verbose = a.verbose;
        b.serial_only = !a.devices;
        if a.dmesg {
            b.extra_cmdline = "printk.time=1 rig.dmesg=1".into();
        }
        b.timeout = Duration::from_secs(180);
        if self.own_kernel {
            b = b.own_kernel();
        }
        b
    }
}

struct Row {
    ok: usize,
    first_output: Option<f64>,
    first_line: Option<f64>,
    exit: Option<f64>,
    rss_kib: Option<f64>,
    cpu_beside_vcpus_ms: Option<f64>,
}

fn row(r: &ScenarioResult, label: &str) -> Row {
    let ok: Vec<_> = r
        .boots
        .iter()
        .filter(|b| {
            b.name
                .strip_prefix(label)
                .is_some_and(|rest| rest.starts_with("-run"))
        })
        .filter(|b| b.first_line.is_some() && b.exit_code() == Some(0))
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let med = |f: &dyn Fn(&agentvm_rig::BootResult) -> Option<f64>| {
        median(&ok.iter().filter_map(|b| f(b)).collect::<Vec<_>>())
    };
    Row {
        ok: ok.len(),
        first_output: med(&|b| b.first_output.map(ms)),
        first_line: med(&|b| b.first_line.map(ms)),
        exit: med(&|b| Some(ms(b.exit_after))),
        rss_kib: med(&|b| b.vmm_rss_kib.map(|k| k as f64)),
        cpu_beside_vcpus_ms: med(&|b| b.vmm_cpu_beside_vcpus_ms().map(|m| m as f64)),
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-nested: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let chain = |e: &dyn std::error::Error| agentvm_rig::error_chain(e);
    let rig = Rig::open().map_err(|e| chain(&e))?;
    let peers = Peers::from_env();
    for line in &peers.skipped {
        println!("{line}");
    }
    let mut vmms = vec![Vmm::Agentvm, Vmm::QemuMicrovm];
    vmms.extend(peers.vmms());
    let kernel = if args.own {
        Some(
            rig.own_image(&mut |l: &str| eprintln!("bench-nested: {l}"))
                .map_err(|e| chain(&e))?,
        )
    } else {
        None
    };
    let mut configs = Vec::new();
    for own_kernel in [true, false] {
        if (own_kernel && !args.own) || (!own_kernel && !args.debian) {
            continue;
        }
        for &vcpus in &args.vcpus {
            for &vmm in &vmms {
                configs.push(Config {
                    vmm,
                    own_kernel,
                    vcpus,
                });
            }
        }
    }
    // The peers and the kernel travel on a disk; on the host they are
    // where they are.
    let setup = (rig.tier() == Tier::Nested).then(|| {
        format!(
            "mkdir -p /disk && mount -t ext4 -o ro /dev/vda /disk\n\
             echo \"bench-nested: L1 transparent huge pages: \
             $(cat /sys/kernel/mm/transparent_hugepage/enabled) / \
             defrag $(cat /sys/kernel/mm/transparent_hugepage/defrag)\"\n\
             export AGENTVM_LOG=agentvm::build=debug\n{}",
            peers.tools().l1_setup()
        )
    });
    let mut boots = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let mut b = c.boot(&format!("{}-warmup", c.label()), args);
        if i == 0 {
            if let Some(s) = &setup {
                b = b.setup(s);
            }
        }
        boots.push(b);
    }
    for run in 0..args.runs {
        for c in &configs {
            boots.push(c.boot(&format!("{}-run{run}", c.label()), args));
        }
    }
    let mut scenario = Scenario::new("bench", boots);
    if rig.tier() == Tier::Nested && (kernel.is_some() || !peers.found.is_empty()) {
        let disk =
            peers::disk(rig.cache(), kernel.as_ref(), &peers.tools()).map_err(|e| chain(&e))?;
        scenario = scenario.with_disk(disk);
    }
    eprintln!(
        "bench-nested: {} boots in one {:?}-tier run...",
        scenario.boots.len(),
        rig.tier()
    );
    let result = rig.run(&scenario).map_err(|e| chain(&e))?;
    println!(
        "tier: {:?}; {} MiB guests with {}; runs per row: {} (+1 warm-up); log: {}",
        result.tier,
        args.memory_mib,
        if args.devices {
            "each VMM's default devices"
        } else {
            "a serial port only"
        },
        args.runs,
        result.log_path.display()
    );
    println!(
        "{:<34} {:>5} {:>12} {:>12} {:>10} {:>12} {:>14} {:>16}",
        "vmm-kernel-vcpus",
        "ok",
        "first out ms",
        "init ms",
        "exit ms",
        "VMM RSS KiB",
        "VMM CPU ms",
        "init / fastest peer"
    );
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
    let mut failed = false;
    for own_kernel in [true, false] {
        for &vcpus in &args.vcpus {
            let group: Vec<Config> = configs
                .iter()
                .copied()
                .filter(|c| c.own_kernel == own_kernel && c.vcpus == vcpus)
                .collect();
            if group.is_empty() {
                continue;
            }
            let rows: Vec<(Config, Row)> = group
                .iter()
                .map(|&c| (c, row(&result, &c.label())))
                .collect();
            let fastest_peer = rows
                .iter()
                .filter(|(c, _)| c.vmm != Vmm::Agentvm)
                .filter_map(|(_, r)| r.first_line)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
            for (c, r) in &rows {
                let ratio = r
                    .first_line
                    .zip(fastest_peer)
                    .map_or_else(|| "-".into(), |(a, p)| format!("{:.2}", a / p));
                println!(
                    "{:<34} {:>5} {:>12} {:>12} {:>10} {:>12} {:>14} {:>16}",
                    c.label(),
                    format!("{}/{}", r.ok, args.runs),
                    f(r.first_output),
                    f(r.first_line),
                    f(r.exit),
                    f(r.rss_kib),
                    f(r.cpu_beside_vcpus_ms),
                    ratio
                );
                failed |= r.ok == 0;
            }
        }
    }
    if failed {
        eprintln!("bench-nested: some VMM never booted; see the log");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
