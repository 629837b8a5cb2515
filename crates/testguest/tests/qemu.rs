//! Runs the guests under QEMU (TCG, `-M microvm`), an independent x86
//! implementation, and checks what they print.
//!
//! PVH images boot directly (`-kernel`). Long-mode code cannot be entered
//! by QEMU's loader, so [`long_mode_harness`] wraps a guest's loaded bytes
//! in a second ELF whose PVH entry builds identity page tables, enters long
//! mode and jumps to the guest's 64-bit entry with `rsi` pointing at a zero
//! page whose every field the test chose. Skipped, with the reason printed,
//! when `qemu-system-x86_64` is absent.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentvm_testguest::bzimage::PAYLOAD_OFFSET;
use agentvm_testguest::elf::{ElfImage, ElfSegment};
use agentvm_testguest::programs::{self, BootProbeOptions};
use agentvm_testguest::{Asm32, Asm64, Format, Guest, Report, BZIMAGE_LOAD_ADDR, WRONG_ENTRY_LINE};
use iced_x86::code_asm::{ax, cr0, cr3, cr4, ds, eax, ecx, es, ptr, rax, rsi, ss};

/// The harness segment: page tables, GDT, zero page, command line, initrd,
/// trampoline. Clear of QEMU's PVH data (below 1 MiB) and of the guests
/// (bzImage payload at 1 MiB, ELF at 16 MiB).
const H: u64 = 0x40_0000;
const PML4: u64 = H;
const GDT: u64 = H + 0x6000;
const GDTR: u64 = H + 0x6100;
const ZERO_PAGE: u64 = H + 0x7000;
const CMDLINE: u64 = H + 0x8000;
const INITRD: u64 = H + 0x9000;
const TRAMPOLINE32: u64 = H + 0xa000;
const TRAMPOLINE64: u64 = H + 0xa200;
const HARNESS_SIZE: usize = 0xb000;

const CMDLINE_TEXT: &str = "console=ttyS0 agentvm.test=harness";
const INITRD_BYTES: &[u8; 16] = b"INITRD!!01234567";
const E820: [(u64, u64, u32); 3] = [
    (0, 0x9fc00, 1),
    (0x10_0000, 0x7f0_0000, 1),
    (0xfeb0_0000, 0x10_0000, 2),
];
const RSDP: u64 = 0xe_0000;
/// Bits 63..32 of the initrd size: checks the probe joins `ext_ramdisk_size`.
const EXT_RAMDISK_SIZE: u32 = 1;

fn qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

macro_rules! require_qemu {
    () => {
        match qemu() {
            Some(q) => q,
            None => {
                eprintln!(
                    "skipped: qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
                );
                return;
            }
        }
    };
}

/// Boots `kernel` and returns (serial output, exit code).
fn run(qemu: &Path, kernel: &Path, extra: &[&str]) -> (String, Option<i32>) {
    let mut child = Command::new(qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-m",
            "256M",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4"])
        .args(extra)
        .arg("-kernel")
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("{} did not stop within 60 s", kernel.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.trim().is_empty(), "qemu stderr: {err}");
    (out, status.code())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The bytes a loader puts in memory for `guest`: (address, bytes).
fn loaded_bytes(guest: &Guest) -> (u64, Vec<u8>) {
    let b = guest.bytes();
    if let Format::BzImage(_) = guest.format() {
        return (BZIMAGE_LOAD_ADDR, b[PAYLOAD_OFFSET..].to_vec());
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let phnum = u16::from_le_bytes([b[56], b[57]]) as usize;
    (0..phnum)
        .map(|i| 64 + i * 56)
        .find(|&ph| b[ph] == 1) // PT_LOAD
        .map(|ph| {
            let offset = u64_at(ph + 8) as usize;
            let size = u64_at(ph + 32) as usize;
            (u64_at(ph + 24), b[offset..offset + size].to_vec())
        })
        .unwrap()
}

fn zero_page() -> Vec<u8> {
    let mut zp = vec![0u8; 0x1000];
    let mut put = |at: usize, bytes: &[u8]| zp[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x070, &RSDP.to_le_bytes());
    put(0x0c4, &EXT_RAMDISK_SIZE.to_le_bytes());
    put(0x1e8, &[E820.len() as u8]);
    put(0x1fe, &0xaa55u16.to_le_bytes());
    put(0x202, b"HdrS");
    put(0x210, &[0xff]);
    put(0x211, &[0x01]);
    put(0x218, &(INITRD as u32).to_le_bytes());
    put(0x21c, &(INITRD_BYTES.len() as u32).to_le_bytes());
    put(0x228, &(CMDLINE as u32).to_le_bytes());
    for (i, (addr, size, kind)) in E820.iter().enumerate() {
        let at = 0x2d0 + 20 * i;
        put(at, &addr.to_le_bytes());
        put(at + 8, &size.to_le_bytes());
        put(at + 16, &kind.to_le_bytes());
    }
    zp
}

/// An ELF that QEMU boots through PVH: it switches to long mode with
/// identity-mapped 4 GiB and jumps to `entry64` of `guest` (both loaded),
/// `rsi` = the harness zero page. `entry64` defaults to the guest's own.
fn long_mode_harness(guest: &Guest, entry64: Option<u64>) -> Vec<u8> {
    let entry64 = entry64.or(guest.entry64()).unwrap();
    let mut seg = vec![0u8; HARNESS_SIZE];
    let mut put = |addr: u64, bytes: &[u8]| {
        let at = (addr - H) as usize;
        seg[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // PML4 -> one PDPT -> four PDs of 2 MiB pages: the first 4 GiB.
    put(PML4, &((H + 0x1000) | 3).to_le_bytes());
    for i in 0..4u64 {
        put(
            H + 0x1000 + 8 * i,
            &((H + 0x2000 + 0x1000 * i) | 3).to_le_bytes(),
        );
        for j in 0..512u64 {
            put(
                H + 0x2000 + 0x1000 * i + 8 * j,
                &(((i * 512 + j) << 21) | 0x83).to_le_bytes(),
            );
        }
    }
    for (i, desc) in [0u64, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff]
        .iter()
        .enumerate()
    {
        put(GDT + 8 * i as u64, &desc.to_le_bytes());
    }
    put(GDTR, &23u16.to_le_bytes());
    put(GDTR + 2, &(GDT as u32).to_le_bytes());
    put(ZERO_PAGE, &zero_page());
    put(CMDLINE, CMDLINE_TEXT.as_bytes());
    put(INITRD, INITRD_BYTES);

    let mut a = Asm32::new().unwrap();
    a.cli().unwrap();
    a.lgdt(ptr(GDTR as u32)).unwrap();
    a.mov(eax, cr4).unwrap();
    a.or(eax, 0x20).unwrap(); // PAE
    a.mov(cr4, eax).unwrap();
    a.mov(eax, PML4 as u32).unwrap();
    a.mov(cr3, eax).unwrap();
    a.mov(ecx, 0xc000_0080u32).unwrap(); // EFER
    a.rdmsr().unwrap();
    a.or(eax, 0x100).unwrap(); // LME
    a.wrmsr().unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(eax, 0x8000_0001u32).unwrap(); // PG | PE
    a.mov(cr0, eax).unwrap();
    a.jmp_far(0x08, TRAMPOLINE64 as u32).unwrap();
    put(TRAMPOLINE32, &a.assemble(TRAMPOLINE32 as u32).unwrap());

    let mut b = Asm64::new().unwrap();
    b.mov(ax, 0x10u32).unwrap();
    b.mov(ds, ax).unwrap();
    b.mov(es, ax).unwrap();
    b.mov(ss, ax).unwrap();
    b.mov(rsi, ZERO_PAGE).unwrap();
    b.mov(rax, entry64).unwrap();
    b.jmp(rax).unwrap();
    put(TRAMPOLINE64, &b.assemble(TRAMPOLINE64).unwrap());

    let (addr, bytes) = loaded_bytes(guest);
    let image = ElfImage {
        entry: TRAMPOLINE32,
        pvh_entry: Some(TRAMPOLINE32 as u32),
        segments: vec![ElfSegment::new(addr, bytes), ElfSegment::new(H, seg)],
    };
    image.to_bytes()
}

fn run_long(
    qemu: &Path,
    guest: &Guest,
    entry64: Option<u64>,
    extra: &[&str],
) -> (String, Option<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let harness = write(
        dir.path(),
        "harness.elf",
        &long_mode_harness(guest, entry64),
    );
    run(qemu, &harness, extra)
}

fn run_pvh(qemu: &Path, guest: &Guest, extra: &[&str]) -> (String, Option<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let path = guest.write_to(dir.path()).unwrap();
    run(qemu, &path, extra)
}

/// QEMU's `isa-debug-exit` status for the value the guests write (0).
const DEBUG_EXIT_STATUS: Option<i32> = Some(1);

#[test]
fn hello_prints_exactly_its_message_in_every_format() {
    let qemu = require_qemu!();
    let msg = "hello, tiny guest\n";
    for format in [Format::Elf64, Format::DualElf, Format::bzimage()] {
        let guest = programs::hello_as(format, msg).unwrap();
        assert_eq!(
            run_long(&qemu, &guest, None, &[]),
            (msg.to_string(), DEBUG_EXIT_STATUS),
            "{format:?}"
        );
    }
    for format in [Format::PvhElf, Format::DualElf] {
        let guest = programs::hello_as(format, msg).unwrap();
        assert_eq!(
            run_pvh(&qemu, &guest, &[]),
            (msg.to_string(), DEBUG_EXIT_STATUS),
            "{format:?}"
        );
    }
}

#[test]
fn bench_guest_prints_its_line_through_either_entry() {
    let qemu = require_qemu!();
    let guest = programs::bench_guest().unwrap();
    assert_eq!(
        run_pvh(&qemu, &guest, &[]),
        (programs::BENCH_LINE_PVH32.to_string(), DEBUG_EXIT_STATUS)
    );
    assert_eq!(
        run_long(&qemu, &guest, None, &[]),
        (programs::BENCH_LINE_LONG64.to_string(), DEBUG_EXIT_STATUS)
    );
}

/// Parses a probe's output, checking every number has the documented shape:
/// `0x` and 16 lowercase hex digits.
fn report(out: &str) -> Report {
    let r = Report::parse(out);
    for line in r.lines().iter().filter(|l| l.contains("=0x")) {
        let (_, v) = line.split_once("=0x").unwrap();
        assert_eq!(v.len(), 16, "{line}");
        assert!(
            v.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{line}"
        );
    }
    r
}

fn check_boot_probe(out: &str, efer: bool) {
    let r = report(out);
    assert!(r.is_complete(), "{out}");
    assert_eq!(r.probe(), Some("boot64"));
    assert_eq!(r.value("rsi"), Some(ZERO_PAGE));
    assert_eq!(r.value("boot_flag"), Some(0xaa55));
    assert_eq!(r.value("header"), Some(0x5372_6448));
    assert_eq!(r.value("type_of_loader"), Some(0xff));
    assert_eq!(r.value("loadflags"), Some(0x01));
    assert_eq!(r.value("cmdline_ptr"), Some(CMDLINE));
    assert_eq!(r.text("cmdline"), Some(CMDLINE_TEXT));
    assert_eq!(r.value("e820_entries"), Some(E820.len() as u64));
    let map: Vec<_> = r
        .memory_map()
        .iter()
        .map(|e| (e.addr, e.size, e.kind))
        .collect();
    assert_eq!(map, E820);
    assert_eq!(r.value("initrd_addr"), Some(INITRD));
    assert_eq!(
        r.value("initrd_size"),
        Some(u64::from(EXT_RAMDISK_SIZE) << 32 | INITRD_BYTES.len() as u64)
    );
    let head: [u8; 8] = INITRD_BYTES[..8].try_into().unwrap();
    assert_eq!(r.value("initrd_head"), Some(u64::from_le_bytes(head)));
    assert_eq!(r.value("acpi_rsdp_addr"), Some(RSDP));
    let cr0v = r.value("cr0").unwrap();
    assert_eq!(cr0v & 0x8000_0001, 0x8000_0001, "PG and PE: {cr0v:#x}");
    assert_eq!(r.value("cr3"), Some(PML4));
    assert_eq!(r.value("cr4").unwrap() & 0x20, 0x20, "PAE");
    assert_eq!(r.value("cs"), Some(0x08));
    match efer {
        true => assert_eq!(r.value("efer").unwrap() & 0x500, 0x500, "LME and LMA"),
        false => assert_eq!(r.value("efer"), None),
    }
}

#[test]
fn boot_protocol_probe_reads_back_the_zero_page() {
    let qemu = require_qemu!();
    for format in [Format::Elf64, Format::bzimage()] {
        let guest = programs::boot_protocol_probe_as(format, BootProbeOptions::default()).unwrap();
        let (out, status) = run_long(&qemu, &guest, None, &[]);
        check_boot_probe(&out, false);
        assert_eq!(status, DEBUG_EXIT_STATUS);
    }
    let guest =
        programs::boot_protocol_probe_as(Format::Elf64, BootProbeOptions { read_efer: true })
            .unwrap();
    check_boot_probe(&run_long(&qemu, &guest, None, &[]).0, true);
}

#[test]
fn pvh_probe_reads_back_qemus_start_info() {
    let qemu = require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let initrd = write(dir.path(), "initrd", INITRD_BYTES);
    let initrd = initrd.to_str().unwrap();
    let guest = programs::pvh_probe().unwrap();
    let (out, status) = run_pvh(&qemu, &guest, &["-append", CMDLINE_TEXT, "-initrd", initrd]);
    let r = report(&out);
    assert!(r.is_complete(), "{out}");
    assert_eq!(status, DEBUG_EXIT_STATUS);
    assert_eq!(r.value("magic"), Some(0x336e_c578));
    assert_eq!(r.value("version"), Some(1));
    assert_eq!(r.text("cmdline"), Some(CMDLINE_TEXT));
    assert_eq!(r.value("ebx").map(|b| b != 0), Some(true));
    assert_eq!(r.value("nr_modules"), Some(1));
    assert_eq!(r.values("module_size"), vec![INITRD_BYTES.len() as u64]);
    let head: [u8; 8] = INITRD_BYTES[..8].try_into().unwrap();
    assert_eq!(r.value("module_head"), Some(u64::from_le_bytes(head)));
    assert_eq!(
        r.values("memmap_addr").len() as u64,
        r.value("memmap_entries").unwrap()
    );
    assert!(
        r.memory_map()
            .iter()
            .any(|e| e.addr == 0x10_0000 && e.kind == 1),
        "RAM at 1 MiB: {out}"
    );
    let cr0v = r.value("cr0").unwrap();
    assert_eq!(cr0v & 0x8000_0001, 0x1, "PE set, PG clear: {cr0v:#x}");
    assert_ne!(r.value("rsdp_paddr"), None);
}

/// QEMU microvm's first and last virtio-mmio transports; `-device` puts the
/// first device in the last one.
const MICROVM_MMIO_FIRST: u64 = 0xfeb0_0000;
const MICROVM_MMIO_LAST: u64 = 0xfeb0_2e00;

#[test]
fn mmio_probe_reads_a_virtio_mmio_transport() {
    let qemu = require_qemu!();
    let rng = ["-device", "virtio-rng-device"];
    for (base, device_id) in [(MICROVM_MMIO_FIRST, 0), (MICROVM_MMIO_LAST, 4)] {
        let long = programs::mmio_probe(base).unwrap();
        let pvh = programs::mmio_probe_as(Format::PvhElf, base).unwrap();
        for (out, status) in [
            run_long(&qemu, &long, None, &rng),
            run_pvh(&qemu, &pvh, &rng),
        ] {
            let r = report(&out);
            assert!(r.is_complete(), "{out}");
            assert_eq!(status, DEBUG_EXIT_STATUS);
            assert_eq!(r.value("mmio_base"), Some(base));
            assert_eq!(r.value("magic"), Some(0x7472_6976), "\"virt\"");
            assert_eq!(r.value("vendor_id"), Some(0x554d_4551), "\"QEMU\"");
            assert_eq!(r.value("device_id"), Some(device_id));
            assert!(r.has_line("notified"));
        }
    }
}

#[test]
fn bzimage_payload_start_says_the_entry_was_wrong_in_either_mode() {
    let qemu = require_qemu!();
    let guest = programs::hello_as(Format::bzimage(), "not this\n").unwrap();
    let (out, status) = run_long(&qemu, &guest, Some(BZIMAGE_LOAD_ADDR), &[]);
    assert_eq!(
        (out.as_str(), status),
        (WRONG_ENTRY_LINE, DEBUG_EXIT_STATUS)
    );

    // 32-bit: a PVH note pointing at payload + 0.
    let (addr, bytes) = loaded_bytes(&guest);
    let image = ElfImage {
        entry: addr,
        pvh_entry: Some(addr as u32),
        segments: vec![ElfSegment::new(addr, bytes)],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "payload0.elf", &image.to_bytes());
    assert_eq!(
        run(&qemu, &path, &[]),
        (WRONG_ENTRY_LINE.to_string(), DEBUG_EXIT_STATUS)
    );
}
