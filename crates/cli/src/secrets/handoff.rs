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
//! The message is JSON: [`Handoff`]. `__vmm` turns it into the network
//! stack's [`InterceptConfig`] ([`Handoff::intercept_config`], which
//! validates every secret again: the pipe is the CLI's own, but the stack
//! must never start with a value that could break a request's head) and
//! sets `StackConfig::intercept` to it.

use std::io::{Read, Write};

use agentvm_net::intercept::InterceptConfig;
use agentvm_net::secrets::{Secret, SecretValue};
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

impl Handoff {
    /// The network stack's interception settings, every secret validated
    /// ([`agentvm_net::secrets::validate_all`]; hosts normalized).
    pub fn intercept_config(self) -> anyhow::Result<InterceptConfig> {
        let secrets: Vec<Secret> = self
            .secrets
            .into_iter()
            .map(|s| Secret {
                name: s.name,
                placeholder: s.placeholder,
                value: SecretValue::new(s.value),
                hosts: s.hosts,
            })
            .collect();
        let secrets = agentvm_net::secrets::validate_all(&secrets)
            .map_err(|e| anyhow::anyhow!("{}", super::describe(&e)))
            .context("the secrets handed to the VMM are not usable")?;
        Ok(InterceptConfig {
            ca_cert_pem: self.ca_cert_pem,
            ca_key_pem: SecretValue::new(self.ca_key_pem),
            secrets,
            upstream_roots_pem: self.upstream_roots_pem,
            // Whatever the user's machine trusts, the stack trusts too.
            host_roots: true,
        })
    }

    /// Writes the message to `to` (the VMM's stdin) and closes it.
    pub fn send(&self, mut to: impl Write) -> anyhow::Result<()> {
        // The encoded message holds the values: zeroed once written.
        let json =
            zeroize::Zeroizing::new(serde_json::to_vec(self).context("cannot encode the secrets")?);
        to.write_all(&json)
            .and_then(|()| to.flush())
            .context("cannot hand the secrets to the VMM process")
    }

    /// Reads the message from `from` to its end: `None` when it is empty.
    pub fn receive(from: impl Read) -> anyhow::Result<Option<Handoff>> {
        // Zeroed when read: it holds the values.
        let mut buf = zeroize::Zeroizing::new(Vec::new());
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
        let cfg = h.intercept_config().unwrap();
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("KEY") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert_eq!(cfg.secrets[0].value.expose(), "sk-real-hunter2");
        assert_eq!(cfg.ca_key_pem.expose(), "KEY");
    }

    #[test]
    fn a_handoff_with_a_value_that_would_break_a_header_is_refused() {
        let mut h = sample();
        h.secrets[0].value = "sk-real\r\nX-Evil: 1".into();
        let e = h.intercept_config().unwrap_err();
        let shown = format!("{e:#}");
        assert!(shown.contains("secret K"), "{shown}");
        assert!(!shown.contains("sk-real"), "{shown}");
        let mut h = sample();
        h.secrets[0].hosts = vec!["API.Test.".into()];
        assert_eq!(h.intercept_config().unwrap().secrets[0].hosts, ["api.test"]);
    }
}
