//! The two TLS ends of an intercepted flow: the server the guest talks to
//! (a leaf for the bound name, ALPN `http/1.1` only) and the client that
//! talks to the real upstream (webpki roots plus the configured extra CAs,
//! ALPN `http/1.1`). Both use rustls with the ring provider.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::ca::{CaError, Minter};

/// The only application protocol offered either way: header substitution
/// is done on HTTP/1.1 heads (HPACK is not rewritten).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The leaf certificate.
    #[error("Cannot mint a certificate")]
    Ca(#[from] CaError),
    /// rustls refused the configuration.
    #[error("Cannot configure TLS")]
    Rustls(#[from] rustls::Error),
    /// An extra upstream CA that is no PEM certificate.
    #[error("Bad upstream CA certificate")]
    BadRoot(#[source] rustls::pki_types::pem::Error),
    /// An extra upstream CA that webpki does not accept as a trust anchor.
    #[error("Upstream CA certificate not usable as a trust anchor")]
    BadAnchor(#[source] rustls::Error),
    /// An extra upstream CA file without any certificate.
    #[error("Upstream CA PEM holds no certificate")]
    EmptyRoot,
}

/// The ring provider: the project builds without aws-lc-rs (cmake, slow
/// builds). rustls 0.23.48 deprecates ring's provider for lacking
/// post-quantum key exchange; classical ECDHE is what it offers.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The guest-facing server configuration for `name`.
pub fn server_config(minter: &Minter, name: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = minter.leaf(name)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The upstream-facing client configuration: webpki's roots, the host's
/// trust store when `host_roots` (certificates it cannot parse are left
/// out, and a store it cannot read at all is a warning), and
/// `extra_roots_pem` (each a PEM with one or more certificates).
pub fn client_config(
    extra_roots_pem: &[String],
    host_roots: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if host_roots {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("interception: part of the host's trust store is unusable: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!("interception: {added} roots from the host's store ({ignored} unusable)");
    }
    for pem in extra_roots_pem {
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.map_err(TlsError::BadRoot)?)
                .map_err(TlsError::BadAnchor)?;
            any = true;
        }
        if !any {
            return Err(TlsError::EmptyRoot);
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}
