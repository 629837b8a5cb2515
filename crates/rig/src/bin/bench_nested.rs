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
//! interleaved (one of each VMM in turn, each round starting one VMM
//! later) so drift in the host's load hits all alike; each VMM and kernel
//! gets a warm-up boot that is not counted. Each vCPU count boots in an L1
//! of its own with that many CPUs (why: in `run`). Before the first boot L1
//! writes its free RAM once, so that the host's slow first touch of L1's
//! memory does not fall on random boots.
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

/// L1's shell lines that write every free page of its RAM once, then
/// free them, before the first boot.
///
/// L1's RAM is memory of the host's QEMU process that L1 has not touched
/// yet, and the host's first touch of a page is slow here (about 3 ms per
/// MiB). Without this, whichever boot is first to receive a page pays for
/// it: the same agentvm set-up (kernel and initrd loaded into fresh guest
/// RAM) measured 95–290 ms in five boots of one cold L1 and 41–53 ms in
/// a warmed one. That cost belongs to the rig, not to any VMM, and it
/// falls on the boots at random. What L1 itself does to a fresh page
/// (fault, zeroing) is still paid by every boot.
const WARM_L1_RAM: &str = "\
    warm=$(( $(sed -n 's/^MemAvailable: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo) / 1024 - 256 ))\n\
    start=$(cut -d' ' -f1 /proc/uptime)\n\
    mkdir -p /tmp/rig-warm && mount -t tmpfs -o size=${warm}m tmpfs /tmp/rig-warm\n\
    dd if=/dev/zero of=/tmp/rig-warm/fill bs=1M count=$warm 2>/dev/null\n\
    umount /tmp/rig-warm\n\
    echo \"bench-nested: L1 RAM warmed: $warm MiB written once, \
    uptime $start s -> $(cut -d' ' -f1 /proc/uptime) s\"\n";

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

/// The boots of one L1: a warm-up boot of each configuration (the first
/// carries `setup`), then `args.runs` rounds of one boot each. Each round
/// starts one configuration later than the one before, so that no VMM
/// always boots right after the same other one.
fn group_boots(group: &[Config], args: &Args, setup: Option<&str>) -> Vec<Boot> {
    let mut boots = Vec::new();
    for (i, c) in group.iter().enumerate() {
        let mut b = c.boot(&format!("{}-warmup", c.label()), args);
        if let (0, Some(s)) = (i, setup) {
            b = b.setup(s);
        }
        boots.push(b);
    }
    for run in 0..args.runs {
        for i in 0..group.len() {
            let c = group[(i + run) % group.len()];
            boots.push(c.boot(&format!("{}-run{run}", c.label()), args));
        }
    }
    boots
}

/// Prints one L1's rows, each kernel's with its ratio to that kernel's
/// fastest peer; true when some configuration never booted.
fn print_rows(result: &ScenarioResult, group: &[Config], args: &Args) -> bool {
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
    let mut failed = false;
    for own_kernel in [true, false] {
        let rows: Vec<(Config, Row)> = group
            .iter()
            .filter(|c| c.own_kernel == own_kernel)
            .map(|&c| (c, row(result, &c.label())))
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
    failed
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
             {WARM_L1_RAM}\
             export AGENTVM_LOG=agentvm::build=debug\n{}",
            peers.tools().l1_setup()
        )
    });
    let disk = if rig.tier() == Tier::Nested && (kernel.is_some() || !peers.found.is_empty()) {
        Some(peers::disk(rig.cache(), kernel.as_ref(), &peers.tools()).map_err(|e| chain(&e))?)
    } else {
        None
    };
    println!(
        "tier: {:?}; {} MiB guests with {}; runs per row: {} (+1 warm-up); one run (one L1 \
         with as many CPUs, nested) per vCPU count",
        rig.tier(),
        args.memory_mib,
        if args.devices {
            "each VMM's default devices"
        } else {
            "a serial port only"
        },
        args.runs,
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
    let mut failed = false;
    // One L1 per vCPU count, with that many CPUs: an L1 CPU the guest
    // does not use makes L1's own page faults erratic on this 2-core host
    // (agentvm's kernel and initrd load: 41-53 ms in a 1-CPU L1, 45-480 ms
    // in a 2-CPU one), and a failed L1 costs only its own rows.
    for &vcpus in &args.vcpus {
        let group: Vec<Config> = configs
            .iter()
            .copied()
            .filter(|c| c.vcpus == vcpus)
            .collect();
        let mut scenario = Scenario::new(
            &format!("bench-{vcpus}cpu"),
            group_boots(&group, args, setup.as_deref()),
        );
        if let Some(d) = &disk {
            scenario = scenario.with_disk(d.clone());
        }
        eprintln!(
            "bench-nested: {} boots with {vcpus} vCPU(s) in one {:?}-tier run...",
            scenario.boots.len(),
            rig.tier()
        );
        match rig.run(&scenario) {
            Ok(result) => {
                println!("log ({vcpus} vCPU(s)): {}", result.log_path.display());
                failed |= print_rows(&result, &group, args);
            }
            Err(e) => {
                println!("{vcpus} vCPU(s): no result: {}", chain(&e));
                failed = true;
            }
        }
    }
    if failed {
        eprintln!("bench-nested: some VMM never booted, or an L1 failed; see the log");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(runs: usize) -> Args {
        Args {
            runs,
            own: true,
            debian: false,
            vcpus: vec![1],
            memory_mib: 256,
            verbose: false,
            dmesg: false,
            devices: false,
        }
    }

    #[test]
    fn each_round_boots_every_vmm_once_starting_one_later() {
        let group: Vec<Config> = [Vmm::Agentvm, Vmm::QemuMicrovm, Vmm::Firecracker]
            .into_iter()
            .map(|vmm| Config {
                vmm,
                own_kernel: true,
                vcpus: 1,
            })
            .collect();
        let boots = group_boots(&group, &args(4), Some("echo setup"));
        let names: Vec<&str> = boots.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names.len(), 3 + 3 * 4);
        assert!(
            names[..3].iter().all(|n| n.ends_with("-warmup")),
            "{names:?}"
        );
        assert_eq!(boots[0].setup.as_deref(), Some("echo setup"));
        assert!(boots[1..].iter().all(|b| b.setup.is_none()));
        let first_of_round: Vec<&str> = (0..4).map(|r| names[3 + 3 * r]).collect();
        assert_eq!(
            first_of_round,
            [
                "agentvm-own-1cpu-run0",
                "qemu-own-1cpu-run1",
                "firecracker-own-1cpu-run2",
                "agentvm-own-1cpu-run3"
            ]
        );
        for r in 0..4 {
            let mut round: Vec<&str> = names[3 + 3 * r..6 + 3 * r].to_vec();
            round.sort_unstable();
            let suffix = format!("-run{r}");
            assert!(round.iter().all(|n| n.ends_with(&suffix)), "{round:?}");
            round.dedup_by_key(|n| n.split("-own-").next().unwrap_or(n).to_string());
            assert_eq!(round.len(), 3, "every VMM once in round {r}");
        }
    }

    #[test]
    fn the_l1_warm_up_is_valid_shell() {
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", WARM_L1_RAM])
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The size it computes from this machine's /proc/meminfo.
        let first = WARM_L1_RAM.lines().next().expect("a first line");
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("{first}\necho $warm")])
            .output()
            .expect("sh runs");
        let mib: i64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a number of MiB");
        assert!(mib > 0, "{mib}");
    }
}
