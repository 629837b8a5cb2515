//! `bench-net`: agentvm-net against passt, frame in to frame out.
//!
//! One guest network stack (smoltcp, `agentvm_net::testing::Guest`, in
//! this process) sends its Ethernet frames over a Unix stream socket, each
//! frame preceded by its length (4 bytes, big-endian: QEMU's
//! `-netdev stream`, passt's `--socket`), to one of two peers:
//! - agentvm-net: this binary again (`--serve-agentvm`), a [`NetStack`]
//!   behind the socket in a loop of its own (read frames, push, poll, pop,
//!   write; wait on the socket, the stack's fd and its poll delay), with a
//!   filtered policy that pins `sink.test` to 127.0.0.1;
//! - passt (`passt -f -4 --socket PATH --mtu 65520`), reaching the host's
//!   127.0.0.1 through the gateway address it hands out.
//!
//! Both take a DHCP lease, both run with an MTU of 65520, and both reach
//! the same sinks, threads of this process on 127.0.0.1. Each repetition
//! starts a fresh peer and measures, one peer after the other (alternating
//! which goes first):
//! - guest→host bulk TCP: time from connect until the sink read every byte;
//! - host→guest bulk TCP: time from connect until the guest read every
//!   byte and the FIN;
//! - connections per second: sequential connect, handshake, sink closes,
//!   guest closes, until the guest's socket is closed;
//! - memory per open flow: the peer process's VmRSS before and after
//!   opening that many idle connections (kernel socket memory is in
//!   neither), after the tests above warmed its allocator.
//!
//! CPU time of the peer process and of the guest thread comes from
//! `/proc/*/schedstat`: the guest (smoltcp) is the same for both peers and
//! can be the bottleneck, so the report gives the peer's CPU seconds per
//! GiB next to the throughput. Medians over the repetitions, then the
//! agentvm/passt ratio.
//!
//! Usage: `cargo run --release -p agentvm-benches --bin bench-net -- [--quick] [--runs N]`
//! (needs `passt` on the PATH: `apt-get install passt`).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agentvm_net::addr::GUEST_MAC;
use agentvm_net::testing::Guest;
use agentvm_net::{Mode, NetStack, Policy, StackConfig};
use anyhow::{anyhow, ensure, Context};
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, Question, CLASS, QCLASS, QTYPE, TYPE};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpCidr,
};

/// The IP MTU on both links.
const MTU: usize = 65520;
/// The name agentvm-net's policy pins to 127.0.0.1.
const SINK_NAME: &str = "sink.test";
/// agentvm-net's DNS server, as the guest sees it.
const DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
/// Largest frame on the link (an IP packet of 64 KiB plus Ethernet).
const MAX_FRAME: usize = 65536 + 14;
/// Read buffer of a link end.
const READ_BUF: usize = 4 << 20;
/// Bytes a link end queues for writing before it stops taking frames.
const HIGH_WATER: usize = 1 << 20;
/// Longest sleep of an idle loop (smoltcp's timers are coarser).
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Guest socket buffers for bulk transfers, KiB (the guest's window).
/// Larger ones make Debian 12's passt stall: it does not buffer what the
/// host socket refuses and waits for the guest to retransmit, and
/// smoltcp's shortest retransmission timeout is one second (Linux: 200 ms).
const BULK_BUF_KIB: usize = 1024;
/// Guest socket buffers for short and idle connections.
const SMALL_BUF: usize = 4096;
/// How long one phase may take before the run fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

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
                Some(i) => Ok(Some(args.get(i + 1).with_context(|| format!("{flag} VALUE"))?)),
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
// The link: length-prefixed frames over a Unix stream socket.

/// One end of a `-netdev stream` link, non-blocking.
struct Link {
    sock: UnixStream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

impl Link {
    fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Link {
            sock,
            rbuf: vec![0; READ_BUF],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(HIGH_WATER + MAX_FRAME),
            wpos: 0,
        })
    }

    /// Reads what the socket has; whether anything came. The peer closing
    /// is `UnexpectedEof`.
    fn fill(&mut self) -> io::Result<bool> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < MAX_FRAME + 4 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let mut got = false;
        while self.rend < self.rbuf.len() {
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.rend += n;
                    got = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// The next whole frame read, if any.
    fn frame(&mut self) -> io::Result<Option<&[u8]>> {
        let avail = &self.rbuf[self.rstart..self.rend];
        let Some(&[a, b, c, d]) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let start = self.rstart + 4;
        self.rstart = start + len;
        Ok(Some(&self.rbuf[start..start + len]))
    }

    /// Queues a frame for [`Link::flush`].
    fn queue(&mut self, frame: &[u8]) {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.wbuf.extend_from_slice(&len.to_be_bytes());
        self.wbuf.extend_from_slice(frame);
    }

    /// Bytes queued and not yet written.
    fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes what the socket takes; whether anything went.
    fn flush(&mut self) -> io::Result<bool> {
        let mut wrote = false;
        while self.wpos < self.wbuf.len() {
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wpos += n;
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos >= self.wbuf.len() / 2 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(wrote)
    }

    /// Waits until the socket is readable (or writable, with bytes
    /// pending), `other` is readable, or `timeout` passes (`None`: no
    /// limit).
    fn wait(&self, other: Option<RawFd>, timeout: Option<Duration>) {
        let out = if self.pending() > 0 { libc::POLLOUT } else { 0 };
        let mut fds = [
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN | out,
                revents: 0,
            },
            libc::pollfd {
                fd: other.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: two valid pollfds (a negative fd is ignored), a valid
        // or null timespec, no signal mask; all live for the call.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 2, ts_ptr, std::ptr::null()) };
    }
}

// ---------------------------------------------------------------------
// The agentvm-net peer: a NetStack behind the link.

fn serve_agentvm(path: &Path, ports: &[u16]) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("{}", path.display()))?;
    let (sock, _) = listener.accept()?;
    drop(listener);
    // passt asks for the largest send buffer the host allows; so do we.
    set_sndbuf(&sock, i32::MAX / 2)?;
    let mut link = Link::new(sock)?;
    let mut policy = Policy::new(Mode::Filtered);
    policy.pin(SINK_NAME, Ipv4Addr::LOCALHOST)?;
    policy.ports = ports.to_vec();
    let mut stack = NetStack::new(StackConfig {
        policy,
        mtu: MTU,
        ..StackConfig::default()
    })?;
    loop {
        let mut moved = match link.fill() {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        while let Some(frame) = link.frame()? {
            stack.push_frame(frame);
            moved = true;
        }
        stack.poll();
        // Like a full virtio rx queue: frames stay in the stack (and TCP
        // slows the host side) while the guest does not read.
        while link.pending() < HIGH_WATER {
            let Some(frame) = stack.pop_frame() else {
                break;
            };
            link.queue(&frame);
            moved = true;
        }
        moved |= link.flush()?;
        if !moved {
            let mut delay = stack.poll_delay();
            if link.pending() >= HIGH_WATER {
                // Only the guest reading helps: do not spin meanwhile.
                delay = delay.map(|d| d.max(Duration::from_millis(1)));
            }
            link.wait(Some(stack.as_raw_fd()), delay);
        }
    }
}

fn set_sndbuf(sock: &UnixStream, bytes: i32) -> anyhow::Result<()> {
    // SAFETY: a valid socket and a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_SNDBUF: {}", io::Error::last_os_error());
    Ok(())
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
}

/// Wall and CPU time of one phase.
#[derive(Clone, Copy, Default)]
struct Phase {
    wall: f64,
    server_cpu: f64,
    guest_cpu: f64,
}

impl Sample {
    fn brief(&self) -> String {
        format!(
            "up {:.2} s  down {:.2} s  conns {:.2} s  {:.1} KiB/flow  up+idle {:.2} s",
            self.up.wall,
            self.down.wall,
            self.conns.wall,
            self.flow_bytes / 1024.0,
            self.up_loaded.wall
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
        Peer::Agentvm => {
            let ip = client.resolve(SINK_NAME, DNS)?;
            ensure!(ip == Ipv4Addr::LOCALHOST, "{SINK_NAME} is {ip}");
            ip
        }
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
        let (s0, g0) = (process_cpu(pid)?, thread_cpu()?);
        let t0 = Instant::now();
        f(client)?;
        let wall = t0.elapsed().as_secs_f64();
        Ok(Phase {
            wall,
            server_cpu: process_cpu(pid)? - s0,
            guest_cpu: thread_cpu()? - g0,
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
// The guest: smoltcp on the client end of the link.

struct Client {
    g: Guest,
    link: Link,
    next_port: u16,
    /// Socket buffers of bulk transfers.
    bulk_buf: usize,
}

impl Client {
    fn connect(path: &Path, bulk_buf: usize) -> anyhow::Result<Self> {
        let start = Instant::now();
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(5) => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
            }
        };
        Ok(Client {
            g: Guest::with_mtu(MTU),
            link: Link::new(sock)?,
            next_port: 10000,
            bulk_buf,
        })
    }

    /// One round: frames in, smoltcp, frames out. Whether anything moved.
    fn step(&mut self) -> anyhow::Result<bool> {
        let mut moved = self.link.fill().context("link")?;
        while let Some(frame) = self.link.frame()? {
            self.g.phy.rx.push_back(frame.to_vec());
            moved = true;
        }
        let g = &mut self.g;
        g.iface.poll(SmolInstant::now(), &mut g.phy, &mut g.sockets);
        while let Some(frame) = g.phy.tx.pop_front() {
            self.link.queue(&frame);
            moved = true;
        }
        moved |= self.link.flush().context("link")?;
        Ok(moved)
    }

    /// Runs rounds until `done` holds; fails after [`PHASE_TIMEOUT`].
    fn run_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut Guest) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            if done(&mut self.g)? {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "timed out: {what}");
            if !self.step()? {
                let delay = self
                    .g
                    .iface
                    .poll_delay(SmolInstant::now(), &self.g.sockets)
                    .map_or(MAX_WAIT, Duration::from)
                    .min(MAX_WAIT);
                self.link.wait(None, Some(delay));
            }
        }
    }

    /// Takes a DHCP lease: the address and the router.
    fn dhcp(&mut self) -> anyhow::Result<(IpCidr, Option<Ipv4Addr>)> {
        let handle = self.g.sockets.add(dhcpv4::Socket::new());
        let mut lease = None;
        self.run_until("DHCP lease", |g| {
            if let Some(dhcpv4::Event::Configured(config)) =
                g.sockets.get_mut::<dhcpv4::Socket>(handle).poll()
            {
                g.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(config.address));
                });
                if let Some(router) = config.router {
                    g.iface.routes_mut().add_default_ipv4_route(router)?;
                }
                lease = Some((IpCidr::Ipv4(config.address), config.router));
            }
            Ok(lease.is_some())
        })?;
        self.g.sockets.remove(handle);
        lease.context("no lease")
    }

    /// Asks for the MAC addresses of `targets` (ARP) from `me`, so the
    /// first packet to each does not wait out smoltcp's one-second
    /// neighbour discovery pause (a Linux guest queues it instead).
    fn learn(&mut self, me: Ipv4Addr, targets: &[Ipv4Addr]) -> anyhow::Result<()> {
        let mac = EthernetAddress(GUEST_MAC);
        for &target in targets {
            let repr = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: mac,
                source_protocol_addr: me,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: target,
            };
            let mut frame = vec![0; 14 + repr.buffer_len()];
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            EthernetRepr {
                src_addr: mac,
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EthernetProtocol::Arp,
            }
            .emit(&mut eth);
            repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
            self.link.queue(&frame);
        }
        // The replies come back within a round or two.
        let until = Instant::now() + Duration::from_millis(50);
        self.run_until("ARP", |_| Ok(Instant::now() >= until))
    }

    /// Looks up `name`'s A record at `server`.
    fn resolve(&mut self, name: &str, server: SocketAddrV4) -> anyhow::Result<Ipv4Addr> {
        let mut query = Packet::new_query(0x4242);
        query.set_flags(simple_dns::PacketFlag::RECURSION_DESIRED);
        query.questions.push(Question::new(
            Name::new(name)?,
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let bytes = query.build_bytes_vec()?;
        let socket = self.g.udp_bind(5353);
        self.g
            .udp(socket)
            .send_slice(&bytes, (*server.ip(), server.port()))?;
        let mut reply = None;
        self.run_until("DNS reply", |g| {
            let mut buf = vec![0; 4096];
            if let Ok((n, _)) = g.udp(socket).recv_slice(&mut buf) {
                buf.truncate(n);
                reply = Some(buf);
            }
            Ok(reply.is_some())
        })?;
        self.g.sockets.remove(socket);
        let reply = reply.context("no DNS reply")?;
        let packet = Packet::parse(&reply)?;
        packet
            .answers
            .iter()
            .find_map(|r| match &r.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .with_context(|| format!("no address for {name}"))
    }

    fn port(&mut self) -> u16 {
        self.next_port = if self.next_port >= 60000 {
            10000
        } else {
            self.next_port + 1
        };
        self.next_port
    }

    fn tcp_connect(&mut self, to: SocketAddrV4, buffer: usize) -> SocketHandle {
        let port = self.port();
        self.g.tcp_connect(to, port, buffer)
    }

    /// Sends `len` bytes, closes, and waits for the sink to count them.
    fn upload(
        &mut self,
        to: SocketAddrV4,
        len: u64,
        counted: &Mutex<mpsc::Receiver<u64>>,
    ) -> anyhow::Result<()> {
        let counted = counted.lock().map_err(|_| anyhow!("sink poisoned"))?;
        let chunk = vec![0x5a_u8; 1 << 20];
        let h = self.tcp_connect(to, self.bulk_buf);
        let mut sent = 0u64;
        let mut got = None;
        self.run_until("upload", |g| {
            let s = g.tcp(h);
            while sent < len && s.can_send() {
                let n = (len - sent).min(chunk.len() as u64) as usize;
                let k = s.send_slice(&chunk[..n])?;
                if k == 0 {
                    break;
                }
                sent += k as u64;
                if sent == len {
                    s.close();
                }
            }
            ensure!(
                sent == len || s.may_send() || s.state() == tcp::State::SynSent,
                "connection {} after {sent} bytes",
                s.state()
            );
            if let Ok(n) = counted.try_recv() {
                got = Some(n);
            }
            Ok(got.is_some())
        })?;
        ensure!(got == Some(len), "the sink read {got:?} of {len} bytes");
        self.finish(h, false)
    }

    /// Reads `len` bytes and the FIN from the sink.
    fn download(&mut self, to: SocketAddrV4, len: u64) -> anyhow::Result<()> {
        let h = self.tcp_connect(to, self.bulk_buf);
        let mut received = 0u64;
        self.run_until("download", |g| {
            let s = g.tcp(h);
            while s.can_recv() {
                received += s.recv(|b| (b.len(), b.len()))? as u64;
            }
            Ok(!s.may_recv() && s.state() != tcp::State::SynSent)
        })?;
        ensure!(received == len, "received {received} of {len} bytes");
        self.finish(h, true)
    }

    /// Connects, lets the sink close first, closes, waits for the end.
    fn connect_close(&mut self, to: SocketAddrV4) -> anyhow::Result<()> {
        let h = self.tcp_connect(to, SMALL_BUF);
        self.run_until("connect", |g| {
            Ok(matches!(
                g.tcp(h).state(),
                tcp::State::CloseWait | tcp::State::Closed
            ))
        })?;
        ensure!(
            self.g.tcp(h).state() == tcp::State::CloseWait,
            "connection refused or reset"
        );
        self.finish(h, true)
    }

    /// Closes `h` and waits until it is closed (or, for the side closing
    /// first, in TIME-WAIT), then forgets it.
    fn finish(&mut self, h: SocketHandle, close: bool) -> anyhow::Result<()> {
        if close {
            self.g.tcp(h).close();
        }
        self.run_until("close", |g| {
            Ok(matches!(
                g.tcp(h).state(),
                tcp::State::Closed | tcp::State::TimeWait
            ))
        })?;
        self.g.sockets.remove(h);
        Ok(())
    }

    /// Opens `n` connections at once and waits until all are established
    /// and the sink holds them.
    fn open_idle(
        &mut self,
        to: SocketAddrV4,
        n: usize,
        held: &Arc<Mutex<Vec<TcpStream>>>,
    ) -> anyhow::Result<Vec<SocketHandle>> {
        let handles: Vec<SocketHandle> = (0..n).map(|_| self.tcp_connect(to, SMALL_BUF)).collect();
        self.run_until("idle connections", |g| {
            let open = handles
                .iter()
                .filter(|h| g.tcp(**h).state() == tcp::State::Established)
                .count();
            let sink = held.lock().map_err(|_| anyhow!("sink poisoned"))?.len();
            Ok(open == n && sink >= n)
        })?;
        Ok(handles)
    }
}

// ---------------------------------------------------------------------
// The sinks: host TCP servers on 127.0.0.1.

struct Sinks {
    upload_port: u16,
    download_port: u16,
    close_port: u16,
    hold_port: u16,
    /// Bytes each upload connection read, at its EOF.
    uploaded: Mutex<mpsc::Receiver<u64>>,
    /// What each download connection writes.
    download_len: Arc<AtomicU64>,
    /// Connections the hold sink keeps open.
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Sinks {
    fn start() -> anyhow::Result<Self> {
        let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
        let (up, down, close, hold) = (bind()?, bind()?, bind()?, bind()?);
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
        let (upload_port, download_port, close_port, hold_port) =
            (port(&up)?, port(&down)?, port(&close)?, port(&hold)?);
        let (tx, uploaded) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = vec![0; 1 << 20];
            for conn in up.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut n = 0u64;
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                if tx.send(n).is_err() {
                    return;
                }
            }
        });
        let download_len = Arc::new(AtomicU64::new(0));
        let len = download_len.clone();
        thread::spawn(move || {
            let buf = vec![0xa5_u8; 1 << 20];
            for conn in down.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut left = len.load(Ordering::SeqCst);
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    left -= n as u64;
                }
            }
        });
        thread::spawn(move || {
            for conn in close.incoming() {
                drop(conn);
            }
        });
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let keep = held.clone();
        thread::spawn(move || {
            for conn in hold.incoming().flatten() {
                match keep.lock() {
                    Ok(mut v) => v.push(conn),
                    Err(_) => return,
                }
            }
        });
        Ok(Sinks {
            upload_port,
            download_port,
            close_port,
            hold_port,
            uploaded: Mutex::new(uploaded),
            download_len,
            held,
        })
    }

    fn ports(&self) -> [u16; 4] {
        [
            self.upload_port,
            self.download_port,
            self.close_port,
            self.hold_port,
        ]
    }

    fn release_held(&self) {
        if let Ok(mut v) = self.held.lock() {
            v.clear();
        }
    }
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
    type Metric = (&'static str, Box<dyn Fn(&Sample) -> f64>);
    let metrics: Vec<Metric> = vec![
        (
            "guest→host MiB/s",
            Box::new(move |s| mib / s.up.wall),
        ),
        (
            "  peer CPU s/GiB",
            Box::new(move |s| s.up.server_cpu / gib),
        ),
        (
            "  guest CPU %",
            Box::new(|s| 100.0 * s.up.guest_cpu / s.up.wall),
        ),
        (
            "host→guest MiB/s",
            Box::new(move |s| mib / s.down.wall),
        ),
        (
            "  peer CPU s/GiB",
            Box::new(move |s| s.down.server_cpu / gib),
        ),
        (
            "  guest CPU %",
            Box::new(|s| 100.0 * s.down.guest_cpu / s.down.wall),
        ),
        (
            "connections/s",
            Box::new(move |s| sizes.conns as f64 / s.conns.wall),
        ),
        (
            "  peer CPU µs/conn",
            Box::new(move |s| 1e6 * s.conns.server_cpu / sizes.conns as f64),
        ),
        (
            "  guest CPU %",
            Box::new(|s| 100.0 * s.conns.guest_cpu / s.conns.wall),
        ),
        (
            "RSS per open flow KiB",
            Box::new(|s| s.flow_bytes / 1024.0),
        ),
        (
            "g→h, flows open MiB/s",
            Box::new(move |s| mib / s.up_loaded.wall),
        ),
        (
            "  peer CPU s/GiB",
            Box::new(move |s| s.up_loaded.server_cpu / gib),
        ),
    ];
    println!(
        "bench-net: {mib:.0} MiB each way, {} sequential connections, {} idle flows; \
         MTU {MTU}, guest buffers {} KiB; {runs} runs each, medians",
        sizes.conns,
        sizes.flows,
        sizes.guest_buf >> 10
    );
    println!(
        "  {:<24} {:>12} {:>12} {:>14}",
        "", "agentvm-net", "passt", "agentvm/passt"
    );
    for (name, f) in &metrics {
        let a = median(samples[0].iter().map(f).collect());
        let p = median(samples[1].iter().map(f).collect());
        println!("  {name:<24} {a:>12.1} {p:>12.1} {:>13.2}x", a / p);
    }
}

