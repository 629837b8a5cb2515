//! The L2 image: agentvm's default guest image built from Debian packages
//! (the kernel facts the VMM relies on, the PVH note in the extracted
//! vmlinux, the module plan, the agent as /init) and the rig's overlay
//! appended to it.

#![allow(clippy::unwrap_used)]

use agentvm_image::kernel::{self, Compression};
use agentvm_image::{files, DEFAULT_CMDLINE};
use agentvm_rig::image::L2Extras;
use agentvm_rig::L2Image;

#[test]
fn l2_image_is_the_default_image_with_the_rig_init_appended() {
    let has = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
    };
    if !has("apt-get") {
        eprintln!("skipped: no apt-get to fetch Debian packages");
        return;
    }
    let cache = agentvm_rig::cache().unwrap();
    let _lock = cache.lock().unwrap();
    let fail = |e: &dyn std::error::Error| -> ! { panic!("{}", agentvm_rig::error_chain(e)) };
    let bins = agentvm_rig::binaries::build().unwrap_or_else(|e| fail(&e));
    let l2 = L2Image::build(&cache, &bins.agent, &L2Extras::default()).unwrap_or_else(|e| fail(&e));
    let image = &l2.image;
    eprintln!(
        "kernel {} ({}): {:?}",
        image.kernel.release, image.kernel.version, image.facts
    );
    let order: Vec<&str> = image
        .modules
        .load_order
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    eprintln!("modules: {order:?}");
    eprintln!(
        "built in: {:?}; missing: {:?}",
        image.modules.builtin, image.modules.missing
    );

    let facts = &image.facts;
    assert!(
        facts.boot_protocol >= 0x20c,
        "boot protocol {:#x}",
        facts.boot_protocol
    );
    assert_ne!(
        facts.compression,
        Compression::Gzip,
        "expected Debian's non-gzip payload"
    );
    let vmlinux = std::fs::read(&l2.vmlinux).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    assert_eq!(vmlinux.len(), facts.vmlinux_bytes);
    let entry =
        kernel::pvh_entry(&vmlinux).expect("Debian's vmlinux carries the PVH (Xen type 18) note");
    assert_eq!(facts.pvh_entry, Some(entry));
    assert!(entry >= 0x10_0000, "PVH entry {entry:#x} lies below 1 MiB");

    let pos = |m: &str| {
        order
            .iter()
            .position(|n| *n == m)
            .unwrap_or_else(|| panic!("{m} not loaded: {order:?}"))
    };
    assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("virtio_mmio"));
    assert!(pos("virtio_mmio") < pos("virtio_rng") || pos("virtio") < pos("virtio_rng"));
    assert!(pos("pvpanic") < pos("pvpanic_mmio"));
    assert!(pos("vsock") < pos("vmw_vsock_virtio_transport"));
    assert!(pos("fuse") < pos("virtiofs"));
    assert!(
        image.modules.missing.is_empty(),
        "missing modules {:?}",
        image.modules.missing
    );

    // The default image: the agent is /init, the module list names the
    // modules in load order, the command line file is the default.
    let default = std::fs::read(&image.initrd).unwrap();
    let text = String::from_utf8_lossy(&default);
    assert!(text.starts_with("070701"));
    assert!(text.contains("lib/modules/virtio_rng.ko\0"));
    let list: String = order
        .iter()
        .map(|m| format!("/lib/modules/{m}.ko\n"))
        .collect();
    assert!(text.contains(&list), "module list in load order");
    assert!(!text.contains("RIG-L2 init=start"));
    let agent = std::fs::read(&bins.agent).unwrap();
    let at = default
        .windows(agent.len().min(4096))
        .position(|w| w == &agent[..agent.len().min(4096)])
        .expect("the agent binary is in the initramfs");
    // "init", NUL, padding to 4 bytes, then the contents.
    assert!(default[..at].ends_with(b"init\0\0"));
    assert_eq!(
        std::fs::read_to_string(image.dir.join(files::CMDLINE))
            .unwrap()
            .trim(),
        DEFAULT_CMDLINE
    );

    // The rig's copy: the same archive with the overlay after it.
    let rig = std::fs::read(&l2.initrd).unwrap();
    assert!(rig.starts_with(&default));
    let overlay = String::from_utf8_lossy(&rig[default.len()..]);
    assert!(overlay.starts_with("070701"));
    assert!(overlay.contains("rig/init\0"));
    assert!(overlay.contains("RIG-L2 init=start"));
}
