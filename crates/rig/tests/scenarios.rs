//! The rig's scenarios: Debian's stock cloud kernel booted by agentvm,
//! nested (QEMU TCG L1 with kvm-amd) on hosts whose KVM cannot boot it,
//! directly on hardware KVM. Each test function is one L1 run with a few L2
//! boots; each boot's init reports what the guest sees as markers, which
//! are asserted here.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::{
    error_chain, Boot, BootResult, GuestMode, KernelFormat, Rig, Scenario, ScenarioResult, Tier,
    VmmExit,
};

fn rig() -> Option<Rig> {
    Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

fn run(rig: &Rig, scenario: &Scenario) -> ScenarioResult {
    let r = rig
        .run(scenario)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    eprintln!(
        "scenario {} ({:?}): {:.1} s in all, L1 ready after {:?}, log {}",
        r.name,
        r.tier,
        r.elapsed.as_secs_f64(),
        r.l1_ready,
        r.log_path.display()
    );
    for b in &r.boots {
        eprintln!(
            "  boot {}: exit {}, first init line after {:?}, VMM exit after {:?}",
            b.name,
            b.exit.to_marker(),
            b.first_line,
            b.exit_after
        );
    }
    r
}

/// Everything a report-mode boot must show.
fn check_report(r: &ScenarioResult, name: &str, vcpus: u8, memory_mib: u32) {
    let b: &BootResult = r.boot(name).expect("boot ran");
    let ctx = || format!("boot {name}; {}", r.context(b));
    assert_eq!(
        b.exit_code(),
        Some(0),
        "agentvm must exit 0 after the guest's poweroff -f; {}",
        ctx()
    );
    assert_eq!(
        b.marker("done"),
        Some("1"),
        "the L2 init did not finish; {}",
        ctx()
    );
    assert!(b.first_line.is_some(), "no first init line; {}", ctx());
    let failed: Vec<&str> = b.markers_named("insmod_failed").collect();
    assert!(
        failed.is_empty(),
        "modules failed to load: {failed:?}; {}",
        ctx()
    );

    let mem_kib = b
        .number("memtotal_kib")
        .unwrap_or_else(|| panic!("no memtotal_kib; {}", ctx()));
    let want_kib = f64::from(memory_mib) * 1024.0;
    assert!(
        mem_kib <= want_kib && mem_kib >= want_kib * 0.85,
        "MemTotal {mem_kib} KiB is not close to --memory {memory_mib} MiB; {}",
        ctx()
    );
    assert_eq!(
        b.number("cpus"),
        Some(f64::from(vcpus)),
        "/proc/cpuinfo CPU count; {}",
        ctx()
    );
    assert_eq!(
        b.number("nproc"),
        Some(f64::from(vcpus)),
        "nproc; {}",
        ctx()
    );
    let acpi: Vec<&str> = b.markers_named("acpi_msg").collect();
    assert_eq!(
        b.marker("acpi_errors"),
        Some("0"),
        "ACPI errors in dmesg: {acpi:?}; {}",
        ctx()
    );

    // virtio-rng found through ACPI (LNRO0005), bound, current, and working.
    assert!(
        b.markers_named("acpi_dev")
            .any(|d| d.starts_with("LNRO0005")),
        "no LNRO0005 ACPI device; {}",
        ctx()
    );
    let rng_dev = b
        .markers_named("virtio")
        .find(|v| v.contains("device=0x0004"));
    let rng_dev =
        rng_dev.unwrap_or_else(|| panic!("no virtio device of type 4 (entropy); {}", ctx()));
    assert!(
        rng_dev.contains("driver=virtio_rng"),
        "virtio-rng device not bound: {rng_dev}; {}",
        ctx()
    );
    let current = b.marker("rng_current").unwrap_or("");
    assert!(
        current.starts_with("virtio_rng"),
        "rng_current is {current:?}; {}",
        ctx()
    );
    let bytes = b.marker("hwrng").unwrap_or("");
    assert_eq!(
        bytes.len(),
        32,
        "16 bytes from /dev/hwrng as hex, got {bytes:?}; {}",
        ctx()
    );
    assert!(bytes.chars().all(|c| c.is_ascii_hexdigit()), "{bytes:?}");
    assert_ne!(
        bytes,
        "0".repeat(32),
        "/dev/hwrng returned zeros; {}",
        ctx()
    );
}

/// The L1 script went on after agentvm exited (its next markers appeared).
fn check_l1_went_on(r: &ScenarioResult) {
    if r.tier == Tier::Nested {
        assert!(
            r.l1_marker("done").is_some(),
            "L1 never reached its end marker; log {}",
            r.log_path.display()
        );
    }
}

fn boot_both_vcpu_counts(kernel: KernelFormat, tag: &str) {
    let Some(rig) = rig() else { return };
    let scenario = Scenario::new(
        &format!("boot-{tag}"),
        vec![
            Boot::agentvm(&format!("{tag}-1cpu"), kernel)
                .vcpus(1)
                .memory_mib(512),
            Boot::agentvm(&format!("{tag}-2cpu"), kernel)
                .vcpus(2)
                .memory_mib(768),
        ],
    );
    let r = run(&rig, &scenario);
    check_report(&r, &format!("{tag}-1cpu"), 1, 512);
    check_report(&r, &format!("{tag}-2cpu"), 2, 768);
    check_l1_went_on(&r);
}

/// The vmlinux extracted from Debian's bzImage, entered through its PVH note.
#[test]
fn vmlinux_pvh_boots_with_1_and_2_vcpus() {
    boot_both_vcpu_counts(KernelFormat::Vmlinux, "pvh");
}

/// Debian's bzImage through the 64-bit boot protocol.
#[test]
fn bzimage_boots_with_1_and_2_vcpus() {
    boot_both_vcpu_counts(KernelFormat::BzImage, "bzimage");
}

/// A kernel panic in L2 (init exits, `panic=1`) ends agentvm with exit 2
/// through pvpanic, with the panic text on the console, and no hang.
#[test]
fn kernel_panic_ends_agentvm_with_crash_status() {
    let Some(rig) = rig() else { return };
    let mut boot = Boot::agentvm("panic", KernelFormat::Vmlinux).mode(GuestMode::Panic);
    boot.timeout = Duration::from_secs(90);
    let r = run(&rig, &Scenario::new("panic", vec![boot]));
    let b = r.boot("panic").expect("boot ran");
    let ctx = || r.context(b);
    assert_eq!(
        b.marker("panic"),
        Some("init-exits"),
        "the L2 init did not reach its exit; {}",
        ctx()
    );
    assert!(
        b.console_contains("Kernel panic - not syncing"),
        "no panic text on the console; {}",
        ctx()
    );
    assert_ne!(
        b.exit,
        VmmExit::TimedOut,
        "agentvm hung after the guest panicked; {}",
        ctx()
    );
    assert!(
        b.markers_named("pvpanic")
            .any(|d| d.starts_with("QEMU0001")),
        "pvpanic-mmio did not bind to an ACPI QEMU0001 device; {}",
        ctx()
    );
    assert_eq!(
        b.exit_code(),
        Some(2),
        "agentvm must exit 2 when the guest panics; {}",
        ctx()
    );
    check_l1_went_on(&r);
}
