//! TLS interception, only where a secret is bound.
//!
//! A guest TCP flow is intercepted when all of these hold:
//! - it goes to port 443 and its first message was judged as usual
//!   ([`crate::peek`], `judge`): a ClientHello whose server name
//!   (SNI) the DNS server handed the flow's address out for, or that is
//!   pinned to it;
//! - that name is, exactly, one of a [`Secret`]'s hosts (no subdomains).
//!
//! In `open` mode, where a flow to a public address is not judged by the
//! name it asks for, port-443 flows are still held for their ClientHello
//! when secrets are bound ([`crate::peek::Gate::for_interception`]): the
//! same rules pick the ones intercepted, the others pass whatever they
//! name (a first message that never comes holds a flow up to the peek
//! timeout, then it passes).
//!
//! Every other flow is spliced as before and never decrypted: a
//! placeholder sent there goes out verbatim, which leaks nothing.
//!
//! An intercepted flow ([`flow`]) is served to the guest with a leaf
//! certificate for the name, minted from the workspace CA ([`ca`]) and
//! cached per name, offering ALPN `http/1.1` only; the stack opens its own
//! TLS to the real upstream over the flow's host socket, verifying it with
//! webpki's roots, the host's store ([`InterceptConfig::host_roots`]) and
//! [`InterceptConfig::upstream_roots_pem`], SNI = the
//! name. Requests are rewritten ([`http`]): in each request head the
//! placeholders of the secrets bound to the name are replaced by their
//! values, and a head holding the placeholder of a secret bound elsewhere
//! is refused. Bodies, responses, streams and upgraded connections pass
//! unparsed. Each substitution and each refusal is one audit line (secret
//! name, host, method, path without query; never a value).
//!
//! | file | what it does |
//! |------|--------------|
//! | `ca.rs` | the workspace CA, leaf certificates |
//! | `tls.rs` | the rustls server and client configurations |
//! | `http.rs` | request heads: parse, check, substitute (sans-IO) |
//! | `flow.rs` | one intercepted flow between two byte pipes (sans-IO) |

use std::collections::HashMap;
use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};

use crate::secrets::{validate_all, Secret, SecretError, SecretValue};

pub mod ca;
pub mod flow;
pub mod http;
pub mod tls;

pub use ca::{Ca, CaError};
pub use flow::{FlowError, InterceptFlow, Pumped};
pub use http::{HttpError, HttpEvent, RequestStream};

/// What a stack intercepts, and with which CA.
#[derive(Debug, Clone, Default)]
pub struct InterceptConfig {
    /// The workspace CA's certificate, PEM (the guest trusts it).
    pub ca_cert_pem: String,
    /// The workspace CA's private key, PEM (stays on the host).
    pub ca_key_pem: SecretValue,
    /// The secrets and the hosts each is bound to.
    pub secrets: Vec<Secret>,
    /// Extra CAs the upstream's certificate may chain to (PEM each, e.g.
    /// `[network] upstream_ca`), besides webpki's roots.
    pub upstream_roots_pem: Vec<String>,
    /// Whether the host's own trust store counts too (read once, when the
    /// stack is made: `SSL_CERT_FILE`/`SSL_CERT_DIR` or the system's
    /// bundle, as `rustls-native-certs` finds it), so a CA the user's
    /// machine trusts (a company's) reaches through interception.
    pub host_roots: bool,
}

/// Why interception cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// A secret.
    #[error("Bad secret")]
    Secret(#[from] SecretError),
    /// The CA.
    #[error("Bad interception CA")]
    Ca(#[from] CaError),
    /// A TLS configuration.
    #[error("Cannot set up TLS interception")]
    Tls(#[from] tls::TlsError),
    /// An intercepted flow could not start.
    #[error("Cannot start an intercepted flow")]
    Flow(#[from] FlowError),
}

/// A stack's interception: the secrets, the CA's minter, the TLS
/// configurations (one server configuration per bound name, made when
/// first needed: there are as many as the configuration names hosts).
#[derive(Debug)]
pub struct Interceptor {
    secrets: Arc<[Secret]>,
    minter: ca::Minter,
    client: Arc<ClientConfig>,
    servers: HashMap<String, Arc<ServerConfig>>,
}

impl Interceptor {
    /// Checks `config` and prepares the CA and upstream roots.
    pub fn new(config: &InterceptConfig) -> Result<Self, InterceptError> {
        let secrets = validate_all(&config.secrets)?;
        Ok(Interceptor {
            secrets: secrets.into(),
            minter: ca::Minter::new(&config.ca_cert_pem, &config.ca_key_pem)?,
            client: tls::client_config(&config.upstream_roots_pem, config.host_roots)?,
            servers: HashMap::new(),
        })
    }

    /// Whether flows to `name` (normalized) are intercepted: some secret
    /// is bound to it.
    pub fn binds(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s.bound_to(name))
    }

    /// Whether any secret is bound (to any host).
    pub fn binds_any(&self) -> bool {
        self.secrets.iter().any(|s| !s.hosts.is_empty())
    }

    /// Starts intercepting a flow to `name`.
    pub fn start(&mut self, name: &str) -> Result<InterceptFlow, InterceptError> {
        let server = match self.servers.get(name) {
            Some(s) => s.clone(),
            None => {
                let s = tls::server_config(&self.minter, name)?;
                self.servers.insert(name.to_string(), s.clone());
                s
            }
        };
        Ok(InterceptFlow::new(
            name,
            server,
            self.client.clone(),
            self.secrets.clone(),
        )?)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
