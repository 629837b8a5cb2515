//! `bench-nested`: boot time of agentvm against QEMU microvm on the same
//! L2 kernel and initramfs, in the same L1 (nested tier) or on the host
//! (hardware KVM). Measures, from VMM start, the L2 init's first serial
//! line and the VMM's exit after `poweroff -f`; prints medians and the
//! agentvm/QEMU ratio. Under nested TCG absolute times mean little; the
//! ratio is the figure.
//!
//! Usage: `cargo run --release -p agentvm-rig --bin bench-nested -- [--runs N] [--kernel vmlinux|bzimage|both]`

use std::process::ExitCode;

use agentvm_rig::{median, Boot, GuestMode, KernelFormat, Rig, Scenario, ScenarioResult, Vmm};

fn parse() -> Result<(usize, Vec<KernelFormat>), String> {
    let (mut runs, mut kernels) = (5, vec![KernelFormat::Vmlinux, KernelFormat::BzImage]);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--runs needs N > 0")?
            }
            "--kernel" => {
                kernels = match args.next().as_deref() {
                    Some("vmlinux") => vec![KernelFormat::Vmlinux],
                    Some("bzimage") => vec![KernelFormat::BzImage],
                    Some("both") => vec![KernelFormat::Vmlinux, KernelFormat::BzImage],
                    _ => return Err("--kernel takes vmlinux, bzimage or both".into()),
                }
            }
            _ => {
                return Err("usage: bench-nested [--runs N] [--kernel vmlinux|bzimage|both]".into())
            }
        }
    }
    Ok((runs, kernels))
}

fn label(vmm: Vmm, k: KernelFormat) -> String {
    let v = if vmm == Vmm::Agentvm {
        "agentvm"
    } else {
        "qemu"
    };
    let k = if k == KernelFormat::Vmlinux {
        "vmlinux"
    } else {
        "bzimage"
    };
    format!("{v}-{k}")
}

struct Row {
    first: Option<f64>,
    exit: Option<f64>,
    runs: usize,
}

fn row(r: &ScenarioResult, prefix: &str) -> Row {
    let boots: Vec<_> = r
        .boots
        .iter()
        .filter(|b| b.name.starts_with(prefix) && !b.name.ends_with("-warmup"))
        .collect();
    let ok: Vec<_> = boots
        .iter()
        .filter(|b| b.exit_code() == Some(0) && b.first_line.is_some())
        .collect();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    Row {
        first: median(
            &ok.iter()
                .filter_map(|b| b.first_line.map(ms))
                .collect::<Vec<_>>(),
        ),
        exit: median(&ok.iter().map(|b| ms(b.exit_after)).collect::<Vec<_>>()),
        runs: ok.len(),
    }
}

fn main() -> ExitCode {
    let (runs, kernels) = match parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let rig = match Rig::open() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-nested: {}", agentvm_rig::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut boots = Vec::new();
    for &k in &kernels {
        for vmm in [Vmm::Agentvm, Vmm::QemuMicrovm] {
            let mut b =
                Boot::agentvm(&format!("{}-warmup", label(vmm, k)), k).mode(GuestMode::Bench);
            b.vmm = vmm;
            boots.push(b);
        }
    }
    // Interleave the VMMs so drift in the host's load hits both alike.
    for i in 0..runs {
        for &k in &kernels {
            for vmm in [Vmm::Agentvm, Vmm::QemuMicrovm] {
                let mut b =
                    Boot::agentvm(&format!("{}-{i}", label(vmm, k)), k).mode(GuestMode::Bench);
                b.vmm = vmm;
                boots.push(b);
            }
        }
    }
    eprintln!(
        "bench-nested: {} boots in one {:?}-tier run...",
        boots.len(),
        rig.tier()
    );
    let result = match rig.run(&Scenario::new("bench", boots)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-nested: {}", agentvm_rig::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    println!(
        "tier: {:?}; runs per VMM and kernel: {runs} (+1 warm-up); log: {}",
        result.tier,
        result.log_path.display()
    );
    println!(
        "{:<18} {:>6} {:>16} {:>16}",
        "vmm-kernel", "ok", "first line ms", "exit ms"
    );
    let f = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
    let mut failed = false;
    for &k in &kernels {
        let a = row(&result, &label(Vmm::Agentvm, k));
        let q = row(&result, &label(Vmm::QemuMicrovm, k));
        for (name, r) in [
            (label(Vmm::Agentvm, k), &a),
            (label(Vmm::QemuMicrovm, k), &q),
        ] {
            println!(
                "{name:<18} {:>6} {:>16} {:>16}",
                format!("{}/{runs}", r.runs),
                f(r.first),
                f(r.exit)
            );
            failed |= r.runs == 0;
        }
        let ratio = |x: Option<f64>, y: Option<f64>| {
            x.zip(y)
                .map(|(x, y)| format!("{:.2}", x / y))
                .unwrap_or("-".into())
        };
        println!(
            "{:<18} {:>6} {:>16} {:>16}",
            format!(
                "ratio {}",
                if k == KernelFormat::Vmlinux {
                    "vmlinux"
                } else {
                    "bzimage"
                }
            ),
            "",
            ratio(a.first, q.first),
            ratio(a.exit, q.exit)
        );
    }
    if failed {
        eprintln!("bench-nested: some VMM never booted; see the log");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
