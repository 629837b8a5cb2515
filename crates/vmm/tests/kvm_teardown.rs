//! T1: VM teardown leaves nothing behind. Alone in its own test binary so
//! no other test's threads or fds share the process while it counts.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use agentvm_devices::virtio::rng::Rng;
use agentvm_testguest::programs;
use agentvm_vmm::{ExitStatus, SerialSink, VmBuilder};

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).unwrap().count()
}

#[test]
fn building_and_tearing_down_a_4_vcpu_vm_100_times_leaks_no_fd_or_thread() {
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
    let run = || {
        let vm = VmBuilder::new(&kernel)
            .memory_mib(64)
            .vcpus(4)
            .device(Box::new(Rng::new()))
            .serial(SerialSink::Discard)
            .build()
            .unwrap();
        assert_eq!(vm.run().unwrap(), ExitStatus::Reset);
    };
    // The first run sets up process-wide state (signal handler, KVM module
    // caches); measure from after it.
    run();
    let fds = count_dir("/proc/self/fd");
    let threads = count_dir("/proc/self/task");
    for _ in 0..100 {
        run();
    }
    assert_eq!(count_dir("/proc/self/fd"), fds, "fd count changed");
    assert_eq!(
        count_dir("/proc/self/task"),
        threads,
        "thread count changed"
    );
}
