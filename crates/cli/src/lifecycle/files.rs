//! `[[files]]` at `up`: host files read once and copied into the guest,
//! one way (what the guest does to its copy never reaches the host).
//!
//! Reading runs on the host as the user, on paths a guest-writable file
//! named (the configuration is approved, but what lies at a path can
//! change): a source, every link on the way to it, and the file it ends
//! at must lie outside every read-write share, or the guest could swap
//! it for a link to the user's private key; the file is opened at its
//! resolved path without following a link and without blocking, must be
//! a regular file, and is bounded ([`MAX_FILE_BYTES`] each,
//! [`MAX_FILES_TOTAL_BYTES`] in all). The content goes to the guest agent
//! in `File` frames over vsock after boot, as `[env]` does in
//! `Configure`; the snapshot keeps only a digest of it.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentvm_protocol::client::{self, connect_vsock_within};
use agentvm_protocol::frame::FileCopy;
use agentvm_protocol::EXEC_PORT;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{CopiedFile, ResolvedConfig, MAX_FILES, MAX_FILES_TOTAL_BYTES, MAX_FILE_BYTES};

/// Links followed from one source at most (as the kernel's own limit).
const MAX_LINKS: usize = 40;

/// A file read for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    /// The source as configured.
    pub source: PathBuf,
    /// The guest target, as configured (`~/…` or absolute).
    pub target: String,
    /// Permission bits the guest's copy gets.
    pub mode: u32,
    /// The content.
    pub content: Vec<u8>,
}

/// A copied file in the snapshot (`config.json`): never its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// The host file.
    pub source: PathBuf,
    /// The guest target.
    pub target: String,
    /// Permission bits.
    pub mode: u32,
    /// [`digest`] of the content (`unreadable` when it could not be read).
    pub sha256: String,
}

impl HostFile {
    /// What the snapshot keeps of it.
    pub fn snapshot(&self) -> SnapshotFile {
        SnapshotFile {
            source: self.source.clone(),
            target: self.target.clone(),
            mode: self.mode,
            sha256: digest(&self.content),
        }
    }
}

/// SHA-256 (hex) of a copied file's content.
pub fn digest(content: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"agentvm copied file\0");
    h.update(content);
    crate::paths::hex(&h.finalize())
}

/// Reads every `[[files]]` source of `cfg`; an error names the file and
/// what to do.
pub fn read_all(cfg: &ResolvedConfig) -> anyhow::Result<Vec<HostFile>> {
    if cfg.files.len() > MAX_FILES {
        bail!(
            "[[files]] lists {} files; at most {MAX_FILES} can be copied",
            cfg.files.len()
        );
    }
    let writable = writable_shares(cfg);
    let mut total = 0u64;
    let mut out = Vec::with_capacity(cfg.files.len());
    for file in &cfg.files {
        let read = read_one(file, &writable)?;
        total += read.content.len() as u64;
        if total > MAX_FILES_TOTAL_BYTES {
            bail!(
                "{}: with {}, the [[files]] add up to more than {} MiB; copy fewer or smaller \
                 files (or share a directory with [[mounts]])",
                file.origin,
                file.source.display(),
                MAX_FILES_TOTAL_BYTES >> 20
            );
        }
        out.push(read);
    }
    Ok(out)
}

/// What a VM started now would record of its `[[files]]`, for comparing
/// with a running one: each file read and digested, one that cannot be
/// read marked `unreadable` (never an error: `up` reports those).
pub fn planned(cfg: &ResolvedConfig) -> Vec<SnapshotFile> {
    let writable = writable_shares(cfg);
    cfg.files
        .iter()
        .map(|f| match read_one(f, &writable) {
            Ok(read) => read.snapshot(),
            Err(_) => SnapshotFile {
                source: f.source.clone(),
                target: f.target.clone(),
                mode: f.mode.unwrap_or(0),
                sha256: "unreadable".to_string(),
            },
        })
        .collect()
}

/// The host directories the guest can write (canonical where they exist).
fn writable_shares(cfg: &ResolvedConfig) -> Vec<PathBuf> {
    cfg.mounts
        .iter()
        .filter(|m| !m.read_only)
        .map(|m| std::fs::canonicalize(&m.source).unwrap_or_else(|_| m.source.clone()))
        .collect()
}

/// Reads one source: resolved link by link, each step outside every
/// read-write share in `writable`, the end a regular file within the size
/// limit.
pub fn read_one(file: &CopiedFile, writable: &[PathBuf]) -> anyhow::Result<HostFile> {
    let shown = file.source.display();
    let origin = &file.origin;
    let resolved = resolve(&file.source, writable)
        .with_context(|| format!("{origin}: cannot copy {shown} into the guest"))?;
    let fail = |why: String| anyhow::anyhow!("{origin}: cannot copy {shown} into the guest: {why}");
    // No link followed at the end (it was resolved above: one appearing
    // now is a swap), no blocking on a FIFO.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(&resolved)
        .map_err(|e| fail(format!("cannot open {}: {e}", resolved.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| fail(format!("cannot read {}: {e}", resolved.display())))?;
    if !meta.is_file() {
        return Err(fail(format!(
            "{} is not a regular file ({}); only regular files are copied",
            resolved.display(),
            kind(&meta)
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "it is {} bytes, more than the {} KiB a copied file may have",
            meta.len(),
            MAX_FILE_BYTES >> 10
        )));
    }
    let mut content = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| fail(format!("cannot read {}: {e}", resolved.display())))?;
    if content.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!(
            "it grew past the {} KiB a copied file may have",
            MAX_FILE_BYTES >> 10
        )));
    }
    Ok(HostFile {
        source: file.source.clone(),
        target: file.target.clone(),
        mode: file.mode.unwrap_or(meta.mode() & 0o777),
        content,
    })
}

/// `path` with its links resolved one at a time; every step (the path as
/// it stands after its directories are resolved) must lie outside the
/// `writable` shares.
fn resolve(path: &Path, writable: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            bail!("{} names no file", p.display());
        };
        let dir = std::fs::canonicalize(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("{} does not exist", dir.display())
            }
            _ => anyhow::Error::new(e).context(format!("cannot resolve {}", dir.display())),
        })?;
        let here = dir.join(name);
        if let Some(share) = writable.iter().find(|w| here.starts_with(w)) {
            bail!(
                "{} is inside the read-write share {}: the guest could replace it with a link \
                 to any of your files; copy it from elsewhere, or share that directory \
                 read-only",
                here.display(),
                share.display()
            );
        }
        let meta = match std::fs::symlink_metadata(&here) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{} does not exist", here.display())
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot read {}", here.display())))
            }
        };
        if !meta.file_type().is_symlink() {
            return Ok(here);
        }
        let to = std::fs::read_link(&here)
            .with_context(|| format!("cannot read the link {}", here.display()))?;
        p = dir.join(to);
    }
    bail!(
        "{} goes through more than {MAX_LINKS} links",
        path.display()
    )
}

/// What a non-regular file is, for messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// Sends each file to the guest agent at `vsock`, one connection each;
/// the targets written, and a warning for each that was not.
pub fn send(vsock: &Path, files: &[HostFile]) -> (Vec<String>, Vec<String>) {
    let mut copied = Vec::new();
    let mut warnings = Vec::new();
    for f in files {
        let copy = FileCopy {
            target: f.target.as_bytes().to_vec(),
            mode: f.mode,
            content: f.content.clone(),
        };
        let sent = match connect_vsock_within(vsock, EXEC_PORT, Some(Duration::from_secs(10))) {
            Err(e) => Err(format!("cannot reach the guest agent: {e}")),
            Ok(stream) => client::put_file(stream, copy).map_err(|e| match e {
                client::ClientError::Remote {
                    code: agentvm_protocol::ErrorCode::Malformed,
                    ..
                } => format!(
                    "{e} (the guest image predates [[files]]: rebuild it with `agentvm image \
                     build`)"
                ),
                e => e.to_string(),
            }),
        };
        match sent {
            Ok(()) => copied.push(f.target.clone()),
            Err(why) => warnings.push(format!(
                "cannot copy {} to {} in the guest: {}",
                f.source.display(),
                f.target,
                crate::escape::line(&why)
            )),
        }
    }
    (copied, warnings)
}

/// Copies `files` into the guest of `state` ([`send`]), warns about each
/// that was not copied and leaves it out of the snapshot `snap` (so that
/// `up` lists it as a difference and `status` does not claim it); the
/// line `up` reports, naming the targets, when any was copied.
pub fn copy_in(
    state: &super::StateDir,
    snap: &mut super::Snapshot,
    files: &[HostFile],
) -> Option<String> {
    let (copied, warnings) = send(&state.vsock(), files);
    for w in &warnings {
        eprintln!("agentvm: warning: {w}");
    }
    if !warnings.is_empty() {
        snap.files.retain(|f| copied.contains(&f.target));
        if let Ok(json) = serde_json::to_vec_pretty(&*snap) {
            let _ = std::fs::write(state.snapshot(), json);
        }
    }
    (!copied.is_empty()).then(|| {
        crate::escape::line(&format!(
            "agentvm: copied {} file{} into the guest: {}",
            copied.len(),
            if copied.len() == 1 { "" } else { "s" },
            copied.join(", ")
        ))
        .into_owned()
    })
}

#[cfg(test)]
mod tests;
