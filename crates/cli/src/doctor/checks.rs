//! The decisions of `agentvm doctor` beyond the host's KVM: each check is a
//! function of plain data (the text of `/proc/meminfo`, a version string,
//! what the probes found), so tests can give it anything; the probes that
//! read the host are in the parent module.

use std::fmt::Write as _;
use std::time::Duration;

use agentvm_image::stamp::Stamp;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but worth doing something about.
    Warn,
    /// agentvm cannot do its job here until this is fixed: doctor exits 1.
    Fail,
}

/// One check's outcome: what, how it stands, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`virtiofsd`, `memory`, …).
    pub name: &'static str,
    /// How it stands.
    pub status: Status,
    /// What was found and, unless ok, what to do.
    pub message: String,
}

impl Check {
    fn new(name: &'static str, status: Status, message: impl Into<String>) -> Self {
        Check {
            name,
            status,
            message: message.into(),
        }
    }

    /// The line doctor prints: `name: ok: …`, `name: warning: …`,
    /// `name: FAIL: …`.
    pub fn line(&self) -> String {
        let word = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warning",
            Status::Fail => "FAIL",
        };
        format!("{}: {word}: {}", self.name, self.message)
    }
}

/// How the workspace's configuration stands, as the probe found it (paths
/// already escaped for the terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigState {
    /// No `.agentvm/config.toml`: agentvm's defaults, nothing to approve.
    NoFile {
        /// The directory doctor looked from.
        workspace: String,
    },
    /// The file does not load (syntax, unknown keys, bad values).
    Invalid(String),
    /// Loads, and approved as it is.
    Approved {
        /// The file.
        file: String,
    },
    /// Loads, never approved (or the workspace moved).
    New {
        /// The file.
        file: String,
    },
    /// Loads, changed since it was approved.
    Changed {
        /// The file.
        file: String,
    },
    /// Approved, but a read-write mount holds the approvals themselves
    /// (the trust module's reason).
    Exposed(String),
    /// The approval could not be read.
    Unknown(String),
}

/// The workspace configuration: `up` runs only a valid, approved one.
pub fn config(state: &ConfigState) -> Check {
    const NAME: &str = "configuration";
    match state {
        ConfigState::NoFile { workspace } => Check::new(
            NAME,
            Status::Ok,
            format!(
                "no .agentvm/config.toml in {workspace} or above: `up` there runs on agentvm's \
                 defaults (`agentvm init` writes one)"
            ),
        ),
        ConfigState::Invalid(why) => Check::new(
            NAME,
            Status::Fail,
            format!("does not load — fix it, then run `agentvm trust`: {why}"),
        ),
        ConfigState::Approved { file } => {
            Check::new(NAME, Status::Ok, format!("{file} is valid and approved"))
        }
        ConfigState::New { file } => Check::new(
            NAME,
            Status::Fail,
            format!(
                "{file} is not approved yet, so `up` will not start the VM: review it, then run \
                 `agentvm trust`"
            ),
        ),
        ConfigState::Changed { file } => Check::new(
            NAME,
            Status::Fail,
            format!(
                "{file} changed since you approved it, so `up` will not start the VM: \
                 `agentvm trust` shows what changed and approves it"
            ),
        ),
        ConfigState::Exposed(why) => Check::new(NAME, Status::Fail, why.clone()),
        ConfigState::Unknown(why) => Check::new(
            NAME,
            Status::Warn,
            format!("cannot tell whether it is approved: {why}"),
        ),
    }
}

/// What the probe found of a stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampState {
    /// No `image.json` (an image built before agentvm wrote one).
    Absent,
    /// There, but not a stamp.
    Garbled,
    /// The stamp.
    Present(Stamp),
}

/// What the probe found of the guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// The image directory (escaped).
    pub dir: String,
    /// Whether it is the default directory (else `--out DIR` is needed).
    pub default_dir: bool,
    /// Which of the files `boot` and `up` need are missing.
    pub missing: Vec<&'static str>,
    /// Its stamp.
    pub stamp: StampState,
    /// How long ago it was built (the stamp's time, else the vmlinux's).
    pub age: Option<Duration>,
    /// The layout this agentvm builds.
    pub layout: String,
    /// The digest of the agent `image build` would use now, if there is one.
    pub agent: Option<String>,
    /// What its root file system carries, if it has one.
    pub rootfs: Option<String>,
}

/// Older than this, an image misses Debian's kernel updates.
pub const IMAGE_STALE: Duration = Duration::from_secs(60 * 24 * 3600);

/// The guest image: there, whole, and what `agentvm image build` would make
/// now (same layout, same agent), and not so old it misses kernel updates.
pub fn image(f: &ImageFacts) -> Check {
    const NAME: &str = "image";
    let build = if f.default_dir {
        "`agentvm image build`".to_string()
    } else {
        format!("`agentvm image build --out {}`", f.dir)
    };
    if f.missing.len() == 3 {
        return Check::new(
            NAME,
            Status::Warn,
            format!("none at {} yet: run {build} (`up` needs it)", f.dir),
        );
    }
    if !f.missing.is_empty() {
        return Check::new(
            NAME,
            Status::Fail,
            format!(
                "the image at {} lacks {}: run {build} again",
                f.dir,
                f.missing.join(", ")
            ),
        );
    }
    let age = f.age.map_or_else(
        || "at an unknown time".to_string(),
        |a| format!("{} ago", ago(a)),
    );
    let stamp = match &f.stamp {
        StampState::Present(s) => s,
        StampState::Absent | StampState::Garbled => {
            let why = if f.stamp == StampState::Absent {
                "has no record of its kernel and agent (built by an older agentvm)"
            } else {
                "has an unreadable image.json"
            };
            return Check::new(
                NAME,
                Status::Warn,
                format!(
                    "{} (built {age}) {why}: run {build} so doctor can tell whether it is current",
                    f.dir
                ),
            );
        }
    };
    // The stamp is a file in a directory an unapproved configuration may
    // name, or a share may hold: its text is shown escaped.
    let esc = |s: &str| crate::escape::line(s).into_owned();
    let mut what = format!(
        "{}: kernel {} ({} {}), built {age}",
        f.dir,
        esc(&stamp.kernel_release),
        esc(&stamp.kernel_package),
        esc(&stamp.kernel_version)
    );
    if let Some(r) = &f.rootfs {
        let _ = write!(what, "; root file system: {r}");
    }
    if stamp.layout != f.layout {
        return Check::new(
            NAME,
            Status::Warn,
            format!(
                "{what} — made for image layout {}, this agentvm builds {}: run {build}",
                esc(&stamp.layout),
                f.layout
            ),
        );
    }
    match &f.agent {
        Some(a) if *a != stamp.agent_digest => {
            return Check::new(
                NAME,
                Status::Warn,
                format!("{what} — the guest agent changed since: run {build}"),
            )
        }
        Some(_) => {}
        None => what.push_str(" (no built guest agent here to compare with)"),
    }
    if f.age.is_some_and(|a| a > IMAGE_STALE) {
        return Check::new(
            NAME,
            Status::Warn,
            format!("{what} — run {build} to pick up Debian's kernel updates"),
        );
    }
    Check::new(NAME, Status::Ok, what)
}

/// `3 days`, `5 hours`, `12 minutes`, `40 seconds`.
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        0..=119 => (s, "second"),
        120..=7199 => (s / 60, "minute"),
        7200..=172_799 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// What the probe found for image builds' downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptFacts {
    /// `apt-get` on `PATH`.
    pub apt_get: bool,
    /// `apt-cache` on `PATH`.
    pub apt_cache: bool,
    /// `/etc/os-release`, if readable.
    pub os_release: Option<String>,
}

/// A field of `/etc/os-release` text, unquoted.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// apt for `agentvm image build`: it downloads Debian's cloud kernel and
/// busybox-static with apt, which knows them on Debian and its relatives.
pub fn apt(f: &AptFacts) -> Check {
    const NAME: &str = "apt";
    let os = f.os_release.as_deref().unwrap_or("");
    let name = os_release_field(os, "PRETTY_NAME")
        .or_else(|| os_release_field(os, "ID"))
        .unwrap_or_else(|| "an unknown system".to_string());
    let family = format!(
        "{} {}",
        os_release_field(os, "ID").unwrap_or_default(),
        os_release_field(os, "ID_LIKE").unwrap_or_default()
    );
    let debian_like = family
        .split_whitespace()
        .any(|w| matches!(w, "debian" | "ubuntu"));
    if !(f.apt_get && f.apt_cache) {
        return Check::new(
            NAME,
            Status::Warn,
            format!(
                "no apt-get/apt-cache on this host ({}): `agentvm image build` needs \
                 --kernel-deb FILE and --busybox FILE here, or build the image with the flake \
                 (nix build .#guest-image)",
                crate::escape::line(&name)
            ),
        );
    }
    if !debian_like {
        return Check::new(
            NAME,
            Status::Warn,
            format!(
                "apt is here, but on {} rather than Debian or a relative: its lists may lack \
                 linux-image-cloud-amd64 and busybox-static; pass --kernel-deb and --busybox \
                 to `agentvm image build` if they do",
                crate::escape::line(&name)
            ),
        );
    }
    Check::new(
        NAME,
        Status::Ok,
        format!(
            "apt-get and apt-cache on {}: `agentvm image build` downloads the kernel and \
             busybox with them",
            crate::escape::line(&name)
        ),
    )
}

/// The oldest virtiofsd agentvm works with. agentvm starts it with
/// `--shared-dir`, `--socket-path`, `--sandbox`, `--cache`,
/// `--thread-pool-size`, `--inode-file-handles` and `--rlimit-nofile`
/// (all there since 1.0), and `--readonly` for read-only mounts, which
/// virtiofsd gained in 1.13.0; an older one refuses that option and the
/// share does not start.
pub const MIN_VIRTIOFSD: (u64, u64, u64) = (1, 13, 0);

/// `1.14.0` (or `1.13.0-rc1`, `v1.13`) as numbers; `None` when it does not
/// start with a version.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let patch = parts
        .next()
        .filter(|p| !p.is_empty())
        .map_or(Some(0), |p| p.parse().ok())?;
    Some((major, minor, patch))
}

/// The virtiofsd the virtio-fs device would run (`Ok((path, version))`)
/// or why there is none, against [`MIN_VIRTIOFSD`]. Too old fails when
/// the workspace has a read-only mount (that share would not start), and
/// warns otherwise.
pub fn virtiofsd(found: &Result<(String, String), String>, read_only_mounts: bool) -> Check {
    const NAME: &str = "virtiofsd";
    let (maj, min, pat) = MIN_VIRTIOFSD;
    let (path, version) = match found {
        Ok(f) => f,
        Err(why) => {
            return Check::new(
                NAME,
                Status::Fail,
                format!("not usable — workspace sharing needs it: {why}"),
            )
        }
    };
    let shown = crate::escape::line(version);
    match parse_version(version) {
        None => Check::new(
            NAME,
            Status::Warn,
            format!(
                "{path} reports version {shown:?}, which doctor cannot read; agentvm needs \
                 {maj}.{min}.{pat} or later (for read-only mounts)"
            ),
        ),
        Some(v) if v < MIN_VIRTIOFSD => Check::new(
            NAME,
            if read_only_mounts {
                Status::Fail
            } else {
                Status::Warn
            },
            format!(
                "{path} is {shown}; read-only mounts need {maj}.{min}.{pat} or later (its \
                 --readonly option): install a newer one (`cargo install --locked virtiofsd`) \
                 or set AGENTVM_VIRTIOFSD to one"
            ),
        ),
        Some(_) => Check::new(
            NAME,
            Status::Ok,
            format!("{path} {shown} (agentvm needs {maj}.{min}.{pat} or later)"),
        ),
    }
}

/// What the VMM process takes beside guest memory, MiB: its own heap and
/// threads, the page tables and the virtio queues, and virtiofsd.
pub const VMM_OVERHEAD_MIB: u64 = 256;

/// `MemAvailable` of `/proc/meminfo` text, MiB.
pub fn mem_available_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let mut words = rest.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") | None => Some(n / 1024),
            Some(_) => None,
        }
    })
}

/// Free memory (`MemAvailable`) against what the workspace's VM may use:
/// its `memory_mib` (a limit, not reserved up front), the network stack's
/// budget and [`VMM_OVERHEAD_MIB`]. Less than the smallest guest needs
/// fails; less than the limit warns.
pub fn memory(meminfo: Option<&str>, memory_mib: u64, net_memory_mib: u64) -> Check {
    const NAME: &str = "memory";
    let need = memory_mib
        .saturating_add(net_memory_mib)
        .saturating_add(VMM_OVERHEAD_MIB);
    let Some(avail) = meminfo.and_then(mem_available_mib) else {
        return Check::new(
            NAME,
            Status::Warn,
            format!(
                "cannot read MemAvailable from /proc/meminfo; the VM may use up to {need} MiB \
                 (memory_mib {memory_mib} + network {net_memory_mib} + about \
                 {VMM_OVERHEAD_MIB} for the VMM)"
            ),
        );
    };
    let floor = crate::config::MIN_MEMORY_MIB + VMM_OVERHEAD_MIB;
    if avail < floor {
        return Check::new(
            NAME,
            Status::Fail,
            format!(
                "{avail} MiB available, less than the {floor} MiB the smallest VM needs: free \
                 memory first"
            ),
        );
    }
    if avail < need {
        return Check::new(
            NAME,
            Status::Warn,
            format!(
                "{avail} MiB available, and the VM may use up to {need} MiB (memory_mib \
                 {memory_mib} + network {net_memory_mib} + about {VMM_OVERHEAD_MIB} for the \
                 VMM): the guest takes memory only as it uses it, but a busy one can run the \
                 host short; set a lower memory_mib in .agentvm/config.toml or free memory"
            ),
        );
    }
    Check::new(
        NAME,
        Status::Ok,
        format!(
            "{avail} MiB available for a VM of up to {need} MiB (memory_mib {memory_mib} + \
             network {net_memory_mib} + about {VMM_OVERHEAD_MIB} for the VMM)"
        ),
    )
}
