use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

fn me(home: &str) -> Owner {
    Owner {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        home: home.into(),
    }
}

fn copy(target: &str, mode: u32, content: &[u8]) -> FileCopy {
    FileCopy {
        target: target.as_bytes().to_vec(),
        mode,
        content: content.to_vec(),
    }
}

#[test]
fn writes_under_home_with_mode_owner_and_new_directories() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("home/z")).unwrap();
    let owner = me("/home/z");
    let at = write(
        root.path(),
        &owner,
        &copy("~/.config/git/config", 0o640, b"[user]\n"),
    )
    .unwrap();
    assert_eq!(at, Path::new("/home/z/.config/git/config"));
    let file = root.path().join("home/z/.config/git/config");
    assert_eq!(std::fs::read(&file).unwrap(), b"[user]\n");
    let meta = std::fs::symlink_metadata(&file).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid));
    let made = std::fs::metadata(root.path().join("home/z/.config")).unwrap();
    assert_eq!(made.uid(), owner.uid);
    // Absolute targets too; a second copy replaces the first whole.
    write(root.path(), &owner, &copy("/etc/npmrc", 0o644, b"one two")).unwrap();
    write(root.path(), &owner, &copy("/etc/npmrc", 0o600, b"3")).unwrap();
    let npmrc = root.path().join("etc/npmrc");
    assert_eq!(std::fs::read(&npmrc).unwrap(), b"3");
    assert_eq!(
        std::fs::metadata(&npmrc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(root.path().join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [OsStr::new("npmrc")]);
}

#[test]
fn a_link_planted_at_the_target_is_replaced_not_followed() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("home/z")).unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let victim = root.path().join("etc/shadow");
    std::fs::write(&victim, b"root:secret").unwrap();
    let link = root.path().join("home/z/.gitconfig");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    write(
        root.path(),
        &me("/home/z"),
        &copy("~/.gitconfig", 0o644, b"mine"),
    )
    .unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"root:secret");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert_eq!(std::fs::read(&link).unwrap(), b"mine");
}

#[test]
fn a_link_planted_as_a_directory_on_the_way_is_refused() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("home/z")).unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::os::unix::fs::symlink(root.path().join("etc"), root.path().join("home/z/.config"))
        .unwrap();
    let err = write(
        root.path(),
        &me("/home/z"),
        &copy("~/.config/passwd", 0o644, b"x"),
    )
    .unwrap_err();
    assert!(matches!(err, FileError::NotADirectory(ref p) if p == Path::new("/home/z/.config")));
    assert!(!root.path().join("etc/passwd").exists());
}

#[test]
fn relative_dotdot_and_special_modes_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let owner = me("/home/z");
    for (target, mode) in [
        ("relative", 0o644),
        ("~/../../etc/passwd", 0o644),
        ("/etc/../etc/passwd", 0o644),
        ("~/./x", 0o644),
        ("/", 0o644),
        ("/x", 0o4755),
        ("/x", 0o2755),
    ] {
        assert!(
            matches!(
                write(root.path(), &owner, &copy(target, mode, b"x")),
                Err(FileError::Refused(_))
            ),
            "{target} {mode:o}"
        );
    }
    // A home with `..` in the guest's passwd is refused as well.
    let odd = me("/home/../etc");
    assert!(matches!(
        write(root.path(), &odd, &copy("~/x", 0o644, b"x")),
        Err(FileError::Refused(_))
    ));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn a_directory_at_the_target_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/npmrc/inner")).unwrap();
    assert!(write(root.path(), &me("/"), &copy("/etc/npmrc", 0o644, b"x")).is_err());
    assert!(root.path().join("etc/npmrc/inner").is_dir());
}
