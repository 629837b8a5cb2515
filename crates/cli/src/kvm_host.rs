//! What kind of KVM this host has, and user-facing explanations of why a VM
//! could not be created.

use std::path::Path;

use agentvm_vmm::{BootError, BuildError, MemoryError};

/// The KVM implementation behind /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// VT-x or AMD-V: any x86_64 Linux kernel boots.
    Hardware,
    /// PVM (`kvm_pvm`): nested virtualization without VT-x/AMD-V; only
    /// PVM-enabled guest kernels run at speed, stock kernels do not boot.
    Pvm,
    /// /dev/kvm exists but no known KVM module is loaded.
    Unknown,
}

impl KvmKind {
    /// Reads /sys/module to tell which KVM module drives /dev/kvm.
    pub fn detect() -> Self {
        let module = |m: &str| Path::new("/sys/module").join(m).exists();
        if module("kvm_pvm") {
            KvmKind::Pvm
        } else if module("kvm_intel") || module("kvm_amd") {
            KvmKind::Hardware
        } else {
            KvmKind::Unknown
        }
    }

    /// The word `doctor` prints.
    pub fn name(self) -> &'static str {
        match self {
            KvmKind::Hardware => "hardware",
            KvmKind::Pvm => "pvm",
            KvmKind::Unknown => "unknown",
        }
    }

    /// What guest kernel this KVM can boot.
    pub fn guest_kernel_note(self) -> &'static str {
        match self {
            KvmKind::Hardware => "any x86_64 Linux kernel boots (ELF vmlinux or bzImage)",
            KvmKind::Pvm => {
                "PVM runs only PVM-enabled guest kernels; a stock kernel (Debian's or agentvm's own, the image's) \
                 dies in emulation. Supply a PVM guest kernel with --kernel, or use the nested rig \
                 (`cargo demo`, see README) to boot stock Linux here"
            }
            KvmKind::Unknown => "no kvm_intel/kvm_amd/kvm_pvm module found; guest support unknown",
        }
    }
}

/// Turns a build error into a message that says what to do.
pub fn explain(err: &BuildError) -> Option<String> {
    match err {
        BuildError::OpenKvm(e) => Some(match e.errno() {
            libc::ENOENT => "/dev/kvm does not exist: this host has no KVM. Enable virtualization \
                             (VT-x/AMD-V) in firmware and load kvm_intel or kvm_amd, or use a cloud \
                             instance type with nested virtualization"
                .to_string(),
            libc::EACCES | libc::EPERM => "permission denied opening /dev/kvm: add your user to the kvm \
                                           group (`sudo usermod -aG kvm $USER`, then log in again)"
                .to_string(),
            _ => format!("cannot open /dev/kvm: {e}"),
        }),
        BuildError::Memory(MemoryError::Map { mib, .. }) => Some(format!(
            "this host cannot map {mib} MiB of guest memory (address-space limit `ulimit -v`, or strict \
             overcommit `vm.overcommit_memory=2`); lower --memory"
        )),
        BuildError::Boot(BootError::KernelFile(path, e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("kernel {} does not exist", path.display()))
        }
        BuildError::Boot(BootError::InitrdFile(path, e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("initrd {} does not exist", path.display()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_error(errno: i32) -> BuildError {
        BuildError::OpenKvm(kvm_ioctls::Error::new(errno))
    }

    #[test]
    fn kvm_open_failures_say_what_to_do() {
        let missing = explain(&open_error(libc::ENOENT)).unwrap();
        assert!(missing.starts_with("/dev/kvm does not exist"), "{missing}");
        let denied = explain(&open_error(libc::EACCES)).unwrap();
        assert!(
            denied.contains("kvm group") && denied.contains("usermod -aG kvm"),
            "{denied}"
        );
        let other = explain(&open_error(libc::EBUSY)).unwrap();
        assert!(other.starts_with("cannot open /dev/kvm"), "{other}");
    }
}
