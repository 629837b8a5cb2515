//! The per-workspace certificate authority: made once by the CLI
//! ([`Ca::generate`], kept on the host, 0600, trusted by the guest), and
//! the leaf certificates the stack mints from it for each bound host it
//! intercepts ([`Minter`]).
//!
//! Leaves use one key per stack (made at start, never stored) and name
//! exactly one DNS name. Validity is rcgen's default (no expiry the
//! clients we serve check against a clock the guest controls anyway).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::secrets::SecretValue;

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused (a bad key or certificate PEM, a name it cannot encode).
    #[error("Cannot make a certificate")]
    Rcgen(#[from] rcgen::Error),
}

/// A certificate authority: its certificate and private key, both PEM.
#[derive(Debug, Clone)]
pub struct Ca {
    /// The CA certificate (what the guest trusts).
    pub cert_pem: String,
    /// The CA's private key (PKCS#8): stays on the host.
    pub key_pem: SecretValue,
}

impl Ca {
    /// A new self-signed CA named `common_name` (ECDSA P-256).
    pub fn generate(common_name: &str) -> Result<Ca, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: SecretValue::new(key.serialize_pem()),
        })
    }
}

/// Mints leaf certificates signed by a [`Ca`].
pub struct Minter {
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minter")
    }
}

impl Minter {
    /// A minter for the CA `cert_pem` with key `key_pem`.
    pub fn new(cert_pem: &str, key_pem: &SecretValue) -> Result<Self, CaError> {
        let ca_key = KeyPair::from_pem(key_pem.expose())?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, ca_key)?;
        Ok(Minter {
            issuer,
            leaf_key: KeyPair::generate()?,
        })
    }

    /// A certificate for `name` and its key (DER).
    pub fn leaf(
        &self,
        name: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CaError> {
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&self.leaf_key, &self.issuer)?;
        let key = PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der());
        Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(key)))
    }
}
