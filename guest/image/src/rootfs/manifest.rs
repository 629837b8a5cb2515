//! `rootfs.json`: what a root file system image holds (layer keys, Node,
//! npm packages and Debian packages with their versions), written beside
//! `rootfs.erofs` and read back by `agentvm image list`/`prune`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{LayerKeys, RootfsError};
use crate::error::ImageError;

/// Bumped when the manifest's meaning changes.
pub const FORMAT: u32 = 1;

/// The manifest of one root file system image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The Debian release.
    pub suite: String,
    /// The cache keys of the three layers.
    pub keys: LayerKeys,
    /// `mmdebstrap --version` of the build.
    pub mmdebstrap: String,
    /// `node --version` in the image (`v22.23.5`).
    pub node: String,
    /// npm's version.
    pub npm_version: String,
    /// Extra Debian packages asked for (sorted).
    pub packages: Vec<String>,
    /// npm install specs asked for (sorted).
    pub npm_requested: Vec<String>,
    /// Globally installed npm packages → version.
    pub npm: BTreeMap<String, String>,
    /// Agent command → first line of its `--version`.
    pub agents: BTreeMap<String, String>,
    /// Every installed Debian package → version.
    pub debian: BTreeMap<String, String>,
    /// Size of the erofs image.
    pub erofs_bytes: u64,
    /// Size of the tree it was made from.
    pub tree_bytes: u64,
}

impl Manifest {
    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> String {
        // A map of strings and numbers always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Parses a manifest.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, ImageError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ImageError::io("Cannot read", path, e))?;
        Self::from_json(&text).map_err(|source| {
            RootfsError::BadManifest {
                path: path.to_path_buf(),
                source,
            }
            .into()
        })
    }
}

/// `package\tversion` lines → map.
pub fn parse_tab_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// `npm ls -g --depth=0 --json` → name → version (npm itself left out).
pub fn parse_npm_ls(text: &str) -> BTreeMap<String, String> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    v.get("dependencies")
        .and_then(|d| d.as_object())
        .map(|deps| {
            deps.iter()
                .filter(|(name, _)| name.as_str() != "npm")
                .map(|(name, info)| {
                    let version = info
                        .get("version")
                        .and_then(|s| s.as_str())
                        .unwrap_or("?")
                        .to_string();
                    (name.clone(), version)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            suite: "bookworm".into(),
            keys: LayerKeys {
                base: "b".into(),
                packages: "p".into(),
                agents: "a".into(),
            },
            mmdebstrap: "mmdebstrap 1.3.5".into(),
            node: "v22.23.5".into(),
            npm_version: "11.21.3".into(),
            packages: vec!["htop".into()],
            npm_requested: vec!["@openai/codex".into()],
            npm: [("@openai/codex".to_string(), "0.1.0".to_string())].into(),
            agents: [("codex".to_string(), "codex-cli 0.1.0".to_string())].into(),
            debian: [("bash".to_string(), "5.2.15-2+b7".to_string())].into(),
            erofs_bytes: 1,
            tree_bytes: 2,
        }
    }

    #[test]
    fn manifest_round_trip() {
        let m = sample();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rootfs.json");
        std::fs::write(&p, m.to_json()).unwrap();
        assert_eq!(Manifest::read(&p).unwrap(), m);
        std::fs::write(&p, "{").unwrap();
        let err = Manifest::read(&p).unwrap_err().to_string();
        assert!(err.contains("rootfs.json"), "{err}");
    }

    #[test]
    fn tool_outputs_parse() {
        let d = parse_tab_lines("bash\t5.2.15-2+b7\ncoreutils\t9.1-1\n\n");
        assert_eq!(d.get("bash").map(String::as_str), Some("5.2.15-2+b7"));
        assert_eq!(d.len(), 2);
        let ls = r#"{"name":"lib","dependencies":{"npm":{"version":"11.21.3"},
            "@anthropic-ai/claude-code":{"version":"2.1.332","overridden":false}}}"#;
        let n = parse_npm_ls(ls);
        assert_eq!(
            n.get("@anthropic-ai/claude-code").map(String::as_str),
            Some("2.1.332")
        );
        assert!(!n.contains_key("npm"));
        assert!(parse_npm_ls("not json").is_empty());
    }
}
