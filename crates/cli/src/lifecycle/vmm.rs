//! `agentvm __vmm --state DIR`: the background VMM process `up` starts.
//! It builds the VM from `DIR/config.json`, writes the console to
//! `DIR/console.log`, records network decisions in `DIR/net-audit.jsonl`
//! (both capped, the previous file kept as `.1`), relays the guest's
//! ssh-agent connections to the host's agent when the snapshot says so
//! ([`crate::ssh_agent`]),
//! serves `DIR/control.sock`, and removes its sockets and pid file when the
//! VM ends.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentvm_devices::virtio::vsock::VsockCounters;
use agentvm_net::rotating::RotatingFile;
use agentvm_protocol::client::{self, connect_vsock_within};
use agentvm_protocol::EXEC_PORT;
use agentvm_vmm::config::{
    BalloonConfig, Landlock, SerialSink, ShareConfig, StackConfig, VmConfig, VsockConfig,
};
use agentvm_vmm::seccomp::{self, ThreadKind};
use agentvm_vmm::{ExitStatus, SeccompLevel, VmHandle};
use anyhow::Context;
use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use super::control::{self, Handler, Reply, Request};
use super::huge_ram;
use super::net::NetControl;
use super::timings;
use super::StateDir;
use crate::ssh_agent;

/// The line the guest agent prints on the console once it serves.
pub const READY_LINE: &[u8] = b"agentvm-guest: ready";
/// How long `stop` waits for the agent to take a power-off request.
const AGENT_HANDSHAKE: Duration = Duration::from_secs(1);
/// How long the guest gets to power off when the request names no time.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Arguments of `agentvm __vmm`.
#[derive(Args, Debug)]
pub struct VmmArgs {
    /// The VM's state directory.
    #[arg(long)]
    state: PathBuf,
}

/// Runs the VM until it ends; the exit code says whether it ended cleanly.
pub fn run(args: VmmArgs) -> anyhow::Result<ExitCode> {
    let started_us = timings::now_us();
    crate::boot::harden_vmm_process()?;
    // Every thread started from here on (the VM's) inherits this mask:
    // only the signal thread takes termination signals, so signal-hook's
    // handler never runs on a thread whose filter lacks what it does.
    let termination = termination_signals();
    termination
        .thread_block()
        .context("cannot block termination signals")?;
    // First, before any thread exists: the secrets `up` hands over on our
    // stdin (nothing when it is /dev/null).
    let handoff = crate::secrets::handoff::Handoff::receive(std::io::stdin().lock())?;
    let state = StateDir { dir: args.state };
    // The configuration it boots is read from here: only from a directory
    // of ours that nobody else can write.
    super::check_private(&state.dir)?;
    let snap = state.read_snapshot()?;
    // While this process has one thread: virtiofsd maps guest RAM, so it
    // is a shared file; one that gets huge pages if this host allows.
    let wants_shared = !snap.mounts.is_empty()
        || snap.root_image.is_some()
        || snap.persistent_root.is_some()
        || snap.hotplug_slots > 0;
    let ram_file = wants_shared
        .then(|| {
            huge_ram::create(snap.memory_mib.saturating_mul(1 << 20))
                .inspect_err(|e| tracing::debug!("guest RAM in a memfd: no huge-page tmpfs: {e}"))
                .ok()
        })
        .flatten();
    let log_max = snap.log_max_bytes();
    let console = RotatingFile::open(&state.console(), log_max)
        .with_context(|| format!("cannot open {}", state.console().display()))?;
    let ready = Arc::new(AtomicBool::new(false));
    let ready_us = Arc::new(AtomicU64::new(0));
    let watch = ReadyWatch {
        out: console,
        ready: ready.clone(),
        ready_us: ready_us.clone(),
        tail: Vec::new(),
    };
    let (console, console_written) = ConsoleThread::start(watch, snap.seccomp)?;
    let mut config = VmConfig::new(&snap.kernel);
    config.initrd.clone_from(&snap.initrd);
    config.cmdline.clone_from(&snap.cmdline);
    if let Some(user) = &snap.user {
        config.cmdline.push_str(&format!(" agentvm.user={user}"));
    }
    config.memory_mib = snap.memory_mib;
    config.vcpus = snap.vcpus;
    config.seccomp = snap.seccomp;
    config.serial = SerialSink::Writer(Box::new(console));
    config.state_dir = Some(state.dir.clone());
    config.shares = snap
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| ShareConfig {
            read_only: m.read_only,
            target: Some(m.target.clone()),
            ..ShareConfig::new(&m.source, format!("agentvm{i}"))
        })
        .chain(
            snap.root_image
                .iter()
                .cloned()
                .map(crate::share::root_image),
        )
        .chain(
            snap.persistent_root
                .iter()
                .cloned()
                .map(crate::share::root_upper),
        )
        .collect();
    config.virtiofsd.allow_unsandboxed = snap.allow_unsandboxed_virtiofsd;
    config.hotplug_slots = snap.hotplug_slots;
    config.shared_memory_file = ram_file;
    let vsock = state.vsock();
    let vsock_config = VsockConfig::new(&vsock);
    let vsock_counters = vsock_config.counters.clone();
    config.vsock = Some(vsock_config);
    config.rng = true;
    config.balloon = Some(BalloonConfig::default());
    if snap.policy.mode != agentvm_net::Mode::Off {
        let path = state.net_audit();
        let audit = agentvm_net::Audit::to_file_capped(&path, log_max)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let intercept = handoff
            .map(crate::secrets::handoff::Handoff::intercept_config)
            .transpose()?;
        if let Some(intercept) = &intercept {
            eprintln!("agentvm: {}", crate::secrets::intercept_line(intercept));
        }
        config.net = Some(StackConfig {
            policy: snap.policy.clone(),
            audit,
            memory_budget: snap.net_memory_bytes(),
            intercept,
            ..StackConfig::default()
        });
    }
    // Bound before the build, started after it (under its Landlock rules).
    let ssh_relay = match &snap.ssh_agent {
        Some(forward) => {
            config
                .cmdline
                .push_str(&format!(" agentvm.ssh_agent={}", ssh_agent::SSH_AGENT_PORT));
            let listen = ssh_agent::socket_path(&vsock);
            let relay = ssh_agent::Relay::bind(&listen, forward.socket.clone(), forward.policy()?)
                .with_context(|| format!("cannot listen on {}", listen.display()))?;
            Some(relay)
        }
        None => None,
    };
    config.landlock = Landlock::FromConfig;
    let build_us = timings::now_us();
    let vm = crate::build::build_vm(config)?;
    let setup = vm.setup_times();
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let boot = timings::VmmStamps {
        started_us,
        build_us,
        devices_us: micros(setup.devices),
        memory_us: micros(setup.memory),
        boot_image_us: micros(setup.boot_image),
        vcpus_us: micros(setup.vcpus),
        running_us: 0,
        ready_us: 0,
    };
    let level = snap.seccomp;
    if let Some(relay) = ssh_relay {
        relay
            .start(level)
            .context("cannot start the ssh-agent relay")?;
    }
    let control_path = state.control();
    let _ = std::fs::remove_file(&control_path);
    let listener = agentvm_devices::socket::bind_owner_only(&control_path)
        .with_context(|| format!("cannot listen on {}", control_path.display()))?;
    let server = Arc::new(Server {
        handle: vm.handle(),
        ready,
        vsock: vsock.clone(),
        net: NetControl::new(vm.handle().net().cloned()),
        started: Instant::now(),
        vsock_counters,
        boot: timings::VmmStamps {
            running_us: timings::now_us(),
            ..boot
        },
        ready_us,
    });
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            // Connection and stop threads start from here and keep this
            // filter: the control list covers theirs.
            if let Err(e) = seccomp::install(level, ThreadKind::Control) {
                eprintln!("agentvm: {e}; the control socket is closed");
                return;
            }
            for conn in listener.incoming().flatten() {
                let server = server.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || control::serve_connection(conn, &*server));
            }
        })
        .context("cannot start the control thread")?;
    stop_on_signals(vm.handle(), level, termination)?;
    let status = vm.start().map(|running| {
        agentvm_vmm::footprint::release_startup_code();
        match seccomp::install(level, ThreadKind::Supervisor) {
            Ok(()) => running.wait(),
            Err(e) => {
                eprintln!("agentvm: {e}; stopping the VM");
                running.handle().stop();
                running.wait()
            }
        }
    });
    // The guest's last words (a panic, say) reach the log before we exit.
    console_written.wait(CONSOLE_DRAIN);
    for f in [
        control_path,
        ssh_agent::socket_path(&vsock),
        vsock,
        state.pid_file(),
    ] {
        let _ = std::fs::remove_file(f);
    }
    match status {
        Ok(status) => {
            eprintln!("agentvm: the VM ended: {status:?}");
            Ok(ExitCode::from(exit_code(&status)))
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot run the VM")),
    }
}

/// The VMM process's exit code for how its VM ended: 1 when the guest or
/// a vCPU failed, else 0 — the guest's own power-off, reset or halt, and a
/// stop (`down`, a signal), all succeed, as for `agentvm boot`
/// ([`crate::boot`]).
fn exit_code(status: &ExitStatus) -> u8 {
    u8::from(status.is_failure())
}

/// SIGTERM, SIGINT and SIGHUP.
fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

/// Stops the VM (so the VMM cleans up after itself) on SIGTERM, SIGINT
/// or SIGHUP (`termination`), which only the signal thread takes.
fn stop_on_signals(
    handle: VmHandle,
    level: SeccompLevel,
    termination: SigSet,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot handle signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(level, ThreadKind::Signals) {
                eprintln!("agentvm: {e}; stopping the VM");
                handle.stop();
                return;
            }
            if let Err(e) = termination.thread_unblock() {
                eprintln!("agentvm: cannot take termination signals ({e}); stopping the VM");
                handle.stop();
                return;
            }
            if let Some(signal) = signals.forever().next() {
                eprintln!("agentvm: signal {signal}: stopping the VM");
                handle.stop();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// The vCPUs' end of the console: bytes go to a thread of their own that
/// writes (and rotates) the log, so the vCPU filter needs no file system
/// calls. The queue is bounded: a guest printing faster than the disk takes
/// it waits at its serial port.
struct ConsoleThread {
    to: std::sync::mpsc::SyncSender<Vec<u8>>,
}

/// Console writes queued for the log thread, at most.
const CONSOLE_QUEUE: usize = 256;
/// How long the VMM waits, once the VM ended, for the console thread to
/// write what is queued.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);

/// Says when the console thread has written everything and ended.
struct ConsoleWritten(std::sync::mpsc::Receiver<()>);

impl ConsoleWritten {
    /// Waits up to `timeout` for the console thread to end (it ends once
    /// the VM's serial port, and with it the sending end, is gone).
    fn wait(self, timeout: Duration) {
        let _ = self.0.recv_timeout(timeout);
    }
}

impl ConsoleThread {
    fn start(
        mut watch: ReadyWatch,
        level: seccomp::SeccompLevel,
    ) -> anyhow::Result<(Self, ConsoleWritten)> {
        let (to, from) = std::sync::mpsc::sync_channel::<Vec<u8>>(CONSOLE_QUEUE);
        let (ended, written) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends.
                let _ended = ended;
                if let Err(e) = seccomp::install(level, ThreadKind::ConsoleLog) {
                    eprintln!("agentvm: {e}; the console is not logged");
                    return;
                }
                for bytes in from {
                    if let Err(e) = watch.write_all(&bytes) {
                        eprintln!("agentvm: cannot write the console log: {e}");
                        return;
                    }
                }
            })
            .context("cannot start the console thread")?;
        Ok((ConsoleThread { to }, ConsoleWritten(written)))
    }
}

impl Write for ConsoleThread {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.to
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the console to its file and notes when the ready line passes.
struct ReadyWatch {
    out: RotatingFile,
    ready: Arc<AtomicBool>,
    /// When it passed, host monotonic microseconds.
    ready_us: Arc<AtomicU64>,
    /// The last bytes seen, so a line split across writes still matches.
    tail: Vec<u8>,
}

impl Write for ReadyWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        if !self.ready.load(Ordering::Relaxed) {
            self.tail.extend_from_slice(&buf[..n]);
            if self.tail.windows(READY_LINE.len()).any(|w| w == READY_LINE) {
                self.ready_us.store(timings::now_us(), Ordering::Relaxed);
                self.ready.store(true, Ordering::Relaxed);
                self.tail = Vec::new();
            } else {
                let keep = self.tail.len().saturating_sub(READY_LINE.len());
                self.tail.drain(..keep);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Answers control requests for one VM.
struct Server {
    handle: VmHandle,
    ready: Arc<AtomicBool>,
    vsock: PathBuf,
    net: NetControl,
    started: Instant,
    vsock_counters: VsockCounters,
    /// The start's steps; `running_us` is the server's start, the vCPUs'
    /// less than a millisecond later.
    boot: timings::VmmStamps,
    /// When the ready line passed (0: not yet).
    ready_us: Arc<AtomicU64>,
}

impl Handler for Server {
    fn handle(&self, request: Request) -> Result<Reply, String> {
        match request {
            Request::Status => {
                let stats = self.handle.stats();
                Ok(Reply::Status(control::StatusReply {
                    uptime_ms: millis(self.started.elapsed()),
                    memory_mib: stats.memory_bytes >> 20,
                    rss_kib: rss_kib(std::process::id()),
                    vcpus: stats.vcpus,
                    pid: std::process::id(),
                    network_mode: self.net.mode(),
                    ready: self.ready.load(Ordering::Relaxed),
                    limits: limits(self.handle.net().map(|n| n.stats()), &self.vsock_counters),
                    boot: Some(timings::VmmStamps {
                        ready_us: self.ready_us.load(Ordering::Relaxed),
                        ..self.boot
                    }),
                }))
            }
            Request::Stop { grace_ms } => {
                let grace = grace_ms.map_or(DEFAULT_GRACE, Duration::from_millis);
                let (handle, vsock) = (self.handle.clone(), self.vsock.clone());
                let ready = self.ready.load(Ordering::Relaxed);
                std::thread::Builder::new()
                    .name("stop".into())
                    .spawn(move || stop(&handle, &vsock, ready, grace))
                    .map_err(|e| format!("cannot start stopping: {e}"))?;
                Ok(Reply::Stop)
            }
            Request::Stats => {
                let s = self.handle.stats();
                let balloon = match self.handle.balloon_report(Duration::from_millis(500)) {
                    Ok(r) => control::BalloonStatus::Report(control::BalloonStats {
                        target_pages: r.target_pages,
                        actual_pages: r.actual_pages,
                        held_pages: r.counters.held_pages,
                        reported_bytes: r.counters.reported_bytes,
                        guest_stats: format!("{:?}", r.stats.stats),
                    }),
                    Err(e) => control::BalloonStatus::Unavailable(e.to_string()),
                };
                Ok(Reply::Stats(control::StatsReply {
                    uptime_ms: millis(s.uptime),
                    memory_mib: s.memory_bytes >> 20,
                    rss_kib: rss_kib(std::process::id()),
                    vcpus: s.vcpus,
                    pio_exits: s.pio_exits,
                    mmio_exits: s.mmio_exits,
                    balloon,
                }))
            }
            Request::Balloon { target_mib } => self
                .handle
                .set_balloon_target_mib(target_mib)
                .map(|()| Reply::Balloon { target_mib })
                .map_err(|e| e.to_string()),
            Request::Reclaim => super::reclaim::reclaim(&self.vsock)
                .map(|()| Reply::Reclaim)
                .map_err(|e| format!("{e:#}")),
            Request::Net
            | Request::NetAllow { .. }
            | Request::NetDeny { .. }
            | Request::NetPolicy { .. } => self.net.answer(&request),
            Request::AttachFs { tag, pid } => self
                .handle
                .attach_fs(&tag, pid)
                .map(|a| Reply::AttachFs(slot_reply(a)))
                .map_err(|e| format!("{:#}", anyhow::Error::new(e))),
            Request::DetachFs { tag } => self
                .handle
                .detach_fs(&tag)
                .map(|a| Reply::DetachFs(slot_reply(a)))
                .map_err(|e| format!("{:#}", anyhow::Error::new(e))),
        }
    }
}

fn slot_reply(a: agentvm_vmm::AttachedFs) -> control::SlotReply {
    control::SlotReply {
        slot: a.slot,
        base: a.base,
        tag: a.tag,
    }
}

/// The VM's caps and how often each was hit (`status` shows them).
fn limits(net: Option<agentvm_net::StackStats>, vsock: &VsockCounters) -> control::Limits {
    let count = |n: usize| n as u64;
    control::Limits {
        vsock_refused: vsock.refused(),
        vsock_connections_max: count(agentvm_devices::virtio::vsock::MAX_CONNECTIONS),
        net: net.map(|n| control::NetLimits {
            net_memory_used_kib: count(n.memory_used >> 10),
            net_memory_peak_kib: count(n.memory_peak >> 10),
            net_memory_limit_kib: count(n.memory_limit >> 10),
            tcp_flows: count(n.tcp_flows),
            tcp_flows_max: count(agentvm_net::MAX_TCP_FLOWS),
            tcp_refused_cap: n.tcp_refused_cap,
            tcp_refused_memory: n.tcp_refused_memory,
            udp_flows: count(n.udp_flows),
            udp_evicted: n.udp_evicted,
            dns_busy: n.dns_busy,
        }),
    }
}

/// `d` in whole milliseconds (saturating).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Asks the guest agent to power off, gives it `grace`, then stops the VM.
fn stop(handle: &VmHandle, vsock: &std::path::Path, ready: bool, grace: Duration) {
    // A guest that never printed the ready line has no agent to ask.
    let asked = ready
        && connect_vsock_within(vsock, EXEC_PORT, Some(AGENT_HANDSHAKE))
            .ok()
            .is_some_and(|s| client::poweroff(s).is_ok());
    if asked && handle.wait_timeout(grace).is_some() {
        return;
    }
    handle.stop();
}

/// The resident memory of process `pid`, KiB (0 when unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_guest_or_vcpu_makes_the_vmm_fail() {
        for ok in [
            ExitStatus::PowerOff,
            ExitStatus::Reset,
            ExitStatus::Halted,
            ExitStatus::Stopped,
        ] {
            assert_eq!(exit_code(&ok), 0, "{ok:?}");
        }
        for failed in [ExitStatus::TripleFault, ExitStatus::Crashed("x".into())] {
            assert_eq!(exit_code(&failed), 1, "{failed:?}");
        }
    }

    #[test]
    fn the_ready_line_is_seen_even_split_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let ready = Arc::new(AtomicBool::new(false));
        let ready_us = Arc::new(AtomicU64::new(0));
        let mut w = ReadyWatch {
            out: RotatingFile::open(&path, 1 << 20).unwrap(),
            ready: ready.clone(),
            ready_us: ready_us.clone(),
            tail: Vec::new(),
        };
        for chunk in ["booting\nagentvm-gu", "est", ": rea"] {
            w.write_all(chunk.as_bytes()).unwrap();
            assert!(!ready.load(Ordering::Relaxed));
            assert_eq!(ready_us.load(Ordering::Relaxed), 0);
        }
        let before = timings::now_us();
        w.write_all(b"dy\nmore\n").unwrap();
        assert!(ready.load(Ordering::Relaxed));
        let at = ready_us.load(Ordering::Relaxed);
        assert!(at >= before && at <= timings::now_us(), "{at}");
        assert!(w.tail.len() < READY_LINE.len());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "booting\nagentvm-guest: ready\nmore\n"
        );
    }
}
