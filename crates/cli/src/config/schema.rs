//! The configuration file as written: serde types that mirror
//! `.agentvm/config.toml` key for key.
//!
//! Every table denies unknown keys, and every value that is checked after
//! parsing keeps its [`Spanned`] position, so that a mistake is reported at
//! its line. Nothing here applies defaults or resolves paths: that is
//! [`super::validate`] (one file at a time) and [`super::merge`] (all of
//! them together).
//!
//! Plugin files use the same schema; they may not set `name` or `plugins`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A list whose items keep their positions.
pub type SpannedList = Vec<Spanned<String>>;

/// One configuration file: the workspace's, or a plugin's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The VM's name (only in the workspace's file).
    pub name: Option<Spanned<String>>,
    /// Plugins to merge in: built-in names or paths relative to this file
    /// (only in the workspace's file).
    pub plugins: Option<SpannedList>,
    /// CPU and memory.
    pub resources: Option<Resources>,
    /// Host directories shared with the guest.
    pub mounts: Option<Vec<Spanned<Mount>>>,
    /// Host files copied into the guest at `up` (one way).
    pub files: Option<Vec<Spanned<File>>>,
    /// Egress policy and port forwards.
    pub network: Option<Network>,
    /// Environment variables of commands run in the guest.
    pub env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    /// Credentials the guest sees only as placeholders: `NAME = { value =
    /// "${HOST_VAR}" | command = "…", hosts = […] }`.
    pub secrets: Option<BTreeMap<Spanned<String>, Spanned<Secret>>>,
    /// Shell commands run in the guest after boot.
    pub scripts: Option<SpannedList>,
    /// Debian packages the guest image carries.
    pub packages: Option<SpannedList>,
    /// npm packages installed globally in the guest image.
    pub npm: Option<SpannedList>,
    /// Shell commands run on the host around `up` and `down`.
    pub hooks: Option<Hooks>,
    /// Kernel image overriding the guest image's.
    pub kernel: Option<Spanned<String>>,
    /// Initial ramdisk overriding the guest image's.
    pub initrd: Option<Spanned<String>>,
    /// Guest image directory overriding the default image.
    pub image: Option<Spanned<String>>,
    /// Host directory holding the workspace's agent homes (only in the
    /// workspace's file).
    pub agent_home: Option<Spanned<String>>,
    /// `guard` (the default) or `allow`: whether git hooks and executable
    /// git configuration the guest writes are undone (only in the
    /// workspace's file).
    pub git_hooks: Option<Spanned<String>>,
    /// `kill` (the default), `log` or `off`: what the VMM's seccomp
    /// filters do with a system call they do not expect (only in the
    /// workspace's file).
    pub seccomp: Option<Spanned<String>>,
    /// Forwarding the host's ssh-agent (only in the workspace's file).
    pub ssh: Option<Spanned<Ssh>>,
}

/// `[ssh]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Whether the guest gets the host's ssh-agent (`SSH_AUTH_SOCK`).
    pub agent: Option<bool>,
    /// `SHA256:…` fingerprints of the only keys the guest may see and use.
    pub keys: Option<SpannedList>,
    /// The only servers the keys may log in to (by their host keys in the
    /// host's known_hosts).
    pub hosts: Option<SpannedList>,
}

/// `[resources]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Number of vCPUs.
    pub vcpus: Option<Spanned<i64>>,
    /// Guest memory limit in MiB.
    pub memory_mib: Option<Spanned<i64>>,
    /// Whether the guest's root keeps its changes across `down`/`up`.
    pub persistent_root: Option<bool>,
    /// Cap of the console and network audit logs, MiB each.
    pub log_max_mib: Option<Spanned<i64>>,
    /// The network stack's memory budget, MiB.
    pub net_memory_mib: Option<Spanned<i64>>,
    /// Empty hot-plug slots for `agentvm mount`.
    pub hotplug_slots: Option<Spanned<i64>>,
}

/// One `[[mounts]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Host directory: absolute, `~/…`, or relative to the workspace.
    pub source: Spanned<String>,
    /// Absolute path in the guest.
    pub target: Spanned<String>,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub read_only: bool,
    /// Whether `up` creates a missing source directory.
    #[serde(default)]
    pub create: bool,
}

/// One `[[files]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Host file: absolute, `~/…`, or relative to the workspace.
    pub source: Spanned<String>,
    /// Guest path: absolute, or `~/…` in the guest user's home.
    pub target: Spanned<String>,
    /// Octal permission bits (`"0644"`); default: the source's.
    pub mode: Option<Spanned<String>>,
}

/// `[network]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// `off`, `filtered` or `open`.
    pub mode: Option<Spanned<String>>,
    /// Names the guest may resolve and reach in `filtered` mode.
    pub domains: Option<SpannedList>,
    /// Destination ports allowed in `filtered` mode.
    pub ports: Option<Vec<Spanned<i64>>>,
    /// Names answered with a fixed IPv4 address (`NAME = "IPV4"`), allowed
    /// in `filtered` mode; the host's 127.0.0.0/16 is reachable this way.
    pub hosts: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    /// `"HOST:GUEST"` port forwards from the host's loopback into the guest.
    pub forwards: Option<SpannedList>,
    /// A PEM file of extra CA certificates trusted when the network stack
    /// verifies an upstream it re-encrypts to (relative to the workspace).
    pub upstream_ca: Option<Spanned<String>>,
}

/// One `[secrets]` entry: where the real value comes from (exactly one of
/// `value` and `command`) and the hosts it may be sent to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Text with `${HOST_VAR}` references, as in `[env]`.
    pub value: Option<Spanned<String>>,
    /// A shell command run on the host at `up`; its output, trimmed.
    pub command: Option<Spanned<String>>,
    /// Names the real value is sent to (each an allowed name).
    pub hosts: Option<SpannedList>,
}

/// `[hooks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Before the VM starts.
    pub pre_up: Option<SpannedList>,
    /// Once the VM is up and the scripts have run.
    pub post_up: Option<SpannedList>,
    /// Before the VM is stopped.
    pub pre_down: Option<SpannedList>,
    /// After the VM has stopped.
    pub post_down: Option<SpannedList>,
}
