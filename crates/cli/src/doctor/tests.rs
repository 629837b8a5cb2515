//! The doctor's decisions, from data: good inputs, bad ones and hostile
//! ones (garbled versions, missing fields, escapes in paths).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agentvm_image::stamp::Stamp;

use super::checks::*;

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn lines_carry_the_status_word() {
    let c = memory(Some("MemAvailable: 8388608 kB\n"), 4096, 64);
    assert_eq!(
        c.line(),
        "memory: ok: 8192 MiB available for a VM of up to 4416 MiB (memory_mib 4096 + \
         network 64 + about 256 for the VMM)"
    );
    let c = config(&ConfigState::New {
        file: "/w/.agentvm/config.toml".into(),
    });
    assert!(
        c.line()
            .starts_with("configuration: FAIL: /w/.agentvm/config.toml is not approved yet"),
        "{}",
        c.line()
    );
    let c = memory(None, 4096, 64);
    assert!(c.line().starts_with("memory: warning: "), "{}", c.line());
}

#[test]
fn configuration_states() {
    let file = || "/w/.agentvm/config.toml".to_string();
    assert_eq!(
        config(&ConfigState::Approved { file: file() }).status,
        Status::Ok
    );
    assert_eq!(
        config(&ConfigState::NoFile {
            workspace: "/w".into()
        })
        .status,
        Status::Ok
    );
    let new = config(&ConfigState::New { file: file() });
    assert_eq!(new.status, Status::Fail);
    assert!(new.message.contains("`agentvm trust`"), "{}", new.message);
    let changed = config(&ConfigState::Changed { file: file() });
    assert_eq!(changed.status, Status::Fail);
    assert!(changed.message.contains("changed since you approved it"));
    let bad = config(&ConfigState::Invalid(
        "/w/.agentvm/config.toml:3:1: unknown key `memroy_mib`".into(),
    ));
    assert_eq!(bad.status, Status::Fail);
    assert!(
        bad.message.contains("unknown key `memroy_mib`"),
        "{}",
        bad.message
    );
    assert_eq!(
        config(&ConfigState::Exposed("mount exposes approvals".into())).status,
        Status::Fail
    );
    assert_eq!(
        config(&ConfigState::Unknown("EACCES".into())).status,
        Status::Warn
    );
}

#[test]
fn versions_parse_and_garbage_does_not() {
    assert_eq!(parse_version("1.14.0"), Some((1, 14, 0)));
    assert_eq!(parse_version("v1.13"), Some((1, 13, 0)));
    assert_eq!(parse_version("1.13.0-rc1"), Some((1, 13, 0)));
    assert_eq!(parse_version(" 2 "), Some((2, 0, 0)));
    for bad in [
        "",
        "x1.2",
        "1.x",
        "..",
        "-1.2",
        "1.2.3.4.5garbage99999999999999999999999",
    ] {
        // Garbage is never read as some other version.
        let p = parse_version(bad);
        assert!(p.is_none() || p == Some((1, 2, 3)), "{bad:?} → {p:?}");
    }
    assert_eq!(parse_version("99999999999999999999999.1"), None);
}

#[test]
fn virtiofsd_against_the_minimum() {
    let found = |v: &str| Ok(("/usr/libexec/virtiofsd".to_string(), v.to_string()));
    assert_eq!(virtiofsd(&found("1.14.0"), true).status, Status::Ok);
    assert_eq!(virtiofsd(&found("1.13.0"), true).status, Status::Ok);
    // Too old: only read-only mounts break.
    let old = virtiofsd(&found("1.10.1"), false);
    assert_eq!(old.status, Status::Warn);
    assert!(old.message.contains("1.13.0 or later"), "{}", old.message);
    assert_eq!(virtiofsd(&found("1.10.1"), true).status, Status::Fail);
    // Unreadable: said, escaped, not taken for a version.
    let garbled = virtiofsd(&found("1.x\x1b[2J"), true);
    assert_eq!(garbled.status, Status::Warn);
    assert!(
        garbled.message.contains("cannot read"),
        "{}",
        garbled.message
    );
    assert!(!garbled.message.contains('\x1b'), "{}", garbled.message);
    let none = virtiofsd(&Err("cannot find virtiofsd: install it".into()), false);
    assert_eq!(none.status, Status::Fail);
    assert!(none.line().starts_with("virtiofsd: FAIL: not usable"));
}

#[test]
fn memory_against_the_workspace() {
    let info = |mib: u64| format!("MemTotal: 99 kB\nMemAvailable: {} kB\n", mib * 1024);
    assert_eq!(memory(Some(&info(8192)), 4096, 64).status, Status::Ok);
    let short = memory(Some(&info(4000)), 4096, 64);
    assert_eq!(short.status, Status::Warn);
    assert!(
        short.message.contains("4000 MiB available"),
        "{}",
        short.message
    );
    assert!(short.message.contains("memory_mib"), "{}", short.message);
    assert_eq!(memory(Some(&info(200)), 4096, 64).status, Status::Fail);
    // Missing or garbled MemAvailable: a warning, never a guess.
    for bad in [
        "",
        "MemTotal: 1000 kB\n",
        "MemAvailable: lots kB\n",
        "MemAvailable: 5 MB\n",
    ] {
        let c = memory(Some(bad), 4096, 64);
        assert_eq!(c.status, Status::Warn, "{bad:?}");
        assert!(
            c.message.contains("cannot read MemAvailable"),
            "{}",
            c.message
        );
    }
    // Sizes near the limit do not overflow.
    assert_eq!(
        memory(Some(&info(8192)), u64::MAX, u64::MAX).status,
        Status::Warn
    );
    assert_eq!(
        mem_available_mib("MemAvailable:   22642532 kB"),
        Some(22111)
    );
}

#[test]
fn apt_and_the_host_family() {
    let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
    let ubuntu = "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nID=ubuntu\nID_LIKE=debian\n";
    let fedora = "PRETTY_NAME=\"Fedora Linux 41\"\nID=fedora\n";
    let facts = |get, cache, os: Option<&str>| AptFacts {
        apt_get: get,
        apt_cache: cache,
        os_release: os.map(String::from),
    };
    let ok = apt(&facts(true, true, Some(debian)));
    assert_eq!(ok.status, Status::Ok);
    assert!(
        ok.message.contains("Debian GNU/Linux 12 (bookworm)"),
        "{}",
        ok.message
    );
    assert_eq!(apt(&facts(true, true, Some(ubuntu))).status, Status::Ok);
    assert_eq!(apt(&facts(true, true, Some(fedora))).status, Status::Warn);
    let none = apt(&facts(false, false, Some(fedora)));
    assert_eq!(none.status, Status::Warn);
    assert!(none.message.contains("--kernel-deb"), "{}", none.message);
    assert_eq!(apt(&facts(true, false, None)).status, Status::Warn);
    assert_eq!(
        os_release_field("ID='debian'\n", "ID").as_deref(),
        Some("debian")
    );
    assert_eq!(os_release_field("ID_LIKE=debian\n", "ID"), None);
}

fn stamp() -> Stamp {
    Stamp {
        layout: "agentvm-image-1".into(),
        key: "k".into(),
        kernel_release: "6.1.0-41-cloud-amd64".into(),
        kernel_package: "linux-image-6.1.0-41-cloud-amd64".into(),
        kernel_version: "6.1.158-1".into(),
        agent_digest: "aaaa".into(),
        built_unix: 0,
    }
}

fn facts() -> ImageFacts {
    ImageFacts {
        dir: "/h/.local/share/agentvm/images/default".into(),
        default_dir: true,
        missing: vec![],
        stamp: StampState::Present(stamp()),
        age: Some(3 * DAY),
        layout: "agentvm-image-1".into(),
        agent: Some("aaaa".into()),
        rootfs: None,
    }
}

#[test]
fn a_current_image_is_ok_and_says_what_it_carries() {
    let c = image(&facts());
    assert_eq!(c.status, Status::Ok, "{}", c.message);
    assert_eq!(
        c.message,
        "/h/.local/share/agentvm/images/default: kernel 6.1.0-41-cloud-amd64 \
         (linux-image-6.1.0-41-cloud-amd64 6.1.158-1), built 3 days ago"
    );
    let with_rootfs = image(&ImageFacts {
        rootfs: Some("Debian bookworm, node v22.23.5, claude 2.1.3".into()),
        ..facts()
    });
    assert!(with_rootfs
        .message
        .ends_with("; root file system: Debian bookworm, node v22.23.5, claude 2.1.3"));
}

#[test]
fn a_hostile_stamp_is_shown_escaped() {
    let mut s = stamp();
    s.kernel_release = "6.1\x1b]0;pwned\x07".into();
    s.layout = "x\ny".into();
    let c = image(&ImageFacts {
        stamp: StampState::Present(s),
        ..facts()
    });
    assert!(!c.message.contains('\x1b'), "{}", c.message);
    assert!(!c.message.contains('\n'), "{}", c.message);
    assert_eq!(c.status, Status::Warn, "{}", c.message);
}

#[test]
fn a_missing_or_partial_image() {
    let none = image(&ImageFacts {
        missing: vec!["vmlinux", "initrd.img", "cmdline"],
        ..facts()
    });
    assert_eq!(none.status, Status::Warn);
    assert!(
        none.message.contains("run `agentvm image build`"),
        "{}",
        none.message
    );
    let elsewhere = image(&ImageFacts {
        missing: vec!["vmlinux", "initrd.img", "cmdline"],
        default_dir: false,
        dir: "/imgs/x".into(),
        ..facts()
    });
    assert!(
        elsewhere
            .message
            .contains("`agentvm image build --out /imgs/x`"),
        "{}",
        elsewhere.message
    );
    let partial = image(&ImageFacts {
        missing: vec!["initrd.img"],
        ..facts()
    });
    assert_eq!(partial.status, Status::Fail);
    assert!(
        partial.message.contains("lacks initrd.img"),
        "{}",
        partial.message
    );
}

#[test]
fn an_image_that_is_not_what_a_build_makes_now() {
    let agent = image(&ImageFacts {
        agent: Some("bbbb".into()),
        ..facts()
    });
    assert_eq!(agent.status, Status::Warn);
    assert!(
        agent.message.contains("the guest agent changed"),
        "{}",
        agent.message
    );
    let layout = image(&ImageFacts {
        layout: "agentvm-image-2".into(),
        ..facts()
    });
    assert_eq!(layout.status, Status::Warn);
    assert!(
        layout.message.contains("agentvm-image-2"),
        "{}",
        layout.message
    );
    let old = image(&ImageFacts {
        age: Some(90 * DAY),
        ..facts()
    });
    assert_eq!(old.status, Status::Warn);
    assert!(old.message.contains("built 90 days ago"), "{}", old.message);
    assert!(old.message.contains("kernel updates"), "{}", old.message);
    // Nothing to compare the agent with: ok, and said.
    let unknown = image(&ImageFacts {
        agent: None,
        ..facts()
    });
    assert_eq!(unknown.status, Status::Ok);
    assert!(
        unknown.message.contains("no built guest agent"),
        "{}",
        unknown.message
    );
}

#[test]
fn an_image_without_a_readable_stamp() {
    let old = image(&ImageFacts {
        stamp: StampState::Absent,
        age: Some(Duration::from_secs(7200)),
        ..facts()
    });
    assert_eq!(old.status, Status::Warn);
    assert!(old.message.contains("built 2 hours ago"), "{}", old.message);
    assert!(old.message.contains("older agentvm"), "{}", old.message);
    let garbled = image(&ImageFacts {
        stamp: StampState::Garbled,
        age: None,
        ..facts()
    });
    assert_eq!(garbled.status, Status::Warn);
    assert!(
        garbled.message.contains("unreadable image.json"),
        "{}",
        garbled.message
    );
    assert!(
        garbled.message.contains("at an unknown time"),
        "{}",
        garbled.message
    );
}

#[test]
fn ages_read_naturally() {
    assert_eq!(ago(Duration::from_secs(1)), "1 second");
    assert_eq!(ago(Duration::from_secs(90)), "90 seconds");
    assert_eq!(ago(Duration::from_secs(600)), "10 minutes");
    assert_eq!(ago(Duration::from_secs(3 * 3600)), "3 hours");
    assert_eq!(ago(DAY * 2), "2 days");
}
