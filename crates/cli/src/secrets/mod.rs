//! Secrets at `up` (and `boot`): the real values read on the host, the
//! placeholders the guest gets instead, the workspace CA the guest trusts,
//! and the hand-off of all of it to the VMM process.
//!
//! What happens, in order (`lifecycle/up.rs`):
//! 1. The configuration is approved ([`crate::trust`]): a `[secrets]`
//!    entry's command, its `${HOST_VAR}` and its hosts are part of the
//!    approved view, so an unapproved file runs no command and sends no
//!    value anywhere new.
//! 2. [`resolve`] reads each value in this (the CLI's) process: the host
//!    variables of `value`, or the trimmed output of `command` (`sh -c`, in
//!    the workspace, stdin closed, at most [`COMMAND_TIMEOUT`] and
//!    [`MAX_VALUE`] bytes). A secret whose value is missing or empty is left
//!    out of the guest, with a warning for those the user wrote (a built-in
//!    plugin's key the user does not have is normal), as `[env]` does.
//! 3. [`placeholder::generate_all`] draws each secret's placeholder.
//! 4. The workspace CA ([`ca`]) is loaded or made.
//! 5. The VMM process gets the values, placeholders, hosts, the CA and its
//!    key, and the upstream roots on its stdin ([`handoff`]): never on disk,
//!    never in an environment. `config.json` keeps only the names and hosts
//!    (for `status`).
//! 6. The guest agent gets `NAME=placeholder` among its environment and the
//!    CA's certificate in the same `Configure` request
//!    ([`guest_env`]); it installs the certificate in the guest's trust
//!    store.

pub mod ca;
pub mod flags;
pub mod handoff;
pub mod placeholder;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentvm_net::secrets::{Secret, SecretError, SecretValue, MAX_SECRET_LEN};
use anyhow::bail;

use crate::config::{Origin, SecretEntry, SecretSource};

/// How long a secret's command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest value read (a command's output included).
pub const MAX_VALUE: usize = 64 << 10;

/// A secret ready for one VM.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The guest variable.
    pub name: String,
    /// What the guest holds.
    pub placeholder: String,
    /// The real value.
    pub value: SecretValue,
    /// Names the real value may go to.
    pub hosts: Vec<String>,
}

/// The secrets of one `up`: those ready, and why the others are left out.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Secrets with a value, each with its placeholder.
    pub secrets: Vec<Resolved>,
    /// Messages for the secrets left out that are worth a warning.
    pub warnings: Vec<String>,
}

/// Reads every secret's value (`lookup` is the host's environment; commands
/// run in `workspace`) and draws the placeholders.
pub fn resolve(
    secrets: &BTreeMap<String, SecretEntry>,
    lookup: &dyn Fn(&str) -> Option<String>,
    workspace: &Path,
) -> anyhow::Result<Resolution> {
    let mut out = Resolution::default();
    let mut ready: Vec<(&String, String, &SecretEntry)> = Vec::new();
    for (name, entry) in secrets {
        let user_wrote = !matches!(entry.origin, Origin::BuiltIn(_));
        let value = match &entry.source {
            SecretSource::Value(v) => v.expand(lookup).map_err(|var| {
                format!(
                    "{}: secret {name} is left out of the guest: host variable {var} is not set",
                    entry.origin
                )
            }),
            SecretSource::Command(c) => run_command(c, workspace).map_err(|why| {
                format!(
                    "{}: secret {name} is left out of the guest: its command `{}` {why}",
                    entry.origin,
                    crate::escape::line(c)
                )
            }),
        };
        match value {
            Ok(v) if v.len() > MAX_VALUE => out.warnings.push(format!(
                "{}: secret {name} is left out of the guest: its value is over {MAX_VALUE} bytes",
                entry.origin
            )),
            Ok(v) if v.is_empty() => {
                if user_wrote {
                    out.warnings.push(format!(
                        "{}: secret {name} is left out of the guest: its value is empty",
                        entry.origin
                    ));
                }
            }
            Ok(v) => ready.push((name, v, entry)),
            Err(why) => {
                // A command that fails is always worth saying.
                if user_wrote || matches!(entry.source, SecretSource::Command(_)) {
                    out.warnings.push(why);
                }
            }
        }
    }
    let values: Vec<&str> = ready.iter().map(|(_, v, _)| v.as_str()).collect();
    let placeholders = placeholder::generate_all(&values, &mut placeholder::os_random)?;
    for ((name, value, entry), placeholder) in ready.into_iter().zip(placeholders) {
        let resolved = Resolved {
            name: name.clone(),
            placeholder,
            value: SecretValue::new(value),
            hosts: entry.hosts.clone(),
        };
        // What the network stack would refuse (a value with a line break,
        // one too long for a header) is left out here, with the reason.
        match resolved.to_net().validated() {
            Ok(valid) => out.secrets.push(Resolved {
                hosts: valid.hosts,
                ..resolved
            }),
            Err(e) => out.warnings.push(format!(
                "{}: {}; it is left out of the guest",
                entry.origin,
                describe(&e)
            )),
        }
    }
    Ok(out)
}

impl Resolved {
    /// The network stack's view of this secret (not yet validated).
    pub fn to_net(&self) -> Secret {
        Secret {
            name: self.name.clone(),
            placeholder: self.placeholder.clone(),
            value: self.value.clone(),
            hosts: self.hosts.clone(),
        }
    }
}

/// Why the network stack refuses a secret, for the user (never with the
/// value).
pub fn describe(e: &SecretError) -> String {
    match e {
        SecretError::BadPlaceholder(n) => {
            format!("secret {n}: its placeholder is not usable (a bug in agentvm)")
        }
        SecretError::BadValue(n) => format!(
            "secret {n}: its value must be 1 to {MAX_SECRET_LEN} bytes without control \
             characters (no line breaks or tabs)"
        ),
        SecretError::Overlap(a, b) => {
            format!("secrets {a} and {b}: their placeholders overlap (a bug in agentvm)")
        }
        SecretError::BadHost { secret, source } => {
            format!("secret {secret}: one of its hosts is not a DNS name: {source}")
        }
        SecretError::NoHost(n) => format!("secret {n} is bound to no host"),
    }
}

/// Runs a secret's command: its stdout, trimmed, or why not.
fn run_command(command: &str, dir: &Path) -> Result<String, String> {
    run_command_within(command, dir, COMMAND_TIMEOUT)
}

/// [`run_command`], giving it `timeout`.
fn run_command_within(command: &str, dir: &Path, timeout: Duration) -> Result<String, String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let Some(mut stdout) = child.stdout.take() else {
        return Err("has no output pipe".into());
    };
    // Read on a thread, so a command that never ends (or leaves a child
    // holding its output open) cannot hold `up` past the timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let read = (&mut stdout)
            .take(MAX_VALUE as u64 + 1)
            .read_to_end(&mut buf);
        let _ = tx.send(read.map(|_| buf));
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("ran over {} s", timeout.as_secs_f32()));
            }
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("failed ({status})"));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let out = match rx.recv_timeout(left.max(Duration::from_millis(100))) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot be read: {e}")),
        Err(_) => return Err("left its output open".into()),
    };
    if out.len() > MAX_VALUE {
        return Err(format!("printed more than {MAX_VALUE} bytes"));
    }
    let text = String::from_utf8(out).map_err(|_| "printed something that is not UTF-8")?;
    Ok(text.trim().to_string())
}

/// The guest's environment: the `[env]` variables and each secret's name
/// set to its placeholder, sorted by name (a secret never shares a name
/// with an `[env]` entry: the configuration keeps them apart).
pub fn guest_env(env: &[(String, String)], secrets: &[Resolved]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| !secrets.iter().any(|s| &s.name == k))
        .cloned()
        .chain(
            secrets
                .iter()
                .map(|s| (s.name.clone(), s.placeholder.clone())),
        )
        .collect();
    out.sort();
    out
}

/// What the VMM says when its stack intercepts: each secret's name and
/// the hosts it is swapped in for (never a value or a placeholder).
pub fn intercept_line(config: &agentvm_net::intercept::InterceptConfig) -> String {
    let bound: Vec<String> = config
        .secrets
        .iter()
        .map(|s| format!("{} -> {}", s.name, s.hosts.join(", ")))
        .collect();
    crate::escape::line(&format!(
        "TLS interception is on for the secrets' hosts: {}",
        bound.join("; ")
    ))
    .into_owned()
}

/// The hand-off for the VMM process: the secrets validated together as
/// the network stack will ([`agentvm_net::secrets::validate_all`]), so a
/// secret it would refuse stops `up` (or `boot`) here, with a message.
pub fn handoff(
    ca: &ca::Ca,
    secrets: &[Resolved],
    upstream_roots_pem: Vec<String>,
) -> anyhow::Result<handoff::Handoff> {
    let net: Vec<Secret> = secrets.iter().map(Resolved::to_net).collect();
    let valid = match agentvm_net::secrets::validate_all(&net) {
        Ok(valid) => valid,
        Err(e) => bail!("{}", describe(&e)),
    };
    Ok(handoff::Handoff {
        ca_cert_pem: ca.cert_pem.clone(),
        ca_key_pem: ca.key_pem.expose().to_string(),
        secrets: valid
            .into_iter()
            .map(|s| handoff::HandoffSecret {
                value: s.value.expose().to_string(),
                name: s.name,
                placeholder: s.placeholder,
                hosts: s.hosts,
            })
            .collect(),
        upstream_roots_pem,
    })
}

#[cfg(test)]
mod tests;
