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
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::secrets::SecretValue;

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused (a bad key or certificate PEM, a name it cannot encode).
    #[error("Cannot make a certificate")]
    Rcgen(#[from] rcgen::Error),
    /// No random bytes for a serial number.
    #[error("Cannot draw a random serial number")]
    Random,
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
        // rcgen's default serial hashes the key, which every leaf shares:
        // leaves of one CA must not share a serial.
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&self.leaf_key, &self.issuer)?;
        let key = PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der());
        Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(key)))
    }
}

/// 16 random bytes, the first's top bit clear (a positive integer).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    #[allow(deprecated)] // the ring provider, see `tls::provider`
    let provider = rustls::crypto::ring::default_provider();
    provider
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panicking test is a failing test

    use super::*;

    #[test]
    fn leaves_name_one_host_each_with_their_own_serial() {
        let ca = Ca::generate("test CA").unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            !format!("{ca:?}").contains("PRIVATE KEY"),
            "the key is redacted"
        );
        let minter = Minter::new(&ca.cert_pem, &ca.key_pem).unwrap();
        // Certificate and TBSCertificate headers (4 bytes each with a
        // two-byte length), version [0] (5 bytes), then the serial INTEGER.
        let serial = |name: &str| {
            let (der, _) = minter.leaf(name).unwrap();
            assert_eq!(der[13], 0x02, "serial number tag");
            let len = usize::from(der[14]);
            der[15..15 + len].to_vec()
        };
        assert_ne!(serial("a.test"), serial("b.test"));
        assert_ne!(serial("a.test"), serial("a.test"));
        // A key that is not the CA's cannot be paired with it.
        let other = Ca::generate("other").unwrap();
        assert!(Minter::new(&ca.cert_pem, &SecretValue::new("not a key")).is_err());
        assert!(Minter::new("not a cert", &other.key_pem).is_err());
    }
}
