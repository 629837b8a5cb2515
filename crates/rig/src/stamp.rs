//! Runs one VMM process with a deadline, passes its console through line by
//! line, and measures (monotonic clock) the time to the guest's first init
//! line and to the VMM's exit; once that first line appeared it can run a
//! script beside the VMM (which drives the guest through vsock). The
//! `rig-stamp` binary runs this inside L1; the direct tier calls it
//! in-process, so both tiers print the same markers. [`repeat`] times a
//! command over many runs (the exec benchmark).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One timed run.
#[derive(Debug, Clone)]
pub struct StampSpec {
    /// Section name printed in the begin/end markers.
    pub name: String,
    /// Kill the process (SIGKILL) after this long.
    pub timeout: Duration,
    /// A line containing this marks "first line" (the L2 init's first echo).
    pub first_line: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// A shell script to run (`sh FILE`) once the first line appeared;
    /// its output passes through like the VMM's.
    pub then: Option<PathBuf>,
    /// The guest's RAM in MiB: when given, the VMM's resident memory
    /// outside it is read when the first line appears.
    pub guest_mib: Option<u32>,
}

/// How long a script may go on after the VMM exited.
const SCRIPT_GRACE: Duration = Duration::from_secs(10);
/// How long pipes may stay open after their process ended (a grandchild
/// holding them must not hang the run).
const DRAIN: Duration = Duration::from_secs(2);

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmExit {
    /// It exited with this status code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// The deadline passed and the rig killed it.
    TimedOut,
}

impl VmmExit {
    /// The marker value (`0`, `signal:9`, `timeout`).
    pub fn to_marker(self) -> String {
        match self {
            VmmExit::Code(c) => c.to_string(),
            VmmExit::Signal(s) => format!("signal:{s}"),
            VmmExit::TimedOut => "timeout".into(),
        }
    }

    /// Parses [`VmmExit::to_marker`]'s output.
    pub fn from_marker(s: &str) -> Option<Self> {
        match s {
            "timeout" => Some(VmmExit::TimedOut),
            s => match s.strip_prefix("signal:") {
                Some(n) => n.parse().ok().map(VmmExit::Signal),
                None => s.parse().ok().map(VmmExit::Code),
            },
        }
    }
}

/// What a timed run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StampOutcome {
    /// How the process ended.
    pub exit: VmmExit,
    /// From spawn to the first line containing the pattern.
    pub first_line: Option<Duration>,
    /// From spawn to the process's exit.
    pub exit_after: Duration,
    /// How the script ended, if one ran.
    pub script: Option<VmmExit>,
    /// From spawn to the process's first line of output (the kernel's
    /// banner when the guest boots without `quiet`).
    pub first_output: Option<Duration>,
    /// The VMM's resident memory outside guest RAM when the first line
    /// appeared, KiB ([`StampSpec::guest_mib`]).
    pub vmm_rss_kib: Option<u64>,
    /// The CPU time each of the VMM's threads had used when the first line
    /// appeared: `(name, ms)`, in thread order. Where a VMM spends CPU
    /// beside its vCPUs matters when L1 has one CPU: it is the guest's.
    pub vmm_threads_cpu: Vec<(String, u64)>,
    /// Of guest RAM, KiB resident and KiB of it in huge pages, when the
    /// first line appeared (every first touch of a small page is a fault
    /// the outer hypervisor handles, nested).
    pub guest_ram_kib: Option<(u64, u64)>,
    /// How [`L1_VMSTAT`]'s counters of the machine the VMM runs on moved
    /// from spawn to the first line: `(name, delta)`. Direct compaction
    /// and major faults on the way to the guest's init are time no VMM
    /// chose, and differ from boot to boot.
    pub vmstat_delta: Vec<(String, u64)>,
}

/// The `/proc/vmstat` counters [`StampOutcome::vmstat_delta`] follows.
pub const L1_VMSTAT: [&str; 4] = [
    "compact_stall",
    "thp_fault_alloc",
    "thp_fault_fallback",
    "pgmajfault",
];

/// Which process an event is about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Src {
    Vmm,
    Script,
}

enum Event {
    Line(Src, Instant, Vec<u8>),
    Eof(Src),
    Exited(Src, Instant, io::Result<ExitStatus>),
}

fn reader(src: impl Read, who: Src, tx: mpsc::Sender<Event>) {
    let mut r = BufReader::new(src);
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tx.send(Event::Line(who, Instant::now(), line)).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Event::Eof(who));
}

/// Starts threads that forward `child`'s output and exit to `tx`.
fn watch(mut child: Child, who: Src, tx: &mpsc::Sender<Event>) -> io::Result<()> {
    let out = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let err = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr pipe"))?;
    let (t1, t2, t3) = (tx.clone(), tx.clone(), tx.clone());
    std::thread::spawn(move || reader(out, who, t1));
    std::thread::spawn(move || reader(err, who, t2));
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = t3.send(Event::Exited(who, Instant::now(), status));
    });
    Ok(())
}

fn exit_of(status: &ExitStatus) -> VmmExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => VmmExit::Code(c),
        (None, Some(s)) => VmmExit::Signal(s),
        (None, None) => VmmExit::Code(-1),
    }
}

/// SIGKILL to a process (`pid > 0`) or a process group (`pid < 0`).
fn kill(pid: i32) {
    // SAFETY: kill(2) on a child (or the process group of a child) this
    // module spawned and whose waiter thread has not reported it reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The script beside the VMM, while it runs.
struct Script {
    pgid: i32,
    exited: Option<(Instant, io::Result<ExitStatus>)>,
    eofs: u8,
    killed_at: Option<Instant>,
}

impl Script {
    fn done(&self) -> bool {
        self.exited.is_some() && self.eofs >= 2
    }
}

/// Runs `spec`, writing `RIG-VMM begin=`, every output line (stdout and
/// stderr), the measurements and `RIG-VMM end=` to `sink`.
pub fn stamp(spec: &StampSpec, sink: &mut dyn Write) -> io::Result<StampOutcome> {
    writeln!(sink, "RIG-VMM begin={}", spec.name)?;
    sink.flush()?;
    // Read before the clock starts: not beside the process being timed.
    let vmstat_at_spawn = spec.guest_mib.map(|_| vmstat());
    let start = Instant::now();
    let child = Command::new(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", spec.program.display()),
            )
        })?;
    let pid = child.id() as i32;
    let mut vmstat_delta = Vec::new();
    let (tx, rx) = mpsc::channel();
    watch(child, Src::Vmm, &tx)?;

    let deadline = start + spec.timeout;
    let mut first_line = None;
    let mut first_output = None;
    let mut vmm_rss_kib = None;
    let mut vmm_threads_cpu = Vec::new();
    let mut guest_ram_kib = None;
    let mut exited: Option<(Instant, io::Result<ExitStatus>)> = None;
    let mut eofs = 0;
    let mut killed_at: Option<Instant> = None;
    let mut script: Option<Script> = None;
    loop {
        if exited.is_some() && eofs >= 2 && script.as_ref().is_none_or(Script::done) {
            break;
        }
        let until = match (&exited, &script) {
            (None, _) => match killed_at {
                Some(at) => at + Duration::from_secs(10),
                None => deadline,
            },
            (Some(_), Some(sc)) if sc.exited.is_none() && sc.killed_at.is_none() => exited
                .as_ref()
                .map_or(deadline, |(at, _)| *at + SCRIPT_GRACE),
            (Some((at, _)), sc) => {
                let script_end = sc
                    .as_ref()
                    .and_then(|sc| sc.exited.as_ref().map(|(at, _)| *at).or(sc.killed_at));
                script_end.map_or(*at, |e| e.max(*at)) + DRAIN
            }
        };
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Event::Line(who, at, mut line)) => {
                if who == Src::Vmm && first_output.is_none() {
                    first_output = Some(at - start);
                }
                if who == Src::Vmm
                    && first_line.is_none()
                    && contains(&line, spec.first_line.as_bytes())
                {
                    first_line = Some(at - start);
                    if let Some(mib) = spec.guest_mib {
                        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok();
                        vmm_rss_kib = smaps.as_ref().map(|s| rss_outside_guest_kib(s, mib));
                        guest_ram_kib = smaps.as_ref().map(|s| guest_ram_resident_kib(s, mib));
                        vmm_threads_cpu = threads_cpu_ms(pid);
                        if let Some(before) = &vmstat_at_spawn {
                            vmstat_delta = vmstat_moved(before, &vmstat());
                        }
                    }
                    if let Some(file) = &spec.then {
                        script = start_script(file, &tx, sink)?;
                    }
                }
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                sink.write_all(&line)?;
                sink.flush()?;
            }
            Ok(Event::Eof(Src::Vmm)) => eofs += 1,
            Ok(Event::Eof(Src::Script)) => {
                if let Some(sc) = script.as_mut() {
                    sc.eofs += 1;
                }
            }
            Ok(Event::Exited(Src::Vmm, at, status)) => exited = Some((at, status)),
            Ok(Event::Exited(Src::Script, at, status)) => {
                if let Some(sc) = script.as_mut() {
                    sc.exited = Some((at, status));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if exited.is_none() && killed_at.is_none() => {
                kill(pid);
                if let Some(sc) = script.as_mut().filter(|sc| sc.exited.is_none()) {
                    kill(-sc.pgid);
                    sc.killed_at = Some(Instant::now());
                }
                killed_at = Some(Instant::now());
            }
            Err(mpsc::RecvTimeoutError::Timeout)
                if script
                    .as_ref()
                    .is_some_and(|sc| sc.exited.is_none() && sc.killed_at.is_none()) =>
            {
                if let Some(sc) = script.as_mut() {
                    writeln!(
                        sink,
                        "RIG-VMM script_killed=still running {} s after the VMM exited",
                        SCRIPT_GRACE.as_secs()
                    )?;
                    kill(-sc.pgid);
                    sc.killed_at = Some(Instant::now());
                }
            }
            Err(_) => break,
        }
    }
    let (at, status) =
        exited.ok_or_else(|| io::Error::other("the VMM process did not end after SIGKILL"))?;
    let status = status?;
    let exit = if killed_at.is_some() {
        VmmExit::TimedOut
    } else {
        exit_of(&status)
    };
    let script = script.map(|sc| match sc.exited {
        Some((_, Ok(st))) if sc.killed_at.is_none() => exit_of(&st),
        _ => VmmExit::TimedOut,
    });
    let outcome = StampOutcome {
        exit,
        first_line,
        exit_after: at - start,
        script,
        first_output,
        vmm_rss_kib,
        vmm_threads_cpu,
        guest_ram_kib,
        vmstat_delta,
    };
    write_outcome(sink, &spec.name, &outcome)?;
    Ok(outcome)
}

/// Starts `sh FILE` in its own process group; a failure to start is
/// reported as a marker, not an error (the VMM still runs its course).
fn start_script(
    file: &Path,
    tx: &mpsc::Sender<Event>,
    sink: &mut dyn Write,
) -> io::Result<Option<Script>> {
    let child = Command::new("sh")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    match child {
        Ok(child) => {
            let pgid = child.id() as i32;
            watch(child, Src::Script, tx)?;
            Ok(Some(Script {
                pgid,
                exited: None,
                eofs: 0,
                killed_at: None,
            }))
        }
        Err(e) => {
            writeln!(
                sink,
                "RIG-VMM script_error=cannot run sh {}: {e}",
                file.display()
            )?;
            Ok(None)
        }
    }
}

/// Runs `program args` `runs` times one after the other (stdin and stdout
/// empty), and prints `RIG-EXEC <label>_ms=` with every run's wall time in
/// milliseconds, `<label>_ok=` with the number of runs that exited 0, and
/// `<label>_fail=` with the first failure's status and standard error.
pub fn repeat(
    label: &str,
    runs: usize,
    program: &Path,
    args: &[String],
    sink: &mut dyn Write,
) -> io::Result<usize> {
    let mut times = Vec::with_capacity(runs);
    let mut ok = 0;
    let mut failure = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        times.push(format!("{:.3}", t.elapsed().as_secs_f64() * 1e3));
        match out {
            Ok(o) if o.status.success() => ok += 1,
            Ok(o) => {
                failure.get_or_insert_with(|| {
                    let err = String::from_utf8_lossy(&o.stderr);
                    format!("{}: {}", o.status, err.trim().replace('\n', " | "))
                });
            }
            Err(e) => {
                failure.get_or_insert_with(|| format!("cannot run {}: {e}", program.display()));
            }
        }
    }
    writeln!(sink, "RIG-EXEC {label}_ms={}", times.join(","))?;
    writeln!(sink, "RIG-EXEC {label}_ok={ok}")?;
    if let Some(f) = failure {
        writeln!(sink, "RIG-EXEC {label}_fail={f}")?;
    }
    sink.flush()?;
    Ok(ok)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn write_outcome(sink: &mut dyn Write, name: &str, o: &StampOutcome) -> io::Result<()> {
    writeln!(sink, "RIG-VMM exit={}", o.exit.to_marker())?;
    writeln!(
        sink,
        "RIG-VMM first_line_ms={}",
        o.first_line.map(ms).unwrap_or_else(|| "none".into())
    )?;
    writeln!(sink, "RIG-VMM exit_ms={}", ms(o.exit_after))?;
    if let Some(d) = o.first_output {
        writeln!(sink, "RIG-VMM first_output_ms={}", ms(d))?;
    }
    if let Some(kib) = o.vmm_rss_kib {
        writeln!(sink, "RIG-VMM vmm_rss_kib={kib}")?;
    }
    if let Some((rss, huge)) = o.guest_ram_kib {
        writeln!(sink, "RIG-VMM guest_ram_kib={rss} huge={huge}")?;
    }
    if !o.vmm_threads_cpu.is_empty() {
        let threads: Vec<String> = o
            .vmm_threads_cpu
            .iter()
            .map(|(name, ms)| format!("{}:{ms}", name.replace([' ', ',', ':'], "_")))
            .collect();
        writeln!(sink, "RIG-VMM threads_cpu_ms={}", threads.join(","))?;
    }
    if !o.vmstat_delta.is_empty() {
        let moved: Vec<String> = o
            .vmstat_delta
            .iter()
            .map(|(name, n)| format!("{name}:{n}"))
            .collect();
        writeln!(sink, "RIG-VMM l1_vmstat={}", moved.join(","))?;
    }
    if let Some(s) = o.script {
        writeln!(sink, "RIG-VMM script_exit={}", s.to_marker())?;
    }
    writeln!(sink, "RIG-VMM end={name}")?;
    sink.flush()
}

/// Each `Key: N kB` field of `smaps` with whether its mapping is guest RAM:
/// at least half of `guest_mib` (one mapping, or two around the 32-bit
/// hole, each VMM maps it whole; the part below the hole may be smaller
/// than the whole). Lines that are neither are skipped.
fn smaps_fields(smaps: &str, guest_mib: u32) -> impl Iterator<Item = (bool, &str, u64)> {
    let guest = u64::from(guest_mib) << 20;
    let mut in_guest = false;
    smaps.lines().filter_map(move |line| {
        let head = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
        let range = head.and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        });
        if let Some((a, b)) = range {
            in_guest = b.saturating_sub(a) >= guest / 2;
            return None;
        }
        let (key, value) = line.split_once(':')?;
        let kib = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some((in_guest, key, kib))
    })
}

/// The resident KiB of every mapping in `smaps` but guest RAM.
pub fn rss_outside_guest_kib(smaps: &str, guest_mib: u32) -> u64 {
    smaps_fields(smaps, guest_mib)
        .filter(|&(guest, key, _)| !guest && key == "Rss")
        .map(|(_, _, kib)| kib)
        .sum()
}

/// Of guest RAM in `smaps`: KiB resident, and KiB of it mapped by huge
/// pages (`AnonHugePages`, `ShmemPmdMapped`, `FilePmdMapped`).
pub fn guest_ram_resident_kib(smaps: &str, guest_mib: u32) -> (u64, u64) {
    const HUGE: [&str; 3] = ["AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"];
    smaps_fields(smaps, guest_mib)
        .filter(|&(guest, _, _)| guest)
        .fold((0, 0), |(rss, huge), (_, key, kib)| match key {
            "Rss" => (rss + kib, huge),
            k if HUGE.contains(&k) => (rss, huge + kib),
            _ => (rss, huge),
        })
}

/// This machine's [`L1_VMSTAT`] counters (those it lacks are left out).
fn vmstat() -> Vec<(String, u64)> {
    parse_vmstat(&std::fs::read_to_string("/proc/vmstat").unwrap_or_default())
}

/// [`L1_VMSTAT`]'s counters in `/proc/vmstat` text, in that order.
fn parse_vmstat(text: &str) -> Vec<(String, u64)> {
    L1_VMSTAT
        .iter()
        .filter_map(|&want| {
            text.lines().find_map(|line| {
                let (name, value) = line.split_once(' ')?;
                if name != want {
                    return None;
                }
                Some((want.to_string(), value.trim().parse().ok()?))
            })
        })
        .collect()
}

/// How each counter of `before` moved in `after` (counters only grow; a
/// counter missing from either is left out).
fn vmstat_moved(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    before
        .iter()
        .filter_map(|(name, b)| {
            let (_, a) = after.iter().find(|(n, _)| n == name)?;
            Some((name.clone(), a.saturating_sub(*b)))
        })
        .collect()
}

/// Each thread of process `pid`: its name and the CPU it has used (user
/// and system), ms; empty when /proc cannot tell.
fn threads_cpu_ms(pid: i32) -> Vec<(String, u64)> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as u64,
        _ => 100,
    };
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u64> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids.into_iter()
        .filter_map(|tid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            let (name, ticks_used) = thread_cpu_ticks(&stat)?;
            Some((name, ticks_used * 1000 / ticks))
        })
        .collect()
}

/// A thread's name and its user + system clock ticks, from its
/// `/proc/PID/task/TID/stat` line: `tid (comm) state … utime stime …`,
/// where comm may hold spaces and parentheses.
fn thread_cpu_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state (0), … utime (11), stime (12).
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str, timeout: Duration) -> (StampOutcome, String) {
        let spec = StampSpec {
            name: name.into(),
            timeout,
            first_line: "RIG-L2 init=start".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            then: None,
            guest_mib: None,
        };
        let mut out = Vec::new();
        let o = stamp(&spec, &mut out).unwrap();
        (o, String::from_utf8(out).unwrap())
    }

    #[test]
    fn vmstat_counters_are_read_in_order_and_their_moves_taken() {
        let text = "nr_free_pages 100\npgmajfault 7\nthp_fault_alloc 12\n\
                    compact_stall 3\ncompact_stall_extra 99\nthp_fault_fallback x\n";
        let before = parse_vmstat(text);
        assert_eq!(
            before,
            [
                ("compact_stall".to_string(), 3),
                ("thp_fault_alloc".to_string(), 12),
                ("pgmajfault".to_string(), 7),
            ]
        );
        let after = parse_vmstat("compact_stall 5\nthp_fault_alloc 20\n");
        assert_eq!(
            vmstat_moved(&before, &after),
            [
                ("compact_stall".to_string(), 2),
                ("thp_fault_alloc".to_string(), 8),
            ]
        );
        // This machine has the counters (every Linux since 5.x).
        assert!(vmstat().iter().any(|(n, _)| n == "pgmajfault"));
    }

    #[test]
    fn thread_cpu_comes_from_the_stat_line() {
        let stat = "4242 (fc_vcpu 0) S 1 2 3 0 -1 4194560 10 0 0 0 250 40 0 0 20 0 1 0";
        assert_eq!(thread_cpu_ticks(stat), Some(("fc_vcpu 0".into(), 290)));
        let odd = "7 (a) b)) R 1 2 3 0 -1 0 0 0 0 0 5 6 0 0";
        assert_eq!(thread_cpu_ticks(odd), Some(("a) b)".into(), 11)));
        assert_eq!(thread_cpu_ticks("7 (x) R 1 2"), None);
        assert_eq!(thread_cpu_ticks("garbage"), None);
        // This process has a thread that has used some CPU.
        let me = threads_cpu_ms(std::process::id() as i32);
        assert!(!me.is_empty());
    }

    #[test]
    fn rss_outside_guest_ram_leaves_out_the_guest_mappings() {
        let smaps = "00400000-00600000 r-xp 00000000 08:01 1 /bin/vmm\n\
                     Size:               2048 kB\n\
                     Rss:                1500 kB\n\
                     7f0000000000-7f0010000000 rw-s 00000000 00:01 2 /memfd:ram\n\
                     Rss:              120000 kB\n\
                     7f0010000000-7f0010100000 rw-p 00000000 00:00 0\n\
                     Rss:                 800 kB\n\
                     garbage line\n\
                     Rss: notanumber kB\n";
        // 256 MiB of guest RAM: the 256 MiB mapping is left out.
        assert_eq!(rss_outside_guest_kib(smaps, 256), 2300);
        // A guest larger than every mapping leaves nothing out.
        assert_eq!(rss_outside_guest_kib(smaps, 4096), 122_300);
        let huge = "7f0000000000-7f0010000000 rw-p 00000000 00:00 0\n\
                    Rss:              120000 kB\n\
                    AnonHugePages:    102400 kB\n\
                    ShmemPmdMapped:        0 kB\n\
                    7f0010000000-7f0010100000 rw-p 00000000 00:00 0\n\
                    Rss:                 800 kB\n\
                    AnonHugePages:       512 kB\n";
        assert_eq!(guest_ram_resident_kib(huge, 256), (120_000, 102_400));
        assert_eq!(guest_ram_resident_kib(huge, 8192), (0, 0));
    }

    #[test]
    fn passes_output_and_measures() {
        let (o, text) = sh(
            "ok",
            "echo before; sleep 0.2; echo 'RIG-L2 init=start'; echo oops >&2; sleep 0.1; exit 3",
            Duration::from_secs(10),
        );
        assert_eq!(o.exit, VmmExit::Code(3));
        let first = o.first_line.unwrap();
        assert!(first >= Duration::from_millis(150), "{first:?}");
        assert!(o.exit_after >= first);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "RIG-VMM begin=ok");
        assert!(
            lines.contains(&"before")
                && lines.contains(&"oops")
                && lines.contains(&"RIG-L2 init=start")
        );
        assert_eq!(lines[lines.len() - 5], "RIG-VMM exit=3");
        assert!(lines[lines.len() - 4].starts_with("RIG-VMM first_line_ms="));
        assert!(lines[lines.len() - 3].starts_with("RIG-VMM exit_ms="));
        // "before" came first, well before the init's line.
        assert!(lines[lines.len() - 2].starts_with("RIG-VMM first_output_ms="));
        assert!(o.first_output.unwrap() < first);
        assert_eq!(lines[lines.len() - 1], "RIG-VMM end=ok");
    }

    #[test]
    fn kills_on_timeout() {
        let t = Instant::now();
        let (o, text) = sh(
            "hang",
            "echo hanging; exec sleep 30",
            Duration::from_millis(300),
        );
        assert_eq!(o.exit, VmmExit::TimedOut);
        assert_eq!(o.first_line, None);
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(text.contains("RIG-VMM exit=timeout"));
        assert!(text.contains("RIG-VMM first_line_ms=none"));
    }

    /// The script starts after the first line, talks to the "VMM" (here
    /// through a file), and both ends are reported.
    #[test]
    fn runs_the_script_once_the_guest_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        let script = dir.path().join("s.sh");
        std::fs::write(
            &script,
            format!(
                "echo 'RIG-EXEC seen=1'; echo err >&2; touch {}; exit 4\n",
                flag.display()
            ),
        )
        .unwrap();
        let spec = StampSpec {
            name: "agent".into(),
            timeout: Duration::from_secs(20),
            first_line: "agentvm-guest: ready".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "sleep 0.1; echo 'agentvm-guest: ready'; while [ ! -e {} ]; do sleep 0.05; done; echo bye",
                    flag.display()
                ),
            ],
            then: Some(script),
            guest_mib: None,
        };
        let mut out = Vec::new();
        let o = stamp(&spec, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(o.exit, VmmExit::Code(0), "{text}");
        assert_eq!(o.script, Some(VmmExit::Code(4)), "{text}");
        assert!(o.first_line.unwrap() >= Duration::from_millis(80));
        let lines: Vec<&str> = text.lines().collect();
        let pos = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l}: {text}"))
        };
        assert!(pos("agentvm-guest: ready") < pos("RIG-EXEC seen=1"));
        assert!(pos("RIG-EXEC seen=1") < pos("bye"));
        assert!(lines.contains(&"err"));
        assert!(lines.contains(&"RIG-VMM script_exit=4"));
        assert_eq!(lines[lines.len() - 1], "RIG-VMM end=agent");
    }

    /// A VMM that hangs is killed at its deadline, its script with it.
    #[test]
    fn timeout_kills_the_script_too() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(&script, "echo started; sleep 30; echo never\n").unwrap();
        let spec = StampSpec {
            name: "hang".into(),
            timeout: Duration::from_millis(800),
            first_line: "up".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo up; exec sleep 30".into()],
            then: Some(script),
            guest_mib: None,
        };
        let t = Instant::now();
        let mut out = Vec::new();
        let o = stamp(&spec, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{text}");
        assert_eq!(o.exit, VmmExit::TimedOut);
        assert_eq!(o.script, Some(VmmExit::TimedOut));
        assert!(
            text.contains("started") && !text.contains("never"),
            "{text}"
        );

        // A script that finished before the deadline keeps its own status.
        let quick = dir.path().join("q.sh");
        std::fs::write(&quick, "exit 3\n").unwrap();
        let spec = StampSpec {
            then: Some(quick),
            ..spec
        };
        let o = stamp(&spec, &mut Vec::new()).unwrap();
        assert_eq!(o.exit, VmmExit::TimedOut);
        assert_eq!(o.script, Some(VmmExit::Code(3)));
    }

    #[test]
    fn repeat_times_every_run() {
        let mut out = Vec::new();
        let ok = repeat(
            "t",
            3,
            Path::new("/bin/sh"),
            &["-c".into(), "sleep 0.01".into()],
            &mut out,
        )
        .unwrap();
        assert_eq!(ok, 3);
        let text = String::from_utf8(out).unwrap();
        let ms = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("RIG-EXEC t_ms=")
            .unwrap();
        let v: Vec<f64> = ms.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|&x| x >= 10.0), "{v:?}");
        assert!(text.contains("RIG-EXEC t_ok=3\n") && !text.contains("t_fail"));

        let mut out = Vec::new();
        let args = ["-c".to_string(), "echo nope >&2; exit 2".to_string()];
        let ok = repeat("f", 2, Path::new("/bin/sh"), &args, &mut out).unwrap();
        assert_eq!(ok, 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("RIG-EXEC f_ok=0\n"));
        assert!(
            text.contains("RIG-EXEC f_fail=exit status: 2: nope"),
            "{text}"
        );
    }

    #[test]
    fn exit_markers_round_trip() {
        for e in [
            VmmExit::Code(0),
            VmmExit::Code(2),
            VmmExit::Signal(9),
            VmmExit::TimedOut,
        ] {
            assert_eq!(VmmExit::from_marker(&e.to_marker()), Some(e));
        }
        assert_eq!(VmmExit::from_marker("x"), None);
    }
}
