//! The commented configuration file `agentvm init` writes: every key
//! explained, its default shown, only `name` and `plugins` set (so the file
//! resolves to exactly the defaults).

use std::fmt::Write as _;
use std::path::Path;

use super::plugins::BUILT_INS;
use super::{DEFAULT_PORTS, MIN_DEFAULT_MEMORY_MIB};

/// The file for the workspace `workspace` with VM name `name` and the
/// `plugins` entries as they should be written.
pub fn init_text(name: &str, workspace: &Path, plugins: &[String]) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut builtins = String::new();
    for b in BUILT_INS {
        let _ = writeln!(builtins, "#   {:<12} {}", b.name, b.about);
    }
    let plugins = plugins
        .iter()
        .map(|p| quote(p))
        .collect::<Vec<_>>()
        .join(", ");
    let ports = DEFAULT_PORTS.map(|p| p.to_string()).join(", ");
    let workspace = workspace.display();
    format!(
        r#"# agentvm configuration of this workspace, read by `agentvm up`.
# Every key is optional: the commented-out lines show the defaults or an
# example. `agentvm config` prints the result, with the plugins merged in.

# The VM's name: lowercase letters, digits and '-'.
# Default: the workspace directory's name.
name = {name}

# Plugins merged into this file: built-in names, or paths of plugin files
# (relative to this file), which have this file's keys except name and
# plugins. Their lists add to this file's; for single values and [env]
# keys this file wins. Built-in plugins (API and login domains, API keys
# bound as [secrets], a per-workspace agent home mounted at ~/.claude and the
# like, the agent installed in the guest image):
{builtins}plugins = [{plugins}]

# Kernel, initrd or guest image directory to boot instead of the default
# image (`agentvm image build`); relative paths are relative to this file.
# kernel = "vmlinux"
# initrd = "initrd.img"
# image = "/path/to/image"

# Shell commands run in the guest after boot (in the workspace), after the
# plugins' own; one that fails makes `up` fail.
# scripts = ["make setup"]

# Debian packages and npm packages the guest image carries (built into the
# image, not installed at every `up`).
# packages = ["build-essential"]
# npm = ["typescript"]

# Where the agents' state (logins, settings) lives on this host: one
# directory per workspace, never your own ~/.claude. Default:
# $XDG_DATA_HOME/agentvm/homes/<workspace id>.
# agent_home = "~/agent-homes/this-project"

# "guard": undo the git hooks and executable git settings the guest writes
# in shared repositories (after every command and at `down`, reported);
# "allow": leave them.
# git_hooks = "guard"

# What the VMM's seccomp filters do with a system call its threads never
# make: "kill" ends the VM and names the call; "log" lets it through and
# the kernel logs it; "off" runs without filters. "log" and "off" leave a
# guest that escapes into the VMM more of the host: they need approval.
# seccomp = "kill"

[resources]
# Number of vCPUs. Default: all of the host's CPUs.
# vcpus = 4
# Guest memory in MiB. Default: half of the host's memory, at least
# {min_memory}. A limit, not a reservation: memory the guest does not use
# stays with the host.
# memory_mib = {min_memory}
# Keep the guest root's changes (`sudo apt-get install …`) across down/up,
# in a per-workspace layer on this host. Default: in memory, gone at down.
# persistent_root = false
# Cap of console.log and net-audit.jsonl in MiB each; the previous file is
# kept as .1. Default: 16.
# log_max_mib = 16
# Memory the network stack may take for its connections, MiB; connections
# past it are refused (RST). Default: 64.
# net_memory_mib = 64
# Empty device slots for `agentvm mount` (live mounts while the VM runs);
# 0 turns live mounts off. Default: 4.
# hotplug_slots = 4

[network]
# "off": no network. "filtered": only the domains below, on the ports
# below. "open": every public address (private, LAN and host addresses
# only through `hosts` pins, in every mode).
# mode = "filtered"
# Names the guest may reach in filtered mode; a name covers its
# subdomains (github.com covers api.github.com). Plugins add their own.
# `agentvm net allow NAME` adds one to the running VM until it stops;
# `agentvm net log` shows what the guest asked for.
# domains = ["github.com"]
# Destination ports allowed in filtered mode, and the only ports a
# `hosts` pin opens in any mode.
# ports = [{ports}]
# Names answered with a fixed IPv4 address, exactly (not their
# subdomains), reachable on the ports above. The host's own loopback
# (127.0.0.0/16) and private addresses are reachable only this way: the
# guest is given 198.18.0.1 for 127.0.0.1, say. 0.0.0.0, broadcast,
# multicast and this host's other addresses cannot be pinned.
# hosts = {{ "api.test" = "127.0.0.1" }}
# Host ports forwarded into the guest, "HOST:GUEST" (on the host's
# loopback only).
# forwards = ["8080:80"]
# Extra CA certificates (PEM, relative to the workspace) trusted when the
# network stack verifies the real host of a flow that carries a secret.
# upstream_ca = "certs/internal-ca.pem"

[ssh]
# Give the guest your ssh-agent (SSH_AUTH_SOCK of `agentvm up`), so `git
# push` over ssh works while the keys stay on this host; the guest can list
# and sign with the keys, never add, remove or lock them. It also gets your
# known_hosts and git user.name/user.email. Needs approval.
# agent = true
# Only these keys (`ssh-add -l` prints their fingerprints):
# keys = ["SHA256:..."]
# Only logins to these servers (their host keys from your known_hosts;
# needs OpenSSH 8.9 or later in the guest):
# hosts = ["github.com"]

[env]
# Environment of commands run in the guest. "${{VAR}}" is VAR from the
# host's environment when `agentvm up` runs; an entry whose host variable
# is not set is left out (and `up` warns). $$ is a literal $.
# RUST_LOG = "info"

[secrets]
# Credentials the guest only sees as placeholders: the VMM's network stack
# puts the real value in requests to the listed hosts (allowed names) and
# nowhere else. The value is a host variable, or the trimmed output of a
# command run on the host at `up`.
# GH_TOKEN = {{ command = "gh auth token", hosts = ["api.github.com", "github.com"] }}
# MY_API_KEY = {{ value = "${{MY_API_KEY}}", hosts = ["api.example.com"] }}

[hooks]
# Shell commands run on the host, in the workspace.
# pre_up = ["make build"]
# post_up = []
# pre_down = []
# post_down = []

# Host directories shared with the guest. The workspace
# ({workspace}) is always mounted read-write at the same path in the
# guest; a mount with that target replaces it (to make it read-only, say).
# [[mounts]]
# source = "~/datasets"   # host directory: absolute, ~/..., or relative to the workspace
# target = "/data"        # absolute path in the guest
# read_only = true        # default: false
# create = true           # create a missing source at `up` (default: false, an error)

# Host files copied into the guest at every `up` (one way: what the guest
# changes stays in the guest), for dotfiles you cannot share as a
# directory. The source must be a regular file (a link to one is
# followed) outside every read-write mount; a missing one stops `up`. At
# most 64 files, 1016 KiB each, 8 MiB in all. Needs approval.
# [[files]]
# source = "~/.gitconfig"  # host file: absolute, ~/..., or relative to the workspace
# target = "~/.gitconfig"  # in the guest: absolute, or ~/... in the guest user's home
# mode = "0644"            # default: the source's permissions (never setuid/setgid)
"#,
        name = quote(name),
        min_memory = MIN_DEFAULT_MEMORY_MIB,
    )
}
