//! Users from `/etc/passwd` and `/etc/group`.
//!
//! Parsed directly rather than through `getpwnam`: the agent is linked
//! statically, and glibc's NSS cannot load its modules in a static binary.

use std::path::Path;

/// Who a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name (the uid in decimal if the passwd file has none).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the primary group included).
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// The user `spec` names: a login name, or a decimal uid (which need not be
/// in the passwd file). `None` if a name is not found.
pub fn lookup(spec: &str, passwd: &str, group: &str) -> Option<User> {
    let by_uid = spec.parse::<u32>().ok();
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid = f[2].parse::<u32>().ok()?;
        let gid = f[3].parse::<u32>().ok()?;
        let matches = match by_uid {
            Some(u) => u == uid,
            None => f[0] == spec,
        };
        matches.then(|| (f[0].to_owned(), uid, gid, f[5].to_owned(), f[6].to_owned()))
    });
    let (name, uid, gid, home, shell) = match (entry, by_uid) {
        (Some(e), _) => e,
        (None, Some(uid)) => (
            uid.to_string(),
            uid,
            uid,
            if uid == 0 { "/root" } else { "/" }.to_owned(),
            "/bin/sh".to_owned(),
        ),
        (None, None) => return None,
    };
    let mut groups = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(g) = f[2].parse::<u32>() else { continue };
        if f[3].split(',').any(|m| m == name) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let shell = if shell.is_empty() {
        "/bin/sh".to_owned()
    } else {
        shell
    };
    Some(User {
        name,
        uid,
        gid,
        groups,
        home,
        shell,
    })
}

/// [`lookup`] against the files under `root` (`/` in the guest); missing
/// files read as empty.
pub fn lookup_in(root: &Path, spec: &str) -> Option<User> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
    lookup(spec, &read("etc/passwd"), &read("etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        dev:x:1000:1000:Dev,,,:/home/dev:\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:dev,other\nkvm:x:108:dev\nbad\n";

    #[test]
    fn by_name_with_groups() {
        let u = lookup("dev", PASSWD, GROUP).unwrap();
        assert_eq!(
            u,
            User {
                name: "dev".into(),
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 10, 108],
                home: "/home/dev".into(),
                shell: "/bin/sh".into(),
            }
        );
    }

    #[test]
    fn by_uid_known_and_unknown() {
        assert_eq!(lookup("0", PASSWD, GROUP).unwrap().home, "/root");
        let u = lookup("4242", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4242, "/"));
        assert_eq!(lookup("nobody", PASSWD, GROUP), None);
        assert_eq!(lookup("", "", ""), None);
    }
}
