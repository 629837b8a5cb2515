//! Handing the secrets to the VMM process: `up` writes them to the stdin
//! pipe of `agentvm __vmm`, which reads them before anything else.
//!
//! Why a pipe: the values must reach the process that runs the network
//! stack, and nothing else. A pipe keeps them off every disk (the state
//! directory's `config.json` may be on a disk-backed `/tmp`) and out of the
//! process's environment (which `/proc/PID/environ` shows for its life,
//! and which `up` clears for `__vmm` on purpose); stdin is the descriptor
//! the VMM's hygiene keeps (it closes everything from 3 up). The VMM reads
//! to end of file, at most [`MAX_HANDOFF`] bytes, so `up` closing its end
//! is the message's end; a VM without secrets gets `/dev/null`, which reads
//! as no message.
//!
//! The message is JSON: [`Handoff`]. The types the network stack takes are
//! mirrored in [`Secret`], [`SecretValue`] and [`InterceptConfig`] until
//! `agentvm_net::intercept` exists on this branch; then `__vmm` hands
//! [`Handoff::intercept_config`]'s parts to `StackConfig::intercept`.

use std::io::{Read, Write};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The most bytes `__vmm` reads from its stdin.
pub const MAX_HANDOFF: u64 = 8 << 20;

/// What `up` tells the VMM about interception.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
pub struct Handoff {
    /// The workspace CA's certificate (PEM).
    pub ca_cert_pem: String,
    /// The workspace CA's private key (PEM).
    pub ca_key_pem: String,
    /// The secrets, values and all.
    pub secrets: Vec<HandoffSecret>,
    /// Extra roots for verifying upstreams (`network.upstream_ca`), PEM.
    pub upstream_roots_pem: Vec<String>,
}

/// One secret in a [`Handoff`].
#[derive(Serialize, Deserialize, PartialEq, Eq)]
pub struct HandoffSecret {
    /// The guest variable.
    pub name: String,
    /// What the guest holds.
    pub placeholder: String,
    /// The real value.
    pub value: String,
    /// Where the real value may go.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.secrets.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Handoff")
            .field("secrets", &names)
            .finish_non_exhaustive()
    }
}

/// A secret's real value: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: String) -> SecretValue {
        SecretValue(value)
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// Stand-in for `agentvm_net::secrets::Secret`.
// Read by the network stack once `__vmm` hands it over (TODO(i15-intercept)).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Secret {
    /// The guest variable (for the audit log).
    pub name: String,
    /// What the guest sends.
    pub placeholder: String,
    /// What goes upstream instead.
    pub value: SecretValue,
    /// The only names it goes to.
    pub hosts: Vec<String>,
}

/// Stand-in for `agentvm_net::intercept::InterceptConfig`.
// Read by the network stack once `__vmm` hands it over (TODO(i15-intercept)).
#[allow(dead_code)]
#[derive(Clone)]
pub struct InterceptConfig {
    /// The CA the guest trusts (PEM).
    pub ca_cert_pem: String,
    /// Its key (PEM).
    pub ca_key_pem: String,
    /// The secrets.
    pub secrets: Vec<Secret>,
    /// Extra upstream roots (PEM).
    pub upstream_roots_pem: Vec<String>,
}

impl std::fmt::Debug for InterceptConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterceptConfig")
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl Handoff {
    /// The network stack's interception settings.
    pub fn intercept_config(self) -> InterceptConfig {
        InterceptConfig {
            ca_cert_pem: self.ca_cert_pem,
            ca_key_pem: self.ca_key_pem,
            secrets: self
                .secrets
                .into_iter()
                .map(|s| Secret {
                    name: s.name,
                    placeholder: s.placeholder,
                    value: SecretValue::new(s.value),
                    hosts: s.hosts,
                })
                .collect(),
            upstream_roots_pem: self.upstream_roots_pem,
        }
    }

    /// Writes the message to `to` (the VMM's stdin) and closes it.
    pub fn send(&self, mut to: impl Write) -> anyhow::Result<()> {
        let json = serde_json::to_vec(self).context("cannot encode the secrets")?;
        to.write_all(&json)
            .and_then(|()| to.flush())
            .context("cannot hand the secrets to the VMM process")
    }

    /// Reads the message from `from` to its end: `None` when it is empty.
    pub fn receive(from: impl Read) -> anyhow::Result<Option<Handoff>> {
        let mut buf = Vec::new();
        from.take(MAX_HANDOFF + 1)
            .read_to_end(&mut buf)
            .context("cannot read the secrets from stdin")?;
        if buf.is_empty() {
            return Ok(None);
        }
        if buf.len() as u64 > MAX_HANDOFF {
            bail!("the secrets on stdin exceed {MAX_HANDOFF} bytes");
        }
        serde_json::from_slice(&buf)
            .map(Some)
            .context("the secrets on stdin are damaged")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handoff {
        Handoff {
            ca_cert_pem: "CERT".into(),
            ca_key_pem: "KEY".into(),
            secrets: vec![HandoffSecret {
                name: "K".into(),
                placeholder: "sk-placeholder".into(),
                value: "sk-real-hunter2".into(),
                hosts: vec!["api.test".into()],
            }],
            upstream_roots_pem: vec!["ROOT".into()],
        }
    }

    #[test]
    fn a_handoff_goes_through_a_pipe_and_an_empty_one_is_none() {
        let mut pipe = Vec::new();
        sample().send(&mut pipe).unwrap();
        let got = Handoff::receive(&pipe[..]).unwrap().unwrap();
        assert!(got == sample());
        assert!(Handoff::receive(&[][..]).unwrap().is_none());
        assert!(Handoff::receive(&b"{\"ca\":"[..]).is_err());
        let big = vec![b' '; (MAX_HANDOFF + 1) as usize];
        let e = Handoff::receive(&big[..]).unwrap_err();
        assert!(format!("{e:#}").contains("exceed"), "{e:#}");
    }

    #[test]
    fn values_never_show_in_debug_output() {
        let h = sample();
        assert!(!format!("{h:?}").contains("hunter2"));
        let cfg = h.intercept_config();
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<secret>"),
            "{shown}"
        );
        assert_eq!(cfg.secrets[0].value.expose(), "sk-real-hunter2");
    }
}
