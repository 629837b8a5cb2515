//! `bench-intercept`: what TLS interception with a bound secret adds to a
//! request, against the same flow without one, in one run.
//!
//! One `agentvm_net::NetStack` (filtered policy) runs in this thread,
//! driven by the smoltcp test guest (`agentvm_net::testing::Guest`) as in
//! the stack's interception tests. One upstream, a rustls server with a
//! test CA of its own (given to the stack as an extra upstream root), on
//! 127.0.44.80:443, serves two names, both pinned in the policy:
//! - `bound.test`, with a secret bound: the stack intercepts (the guest's
//!   TLS ends at the stack, on a leaf minted from the workspace CA; the
//!   stack opens its own TLS upstream) and swaps the placeholder in each
//!   request head for the real value;
//! - `plain.test`, nothing bound: spliced as-is, TLS end to end between
//!   the guest and the upstream.
//!
//! The guest's rustls client trusts both the workspace CA and the
//! upstream's, offers ALPN `http/1.1` only, and has session resumption
//! off (every handshake is a full one; the stack's own upstream client
//! keeps its default resumption). Guest and stack share this thread; the
//! upstream runs a thread per connection. Each repetition measures, for
//! each flow (alternating which goes first), on the same code path:
//! - request latency: on one keep-alive connection (after one untimed
//!   request for the handshake), sequential `GET /small` with
//!   `Authorization: Bearer <placeholder>`, each timed from writing the
//!   request to reading the whole response (200, 100-byte body); p50 and
//!   p99 of the run;
//! - handshake: fresh connections, each timed from the guest's SYN to the
//!   whole response of its first request (TCP + TLS handshake(s) +
//!   request); p50 and p99 of the run;
//! - download and upload: one fresh connection (connected first,
//!   untimed), one request with a Content-Length body either way, timed
//!   from writing the request to the whole response; MiB/s, and the CPU
//!   time of the whole process (guest, stack and upstream: `getrusage`)
//!   per GiB.
//!
//! It checks that it measured the right paths and fails loudly otherwise:
//! the upstream saw the real value in every request of the bound flow and
//! never the placeholder, the placeholder verbatim in every request of the
//! plain flow; the guest was served the upstream's own certificate on the
//! plain flow and another (the stack's) on the bound one; the stack
//! audited one substitution per bound request, and no audit line holds
//! the value.
//!
//! The report gives medians over the repetitions, the added latency or
//! cost (intercepted − plain), the intercepted/plain ratio, and the best
//! run of each.
//!
//! Usage: `cargo run --release -p agentvm-benches --bin bench-intercept --
//! [--quick] [--runs N]` (binds port 443 of 127.0.44.80: needs root or
//! CAP_NET_BIND_SERVICE).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentvm_net::intercept::{Ca, InterceptConfig};
use agentvm_net::secrets::{Secret, SecretValue};
use agentvm_net::{Audit, Mode, NetStack, Policy, StackConfig};
use anyhow::{ensure, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

#[path = "intercept/guest.rs"]
mod guest;
#[path = "intercept/report.rs"]
mod report;
#[path = "intercept/upstream.rs"]
mod upstream;

use guest::Net;
use report::{percentiles, report, Bulk, Sample};
use upstream::{Counts, Upstream, SMALL_BODY};

/// The name a secret is bound to (intercepted).
const BOUND: &str = "bound.test";
/// The name nothing is bound to (spliced).
const PLAIN: &str = "plain.test";
/// Where the upstream listens (both names are pinned to it).
const UPSTREAM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 44, 80), 443);
/// The secret's real value: only the bound flow's upstream may see it.
const VALUE: &str = "sk-bench-REAL-secret-value-0123456789abcdefghij";
/// What the guest holds instead.
const PLACEHOLDER: &str = "sk-bench-placeholder-AAAAAAAAAAAAAAAAAAAAAAAAA";
/// The only ALPN protocol either side offers.
const ALPN: &[u8] = b"http/1.1";
/// Guest socket buffers for requests and handshakes, bytes.
const SMALL_BUF: usize = 256 << 10;
/// Guest socket buffers for bulk transfers, bytes.
const BULK_BUF: usize = 1 << 20;

/// The ring provider (the project builds without aws-lc-rs).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What one repetition does.
#[derive(Clone, Copy)]
struct Sizes {
    /// Timed requests on the keep-alive connection.
    requests: usize,
    /// Fresh connections.
    handshakes: usize,
    /// Bytes of each bulk transfer.
    bulk: u64,
}

/// The command line.
struct Args {
    runs: usize,
    sizes: Sizes,
}

impl Args {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let runs = match args.iter().position(|a| a == "--runs") {
            Some(i) => args
                .get(i + 1)
                .context("--runs N")?
                .parse()
                .context("--runs N: a number")?,
            None if quick => 3,
            None => 5,
        };
        ensure!(runs > 0, "--runs must be at least 1");
        let sizes = if quick {
            Sizes {
                requests: 500,
                handshakes: 20,
                bulk: 16 << 20,
            }
        } else {
            Sizes {
                requests: 2000,
                handshakes: 50,
                bulk: 64 << 20,
            }
        };
        Ok(Args { runs, sizes })
    }
}

/// The two flows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Intercepted = 0,
    Plain = 1,
}

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::Intercepted => BOUND,
            Flow::Plain => PLAIN,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Flow::Intercepted => "intercepted",
            Flow::Plain => "plain",
        }
    }
}

/// Everything a measurement uses.
struct Bench {
    net: Net,
    upstream: Upstream,
    /// The guest's address of the upstream (both names are pinned to it).
    remote: SocketAddrV4,
    /// Requests sent per flow so far (each checked at the upstream).
    sent: [u64; 2],
    /// Body bytes uploaded per flow so far.
    uploaded: [u64; 2],
    /// Substitutions the stack audited.
    substituted: Arc<AtomicU64>,
    /// Whether an audit line held the value.
    leaked: Arc<AtomicBool>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Args { runs, sizes } = Args::parse(&args)?;
    let mut bench = Bench::start()?;
    // Warm up both paths: first-time work (leaf minting, allocators).
    for flow in [Flow::Intercepted, Flow::Plain] {
        bench.latency(flow, 20).context("warm-up")?;
    }
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [Flow::Intercepted, Flow::Plain]
        } else {
            [Flow::Plain, Flow::Intercepted]
        };
        let mut sample = [Sample::default(); 2];
        for flow in order {
            let (p50, p99) = percentiles(bench.latency(flow, sizes.requests)?);
            sample[flow as usize].p50 = p50;
            sample[flow as usize].p99 = p99;
        }
        for flow in order {
            let (p50, p99) = percentiles(bench.handshakes(flow, sizes.handshakes)?);
            sample[flow as usize].handshake_p50 = p50;
            sample[flow as usize].handshake_p99 = p99;
        }
        for flow in order {
            sample[flow as usize].down = bench.bulk(flow, sizes.bulk, false)?;
        }
        for flow in order {
            sample[flow as usize].up = bench.bulk(flow, sizes.bulk, true)?;
        }
        for flow in [Flow::Intercepted, Flow::Plain] {
            eprintln!(
                "run {run} {:<11} {}",
                flow.label(),
                sample[flow as usize].brief(sizes.bulk)
            );
            samples[flow as usize].push(sample[flow as usize]);
        }
    }
    let checked = bench.check_audit()?;
    report(&samples, sizes, runs, bench.net.unclean, &checked);
    Ok(())
}

impl Bench {
    /// The upstream, the stack with its policy and secret, the guest.
    fn start() -> anyhow::Result<Self> {
        let upstream = Upstream::start(UPSTREAM, &[BOUND, PLAIN], VALUE, PLACEHOLDER)?;
        let mut policy = Policy::new(Mode::Filtered);
        policy.pin(BOUND, *UPSTREAM.ip())?;
        policy.pin(PLAIN, *UPSTREAM.ip())?;
        policy.ports = vec![UPSTREAM.port()];
        let workspace = Ca::generate("bench-intercept workspace CA")?;
        let substituted = Arc::new(AtomicU64::new(0));
        let leaked = Arc::new(AtomicBool::new(false));
        let (count, leak) = (substituted.clone(), leaked.clone());
        // Each event is formatted as the audit file would hold it.
        let audit = Audit::callback(move |e| {
            if e.to_line().contains(VALUE) {
                leak.store(true, Ordering::SeqCst);
            }
            if e.reason == "secret substituted" {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        let stack = NetStack::new(StackConfig {
            policy,
            audit,
            intercept: Some(InterceptConfig {
                ca_cert_pem: workspace.cert_pem.clone(),
                ca_key_pem: workspace.key_pem.clone(),
                secrets: vec![Secret {
                    name: "BENCH_API_KEY".into(),
                    placeholder: PLACEHOLDER.into(),
                    value: SecretValue::new(VALUE),
                    hosts: vec![BOUND.into()],
                }],
                upstream_roots_pem: vec![upstream.ca_pem.clone()],
                host_roots: false,
            }),
            ..StackConfig::default()
        })?;
        let mut roots = RootCertStore::empty();
        for pem in [&workspace.cert_pem, &upstream.ca_pem] {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert?)?;
            }
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let mut net = Net::new(stack, Arc::new(config))?;
        // Both names are pinned to one address: one guest address.
        let guest_ip = net.resolve(BOUND)?;
        let other = net.resolve(PLAIN)?;
        ensure!(
            guest_ip == other,
            "{BOUND} at {guest_ip}, {PLAIN} at {other}"
        );
        Ok(Bench {
            net,
            upstream,
            remote: SocketAddrV4::new(guest_ip, UPSTREAM.port()),
            sent: [0; 2],
            uploaded: [0; 2],
            substituted,
            leaked,
        })
    }

    /// A request head for `flow`.
    fn head(flow: Flow, method: &str, path: &str, body: u64) -> Vec<u8> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\
             User-Agent: bench-intercept\r\nAccept: */*\r\n",
            flow.name()
        );
        if body > 0 {
            head.push_str(&format!("Content-Length: {body}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// A small request on `conn`, counted.
    fn small(&mut self, flow: Flow, conn: &mut guest::Conn) -> anyhow::Result<()> {
        let head = Self::head(flow, "GET", "/small", 0);
        self.net.request(conn, &head, 0, SMALL_BODY as u64)?;
        self.sent[flow as usize] += 1;
        Ok(())
    }

    /// Request latencies on one keep-alive connection.
    fn latency(&mut self, flow: Flow, n: usize) -> anyhow::Result<Vec<Duration>> {
        let mut conn = self.net.connect(self.remote, flow.name(), SMALL_BUF)?;
        self.small(flow, &mut conn).context("first request")?;
        self.check_peer(flow, &conn)?;
        let head = Self::head(flow, "GET", "/small", 0);
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            self.net
                .request(&mut conn, &head, 0, SMALL_BODY as u64)
                .with_context(|| format!("{} request", flow.label()))?;
            times.push(t0.elapsed());
            self.sent[flow as usize] += 1;
        }
        self.net.close(conn);
        self.check_upstream(flow)?;
        Ok(times)
    }

    /// Connect-to-first-response times of fresh connections.
    fn handshakes(&mut self, flow: Flow, n: usize) -> anyhow::Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            let mut conn = self.net.connect(self.remote, flow.name(), SMALL_BUF)?;
            self.small(flow, &mut conn)
                .with_context(|| format!("{} handshake", flow.label()))?;
            times.push(t0.elapsed());
            self.check_peer(flow, &conn)?;
            self.net.close(conn);
        }
        self.check_upstream(flow)?;
        Ok(times)
    }

    /// One bulk transfer of `bytes` (down, or up if `upload`) on a fresh
    /// connection (connected by a first, untimed request).
    fn bulk(&mut self, flow: Flow, bytes: u64, upload: bool) -> anyhow::Result<Bulk> {
        let mut conn = self.net.connect(self.remote, flow.name(), BULK_BUF)?;
        self.small(flow, &mut conn).context("first request")?;
        self.check_peer(flow, &conn)?;
        let (head, up, down) = if upload {
            (
                Self::head(flow, "POST", "/upload", bytes),
                bytes,
                SMALL_BODY as u64,
            )
        } else {
            (
                Self::head(flow, "GET", &format!("/download/{bytes}"), 0),
                0,
                bytes,
            )
        };
        let cpu0 = process_cpu();
        let t0 = Instant::now();
        self.net
            .request(&mut conn, &head, up, down)
            .with_context(|| format!("{} bulk", flow.label()))?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = process_cpu() - cpu0;
        self.sent[flow as usize] += 1;
        self.uploaded[flow as usize] += up;
        self.net.close(conn);
        self.check_upstream(flow)?;
        Ok(Bulk { wall, cpu })
    }

    /// The guest was served the upstream's own certificate on the plain
    /// flow, and another (the stack's) on the intercepted one.
    fn check_peer(&self, flow: Flow, conn: &guest::Conn) -> anyhow::Result<()> {
        let upstream = self.upstream.leaf(flow.name());
        let served = conn.peer_leaf();
        ensure!(served.is_some(), "{}: no peer certificate", flow.label());
        let end_to_end = served == upstream;
        ensure!(
            end_to_end == (flow == Flow::Plain),
            "{}: the guest's TLS {} the upstream: the wrong path is measured",
            flow.label(),
            if end_to_end {
                "reached"
            } else {
                "did not reach"
            }
        );
        Ok(())
    }

    /// Every request of `flow` so far reached the upstream with the real
    /// value (intercepted) or the placeholder verbatim (plain).
    fn check_upstream(&self, flow: Flow) -> anyhow::Result<()> {
        let n = self.sent[flow as usize];
        let (value, placeholder) = match flow {
            Flow::Intercepted => (n, 0),
            Flow::Plain => (0, n),
        };
        let want = Counts {
            requests: n,
            value,
            placeholder,
            uploaded: self.uploaded[flow as usize],
        };
        let got = self.upstream.counts(flow.name());
        ensure!(
            got == want,
            "{}: the upstream saw {got:?}, {want:?} expected: the wrong path is measured",
            flow.label()
        );
        Ok(())
    }

    /// One substitution audited per intercepted request, no value in any
    /// audit line.
    fn check_audit(&self) -> anyhow::Result<String> {
        let subs = self.substituted.load(Ordering::SeqCst);
        let bound = self.sent[Flow::Intercepted as usize];
        ensure!(
            subs == bound,
            "{subs} substitutions audited for {bound} intercepted requests"
        );
        ensure!(
            !self.leaked.load(Ordering::SeqCst),
            "an audit line holds the value"
        );
        let plain = self.sent[Flow::Plain as usize];
        Ok(format!(
            "checked: the upstream saw the real value in all {bound} intercepted requests \
             ({subs} substitutions audited, no value in the audit) and the placeholder \
             verbatim in all {plain} plain ones; the guest got the stack's certificate on \
             every intercepted connection and the upstream's on every plain one"
        ))
    }
}

/// Seconds of CPU this process used so far (every thread).
fn process_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
