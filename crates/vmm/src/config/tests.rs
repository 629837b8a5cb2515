#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use agentvm_devices::virtio::fs::CacheMode;

use super::*;

/// A configuration with every device but the network, valid.
fn full() -> VmConfig {
    let mut c = VmConfig::new("/k/vmlinux");
    c.memory_mib = 1024;
    c.vcpus = 4;
    c.state_dir = Some("/run/vm".into());
    c.shares = vec![
        ShareConfig::new("/w/proj", "work"),
        ShareConfig::root_image("/img", "rootfs.erofs"),
    ];
    c.vsock = Some(VsockConfig::new("/run/vm/vsock.sock"));
    c.rng = true;
    c.balloon = Some(BalloonConfig {
        target_mib: Some(1023),
    });
    c
}

#[test]
fn a_full_configuration_and_the_defaults_are_valid() {
    assert_eq!(full().validate(), Ok(()));
    assert_eq!(VmConfig::new("/k").validate(), Ok(()));
    let mut c = full();
    c.vcpus = MAX_VCPUS;
    c.memory_mib = u64::MAX >> 20;
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn vcpus_are_between_one_and_the_maximum() {
    for n in [0, MAX_VCPUS + 1, u8::MAX] {
        let mut c = full();
        c.vcpus = n;
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(n)));
    }
    assert_eq!(
        ConfigError::Vcpus(0).to_string(),
        "0 vCPUs requested; between 1 and 254 are supported"
    );
}

#[test]
fn memory_is_neither_zero_nor_more_than_64_bits_of_bytes() {
    let mut c = full();
    c.balloon = None;
    c.memory_mib = 0;
    assert_eq!(c.validate(), Err(ConfigError::NoMemory));
    c.memory_mib = (u64::MAX >> 20) + 1;
    assert_eq!(c.validate(), Err(ConfigError::MemoryTooLarge(c.memory_mib)));
    assert_eq!(c.memory_bytes(), None);
    c.memory_mib = 3;
    assert_eq!(c.memory_bytes(), Some(3 << 20));
}

#[test]
fn the_balloon_leaves_the_guest_some_memory() {
    let mut c = full();
    for target in [1024, 4096] {
        c.balloon = Some(BalloonConfig {
            target_mib: Some(target),
        });
        assert_eq!(
            c.validate(),
            Err(ConfigError::BalloonTarget {
                target_mib: target,
                memory_mib: 1024
            })
        );
    }
    c.balloon = Some(BalloonConfig::default());
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn reserved_and_64_bit_cids_are_refused() {
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let mut c = full();
        c.vsock.as_mut().unwrap().cid = cid;
        assert_eq!(c.validate(), Err(ConfigError::InvalidCid(cid)), "{cid}");
    }
    let mut c = full();
    c.vsock.as_mut().unwrap().cid = u64::from(u32::MAX) - 1;
    assert_eq!(c.validate(), Ok(()));
    // The device's own check says the same.
    assert_eq!(
        ConfigError::InvalidCid(2).to_string(),
        agentvm_devices::virtio::vsock::VsockError::InvalidCid(2).to_string()
    );
}

#[test]
fn shares_need_a_state_directory_and_tags_of_their_own() {
    let mut c = full();
    c.state_dir = None;
    assert_eq!(c.validate(), Err(ConfigError::NoStateDir));
    let mut c = full();
    c.shares.push(ShareConfig::new("/w/other", "work"));
    assert_eq!(c.validate(), Err(ConfigError::DuplicateTag("work".into())));
}

#[test]
fn a_share_the_guest_cannot_mount_is_refused() {
    let mut c = full();
    c.shares.push(ShareConfig::new("/a:b", "colon"));
    assert_eq!(
        c.validate(),
        Err(ConfigError::TargetCharacters("/a:b".into()))
    );
    let mut c = full();
    let mut s = ShareConfig::new("/fine", "quote");
    s.target = Some("/x\"y".into());
    c.shares.push(s);
    assert_eq!(
        c.validate(),
        Err(ConfigError::TargetCharacters("/x\"y".into()))
    );
    let mut c = full();
    let bad = PathBuf::from(OsString::from_vec(vec![b'/', 0xff]));
    c.shares.push(ShareConfig::new(bad.clone(), "bytes"));
    assert_eq!(c.validate(), Err(ConfigError::TargetNotUtf8(bad)));
}

#[test]
fn cmdline_entries_say_where_and_how_the_guest_mounts() {
    let mut s = ShareConfig::new("/ab/c", "tag");
    assert_eq!(s.cmdline_entry().unwrap(), "agentvm.share=tag:/ab/c:rw");
    s.read_only = true;
    assert_eq!(s.cmdline_entry().unwrap(), "agentvm.share=tag:/ab/c:ro");
    s.target = Some("/home/agent/c".into());
    assert_eq!(
        s.cmdline_entry().unwrap(),
        "agentvm.share=tag:/home/agent/c:ro"
    );
    let spaced = ShareConfig::new("/my dir", "t");
    assert_eq!(
        spaced.cmdline_entry().unwrap(),
        "agentvm.share=\"t:/my dir:rw\""
    );
    assert_eq!(
        ShareConfig::root_image("/img", "rootfs.erofs")
            .cmdline_entry()
            .unwrap(),
        "agentvm.rootfs=agentvm-root:rootfs.erofs"
    );
    assert_eq!(
        ShareConfig::root_upper("/ws", "upper.ext4")
            .cmdline_entry()
            .unwrap(),
        "agentvm.upper=agentvm-upper:upper.ext4"
    );
}

#[test]
fn the_command_line_gets_the_shares_entries_in_order() {
    let mut c = full();
    c.cmdline = "console=ttyS0".into();
    assert_eq!(
        c.cmdline_with_shares().unwrap(),
        "console=ttyS0 agentvm.share=work:/w/proj:rw agentvm.rootfs=agentvm-root:rootfs.erofs"
    );
    c.shares.clear();
    assert_eq!(c.cmdline_with_shares().unwrap(), "console=ttyS0");
}

#[test]
fn a_share_becomes_the_device_configuration_virtiofsd_runs_with() {
    let daemons = VirtiofsdConfig {
        binary: Some("/opt/virtiofsd".into()),
        allow_unsandboxed: true,
    };
    let fs = ShareConfig::new("/w/proj", "work").fs_config(Path::new("/run/vm"), &daemons);
    assert_eq!(fs.tag, "work");
    assert_eq!(fs.shared_dir, Path::new("/w/proj"));
    assert_eq!(fs.socket_path(), Path::new("/run/vm/virtiofs-work.sock"));
    assert!(!fs.read_only && fs.allow_unsandboxed);
    assert_eq!(fs.virtiofsd.as_deref(), Some(Path::new("/opt/virtiofsd")));
    assert_eq!(fs.cache, CacheMode::Auto);
    // An image is read-only and cached in full, whatever the fields say.
    let mut image = ShareConfig::root_image("/img", "rootfs.erofs");
    image.read_only = false;
    let fs = image.fs_config(Path::new("/run/vm"), &VirtiofsdConfig::default());
    assert!(fs.read_only && !fs.allow_unsandboxed);
    assert_eq!(fs.cache, CacheMode::Always);
}

#[test]
fn the_pit_follows_acpi_unless_set() {
    let mut c = VmConfig::new("/k");
    assert!(!c.wants_pit());
    c.cmdline.push_str(" acpi=off");
    assert!(c.wants_pit());
    c.pit = Some(false);
    assert!(!c.wants_pit());
}

#[test]
fn guest_memory_is_shared_only_for_a_process_that_maps_it() {
    assert!(full().needs_shared_memory(), "virtiofsd of the shares");
    let mut c = VmConfig::new("/k");
    c.vsock = Some(VsockConfig::new("/run/vm/vsock.sock"));
    c.balloon = Some(BalloonConfig { target_mib: None });
    c.rng = true;
    assert!(!c.needs_shared_memory(), "devices of the VMM alone");
    c.hotplug_slots = 4;
    assert!(
        !c.needs_shared_memory(),
        "no state directory, no live mounts"
    );
    c.state_dir = Some("/run/vm".into());
    assert!(c.needs_shared_memory(), "a live mount's virtiofsd");
    c.hotplug_slots = 0;
    assert!(!c.needs_shared_memory());
}
