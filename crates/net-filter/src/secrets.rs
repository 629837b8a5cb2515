//! Secrets the guest never holds: the guest gets a [`Secret`]'s
//! placeholder (in its environment), the stack swaps the real value in on
//! the way to the hosts the secret is bound to ([`crate::intercept`]).
//!
//! A [`SecretValue`] never prints: its `Debug` is `<redacted>`, it has no
//! `Display`, and its bytes are zeroed when it drops.

use std::fmt;

use zeroize::Zeroizing;

use crate::policy::{normalize_name, PolicyError};

/// The shortest placeholder: shorter ones would match ordinary text.
pub const MIN_PLACEHOLDER: usize = 8;
/// The longest placeholder or value, bytes (values land in one header).
pub const MAX_SECRET_LEN: usize = 8 << 10;

/// A real secret value. Redacted in `Debug`, zeroed on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(Zeroizing::new(value.into()))
    }

    /// The real value: only for the code that sends it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        SecretValue::new(value)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret bound to hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The secret's name (the guest's environment variable; audit lines).
    pub name: String,
    /// What the guest holds instead of the value: every occurrence in the
    /// head of a request to a bound host is replaced by the value.
    pub placeholder: String,
    /// The real value.
    pub value: SecretValue,
    /// The DNS names the value may be sent to, exactly (no subdomains:
    /// `api.example.com` does not bind `x.api.example.com`), normalized
    /// like the policy's names ([`normalize_name`]).
    pub hosts: Vec<String>,
}

/// Why a secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A placeholder too short, too long or with bytes a header cannot hold.
    #[error("Secret {0}: the placeholder must be {MIN_PLACEHOLDER} to {MAX_SECRET_LEN} visible ASCII characters")]
    BadPlaceholder(String),
    /// A value that is empty, too long, or would break a header (CR, LF,
    /// other control characters).
    #[error(
        "Secret {0}: the value must be 1 to {MAX_SECRET_LEN} bytes without control characters"
    )]
    BadValue(String),
    /// Two secrets whose placeholders overlap (one contains the other).
    #[error("Secrets {0} and {1} have overlapping placeholders")]
    Overlap(String, String),
    /// A host that is no DNS name.
    #[error("Secret {secret}: bad host")]
    BadHost {
        /// The secret.
        secret: String,
        /// Why.
        #[source]
        source: PolicyError,
    },
    /// A secret bound to no host.
    #[error("Secret {0} is bound to no host")]
    NoHost(String),
}

impl Secret {
    /// The secret with its hosts normalized, or why it cannot be used.
    pub fn validated(&self) -> Result<Secret, SecretError> {
        let ph = self.placeholder.as_bytes();
        if ph.len() < MIN_PLACEHOLDER
            || ph.len() > MAX_SECRET_LEN
            || !ph.iter().all(|b| b.is_ascii_graphic())
        {
            return Err(SecretError::BadPlaceholder(self.name.clone()));
        }
        let value = self.value.expose().as_bytes();
        if value.is_empty()
            || value.len() > MAX_SECRET_LEN
            || value.iter().any(|&b| b.is_ascii_control())
        {
            return Err(SecretError::BadValue(self.name.clone()));
        }
        if self.hosts.is_empty() {
            return Err(SecretError::NoHost(self.name.clone()));
        }
        let hosts = self
            .hosts
            .iter()
            .map(|h| normalize_name(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SecretError::BadHost {
                secret: self.name.clone(),
                source,
            })?;
        Ok(Secret {
            hosts,
            ..self.clone()
        })
    }

    /// Whether the value may go to `host` (a normalized name).
    pub fn bound_to(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }
}

/// Validates every secret and checks that no placeholder contains another.
pub fn validate_all(secrets: &[Secret]) -> Result<Vec<Secret>, SecretError> {
    let valid = secrets
        .iter()
        .map(Secret::validated)
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in valid.iter().enumerate() {
        for b in &valid[i + 1..] {
            if a.placeholder.contains(&b.placeholder) || b.placeholder.contains(&a.placeholder) {
                return Err(SecretError::Overlap(a.name.clone(), b.name.clone()));
            }
        }
    }
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(placeholder: &str, value: &str, hosts: &[&str]) -> Secret {
        Secret {
            name: "KEY".into(),
            placeholder: placeholder.into(),
            value: SecretValue::new(value),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn values_never_print() {
        let s = secret("ph-0123456789", "sk-real-value", &["api.test"]);
        let shown = format!("{s:?} {:?}", s.value);
        assert!(!shown.contains("sk-real-value"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn validation_normalizes_hosts_and_refuses_what_would_break_a_header() {
        let ok = secret("ph-0123456789", "v", &["API.Test."])
            .validated()
            .unwrap();
        assert_eq!(ok.hosts, ["api.test"]);
        assert!(ok.bound_to("api.test"));
        assert!(!ok.bound_to("x.api.test"));
        for bad in [
            secret("short", "v", &["a.test"]),
            secret("ph 0123456789", "v", &["a.test"]),
            secret("ph-0123456789", "v\r\nX-Evil: 1", &["a.test"]),
            secret("ph-0123456789", "", &["a.test"]),
            secret("ph-0123456789", "v", &[]),
            secret("ph-0123456789", "v", &["bad host"]),
        ] {
            assert!(bad.validated().is_err(), "{bad:?}");
        }
        let a = secret("ph-0123456789", "v", &["a.test"]);
        let b = secret("xph-0123456789x", "w", &["a.test"]);
        assert!(matches!(
            validate_all(&[a.clone(), b]),
            Err(SecretError::Overlap(..))
        ));
        assert_eq!(validate_all(&[a]).unwrap().len(), 1);
    }
}
