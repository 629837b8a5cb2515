//! The static guest agent `agentvm image build` installs as the
//! initramfs's `/init`: the one `--agent` names, else the one built with
//! this binary and carried inside it (`build.rs`), so an installed agentvm
//! needs neither its source tree nor cargo to build an image.

pub mod elf;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// The agent built with this binary: a static x86-64 ELF (the build
/// script refuses anything else).
pub const EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agentvm-guest"));

/// The sha256 of [`EMBEDDED`], from the build script.
pub const EMBEDDED_SHA256: &str = env!("AGENTVM_EMBEDDED_AGENT_SHA256");

/// The agent an image build uses.
#[derive(Debug)]
pub enum Agent {
    /// `--agent PATH`.
    Given { path: PathBuf, sha256: String },
    /// [`EMBEDDED`], written to a private temporary file (removed on drop)
    /// because the image builder reads its agent from a file.
    Embedded(tempfile::NamedTempFile),
}

impl Agent {
    /// `--agent` when given (it must be a static x86-64 executable), else
    /// the embedded agent.
    pub fn select(given: Option<&Path>) -> anyhow::Result<Agent> {
        match given {
            Some(path) => {
                let data = std::fs::read(path)
                    .with_context(|| format!("cannot read the agent {}", path.display()))?;
                if let Err(why) = elf::check_static_x86_64(&data) {
                    bail!(
                        "the agent {} (--agent) is {}; the guest has no libraries: build it with \
                         RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
                         --target x86_64-unknown-linux-gnu -p agentvm-guest, or leave out \
                         --agent to use the one built into agentvm",
                        path.display(),
                        why.reason()
                    );
                }
                Ok(Agent::Given {
                    path: path.to_path_buf(),
                    sha256: crate::paths::hex(&Sha256::digest(&data)),
                })
            }
            None => {
                let mut file = tempfile::Builder::new()
                    .prefix("agentvm-guest-")
                    .tempfile()
                    .context("cannot create a temporary file for the built-in guest agent")?;
                file.write_all(EMBEDDED)
                    .and_then(|()| file.flush())
                    .with_context(|| {
                        format!(
                            "cannot write the built-in guest agent to {}",
                            file.path().display()
                        )
                    })?;
                Ok(Agent::Embedded(file))
            }
        }
    }

    /// The file the image builder copies to `/init`.
    pub fn path(&self) -> &Path {
        match self {
            Agent::Given { path, .. } => path,
            Agent::Embedded(file) => file.path(),
        }
    }

    /// Which agent this is, for `image build`'s summary.
    pub fn describe(&self) -> String {
        match self {
            Agent::Given { path, sha256 } => format!("{} (sha256 {sha256})", path.display()),
            Agent::Embedded(_) => format!("built in (sha256 {EMBEDDED_SHA256})"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panicking test is a failing test

    use super::elf::{check_static_x86_64, NotStatic};
    use super::*;

    /// A minimal ELF64 header with one program header of type `ptype`.
    fn elf(machine: u16, ptype: u32) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56];
        d[..6].copy_from_slice(b"\x7fELF\x02\x01");
        d[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        d[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        d[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        d[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        d[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        d[64..68].copy_from_slice(&ptype.to_le_bytes());
        d
    }

    #[test]
    fn the_embedded_agent_is_a_static_x86_64_executable() {
        assert_eq!(check_static_x86_64(EMBEDDED), Ok(()));
        // Big enough to be the real agent, not a placeholder.
        assert!(EMBEDDED.len() > 100_000, "{} bytes", EMBEDDED.len());
        assert_eq!(
            crate::paths::hex(&Sha256::digest(EMBEDDED)),
            EMBEDDED_SHA256
        );
    }

    #[test]
    fn the_check_tells_static_from_everything_else() {
        assert_eq!(check_static_x86_64(&elf(62, 1)), Ok(()));
        assert_eq!(check_static_x86_64(&elf(62, 3)), Err(NotStatic::Dynamic));
        assert_eq!(check_static_x86_64(&elf(183, 1)), Err(NotStatic::NotX86_64));
        assert_eq!(
            check_static_x86_64(b"#!/bin/sh\n"),
            Err(NotStatic::NotElf64)
        );
        assert_eq!(check_static_x86_64(&[]), Err(NotStatic::NotElf64));
        let mut elf32 = elf(62, 1);
        elf32[4] = 1;
        assert_eq!(check_static_x86_64(&elf32), Err(NotStatic::NotElf64));
        let mut object = elf(62, 1);
        object[0x10] = 1; // ET_REL
        assert_eq!(check_static_x86_64(&object), Err(NotStatic::NotExecutable));
    }

    #[test]
    fn hostile_headers_are_refused_without_panicking() {
        // Headers past the end, an offset that overflows, a lying count,
        // no headers at all, a too-small entry size.
        let mut cases = Vec::new();
        let mut past = elf(62, 1);
        past[0x20..0x28].copy_from_slice(&1_000_000u64.to_le_bytes());
        cases.push(past);
        let mut overflow = elf(62, 1);
        overflow[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push(overflow);
        let mut count = elf(62, 1);
        count[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        cases.push(count);
        let mut none = elf(62, 1);
        none[0x38..0x3a].copy_from_slice(&0u16.to_le_bytes());
        cases.push(none);
        let mut small = elf(62, 1);
        small[0x36..0x38].copy_from_slice(&8u16.to_le_bytes());
        cases.push(small);
        cases.push(elf(62, 1)[..70].to_vec());
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(
                check_static_x86_64(c),
                Err(NotStatic::Truncated),
                "case {i}"
            );
        }
        // A dynamic header hidden after a static one is still found.
        let mut two = elf(62, 1);
        two[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        two.extend_from_slice(&[0u8; 56]);
        two[120..124].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(check_static_x86_64(&two), Err(NotStatic::Dynamic));
    }

    #[test]
    fn without_agent_the_embedded_one_is_written_out_whole() {
        let agent = Agent::select(None).unwrap();
        assert!(matches!(agent, Agent::Embedded(_)));
        assert_eq!(std::fs::read(agent.path()).unwrap(), EMBEDDED);
        assert!(agent.describe().contains(EMBEDDED_SHA256));
        let path = agent.path().to_path_buf();
        drop(agent);
        assert!(!path.exists(), "the temporary copy outlived the build");
    }

    #[test]
    fn a_given_agent_is_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("static");
        std::fs::write(&good, elf(62, 1)).unwrap();
        let agent = Agent::select(Some(&good)).unwrap();
        assert_eq!(agent.path(), good);
        let digest = crate::paths::hex(&Sha256::digest(elf(62, 1)));
        assert!(agent.describe().contains(&digest), "{}", agent.describe());
        let bad = dir.path().join("dynamic");
        std::fs::write(&bad, elf(62, 3)).unwrap();
        let e = format!("{:#}", Agent::select(Some(&bad)).unwrap_err());
        assert!(
            e.contains("dynamically linked") && e.contains("crt-static"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            Agent::select(Some(&dir.path().join("none"))).unwrap_err()
        );
        assert!(e.contains("cannot read the agent"), "{e}");
    }
}
