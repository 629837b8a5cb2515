//! T1 inside the crate: tiny guests on the host's /dev/kvm that check what
//! only the crate can see — the addresses the boot protocols promise (zero
//! page, PVH start info, command line, RSDP, e820 map) and how devices are
//! wired into KVM. The tests of the public API are in `tests/kvm_tiny.rs`.
//!
//! These tests need a /dev/kvm that opens; elsewhere they print why they
//! skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentvm_devices::virtio::rng::Rng;
use agentvm_testguest::programs::{self, BootProbeOptions};
use agentvm_testguest::{Asm64, Format, Guest, Program, Report};
use iced_x86::code_asm::{dword_ptr, rax};

use crate::arch::x86_64::e820::memory_map;
use crate::arch::x86_64::layout::{
    CMDLINE_START, PVH_INFO_START, RSDP_START, VIRTIO_MMIO_START, ZERO_PAGE_START,
};
use crate::{ExitStatus, SerialSink, VmBuilder};

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

/// Boots `builder`'s VM and returns its exit status and console output.
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

fn check_e820(report: &Report, mem: u64) {
    let want = memory_map(mem);
    let got = report.memory_map();
    assert_eq!(got.len(), want.len(), "{:?}", report.lines());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.addr, g.size, g.kind), (w.addr, w.size, w.kind));
    }
}

#[test]
fn elf_and_bzimage_kernels_see_what_the_64bit_boot_protocol_promises() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    let mut initrd_bytes = b"INITRD!\0".to_vec();
    initrd_bytes.resize(3 * 4096 + 17, 0xa5);
    std::fs::write(&initrd, &initrd_bytes).unwrap();
    let mem = 256u64 << 20;
    let options = BootProbeOptions { read_efer: true };
    for format in [Format::Elf64, Format::bzimage()] {
        let kernel = write_guest(
            dir.path(),
            &programs::boot_protocol_probe_as(format, options).unwrap(),
        );
        let (status, out) = boot(
            VmBuilder::new(&kernel)
                .memory_mib(mem >> 20)
                .initrd(&initrd)
                .cmdline("console=ttyS0 agentvm.test=probe"),
        );
        assert_eq!(status, ExitStatus::Reset, "{format:?}: {out}");
        let r = Report::parse(&out);
        assert!(r.is_complete(), "{format:?}: {out}");
        assert_eq!(r.value("rsi"), Some(ZERO_PAGE_START));
        assert_eq!(r.value("boot_flag"), Some(0xaa55));
        assert_eq!(r.value("header"), Some(0x5372_6448));
        assert_eq!(r.value("type_of_loader"), Some(0xff));
        assert_eq!(r.value("cmdline_ptr"), Some(CMDLINE_START));
        assert_eq!(r.text("cmdline"), Some("console=ttyS0 agentvm.test=probe"));
        assert_eq!(r.value("acpi_rsdp_addr"), Some(RSDP_START));
        check_e820(&r, mem);
        let initrd_addr = r.value("initrd_addr").unwrap();
        assert_eq!(r.value("initrd_size"), Some(initrd_bytes.len() as u64));
        assert_eq!(initrd_addr % 4096, 0);
        assert!(
            initrd_addr + initrd_bytes.len() as u64 <= mem,
            "initrd inside RAM"
        );
        assert!(initrd_addr > 0x100_0000, "initrd above the kernel");
        assert_eq!(
            r.value("initrd_head"),
            Some(u64::from_le_bytes(*b"INITRD!\0"))
        );
        assert_eq!(
            r.value("cr0").map(|v| v & 0x8000_0001),
            Some(0x8000_0001),
            "PE and PG"
        );
        assert_eq!(r.value("cr4").map(|v| v & 0x20), Some(0x20), "PAE");
        assert_eq!(
            r.value("efer").map(|v| v & 0x500),
            Some(0x500),
            "LME and LMA"
        );
        assert_eq!(r.value("cs"), Some(0x10));
    }
}

#[test]
fn pvh_kernels_get_a_start_info_with_cmdline_modules_memmap_and_rsdp() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(dir.path(), &programs::pvh_probe().unwrap());
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, b"PVHMOD!!and some more").unwrap();
    let mem = 512u64 << 20;
    let (status, out) = boot(
        VmBuilder::new(&kernel)
            .memory_mib(mem >> 20)
            .initrd(&initrd)
            .cmdline("pvh=yes quiet")
            .vcpus(2),
    );
    assert_eq!(status, ExitStatus::Reset, "{out}");
    let r = Report::parse(&out);
    assert!(r.is_complete(), "{out}");
    assert_eq!(r.value("ebx"), Some(PVH_INFO_START));
    assert_eq!(r.value("magic"), Some(0x336e_c578));
    assert_eq!(r.value("version"), Some(1));
    assert_eq!(r.value("nr_modules"), Some(1));
    assert_eq!(r.value("cmdline_paddr"), Some(CMDLINE_START));
    assert_eq!(r.text("cmdline"), Some("pvh=yes quiet"));
    assert_eq!(r.value("rsdp_paddr"), Some(RSDP_START));
    assert_eq!(r.values("module_size"), vec![21]);
    assert_eq!(
        r.value("module_head"),
        Some(u64::from_le_bytes(*b"PVHMOD!!"))
    );
    check_e820(&r, mem);
    assert_eq!(
        r.value("cr0").map(|v| v & 0x8000_0001),
        Some(1),
        "protected mode, paging off"
    );
}

#[test]
fn a_queue_notify_write_signals_the_ioeventfd_and_never_reaches_the_vmm() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A guest that notifies queue 0 and then spins, so the eventfd can be
    // read while the device still holds it (a reset drains it).
    let mut code = Asm64::new().unwrap();
    code.mov(rax, VIRTIO_MMIO_START).unwrap();
    code.mov(dword_ptr(rax + 0x50), 0u32).unwrap();
    code.serial_print("notified\n").unwrap();
    let mut top = code.create_label();
    code.set_label(&mut top).unwrap();
    code.pause().unwrap();
    code.jmp(top).unwrap();
    let kernel = write_guest(
        dir.path(),
        &Program::new("notify")
            .with_long64(code)
            .build(Format::Elf64)
            .unwrap(),
    );
    let console = Console::default();
    let vm = VmBuilder::new(&kernel)
        .memory_mib(64)
        .device(Box::new(Rng::new()))
        .serial(SerialSink::Writer(Box::new(console.clone())))
        .build()
        .unwrap();
    let notify = vm.devices().queue_notify_event(0, 0).unwrap().unwrap();
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    while !console.text().contains("notified") {
        std::thread::sleep(Duration::from_millis(1));
    }
    let count = notify.read();
    let exits = handle.stats().mmio_exits;
    handle.stop();
    assert_eq!(runner.join().unwrap(), ExitStatus::Stopped);
    assert_eq!(
        count.unwrap(),
        1,
        "the QueueNotify write signalled queue 0's eventfd"
    );
    assert_eq!(
        exits, 0,
        "KVM consumed the notify write; it never reached the VMM"
    );
}

#[test]
fn a_net_stack_adds_exactly_one_virtio_device_of_type_1() {
    use agentvm_net::{Mode, Policy, StackConfig};
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(dir.path(), &programs::hello("x").unwrap());
    let stack = StackConfig {
        policy: Policy::new(Mode::Filtered),
        ..StackConfig::default()
    };
    let vm = VmBuilder::new(&kernel)
        .memory_mib(64)
        .net(stack)
        .serial(SerialSink::Discard)
        .build()
        .unwrap();
    let slots = vm.devices().slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].device_type, 1);
    assert_eq!(slots[0].base, VIRTIO_MMIO_START);
}

#[test]
fn hotplug_slots_follow_the_devices_and_attach_under_the_seccomp_filters() {
    use agentvm_devices::virtio::fs::{launch_detached, stop_detached, FsConfig, Search};

    use crate::HotplugError;
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    let kernel = write_guest(dir.path(), &programs::hello("x").unwrap());
    let vm = VmBuilder::new(&kernel)
        .memory_mib(64)
        .rng()
        .state_dir(&state)
        .hotplug_slots(2)
        .serial(SerialSink::Discard)
        .build()
        .unwrap();
    let slots = vm.devices().slots().to_vec();
    assert_eq!(
        slots.iter().map(|s| s.device_type).collect::<Vec<_>>(),
        [4, 0, 0],
        "the slots come after the devices, as placeholders"
    );
    assert_eq!(slots[1].base, VIRTIO_MMIO_START + 0x1000);
    let handle = vm.handle();
    // A guest that halts at once would end the VM; this one prints and
    // halts, and the VMM's threads keep running until the handle stops it.
    let running = vm.start().unwrap();

    // The requests run on the activation thread, under its filter (the
    // default level kills the VMM on a call outside it).
    assert!(matches!(
        handle.detach_fs("none"),
        Err(HotplugError::UnknownTag(_))
    ));
    assert!(matches!(
        handle.attach_fs("nobody", 1),
        Err(HotplugError::Attach { .. })
    ));
    let bin = match Search::from_env(None).find() {
        Ok(bin) => Some(bin),
        Err(e) => {
            eprintln!("no virtiofsd, attaching to a real one is skipped: {e}");
            None
        }
    };
    if let Some(bin) = bin {
        let mut config = FsConfig::new("live0", &shared, &state);
        config.allow_unsandboxed = true;
        let daemon = launch_detached(&bin, &config, &state.join("live0.log")).unwrap();
        let attached = handle.attach_fs("live0", daemon.pid).unwrap();
        assert_eq!(attached.base, slots[1].base);
        assert_eq!(handle.attached_fs(), std::slice::from_ref(&attached));
        assert!(matches!(
            handle.attach_fs("live0", daemon.pid),
            Err(HotplugError::TagInUse(_))
        ));
        assert_eq!(handle.detach_fs("live0").unwrap(), attached);
        assert!(handle.attached_fs().is_empty());
        // The connection closed: the daemon ends by itself.
        assert!(stop_detached(
            daemon.pid,
            &daemon.socket,
            Duration::from_secs(5),
            || false
        ));
    }
    handle.stop();
    assert!(!running.wait().is_failure());
}

/// Whether a thread of this process is called `name`.
fn has_thread(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        std::fs::read_to_string(t.unwrap().path().join("comm")).is_ok_and(|c| c.trim() == name)
    })
}

#[test]
fn the_density_guest_activates_every_device_and_stays_up_until_stopped() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(dir.path(), &programs::idle_guest().unwrap());
    let console = Console::default();
    let vm = VmBuilder::new(&kernel)
        .memory_mib(64)
        .rng()
        .serial(SerialSink::Writer(Box::new(console.clone())))
        .build()
        .unwrap();
    let handle = vm.handle();
    assert!(!has_thread("virtio-rng"), "no worker before activation");
    let runner = std::thread::spawn(move || vm.run().unwrap());
    // The rng's worker starts only when the guest drove it to DRIVER_OK.
    // A guard, not a timing check: a broken guest fails instead of hanging.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(console.text().contains(programs::BENCH_READY) && has_thread("virtio-rng")) {
        assert!(
            std::time::Instant::now() < deadline,
            "not activated: {}",
            console.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!runner.is_finished(), "the guest halts and the VM stays up");
    handle.stop();
    assert_eq!(runner.join().unwrap(), ExitStatus::Stopped);
}
