//! The workspace's CA: the certificate authority whose certificates the
//! network stack presents to the guest for the flows it intercepts, and
//! which the guest agent adds to the guest's trust store.
//!
//! One per workspace, made on the first `up` that binds a secret and kept
//! for later ones in `$XDG_DATA_HOME/agentvm/ca/<workspace id>/` (`ca.pem`,
//! the certificate; `ca.key`, its private key, 0600; the directory 0700):
//! outside every share, and `up` refuses a mount that would show it to the
//! guest. The key never leaves the host: the guest gets the certificate
//! only. A guest that has the CA's trust can do no more with it than what it
//! can already do to itself; the key's owner could forge certificates the
//! guest believes, which is why it stays with the user.
//!
//! The directory is created whole: both files are written into a fresh
//! directory beside it, which is then renamed into place, so a crash or a
//! concurrent `up` never leaves a certificate without its key (a rename
//! that finds the directory made meanwhile keeps the other's).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// A CA certificate and its private key, both PEM: the network stack's
/// own type (its key is a redacted, zeroed-on-drop `SecretValue`).
pub use agentvm_net::intercept::Ca;

/// The certificate's file in a CA directory.
pub const CERT_FILE: &str = "ca.pem";
/// The key's file in a CA directory.
pub const KEY_FILE: &str = "ca.key";

/// The CA directory of the workspace `id` under the data directory.
pub fn dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("ca").join(id)
}

/// A new CA named `cn`: the network stack's
/// [`agentvm_net::intercept::Ca::generate`], so the CA the stack mints
/// leaves from is the one kind it expects.
pub fn generate(cn: &str) -> anyhow::Result<Ca> {
    Ca::generate(cn).context("cannot make the workspace CA")
}

/// The CA in `dir`, made (as `cn`) when there is none yet.
pub fn load_or_create(dir: &Path, cn: &str) -> anyhow::Result<Ca> {
    if let Some(ca) = load(dir)? {
        return Ok(ca);
    }
    let parent = dir.parent().context("the CA directory has no parent")?;
    crate::lifecycle::make_private(parent)?;
    let ca = generate(cn)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_dir(&tmp, &ca);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(ca),
        Err(_) if dir.exists() => {
            // Another `up` made it first: use theirs.
            let _ = std::fs::remove_dir_all(&tmp);
            load(dir)?.context("the CA directory appeared without its files")
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(anyhow::Error::new(e).context(format!("cannot create {}", dir.display())))
        }
    }
}

/// The CA in `dir`, or `None` when there is no such directory.
fn load(dir: &Path) -> anyhow::Result<Option<Ca>> {
    if !crate::lifecycle::check_private(dir)? {
        return Ok(None);
    }
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let ca = Ca {
        cert_pem: read(CERT_FILE)?,
        key_pem: agentvm_net::secrets::SecretValue::new(read(KEY_FILE)?),
    };
    if rcgen::KeyPair::from_pem(ca.key_pem.expose()).is_err()
        || !ca.cert_pem.contains("-----BEGIN CERTIFICATE-----")
    {
        bail!(
            "the workspace CA in {} is damaged; remove the directory and agentvm makes a new \
             one",
            dir.display()
        );
    }
    Ok(Some(ca))
}

/// Writes a new CA directory at `dir` (0700; the key 0600).
fn write_dir(dir: &Path, ca: &Ca) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, text, mode) in [
        (KEY_FILE, ca.key_pem.expose(), 0o600),
        (CERT_FILE, ca.cert_pem.as_str(), 0o644),
    ] {
        let path = dir.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The first share of `mounts` (read-only or not) that shows `dir` to the
/// guest.
pub fn exposing<'a>(
    mounts: &'a [crate::config::Mount],
    dir: &Path,
) -> Option<&'a crate::config::Mount> {
    mounts.iter().find(|m| dir.starts_with(&m.source))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_ca_is_made_once_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir(&tmp.path().join("data"), "0123456789abcdef");
        let ca = load_or_create(&dir, "agentvm test").unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem.expose().contains("PRIVATE KEY"));
        assert!(!ca.cert_pem.contains("PRIVATE"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(dir.parent().unwrap()), 0o700);
        // No temporary directory is left beside it.
        let left: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("0123456789abcdef")]);
        // The next `up` gets the same CA.
        let again = load_or_create(&dir, "agentvm test").unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
        assert_eq!(again.key_pem, ca.key_pem);
        // Its key is the certificate's: re-signing with it gives the same
        // public key.
        let key = rcgen::KeyPair::from_pem(again.key_pem.expose()).unwrap();
        let der = pem_der(&again.cert_pem);
        assert!(
            der.windows(key.public_key_raw().len())
                .any(|w| w == key.public_key_raw()),
            "the certificate does not hold the key's public half"
        );
    }

    #[test]
    fn a_damaged_or_foreign_ca_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir(tmp.path(), "id");
        load_or_create(&dir, "x").unwrap();
        std::fs::write(dir.join(KEY_FILE), "junk").unwrap();
        let e = load_or_create(&dir, "x").unwrap_err();
        assert!(format!("{e:#}").contains("is damaged"), "{e:#}");
        // A directory others may read is not used.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = load_or_create(&dir, "x").unwrap_err();
        assert!(format!("{e:#}").contains("open to other users"), "{e:#}");
    }

    #[test]
    fn a_share_above_the_ca_exposes_it() {
        let m = |source: &str, read_only: bool| crate::config::Mount {
            source: source.into(),
            target: "/t".into(),
            read_only,
            create: false,
            origin: crate::config::Origin::Default,
            seed: None,
        };
        let ca = Path::new("/home/u/.local/share/agentvm/ca/id");
        let mounts = [m("/w", false), m("/home/u/.local", true)];
        assert_eq!(
            exposing(&mounts, ca).unwrap().source,
            Path::new("/home/u/.local")
        );
        assert!(exposing(&mounts[..1], ca).is_none());
    }

    /// The DER bytes of the first PEM block of `pem`.
    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        base64_decode(&body)
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = A.iter().position(|&a| a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}
