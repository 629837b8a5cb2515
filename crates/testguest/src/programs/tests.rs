//! The ready-made programs: which formats each builds in, that every entry
//! decodes to PVM-safe code ending in the reset sequence, and the
//! instructions the VMM tests rely on (the notify write, the zero page
//! read). Their printed output is checked under QEMU in `tests/qemu.rs`.
#![allow(clippy::unwrap_used)]

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::*;
use crate::tests::util::{decode_program, ends_with_reset, parse_elf};
use crate::{bzimage::PAYLOAD_OFFSET, elf::PT_LOAD, BZIMAGE_LOAD_ADDR};

/// Decodes every entry of `guest`: (bitness, instructions).
fn entries(guest: &Guest) -> Vec<(u32, Vec<Instruction>)> {
    let b = guest.bytes();
    let (addr, segment) = match guest.format() {
        Format::BzImage(_) => (BZIMAGE_LOAD_ADDR, &b[PAYLOAD_OFFSET..]),
        _ => {
            let elf = parse_elf(b);
            let load = elf.phdrs.iter().find(|p| p.kind == PT_LOAD).unwrap();
            (
                load.paddr,
                &b[load.offset as usize..][..load.filesz as usize],
            )
        }
    };
    let mut out = Vec::new();
    if let Some(e) = guest.entry64() {
        out.push((64, decode_program(64, e, &segment[(e - addr) as usize..])));
    }
    if let Some(e) = guest.pvh_entry().map(u64::from) {
        out.push((32, decode_program(32, e, &segment[(e - addr) as usize..])));
    }
    out
}

fn all_guests() -> Vec<Guest> {
    let formats = [
        Format::Elf64,
        Format::PvhElf,
        Format::DualElf,
        Format::bzimage(),
    ];
    let mut guests = Vec::new();
    for format in formats {
        guests.push(hello_as(format, "hi\n").unwrap());
        guests.push(mmio_probe_as(format, 0xd000_0000).unwrap());
    }
    for format in [Format::Elf64, Format::bzimage()] {
        guests.push(boot_protocol_probe_as(format, BootProbeOptions { read_efer: true }).unwrap());
        guests.push(boot_protocol_probe_as(format, BootProbeOptions::default()).unwrap());
    }
    guests.push(pvh_probe().unwrap());
    guests.push(bench_guest().unwrap());
    guests
}

#[test]
fn every_entry_is_pvm_safe_and_ends_in_the_reset_sequence() {
    for guest in all_guests() {
        let entries = entries(&guest);
        let expected =
            usize::from(guest.entry64().is_some()) + usize::from(guest.pvh_entry().is_some());
        assert_eq!(entries.len(), expected);
        for (bits, instrs) in entries {
            assert!(
                ends_with_reset(&instrs),
                "{} {:?} {bits}-bit",
                guest.name(),
                guest.format()
            );
        }
    }
}

#[test]
fn only_the_efer_option_reads_an_msr() {
    let has_rdmsr = |options| {
        let guest = boot_protocol_probe_as(Format::Elf64, options).unwrap();
        entries(&guest)[0]
            .1
            .iter()
            .any(|i| i.mnemonic() == Mnemonic::Rdmsr)
    };
    assert!(has_rdmsr(BootProbeOptions { read_efer: true }));
    assert!(!has_rdmsr(BootProbeOptions::default()));
    for guest in all_guests()
        .iter()
        .filter(|g| g.name() != "boot-probe-efer")
    {
        for (_, instrs) in entries(guest) {
            assert!(
                instrs.iter().all(|i| i.mnemonic() != Mnemonic::Rdmsr),
                "{}",
                guest.name()
            );
        }
    }
}

#[test]
fn the_default_programs_have_the_formats_their_callers_expect() {
    assert_eq!(hello("x").unwrap().format(), Format::Elf64);
    assert_eq!(boot_protocol_probe().unwrap().format(), Format::Elf64);
    assert_eq!(mmio_probe(0xd000_0000).unwrap().format(), Format::Elf64);
    assert_eq!(pvh_probe().unwrap().format(), Format::PvhElf);
    let bench = bench_guest().unwrap();
    assert_eq!(bench.format(), Format::DualElf);
    assert!(bench.entry64().is_some() && bench.pvh_entry().is_some());
}

#[test]
fn boot_probe_has_no_32bit_flavour() {
    for format in [Format::PvhElf, Format::DualElf] {
        let err = boot_protocol_probe_as(format, BootProbeOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingEntry {
                    entry: "32-bit PVH",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn boot_probe_keeps_the_zero_page_pointer_first() {
    let guest = boot_protocol_probe().unwrap();
    let first = &entries(&guest)[0].1[0];
    assert_eq!(first.mnemonic(), Mnemonic::Mov);
    assert_eq!(
        (first.op0_register(), first.op1_register()),
        (Register::RBX, Register::RSI)
    );
    // Reads hdr.cmd_line_ptr and e820_entries through rbx.
    let instrs = &entries(&guest)[0].1;
    let reads = |disp: u64| {
        instrs
            .iter()
            .any(|i| i.memory_base() == Register::RBX && i.memory_displacement64() == disp)
    };
    for disp in [
        0x228, 0x0c8, 0x1e8, 0x218, 0x0c0, 0x21c, 0x0c4, 0x210, 0x070,
    ] {
        assert!(reads(disp), "reads zero page offset {disp:#x}");
    }
}

#[test]
fn mmio_probe_writes_queue_notify_like_writel() {
    let base = 0xd000_0000;
    for format in [Format::Elf64, Format::PvhElf] {
        let guest = mmio_probe_as(format, base).unwrap();
        let (bits, instrs) = entries(&guest).remove(0);
        let base_reg = if bits == 64 {
            Register::RBX
        } else {
            Register::EBX
        };
        let load = instrs
            .iter()
            .find(|i| i.op0_register() == base_reg)
            .unwrap();
        assert_eq!(load.immediate(1), base, "{bits}-bit base load");
        let is_store =
            |i: &&Instruction| i.code() == Code::Mov_rm32_r32 && i.op0_kind() == OpKind::Memory;
        let stores: Vec<_> = instrs.iter().filter(is_store).collect();
        assert_eq!(stores.len(), 1, "one MMIO write");
        let store = stores[0];
        assert_eq!(
            (
                store.memory_base(),
                store.memory_displacement64() & 0xffff_ffff
            ),
            (base_reg, 0x50)
        );
        assert_eq!(store.op1_register(), Register::EAX);
        let zero = instrs
            .iter()
            .position(|i| i.code() == Code::Xor_r32_rm32 || i.code() == Code::Xor_rm32_r32);
        let at = instrs.iter().position(|i| is_store(&i));
        assert_eq!(zero.map(|z| z + 1), at, "eax = 0 just before the write");
    }
}

#[test]
fn mmio_probe_refuses_unreachable_or_unaligned_bases() {
    for base in [0x1_0000_0000, 0xffff_ff80, 0xd000_0002] {
        assert!(
            matches!(mmio_probe(base), Err(Error::InvalidArgument(_))),
            "{base:#x}"
        );
    }
}
