//! T1: tiny guests built by the test, booted on the host's /dev/kvm through
//! the real loaders and the public API only. Each guest reports what it
//! sees over COM1; the test parses the report. What the boot protocols
//! promise (addresses only the crate knows) is checked inside the crate
//! (`src/kvm_tests.rs`).
//!
//! These tests need a /dev/kvm that opens; elsewhere they print why they
//! skip.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentvm_devices::virtio::rng::Rng;
use agentvm_testguest::programs;
use agentvm_testguest::{Asm64, Format, Guest, Program, Report, Width};
use agentvm_vmm::{ExitStatus, MemoryControlError, SerialSink, VmBuilder, VIRTIO_MMIO_START};

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn kvm_or_skip() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: /dev/kvm cannot be opened ({e})");
            false
        }
    }
}

fn write_guest(dir: &Path, guest: &Guest) -> PathBuf {
    guest.write_to(dir).unwrap()
}

/// Boots `kernel` and returns its exit status and console output.
fn boot(builder: VmBuilder) -> (ExitStatus, String) {
    let console = Console::default();
    let vm = builder
        .serial(SerialSink::Writer(Box::new(console.clone())))
        .build()
        .unwrap();
    let handle = vm.handle();
    // A guard against a hung guest: a test must fail, not hang.
    let guard = std::thread::spawn(move || {
        if handle.wait_timeout(Duration::from_secs(30)).is_none() {
            handle.stop();
        }
    });
    let status = vm.run().unwrap();
    guard.join().unwrap();
    (status, console.text())
}

/// Ends a guest program with a `pause` loop: the guest runs until the host
/// stops the VM.
fn spin_forever(code: &mut Asm64) {
    let mut top = code.create_label();
    code.set_label(&mut top).unwrap();
    code.pause().unwrap();
    code.jmp(top).unwrap();
}

#[test]
fn guest_prints_through_com1_and_i8042_reset_ends_the_vm() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for format in [Format::Elf64, Format::PvhElf, Format::bzimage()] {
        let kernel = write_guest(
            dir.path(),
            &programs::hello_as(format, "hello, tiny guest\n").unwrap(),
        );
        let (status, out) = boot(VmBuilder::new(&kernel).memory_mib(128));
        assert_eq!(status, ExitStatus::Reset, "{format:?}");
        assert_eq!(out, "hello, tiny guest\n", "{format:?}");
    }
}

#[test]
fn guest_mmio_reads_see_the_virtio_registers_and_writes_reach_queue_notify() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(
        dir.path(),
        &programs::mmio_probe(VIRTIO_MMIO_START).unwrap(),
    );
    let (status, out) = boot(
        VmBuilder::new(&kernel)
            .memory_mib(128)
            .device(Box::new(Rng::new())),
    );
    assert_eq!(status, ExitStatus::Reset, "{out}");
    let r = Report::parse(&out);
    assert_eq!(r.value("magic"), Some(0x7472_6976), "{out}");
    assert_eq!(r.value("version"), Some(2));
    assert_eq!(r.value("device_id"), Some(4));
    assert_eq!(r.value("vendor_id"), Some(0x4156_4d41));
    assert!(r.has_line("notified"));
}

#[test]
fn a_balloon_is_virtio_device_5_and_the_handle_controls_it() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(
        dir.path(),
        &programs::mmio_probe(VIRTIO_MMIO_START).unwrap(),
    );
    let vm = VmBuilder::new(&kernel)
        .memory_mib(128)
        .balloon()
        .serial(SerialSink::Writer(Box::new(Console::default())))
        .build()
        .unwrap();
    let handle = vm.handle();
    // No driver yet: the target is kept for when one comes.
    handle.set_balloon_target_mib(16).unwrap();
    assert_eq!(handle.balloon().unwrap().target_pages(), 16 * 256);
    assert!(matches!(
        handle.balloon_report(Duration::from_millis(10)),
        Err(MemoryControlError::Balloon(_))
    ));
    drop(vm);

    let (status, out) = boot(VmBuilder::new(&kernel).memory_mib(128).balloon());
    assert_eq!(status, ExitStatus::Reset, "{out}");
    assert_eq!(Report::parse(&out).value("device_id"), Some(5), "{out}");

    let vm = VmBuilder::new(&kernel).memory_mib(128).build().unwrap();
    assert!(vm.handle().balloon().is_none());
    assert!(matches!(
        vm.handle().set_balloon_target_mib(1),
        Err(MemoryControlError::NoBalloon)
    ));
}

#[test]
fn a_net_device_is_virtio_device_1_with_our_mac_and_the_handle_replaces_its_policy() {
    use agentvm_net::{addr::GUEST_MAC, Mode, Policy, StackConfig};
    use iced_x86::code_asm::rbx;
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Reads the device's id and its config space (the MAC), then resets.
    let mut code = Asm64::new().unwrap();
    code.mov(rbx, VIRTIO_MMIO_START).unwrap();
    code.report_mem("device_id", rbx, 0x008, Width::U32)
        .unwrap();
    code.report_mem("mac_lo", rbx, 0x100, Width::U32).unwrap();
    code.report_mem("mac_hi", rbx, 0x104, Width::U16).unwrap();
    code.reset().unwrap();
    let kernel = write_guest(
        dir.path(),
        &Program::new("net-probe")
            .with_long64(code)
            .build(Format::Elf64)
            .unwrap(),
    );
    let stack = |mode| StackConfig {
        policy: Policy::new(mode),
        ..StackConfig::default()
    };
    let vm = VmBuilder::new(&kernel)
        .memory_mib(128)
        .net(stack(Mode::Filtered))
        .serial(SerialSink::Writer(Box::new(Console::default())))
        .build()
        .unwrap();
    let net = vm.handle().net().cloned().unwrap();
    assert_eq!(net.policy().mode, Mode::Filtered);
    let mut open = Policy::new(Mode::Open);
    open.allow("a.test").unwrap();
    net.set_policy(open.clone());
    assert_eq!(vm.handle().net().unwrap().policy(), open);
    drop(vm);

    let (status, out) = boot(
        VmBuilder::new(&kernel)
            .memory_mib(128)
            .net(stack(Mode::Open)),
    );
    assert_eq!(status, ExitStatus::Reset, "{out}");
    let r = Report::parse(&out);
    assert_eq!(r.value("device_id"), Some(1), "{out}");
    let mac = GUEST_MAC;
    assert_eq!(
        r.value("mac_lo"),
        Some(u64::from(u32::from_le_bytes([
            mac[0], mac[1], mac[2], mac[3]
        ]))),
        "{out}"
    );
    assert_eq!(
        r.value("mac_hi"),
        Some(u64::from(u16::from_le_bytes([mac[4], mac[5]]))),
        "{out}"
    );

    let vm = VmBuilder::new(&kernel).memory_mib(128).build().unwrap();
    assert!(vm.handle().net().is_none(), "no net device unless asked");
}

#[test]
fn a_handle_stops_a_spinning_guest_and_reports_stats() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut code = Asm64::new().unwrap();
    code.serial_print("spinning\n").unwrap();
    spin_forever(&mut code);
    let guest = Program::new("spin")
        .with_long64(code)
        .build(Format::Elf64)
        .unwrap();
    let kernel = write_guest(dir.path(), &guest);
    let console = Console::default();
    let vm = VmBuilder::new(&kernel)
        .memory_mib(64)
        .vcpus(2)
        .serial(SerialSink::Writer(Box::new(console.clone())))
        .build()
        .unwrap();
    let handle = vm.handle();
    assert_eq!(handle.stats().uptime, Duration::ZERO);
    let runner = std::thread::spawn(move || vm.run().unwrap());
    while !console.text().contains("spinning") {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = handle.stats();
    assert_eq!(
        (stats.vcpus, stats.memory_bytes, &stats.exit),
        (2, 64 << 20, &None)
    );
    assert!(stats.pio_exits >= 9, "{stats:?}");
    handle.stop();
    assert_eq!(handle.wait(), ExitStatus::Stopped);
    assert_eq!(runner.join().unwrap(), ExitStatus::Stopped);
    assert!(handle.stats().uptime > Duration::ZERO);
}

#[test]
fn t4_boots_the_kernel_from_agentvm_test_kernel_to_a_marker() {
    let Some(kernel) = std::env::var_os("AGENTVM_TEST_KERNEL") else {
        eprintln!(
            "skipped: set AGENTVM_TEST_KERNEL (and optionally AGENTVM_TEST_INITRD, AGENTVM_TEST_MARKER) to boot a \
             real kernel here; on this host's KVM that must be a kernel it can run (hardware KVM: any; PVM: a PVM guest)"
        );
        return;
    };
    if !kvm_or_skip() {
        return;
    }
    let marker = std::env::var("AGENTVM_TEST_MARKER").unwrap_or_else(|_| "Linux version".into());
    let mut builder = VmBuilder::new(PathBuf::from(kernel))
        .memory_mib(512)
        .vcpus(2);
    if let Some(initrd) = std::env::var_os("AGENTVM_TEST_INITRD") {
        builder = builder.initrd(PathBuf::from(initrd));
    }
    let console = Console::default();
    let vm = builder
        .serial(SerialSink::Writer(Box::new(console.clone())))
        .build()
        .unwrap();
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !console.text().contains(&marker)
        && std::time::Instant::now() < deadline
        && !runner.is_finished()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.stop();
    let status = runner.join().unwrap();
    let out = console.text();
    assert!(
        out.contains(&marker),
        "marker {marker:?} not seen (status {status:?}); console:\n{out}"
    );
}
