//! Directory entries as the guard records, compares and restores them,
//! never following a symlink the guest may have planted; and the quarantine
//! the guest's versions are moved to.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The largest file kept in the store or compared by content.
pub(super) const MAX_COPY_BYTES: u64 = 4 << 20;

/// A directory entry as recorded, without following symlinks.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum Node {
    #[default]
    Missing,
    File {
        /// Permission bits.
        mode: u32,
        stamp: Stamp,
        /// Its copy in the store (relative path), if it was small enough.
        stored: Option<String>,
    },
    Symlink {
        target: Vec<u8>,
    },
    Dir,
    Other {
        stamp: Stamp,
    },
}

/// What changes whenever a file's content or type changes: the host sets
/// `ctime` itself on every write, so the guest cannot forge it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The entry at `path`; a regular file of at most `cap` bytes is copied to
/// `keep` (store, relative name) when given.
pub(super) fn observe(path: &Path, keep: Option<(&Path, &str)>, cap: u64) -> io::Result<Node> {
    let Some(meta) = lstat(path)? else {
        return Ok(Node::Missing);
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path)?.into_os_string().into_vec();
        return Ok(Node::Symlink { target });
    }
    if kind.is_dir() {
        return Ok(Node::Dir);
    }
    if !kind.is_file() {
        return Ok(Node::Other {
            stamp: Stamp::of(&meta),
        });
    }
    let mut stored = None;
    if let Some((store, name)) = keep {
        // An unreadable file is recorded by its stamp alone.
        if let Some(bytes) = read_capped(path, cap).ok().flatten() {
            write_atomic(&store.join(name), &bytes, 0o600)?;
            stored = Some(name.to_string());
        }
    }
    Ok(Node::File {
        mode: meta.mode() & 0o7777,
        stamp: Stamp::of(&meta),
        stored,
    })
}

/// Whether the entry at `path` is still what `node` recorded: same type,
/// and same mode and content (or inode stamp, when no copy was kept).
pub(super) fn unchanged(path: &Path, node: &Node, store: &Path) -> io::Result<bool> {
    let Some(meta) = lstat(path)? else {
        return Ok(*node == Node::Missing);
    };
    let kind = meta.file_type();
    Ok(match node {
        Node::Missing => false,
        Node::Dir => kind.is_dir(),
        Node::Symlink { target } => {
            kind.is_symlink() && fs::read_link(path)?.into_os_string().into_vec() == *target
        }
        Node::Other { stamp } => !kind.is_file() && Stamp::of(&meta) == *stamp,
        Node::File {
            mode,
            stamp,
            stored,
        } => {
            if !kind.is_file() || meta.mode() & 0o7777 != *mode {
                return Ok(false);
            }
            match stored {
                None => Stamp::of(&meta) == *stamp,
                Some(copy) => {
                    // Unreadable now counts as changed.
                    let recorded = read_capped(&store.join(copy), MAX_COPY_BYTES)?;
                    let current = read_capped(path, MAX_COPY_BYTES).ok().flatten();
                    recorded.is_some() && current == recorded
                }
            }
        }
    })
}

/// Puts the recorded `node` back at `path` (which must be free); false when
/// no copy of it was kept.
pub(super) fn restore(path: &Path, node: &Node, store: &Path) -> io::Result<bool> {
    match node {
        Node::Missing => Ok(true),
        Node::File {
            mode,
            stored: Some(copy),
            ..
        } => match read_capped(&store.join(copy), MAX_COPY_BYTES)? {
            Some(bytes) => write_atomic(path, &bytes, *mode).map(|()| true),
            None => Ok(false),
        },
        Node::Symlink { target } => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path).map(|()| true)
        }
        Node::File { stored: None, .. } | Node::Dir | Node::Other { .. } => Ok(false),
    }
}

/// `<base>/<root>/<n>/`, made on first use with `n` the next free number.
pub(super) struct Quarantine {
    root: PathBuf,
    /// The directory, once made.
    pub(super) dir: Option<PathBuf>,
}

impl Quarantine {
    pub(super) fn new(base: &Path, root: &str) -> Self {
        Quarantine {
            root: base.join(root),
            dir: None,
        }
    }

    fn dir(&mut self) -> io::Result<PathBuf> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        // The guest may have planted the root as a symlink to elsewhere on
        // the host: only a real directory will do.
        match lstat(&self.root)? {
            Some(meta) if meta.is_dir() => {}
            Some(_) => {
                fs::remove_file(&self.root)?;
                fs::create_dir(&self.root)?;
            }
            None => fs::create_dir(&self.root)?,
        }
        for n in 1..=100_000u32 {
            let dir = self.root.join(n.to_string());
            match fs::create_dir(&dir) {
                Ok(()) => {
                    self.dir = Some(dir.clone());
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free quarantine directory"))
    }

    /// Moves the entry at `path` (not following a symlink) to `name` in the
    /// quarantine.
    pub(super) fn take(&mut self, path: &Path, name: &Path) -> io::Result<()> {
        let dest = self.dir()?.join(name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(path, dest)
    }

    /// Keeps a copy of `bytes` as `name` in the quarantine.
    pub(super) fn keep(&mut self, name: &Path, bytes: &[u8]) -> io::Result<()> {
        let dest = self.dir()?.join(name);
        write_atomic(&dest, bytes, 0o600)
    }
}

/// Gives the owner full access to the directory `dir` (whose lstat is
/// `meta`) when the guest took it away, so its entries can be moved out.
pub(super) fn ensure_writable(dir: &Path, meta: &Metadata) -> io::Result<()> {
    let mode = meta.mode() & 0o7777;
    if meta.is_dir() && mode & 0o700 != 0o700 {
        fs::set_permissions(dir, Permissions::from_mode(mode | 0o700))?;
    }
    Ok(())
}

/// The entry's metadata without following a symlink; `None` when absent.
pub(super) fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The content of the regular file at `path`, opened without following a
/// symlink; `None` when it is larger than `cap` bytes.
pub(super) fn read_capped(path: &Path, cap: u64) -> io::Result<Option<Vec<u8>>> {
    // O_NONBLOCK: a FIFO swapped in must not hang the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

/// Replaces `path` with `bytes` (mode `mode`) through a temporary file in
/// the same directory, so a reader sees the old or the new file, never half.
pub(super) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".agentvm-")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    let file: &File = temp.as_file();
    file.set_permissions(Permissions::from_mode(mode))?;
    file.sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
