#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
    _apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n\
    nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin";
const GROUP: &str = "root:x:0:\nsudo:x:27:\nusers:x:100:\nnogroup:x:65534:\n";
const SHADOW: &str = "root:*:19000:0:99999:7:::\n";

fn spec(name: &str, uid: u32, gid: u32) -> UserSpec {
    UserSpec {
        name: name.into(),
        uid,
        gid,
    }
}

#[test]
fn new_user_and_group() {
    let e = plan(
        &spec("dev", 1000, 1000),
        PASSWD,
        GROUP,
        Some(SHADOW),
        "/bin/bash",
    )
    .unwrap();
    // The passwd file had no final newline: one is added, nothing else changes.
    assert_eq!(
        e.passwd.unwrap(),
        format!("{PASSWD}\ndev:x:1000:1000::/home/dev:/bin/bash\n")
    );
    assert_eq!(e.group.unwrap(), format!("{GROUP}dev:x:1000:\n"));
    assert_eq!(e.shadow.unwrap(), format!("{SHADOW}dev:!::0:99999:7:::\n"));
    assert_eq!(
        e.account,
        Account {
            name: "dev".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/dev".into()
        }
    );
    assert!(e.notes.is_empty());
}

#[test]
fn existing_gid_is_used_and_no_shadow_file_is_created() {
    let e = plan(&spec("dev", 1000, 100), PASSWD, GROUP, None, "/bin/sh").unwrap();
    assert_eq!(e.group, None);
    assert_eq!(e.shadow, None);
    assert!(e
        .passwd
        .unwrap()
        .ends_with("dev:x:1000:100::/home/dev:/bin/sh\n"));
}

#[test]
fn existing_uid_under_another_name_is_used() {
    let passwd = format!("{PASSWD}\ndebian:x:1000:1000::/home/debian:/bin/bash\n");
    let e = plan(
        &spec("dev", 1000, 1000),
        &passwd,
        GROUP,
        Some(SHADOW),
        "/bin/sh",
    )
    .unwrap();
    assert_eq!((e.passwd, e.group, e.shadow), (None, None, None));
    assert_eq!(e.account.name, "debian");
    assert_eq!(e.account.home, "/home/debian");
    assert_eq!(e.notes.len(), 1);
    // The same user again: nothing to do, nothing to say.
    let passwd = format!("{PASSWD}\ndev:x:1000:1000::/home/dev:/bin/bash\n");
    let e = plan(&spec("dev", 1000, 1000), &passwd, GROUP, None, "/bin/sh").unwrap();
    assert_eq!(e.passwd, None);
    assert!(e.notes.is_empty());
}

#[test]
fn name_taken_by_another_uid_gets_a_uid_name() {
    // A host user called "daemon" with uid 1000 must not become uid 1.
    let e = plan(
        &spec("daemon", 1000, 1000),
        PASSWD,
        GROUP,
        Some(SHADOW),
        "/bin/sh",
    )
    .unwrap();
    assert_eq!(e.account.name, "u1000");
    assert!(e
        .passwd
        .unwrap()
        .ends_with("u1000:x:1000:1000::/home/u1000:/bin/sh\n"));
    assert!(e.group.unwrap().ends_with("u1000:x:1000:\n"));
    assert_eq!(e.notes.len(), 1);
    // A group name clash alone gives the group a gid name.
    let e = plan(&spec("sudo", 1000, 1000), PASSWD, GROUP, None, "/bin/sh").unwrap();
    assert_eq!(e.account.name, "sudo");
    assert!(e.group.unwrap().ends_with("g1000:x:1000:\n"));
    // Both names taken: refused rather than guessed.
    let passwd = format!("{PASSWD}\nu1000:x:7:7::/:/bin/sh\n");
    assert!(plan(&spec("daemon", 1000, 1000), &passwd, GROUP, None, "/bin/sh").is_err());
}

#[test]
fn malformed_lines_are_kept_and_ignored() {
    let passwd = "garbage\nroot:x:0:0:root:/root:/bin/bash\nx:y:notanumber:1:::\n";
    let e = plan(&spec("dev", 1000, 1000), passwd, "", None, "/bin/sh").unwrap();
    assert_eq!(
        e.passwd.unwrap(),
        format!("{passwd}dev:x:1000:1000::/home/dev:/bin/sh\n")
    );
    assert_eq!(e.group.unwrap(), "dev:x:1000:\n");
    // Empty files (a missing /etc/passwd reads as empty).
    let e = plan(&spec("dev", 1000, 1000), "", "", None, "/bin/sh").unwrap();
    assert_eq!(e.passwd.unwrap(), "dev:x:1000:1000::/home/dev:/bin/sh\n");
}

#[test]
fn ensure_writes_files_home_and_sudoers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/sudoers.d")).unwrap();
    std::fs::create_dir_all(root.join("etc/skel")).unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/bash"), "").unwrap();
    std::fs::write(root.join("etc/skel/.bashrc"), "# rc\n").unwrap();
    std::fs::write(root.join("etc/passwd"), PASSWD).unwrap();
    std::fs::write(root.join("etc/group"), GROUP).unwrap();
    std::fs::write(root.join("etc/shadow"), SHADOW).unwrap();
    std::fs::set_permissions(
        root.join("etc/shadow"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let me = nix::unistd::getuid().as_raw();
    let (account, notes) = ensure(root, &spec("dev", 4321, 4322)).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(account.home, "/home/dev");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.ends_with("\ndev:x:4321:4322::/home/dev:/bin/bash\n"));
    let shadow = root.join("etc/shadow");
    assert_eq!(
        std::fs::metadata(&shadow).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert!(std::fs::read_to_string(&shadow)
        .unwrap()
        .contains("\ndev:!:"));
    let sudoers = root.join(SUDOERS_DROP_IN);
    assert_eq!(
        std::fs::read_to_string(&sudoers).unwrap(),
        "dev ALL=(ALL:ALL) NOPASSWD: ALL\n"
    );
    assert_eq!(
        std::fs::metadata(&sudoers).unwrap().permissions().mode() & 0o777,
        0o440
    );
    let home = std::fs::metadata(root.join("home/dev")).unwrap();
    assert_eq!(home.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_to_string(root.join("home/dev/.bashrc")).unwrap(),
        "# rc\n"
    );
    if me == 0 {
        assert_eq!((home.uid(), home.gid()), (4321, 4322));
    }
    // Idempotent: a second boot adds nothing.
    let (again, notes) = ensure(root, &spec("dev", 4321, 4322)).unwrap();
    assert_eq!(again, account);
    assert!(notes.is_empty());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/passwd")).unwrap(),
        passwd
    );
    // No leftovers of the atomic writes.
    let names: Vec<_> = std::fs::read_dir(root.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("agentvm-tmp")),
        "{names:?}"
    );
}

#[test]
fn ensure_with_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let (account, _) = ensure(root, &spec("dev", 1000, 1000)).unwrap();
    assert_eq!(account.name, "dev");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/passwd")).unwrap(),
        "dev:x:1000:1000::/home/dev:/bin/sh\n"
    );
    assert!(!root.join("etc/shadow").exists());
    assert!(!root.join(SUDOERS_DROP_IN).exists());
    assert!(root.join("home/dev").is_dir());
}
