//! Running scenarios: choosing the tier, building what it needs, running L1
//! under QEMU TCG (or the boots straight on the host), and turning the log
//! into a [`ScenarioResult`].

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use agentvm_image::{Cache, CacheLock, GuestImage, ImageError, Progress};

use crate::binaries::{self, StaticBinaries};
use crate::image::{L1Contents, L1Image, L2Extras, L2Image, SshPeer, Tmux};
use crate::scenario::{parse_log, BootPaths, Scenario, ScenarioResult, Tier};
use crate::stamp::{stamp, StampSpec};

/// Environment variable forcing a tier: `direct` or `nested`.
pub const TIER_ENV: &str = "AGENTVM_RIG_TIER";
/// Environment variable that turns "cannot run the rig here" from a skip
/// into a failure (also on when `CI` is set).
pub const REQUIRE_ENV: &str = "AGENTVM_RIG_REQUIRE";

/// The L1 guest's memory: its initramfs lives in RAM next to the L2 guest.
pub const L1_MEMORY_MIB: u32 = 3072;
/// Time allowed for L1 to boot, on top of the boots' own timeouts.
const L1_BOOT_ALLOWANCE: Duration = Duration::from_secs(600);
/// How long L1 may print nothing beyond its longest boot's timeout (its
/// own boot, a setup script, rig-stamp's report after a timeout) before
/// it counts as wedged.
const L1_SILENCE_ALLOWANCE: Duration = Duration::from_secs(300);

/// Whether `line` is a kernel's report that a CPU is stuck: output that
/// shows no progress. A wedged L1 (both CPUs stuck in KVM under the
/// nested SVM, seen in `bench-nested`) prints one every half minute or so
/// and nothing else.
fn is_lockup_report(line: &[u8]) -> bool {
    const REPORT: &[u8] = b"watchdog: BUG: soft lockup";
    line.windows(REPORT.len()).any(|w| w == REPORT)
}

/// When a nested run is over its time: the whole run's limit, or a
/// silence longer than `silence` since L1's last output.
#[derive(Debug)]
struct Deadline {
    started: Instant,
    total: Duration,
    silence: Duration,
    /// Milliseconds from `started` to L1's last output.
    last_output_ms: AtomicU64,
}

/// Why a nested run was stopped.
#[derive(Debug, PartialEq, Eq)]
enum Overdue {
    /// Over the whole run's limit.
    Total,
    /// Silent for this long.
    Silent(Duration),
}

impl Deadline {
    fn new(started: Instant, total: Duration, silence: Duration) -> Self {
        Deadline {
            started,
            total,
            silence,
            last_output_ms: AtomicU64::new(0),
        }
    }

    /// L1 printed something at `now`.
    fn output(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.started).as_millis())
            .unwrap_or(u64::MAX);
        self.last_output_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether the run is overdue at `now`.
    fn overdue(&self, now: Instant) -> Option<Overdue> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed > self.total {
            return Some(Overdue::Total);
        }
        let last = Duration::from_millis(self.last_output_ms.load(Ordering::Relaxed));
        let quiet = elapsed.saturating_sub(last);
        (quiet > self.silence).then_some(Overdue::Silent(quiet))
    }
}

/// Why a scenario could not be run, or failed.
#[derive(Debug, Error)]
pub enum RunError {
    /// This host can run neither tier (the reason says what is missing).
    #[error("Cannot run the rig here: {0}")]
    Unavailable(String),
    /// A boot's setup lines failed (direct tier).
    #[error("The setup of boot {0} failed: {1}")]
    Setup(String, String),
    /// An image or binary could not be built.
    #[error("Cannot build the rig's images")]
    Image(#[from] ImageError),
    /// Writing the run directory or the log failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU (L1) did not finish in time.
    #[error("Scenario {name} timed out after {secs} s; full log: {}", log.display())]
    Timeout {
        /// Scenario.
        name: String,
        /// The limit.
        secs: u64,
        /// The kept log.
        log: PathBuf,
    },
    /// L1 printed nothing (or only reports of stuck CPUs) for longer than
    /// any of its boots may stay silent: it is wedged, and was stopped.
    #[error(
        "Scenario {name}: L1 printed nothing but stuck-CPU reports for {secs} s, longer than \
         any boot may stay silent, and was stopped as wedged; full log: {}",
        log.display()
    )]
    Wedged {
        /// Scenario.
        name: String,
        /// How long it was silent.
        secs: u64,
        /// The kept log.
        log: PathBuf,
    },
    /// The scenario ran but did not complete.
    #[error("Scenario {name} failed: {why}; full log: {}", log.display())]
    Failed {
        /// Scenario.
        name: String,
        /// What went wrong.
        why: String,
        /// The kept log.
        log: PathBuf,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_path_buf();
    move |source| RunError::Io { what, path, source }
}

/// Which KVM the host has, from /sys/module.
fn host_kvm() -> &'static str {
    let m = |n: &str| Path::new("/sys/module").join(n).exists();
    if m("kvm_pvm") {
        "pvm"
    } else if m("kvm_intel") || m("kvm_amd") {
        "hardware"
    } else {
        "none"
    }
}

/// Picks the tier: [`TIER_ENV`] if set; direct on hardware KVM with a
/// usable /dev/kvm; else nested when QEMU is installed.
pub fn select_tier() -> Result<Tier, RunError> {
    let kvm_usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let kind = host_kvm();
    let tier = match std::env::var(TIER_ENV).ok().as_deref() {
        Some("direct") => Tier::Direct,
        Some("nested") => Tier::Nested,
        Some(other) if !other.is_empty() => {
            return Err(RunError::Unavailable(format!(
                "{TIER_ENV}={other}: expected `direct` or `nested`"
            )))
        }
        _ if kind == "hardware" && kvm_usable => Tier::Direct,
        _ => Tier::Nested,
    };
    let need = |p: &str, pkg: &str| {
        if agentvm_image::on_path(p) {
            Ok(())
        } else {
            Err(RunError::Unavailable(format!(
                "{p} not found (apt-get install {pkg})"
            )))
        }
    };
    need("apt-get", "apt")?;
    need("tar", "tar")?;
    match tier {
        Tier::Direct if !kvm_usable => {
            Err(RunError::Unavailable("/dev/kvm cannot be opened".into()))
        }
        Tier::Direct => Ok(tier),
        Tier::Nested => {
            need("qemu-system-x86_64", "qemu-system-x86")?;
            Ok(tier)
        }
    }
}

/// Whether a test must run the rig rather than skip: [`REQUIRE_ENV`] or
/// `CI` is set (to anything but empty, `0` or `false`).
pub fn required() -> bool {
    [REQUIRE_ENV, "CI"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0" && s != "false"))
}

/// The rig: a locked cache, the chosen tier, and options.
#[derive(Debug)]
pub struct Rig {
    cache: Cache,
    _lock: CacheLock,
    tier: Tier,
    echo: bool,
}

impl Rig {
    /// Opens the cache (taking its lock, so rig runs in parallel test
    /// processes take turns) and selects the tier.
    pub fn open() -> Result<Self, RunError> {
        let tier = select_tier()?;
        let cache = crate::cache()?;
        let lock = cache.lock()?;
        Ok(Rig {
            cache,
            _lock: lock,
            tier,
            echo: false,
        })
    }

    /// For tests: `Ok(None)` (after printing why) when the rig cannot run
    /// here, unless [`REQUIRE_ENV`] or `CI` is set, which makes that an error.
    pub fn open_for_test() -> Result<Option<Self>, RunError> {
        match Rig::open() {
            Ok(r) => Ok(Some(r)),
            Err(RunError::Unavailable(why)) => {
                if required() {
                    return Err(RunError::Unavailable(why));
                }
                eprintln!("skipped: cannot run the rig here: {why}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies every console line to stdout while the scenario runs.
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// The tier scenarios run in.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Builds (or finds) the static binaries and the L2 image.
    pub fn l2_image(&self) -> Result<L2Image, RunError> {
        let bins = binaries::build()?;
        Ok(L2Image::build(
            &self.cache,
            &bins.agent,
            &L2Extras::default(),
        )?)
    }

    /// Builds (or finds) the default image with agentvm's own kernel
    /// ([`crate::peers::own_image`]); building the kernel takes minutes,
    /// which `progress` hears of.
    pub fn own_image(&self, progress: &mut dyn Progress) -> Result<GuestImage, RunError> {
        let bins = binaries::build()?;
        let l2 = self.l2_image()?;
        Ok(crate::peers::own_image(
            &self.cache,
            &l2,
            &bins.agent,
            progress,
        )?)
    }

    /// The SSH peer, or why it is not there.
    fn ssh_peer(&self) -> Result<SshPeer, RunError> {
        SshPeer::find(&self.cache)?.ok_or_else(|| {
            RunError::Unavailable(
                "dropbear, dbclient or dropbearkey not found (apt-get install dropbear-bin)".into(),
            )
        })
    }

    /// tmux, or why it is not there.
    fn tmux(&self) -> Result<Tmux, RunError> {
        Tmux::find()
            .ok_or_else(|| RunError::Unavailable("tmux not found (apt-get install tmux)".into()))
    }

    /// Runs `scenario` and checks that every boot completed (L1 came up
    /// with /dev/kvm, each boot printed its end marker). What the guests
    /// reported is for the caller to judge.
    pub fn run(&self, scenario: &Scenario) -> Result<ScenarioResult, RunError> {
        // Before the slow build: a missing helper is said at once.
        if scenario.needs_tmux() {
            self.tmux()?;
        }
        let bins = binaries::build()?;
        let ssh = if scenario.needs_ssh() {
            Some(self.ssh_peer()?)
        } else {
            None
        };
        let extras = L2Extras {
            ssh: ssh.as_ref().map(|s| (bins.vsock.as_path(), s)),
        };
        let l2 = L2Image::build(&self.cache, &bins.agent, &extras)?;
        let run_dir = self.run_dir(&scenario.name)?;
        let log_path = run_dir.join("console.log");
        let started = Instant::now();
        let l1_ready = match self.tier {
            Tier::Direct => {
                self.run_direct(scenario, &l2, &bins, ssh.as_ref(), &run_dir, &log_path)?;
                None
            }
            Tier::Nested => self.run_nested(scenario, &l2, &bins, &extras, &run_dir, &log_path)?,
        };
        let elapsed = started.elapsed();
        let text = fs::read(&log_path).map_err(io_err("Cannot read", &log_path))?;
        let (l1_markers, boots) = parse_log(&String::from_utf8_lossy(&text));
        let result = ScenarioResult {
            name: scenario.name.clone(),
            tier: self.tier,
            log_path: log_path.clone(),
            elapsed,
            l1_ready,
            l1_markers,
            boots,
        };
        let fail = |why: String| RunError::Failed {
            name: scenario.name.clone(),
            why,
            log: log_path.clone(),
        };
        if self.tier == Tier::Nested {
            match result.l1_marker("kvm") {
                Some("1") => {}
                Some(_) => {
                    return Err(fail(
                        "L1 has no /dev/kvm (kvm_amd did not load: see RIG-L1 insmod_failed)"
                            .into(),
                    ))
                }
                None => return Err(fail("L1 did not come up (no RIG-L1 kvm= marker)".into())),
            }
        }
        for b in &scenario.boots {
            if result.boot(&b.name).is_none() {
                return Err(fail(format!(
                    "boot {} did not finish (no RIG-VMM end={})",
                    b.name, b.name
                )));
            }
        }
        Ok(result)
    }

    fn run_dir(&self, name: &str) -> Result<PathBuf, RunError> {
        let runs = self.cache.root().join("runs");
        fs::create_dir_all(&runs).map_err(io_err("Cannot create", &runs))?;
        self.cache_prune_runs(&runs);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let dir = runs.join(format!("{name}-{stamp}-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io_err("Cannot create", &dir))?;
        Ok(dir)
    }

    fn cache_prune_runs(&self, runs: &Path) {
        if let Ok(c) = Cache::at(runs.to_path_buf()) {
            c.prune("", 40);
        }
    }

    fn run_direct(
        &self,
        scenario: &Scenario,
        l2: &L2Image,
        bins: &StaticBinaries,
        ssh: Option<&SshPeer>,
        run_dir: &Path,
        log_path: &Path,
    ) -> Result<(), RunError> {
        let log = File::create(log_path).map_err(io_err("Cannot create", log_path))?;
        let mut sink = Tee {
            file: log,
            echo: self.echo,
        };
        // Unix socket paths are short (108 bytes): not under the cache.
        let sock_dir = std::env::temp_dir().join(format!("agentvm-rig-{}", std::process::id()));
        fs::create_dir_all(&sock_dir).map_err(io_err("Cannot create", &sock_dir))?;
        let own = if scenario.needs_own_kernel() {
            let mut progress = |line: &str| eprintln!("rig: {line}");
            Some(crate::peers::own_image(
                &self.cache,
                l2,
                &bins.agent,
                &mut progress,
            )?)
        } else {
            None
        };
        let paths = BootPaths {
            agentvm: bins.agentvm.clone(),
            stamp: bins.stamp.clone(),
            vsock_helper: bins.vsock.clone(),
            dbclient: ssh.map_or_else(|| "dbclient".into(), |s| s.dbclient.clone()),
            ssh_key: ssh.map(|s| s.client_key.clone()).unwrap_or_default(),
            sock_dir: sock_dir.clone(),
            image_dir: l2.dir.clone(),
            qemu: "qemu-system-x86_64".into(),
            qemu_datadir: None,
            vmlinux: l2.vmlinux.clone(),
            bzimage: l2.bzimage.clone(),
            initrd: l2.initrd.clone(),
            // Where the direct tier finds what a nested run carries on its
            // disk: the kernel in its cache, the peers where the benchmark
            // was told they are.
            own_image_dir: own.as_ref().map(|i| i.dir.clone()).unwrap_or_default(),
            firecracker: std::env::var_os(crate::PEER_FIRECRACKER_ENV)
                .map_or_else(|| "firecracker".into(), PathBuf::from),
            cloud_hypervisor: std::env::var_os(crate::PEER_CLOUD_HYPERVISOR_ENV)
                .map_or_else(|| "cloud-hypervisor".into(), PathBuf::from),
        };
        let result = scenario.boots.iter().try_for_each(|b| {
            if let Some(setup) = &b.setup {
                let status = Command::new("sh")
                    .args(["-c", setup])
                    .status()
                    .map_err(io_err("Cannot run the setup of", log_path))?;
                if !status.success() {
                    return Err(RunError::Setup(b.name.clone(), status.to_string()));
                }
            }
            for (path, text) in b.vmm_files(&paths) {
                fs::write(&path, text).map_err(io_err("Cannot write", &path))?;
            }
            let (program, args) = b.command(&paths);
            let then = match b.script_text(&paths) {
                Some(text) => {
                    let file = run_dir.join(format!("{}.sh", b.name));
                    fs::write(&file, text).map_err(io_err("Cannot write", &file))?;
                    Some(file)
                }
                None => None,
            };
            let spec = StampSpec {
                name: b.name.clone(),
                timeout: b.timeout,
                first_line: b.first_line().into(),
                program,
                args,
                then,
                guest_mib: Some(b.memory_mib),
            };
            stamp(&spec, &mut sink)
                .map(drop)
                .map_err(io_err("Cannot run the boot; log", log_path))
        });
        let _ = fs::remove_dir_all(&sock_dir);
        result
    }

    fn run_nested(
        &self,
        scenario: &Scenario,
        l2: &L2Image,
        bins: &StaticBinaries,
        extras: &L2Extras<'_>,
        run_dir: &Path,
        log_path: &Path,
    ) -> Result<Option<Duration>, RunError> {
        let qemu_host = agentvm_image::which("qemu-system-x86_64");
        let virtiofsd = if scenario.needs_virtiofsd() {
            let found = agentvm_devices::virtio::fs::Search::from_env(None)
                .find()
                .map_err(|e| RunError::Unavailable(e.to_string()))?;
            Some(found.path)
        } else {
            None
        };
        let tmux = if scenario.needs_tmux() {
            Some(self.tmux()?)
        } else {
            None
        };
        let l1 = L1Image::build(
            &self.cache,
            &L1Contents {
                l2,
                agentvm: &bins.agentvm,
                stamp: &bins.stamp,
                mock_llm: &bins.mock_llm,
                qemu: if scenario.needs_qemu() {
                    qemu_host.as_deref()
                } else {
                    None
                },
                ssh: extras.ssh,
                virtiofsd: virtiofsd.as_deref(),
                tmux: tmux.as_ref(),
            },
        )?;
        let paths = BootPaths::in_l1();
        let script_path = run_dir.join("scenario.sh");
        fs::write(&script_path, scenario.l1_script(&paths))
            .map_err(io_err("Cannot write", &script_path))?;
        let stderr_path = run_dir.join("qemu.stderr");
        let stderr = File::create(&stderr_path).map_err(io_err("Cannot create", &stderr_path))?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "pc", "-accel", "tcg", "-cpu", "EPYC-Rome,+svm"])
            .args([
                "-m",
                &L1_MEMORY_MIB.to_string(),
                "-smp",
                &scenario.max_vcpus().to_string(),
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&l1.kernel)
            .arg("-initrd")
            .arg(&l1.initrd)
            .args(["-append", "console=ttyS0 quiet panic=1"])
            .args(scenario.disk.iter().flat_map(|d| {
                [
                    "-drive".to_string(),
                    format!("file={},if=virtio,format=raw,readonly=on", d.display()),
                ]
            }))
            .arg("-fw_cfg")
            .arg(format!(
                "name=opt/rig/scenario,file={}",
                script_path.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        fs::write(run_dir.join("qemu.cmd"), format!("{cmd:?}\n"))
            .map_err(io_err("Cannot write", run_dir))?;
        let timeout = L1_BOOT_ALLOWANCE
            + scenario
                .boots
                .iter()
                .map(|b| b.timeout + Duration::from_secs(5))
                .sum::<Duration>();
        let longest_boot = scenario.boots.iter().map(|b| b.timeout).max();
        let started = Instant::now();
        let deadline = Arc::new(Deadline::new(
            started,
            timeout,
            longest_boot.unwrap_or_default() + L1_SILENCE_ALLOWANCE,
        ));
        let deadline_w = Arc::clone(&deadline);
        let mut child = cmd.spawn().map_err(|source| {
            RunError::Image(ImageError::Spawn {
                program: "qemu-system-x86_64".into(),
                source,
            })
        })?;
        let stdout = child.stdout.take();
        let log = File::create(log_path).map_err(io_err("Cannot create", log_path))?;
        let ready = Arc::new(Mutex::new(None));
        let ready_w = Arc::clone(&ready);
        let echo = self.echo;
        let copier = std::thread::spawn(move || {
            let mut sink = Tee { file: log, echo };
            let Some(out) = stdout else { return };
            let mut r = BufReader::new(out);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                if !is_lockup_report(&line) {
                    deadline_w.output(Instant::now());
                }
                if line.windows(11).any(|w| w == b"RIG-L1 kvm=") {
                    if let Ok(mut g) = ready_w.lock() {
                        g.get_or_insert(started.elapsed());
                    }
                }
                let _ = sink.write_all(&line).and_then(|()| sink.flush());
                line.clear();
            }
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) => match deadline.overdue(Instant::now()) {
                    Some(why) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(why);
                    }
                    None => std::thread::sleep(Duration::from_millis(50)),
                },
                Err(e) => return Err(io_err("Cannot wait for QEMU; log", log_path)(e)),
            }
        };
        let _ = copier.join();
        let status = match status {
            Ok(s) => s,
            Err(Overdue::Total) => {
                return Err(RunError::Timeout {
                    name: scenario.name.clone(),
                    secs: timeout.as_secs(),
                    log: log_path.into(),
                })
            }
            Err(Overdue::Silent(quiet)) => {
                return Err(RunError::Wedged {
                    name: scenario.name.clone(),
                    secs: quiet.as_secs(),
                    log: log_path.into(),
                })
            }
        };
        if !status.success() {
            let err = fs::read_to_string(&stderr_path).unwrap_or_default();
            return Err(RunError::Failed {
                name: scenario.name.clone(),
                why: format!("QEMU (L1) exited with {status}: {}", err.trim()),
                log: log_path.into(),
            });
        }
        let ready = ready.lock().ok().and_then(|g| *g);
        Ok(ready)
    }
}

/// Writes to the log, and to stdout when echoing.
struct Tee {
    file: File,
    echo: bool,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.echo {
            let _ = std::io::stdout().flush();
        }
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_run_that_keeps_printing_is_overdue_only_past_its_total() {
        let t0 = Instant::now();
        let d = Deadline::new(t0, Duration::from_secs(1000), Duration::from_secs(100));
        for s in (0..=950).step_by(50) {
            d.output(at(t0, s));
            assert_eq!(d.overdue(at(t0, s + 10)), None, "at {s} s");
        }
        assert_eq!(d.overdue(at(t0, 1001)), Some(Overdue::Total));
    }

    #[test]
    fn soft_lockup_reports_are_not_progress() {
        assert!(is_lockup_report(
            b"[  620.845360] watchdog: BUG: soft lockup - CPU#0 stuck for 470s! [CPU 1/KVM:481]\r\n"
        ));
        assert!(!is_lockup_report(b"RIG-VMM begin=qemu-own-2cpu-run7\n"));
        assert!(!is_lockup_report(b"[    0.1] watchdog: enabled\n"));
    }

    #[test]
    fn a_silent_run_is_wedged_once_past_the_silence_allowed() {
        let t0 = Instant::now();
        let d = Deadline::new(t0, Duration::from_secs(1000), Duration::from_secs(100));
        // Silent from the start: L1's own boot counts too.
        assert_eq!(d.overdue(at(t0, 100)), None);
        assert_eq!(
            d.overdue(at(t0, 101)),
            Some(Overdue::Silent(Duration::from_secs(101)))
        );
        // Output moves the limit; a late-arriving older time does not
        // move it back.
        d.output(at(t0, 300));
        d.output(at(t0, 250));
        assert_eq!(d.overdue(at(t0, 400)), None);
        assert_eq!(
            d.overdue(at(t0, 401)),
            Some(Overdue::Silent(Duration::from_secs(101)))
        );
    }
}
