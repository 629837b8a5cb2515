//! `agentvm boot`'s secrets: `--secret NAME=HOSTVAR@HOST[,HOST…]`
//! (repeatable) and `--upstream-ca FILE`.
//!
//! `boot` runs the VM in its own process, so the values are read from its
//! environment (`HOSTVAR`) and stay in it; a CA is made for the one boot,
//! in memory. `boot` has no guest agent conversation of its own: it prints
//! each placeholder, and writes the CA's certificate (public) to its state
//! directory and names the file, for whoever drives the guest to pass on
//! (`up` does all of that itself).

use std::path::{Path, PathBuf};

use agentvm_net::{Mode, Policy};
use anyhow::{bail, Context};
use clap::Args;

use super::handoff::Handoff;
use super::Resolved;
use crate::config::env::is_var_name;
use crate::config::validate::check_domain;

/// One `--secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFlag {
    /// The guest variable.
    pub name: String,
    /// The host variable holding the value.
    pub host_var: String,
    /// Where the value may go (lowercase).
    pub hosts: Vec<String>,
}

/// `--secret NAME=HOSTVAR@HOST[,HOST…]`.
pub fn parse_secret(s: &str) -> Result<SecretFlag, String> {
    let usage = "expected NAME=HOSTVAR@HOST[,HOST…], e.g. \
                 ANTHROPIC_API_KEY=ANTHROPIC_API_KEY@api.anthropic.com";
    let (name, rest) = s.split_once('=').ok_or_else(|| format!("{s:?}: {usage}"))?;
    let (host_var, hosts) = rest
        .split_once('@')
        .ok_or_else(|| format!("{s:?}: {usage}"))?;
    for (what, v) in [("NAME", name), ("HOSTVAR", host_var)] {
        if !is_var_name(v) {
            return Err(format!(
                "{s:?}: {what} {v:?} is not a variable name (letters, digits and _, not \
                 starting with a digit)"
            ));
        }
    }
    let mut list = Vec::new();
    for h in hosts.split(',') {
        let h = check_domain(h).map_err(|why| format!("{s:?}: {why}"))?;
        if !list.contains(&h) {
            list.push(h);
        }
    }
    Ok(SecretFlag {
        name: name.to_string(),
        host_var: host_var.to_string(),
        hosts: list,
    })
}

/// `boot`'s secret options.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Secrets")]
pub struct SecretArgs {
    /// Give the guest a placeholder for the value of host variable HOSTVAR
    /// as NAME; the network stack swaps the real value in only on the way
    /// to HOST (each an allowed name; repeatable).
    #[arg(long = "secret", value_name = "NAME=HOSTVAR@HOST[,HOST…]", value_parser = parse_secret)]
    pub secrets: Vec<SecretFlag>,
    /// Also trust the CA certificates in FILE (PEM) when verifying the
    /// upstream of an intercepted flow.
    #[arg(long, value_name = "FILE", requires = "secrets")]
    pub upstream_ca: Option<PathBuf>,
}

impl SecretArgs {
    /// Reads the values (`lookup`, the process's environment), checks the
    /// hosts against `policy` and makes a CA for this boot: the stack's
    /// settings, or `None` without `--secret`.
    pub fn resolve(
        &self,
        policy: Option<&Policy>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<(Handoff, Vec<Resolved>)>> {
        if self.secrets.is_empty() {
            return Ok(None);
        }
        let Some(policy) = policy else {
            bail!("--secret needs a network, and the VM has none without --net");
        };
        let mut values = Vec::new();
        for s in &self.secrets {
            if values
                .iter()
                .any(|(f, _): &(&SecretFlag, String)| f.name == s.name)
            {
                bail!("--secret {}: the name is given twice", s.name);
            }
            if let Some(h) = s
                .hosts
                .iter()
                .find(|h| policy.mode == Mode::Filtered && !policy.allows_name(h))
            {
                bail!(
                    "--secret {}: {h} is not an allowed name; add --allow {h}",
                    s.name
                );
            }
            let value = lookup(&s.host_var)
                .filter(|v| !v.is_empty())
                .with_context(|| {
                    format!(
                        "--secret {}: host variable {} is not set (or is empty)",
                        s.name, s.host_var
                    )
                })?;
            values.push((s, value));
        }
        let plain: Vec<&str> = values.iter().map(|(_, v)| v.as_str()).collect();
        let placeholders =
            super::placeholder::generate_all(&plain, &mut super::placeholder::os_random)?;
        let resolved: Vec<Resolved> = values
            .into_iter()
            .zip(placeholders)
            .map(|((s, value), placeholder)| Resolved {
                name: s.name.clone(),
                placeholder,
                value: agentvm_net::secrets::SecretValue::new(value),
                hosts: s.hosts.clone(),
            })
            .collect();
        let upstream = match &self.upstream_ca {
            Some(path) => vec![read_upstream_ca(path)?],
            None => Vec::new(),
        };
        let ca = super::ca::generate("agentvm boot")?;
        Ok(Some((super::handoff(&ca, &resolved, upstream)?, resolved)))
    }
}

/// Reads an `--upstream-ca` file: PEM certificates, at most
/// [`crate::config::MAX_UPSTREAM_CA_BYTES`].
fn read_upstream_ca(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("--upstream-ca: cannot read {}", path.display()))?;
    if meta.len() > crate::config::MAX_UPSTREAM_CA_BYTES {
        bail!("--upstream-ca: {} is larger than 1 MiB", path.display());
    }
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("--upstream-ca: cannot read {}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!("--upstream-ca: {} holds no PEM certificate", path.display());
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_flags_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_secret("KEY=MY_KEY@API.test,b.test,api.test").unwrap(),
            SecretFlag {
                name: "KEY".into(),
                host_var: "MY_KEY".into(),
                hosts: vec!["api.test".into(), "b.test".into()],
            }
        );
        for (bad, why) in [
            ("KEY", "expected NAME=HOSTVAR@HOST"),
            ("KEY=MY_KEY", "expected NAME=HOSTVAR@HOST"),
            ("1KEY=V@a.test", "NAME \"1KEY\" is not a variable name"),
            ("KEY=V-X@a.test", "HOSTVAR \"V-X\" is not a variable name"),
            ("KEY=V@", "is not a host name"),
            ("KEY=V@a.test,https://b.test", "write the name only"),
            ("KEY=V@1.2.3.4", "is an IP address"),
        ] {
            let e = parse_secret(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn boot_secrets_need_a_network_allowed_hosts_and_set_values() {
        let args = |list: &[&str]| SecretArgs {
            secrets: list.iter().map(|s| parse_secret(s).unwrap()).collect(),
            upstream_ca: None,
        };
        let lookup = |v: &str| (v == "REAL").then(|| "sk-real-hunter2".to_string());
        let mut policy = Policy::new(Mode::Filtered);
        policy.allow("api.test").unwrap();
        assert!(args(&[]).resolve(None, &lookup).unwrap().is_none());
        let (handoff, resolved) = args(&["K=REAL@api.test"])
            .resolve(Some(&policy), &lookup)
            .unwrap()
            .unwrap();
        assert_eq!(resolved[0].value.expose(), "sk-real-hunter2");
        assert!(resolved[0].placeholder.starts_with("sk-"));
        assert!(!resolved[0].placeholder.contains("hunter2"));
        assert_eq!(handoff.secrets[0].hosts, ["api.test"]);
        assert!(handoff.ca_cert_pem.contains("BEGIN CERTIFICATE"));
        for (list, policy, why) in [
            (&["K=REAL@api.test"][..], None, "needs a network"),
            (&["K=REAL@other.test"], Some(&policy), "not an allowed name"),
            (&["K=UNSET@api.test"], Some(&policy), "UNSET is not set"),
            (
                &["K=REAL@api.test", "K=REAL@api.test"],
                Some(&policy),
                "given twice",
            ),
        ] {
            let e = args(list).resolve(policy, &lookup).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{list:?}: {e:#}");
        }
        // In open mode any name will do.
        let open = Policy::new(Mode::Open);
        assert!(args(&["K=REAL@other.test"])
            .resolve(Some(&open), &lookup)
            .is_ok());
        // The upstream CA must be certificates.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "nope").unwrap();
        let with_ca = SecretArgs {
            upstream_ca: Some(file.clone()),
            ..args(&["K=REAL@api.test"])
        };
        let e = with_ca.resolve(Some(&policy), &lookup).unwrap_err();
        assert!(format!("{e:#}").contains("holds no PEM"), "{e:#}");
        std::fs::write(
            &file,
            "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let (h, _) = with_ca.resolve(Some(&policy), &lookup).unwrap().unwrap();
        assert_eq!(h.upstream_roots_pem.len(), 1);
    }
}
