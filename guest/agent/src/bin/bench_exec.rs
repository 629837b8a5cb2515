//! `bench-exec-local`: exec round trip through the guest agent on the host,
//! no VM: `agentvm-guest serve` on a Unix socket, and for each run a new
//! connection, `Hello` + `Start{true}`, until `Exit` — what `agentvm attach
//! -- true` costs minus the VMM's vsock. The peer is the same `true` spawned
//! directly (fork + exec + wait), so the protocol's share is visible.
//!
//! Usage: `cargo run --release -p agentvm-guest --bin bench-exec-local --
//! [--runs N]` (the agent binary is taken from next to this one).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use agentvm_protocol::client::{self, Stdio as ClientStdio};
use agentvm_protocol::{ExitStatus, Start};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-exec-local: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_runs() -> Result<usize, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(200),
        [flag, n] if flag == "--runs" => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| "--runs needs a positive number".into()),
        _ => Err("usage: bench-exec-local [--runs N]".into()),
    }
}

fn run() -> Result<(), String> {
    let runs = parse_runs()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let agent_bin = exe.with_file_name("agentvm-guest");
    if !agent_bin.is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p agentvm-guest)",
            agent_bin.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("agentvm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = dir.join("agent.sock");
    let mut agent = Command::new(&agent_bin)
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", agent_bin.display()))?;
    let mut line = String::new();
    if let Some(out) = agent.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let result = measure(&sock, runs);
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (agent_times, local_times) = result?;
    report("agent over UDS", agent_times);
    report("local spawn (peer)", local_times);
    Ok(())
}

/// One exec through the agent.
fn exec_true(sock: &std::path::Path) -> Result<Duration, String> {
    let t = Instant::now();
    let stream = UnixStream::connect(sock).map_err(|e| e.to_string())?;
    let status = client::run_unix(
        stream,
        Start {
            argv: vec![b"true".to_vec()],
            ..Start::default()
        },
        ClientStdio {
            stdin: None,
            stdout: Box::new(std::io::sink()),
            stderr: Box::new(std::io::sink()),
        },
    )
    .map_err(|e| e.to_string())?;
    if status != ExitStatus::Code(0) {
        return Err(format!("true ended with {status:?}"));
    }
    Ok(t.elapsed())
}

fn measure(sock: &std::path::Path, runs: usize) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    for _ in 0..10 {
        exec_true(sock)?; // warm-up
    }
    let mut agent = Vec::with_capacity(runs);
    let mut local = Vec::with_capacity(runs);
    for _ in 0..runs {
        agent.push(exec_true(sock)?);
        let t = Instant::now();
        let st = Command::new("true").status().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("local true failed".into());
        }
        local.push(t.elapsed());
    }
    Ok((agent, local))
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times[i.min(times.len() - 1)]
    };
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    println!(
        "{name:<22} runs={:<4} p50={:>8.3} ms  p99={:>8.3} ms  mean={:>8.3} ms",
        times.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
    );
}
