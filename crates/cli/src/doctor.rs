//! `agentvm doctor`: can this host run agentvm VMs?

use std::fs::OpenOptions;
use std::path::Path;
use std::process::ExitCode;

use agentvm_devices::virtio::fs::Search;

use crate::kvm_host::KvmKind;

pub fn run() -> anyhow::Result<ExitCode> {
    let mut ok = true;
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        ok = false;
        println!("/dev/kvm: missing — enable VT-x/AMD-V and load kvm_intel or kvm_amd (or use a host with nested virtualization)");
    } else {
        match OpenOptions::new().read(true).write(true).open(kvm) {
            Ok(_) => println!("/dev/kvm: ok"),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                ok = false;
                println!("/dev/kvm: permission denied — add your user to the kvm group (`sudo usermod -aG kvm $USER`, then log in again)");
            }
            Err(e) => {
                ok = false;
                println!("/dev/kvm: cannot open ({e})");
            }
        }
    }
    let kind = KvmKind::detect();
    println!("kvm: {}", kind.name());
    println!("  guest kernel: {}", kind.guest_kernel_note());
    if kind == KvmKind::Pvm {
        // Tiny and PVM-enabled guests run, but not what agentvm is for.
        ok = false;
        println!(
            "default image: cannot boot here (Debian's stock kernel needs hardware KVM); \
             use a host with VT-x/AMD-V, boot a PVM guest kernel with `agentvm boot --kernel`, \
             or watch the default image boot inside the nested rig: `cargo demo`"
        );
    }
    // Where the virtio-fs device itself looks, so the answer is the same.
    match Search::from_env(None).find() {
        Ok(v) => println!("virtiofsd: {} ({})", v.path.display(), v.version),
        Err(e) => {
            // `agentvm up` shares the workspace: no VM without it.
            ok = false;
            println!(
                "virtiofsd: not usable — workspace sharing needs it: {}",
                lower_first(&e.to_string())
            );
        }
    }
    // The agents' computer: the root file system is built with these.
    let missing: Vec<&str> = ["mmdebstrap", "mkfs.erofs", "mke2fs"]
        .into_iter()
        .filter(|t| agentvm_image::which(t).is_none())
        .collect();
    if missing.is_empty() {
        println!("root file system tools: mmdebstrap, mkfs.erofs, mke2fs: ok");
    } else {
        ok = false;
        println!(
            "root file system tools: {} missing — the guest's Debian userland with the agents \
             is built with them: {}",
            missing.join(", "),
            agentvm_image::rootfs::install_hint("mmdebstrap uidmap erofs-utils e2fsprogs")
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `Cannot find …` → `cannot find …`, to follow a dash.
fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
