//! Trusting the host's CA: the certificate of the workspace CA whose
//! certificates the VMM's network stack presents for the flows it
//! intercepts (the ones that carry a secret's real value to its host), so
//! that curl, git, Python and Node in the guest accept them.
//!
//! What [`install`] does under the guest's root:
//! - writes the certificates to `/etc/ssl/certs/agentvm-ca.pem`, and, where
//!   the image has Debian's `ca-certificates` (the directory
//!   `/usr/local/share/ca-certificates` exists), to
//!   `/usr/local/share/ca-certificates/agentvm-ca.crt` as well, so a later
//!   `update-ca-certificates` (an `apt-get install` runs it) keeps them;
//! - appends them to the system bundle `/etc/ssl/certs/ca-certificates.crt`
//!   when the image has one, between marker lines, replacing an earlier
//!   block (a persistent root keeps the bundle across boots, and the CA may
//!   have changed); an image without a bundle (the busybox initramfs) gets
//!   `agentvm-ca.pem` as its bundle;
//! - returns the variables every later command gets: `SSL_CERT_FILE`,
//!   `CURL_CA_BUNDLE`, `REQUESTS_CA_BUNDLE` and `GIT_SSL_CAINFO` name the
//!   bundle (which still holds the public roots for the flows that are not
//!   intercepted), `NODE_EXTRA_CA_CERTS` the CA alone (Node adds it to its
//!   own roots).
//!
//! Files are replaced by rename, so a command never reads half a bundle.
//! The text is checked first: PEM certificate blocks only, nothing else
//! reaches the system bundle.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use agentvm_protocol::frame::EnvList;
use agentvm_protocol::MAX_CA;

/// Where the CA is written, under the guest's root.
pub const CA_FILE: &str = "etc/ssl/certs/agentvm-ca.pem";
/// Debian's system bundle, under the guest's root.
pub const BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// Debian's directory of local CAs, under the guest's root.
pub const LOCAL_CAS: &str = "usr/local/share/ca-certificates";
/// The CA's name in [`LOCAL_CAS`].
const LOCAL_CA_NAME: &str = "agentvm-ca.crt";
/// The line before the CA in the bundle.
const BEGIN_MARK: &str = "# agentvm workspace CA (written by agentvm-guest at boot)";
/// The line after it.
const END_MARK: &str = "# end of agentvm workspace CA";

/// Why the CA was not installed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The text is not PEM certificates.
    #[error("the CA is not PEM certificates: {0}")]
    NotPem(&'static str),
    /// Writing a file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `pem` is one or more PEM certificates and nothing else
/// (blank lines allowed); returns it as text ending in a newline.
pub fn check_pem(pem: &[u8]) -> Result<String, TrustError> {
    if pem.len() > MAX_CA {
        return Err(TrustError::NotPem("over the size limit"));
    }
    let text = std::str::from_utf8(pem).map_err(|_| TrustError::NotPem("not text"))?;
    let mut inside = false;
    let mut blocks = 0;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        match line {
            "-----BEGIN CERTIFICATE-----" if !inside => inside = true,
            "-----END CERTIFICATE-----" if inside => {
                inside = false;
                blocks += 1;
            }
            "" if !inside => {}
            l if inside
                && !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) => {}
            _ => return Err(TrustError::NotPem("a line outside a certificate block")),
        }
    }
    if inside {
        return Err(TrustError::NotPem("a certificate block is not closed"));
    }
    if blocks == 0 {
        return Err(TrustError::NotPem("no certificate"));
    }
    let mut out = text.trim().to_string();
    out.push('\n');
    Ok(out)
}

/// Installs the CA certificates `pem` under `root` (the guest's `/`) and
/// returns the environment every later command gets.
pub fn install(root: &Path, pem: &[u8]) -> Result<EnvList, TrustError> {
    let pem = check_pem(pem)?;
    let ca = root.join(CA_FILE);
    replace(&ca, pem.as_bytes())?;
    let local = root.join(LOCAL_CAS);
    if local.is_dir() {
        replace(&local.join(LOCAL_CA_NAME), pem.as_bytes())?;
    }
    let bundle = root.join(BUNDLE);
    let bundle_in_guest = match std::fs::read_to_string(&bundle) {
        Ok(old) => {
            let mut new = without_block(&old);
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            new.push_str(&format!("{BEGIN_MARK}\n{pem}{END_MARK}\n"));
            replace(&bundle, new.as_bytes())?;
            Path::new("/").join(BUNDLE)
        }
        // No system bundle: ours is the bundle.
        Err(_) => Path::new("/").join(CA_FILE),
    };
    let bundle = bundle_in_guest.to_string_lossy().into_owned().into_bytes();
    let ca_in_guest = Path::new("/")
        .join(CA_FILE)
        .to_string_lossy()
        .into_owned()
        .into_bytes();
    let mut env: EnvList = [
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    ]
    .iter()
    .map(|k| (k.as_bytes().to_vec(), bundle.clone()))
    .collect();
    env.push((b"NODE_EXTRA_CA_CERTS".to_vec(), ca_in_guest));
    Ok(env)
}

/// `bundle` without an earlier agentvm block.
fn without_block(bundle: &str) -> String {
    let mut out = String::with_capacity(bundle.len());
    let mut skipping = false;
    for line in bundle.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == BEGIN_MARK {
            skipping = true;
        } else if skipping && bare == END_MARK {
            skipping = false;
        } else if !skipping {
            out.push_str(line);
        }
    }
    out
}

/// Writes `path` (0644) by rename from a file beside it, creating its
/// directory.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    let err = |source| TrustError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".agentvm-tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\nAbC+/9==\n-----END CERTIFICATE-----\n";
    const OTHER: &str = "-----BEGIN CERTIFICATE-----\nMIIBother\n-----END CERTIFICATE-----\n";
    const PUBLIC_ROOTS: &str =
        "-----BEGIN CERTIFICATE-----\nPUBLICROOT1\n-----END CERTIFICATE-----\n";

    fn env_of(env: &EnvList, key: &str) -> String {
        let v = env
            .iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{key} not set"));
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn a_debian_root_gets_the_ca_in_its_bundle_once() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join(LOCAL_CAS)).unwrap();
        std::fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
        std::fs::write(r.join(BUNDLE), PUBLIC_ROOTS.trim_end()).unwrap();
        let env = install(r, CA.as_bytes()).unwrap();
        for key in [
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "GIT_SSL_CAINFO",
        ] {
            assert_eq!(env_of(&env, key), "/etc/ssl/certs/ca-certificates.crt");
        }
        assert_eq!(
            env_of(&env, "NODE_EXTRA_CA_CERTS"),
            "/etc/ssl/certs/agentvm-ca.pem"
        );
        assert_eq!(std::fs::read_to_string(r.join(CA_FILE)).unwrap(), CA);
        assert_eq!(
            std::fs::read_to_string(r.join(LOCAL_CAS).join(LOCAL_CA_NAME)).unwrap(),
            CA
        );
        let bundle = std::fs::read_to_string(r.join(BUNDLE)).unwrap();
        assert!(bundle.starts_with(PUBLIC_ROOTS), "{bundle}");
        assert!(bundle.ends_with(&format!("{CA}{END_MARK}\n")), "{bundle}");
        // Again, with a new CA (a persistent root keeps the bundle): the
        // old block is replaced, not added to.
        install(r, OTHER.as_bytes()).unwrap();
        let bundle = std::fs::read_to_string(r.join(BUNDLE)).unwrap();
        assert_eq!(bundle.matches(BEGIN_MARK).count(), 1, "{bundle}");
        assert!(!bundle.contains("MIIBszCC") && bundle.contains("MIIBother"));
        assert!(bundle.starts_with(PUBLIC_ROOTS));
        // Nothing temporary is left.
        for dir in ["etc/ssl/certs", LOCAL_CAS] {
            for e in std::fs::read_dir(r.join(dir)).unwrap() {
                let name = e.unwrap().file_name();
                assert!(!name.to_string_lossy().ends_with("tmp"), "{name:?}");
            }
        }
    }

    #[test]
    fn a_root_without_a_bundle_gets_one_of_its_own() {
        let root = tempfile::tempdir().unwrap();
        let env = install(root.path(), CA.as_bytes()).unwrap();
        assert_eq!(
            env_of(&env, "SSL_CERT_FILE"),
            "/etc/ssl/certs/agentvm-ca.pem"
        );
        assert_eq!(
            env_of(&env, "GIT_SSL_CAINFO"),
            "/etc/ssl/certs/agentvm-ca.pem"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join(CA_FILE)).unwrap(),
            CA
        );
        assert!(!root.path().join(BUNDLE).exists());
        assert!(!root.path().join(LOCAL_CAS).exists());
    }

    #[test]
    fn anything_but_certificates_is_refused_and_nothing_written() {
        let root = tempfile::tempdir().unwrap();
        let cases: &[(&[u8], &str)] = &[
            (b"", "no certificate"),
            (b"\n\n", "no certificate"),
            (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "not closed"),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "outside",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAA AA\n-----END CERTIFICATE-----\n",
                "outside",
            ),
            (
                b"# agentvm workspace CA\n-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n",
                "outside",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n\xff\n-----END CERTIFICATE-----\n",
                "not text",
            ),
            (&[b'A'; MAX_CA + 1], "size"),
        ];
        for (pem, why) in cases {
            let e = install(root.path(), pem).unwrap_err();
            assert!(e.to_string().contains(why), "{pem:?}: {e}");
        }
        assert!(!root.path().join("etc").exists());
        // CRLF line ends and several certificates are fine.
        let two = format!("{}\r\n{OTHER}", CA.replace('\n', "\r\n"));
        assert!(check_pem(two.as_bytes()).is_ok());
    }
}
