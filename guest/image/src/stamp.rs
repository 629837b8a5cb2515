//! What an installed image directory holds, written next to its files
//! (`image.json`) so that `agentvm doctor` can tell whether it is what
//! `agentvm image build` would make now: same layout, same guest agent,
//! and which kernel, built when.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::KeyHasher;
use crate::error::ImageError;
use crate::image::{GuestImage, LAYOUT_VERSION};

/// The stamp's file name in an image directory.
pub const FILE: &str = "image.json";

/// An installed image's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The initramfs layout it was built with ([`layout`]).
    pub layout: String,
    /// Its cache key.
    pub key: String,
    /// The kernel release (`6.1.0-41-cloud-amd64`).
    pub kernel_release: String,
    /// The kernel package and its version.
    pub kernel_package: String,
    /// The kernel package's version.
    pub kernel_version: String,
    /// [`agent_digest`] of the guest agent it carries.
    pub agent_digest: String,
    /// When it was installed, seconds since the epoch.
    pub built_unix: u64,
}

/// The initramfs layout this agentvm builds.
pub fn layout() -> &'static str {
    LAYOUT_VERSION
}

/// The digest of a guest agent binary, as stamps record it.
pub fn agent_digest(agent: &Path) -> Result<String, ImageError> {
    Ok(KeyHasher::default().add_file(agent)?.hex())
}

/// [`agent_digest`] of a guest agent held in memory (the one built into
/// agentvm).
pub fn agent_digest_of(agent: &[u8]) -> String {
    KeyHasher::default().add_content(agent).hex()
}

impl Stamp {
    /// The stamp of `image`, built around `agent`, installed now.
    pub fn of(image: &GuestImage, agent: &Path) -> Result<Stamp, ImageError> {
        Ok(Stamp {
            layout: LAYOUT_VERSION.to_string(),
            key: image.key.clone(),
            kernel_release: image.kernel.release.clone(),
            kernel_package: image.kernel.package.clone(),
            kernel_version: image.kernel.version.clone(),
            agent_digest: agent_digest(agent)?,
            built_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// Parses a stamp's text; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Stamp> {
        serde_json::from_str(text).ok()
    }

    /// Writes the stamp into the image directory `dir`, replacing it whole.
    pub fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".{FILE}.tmp-{}", std::process::id()));
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        fs::write(&tmp, text).map_err(|e| ImageError::io("Cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| ImageError::io("Cannot write", &path, e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_and_garbage_is_none() {
        let s = Stamp {
            layout: layout().into(),
            key: "k".into(),
            kernel_release: "6.1.0-41-cloud-amd64".into(),
            kernel_package: "linux-image-6.1.0-41-cloud-amd64".into(),
            kernel_version: "6.1.158-1".into(),
            agent_digest: "0123".into(),
            built_unix: 5,
        };
        let dir = tempfile::tempdir().unwrap();
        s.write(dir.path()).unwrap();
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(Stamp::parse(&text), Some(s));
        assert_eq!(Stamp::parse("{\"layout\": 1}"), None);
        assert_eq!(Stamp::parse("not json"), None);
    }

    #[test]
    fn agent_digests_follow_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"one").unwrap();
        let first = agent_digest(&a).unwrap();
        fs::write(&a, b"two").unwrap();
        assert_ne!(agent_digest(&a).unwrap(), first);
    }
}
