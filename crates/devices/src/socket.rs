//! Unix sockets only their owner can use.
//!
//! A listening socket is reachable by whoever may write to its file, so a
//! VMM's sockets (vsock, vhost-user, control) are mode 0600 from the
//! moment they can be connected to: each is bound inside a fresh private
//! directory, given its mode there, and only then renamed into place. And
//! before the VMM connects the guest to a host socket, it checks that the
//! socket belongs to the same user: in a shared directory another user
//! could have put one there to receive the guest's connections.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Staging directories made by this process so far (for unique names).
static STAGED: AtomicU32 = AtomicU32::new(0);

/// Staging directory names tried before giving up.
const MAX_STAGING_TRIES: u32 = 64;

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Binds a listening socket at `path`, mode 0600.
///
/// When the staging path would be too long for a socket address, the
/// socket is bound in place and its mode set right after (a moment in
/// which the umask's mode applies).
pub fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Names another user may have taken in a shared directory are skipped,
    // a bounded number of times.
    let mut stage = None;
    for _ in 0..MAX_STAGING_TRIES {
        let n = STAGED.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!(".s{:x}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                stage = Some(dir);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    let Some(stage) = stage else {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free name to stage a socket in {}", parent.display()),
        ));
    };
    let staged = stage.join("s");
    let result = if staged.as_os_str().len() > MAX_SOCKET_PATH {
        bind_then_chmod(path)
    } else {
        UnixListener::bind(&staged).and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, path)?;
            Ok(listener)
        })
    };
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&stage);
    result
}

fn bind_then_chmod(path: &Path) -> io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Whether `path` is a socket (not a link to one) owned by this process's
/// user.
pub fn is_own_socket(path: &Path) -> bool {
    let uid = nix::unistd::geteuid().as_raw();
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket() && m.uid() == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn sockets_are_bound_0600_and_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = bind_owner_only(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["v.sock"]);
        let _client = UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        assert!(is_own_socket(&path));
    }

    #[test]
    fn a_long_path_is_still_bound_0600() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir
            .path()
            .join("d".repeat(100 - dir.path().as_os_str().len().min(90)));
        std::fs::create_dir(&long).unwrap();
        let path = long.join("s");
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return;
        }
        let _listener = bind_owner_only(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn taken_staging_names_are_skipped_a_bounded_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        // Another user's squatting on the next names: skipped.
        let next = STAGED.load(Ordering::Relaxed);
        for n in next..next + 3 {
            std::fs::create_dir(dir.path().join(format!(".s{:x}.{n}", std::process::id())))
                .unwrap();
        }
        let path = dir.path().join("v.sock");
        let _l = bind_owner_only(&path).unwrap();
        assert!(is_own_socket(&path));
    }

    #[test]
    fn files_links_and_missing_paths_are_not_own_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(!is_own_socket(&file));
        assert!(!is_own_socket(&dir.path().join("missing")));
        let sock = dir.path().join("s");
        let _l = bind_owner_only(&sock).unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(!is_own_socket(&link));
    }
}
