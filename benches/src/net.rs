//! `bench-net`: agentvm-net against passt, frame in to frame out.
//!
//! One guest network stack (smoltcp, `agentvm_net::testing::Guest`, in
//! this process) sends its Ethernet frames over a Unix stream socket, each
//! frame preceded by its length (4 bytes, big-endian: QEMU's
//! `-netdev stream`, passt's `--socket`), to one of two peers:
//! - agentvm-net: this binary again (`--serve-agentvm`), a `NetStack`
//!   behind the socket in a loop of its own (read frames, push, poll, pop,
//!   write; wait on the socket, the stack's fd and its poll delay), with a
//!   filtered policy that pins `sink.test` to 127.0.0.1 (the guest looks
//!   the name up at 10.0.2.3 and connects to the address it is given);
//! - passt (Debian's, `passt -f -q -4 --mtu 65520 --runas UID:GID --socket
//!   PATH`), reaching the host's 127.0.0.1 through the gateway address.
//!
//! Both hand out a DHCP lease, both run with an MTU of 65520, and both
//! reach the same sinks, threads of this process on 127.0.0.1. Each
//! repetition starts a fresh peer and measures, one peer after the other
//! (alternating which goes first):
//! - guest→host bulk TCP: time from connect until the sink read every byte;
//! - host→guest bulk TCP: time from connect until the guest read every
//!   byte and the FIN;
//! - connections per second: sequential connect, handshake, sink closes,
//!   guest closes, until the guest's socket is closed;
//! - memory per open flow: the peer process's VmRSS before and after
//!   opening that many idle connections (kernel socket memory is in
//!   neither), after the tests above warmed its allocator;
//! - guest→host again while those connections are open (what idle flows
//!   cost the data path).
//!
//! The guest is the same for both peers, with two adjustments for passt's
//! sake: bulk sockets have 1 MiB buffers (larger windows make Debian 12's
//! passt stall), and uploads get Linux-like loss recovery (`recovery.rs`:
//! passt drops what its host socket refuses, and smoltcp alone would wait
//! a second or more for each such drop). Its retransmissions are counted.
//!
//! CPU time of the peer process and of the guest thread comes from
//! `/proc/*/schedstat`: the guest can be the bottleneck, so the report
//! gives the peer's CPU time per GiB or per connection next to the
//! rates. Medians over the repetitions, the agentvm/passt ratio, and the
//! best run of each.
//!
//! Usage: `cargo run --release -p agentvm-benches --bin bench-net --
//! [--quick] [--runs N] [--guest-buf KIB] [--only agentvm-net|passt]`
//! (needs `passt` on the PATH: `apt-get install passt`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use smoltcp::wire::IpCidr;

#[path = "net/guest.rs"]
mod guest;
#[path = "net/link.rs"]
mod link;
#[path = "net/recovery.rs"]
mod recovery;
#[path = "net/serve.rs"]
mod serve;
#[path = "net/sinks.rs"]
mod sinks;

use guest::Client;
use serve::serve_agentvm;
use sinks::Sinks;

/// The IP MTU on both links.
const MTU: usize = 65520;
/// The name agentvm-net's policy pins to 127.0.0.1.
const SINK_NAME: &str = "sink.test";
/// agentvm-net's DNS server, as the guest sees it.
const DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
/// Guest socket buffers for bulk transfers, KiB (the guest's window).
/// With 4 MiB, host→guest through Debian 12's passt stalled (0.9 s for
/// 64 MiB instead of 0.07 s, its own retransmissions to the guest); with
/// 1 MiB neither peer stalls.
const BULK_BUF_KIB: usize = 1024;

/// What one repetition does.
#[derive(Clone, Copy)]
struct Sizes {
    /// Bytes of each bulk transfer.
    bulk: u64,
    /// Sequential connections.
    conns: usize,
    /// Idle connections held open.
    flows: usize,
    /// Guest socket buffers for bulk transfers, bytes.
    guest_buf: usize,
}

/// The command line.
struct Args {
    runs: usize,
    sizes: Sizes,
    /// Run only this peer (a debugging aid).
    only: Option<String>,
}

impl Args {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let value = |flag: &str| -> anyhow::Result<Option<&String>> {
            match args.iter().position(|a| a == flag) {
                Some(i) => Ok(Some(
                    args.get(i + 1).with_context(|| format!("{flag} VALUE"))?,
                )),
                None => Ok(None),
            }
        };
        let quick = args.iter().any(|a| a == "--quick");
        let runs = match value("--runs")? {
            Some(n) => n.parse().context("--runs N: a number")?,
            None if quick => 3,
            None => 5,
        };
        ensure!(runs > 0, "--runs must be at least 1");
        let guest_buf = match value("--guest-buf")? {
            Some(k) => k.parse::<usize>().context("--guest-buf KIB: a number")? << 10,
            None => BULK_BUF_KIB << 10,
        };
        let (bulk, conns, flows) = if quick {
            (64 << 20, 300, 100)
        } else {
            (512 << 20, 2000, 500)
        };
        Ok(Args {
            runs,
            sizes: Sizes {
                bulk,
                conns,
                flows,
                guest_buf,
            },
            only: value("--only")?.cloned(),
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve-agentvm") {
        let path = args.get(1).context("--serve-agentvm SOCKET PORTS")?;
        let ports = args
            .get(2)
            .context("--serve-agentvm SOCKET PORTS")?
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u16>, _>>()
            .context("PORTS: comma-separated port numbers")?;
        return serve_agentvm(Path::new(path), &ports);
    }
    let Args { runs, sizes, only } = Args::parse(&args)?;
    let sinks = Sinks::start()?;
    let dir = tempfile_dir()?;
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [Peer::Agentvm, Peer::Passt]
        } else {
            [Peer::Passt, Peer::Agentvm]
        };
        for peer in order {
            if only.as_deref().is_some_and(|o| o != peer.name()) {
                continue;
            }
            let path = dir.join(format!("{}-{run}.sock", peer.name()));
            let sample = run_peer(peer, &path, &sinks, sizes)
                .with_context(|| format!("{} run {run}", peer.name()))?;
            eprintln!("run {run} {:<11} {}", peer.name(), sample.brief());
            samples[peer as usize].push(sample);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(&samples, sizes, runs);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

// ---------------------------------------------------------------------
// The peers, as processes.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Agentvm = 0,
    Passt = 1,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Agentvm => "agentvm-net",
            Peer::Passt => "passt",
        }
    }

    fn spawn(self, path: &Path, sinks: &Sinks) -> anyhow::Result<Child> {
        let mut cmd = match self {
            Peer::Agentvm => {
                let ports: Vec<String> = sinks.ports().iter().map(u16::to_string).collect();
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.arg("--serve-agentvm").arg(path).arg(ports.join(","));
                cmd
            }
            Peer::Passt => {
                let mut cmd = Command::new("passt");
                // Foreground, quiet, IPv4, our socket and MTU, our user
                // (as root it would switch to nobody, who cannot create the
                // socket in our directory). `-1` (one guest only) makes
                // Debian 12's passt exit before the guest connects.
                // SAFETY: getuid and getgid cannot fail.
                let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                cmd.args(["-f", "-q", "-4", "--mtu"])
                    .arg(MTU.to_string())
                    .arg("--runas")
                    .arg(format!("{uid}:{gid}"))
                    .arg("--socket")
                    .arg(path);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.name()))
    }
}

/// A peer process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One repetition's figures for one peer.
#[derive(Clone, Copy, Default)]
struct Sample {
    up: Phase,
    /// Guest→host again, with the idle connections open.
    up_loaded: Phase,
    down: Phase,
    conns: Phase,
    /// VmRSS growth per open idle connection, bytes.
    flow_bytes: f64,
    /// Connections that did not close in time (and were reset).
    unclean: u64,
}

/// Wall and CPU time of one phase.
#[derive(Clone, Copy, Default)]
struct Phase {
    wall: f64,
    server_cpu: f64,
    guest_cpu: f64,
    /// Segments the guest's loss recovery sent again.
    retransmits: u64,
}

impl Sample {
    fn brief(&self) -> String {
        format!(
            "up {:.2} s ({} rtx)  down {:.2} s  conns {:.2} s  {:.1} KiB/flow  \
             up+idle {:.2} s ({} rtx)  {} unclean closes",
            self.up.wall,
            self.up.retransmits,
            self.down.wall,
            self.conns.wall,
            self.flow_bytes / 1024.0,
            self.up_loaded.wall,
            self.up_loaded.retransmits,
            self.unclean
        )
    }
}

fn run_peer(peer: Peer, path: &Path, sinks: &Sinks, sizes: Sizes) -> anyhow::Result<Sample> {
    let _ = std::fs::remove_file(path);
    let server = Server(peer.spawn(path, sinks)?);
    let pid = server.0.id();
    let mut client = Client::connect(path, sizes.guest_buf)?;
    let (lease, router) = client.dhcp()?;
    let router = router.context("the lease has no router")?;
    let IpCidr::Ipv4(lease) = lease;
    let mut neighbours = vec![router];
    if peer == Peer::Agentvm {
        neighbours.push(*DNS.ip());
    }
    client.learn(lease.address(), &neighbours)?;
    let sink_ip = match peer {
        // Whatever address the stack answers, it leads to the pinned one.
        Peer::Agentvm => client.resolve(SINK_NAME, DNS)?,
        // passt maps the gateway address to the host's loopback.
        Peer::Passt => router,
    };
    let at = |port| SocketAddrV4::new(sink_ip, port);
    // Warm up: the first connection pays for first-time work on both sides.
    client.connect_close(at(sinks.close_port))?;
    let mut sample = Sample::default();
    let measure = |client: &mut Client,
                   f: &mut dyn FnMut(&mut Client) -> anyhow::Result<()>|
     -> anyhow::Result<Phase> {
        let (s0, g0, p0) = (process_cpu(pid)?, thread_cpu()?, client.retransmits());
        let t0 = Instant::now();
        f(client)?;
        let wall = t0.elapsed().as_secs_f64();
        Ok(Phase {
            wall,
            server_cpu: process_cpu(pid)? - s0,
            guest_cpu: thread_cpu()? - g0,
            retransmits: client.retransmits() - p0,
        })
    };
    sample.up = measure(&mut client, &mut |c| {
        c.upload(at(sinks.upload_port), sizes.bulk, &sinks.uploaded)
    })?;
    sinks.download_len.store(sizes.bulk, Ordering::SeqCst);
    sample.down = measure(&mut client, &mut |c| {
        c.download(at(sinks.download_port), sizes.bulk)
    })?;
    sample.conns = measure(&mut client, &mut |c| {
        for _ in 0..sizes.conns {
            c.connect_close(at(sinks.close_port))?;
        }
        Ok(())
    })?;
    let before = rss_bytes(pid)?;
    let flows = client.open_idle(at(sinks.hold_port), sizes.flows, &sinks.held)?;
    // Let the peer settle (no frames move now) before sampling.
    thread::sleep(Duration::from_millis(100));
    let after = rss_bytes(pid)?;
    sample.flow_bytes = (after as f64 - before as f64) / sizes.flows as f64;
    sample.up_loaded = measure(&mut client, &mut |c| {
        c.upload(at(sinks.upload_port), sizes.bulk, &sinks.uploaded)
    })?;
    sample.unclean = client.unclean;
    drop(flows);
    sinks.release_held();
    drop(client);
    drop(server);
    Ok(sample)
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// Seconds on CPU of every thread of `pid` so far.
fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        ns += schedstat_ns(&task?.path().join("schedstat"))?;
    }
    Ok(ns as f64 / 1e9)
}

/// Seconds on CPU of the calling thread so far.
fn thread_cpu() -> anyhow::Result<f64> {
    Ok(schedstat_ns(Path::new("/proc/thread-self/schedstat"))? as f64 / 1e9)
}

fn schedstat_ns(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{}: {text}", path.display()))
}

// ---------------------------------------------------------------------
// The report.

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(samples: &[Vec<Sample>; 2], sizes: Sizes, runs: usize) {
    let mib = sizes.bulk as f64 / (1u64 << 20) as f64;
    let gib = mib / 1024.0;
    let conns = sizes.conns as f64;
    /// A row: its name, whether it is a rate (best = highest), its value.
    type Metric = (&'static str, bool, Box<dyn Fn(&Sample) -> f64>);
    let metrics: Vec<Metric> = vec![
        ("guest→host MiB/s", true, Box::new(move |s| mib / s.up.wall)),
        (
            "  peer CPU s/GiB",
            false,
            Box::new(move |s| s.up.server_cpu / gib),
        ),
        (
            "  guest CPU %",
            false,
            Box::new(|s| 100.0 * s.up.guest_cpu / s.up.wall),
        ),
        (
            "  guest retransmits",
            false,
            Box::new(|s| s.up.retransmits as f64),
        ),
        (
            "host→guest MiB/s",
            true,
            Box::new(move |s| mib / s.down.wall),
        ),
        (
            "  peer CPU s/GiB",
            false,
            Box::new(move |s| s.down.server_cpu / gib),
        ),
        (
            "  guest CPU %",
            false,
            Box::new(|s| 100.0 * s.down.guest_cpu / s.down.wall),
        ),
        (
            "connections/s",
            true,
            Box::new(move |s| conns / s.conns.wall),
        ),
        (
            "  peer CPU µs/conn",
            false,
            Box::new(move |s| 1e6 * s.conns.server_cpu / conns),
        ),
        (
            "  guest CPU %",
            false,
            Box::new(|s| 100.0 * s.conns.guest_cpu / s.conns.wall),
        ),
        (
            "RSS per open flow KiB",
            false,
            Box::new(|s| s.flow_bytes / 1024.0),
        ),
        (
            "g→h, flows open MiB/s",
            true,
            Box::new(move |s| mib / s.up_loaded.wall),
        ),
        (
            "  peer CPU s/GiB",
            false,
            Box::new(move |s| s.up_loaded.server_cpu / gib),
        ),
        (
            "  guest retransmits",
            false,
            Box::new(|s| s.up_loaded.retransmits as f64),
        ),
    ];
    println!(
        "bench-net: {mib:.0} MiB each way, {} sequential connections, {} idle flows \
         (\"flows open\": guest→host again while they are); MTU {MTU}, guest buffers {} KiB; \
         {runs} runs each",
        sizes.conns,
        sizes.flows,
        sizes.guest_buf >> 10
    );
    println!(
        "  {:<24} {:>12} {:>12} {:>14}   {:>12} {:>12}",
        "median", "agentvm-net", "passt", "agentvm/passt", "best agentvm", "best passt"
    );
    for (name, rate, f) in &metrics {
        let a: Vec<f64> = samples[0].iter().map(f).collect();
        let p: Vec<f64> = samples[1].iter().map(f).collect();
        let best = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let (ma, mp) = (median(a.clone()), median(p.clone()));
        let ratio = if mp > 0.0 && ma.is_finite() {
            format!("{:.2}x", ma / mp)
        } else {
            "-".to_owned()
        };
        print!("  {name:<24} {ma:>12.1} {mp:>12.1} {ratio:>14}");
        if *rate {
            print!("   {:>12.1} {:>12.1}", best(&a), best(&p));
        }
        println!();
    }
}
