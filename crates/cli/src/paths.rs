//! Where agentvm keeps things on the host, outside every share: VM state
//! (per boot, in the runtime directory), approvals (per workspace, in the
//! configuration directory) and agent homes (per workspace, in the data
//! directory). Every per-workspace location is keyed by [`workspace_id`],
//! so two checkouts with the same directory name never share anything;
//! [`crate::destroy::places`] lists them all (a new one goes there too, so
//! that `agentvm destroy` removes it).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Hex digits of a workspace id: 64 bits of SHA-256, plenty for the
/// workspaces of one user.
const ID_HEX: usize = 16;

/// The id of the workspace at `workspace` (a canonical path): the first
/// [`ID_HEX`] hex digits of the SHA-256 of its bytes. Moving a workspace
/// gives it a new id (and so a new VM, agent home and approval).
pub fn workspace_id(workspace: &Path) -> String {
    let digest = Sha256::digest(workspace.as_os_str().as_encoded_bytes());
    hex(&digest)[..ID_HEX].to_string()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A non-empty absolute variable (XDG says relative ones are ignored).
fn xdg(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// The user commands in the guest run as: this host's user (name, uid,
/// gid), so files they create in shares are the user's on the host; `None`
/// when agentvm runs as root (the guest's commands then run as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestUser {
    /// Login name: the host's, when it is a portable name, else `user`.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl GuestUser {
    /// This process's user, unless root.
    pub fn detect() -> Option<GuestUser> {
        let uid = nix::unistd::getuid();
        if uid.is_root() {
            return None;
        }
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .filter(|n| is_portable_name(n))
            .unwrap_or_else(|| "user".to_string());
        Some(GuestUser {
            name,
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        })
    }

    /// Its home in the guest.
    pub fn home(&self) -> PathBuf {
        Path::new("/home").join(&self.name)
    }

    /// The guest agent's `agentvm.user=` value.
    pub fn cmdline_value(&self) -> String {
        format!("{}:{}:{}", self.name, self.uid, self.gid)
    }
}

/// A user name every guest accepts: `[A-Za-z0-9._-]`, 1 to 32 characters,
/// not starting with `-` or `.`, not all digits.
fn is_portable_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && !n.starts_with(['-', '.'])
        && !n.chars().all(|c| c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The persistent root layer of the workspace `id` under the data directory.
pub fn persistent_root(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("roots").join(id)
}

/// The default agent home of the workspace `id` under the data directory.
pub fn agent_home(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("homes").join(id)
}

/// Where approvals live under the configuration directory.
pub fn approvals(config_dir: &Path) -> PathBuf {
    config_dir.join("approved")
}

/// The approval record of the workspace `id` under the configuration
/// directory.
pub fn approval(config_dir: &Path, id: &str) -> PathBuf {
    approvals(config_dir).join(format!("{id}.json"))
}

/// `$HOME`, when set.
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Where every VM's state directory lives: `$XDG_RUNTIME_DIR/agentvm`, else
/// `/tmp/agentvm-$UID` (which another local user may have made first: the
/// lifecycle checks its owner and mode before using it).
pub fn state_root() -> PathBuf {
    match xdg("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("agentvm"),
        None => PathBuf::from(format!("/tmp/agentvm-{}", nix::unistd::getuid())),
    }
}

/// `$XDG_CONFIG_HOME/agentvm` (else `~/.config/agentvm`): approvals.
pub fn config_dir() -> Option<PathBuf> {
    xdg("XDG_CONFIG_HOME")
        .or_else(|| home().map(|h| h.join(".config")))
        .map(|d| d.join("agentvm"))
}

/// `$XDG_DATA_HOME/agentvm` (else `~/.local/share/agentvm`): agent homes.
pub fn data_dir() -> Option<PathBuf> {
    xdg("XDG_DATA_HOME")
        .or_else(|| home().map(|h| h.join(".local/share")))
        .map(|d| d.join("agentvm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_ids_depend_on_the_whole_path() {
        let a = workspace_id(Path::new("/home/u/a/api"));
        let b = workspace_id(Path::new("/home/u/b/api"));
        assert_eq!(a.len(), ID_HEX);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(a, workspace_id(Path::new("/home/u/a/api")));
    }

    #[test]
    fn only_portable_names_reach_the_guest() {
        for ok in ["alice", "a.b_c-1", "x"] {
            assert!(is_portable_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "1000",
            "a b",
            "a:b",
            "a\nb",
            "é",
            &"x".repeat(33),
        ] {
            assert!(!is_portable_name(bad), "{bad:?}");
        }
        let u = GuestUser {
            name: "alice".into(),
            uid: 1000,
            gid: 100,
        };
        assert_eq!(u.home(), Path::new("/home/alice"));
        assert_eq!(u.cmdline_value(), "alice:1000:100");
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
    }
}
