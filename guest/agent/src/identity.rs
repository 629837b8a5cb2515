//! The host user's public identity in the guest (`Identity` frames, sent
//! with the forwarded ssh-agent): their known ssh hosts go into the
//! system-wide `/etc/ssh/ssh_known_hosts`, their git name and email into
//! `/etc/gitconfig`, so `git push` over ssh checks the server and commits
//! carry the right author, while anything the guest's user sets in their
//! own `~/.ssh/known_hosts` or `~/.gitconfig` still wins.
//!
//! Each file keeps what else it holds: ours is one block between
//! [`BEGIN`] and [`END`] lines, replaced on every `Identity` (a persistent
//! root keeps the file across boots).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use agentvm_protocol::frame::Identity;

/// The line our block starts with.
pub const BEGIN: &str = "# BEGIN agentvm: the host user's, replaced at every `agentvm up`";
/// The line our block ends with.
pub const END: &str = "# END agentvm";

/// Writes `id` under `root` (`/` in the guest).
pub fn apply(root: &Path, id: &Identity) -> io::Result<()> {
    if !id.known_hosts.is_empty() {
        let mut hosts = id.known_hosts.clone();
        if !hosts.ends_with(b"\n") {
            hosts.push(b'\n');
        }
        replace_block(&root.join("etc/ssh/ssh_known_hosts"), &hosts)?;
    }
    if id.git_name.is_some() || id.git_email.is_some() {
        let mut config = b"[user]\n".to_vec();
        for (key, value) in [("name", &id.git_name), ("email", &id.git_email)] {
            if let Some(v) = value {
                config.extend_from_slice(format!("\t{key} = ").as_bytes());
                config.extend_from_slice(&git_quote(v));
                config.push(b'\n');
            }
        }
        replace_block(&root.join("etc/gitconfig"), &config)?;
    }
    Ok(())
}

/// A git config value in double quotes, with what git's parser reads
/// specially escaped; other control characters are left out.
fn git_quote(v: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b < 0x20 || b == 0x7f => {}
            b => out.push(b),
        }
    }
    out.push(b'"');
    out
}

/// Replaces our block in `path` (or appends it) with `content`, keeping
/// every other line; written to a new file and renamed into place.
fn replace_block(path: &Path, content: &[u8]) -> io::Result<()> {
    let old = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut out = Vec::with_capacity(old.len() + content.len() + 80);
    let mut inside = false;
    for line in old.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        if bare == BEGIN.as_bytes() {
            inside = true;
        } else if inside && bare == END.as_bytes() {
            inside = false;
        } else if !inside {
            out.extend_from_slice(line);
        }
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(BEGIN.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(content);
    out.extend_from_slice(END.as_bytes());
    out.push(b'\n');
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("agentvm-tmp");
    std::fs::write(&tmp, &out)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_and_git_identity_are_written_and_replaced_in_place() {
        let root = tempfile::tempdir().unwrap();
        let gitconfig = root.path().join("etc/gitconfig");
        std::fs::create_dir_all(gitconfig.parent().unwrap()).unwrap();
        std::fs::write(&gitconfig, "[core]\n\teditor = vi").unwrap();
        let id = Identity {
            known_hosts: b"github.com ssh-ed25519 AAAA".to_vec(),
            git_name: Some("Zoë \"Z\" O\\Doe\n\x1b[31m".as_bytes().to_vec()),
            git_email: Some(b"z@example.com".to_vec()),
        };
        apply(root.path(), &id).unwrap();
        let want_config = format!(
            "[core]\n\teditor = vi\n{BEGIN}\n[user]\n\tname = \"Zoë \\\"Z\\\" O\\\\Doe\\n[31m\"\n\
             \temail = \"z@example.com\"\n{END}\n"
        );
        assert_eq!(std::fs::read_to_string(&gitconfig).unwrap(), want_config);
        let hosts = root.path().join("etc/ssh/ssh_known_hosts");
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            format!("{BEGIN}\ngithub.com ssh-ed25519 AAAA\n{END}\n")
        );
        let mode = std::fs::metadata(&hosts).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        // Again (the next `up` on a persistent root): replaced, not added.
        let id2 = Identity {
            known_hosts: b"gitlab.com ssh-ed25519 BBBB\n".to_vec(),
            git_name: None,
            git_email: Some(b"new@example.com".to_vec()),
        };
        apply(root.path(), &id2).unwrap();
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            format!("{BEGIN}\ngitlab.com ssh-ed25519 BBBB\n{END}\n")
        );
        assert_eq!(
            std::fs::read_to_string(&gitconfig).unwrap(),
            format!(
                "[core]\n\teditor = vi\n{BEGIN}\n[user]\n\temail = \"new@example.com\"\n{END}\n"
            )
        );
        // Nothing to say: nothing touched.
        apply(root.path(), &Identity::default()).unwrap();
        assert!(std::fs::read_to_string(&gitconfig)
            .unwrap()
            .contains("new@example.com"));
    }

    #[test]
    fn git_reads_the_identity_back() {
        if std::process::Command::new("git")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: no git");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let name = "Zoë \"Z\" O\\Doe";
        apply(
            root.path(),
            &Identity {
                git_name: Some(name.as_bytes().to_vec()),
                ..Identity::default()
            },
        )
        .unwrap();
        let out = std::process::Command::new("git")
            .args(["config", "--file"])
            .arg(root.path().join("etc/gitconfig"))
            .args(["--get", "user.name"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{name}\n"));
    }
}
