//! T1: a VM built with a Landlock ruleset runs, and its threads (the one
//! that built it and those it started: vCPUs, devices) reach only what the
//! ruleset names. Alone in its test binary: the ruleset stays on the
//! building thread for good.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::ErrorKind;
use std::path::PathBuf;

use agentvm_devices::virtio::rng::Rng;
use agentvm_testguest::programs;
use agentvm_vmm::landlock::{Enforcement, FsAccess};
use agentvm_vmm::{ExitStatus, SerialSink, VmBuilder};

#[test]
fn a_vm_under_landlock_runs_and_cannot_open_files_outside_its_set() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        eprintln!("skipped: /dev/kvm cannot be opened ({e})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = programs::hello("x").unwrap().write_to(dir.path()).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let secret = dir.path().join("id_ed25519");
    std::fs::write(&secret, "private key").unwrap();
    let access = FsAccess {
        read: vec![PathBuf::from("/proc")],
        write: vec![state.clone()],
        remove_dirs: Vec::new(),
    };
    let (status, enforcement, secret_err, kernel_err, state_ok) = std::thread::spawn(move || {
        let vm = VmBuilder::new(&kernel)
            .memory_mib(64)
            .vcpus(2)
            .device(Box::new(Rng::new()))
            .serial(SerialSink::Discard)
            .landlock(access)
            .build()
            .unwrap();
        let enforcement = vm.landlock().unwrap();
        let status = vm.run().unwrap();
        // Threads started under the ruleset have it as well.
        let probe = std::thread::spawn(move || {
            (
                std::fs::read(&secret).map_err(|e| e.kind()),
                std::fs::read(&kernel).map(drop).map_err(|e| e.kind()),
                std::fs::write(state.join("console.log"), "ok").is_ok(),
            )
        })
        .join()
        .unwrap();
        (status, enforcement, probe.0, probe.1, probe.2)
    })
    .join()
    .unwrap();
    assert_eq!(status, ExitStatus::Reset);
    assert!(state_ok, "the state directory stays writable");
    if enforcement == Enforcement::None {
        eprintln!("skipped: this kernel has no Landlock");
        return;
    }
    assert_eq!(secret_err, Err(ErrorKind::PermissionDenied));
    // Even the kernel image: it was loaded before the ruleset.
    assert_eq!(kernel_err, Err(ErrorKind::PermissionDenied));
    // This thread was never restricted.
    assert_eq!(
        std::fs::read(dir.path().join("id_ed25519")).unwrap(),
        b"private key"
    );
}
