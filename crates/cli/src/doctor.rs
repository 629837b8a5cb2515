//! `agentvm doctor`: can this host run agentvm VMs?

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::kvm_host::KvmKind;

/// Where virtiofsd is looked for, in order: `$AGENTVM_VIRTIOFSD`, `$PATH`,
/// the distribution's libexec, cargo's bin directory.
pub fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AGENTVM_VIRTIOFSD") {
        return Some(PathBuf::from(p)).filter(|p| is_executable(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("virtiofsd"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/libexec/virtiofsd"));
    candidates.push(PathBuf::from("/usr/lib/qemu/virtiofsd"));
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/virtiofsd"));
    }
    candidates.into_iter().find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

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
    match find_virtiofsd() {
        Some(p) => println!("virtiofsd: {}", p.display()),
        None => println!(
            "virtiofsd: not found — workspace sharing needs it: `cargo install --locked virtiofsd` \
             (needs libseccomp-dev and libcap-ng-dev) or `apt install virtiofsd`, or set AGENTVM_VIRTIOFSD"
        ),
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
