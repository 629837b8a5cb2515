use std::path::PathBuf;

use super::*;
use crate::lifecycle::{Recorded, SnapshotMount, SnapshotSecret};

fn base() -> Snapshot {
    Snapshot {
        name: "ws".into(),
        workspace: PathBuf::from("/home/u/ws"),
        kernel: PathBuf::from("/img/vmlinux"),
        initrd: Some(PathBuf::from("/img/initrd")),
        cmdline: "console=ttyS0".into(),
        memory_mib: 512,
        vcpus: 2,
        mounts: vec![SnapshotMount {
            source: PathBuf::from("/home/u/ws"),
            target: PathBuf::from("/home/u/ws"),
            read_only: false,
        }],
        files: vec![crate::lifecycle::files::SnapshotFile {
            source: PathBuf::from("/home/u/.gitconfig"),
            target: "~/.gitconfig".into(),
            mode: 0o644,
            sha256: crate::lifecycle::files::digest(b"[user] name = secret-name"),
        }],
        network_mode: "filtered".into(),
        policy: agentvm_net::Policy::new(agentvm_net::Mode::Filtered),
        env_keys: vec!["FOO".into()],
        scripts: vec![],
        post_down: vec![],
        pre_down: vec![],
        root_image: Some(PathBuf::from("/img")),
        persistent_root: None,
        user: None,
        guarded: vec![],
        seccomp: agentvm_vmm::SeccompLevel::Kill,
        log_max_mib: 0,
        net_memory_mib: 0,
        allow_unsandboxed_virtiofsd: false,
        hotplug_slots: 4,
        secrets: vec![SnapshotSecret {
            name: "TOKEN".into(),
            hosts: vec!["api.example.com".into()],
        }],
        ssh_agent: None,
        recorded: Some(Recorded {
            plugins: vec!["claude".into()],
            agent_home: Some(PathBuf::from("/data/homes/x")),
            env: [("FOO".to_string(), env_digest("FOO", "s3cret-value"))].into(),
            packages: vec![],
            npm: vec![],
            ssh_agent: false,
            ssh_keys: vec![],
            ssh_hosts: vec![],
            image: Some("id1".into()),
        }),
    }
}

fn rec(s: &mut Snapshot) -> &mut Recorded {
    s.recorded.as_mut().expect("recorded")
}

/// The differences as lines, each checked to be in `group`.
fn lines(a: &Snapshot, b: &Snapshot, group: &str) -> Vec<String> {
    let d = differences(a, b);
    assert!(!d.is_empty(), "expected a difference in {group}");
    for c in &d {
        assert_eq!(c.group, group, "{c}");
    }
    d.iter().map(ToString::to_string).collect()
}

#[test]
fn the_same_snapshot_has_no_differences() {
    assert!(differences(&base(), &base()).is_empty());
}

#[test]
fn resources_name_vcpus_and_memory() {
    let mut b = base();
    b.memory_mib = 1024;
    b.vcpus = 4;
    let l = lines(&base(), &b, "resources");
    assert_eq!(
        l,
        [
            "resources: vcpus 2 → 4",
            "resources: memory 512 MiB → 1024 MiB"
        ]
    );
}

#[test]
fn mounts_added_removed_and_read_only() {
    let mut b = base();
    b.mounts[0].read_only = true;
    b.mounts.push(SnapshotMount {
        source: PathBuf::from("/data"),
        target: PathBuf::from("/mnt/data"),
        read_only: false,
    });
    let l = lines(&base(), &b, "mounts");
    assert_eq!(l.len(), 1);
    assert!(l[0].contains("+/data:/mnt/data"), "{l:?}");
    assert!(l[0].contains("+/home/u/ws:/home/u/ws:ro"), "{l:?}");
    assert!(l[0].ends_with(" -/home/u/ws:/home/u/ws"), "{l:?}");
}

#[test]
fn network_mode_domains_ports_hosts_forwards() {
    let mut b = base();
    b.network_mode = "open".into();
    b.policy.domains.push("example.org".into());
    b.policy.ports.push(8080);
    b.policy
        .hosts
        .insert("db".into(), std::net::Ipv4Addr::new(127, 0, 0, 1));
    b.policy
        .forwards
        .push("3000:3000".parse().expect("forward"));
    let l = lines(&base(), &b, "network");
    assert_eq!(l[0], "network: mode filtered → open");
    assert!(
        l.iter().any(|x| x == "network: domains +example.org"),
        "{l:?}"
    );
    assert!(l.iter().any(|x| x == "network: ports +8080"), "{l:?}");
    assert!(
        l.iter().any(|x| x == "network: hosts +db=127.0.0.1"),
        "{l:?}"
    );
    assert!(
        l.iter()
            .any(|x| x == "network: forwards +127.0.0.1:3000:3000"),
        "{l:?}"
    );
}

#[test]
fn env_says_the_name_and_never_the_value() {
    let mut b = base();
    rec(&mut b)
        .env
        .insert("FOO".into(), env_digest("FOO", "other-s3cret"));
    let l = lines(&base(), &b, "env");
    assert_eq!(l, ["env: env FOO changed"]);
    for x in &l {
        assert!(!x.contains("s3cret"), "{x}");
    }
    // Added and removed names.
    let mut c = base();
    c.env_keys = vec!["BAR".into()];
    rec(&mut c).env = [("BAR".to_string(), env_digest("BAR", "s3cret-value"))].into();
    let l = lines(&base(), &c, "env");
    assert_eq!(l, ["env: names +BAR -FOO"]);
}

#[test]
fn the_env_digest_hides_the_value_and_binds_the_name() {
    let d = env_digest("FOO", "s3cret-value");
    assert!(!d.contains("s3cret"));
    assert_ne!(d, env_digest("BAR", "s3cret-value"));
    assert_ne!(d, env_digest("FOO", "s3cret-valuE"));
    // The separator keeps name and value apart.
    assert_ne!(env_digest("FO", "Ox"), env_digest("FOO", "x"));
}

#[test]
fn secrets_names_and_hosts() {
    let mut b = base();
    b.secrets[0].hosts = vec!["other.example.com".into()];
    b.secrets.push(SnapshotSecret {
        name: "KEY".into(),
        hosts: vec![],
    });
    let l = lines(&base(), &b, "secrets");
    assert_eq!(
        l,
        [
            "secrets: names +KEY",
            "secrets: TOKEN hosts +other.example.com -api.example.com"
        ]
    );
}

#[test]
fn ssh_agent_keys_hosts() {
    let mut b = base();
    let r = rec(&mut b);
    r.ssh_agent = true;
    r.ssh_keys = vec!["SHA256:abc".into()];
    r.ssh_hosts = vec!["github.com".into()];
    let l = lines(&base(), &b, "ssh");
    assert_eq!(
        l,
        [
            "ssh: agent off → on",
            "ssh: keys +SHA256:abc",
            "ssh: hosts +github.com"
        ]
    );
}

#[test]
fn image_paths_and_a_rebuilt_image() {
    let mut b = base();
    b.kernel = PathBuf::from("/other/vmlinux");
    let l = lines(&base(), &b, "image");
    assert_eq!(l, ["image: kernel /img/vmlinux → /other/vmlinux"]);
    // Same paths, other files.
    let mut c = base();
    rec(&mut c).image = Some("id2".into());
    assert_eq!(
        lines(&base(), &c, "image"),
        ["image: rebuilt since the VM started"]
    );
    // A root file system built from packages: they are compared, its path
    // (which only `up` knows) is not.
    let mut d = base();
    d.root_image = None;
    rec(&mut d).packages = vec!["ripgrep".into()];
    assert_eq!(lines(&base(), &d, "image"), ["image: packages +ripgrep"]);
}

#[test]
fn image_identity_changes_when_a_file_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = dir.path().join("vmlinux");
    std::fs::write(&k, b"kernel").expect("write");
    let one = image_identity(&[&k]).expect("identity");
    assert_eq!(image_identity(&[&k]).as_deref(), Some(one.as_str()));
    // A rebuild writes a new file in its place.
    let tmp = dir.path().join("vmlinux.new");
    std::fs::write(&tmp, b"kernel2").expect("write");
    std::fs::rename(&tmp, &k).expect("rename");
    assert_ne!(image_identity(&[&k]).expect("identity"), one);
    assert_eq!(image_identity(&[&dir.path().join("missing")]), None);
}

#[test]
fn plugins_agent_home_persistent_root_seccomp() {
    let mut b = base();
    rec(&mut b).plugins = vec!["codex".into()];
    assert_eq!(
        lines(&base(), &b, "plugins"),
        ["plugins: plugins +codex -claude"]
    );
    let mut c = base();
    rec(&mut c).agent_home = None;
    assert_eq!(
        lines(&base(), &c, "agent_home"),
        ["agent_home: agent_home /data/homes/x → none"]
    );
    let mut d = base();
    d.persistent_root = Some(PathBuf::from("/data/roots/x"));
    assert_eq!(
        lines(&base(), &d, "persistent_root"),
        ["persistent_root: persistent_root none → /data/roots/x"]
    );
    let mut e = base();
    e.seccomp = agentvm_vmm::SeccompLevel::Log;
    assert_eq!(
        lines(&base(), &e, "seccomp"),
        ["seccomp: seccomp kill → log"]
    );
}

#[test]
fn a_snapshot_from_before_records_compares_what_it_has() {
    let mut old = base();
    old.recorded = None;
    // Nothing it lacks is called a change.
    assert!(differences(&old, &base()).is_empty());
    let mut b = base();
    b.memory_mib = 64;
    assert_eq!(lines(&old, &b, "resources").len(), 1);
}

#[test]
fn control_characters_in_a_path_are_escaped() {
    let mut b = base();
    b.kernel = PathBuf::from("/img/\x1b[2Jvmlinux");
    let l = lines(&base(), &b, "image");
    assert!(!l[0].contains('\x1b'), "{l:?}");
}

#[test]
fn copied_files_by_list_mode_and_digest_never_content() {
    let a = base();
    let mut b = base();
    b.files[0].sha256 = crate::lifecycle::files::digest(b"[user] name = other-name");
    b.files[0].mode = 0o600;
    b.files.push(crate::lifecycle::files::SnapshotFile {
        source: PathBuf::from("/home/u/.npmrc"),
        target: "/etc/npmrc".into(),
        mode: 0o644,
        sha256: crate::lifecycle::files::digest(b"token"),
    });
    let diff: Vec<String> = differences(&a, &b).iter().map(|c| c.to_string()).collect();
    assert_eq!(
        diff,
        [
            "files: files +/home/u/.npmrc:/etc/npmrc",
            "files: ~/.gitconfig changed",
            "files: ~/.gitconfig mode 644 → 600",
        ]
    );
    for line in &diff {
        assert!(!line.contains("name") && !line.contains("token"), "{line}");
    }
    // A source that cannot be read now says so, not "changed".
    let mut c = base();
    c.files[0].sha256 = "unreadable".into();
    let diff: Vec<String> = differences(&a, &c).iter().map(|c| c.to_string()).collect();
    assert_eq!(diff, ["files: /home/u/.gitconfig cannot be read now"]);
    assert!(differences(&a, &base()).is_empty());
}
