//! `[secrets]`: credentials the guest only ever sees as placeholders.
//!
//! ```toml
//! [secrets]
//! ANTHROPIC_API_KEY = { value = "${ANTHROPIC_API_KEY}", hosts = ["api.anthropic.com"] }
//! GH_TOKEN = { command = "gh auth token", hosts = ["api.github.com", "github.com"] }
//! ```
//!
//! A secret's real value comes from the host: `value` is text with
//! `${HOST_VAR}` references, as in `[env]`; `command` is a shell command run
//! on the host at `up` (in the workspace, after the approval check), whose
//! output, trimmed, is the value. The guest's environment gets `NAME` set to
//! a placeholder unique to the VM ([`crate::secrets::placeholder`]); the
//! network stack swaps the real value in only on the way to the secret's
//! `hosts`, each of which must be a name the network allowlist allows (in
//! `filtered` mode; checked once every layer is merged).
//!
//! Rules checked here, one file at a time: `NAME` is an environment
//! variable name; exactly one of `value` and `command`; `hosts` lists at
//! least one host name; `NAME` is not also in the same file's `[env]`.
//! Layers merge like `[env]`, key by key, and a guest variable is either a
//! secret or an `[env]` entry: a later layer's `[env] NAME` replaces an
//! earlier layer's secret `NAME`, and the other way round.

use std::collections::BTreeMap;
use std::fmt;

use toml::Spanned;

use super::env::{is_var_name, EnvValue};
use super::load::{toml_key, ConfigError, Source};
use super::schema;
use super::validate::check_domain;
use super::{Network, NetworkMode, Origin};

/// Where a secret's real value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Text with `${HOST_VAR}` references, expanded at `up`.
    Value(EnvValue),
    /// A host shell command run at `up`; its trimmed output.
    Command(String),
}

impl fmt::Display for SecretSource {
    /// How approvals and `agentvm config` show it: the template or the
    /// command, never a value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Value(v) => write!(f, "value {}", v.template),
            SecretSource::Command(c) => write!(f, "command {c}"),
        }
    }
}

/// A `[secrets]` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEntry {
    /// Where the value comes from.
    pub source: SecretSource,
    /// Names (lowercase) the real value may be sent to.
    pub hosts: Vec<String>,
    /// The file and line, or the plugin, that set it.
    pub origin: Origin,
}

type Result<T> = std::result::Result<T, ConfigError>;

/// Checks one file's `[secrets]` table; `env` is the same file's `[env]`
/// (a name may be in one of them only).
pub fn validate(
    table: &BTreeMap<Spanned<String>, Spanned<schema::Secret>>,
    env: Option<&BTreeMap<Spanned<String>, Spanned<String>>>,
    src: &Source,
) -> Result<BTreeMap<String, SecretEntry>> {
    let mut out = BTreeMap::new();
    for (key, entry) in table {
        let name = key.get_ref();
        let shown = format!("secrets.{}", toml_key(name));
        if !is_var_name(name) {
            return Err(src.error(
                key.span(),
                format!(
                    "`{shown}` is not an environment variable name (letters, digits and _, \
                     not starting with a digit)"
                ),
            ));
        }
        if env.into_iter().flatten().any(|(k, _)| k.get_ref() == name) {
            return Err(src.error(
                key.span(),
                format!("`{shown}`: {name} is also in [env]; a variable is one or the other"),
            ));
        }
        let e = entry.get_ref();
        let source = match (&e.value, &e.command) {
            (Some(v), None) => SecretSource::Value(
                EnvValue::parse(v.get_ref())
                    .map_err(|why| src.error(v.span(), format!("`{shown}.value`: {why}")))?,
            ),
            (None, Some(c)) if c.get_ref().trim().is_empty() => {
                return Err(src.error(c.span(), format!("`{shown}.command` is empty")))
            }
            (None, Some(c)) => SecretSource::Command(c.get_ref().clone()),
            (Some(_), Some(c)) => {
                return Err(src.error(
                    c.span(),
                    format!("`{shown}` has both `value` and `command`; give one of them"),
                ))
            }
            (None, None) => {
                return Err(src.error(
                    entry.span(),
                    format!(
                        "`{shown}` needs `value = \"${{HOST_VAR}}\"` or `command = \"…\"` \
                         (where the real value comes from on this host)"
                    ),
                ))
            }
        };
        let mut hosts: Vec<String> = Vec::new();
        for (i, h) in e.hosts.iter().flatten().enumerate() {
            let host = check_domain(h.get_ref())
                .map_err(|why| src.error(h.span(), format!("`{shown}.hosts[{i}]`: {why}")))?;
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        if hosts.is_empty() {
            return Err(src.error(
                entry.span(),
                format!(
                    "`{shown}` needs `hosts = [\"…\"]`: the names its real value may be sent to"
                ),
            ));
        }
        out.insert(
            name.clone(),
            SecretEntry {
                source,
                hosts,
                origin: Origin::File {
                    file: src.shown.clone(),
                    line: src.line(key.span().start),
                },
            },
        );
    }
    Ok(out)
}

/// Checks, once every layer is merged, that each secret's hosts are names
/// the guest may reach: in `filtered` mode an allowed domain (or below
/// one) or a pinned name. In `open` mode every name is; in `off` mode no
/// traffic leaves at all, so the secrets are inert.
pub fn check_hosts(secrets: &BTreeMap<String, SecretEntry>, net: &Network) -> anyhow::Result<()> {
    if net.mode != NetworkMode::Filtered {
        return Ok(());
    }
    let policy = net.policy();
    for (name, s) in secrets {
        let Some(host) = s.hosts.iter().find(|h| !policy.allows_name(h)) else {
            continue;
        };
        let message = format!(
            "`secrets.{}.hosts`: {host} is not an allowed name; add it (or a domain above it) \
             to `network.domains`, or pin it in `network.hosts`",
            toml_key(name)
        );
        return Err(match &s.origin {
            Origin::File { file, line } => anyhow::Error::new(ConfigError {
                file: file.clone(),
                line: *line,
                column: 1,
                message,
            }),
            other => anyhow::anyhow!("{other}: {message}"),
        });
    }
    Ok(())
}
