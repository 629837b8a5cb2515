//! What `up` (and `boot --ssh-agent`) gathers on the host for the relay:
//! the host agent's socket, the allowed keys, and the host keys of the
//! allowed servers from the host's known_hosts.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::filter::Policy;
use super::wire;
use crate::config::SshConfig;

/// The forwarding a VM starts with, as the state directory's snapshot
/// keeps it (no secrets: a socket path and public keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The host agent's socket (`SSH_AUTH_SOCK` when `up` ran).
    pub socket: PathBuf,
    /// `SHA256:…` fingerprints of the allowed keys; empty: all.
    pub keys: Vec<String>,
    /// Allowed servers' host keys (base64 blobs, as known_hosts has them);
    /// `None`: any server.
    pub host_keys: Option<Vec<String>>,
}

impl Forward {
    /// The forwarding `cfg` asks for: `None` when it asks for none, or
    /// (with a warning) when the host has no agent (`auth_sock`, the
    /// value of `SSH_AUTH_SOCK`). Host keys are read from `known_hosts`.
    pub fn prepare(
        cfg: &SshConfig,
        auth_sock: Option<&OsStr>,
        known_hosts: &[PathBuf],
    ) -> anyhow::Result<Option<Forward>> {
        if !cfg.agent {
            return Ok(None);
        }
        let socket = match auth_sock.map(PathBuf::from) {
            Some(p) if p.is_absolute() => p,
            _ => {
                eprintln!(
                    "agentvm: warning: `[ssh] agent = true`, but SSH_AUTH_SOCK is not set (or \
                     not an absolute path): the guest gets no ssh-agent (start one, \
                     `eval $(ssh-agent)` and `ssh-add`, then `agentvm down` and `agentvm up`)"
                );
                return Ok(None);
            }
        };
        let host_keys = if cfg.hosts.is_empty() {
            None
        } else {
            let mut keys = Vec::new();
            for host in &cfg.hosts {
                let found = host_keys(host, known_hosts)?;
                if found.is_empty() {
                    bail!(
                        "`[ssh] hosts` names {host}, but no known_hosts file of this host ({}) \
                         has its host key: connect once with `ssh {host}` on this host, or \
                         remove it from the list",
                        known_hosts
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                keys.extend(found);
            }
            keys.sort();
            keys.dedup();
            Some(keys)
        };
        Ok(Some(Forward {
            socket,
            keys: cfg.keys.clone(),
            host_keys,
        }))
    }

    /// The filter's policy.
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let keys = if self.keys.is_empty() {
            None
        } else {
            let parsed: Option<Vec<_>> = self
                .keys
                .iter()
                .map(|k| wire::parse_fingerprint(k))
                .collect();
            Some(parsed.context("a key fingerprint in the snapshot is not one")?)
        };
        let host_keys = match &self.host_keys {
            None => None,
            Some(list) => {
                let parsed: Option<Vec<_>> = list.iter().map(|k| wire::base64_decode(k)).collect();
                Some(parsed.context("a host key in the snapshot is not base64")?)
            }
        };
        Ok(Policy { keys, host_keys })
    }
}

/// The host's known_hosts files that exist: the user's and the system's.
pub fn known_hosts_files(home: Option<&Path>) -> Vec<PathBuf> {
    home.map(|h| h.join(".ssh/known_hosts"))
        .into_iter()
        .chain([
            PathBuf::from("/etc/ssh/ssh_known_hosts"),
            PathBuf::from("/etc/ssh/ssh_known_hosts2"),
        ])
        .filter(|p| p.is_file())
        .collect()
}

/// The host keys (base64 blobs) `files` hold for `host`, found by
/// `ssh-keygen -F` (which also matches hashed entries). Revoked keys and
/// certificate authorities are not host keys and are left out.
pub fn host_keys(host: &str, files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    Ok(parse_known_hosts(&known_hosts_lines(host, files)?))
}

/// The known_hosts lines of `files` for `host` (`ssh-keygen -F`'s
/// output: hashed or not, markers included, comments left out).
pub fn known_hosts_lines(host: &str, files: &[PathBuf]) -> anyhow::Result<String> {
    let mut lines = String::new();
    for file in files {
        let out = Command::new("ssh-keygen")
            .arg("-F")
            .arg(host)
            .arg("-f")
            .arg(file)
            .output()
            .context("cannot run ssh-keygen to look up `[ssh] hosts` (install openssh-client)")?;
        // Exit status 1: not found.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.trim_start().starts_with('#') && !line.trim().is_empty() {
                lines.push_str(line);
                lines.push('\n');
            }
        }
    }
    Ok(lines)
}

/// The most known_hosts text the guest gets; a larger file is left out.
const MAX_KNOWN_HOSTS: usize = 512 << 10;

/// What the guest learns of the host user with the forwarded agent
/// (public data): the known_hosts entries of the allowed servers (all of
/// them when any server is allowed) and git's global user.name and
/// user.email.
pub fn identity(cfg: &SshConfig, known_hosts: &[PathBuf]) -> agentvm_protocol::frame::Identity {
    let hosts_text = if cfg.hosts.is_empty() {
        known_hosts
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        cfg.hosts
            .iter()
            .filter_map(|h| known_hosts_lines(h, known_hosts).ok())
            .collect()
    };
    let known_hosts = if hosts_text.len() > MAX_KNOWN_HOSTS {
        eprintln!(
            "agentvm: warning: your known_hosts files hold more than {} KiB; the guest does not \
             get them (list the servers it needs in `[ssh] hosts`)",
            MAX_KNOWN_HOSTS >> 10
        );
        Vec::new()
    } else {
        hosts_text.into_bytes()
    };
    agentvm_protocol::frame::Identity {
        known_hosts,
        git_name: git_global("user.name"),
        git_email: git_global("user.email"),
    }
}

/// `git config --global KEY` of the host user (run outside any
/// repository: the workspace's is the guest's to write).
fn git_global(key: &str) -> Option<Vec<u8>> {
    let out = Command::new("git")
        .args(["config", "--global", "--get", key])
        .current_dir("/")
        .output()
        .ok()?;
    let mut value = out.stdout;
    while value.last().is_some_and(|b| *b == b'\n') {
        value.pop();
    }
    (out.status.success() && !value.is_empty()).then_some(value)
}

/// The key blobs (base64) of known_hosts lines.
fn parse_known_hosts(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let first = fields.next()?;
            if first.starts_with('#') || first.starts_with('@') {
                return None;
            }
            let _kind = fields.next()?;
            let blob = fields.next()?;
            wire::base64_decode(blob).map(|_| blob.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOB: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIGb/dHbyceCiytJLDeVE+j5d52BCa/CPaI+BQaHz6/IQ";

    #[test]
    fn known_hosts_lines_give_their_keys_but_not_revoked_or_ca_ones() {
        let text = format!(
            "# Host github.com found: line 3\n\
             github.com ssh-ed25519 {BLOB}\n\
             |1|c2FsdA==|aGFzaA== ssh-ed25519 {BLOB} comment\n\
             @revoked github.com ssh-ed25519 AAAA\n\
             @cert-authority *.example.com ssh-ed25519 {BLOB}\n\
             github.com ssh-rsa not*base64\n"
        );
        assert_eq!(parse_known_hosts(&text), [BLOB, BLOB]);
    }

    #[test]
    fn host_keys_are_found_through_ssh_keygen_also_when_hashed() {
        if Command::new("ssh-keygen").arg("-?").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "ssh-keygen is needed");
            eprintln!("skipped: no ssh-keygen (apt-get install openssh-client)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("github.com ssh-ed25519 {BLOB}\n")).unwrap();
        // ssh-keygen -H hashes the names in place.
        let hashed = Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        assert!(hashed.status.success());
        assert!(!std::fs::read_to_string(&file)
            .unwrap()
            .contains("github.com"));
        let files = [file];
        assert_eq!(host_keys("github.com", &files).unwrap(), [BLOB]);
        assert!(host_keys("gitlab.com", &files).unwrap().is_empty());
    }

    #[test]
    fn the_guest_gets_only_the_allowed_servers_known_hosts() {
        if Command::new("ssh-keygen").arg("-?").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "ssh-keygen is needed");
            eprintln!("skipped: no ssh-keygen (apt-get install openssh-client)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let text = format!("github.com ssh-ed25519 {BLOB}\nsecret.corp ssh-ed25519 {BLOB}\n");
        std::fs::write(&file, &text).unwrap();
        let files = [file];
        let all = SshConfig {
            agent: true,
            ..SshConfig::default()
        };
        assert_eq!(identity(&all, &files).known_hosts, text.as_bytes());
        let some = SshConfig {
            hosts: vec!["github.com".into()],
            ..all
        };
        let only = String::from_utf8(identity(&some, &files).known_hosts).unwrap();
        assert_eq!(only, format!("github.com ssh-ed25519 {BLOB}\n"));
    }

    #[test]
    fn forwarding_needs_an_agent_and_known_hosts_for_listed_hosts() {
        let off = SshConfig::default();
        assert_eq!(
            Forward::prepare(&off, Some(OsStr::new("/a")), &[]).unwrap(),
            None
        );
        let on = SshConfig {
            agent: true,
            keys: vec!["SHA256:vJEOMYi0KD/7DnFpBKm8W86L+2eE5J+s0tkOeF1rh1w".into()],
            hosts: Vec::new(),
        };
        assert_eq!(Forward::prepare(&on, None, &[]).unwrap(), None);
        assert_eq!(
            Forward::prepare(&on, Some(OsStr::new("rel")), &[]).unwrap(),
            None
        );
        let fwd = Forward::prepare(&on, Some(OsStr::new("/run/agent")), &[])
            .unwrap()
            .unwrap();
        assert_eq!(fwd.socket, Path::new("/run/agent"));
        let policy = fwd.policy().unwrap();
        assert_eq!(policy.keys.unwrap().len(), 1);
        assert_eq!(policy.host_keys, None);
        let hosts = SshConfig {
            hosts: vec!["nowhere.example".into()],
            ..on
        };
        let e = Forward::prepare(&hosts, Some(OsStr::new("/run/agent")), &[]).unwrap_err();
        assert!(e.to_string().contains("no known_hosts file"), "{e}");
    }
}
