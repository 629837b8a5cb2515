//! `bench-exec`: exec round trip into a running L2 guest, agentvm's guest
//! agent against SSH, in the same guest over the same transport. One L2
//! boot of the default image with vsock; from L1 (nested tier) or the host
//! (direct tier), `agentvm attach -- true` and `dbclient … true` to a
//! dropbear in L2 run N times each, in alternating blocks, with a baseline
//! (`agentvm --version`: client process start alone); p50/p99 and the
//! ratio are printed. The L2 guest has no network device, so SSH goes over
//! vsock too: dbclient's proxy command (`rig-vsock connect`) opens the
//! stream, and in L2 `rig-vsock listen` (started by an agent startup
//! script) relays each connection to `dropbear -i` over loopback TCP. Those
//! two relays are extra hops the agent does not have; under nested TCG they
//! cost far less than SSH's handshake. Absolute times mean little there;
//! the ratio is the figure.
//!
//! Usage: `cargo run --release -p agentvm-rig --bin bench-exec -- [--runs N]`
//! (needs Debian's `dropbear-bin` on the host).

use std::process::ExitCode;
use std::time::Duration;

use agentvm_rig::image::L2_SSH_PORT;
use agentvm_rig::{percentile, BootResult, Rig, Scenario};

/// Blocks per peer: the peers alternate so drift in the host's load hits
/// both alike.
const BLOCKS: usize = 4;

fn parse() -> Result<usize, String> {
    let mut runs = 200;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n >= BLOCKS)
                    .ok_or(format!("--runs needs N >= {BLOCKS}"))?
            }
            _ => return Err("usage: bench-exec [--runs N]".into()),
        }
    }
    Ok(runs)
}

/// The script run beside the VMM once the agent is ready.
fn script(runs: usize) -> String {
    let per_block = runs.div_ceil(BLOCKS);
    format!(
        r#"export HOME=/tmp
A="$AGENTVM attach --uds $UDS"
$A -- true; echo "RIG-EXEC warmup_rc=$?"
PROXY="$RIG_VSOCK connect $UDS {port}"
$DBCLIENT -y -y -i "$SSH_KEY" -J "$PROXY" root@l2 true; echo "RIG-EXEC ssh_check_rc=$?"
for b in $(seq {BLOCKS}); do
  $RIG_STAMP --repeat {per_block} --label exec -- $AGENTVM attach --uds "$UDS" -- true
  $RIG_STAMP --repeat {per_block} --label ssh -- $DBCLIENT -y -y -i "$SSH_KEY" -J "$PROXY" root@l2 true
  $RIG_STAMP --repeat {per_block} --label spawn -- $AGENTVM --version
done
$AGENTVM attach --uds "$UDS" --poweroff
"#,
        port = L2_SSH_PORT,
    )
}

/// Every sample of `label` (all blocks), and how many runs succeeded.
fn samples(b: &BootResult, label: &str) -> (Vec<f64>, usize) {
    let (ms_key, ok_key) = (format!("{label}_ms"), format!("{label}_ok"));
    let mut v = Vec::new();
    let mut ok = 0;
    for (k, val) in &b.exec {
        if *k == ms_key {
            v.extend(val.split(',').filter_map(|x| x.parse::<f64>().ok()));
        } else if *k == ok_key {
            ok += val.parse::<usize>().unwrap_or(0);
        }
    }
    (v, ok)
}

fn main() -> ExitCode {
    let runs = match parse() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let rig = match Rig::open() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-exec: {}", agentvm_rig::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut boot = agentvm_rig::Boot::agent("exec-bench", &script(runs));
    boot.ssh = true;
    // Nested TCG: an SSH handshake takes seconds there.
    boot.timeout = Duration::from_secs(120 + 10 * runs as u64);
    eprintln!(
        "bench-exec: {runs} exec round trips per peer in one {:?}-tier boot...",
        rig.tier()
    );
    let result = match rig.run(&Scenario::new("bench-exec", vec![boot])) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-exec: {}", agentvm_rig::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let Some(b) = result.boot("exec-bench") else {
        eprintln!(
            "bench-exec: the boot did not finish; log {}",
            result.log_path.display()
        );
        return ExitCode::FAILURE;
    };
    for key in ["warmup_rc", "ssh_check_rc", "exec_fail", "ssh_fail"] {
        if let Some(v) = b.exec_marker(key) {
            println!("{key}: {v}");
        }
    }
    println!(
        "tier: {:?}; {} runs per peer in {BLOCKS} alternating blocks; log: {}",
        result.tier,
        runs.div_ceil(BLOCKS) * BLOCKS,
        result.log_path.display()
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "round trip of `true`", "ok", "p50 ms", "p99 ms", "mean ms"
    );
    let f = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    let mut rows = Vec::new();
    for (label, name) in [
        ("exec", "agentvm attach (vsock)"),
        ("ssh", "ssh: dbclient → dropbear"),
        ("spawn", "baseline: agentvm --version"),
    ] {
        let (v, ok) = samples(b, label);
        let mean = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let (p50, p99) = (percentile(&v, 50.0), percentile(&v, 99.0));
        println!(
            "{name:<28} {:>9} {:>9} {:>9} {:>9}",
            format!("{ok}/{}", v.len()),
            f(p50),
            f(p99),
            f(mean)
        );
        rows.push((p50, p99, ok == v.len() && ok > 0));
    }
    let ratio = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .map(|(a, b)| format!("{:.1}x", a / b))
            .unwrap_or("-".into())
    };
    println!(
        "ssh / agentvm: p50 {}, p99 {}",
        ratio(rows[1].0, rows[0].0),
        ratio(rows[1].1, rows[0].1)
    );
    println!(
        "(the baseline starts the agentvm binary and nothing else: the part of a round trip \
         that is process start on the client's side)"
    );
    if rows.iter().all(|r| r.2) {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench-exec: some runs failed; see the log");
        ExitCode::FAILURE
    }
}
