//! Making sure the default user (`agentvm.user=NAME:UID:GID`) exists in the
//! root file system: `/etc/passwd`, `/etc/group`, `/etc/shadow`, a home
//! directory and a sudoers drop-in.
//!
//! The uid is what matters (virtiofsd maps guest uids 1:1, so it decides who
//! owns the files the guest writes in shares); the name is cosmetic. So:
//! - a passwd entry with the uid already there is used as it is, whatever
//!   its name (and the console says so);
//! - if the name is taken by another uid, the user is created as `u<UID>`;
//! - a group with the gid already there is used as it is; otherwise one is
//!   created, named like the user (or `g<GID>` if that name is taken);
//! - a shadow entry with a locked password (`!`) is added when
//!   `/etc/shadow` exists (sudo needs no password: see the drop-in).
//!
//! Nothing is ever duplicated, and nothing existing is changed.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::cmdline::UserSpec;

/// The sudoers drop-in written when `/etc/sudoers.d` exists.
pub const SUDOERS_DROP_IN: &str = "etc/sudoers.d/agentvm";

/// The user as the files now have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name (may differ from the requested one; see the module doc).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The new file contents (only those that change) and the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// New `/etc/passwd`, if it changes.
    pub passwd: Option<String>,
    /// New `/etc/group`, if it changes.
    pub group: Option<String>,
    /// New `/etc/shadow`, if it changes.
    pub shadow: Option<String>,
    /// The account to use.
    pub account: Account,
    /// Lines for the console.
    pub notes: Vec<String>,
}

/// `(name, id, home)` of each well-formed line of a passwd (7 fields) or
/// group (4 fields) file; home is empty for groups.
fn entries(text: &str, fields: usize) -> Vec<(&str, u32, u32, &str)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < fields {
                return None;
            }
            let id = f[2].parse().ok()?;
            let gid = if fields == 7 { f[3].parse().ok()? } else { id };
            Some((f[0], id, gid, if fields == 7 { f[5] } else { "" }))
        })
        .collect()
}

fn append(text: &str, line: &str) -> String {
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    out
}

/// Works out the entries to add for `spec`; `shell` is the login shell new
/// entries get; `shadow` is `None` when the file does not exist.
pub fn plan(
    spec: &UserSpec,
    passwd: &str,
    group: &str,
    shadow: Option<&str>,
    shell: &str,
) -> Result<Edit, String> {
    let users = entries(passwd, 7);
    let mut notes = Vec::new();
    if let Some((name, uid, gid, home)) = users.iter().find(|u| u.1 == spec.uid) {
        if *name != spec.name {
            notes.push(format!(
                "uid {uid} is {name:?} in /etc/passwd; commands run as {name:?}, not {:?}",
                spec.name
            ));
        }
        return Ok(Edit {
            passwd: None,
            group: None,
            shadow: None,
            account: Account {
                name: (*name).to_owned(),
                uid: *uid,
                gid: *gid,
                home: (*home).to_owned(),
            },
            notes,
        });
    }
    let mut name = spec.name.clone();
    if users.iter().any(|u| u.0 == name) {
        name = format!("u{}", spec.uid);
        if users.iter().any(|u| u.0 == name) {
            return Err(format!(
                "names {:?} and {name:?} are both taken by other uids",
                spec.name
            ));
        }
        notes.push(format!(
            "user name {:?} belongs to another uid; uid {} is created as {name:?}",
            spec.name, spec.uid
        ));
    }
    let groups = entries(group, 4);
    let new_group = if groups.iter().any(|g| g.1 == spec.gid) {
        None
    } else {
        let gname = if groups.iter().any(|g| g.0 == name) {
            format!("g{}", spec.gid)
        } else {
            name.clone()
        };
        if groups.iter().any(|g| g.0 == gname) {
            return Err(format!("group name {gname:?} is taken by another gid"));
        }
        Some(append(group, &format!("{gname}:x:{}:", spec.gid)))
    };
    let home = format!("/home/{name}");
    let line = format!("{name}:x:{}:{}::{home}:{shell}", spec.uid, spec.gid);
    let new_shadow = shadow.and_then(|s| {
        let present = s
            .lines()
            .any(|l| l.split(':').next() == Some(name.as_str()));
        (!present).then(|| append(s, &format!("{name}:!::0:99999:7:::")))
    });
    Ok(Edit {
        passwd: Some(append(passwd, &line)),
        group: new_group,
        shadow: new_shadow,
        account: Account {
            name,
            uid: spec.uid,
            gid: spec.gid,
            home,
        },
        notes,
    })
}

/// The sudoers line for `name`.
pub fn sudoers_line(name: &str) -> String {
    format!("{name} ALL=(ALL:ALL) NOPASSWD: ALL\n")
}

/// Applies [`plan`] to the files under `root` (`/` in the guest), creates
/// the home directory (0755, owned by the user, `/etc/skel`'s files copied)
/// unless it exists, and writes the sudoers drop-in when `etc/sudoers.d`
/// exists. Returns the account and the notes for the console.
pub fn ensure(root: &Path, spec: &UserSpec) -> Result<(Account, Vec<String>), String> {
    let read = |p: &str| std::fs::read_to_string(root.join(p));
    let passwd = read("etc/passwd").unwrap_or_default();
    let group = read("etc/group").unwrap_or_default();
    let shadow = read("etc/shadow").ok();
    let shell = if root.join("bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let edit = plan(spec, &passwd, &group, shadow.as_deref(), shell)?;
    let write = |p: &str, text: &Option<String>, mode: u32| match text {
        Some(t) => replace_file(&root.join(p), t.as_bytes(), mode)
            .map_err(|e| format!("cannot write /{p}: {e}")),
        None => Ok(()),
    };
    write("etc/group", &edit.group, 0o644)?;
    write("etc/shadow", &edit.shadow, 0o640)?;
    write("etc/passwd", &edit.passwd, 0o644)?;
    let mut notes = edit.notes;
    let a = &edit.account;
    let home = root.join(a.home.trim_start_matches('/'));
    if !a.home.is_empty() && a.home != "/" && !home.exists() {
        if let Err(e) = make_home(root, &home, a.uid, a.gid) {
            notes.push(format!("cannot create {}: {e}", a.home));
        }
    }
    if root.join("etc/sudoers.d").is_dir() {
        let line = sudoers_line(&a.name);
        if let Err(e) = replace_file(&root.join(SUDOERS_DROP_IN), line.as_bytes(), 0o440) {
            notes.push(format!("cannot write /{SUDOERS_DROP_IN}: {e}"));
        }
    }
    Ok((edit.account, notes))
}

/// Writes `path` through a temporary file and a rename, so a reader never
/// sees half a file. An existing file keeps its mode and owner.
fn replace_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let old = std::fs::metadata(path).ok();
    let mode = old
        .as_ref()
        .map_or(mode, |m| m.permissions().mode() & 0o7777);
    let tmp = path.with_extension("agentvm-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Some(m) = &old {
        std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn make_home(root: &Path, home: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    if let Some(parent) = home.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::create_dir(home)?;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(home, Some(uid), Some(gid))?;
    // Shell start-up files (.bashrc, .profile): regular files only.
    if let Ok(dir) = std::fs::read_dir(root.join("etc/skel")) {
        for entry in dir.flatten() {
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file {
                continue;
            }
            let dest = home.join(entry.file_name());
            if std::fs::copy(entry.path(), &dest).is_ok() {
                let _ = std::os::unix::fs::chown(&dest, Some(uid), Some(gid));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "accounts_tests.rs"]
mod tests;
