//! The workspace configuration: `.agentvm/config.toml`, the plugins it
//! lists, and the [`ResolvedConfig`] that `up` and the other lifecycle
//! commands consume (every value defaulted, every path absolute).
//!
//! How it is put together:
//! 1. [`find_workspace`]: the workspace is the nearest directory, from the
//!    one given up through its parents, holding `.agentvm/config.toml`
//!    (the home directory itself is skipped unless it is where the search
//!    starts: `~/.agentvm` may be a per-user directory); with none, the
//!    starting directory with no file, and every default.
//! 2. [`load::Source::parse`] reads each file into [`schema::ConfigFile`];
//!    unknown keys and wrong types are errors with `file:line:column` and
//!    the key path.
//! 3. [`validate`] checks values one file at a time (ports, forwards,
//!    host pins, modes, names, sizes) and makes paths absolute, into a
//!    [`merge::Fragment`].
//! 4. [`merge`] layers the fragments: the defaults, then each plugin in
//!    the order listed, then the workspace's own file. See that module for
//!    the rules (lists concatenated and de-duplicated, tables and scalars:
//!    the later layer, so the user, wins).
//!
//! Decisions a user sees:
//! - `${HOST_VAR}` in `[env]` is expanded at `up`; an unset host variable
//!   leaves its entry out, with a warning for entries the user wrote
//!   ([`env`]).
//! - A mount whose source directory is missing is an error at `up`, unless
//!   it says `create = true`, as the built-in plugins' state directories do
//!   (so that a login inside the guest persists on the host).

pub mod env;
pub mod load;
pub mod merge;
pub mod plugins;
pub mod render;
pub mod schema;
pub mod secrets;
pub mod template;
pub mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use agentvm_vmm::config::MAX_VCPUS;
use anyhow::{bail, Context};

pub use env::EnvEntry;
pub use load::Source;
pub use secrets::{SecretEntry, SecretSource};

/// The directory in a workspace that holds its configuration.
pub const CONFIG_DIR: &str = ".agentvm";
/// The configuration file's name in [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "config.toml";
/// Memory default floor, MiB: guest memory is a limit, not a reservation.
pub const MIN_DEFAULT_MEMORY_MIB: u64 = 4096;
/// The smallest memory a guest may be given, MiB.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Cap of the console and network audit logs when no file names one, MiB.
pub const DEFAULT_LOG_MAX_MIB: u64 = 16;
/// The network stack's memory budget when no file names one, MiB.
pub const DEFAULT_NET_MEMORY_MIB: u64 = 64;
/// Hot-plug slots for live mounts, by default.
pub const DEFAULT_HOTPLUG_SLOTS: u8 = 4;
/// The most hot-plug slots a VM may declare (the interrupt lines left
/// after the configured devices bound it further).
pub const MAX_HOTPLUG_SLOTS: u8 = 8;
/// The smallest network memory budget, MiB (the stack's queues need it).
pub const MIN_NET_MEMORY_MIB: u64 = 4;
/// Destination ports `filtered` mode allows when no file lists any.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];
/// The guest's home when commands run as root (agentvm run as root).
pub const ROOT_HOME: &str = "/root";

/// Everything `up` needs to know, with defaults applied and paths absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedConfig {
    /// The workspace directory (absolute): where `.agentvm/` is, or the
    /// directory the command started from when there is no file.
    pub workspace: PathBuf,
    /// The workspace's configuration file, if it has one.
    pub file: Option<PathBuf>,
    /// The VM's name: `[a-z0-9-]`, 1 to 63 characters. Default: the
    /// workspace directory's name, lowercased, other characters as `-`.
    pub name: String,
    /// The plugins merged in, as the file lists them (built-in names, or
    /// plugin file paths as written).
    pub plugins: Vec<String>,
    /// Number of vCPUs. Default: all of the host's (at most 255).
    pub vcpus: u8,
    /// Guest memory limit in MiB, not reserved up front: memory the guest
    /// does not use goes back to the host. Default: half the host's RAM,
    /// at least [`MIN_DEFAULT_MEMORY_MIB`].
    pub memory_mib: u64,
    /// Whether the guest's root keeps its changes (a package installed with
    /// `sudo apt-get install`) across `down`/`up`: a per-workspace writable
    /// layer on the host instead of memory. Default: false.
    pub persistent_root: bool,
    /// Cap of the console log and of the network audit log, MiB each (the
    /// previous file is kept as `.1`, so each takes at most twice this).
    /// Default: [`DEFAULT_LOG_MAX_MIB`].
    pub log_max_mib: u64,
    /// The most memory the VM's network stack takes for its queues and
    /// connections, MiB; connections past it are refused. Default:
    /// [`DEFAULT_NET_MEMORY_MIB`].
    pub net_memory_mib: u64,
    /// Empty virtio-mmio slots declared at boot for `agentvm mount` (live
    /// mounts); 0 declares none. Default: [`DEFAULT_HOTPLUG_SLOTS`].
    pub hotplug_slots: u8,
    /// Host directories shared with the guest, in mount order. The first is
    /// the workspace itself, read-write at the same absolute path, unless a
    /// file mounts something else at that path.
    pub mounts: Vec<Mount>,
    /// Host files copied into the guest at `up`, by target (`[[files]]`);
    /// their content is read at `up` ([`crate::lifecycle::files`]).
    pub files: Vec<CopiedFile>,
    /// Egress policy and port forwards.
    pub network: Network,
    /// Environment of commands run in the guest, unexpanded: expand at `up`
    /// with [`env::resolve`].
    pub env: BTreeMap<String, EnvEntry>,
    /// Credentials the guest sees as placeholders, by guest variable name;
    /// their values are read at `up` ([`crate::secrets`]).
    pub secrets: BTreeMap<String, SecretEntry>,
    /// Shell commands run in the guest (`sh -c`, as root, in the workspace)
    /// once it has booted, in order: the plugins' first, then the user's.
    pub scripts: Vec<String>,
    /// Debian packages the guest image must carry (plugins' first).
    pub packages: Vec<String>,
    /// npm packages installed globally in the guest image at build time
    /// (the built-in agents' among them); `up` never runs npm.
    pub npm: Vec<String>,
    /// Shell commands run on the host (`sh -c`, in the workspace).
    pub hooks: Hooks,
    /// Kernel image instead of the guest image's (absolute).
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk instead of the guest image's (absolute).
    pub initrd: Option<PathBuf>,
    /// Guest image directory instead of the default image (absolute).
    pub image: Option<PathBuf>,
    /// The workspace's id ([`crate::paths::workspace_id`] of `workspace`).
    pub id: String,
    /// The host directory the built-in plugins' agent state lives in, one
    /// per workspace; never the host's own `~/.claude` and the like.
    /// Default: `$XDG_DATA_HOME/agentvm/homes/<id>`; `None` when neither
    /// that nor `HOME` is known.
    pub agent_home: Option<PathBuf>,
    /// What happens to git hooks and executable git configuration the
    /// guest writes in shared repositories.
    pub git_hooks: GitHooks,
    /// What the VMM's seccomp filters do with a system call they do not
    /// expect. Default: end the VM.
    pub seccomp: agentvm_vmm::SeccompLevel,
    /// The host's ssh-agent in the guest (`[ssh]`). Default: off.
    pub ssh: SshConfig,
    /// Every plugin file merged in, with a digest of its text: any change
    /// to one needs a new approval.
    pub plugin_files: Vec<PluginFile>,
    /// Who commands in the guest run as (the host's [`Host::guest_user`]).
    pub guest_user: Option<crate::paths::GuestUser>,
}

/// [`agentvm_vmm::SeccompLevel`] in JSON, as its name (`kill`, `log`,
/// `off`).
pub mod seccomp_level {
    use agentvm_vmm::SeccompLevel;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the level's name.
    pub fn serialize<S: Serializer>(level: &SeccompLevel, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(level.as_str())
    }

    /// Reads a level's name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SeccompLevel, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }

    /// Whether `level` is the default (kept out of the trust view, so that
    /// approvals given before the setting existed stay valid).
    pub fn is_default(level: &SeccompLevel) -> bool {
        *level == SeccompLevel::default()
    }
}

/// `git_hooks`: whether the guest may leave hooks and executable git
/// configuration in shared repositories.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GitHooks {
    /// Undone after every command and at `down`, and reported.
    #[default]
    Guard,
    /// Left as the guest wrote them.
    Allow,
}

/// `[ssh]`: whether and how the guest uses the host's ssh-agent
/// (`crate::ssh_agent`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SshConfig {
    /// Whether the guest gets an `SSH_AUTH_SOCK` served by the host's
    /// agent (and the host's known hosts and git identity).
    pub agent: bool,
    /// `SHA256:…` fingerprints of the keys the guest may list and sign
    /// with; empty: every key the agent holds.
    pub keys: Vec<String>,
    /// Host names whose host keys (from the host's known_hosts) are the
    /// only servers signatures may log in to; empty: any server.
    pub hosts: Vec<String>,
}

impl SshConfig {
    /// Whether this is the default (forwarding off), which the trust view
    /// leaves out so approvals from before `[ssh]` stay valid.
    pub fn is_default(&self) -> bool {
        *self == SshConfig::default()
    }
}

/// A plugin file and the SHA-256 (hex) of its text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginFile {
    /// The file (absolute).
    pub path: PathBuf,
    /// SHA-256 of its text, hex.
    pub sha256: String,
}

/// A host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host directory (absolute, `~` expanded, `.`/`..` removed).
    pub source: PathBuf,
    /// Where the guest sees it (absolute).
    pub target: PathBuf,
    /// Whether the guest may only read it.
    pub read_only: bool,
    /// Whether `up` creates `source` when it does not exist.
    pub create: bool,
    /// Where it was configured.
    pub origin: Origin,
    /// Files copied into `source` when `up` creates it (a built-in
    /// plugin's credentials, so the agent needs no fresh login).
    pub seed: Option<Seed>,
}

/// Files a new agent home starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The host directory they come from (e.g. the host's `~/.claude`).
    pub from: PathBuf,
    /// Their names in it: credentials only, never settings, hooks or
    /// plugins, which the host's own agent would run.
    pub files: Vec<&'static str>,
}

impl Mount {
    /// Makes sure the source directory exists, creating it when the mount
    /// says so; `up` calls this before starting the file server.
    pub fn prepare_source(&self) -> anyhow::Result<()> {
        let source = self.source.display();
        match std::fs::metadata(&self.source) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => bail!(
                "{}: mount source {source} is not a directory; only directories can be mounted",
                self.origin
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.create => {
                std::fs::create_dir_all(&self.source)
                    .with_context(|| format!("{}: cannot create {source}", self.origin))?;
                if let Some(seed) = &self.seed {
                    seed.copy_into(&self.source);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{}: mount source {source} does not exist; create it, or add `create = true` \
                 to the mount",
                self.origin
            ),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("{}: cannot use mount source {source}", self.origin))),
        }
    }
}

impl Seed {
    /// Copies each seed file that is a regular file into `dir`, 0600; a
    /// missing one is skipped (the user has not logged in on the host).
    fn copy_into(&self, dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        for name in &self.files {
            let from = self.from.join(name);
            if !std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let to = dir.join(name);
            let copied = std::fs::copy(&from, &to).and_then(|_| {
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            });
            if let Err(e) = copied {
                eprintln!(
                    "agentvm: warning: cannot copy {} into the agent home {}: {e}",
                    from.display(),
                    dir.display()
                );
            }
        }
    }
}

/// One `[[files]]` entry, resolved: a host file whose content `up`
/// copies into the guest (never back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedFile {
    /// The host file (absolute; links are followed when it is read).
    pub source: PathBuf,
    /// Where in the guest: absolute, or `~/…` in the guest user's home;
    /// checked by [`agentvm_protocol::frame::check_target`].
    pub target: String,
    /// Permission bits (at most 0o777); `None`: the source's.
    pub mode: Option<u32>,
    /// Where it was configured.
    pub origin: Origin,
}

/// The most `[[files]]` a configuration may list.
pub const MAX_FILES: usize = 64;
/// The largest file `[[files]]` copies (1016 KiB: one protocol frame).
pub const MAX_FILE_BYTES: u64 = agentvm_protocol::MAX_FILE as u64;
/// The most bytes all `[[files]]` together copy.
pub const MAX_FILES_TOTAL_BYTES: u64 = 8 << 20;

/// `[network]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Egress mode. Default: [`NetworkMode::Filtered`].
    pub mode: NetworkMode,
    /// Names (lowercase) the guest may resolve in `filtered` mode; each
    /// covers its subdomains. Default: none.
    pub domains: Vec<String>,
    /// Destination ports allowed in `filtered` mode. Default: 80 and 443.
    pub ports: Vec<u16>,
    /// Names (lowercase) the network stack answers with a fixed address,
    /// reachable in `filtered` mode on the allowed ports; a pin into the
    /// host's 127.0.0.0/16 is how the guest reaches a host loopback server
    /// (it sees 127.0.B.C as 198.18.B.C). Default: none.
    pub hosts: BTreeMap<String, std::net::Ipv4Addr>,
    /// Host loopback ports forwarded into the guest. Default: none.
    pub forwards: Vec<Forward>,
    /// Extra CA certificates the network stack trusts when it verifies the
    /// upstream of an intercepted flow (a private service, a test server).
    /// Default: none (web PKI roots and the host's store).
    pub upstream_ca: Option<UpstreamCa>,
}

/// `network.upstream_ca`: the file and its text, read once when the
/// configuration is resolved, so that what the user approved (its digest
/// is in the approval) is what the VM uses, whatever the guest writes to
/// the file afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCa {
    /// The file (absolute).
    pub path: PathBuf,
    /// Its PEM text (one or more certificates).
    pub pem: String,
}

/// The largest `network.upstream_ca` file read.
pub const MAX_UPSTREAM_CA_BYTES: u64 = 1 << 20;

impl Network {
    /// The network stack's egress policy for this configuration: the mode,
    /// the domains (already lowercase, plugins' included), the ports, the
    /// host pins (checked by the stack's own rules when the file was read),
    /// and each forward listening on the host's 127.0.0.1. A VM whose mode
    /// is `off` gets no network device at all.
    pub fn policy(&self) -> agentvm_net::Policy {
        agentvm_net::Policy {
            mode: self.mode.into(),
            domains: self.domains.clone(),
            ports: self.ports.clone(),
            hosts: self.hosts.clone(),
            forwards: self
                .forwards
                .iter()
                .map(|f| agentvm_net::Forward {
                    host: std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, f.host),
                    guest_port: f.guest,
                })
                .collect(),
        }
    }
}

/// The guest's egress mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// No network traffic leaves the VMM.
    Off,
    /// Only allowlisted names, on allowed ports.
    Filtered,
    /// Everything, NATed out.
    Open,
}

impl NetworkMode {
    /// Every mode, in the order messages list them.
    pub const ALL: [NetworkMode; 3] = [NetworkMode::Off, NetworkMode::Filtered, NetworkMode::Open];

    /// The word a file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Off => "off",
            NetworkMode::Filtered => "filtered",
            NetworkMode::Open => "open",
        }
    }

    /// The mode a file's word names.
    pub fn parse(word: &str) -> Option<NetworkMode> {
        NetworkMode::ALL.into_iter().find(|m| m.as_str() == word)
    }
}

impl From<NetworkMode> for agentvm_net::Mode {
    fn from(mode: NetworkMode) -> Self {
        match mode {
            NetworkMode::Off => agentvm_net::Mode::Off,
            NetworkMode::Filtered => agentvm_net::Mode::Filtered,
            NetworkMode::Open => agentvm_net::Mode::Open,
        }
    }
}

/// A host port forwarded to a guest port (TCP, host loopback only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Port on the host's loopback address.
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.guest)
    }
}

/// `[hooks]`, resolved: host shell commands, the plugins' first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// Before the VM starts; a failure stops `up`.
    pub pre_up: Vec<String>,
    /// Once the VM is up and its scripts have run.
    pub post_up: Vec<String>,
    /// Before the VM is stopped.
    pub pre_down: Vec<String>,
    /// After the VM has stopped.
    pub post_down: Vec<String>,
}

/// Where a value was configured, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A built-in default.
    Default,
    /// A built-in plugin.
    BuiltIn(&'static str),
    /// A file (as messages show it) and a 1-based line.
    File {
        /// The file as messages show it.
        file: String,
        /// 1-based line.
        line: usize,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::BuiltIn(name) => write!(f, "plugin {name}"),
            Origin::File { file, line } => write!(f, "{file}:{line}"),
        }
    }
}

/// What the defaults depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `$HOME`, for `~` in paths.
    pub home: Option<PathBuf>,
    /// Usable CPUs.
    pub cpus: usize,
    /// Physical memory, MiB.
    pub memory_mib: u64,
    /// agentvm's data directory ([`crate::paths::data_dir`]), where agent
    /// homes live by default.
    pub data_dir: Option<PathBuf>,
    /// Who commands in the guest run as (`None`: root).
    pub guest_user: Option<crate::paths::GuestUser>,
}

impl Host {
    /// This host.
    pub fn detect() -> Host {
        Host {
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: host_memory_mib().unwrap_or(2 * MIN_DEFAULT_MEMORY_MIB),
            data_dir: crate::paths::data_dir(),
            guest_user: crate::paths::GuestUser::detect(),
        }
    }

    /// Default vCPUs: every CPU, within what a VM can have.
    pub fn default_vcpus(&self) -> u8 {
        u8::try_from(self.cpus.max(1)).map_or(MAX_VCPUS, |n| n.min(MAX_VCPUS))
    }

    /// The home of the user commands in the guest run as, where plugins
    /// mount the agents' state.
    pub fn guest_home(&self) -> PathBuf {
        self.guest_user
            .as_ref()
            .map_or_else(|| PathBuf::from(ROOT_HOME), |u| u.home())
    }

    /// Default memory limit: half the host's, at least 4 GiB.
    pub fn default_memory_mib(&self) -> u64 {
        (self.memory_mib / 2).max(MIN_DEFAULT_MEMORY_MIB)
    }
}

/// MemTotal from /proc/meminfo, in MiB.
fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// A workspace directory and its configuration file, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The workspace (absolute).
    pub dir: PathBuf,
    /// `dir/.agentvm/config.toml`, when it exists.
    pub config: Option<PathBuf>,
}

/// `dir/.agentvm/config.toml`.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join(CONFIG_DIR).join(CONFIG_FILE)
}

/// The workspace for a command run in `start` (absolute): the nearest of
/// `start` and its parents with a configuration file, skipping the home
/// directory unless it is `start`; else `start`, with no file.
pub fn find_workspace(start: &Path, home: Option<&Path>) -> Workspace {
    for dir in start.ancestors() {
        if dir != start && Some(dir) == home {
            continue;
        }
        let file = config_path(dir);
        if file.is_file() {
            return Workspace {
                dir: dir.to_path_buf(),
                config: Some(file),
            };
        }
    }
    Workspace {
        dir: start.to_path_buf(),
        config: None,
    }
}

/// The configuration for a command run in `start`: found, read, merged
/// and resolved for this host.
pub fn load(start: &Path) -> anyhow::Result<ResolvedConfig> {
    let start = std::fs::canonicalize(start)
        .with_context(|| format!("cannot use the directory {}", start.display()))?;
    if !start.is_dir() {
        bail!("{} is not a directory", start.display());
    }
    let host = Host::detect();
    let ws = find_workspace(&start, host.home.as_deref());
    let source = ws.config.as_deref().map(Source::read).transpose()?;
    resolve(&ws.dir, source.as_ref(), &host)
}

/// The configuration of the workspace `workspace` (absolute) whose file,
/// if it has one, is `source`.
pub fn resolve(
    workspace: &Path,
    source: Option<&Source>,
    host: &Host,
) -> anyhow::Result<ResolvedConfig> {
    let file = match source {
        Some(s) => s.parse()?,
        None => schema::ConfigFile::default(),
    };
    let id = crate::paths::workspace_id(workspace);
    let home = host.home.as_deref();
    let name = match (&file.name, source) {
        (Some(name), Some(src)) => validate::name(name, src)?,
        _ => default_name(workspace),
    };
    let agent_home = match (&file.agent_home, source) {
        (Some(p), Some(src)) => Some(validate::agent_home(p, workspace, home, src)?),
        _ => host
            .data_dir
            .as_ref()
            .map(|d| crate::paths::agent_home(d, &id)),
    };
    let git_hooks = match (&file.git_hooks, source) {
        (Some(g), Some(src)) => validate::git_hooks(g, src)?,
        _ => GitHooks::default(),
    };
    let seccomp = match (&file.seccomp, source) {
        (Some(s), Some(src)) => validate::seccomp(s, src)?,
        _ => agentvm_vmm::SeccompLevel::default(),
    };
    let ssh = match (&file.ssh, source) {
        (Some(s), Some(src)) => validate::ssh(s, src)?,
        _ => SshConfig::default(),
    };
    let guest_home = host.guest_home();
    let ctx = validate::Context {
        workspace,
        home,
        agent_home: agent_home.as_deref(),
        guest_home: &guest_home,
    };
    let mut merged = merge::Fragment::defaults(workspace);
    let mut plugin_names = Vec::new();
    let mut plugin_files = Vec::new();
    if let (Some(list), Some(src)) = (&file.plugins, source) {
        for entry in list {
            if plugin_names.contains(entry.get_ref()) {
                continue;
            }
            let (fragment, file) = plugins::load(entry, src, &ctx)?;
            merged.apply(fragment);
            plugin_names.push(entry.get_ref().clone());
            plugin_files.extend(file);
        }
    }
    if let Some(src) = source {
        merged.apply(validate::fragment(&file, src, &ctx)?);
    }
    let mut cfg = merged.resolve(workspace, source, name, plugin_names, host);
    secrets::check_hosts(&cfg.secrets, &cfg.network)?;
    cfg.id = id;
    cfg.agent_home = agent_home;
    cfg.git_hooks = git_hooks;
    cfg.seccomp = seccomp;
    cfg.ssh = ssh;
    cfg.plugin_files = plugin_files;
    cfg.guest_user = host.guest_user.clone();
    Ok(cfg)
}

/// A VM name from a directory name: lowercase, runs of anything but
/// `[a-z0-9]` as one `-`, at most 63 characters; `workspace` when nothing
/// is left.
pub fn sanitize_name(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(validate::MAX_NAME);
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "workspace".to_string()
    } else {
        out.to_string()
    }
}

/// The default name of the VM of `workspace`.
pub fn default_name(workspace: &Path) -> String {
    sanitize_name(
        &workspace
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
}

/// `path` with `.` and `..` removed lexically (the path need not exist).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            // At the root, `..` stays at the root.
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
