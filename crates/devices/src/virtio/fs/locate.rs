//! Which `virtiofsd` to run.
//!
//! In order: an explicit path from the share's configuration, else
//! `$AGENTVM_VIRTIOFSD`, else `virtiofsd` on `$PATH`, else the places
//! distributions and `cargo install` put it ([`Search::from_env`] lists
//! them). An explicit path or the environment variable must work; a
//! candidate found by searching is skipped when it is not the Rust
//! virtiofsd (Debian 12 ships QEMU's C virtiofsd at
//! `/usr/lib/qemu/virtiofsd`, whose command line differs), and the search
//! goes on. Each candidate is probed with `--version`.
//!
//! Nothing found is one line naming what to install ([`LocateError`]).

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tracing::debug;

/// The environment variable naming the virtiofsd binary.
pub const ENV_VAR: &str = "AGENTVM_VIRTIOFSD";
/// Where distributions install virtiofsd, searched after `$PATH`.
pub const SYSTEM_PATHS: [&str; 2] = ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];
/// What to do when there is no usable virtiofsd.
pub const INSTALL_HINT: &str = "install it with `cargo install --locked virtiofsd` \
     (needs libseccomp-dev and libcap-ng-dev) or `apt install virtiofsd`, \
     or set AGENTVM_VIRTIOFSD to its path";
/// How long `virtiofsd --version` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A usable virtiofsd binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtiofsd {
    /// Its path.
    pub path: PathBuf,
    /// The version it reports (`1.14.0`).
    pub version: String,
}

/// Why a candidate cannot be used.
#[derive(Debug)]
pub enum Unusable {
    /// No executable file at that path.
    Missing,
    /// QEMU's C virtiofsd, which takes other options.
    Legacy(String),
    /// `--version` could not be run, or did not finish.
    Probe(io::Error),
    /// `--version` printed something we do not recognise.
    Unrecognised(String),
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::Missing => f.write_str("no executable file there"),
            Unusable::Legacy(v) => write!(
                f,
                "it is QEMU's C virtiofsd ({v}), agentvm needs the Rust virtiofsd"
            ),
            Unusable::Probe(e) => write!(f, "`--version` failed: {e}"),
            Unusable::Unrecognised(out) => {
                write!(f, "`--version` printed {out:?}, not a virtiofsd version")
            }
        }
    }
}

/// No usable virtiofsd. Always one line, naming what to install.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Nothing usable on `$PATH` or in the usual places.
    #[error("Cannot find virtiofsd{skipped}: {hint}", hint = INSTALL_HINT)]
    NotFound {
        /// The candidates that were found but skipped, with why, as text
        /// (empty, or ` (skipped …)`).
        skipped: String,
    },
    /// The configured binary (or `$AGENTVM_VIRTIOFSD`) does not work.
    #[error("Cannot use virtiofsd {path} (from {origin}): {why}; {hint}", path = path.display(), hint = INSTALL_HINT)]
    Unusable {
        /// The path given.
        path: PathBuf,
        /// Where the path came from.
        origin: &'static str,
        /// What is wrong with it.
        why: Unusable,
    },
}

/// Where to look for virtiofsd; plain data so tests can point it anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// A path that must be used (from the configuration).
    pub explicit: Option<PathBuf>,
    /// A path from `$AGENTVM_VIRTIOFSD`, used when there is no explicit one.
    pub env: Option<PathBuf>,
    /// The `$PATH` to search for `virtiofsd`.
    pub path_var: Option<OsString>,
    /// Paths tried after `$PATH`, in order.
    pub fallbacks: Vec<PathBuf>,
}

impl Search {
    /// The search as the process's environment has it: `explicit`, then
    /// `$AGENTVM_VIRTIOFSD`, `$PATH`, [`SYSTEM_PATHS`] and
    /// `~/.cargo/bin/virtiofsd`.
    pub fn from_env(explicit: Option<PathBuf>) -> Self {
        let mut fallbacks: Vec<PathBuf> = SYSTEM_PATHS.iter().map(PathBuf::from).collect();
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            fallbacks.push(Path::new(&home).join(".cargo/bin/virtiofsd"));
        }
        Search {
            explicit,
            env: std::env::var_os(ENV_VAR)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            path_var: std::env::var_os("PATH"),
            fallbacks,
        }
    }

    /// The first usable virtiofsd.
    pub fn find(&self) -> Result<Virtiofsd, LocateError> {
        let required = [
            (self.explicit.as_ref(), "the share's configuration"),
            (self.env.as_ref(), ENV_VAR),
        ];
        if let Some((path, origin)) = required.into_iter().find_map(|(p, o)| Some((p?, o))) {
            return probe(path).map_err(|why| LocateError::Unusable {
                path: path.clone(),
                origin,
                why,
            });
        }
        let on_path = self
            .path_var
            .iter()
            .flat_map(std::env::split_paths)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join("virtiofsd"));
        let mut skipped = Vec::new();
        for candidate in on_path.chain(self.fallbacks.iter().cloned()) {
            if !is_executable(&candidate) {
                continue;
            }
            match probe(&candidate) {
                Ok(found) => return Ok(found),
                Err(why) => {
                    debug!("virtio-fs: skipping {}: {why}", candidate.display());
                    skipped.push(format!("{}: {why}", candidate.display()));
                }
            }
        }
        let skipped = if skipped.is_empty() {
            String::new()
        } else {
            format!(" (skipped {})", skipped.join("; "))
        };
        Err(LocateError::NotFound { skipped })
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `path --version` and tells the Rust virtiofsd (`virtiofsd 1.14.0`)
/// from QEMU's (`virtiofsd version 7.2.22 (…)`).
fn probe(path: &Path) -> Result<Virtiofsd, Unusable> {
    if !is_executable(path) {
        return Err(Unusable::Missing);
    }
    let mut child = spawn_version(path).map_err(Unusable::Probe)?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(5)),
            Ok(None) => {
                // Best effort: the process is ours and must not linger.
                let _ = child.kill();
                let _ = child.wait();
                return Err(Unusable::Probe(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer within 5 s",
                )));
            }
            Err(e) => return Err(Unusable::Probe(e)),
        }
    }
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        // The process has exited: this read ends at the pipe's EOF.
        stdout
            .take(4096)
            .read_to_string(&mut out)
            .map_err(Unusable::Probe)?;
    }
    parse_version(&out).map(|version| Virtiofsd {
        path: path.to_owned(),
        version,
    })
}

/// Starts `path --version`. ETXTBSY (a file just written, whose write fd
/// another thread's fork briefly inherited) is retried a few times.
fn spawn_version(path: &Path) -> io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        let spawned = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn parse_version(out: &str) -> Result<String, Unusable> {
    let first = out.lines().next().unwrap_or("").trim();
    let mut words = first.split_whitespace();
    match (words.next(), words.next()) {
        (Some("virtiofsd"), Some(v)) if v.starts_with(|c: char| c.is_ascii_digit()) => {
            Ok(v.to_owned())
        }
        (Some("virtiofsd"), Some("version")) => {
            Err(Unusable::Legacy(words.next().unwrap_or("?").to_owned()))
        }
        _ => Err(Unusable::Unrecognised(first.chars().take(80).collect())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn versions_are_told_apart() {
        assert_eq!(parse_version("virtiofsd 1.14.0\n").unwrap(), "1.14.0");
        let legacy = "virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7)\nCopyright";
        assert!(matches!(parse_version(legacy), Err(Unusable::Legacy(v)) if v == "7.2.22"));
        assert!(matches!(
            parse_version("hello"),
            Err(Unusable::Unrecognised(_))
        ));
        assert!(matches!(parse_version(""), Err(Unusable::Unrecognised(_))));
    }

    #[test]
    fn search_skips_legacy_binaries_and_keeps_looking() {
        let tmp = tempfile::tempdir().unwrap();
        let legacy_dir = tmp.path().join("legacy");
        let good_dir = tmp.path().join("good");
        fs::create_dir_all(&legacy_dir).unwrap();
        fs::create_dir_all(&good_dir).unwrap();
        let legacy = script(
            &legacy_dir,
            "virtiofsd",
            "echo 'virtiofsd version 7.2.22 (Debian)'",
        );
        let good = script(&good_dir, "virtiofsd", "echo 'virtiofsd 1.14.0'");
        let search = Search {
            path_var: Some(legacy_dir.clone().into_os_string()),
            fallbacks: vec![tmp.path().join("absent"), good.clone()],
            ..Search::default()
        };
        assert_eq!(
            search.find().unwrap(),
            Virtiofsd {
                path: good.clone(),
                version: "1.14.0".into()
            }
        );

        // Only the legacy one: the error says why it was skipped.
        let only_legacy = Search {
            fallbacks: vec![legacy.clone()],
            ..Search::default()
        };
        let msg = only_legacy.find().unwrap_err().to_string();
        assert!(msg.contains("QEMU's C virtiofsd"), "{msg}");
        assert!(!msg.contains('\n'));

        // An explicit path must work, even when a good one is on the way.
        let explicit = Search {
            explicit: Some(legacy),
            fallbacks: vec![good],
            ..Search::default()
        };
        assert!(matches!(
            explicit.find(),
            Err(LocateError::Unusable {
                why: Unusable::Legacy(_),
                ..
            })
        ));
    }

    #[test]
    fn nothing_found_names_what_to_install() {
        let msg = Search::default().find().unwrap_err().to_string();
        assert!(msg.starts_with("Cannot find virtiofsd: install it with"));
        assert!(msg.contains("cargo install --locked virtiofsd"));
        assert!(msg.contains("apt install virtiofsd"));
        assert!(msg.contains("AGENTVM_VIRTIOFSD"));
        assert!(!msg.contains('\n'));
    }
}
