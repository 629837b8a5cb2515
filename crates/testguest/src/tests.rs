//! File-format tests: ELF and bzImage fields at their exact offsets, the
//! code at each entry decoded back, and the VMM's own loader
//! (linux-loader) reading the files. Helpers shared with the other test
//! modules live in [`util`].
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::process::Command;

use iced_x86::{Code, Register};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::util::{decode_program, parse_elf, static_serial_text, ElfFile};
use super::*;
use crate::bzimage::{offsets, PAYLOAD_OFFSET, REAL_MODE_LINE, REAL_MODE_STUB};

pub(crate) mod util {
    //! Test helpers: a small ELF reader and an x86 decoder loop.
    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// One program header.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Phdr {
        pub kind: u32,
        pub flags: u32,
        pub offset: u64,
        pub vaddr: u64,
        pub paddr: u64,
        pub filesz: u64,
        pub memsz: u64,
        pub align: u64,
    }

    /// The ELF header fields the loaders read, and the program headers.
    #[derive(Debug)]
    pub(crate) struct ElfFile {
        pub ident: [u8; 16],
        pub kind: u16,
        pub machine: u16,
        pub version: u32,
        pub entry: u64,
        pub phoff: u64,
        pub shoff: u64,
        pub ehsize: u16,
        pub phentsize: u16,
        pub shnum: u16,
        pub phdrs: Vec<Phdr>,
    }

    pub(crate) fn parse_elf(b: &[u8]) -> ElfFile {
        let phoff = u64_at(b, 32);
        let phnum = u16_at(b, 56) as usize;
        let phdrs = (0..phnum)
            .map(|i| {
                let p = phoff as usize + i * 56;
                Phdr {
                    kind: u32_at(b, p),
                    flags: u32_at(b, p + 4),
                    offset: u64_at(b, p + 8),
                    vaddr: u64_at(b, p + 16),
                    paddr: u64_at(b, p + 24),
                    filesz: u64_at(b, p + 32),
                    memsz: u64_at(b, p + 40),
                    align: u64_at(b, p + 48),
                }
            })
            .collect();
        ElfFile {
            ident: b[..16].try_into().unwrap(),
            kind: u16_at(b, 16),
            machine: u16_at(b, 18),
            version: u32_at(b, 20),
            entry: u64_at(b, 24),
            phoff,
            shoff: u64_at(b, 40),
            ehsize: u16_at(b, 52),
            phentsize: u16_at(b, 54),
            shnum: u16_at(b, 60),
            phdrs,
        }
    }

    /// What the guest may execute on PVM: port I/O, MMIO through plain
    /// moves, arithmetic, local jumps, `cli`/`hlt`; `rdmsr` and control
    /// register reads only where a probe documents them. No `int`, `call`,
    /// stack, `sti`, `iret`.
    pub(crate) const ALLOWED: &[Mnemonic] = &[
        Mnemonic::Mov,
        Mnemonic::Movzx,
        Mnemonic::Lea,
        Mnemonic::Out,
        Mnemonic::Add,
        Mnemonic::And,
        Mnemonic::Or,
        Mnemonic::Xor,
        Mnemonic::Shl,
        Mnemonic::Rol,
        Mnemonic::Inc,
        Mnemonic::Dec,
        Mnemonic::Cmp,
        Mnemonic::Test,
        Mnemonic::Jmp,
        Mnemonic::Jb,
        Mnemonic::Jbe,
        Mnemonic::Je,
        Mnemonic::Jne,
        Mnemonic::Rdmsr,
        Mnemonic::Cli,
        Mnemonic::Hlt,
    ];

    /// Decodes `code` (running at `ip`) up to and including the final
    /// `hlt; jmp hlt` of the reset sequence, asserting every instruction is
    /// valid, allowed on PVM, and that branches stay inside the program.
    pub(crate) fn decode_program(bitness: u32, ip: u64, code: &[u8]) -> Vec<Instruction> {
        let mut decoder = Decoder::with_ip(bitness, code, ip, DecoderOptions::NONE);
        let mut out: Vec<Instruction> = Vec::new();
        while decoder.can_decode() {
            let instr = decoder.decode();
            assert_ne!(
                instr.code(),
                Code::INVALID,
                "invalid instruction at {:#x}",
                instr.ip()
            );
            assert!(
                ALLOWED.contains(&instr.mnemonic()),
                "{:?} at {:#x} is not allowed",
                instr.mnemonic(),
                instr.ip()
            );
            let end = instr.mnemonic() == Mnemonic::Jmp
                && out.last().is_some_and(|h| {
                    h.mnemonic() == Mnemonic::Hlt && h.ip() == instr.near_branch_target()
                });
            out.push(instr);
            if end {
                let last = out.last().unwrap().next_ip();
                for i in &out {
                    if matches!(
                        i.op0_kind(),
                        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                    ) {
                        assert!(
                            (ip..last).contains(&i.near_branch_target()),
                            "branch out of the program at {:#x}",
                            i.ip()
                        );
                    }
                }
                return out;
            }
        }
        panic!(
            "no reset tail (hlt; jmp hlt) in {} bytes at {ip:#x}",
            code.len()
        );
    }

    /// The text a straight-line program prints: follows `mov dx, imm16` and
    /// `mov al, imm8`, and collects `al` at each `out dx, al` while `dx` is
    /// COM1. Loops (hex digits, strings) are not simulated: use only on
    /// programs without them.
    pub(crate) fn static_serial_text(instrs: &[Instruction]) -> String {
        let (mut dx, mut al, mut text) = (0u16, 0u8, Vec::new());
        for i in instrs {
            match i.code() {
                Code::Mov_r16_imm16 if i.op0_register() == Register::DX => dx = i.immediate16(),
                Code::Mov_r8_imm8 if i.op0_register() == Register::AL => al = i.immediate8(),
                Code::Out_DX_AL if dx == crate::asm::COM1 => text.push(al),
                _ => {}
            }
        }
        String::from_utf8(text).unwrap()
    }

    /// Whether the program ends with the documented reset sequence.
    pub(crate) fn ends_with_reset(instrs: &[Instruction]) -> bool {
        let n = instrs.len();
        n >= 7 && {
            let t = &instrs[n - 7..];
            t[0].code() == Code::Mov_r8_imm8
                && t[0].immediate8() == 0xfe
                && t[1].code() == Code::Out_imm8_AL
                && t[1].immediate8() == 0x64
                && t[2].code() == Code::Mov_r8_imm8
                && t[2].immediate8() == 0
                && t[3].code() == Code::Out_imm8_AL
                && t[3].immediate8() == 0xf4
                && t[4].mnemonic() == Mnemonic::Cli
                && t[5].mnemonic() == Mnemonic::Hlt
                && t[6].near_branch_target() == t[5].ip()
        }
    }
}

/// The loaded segment of an ELF guest, by address.
fn segment(guest: &Guest) -> (u64, Vec<u8>) {
    let elf = parse_elf(guest.bytes());
    let load = elf.phdrs.iter().find(|p| p.kind == elf::PT_LOAD).unwrap();
    let start = load.offset as usize;
    (
        load.paddr,
        guest.bytes()[start..start + load.filesz as usize].to_vec(),
    )
}

/// The code at `entry` in an ELF guest.
fn code_at(guest: &Guest, entry: u64) -> (u64, Vec<u8>) {
    let (addr, bytes) = segment(guest);
    (entry, bytes[(entry - addr) as usize..].to_vec())
}

fn check_elf_header(elf: &ElfFile) {
    assert_eq!(&elf.ident[..4], b"\x7fELF");
    assert_eq!(elf.ident[4], 2, "ELFCLASS64");
    assert_eq!(elf.ident[5], 1, "little endian");
    assert_eq!(elf.ident[6], 1, "EV_CURRENT");
    assert_eq!(elf.kind, 2, "ET_EXEC");
    assert_eq!(elf.machine, 62, "EM_X86_64");
    assert_eq!(elf.version, 1);
    assert_eq!((elf.phoff, elf.ehsize, elf.phentsize), (64, 64, 56));
    assert_eq!((elf.shoff, elf.shnum), (0, 0));
    let load: Vec<_> = elf
        .phdrs
        .iter()
        .filter(|p| p.kind == elf::PT_LOAD)
        .collect();
    assert_eq!(load.len(), 1);
    let load = load[0];
    assert_eq!(load.paddr, load.vaddr);
    assert_eq!(load.paddr, ELF_LOAD_ADDR);
    assert!(load.paddr >= 0x10_0000, "loaded at or above 1 MiB");
    assert_eq!((load.flags, load.align), (7, 0x1000));
    assert_eq!(load.offset % load.align, load.vaddr % load.align);
    assert_eq!(load.filesz, load.memsz);
}

fn check_pvh_note(guest: &Guest, elf: &ElfFile) {
    let notes: Vec<_> = elf
        .phdrs
        .iter()
        .filter(|p| p.kind == elf::PT_NOTE)
        .collect();
    assert_eq!(notes.len(), 1);
    let note = notes[0];
    assert_eq!((note.filesz, note.align), (20, 4));
    let n = &guest.bytes()[note.offset as usize..][..20];
    assert_eq!(util::u32_at(n, 0), 4, "n_namesz");
    assert_eq!(util::u32_at(n, 4), 4, "n_descsz");
    assert_eq!(util::u32_at(n, 8), 18, "XEN_ELFNOTE_PHYS32_ENTRY");
    assert_eq!(&n[12..16], b"Xen\0");
    assert_eq!(Some(util::u32_at(n, 16)), guest.pvh_entry());
}

#[test]
fn elf64_is_vmlinux_shaped_with_64bit_code_at_e_entry() {
    let msg = "hello from elf64\n";
    let guest = programs::hello(msg).unwrap();
    let elf = parse_elf(guest.bytes());
    check_elf_header(&elf);
    assert_eq!(elf.phdrs.len(), 1, "no PT_NOTE without PVH");
    assert_eq!(elf.entry, ELF_LOAD_ADDR);
    assert_eq!(
        (guest.entry64(), guest.pvh_entry()),
        (Some(ELF_LOAD_ADDR), None)
    );
    let load = elf.phdrs[0];
    assert_eq!(
        guest.bytes().len() as u64,
        load.offset + load.filesz,
        "nothing after the segment"
    );

    let (ip, code) = code_at(&guest, elf.entry);
    let instrs = decode_program(64, ip, &code);
    assert_eq!(instrs[0].code(), Code::Mov_r16_imm16, "mov dx, COM1 first");
    assert_eq!(instrs[0].immediate16(), 0x3f8);
    assert!(instrs.iter().any(|i| i.code() == Code::Out_DX_AL));
    assert_eq!(static_serial_text(&instrs), msg);
    assert!(util::ends_with_reset(&instrs));
    assert_eq!(
        instrs.last().unwrap().next_ip(),
        ip + code.len() as u64,
        "the segment is exactly the program"
    );
}

#[test]
fn pvh_elf_has_the_xen_note_and_32bit_code_at_it() {
    let msg = "hello from pvh\n";
    let guest = programs::hello_as(Format::PvhElf, msg).unwrap();
    let elf = parse_elf(guest.bytes());
    check_elf_header(&elf);
    check_pvh_note(&guest, &elf);
    assert_eq!(
        (guest.entry64(), guest.pvh_entry()),
        (None, Some(ELF_LOAD_ADDR as u32))
    );
    assert_eq!(
        elf.entry, ELF_LOAD_ADDR,
        "e_entry is the PVH entry: linux-loader needs it >= 1 MiB"
    );

    let (ip, code) = code_at(&guest, ELF_LOAD_ADDR);
    let instrs = decode_program(32, ip, &code);
    assert_eq!(static_serial_text(&instrs), msg);
    assert!(util::ends_with_reset(&instrs));
}

#[test]
fn dual_elf_has_both_entries_in_one_segment() {
    let guest = programs::bench_guest().unwrap();
    assert_eq!(guest.format(), Format::DualElf);
    let elf = parse_elf(guest.bytes());
    check_elf_header(&elf);
    check_pvh_note(&guest, &elf);
    let pvh = u64::from(guest.pvh_entry().unwrap());
    assert_eq!(elf.entry, ELF_LOAD_ADDR);
    assert!(pvh > ELF_LOAD_ADDR && pvh % DUAL_PVH_ALIGN == 0, "{pvh:#x}");

    let (ip, code) = code_at(&guest, ELF_LOAD_ADDR);
    let long = decode_program(64, ip, &code);
    assert!(
        long.last().unwrap().next_ip() <= pvh,
        "64-bit code ends before the PVH entry"
    );
    assert_eq!(static_serial_text(&long), programs::BENCH_LINE_LONG64);
    let (ip, code) = code_at(&guest, pvh);
    let short = decode_program(32, ip, &code);
    assert_eq!(static_serial_text(&short), programs::BENCH_LINE_PVH32);
    assert!(programs::BENCH_LINE_LONG64.starts_with(programs::BENCH_READY));
    assert!(programs::BENCH_LINE_PVH32.starts_with(programs::BENCH_READY));
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

#[test]
fn bzimage_setup_header_fields_sit_at_their_offsets() {
    let msg = "hello from bzImage\n";
    let guest = programs::hello_as(Format::bzimage(), msg).unwrap();
    let b = guest.bytes();
    let payload_len = b.len() - PAYLOAD_OFFSET;
    assert_eq!(b[0x1f1], 4, "setup_sects");
    assert_eq!(PAYLOAD_OFFSET, 0xa00);
    assert_eq!(
        util::u32_at(b, 0x1f4) as usize,
        payload_len.div_ceil(16),
        "syssize"
    );
    assert_eq!(u16_at(b, 0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&b[0x202..0x206], b"HdrS");
    assert_eq!(u16_at(b, 0x206), 0x020f, "version 2.15");
    assert_eq!(b[0x210], 0, "type_of_loader is the loader's");
    assert_eq!(b[0x211] & 0x01, 0x01, "LOADED_HIGH");
    assert_eq!(util::u32_at(b, 0x214), 0x10_0000, "code32_start");
    assert_eq!(util::u32_at(b, 0x22c), 0x7fff_ffff, "initrd_addr_max");
    assert_eq!(util::u32_at(b, 0x230), 0x20_0000, "kernel_alignment");
    assert_eq!(
        b[0x234], 0,
        "relocatable_kernel: the payload is position dependent"
    );
    assert_eq!(u16_at(b, 0x236), 0x0001, "xloadflags: XLF_KERNEL_64");
    assert_eq!(util::u32_at(b, 0x238), 2047, "cmdline_size");
    assert_eq!(util::u64_at(b, 0x258), 0x10_0000, "pref_address");
    let init_size = util::u32_at(b, 0x260) as usize;
    assert!(
        init_size >= payload_len && init_size.is_multiple_of(0x1000),
        "init_size {init_size:#x}"
    );
    let version_at = 0x200 + usize::from(u16_at(b, 0x20e));
    let version = &b[version_at..];
    let version = &version[..version.iter().position(|&c| c == 0).unwrap()];
    assert_eq!(version, b"agentvm-testguest 0.1.0 (hello)");

    assert_eq!(
        (guest.load_addr(), guest.entry64(), guest.pvh_entry()),
        (0x10_0000, Some(0x10_0200), None)
    );
    let entry = PAYLOAD_OFFSET + 0x200;
    let instrs = decode_program(64, 0x10_0200, &b[entry..]);
    assert_eq!(static_serial_text(&instrs), msg);
    assert!(util::ends_with_reset(&instrs));
}

#[test]
fn bzimage_options_reach_the_header() {
    let options = BzImageOptions {
        version: 0x020c,
        initrd_addr_max: 0x0fff_ffff,
        cmdline_size: 100,
        xloadflags: 0,
    };
    let guest = programs::hello_as(Format::BzImage(options), "x").unwrap();
    let b = guest.bytes();
    assert_eq!(u16_at(b, offsets::VERSION), 0x020c);
    assert_eq!(util::u32_at(b, offsets::INITRD_ADDR_MAX), 0x0fff_ffff);
    assert_eq!(util::u32_at(b, offsets::CMDLINE_SIZE), 100);
    assert_eq!(u16_at(b, offsets::XLOADFLAGS), 0);
}

#[test]
fn bzimage_wrong_entries_say_so_in_every_mode() {
    let guest = programs::hello_as(Format::bzimage(), "right\n").unwrap();
    let b = guest.bytes();
    // payload + 0: the same instructions in 32- and 64-bit mode.
    let stub32 = decode_program(32, BZIMAGE_LOAD_ADDR, &b[PAYLOAD_OFFSET..]);
    let stub64 = decode_program(64, BZIMAGE_LOAD_ADDR, &b[PAYLOAD_OFFSET..]);
    let codes = |v: &[iced_x86::Instruction]| {
        v.iter()
            .map(|i| (i.len(), i.mnemonic()))
            .collect::<Vec<_>>()
    };
    assert_eq!(codes(&stub32), codes(&stub64));
    assert_eq!(static_serial_text(&stub64), WRONG_ENTRY_LINE);
    assert!(util::ends_with_reset(&stub64));

    // The real-mode setup entry at 0x200 jumps to the 16-bit stub.
    let mut d = iced_x86::Decoder::with_ip(
        16,
        &b[offsets::JUMP..],
        0x200,
        iced_x86::DecoderOptions::NONE,
    );
    let jump = d.decode();
    assert_eq!(jump.code(), Code::Jmp_rel8_16);
    assert_eq!(jump.near_branch_target(), REAL_MODE_STUB as u64);
    let stub16 = decode_program(16, REAL_MODE_STUB as u64, &b[REAL_MODE_STUB..]);
    assert_eq!(static_serial_text(&stub16), REAL_MODE_LINE);
    assert!(util::ends_with_reset(&stub16));
}

fn guest_memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap()
}

#[test]
fn linux_loader_loads_the_elf_formats_like_the_vmm() {
    let highmem = Some(GuestAddress(0x10_0000));
    for format in [Format::Elf64, Format::PvhElf, Format::DualElf] {
        let guest = programs::hello_as(format, "loader\n").unwrap();
        let mem = guest_memory();
        let r = Elf::load(&mem, None, &mut Cursor::new(guest.bytes()), highmem).unwrap();
        match guest.pvh_entry() {
            Some(e) => assert_eq!(
                r.pvh_boot_cap,
                PvhBootCapability::PvhEntryPresent(GuestAddress(u64::from(e)))
            ),
            // Without a PT_NOTE linux-loader leaves its default; the VMM
            // takes anything but "present" as the 64-bit path.
            None => assert!(
                !matches!(r.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(_)),
                "{format:?}"
            ),
        }
        assert_eq!(
            r.kernel_load,
            GuestAddress(guest.entry64().unwrap_or(ELF_LOAD_ADDR))
        );
        let (addr, bytes) = segment(&guest);
        assert_eq!(r.kernel_end, addr + bytes.len() as u64);
        let mut loaded = vec![0u8; bytes.len()];
        mem.read_slice(&mut loaded, GuestAddress(addr)).unwrap();
        assert_eq!(loaded, bytes);
    }
}

#[test]
fn linux_loader_loads_the_bzimage_like_the_vmm() {
    let options = BzImageOptions {
        initrd_addr_max: 0x3fff_ffff,
        cmdline_size: 511,
        ..Default::default()
    };
    let guest =
        programs::boot_protocol_probe_as(Format::BzImage(options), Default::default()).unwrap();
    let mem = guest_memory();
    let r = BzImage::load(
        &mem,
        None,
        &mut Cursor::new(guest.bytes()),
        Some(GuestAddress(0x10_0000)),
    )
    .unwrap();
    let hdr = r.setup_header.unwrap();
    assert_eq!(r.kernel_load, GuestAddress(BZIMAGE_LOAD_ADDR));
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!({ hdr.xloadflags } & 1, 1);
    assert_eq!({ hdr.initrd_addr_max }, 0x3fff_ffff);
    assert_eq!({ hdr.cmdline_size }, 511);
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    let payload = &guest.bytes()[PAYLOAD_OFFSET..];
    let mut loaded = vec![0u8; payload.len()];
    mem.read_slice(&mut loaded, GuestAddress(BZIMAGE_LOAD_ADDR))
        .unwrap();
    assert_eq!(loaded, payload);
    // The 64-bit entry the VMM computes runs the probe.
    let entry = r.kernel_load.0 + BZIMAGE_ENTRY64_OFFSET;
    let instrs = decode_program(64, entry, &loaded[BZIMAGE_ENTRY64_OFFSET as usize..]);
    assert_eq!(instrs[0].mnemonic(), iced_x86::Mnemonic::Mov);
    assert_eq!(
        (instrs[0].op0_register(), instrs[0].op1_register()),
        (Register::RBX, Register::RSI)
    );
}

#[test]
fn readelf_accepts_the_elf_files_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let guests = [
        programs::hello("readelf\n").unwrap(),
        programs::pvh_probe().unwrap(),
        programs::bench_guest().unwrap(),
    ];
    for guest in &guests {
        let path = guest.write_to(dir.path()).unwrap();
        let out = match Command::new("readelf")
            .args(["-W", "-h", "-l", "-n"])
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipped: readelf not runnable ({e}); install binutils");
                return;
            }
        };
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stderr.is_empty(),
            "{}: {stderr}",
            path.display()
        );
        assert!(stdout.contains("EXEC (Executable file)"), "{stdout}");
        assert!(stdout.contains("X86-64"), "{stdout}");
        assert!(
            stdout.contains("Entry point address:               0x1000000"),
            "{stdout}"
        );
        assert!(
            stdout.contains("LOAD           0x001000 0x0000000001000000 0x0000000001000000"),
            "{stdout}"
        );
        match guest.pvh_entry() {
            Some(entry) => {
                assert!(
                    stdout.contains("Xen                  0x00000004"),
                    "{stdout}"
                );
                assert!(stdout.contains("(0x00000012)"), "{stdout}");
                let desc: Vec<_> = entry
                    .to_le_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert!(
                    stdout.contains(&format!("description data: {} ", desc.join(" "))),
                    "{stdout}"
                );
            }
            None => assert!(!stdout.contains("NOTE"), "{stdout}"),
        }
    }
}

#[test]
fn write_to_names_files_per_program_and_format() {
    let dir = tempfile::tempdir().unwrap();
    let elf = programs::hello("a").unwrap();
    let bz = programs::hello_as(Format::bzimage(), "a").unwrap();
    let p1 = elf.write_to(dir.path()).unwrap();
    let p2 = bz.write_to(dir.path()).unwrap();
    assert_eq!(p1, dir.path().join("hello.elf64"));
    assert_eq!(p2, dir.path().join("hello.bzimage"));
    assert_eq!(std::fs::read(&p1).unwrap(), elf.bytes());
    assert_eq!(std::fs::read(&p2).unwrap(), bz.as_ref());

    let missing = dir.path().join("no/such/dir");
    match elf.write_to(&missing) {
        Err(Error::Write { path, .. }) => assert_eq!(path, missing.join("hello.elf64")),
        other => panic!("expected a write error, got {other:?}"),
    }
}

#[test]
fn formats_refuse_programs_without_the_code_they_enter() {
    let only64 = || Program::new("x").with_long64(Asm64::new().unwrap());
    let only32 = || Program::new("x").with_pvh32(Asm32::new().unwrap());
    assert!(matches!(
        only64().build(Format::PvhElf),
        Err(Error::MissingEntry {
            entry: "32-bit PVH",
            ..
        })
    ));
    assert!(matches!(
        only64().build(Format::DualElf),
        Err(Error::MissingEntry {
            entry: "32-bit PVH",
            ..
        })
    ));
    assert!(matches!(
        only32().build(Format::Elf64),
        Err(Error::MissingEntry {
            entry: "long-mode",
            ..
        })
    ));
    assert!(matches!(
        only32().build(Format::bzimage()),
        Err(Error::MissingEntry {
            format: "bzimage",
            ..
        })
    ));
    let err = only32().build(Format::Elf64).unwrap_err().to_string();
    assert_eq!(
        err,
        "Program x has no long-mode code, which the elf64 format needs"
    );
}

#[test]
fn errors_travel_through_anyhow_and_threads() {
    fn check<T: std::error::Error + Send + Sync + 'static>() {}
    check::<Error>();
    let err = Error::InvalidArgument("x");
    assert_eq!(err.to_string(), "Invalid argument: x");
}
