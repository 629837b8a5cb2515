//! Host files copied into the guest (`[[files]]`, `File` frames): each is
//! written at its target, `~/…` under the default user's home, owned by
//! that user, with the mode the host sent.
//!
//! The agent writes as root into places the guest's user controls (their
//! home), so it trusts nothing it finds on the way: every directory of the
//! target is opened without following a symbolic link (a link planted at
//! `~/.config` cannot send the write into `/etc`), and the file is written
//! to a new temporary name in its directory and renamed over the target,
//! which replaces a link planted there instead of writing through it.
//! The target is checked again here, whatever the host checked.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use agentvm_protocol::frame::{check_file, FileCopy};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

/// Whom a copied file belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Home directory, for `~/…` (absolute, in the guest).
    pub home: String,
}

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The target, mode or size is not one the protocol allows.
    #[error("refused: {0}")]
    Refused(&'static str),
    /// A directory on the way is a symbolic link or not a directory.
    #[error("{0} is a symbolic link or not a directory; files are not written through links")]
    NotADirectory(PathBuf),
    /// A system call failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Writes `file` under `root` (`/` in the guest) for `owner`; returns the
/// path written (in the guest, without `root`).
pub fn write(root: &Path, owner: &Owner, file: &FileCopy) -> Result<PathBuf, FileError> {
    check_file(file).map_err(FileError::Refused)?;
    let target = guest_path(&file.target, &owner.home)?;
    let parts: Vec<&OsStr> = target.iter().filter(|p| p.as_bytes() != b"/").collect();
    let Some((name, dirs)) = parts.split_last() else {
        return Err(FileError::Refused("target names no file"));
    };
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |e: Errno| FileError::Io {
            what,
            path,
            source: io::Error::from(e),
        }
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = openat(AT_FDCWD, root, dir_flags, Mode::empty()).map_err(io_err("open", root))?;
    let mut shown = PathBuf::from("/");
    for part in dirs {
        shown.push(part);
        dir = enter(&dir, part, owner, &shown)?;
    }
    shown.push(name);
    // Unique per request: two copies to one target never share a name.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp_name = format!(
        ".{}.agentvm-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    );
    let tmp = OsStr::new(&tmp_name);
    let fd = openat(
        &dir,
        tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(io_err("create a temporary file next to", &shown))?;
    let written = fill(fd, owner, file)
        .and_then(|()| renameat(&dir, tmp, &dir, *name).map_err(io_err("put in place", &shown)));
    if written.is_err() {
        let _ = unlinkat(&dir, tmp, UnlinkatFlags::NoRemoveDir);
    }
    written.map(|()| shown)
}

/// The content, owner and mode of the new file, synced.
fn fill(fd: OwnedFd, owner: &Owner, file: &FileCopy) -> Result<(), FileError> {
    let fail = |what| {
        move |source: io::Error| FileError::Io {
            what,
            path: PathBuf::from(OsStr::from_bytes(&file.target)),
            source,
        }
    };
    let errno = |what| {
        let f = fail(what);
        move |e: Errno| f(io::Error::from(e))
    };
    fchown(
        &fd,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )
    .map_err(errno("give to its user"))?;
    // After the owner: chown clears setuid/setgid bits, and there are none.
    fchmod(&fd, Mode::from_bits_truncate(file.mode & 0o777)).map_err(errno("set the mode of"))?;
    let mut out = std::fs::File::from(fd);
    out.write_all(&file.content).map_err(fail("write"))?;
    out.sync_all().map_err(fail("sync"))
}

/// Opens (creating when missing, owned by `owner`) the directory `name`
/// in `dir`, never through a symbolic link.
fn enter(dir: &OwnedFd, name: &OsStr, owner: &Owner, shown: &Path) -> Result<OwnedFd, FileError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open = || openat(dir, name, flags, Mode::empty());
    let io_err = |what| {
        move |e: Errno| FileError::Io {
            what,
            path: shown.to_path_buf(),
            source: io::Error::from(e),
        }
    };
    match open() {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) => {
            match mkdirat(dir, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err("create")(e)),
            }
            let fd = open().map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => FileError::NotADirectory(shown.to_path_buf()),
                e => io_err("open")(e),
            })?;
            fchown(
                &fd,
                Some(Uid::from_raw(owner.uid)),
                Some(Gid::from_raw(owner.gid)),
            )
            .map_err(io_err("give to its user"))?;
            Ok(fd)
        }
        Err(Errno::ELOOP | Errno::ENOTDIR) => Err(FileError::NotADirectory(shown.to_path_buf())),
        Err(e) => Err(io_err("open")(e)),
    }
}

/// The target as an absolute guest path: `~/…` under `home`.
fn guest_path(target: &[u8], home: &str) -> Result<PathBuf, FileError> {
    let path = match target.strip_prefix(b"~/") {
        Some(rest) => {
            if !home.starts_with('/') {
                return Err(FileError::Refused(
                    "the default user's home is not absolute",
                ));
            }
            Path::new(home).join(OsStr::from_bytes(rest))
        }
        None => PathBuf::from(OsStr::from_bytes(target)),
    };
    // The home comes from the guest's passwd: checked like a target.
    agentvm_protocol::frame::check_target(path.as_os_str().as_bytes())
        .map_err(FileError::Refused)?;
    Ok(path)
}

#[cfg(test)]
mod tests;
