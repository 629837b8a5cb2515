//! `demo`: shows agentvm booting Debian's stock cloud kernel. On a host
//! with hardware KVM it boots directly; elsewhere (PVM, as on agentvm's
//! build machines, or no KVM) it boots inside the nested rig: an L1 Linux
//! under QEMU TCG with SVM whose kvm-amd gives agentvm a real /dev/kvm.
//! That is slow (about half a minute) — it shows the VMM works, not how
//! fast it is.
//!
//! Usage: `cargo run -p agentvm-rig --bin demo -- [--bzimage] [--vcpus N] [--memory MIB] [--quiet] [--qemu]`
//! (`--qemu` boots the same guest with QEMU microvm instead, for comparison).

use std::process::ExitCode;

use agentvm_rig::{Boot, KernelFormat, Rig, Scenario, Tier, Vmm};

struct Opts {
    vmm: Vmm,
    kernel: KernelFormat,
    vcpus: u8,
    memory: u32,
    verbose: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        vmm: Vmm::Agentvm,
        kernel: KernelFormat::Vmlinux,
        vcpus: 2,
        memory: 512,
        verbose: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bzimage" => o.kernel = KernelFormat::BzImage,
            "--vmlinux" => o.kernel = KernelFormat::Vmlinux,
            "--quiet" => o.verbose = false,
            "--qemu" => o.vmm = Vmm::QemuMicrovm,
            "--vcpus" => {
                o.vcpus = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--vcpus needs a number")?
            }
            "--memory" => {
                o.memory = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--memory needs MiB")?
            }
            "-h" | "--help" => {
                return Err(
                    "usage: demo [--bzimage|--vmlinux] [--vcpus N] [--memory MIB] [--quiet] [--qemu]".into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let rig = match Rig::open() {
        Ok(r) => r.echo(true),
        Err(e) => {
            eprintln!("demo: {}", agentvm_rig::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match rig.tier() {
        Tier::Direct => {
            eprintln!("demo: direct tier: agentvm boots the Debian kernel on this host's /dev/kvm")
        }
        Tier::Nested => eprintln!(
            "demo: this host's KVM cannot boot a stock kernel; booting inside the nested rig \
             (QEMU TCG L1 with kvm-amd). Slow: expect about half a minute, more on the first run \
             while the images and the static agentvm are built."
        ),
    }
    let mut boot = Boot::agentvm("demo", opts.kernel)
        .vcpus(opts.vcpus)
        .memory_mib(opts.memory);
    boot.verbose = opts.verbose;
    boot.vmm = opts.vmm;
    let scenario = Scenario::new("demo", vec![boot]);
    let result = match rig.run(&scenario) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: {}", agentvm_rig::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let Some(b) = result.boot("demo") else {
        eprintln!(
            "demo: the boot did not finish; log: {}",
            result.log_path.display()
        );
        return ExitCode::FAILURE;
    };
    println!();
    let vmm = if opts.vmm == Vmm::Agentvm {
        "agentvm"
    } else {
        "qemu"
    };
    println!("{vmm} exit status: {}", b.exit.to_marker());
    println!(
        "guest: kernel {}, {} CPUs, MemTotal {} KiB, rng {}, ACPI errors {}",
        b.marker("kernel").unwrap_or("?"),
        b.marker("cpus").unwrap_or("?"),
        b.marker("memtotal_kib").unwrap_or("?"),
        b.marker("rng_current").unwrap_or("?"),
        b.marker("acpi_errors").unwrap_or("?"),
    );
    for v in b.markers_named("virtio") {
        println!("guest virtio device: {v}");
    }
    let ms = |d: Option<std::time::Duration>| {
        d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .unwrap_or("-".into())
    };
    println!(
        "times: agentvm start -> guest init {} ; -> agentvm exit {} ; whole run {:.1} s (L1 ready after {})",
        ms(b.first_line),
        ms(Some(b.exit_after)),
        result.elapsed.as_secs_f64(),
        ms(result.l1_ready)
    );
    println!("log: {}", result.log_path.display());
    if b.exit_code() == Some(0) && b.marker("done") == Some("1") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
