use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;
use crate::config::{Host, Mount, Origin};

/// A workspace (shared read-write, as by default) and a home beside it.
struct Setup {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    cfg: ResolvedConfig,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let host = Host {
            home: Some(home.clone()),
            cpus: 1,
            memory_mib: 1024,
            data_dir: None,
            guest_user: None,
        };
        let cfg = crate::config::resolve(&ws, None, &host).unwrap();
        Setup {
            _tmp: tmp,
            home,
            cfg,
        }
    }

    fn entry(source: &Path, target: &str, mode: Option<u32>) -> CopiedFile {
        CopiedFile {
            source: source.to_path_buf(),
            target: target.into(),
            mode,
            origin: Origin::File {
                file: ".agentvm/config.toml".into(),
                line: 7,
            },
        }
    }

    /// Reads `source` as the only `[[files]]` entry.
    fn read(&mut self, source: &Path, mode: Option<u32>) -> anyhow::Result<HostFile> {
        self.cfg.files = vec![Setup::entry(source, "~/.x", mode)];
        read_all(&self.cfg).map(|mut v| v.remove(0))
    }

    fn err(&mut self, source: &Path) -> String {
        format!("{:#}", self.read(source, None).unwrap_err())
    }
}

#[test]
fn a_regular_file_is_read_with_its_mode_or_the_configured_one() {
    let mut s = Setup::new();
    let src = s.home.join(".gitconfig");
    std::fs::write(&src, b"[user]\n").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o4750)).unwrap();
    let f = s.read(&src, None).unwrap();
    assert_eq!(f.content, b"[user]\n");
    // setuid is never carried over.
    assert_eq!(f.mode, 0o750);
    assert_eq!(s.read(&src, Some(0o600)).unwrap().mode, 0o600);
    // The snapshot keeps a digest that follows the content, never the content.
    let snap = f.snapshot();
    assert_eq!(snap.sha256, digest(b"[user]\n"));
    assert!(!serde_json::to_string(&snap).unwrap().contains("[user]"));
    std::fs::write(&src, b"[user]\n\tname = x\n").unwrap();
    assert_ne!(s.read(&src, None).unwrap().snapshot().sha256, snap.sha256);
}

#[test]
fn a_stow_link_is_followed_to_its_regular_file() {
    let mut s = Setup::new();
    let real = s.home.join("dotfiles/git/.gitconfig");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, b"stowed").unwrap();
    symlink("dotfiles/git/.gitconfig", s.home.join(".gitconfig")).unwrap();
    assert_eq!(
        s.read(&s.home.join(".gitconfig"), None).unwrap().content,
        b"stowed"
    );
}

#[test]
fn what_is_not_a_regular_file_is_refused_by_name() {
    let mut s = Setup::new();
    let dir = s.home.join(".config");
    std::fs::create_dir_all(&dir).unwrap();
    let link = s.home.join("to-dir");
    symlink(&dir, &link).unwrap();
    let e = s.err(&link);
    assert!(e.contains("is not a regular file (a directory)"), "{e}");
    assert!(e.starts_with(".agentvm/config.toml:7: cannot copy "), "{e}");
    // A FIFO does not hang `up`.
    let fifo = s.home.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(s.err(&fifo).contains("(a FIFO)"));
    assert!(s.err(Path::new("/dev/null")).contains("(a device)"));
    let missing = s.home.join(".npmrc");
    let e = s.err(&missing);
    assert!(
        e.contains(&format!("{} does not exist", missing.display())),
        "{e}"
    );
    let loop_a = s.home.join("a");
    symlink("b", &loop_a).unwrap();
    symlink("a", s.home.join("b")).unwrap();
    assert!(s.err(&loop_a).contains("more than 40 links"));
}

#[test]
fn sizes_are_bounded_per_file_and_in_all() {
    let mut s = Setup::new();
    let big = s.home.join("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap();
    let e = s.err(&big);
    assert!(
        e.contains(&big.display().to_string()) && e.contains("1016 KiB"),
        "{e}"
    );
    f.set_len(MAX_FILE_BYTES).unwrap();
    assert_eq!(
        s.read(&big, None).unwrap().content.len() as u64,
        MAX_FILE_BYTES
    );
    // Nine files of 1016 KiB pass 8 MiB: the one that crosses is named.
    s.cfg.files = (0..9)
        .map(|i| Setup::entry(&big, &format!("/f{i}"), None))
        .collect();
    let e = format!("{:#}", read_all(&s.cfg).unwrap_err());
    assert!(e.contains("more than 8 MiB"), "{e}");
}

#[test]
fn nothing_is_read_from_or_through_a_read_write_share() {
    let mut s = Setup::new();
    let ws = s.cfg.workspace.clone();
    let secret = s.home.join(".ssh/id_ed25519");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, b"PRIVATE KEY").unwrap();
    // In the workspace: the guest could make it a link to the key.
    std::fs::write(ws.join("gitconfig"), b"x").unwrap();
    let e = s.err(&ws.join("gitconfig"));
    assert!(e.contains("inside the read-write share"), "{e}");
    // The guest made it a link to the key: refused, before any read.
    let planted = ws.join("planted");
    symlink(&secret, &planted).unwrap();
    assert!(s.err(&planted).contains("inside the read-write share"));
    // A link of the user's that goes through the share.
    let via = s.home.join(".gitconfig");
    symlink(&planted, &via).unwrap();
    let e = s.err(&via);
    assert!(
        e.contains("inside the read-write share") && !e.contains("PRIVATE"),
        "{e}"
    );
    // Shared read-only, the guest cannot change it: allowed.
    s.cfg.mounts = vec![Mount {
        read_only: true,
        ..s.cfg.mounts[0].clone()
    }];
    assert_eq!(s.read(&ws.join("gitconfig"), None).unwrap().content, b"x");
}

#[test]
fn planned_marks_an_unreadable_source_instead_of_failing() {
    let mut s = Setup::new();
    let ok = s.home.join("ok");
    std::fs::write(&ok, b"1").unwrap();
    s.cfg.files = vec![
        Setup::entry(&ok, "/a", Some(0o644)),
        Setup::entry(&s.home.join("gone"), "/b", None),
    ];
    let p = planned(&s.cfg);
    assert_eq!(p[0].sha256, digest(b"1"));
    assert_eq!(p[1].sha256, "unreadable");
}
