use std::io::Write;
use std::path::{Path, PathBuf};

use agentvm_testguest::{programs, BzImageOptions, Format};

use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::arch::x86_64::e820::{memory_map, E820_RAM, E820_RESERVED};
use crate::arch::x86_64::layout::{
    PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

fn mem(size: u64) -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

fn bz_header(initrd_addr_max: u32, cmdline_size: u32) -> setup_header {
    setup_header {
        boot_flag: 0xaa55,
        header: 0x5372_6448,
        version: 0x020f,
        loadflags: 1,
        code32_start: 0x10_0000,
        initrd_addr_max,
        cmdline_size,
        xloadflags: 1,
        init_size: 0x40_0000,
        setup_sects: 3,
        ..Default::default()
    }
}

fn bz_kernel(initrd_addr_max: u32, cmdline_size: u32) -> LoadedKernel {
    LoadedKernel {
        entry: 0x10_0200,
        mode: EntryMode::Linux64,
        end: 0x50_0000,
        header: Some(bz_header(initrd_addr_max, cmdline_size)),
    }
}

fn elf_kernel() -> LoadedKernel {
    LoadedKernel {
        entry: 0x100_0000,
        mode: EntryMode::Linux64,
        end: 0x120_0000,
        header: None,
    }
}

#[test]
fn formats_are_told_apart_by_magic() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    };
    let mut bz = vec![0u8; 0x400];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    assert_eq!(
        detect_format(&write("bz", &bz)).unwrap(),
        KernelFormat::BzImage
    );
    assert_eq!(
        detect_format(&write("elf", b"\x7fELF\x02\x01")).unwrap(),
        KernelFormat::Elf
    );
    assert!(matches!(
        detect_format(&write("txt", b"#!/bin/sh\n")),
        Err(BootError::UnknownFormat(_))
    ));
    assert!(matches!(
        detect_format(&write("empty", b"")),
        Err(BootError::UnknownFormat(_))
    ));
    assert!(matches!(
        detect_format(&dir.path().join("missing")),
        Err(BootError::KernelFile(..))
    ));
}

#[test]
fn old_bzimage_without_64bit_entry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut hdr = bz_header(0x7fff_ffff, 2047);
    hdr.xloadflags = 0;
    let mut image = vec![0u8; 4 * 512 + 0x1000];
    image[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()]
        .copy_from_slice(vm_memory::ByteValued::as_slice(&hdr));
    let p = dir.path().join("old-bzImage");
    std::fs::write(&p, &image).unwrap();
    let err = load_kernel(&mem(64 << 20), &p).unwrap_err();
    assert!(matches!(err, BootError::No64BitEntry(_, 0x020f)), "{err}");
}

#[test]
fn initrd_goes_as_high_as_the_kernel_allows() {
    let size = 0x12_3456;
    // Limited by RAM.
    let addr = place_initrd(size, 128 << 20, &elf_kernel()).unwrap();
    assert_eq!(addr, ((128 << 20) - size) & !0xfff);
    assert_eq!(addr % 4096, 0);
    assert!(addr + size <= 128 << 20);
    // Limited by the header's initrd_addr_max (inclusive).
    let addr = place_initrd(size, 1 << 30, &bz_kernel(0x0fff_ffff, 255)).unwrap();
    assert!(addr + size <= 0x1000_0000);
    assert_eq!(addr, (0x1000_0000 - size) & !0xfff);
    // Large RAM: never into the MMIO hole.
    let addr = place_initrd(size, 8 << 30, &bz_kernel(0xffff_ffff, 255)).unwrap();
    assert!(addr + size <= MMIO_HOLE_START);
    // Does not fit above the kernel (which ends, with init_size, at 5 MiB).
    let err = place_initrd(20 << 20, 24 << 20, &bz_kernel(0x7fff_ffff, 255)).unwrap_err();
    assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
    assert!(matches!(
        place_initrd(u64::MAX, 24 << 20, &elf_kernel()),
        Err(BootError::InitrdTooLarge { .. })
    ));
}

/// A kernel file of `format` and an initrd of `size` bytes (a marker,
/// then a byte pattern) in `dir`.
fn kernel_and_initrd(dir: &Path, format: Format, size: usize) -> (PathBuf, PathBuf, Vec<u8>) {
    let kernel = programs::hello_as(format, "x")
        .unwrap()
        .write_to(dir)
        .unwrap();
    let mut bytes = b"INITRD!\0".to_vec();
    bytes.extend((0..size - 8).map(|i| (i % 251) as u8));
    let initrd = dir.join("initrd.img");
    std::fs::write(&initrd, &bytes).unwrap();
    (kernel, initrd, bytes)
}

fn guest_bytes(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

/// Loaded side by side, each lands whole where loading it alone puts it.
#[test]
fn kernel_and_initrd_load_together_where_each_belongs() {
    let dir = tempfile::tempdir().unwrap();
    let ram = 128u64 << 20;
    let (kernel_path, initrd_path, initrd) =
        kernel_and_initrd(dir.path(), Format::Elf64, (3 << 20) + 17);
    let together = mem(ram);
    let (kernel, region) =
        load_kernel_and_initrd(&together, ram, &kernel_path, Some(&initrd_path)).unwrap();
    let region = region.unwrap();
    assert_eq!(region.size, initrd.len() as u64);
    assert_eq!(
        region.addr,
        place_initrd(region.size, ram, &kernel).unwrap()
    );
    assert_eq!(guest_bytes(&together, region.addr, initrd.len()), initrd);
    // The kernel's bytes are those of a load alone.
    let alone = mem(ram);
    let kernel_alone = load_kernel(&alone, &kernel_path).unwrap();
    assert_eq!(
        (kernel.entry, kernel.end),
        (kernel_alone.entry, kernel_alone.end)
    );
    let span = (kernel.end - HIMEM_START) as usize;
    assert_eq!(
        guest_bytes(&together, HIMEM_START, span),
        guest_bytes(&alone, HIMEM_START, span)
    );
    // Without an initrd, the kernel alone.
    let (_, none) = load_kernel_and_initrd(&mem(ram), ram, &kernel_path, None).unwrap();
    assert_eq!(none, None);
}

/// A bzImage's `initrd_addr_max` is read before loading and obeyed.
#[test]
fn the_bzimage_header_limits_the_initrd_loaded_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let ram = 1u64 << 30;
    let options = BzImageOptions {
        initrd_addr_max: 0x0fff_ffff,
        ..BzImageOptions::default()
    };
    let (kernel_path, initrd_path, initrd) =
        kernel_and_initrd(dir.path(), Format::BzImage(options), 5 << 20);
    assert_eq!(
        initrd_addr_max(&kernel_path, KernelFormat::BzImage).unwrap(),
        0x0fff_ffff
    );
    let m = mem(ram);
    let (_, region) = load_kernel_and_initrd(&m, ram, &kernel_path, Some(&initrd_path)).unwrap();
    let region = region.unwrap();
    assert_eq!(region.addr, (0x1000_0000 - (5 << 20)) & !0xfff);
    assert_eq!(guest_bytes(&m, region.addr, initrd.len()), initrd);
}

/// An initrd that reaches down into the kernel is refused after both
/// copies, naming the kernel's end; one larger than RAM is refused too.
#[test]
fn an_initrd_over_the_kernel_is_refused_after_loading() {
    let dir = tempfile::tempdir().unwrap();
    let ram = 24u64 << 20;
    let (kernel_path, initrd_path, _) = kernel_and_initrd(dir.path(), Format::Elf64, 20 << 20);
    let kernel_end = load_kernel(&mem(ram), &kernel_path).unwrap().end;
    let err = load_kernel_and_initrd(&mem(ram), ram, &kernel_path, Some(&initrd_path)).unwrap_err();
    match err {
        BootError::InitrdTooLarge {
            size,
            limit,
            kernel_end: end,
        } => assert_eq!((size, limit, end), (20 << 20, ram, kernel_end)),
        other => panic!("{other}"),
    }
    let small = 18u64 << 20;
    let err = load_kernel_and_initrd(&mem(small), small, &kernel_path, Some(&initrd_path));
    assert!(
        matches!(err, Err(BootError::InitrdTooLarge { .. })),
        "{err:?}"
    );
}

#[test]
fn command_line_limits_come_from_the_kernel() {
    let m = mem(64 << 20);
    let k = bz_kernel(0x7fff_ffff, 16);
    assert_eq!(write_cmdline(&m, &k, "console=ttyS0").unwrap(), 13);
    let mut buf = [0u8; 14];
    m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
    assert_eq!(&buf, b"console=ttyS0\0");
    assert_eq!(write_cmdline(&m, &k, &"x".repeat(16)).unwrap(), 16);
    assert!(matches!(
        write_cmdline(&m, &k, &"x".repeat(17)),
        Err(BootError::CmdlineTooLong { len: 17, max: 16 })
    ));
    assert!(matches!(
        write_cmdline(&m, &k, "a\0b"),
        Err(BootError::CmdlineNul)
    ));
    let e = elf_kernel();
    assert!(write_cmdline(&m, &e, &"y".repeat(2047)).is_ok());
    assert!(matches!(
        write_cmdline(&m, &e, &"y".repeat(2048)),
        Err(BootError::CmdlineTooLong { max: 2047, .. })
    ));
}

#[test]
fn zero_page_carries_header_cmdline_initrd_e820_and_rsdp() {
    let m = mem(64 << 20);
    let map = memory_map(64 << 20);
    let initrd = InitrdRegion {
        addr: 0x300_0000,
        size: 0x1234,
    };
    let k = bz_kernel(0x7fff_ffff, 2047);
    zero_page::write(
        &m,
        &zero_page::ZeroPage {
            header: k.header,
            initrd: Some(initrd),
            e820: &map,
            rsdp: Some(0xe0000),
        },
    )
    .unwrap();
    let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let hdr = p.hdr;
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.version }, 0x020f, "the image's own header is kept");
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!({ hdr.cmdline_size }, 2047);
    assert_eq!(
        ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
        (0x300_0000, 0x1234)
    );
    assert_eq!({ hdr.loadflags } & 0x81, 0x81);
    assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
    assert_eq!(usize::from(p.e820_entries), map.len());
    for (got, want) in p.e820_table.iter().zip(&map) {
        assert_eq!(
            ({ got.addr }, { got.size }, { got.r#type }),
            (want.addr, want.size, want.kind)
        );
    }
    assert_eq!({ p.e820_table[1].r#type }, E820_RESERVED);
    assert_eq!({ p.e820_table[2].r#type }, E820_RAM);
}

#[test]
fn zero_page_for_elf_kernels_has_a_minimal_valid_header() {
    let map = memory_map(64 << 20);
    let p = zero_page::build(&zero_page::ZeroPage {
        header: None,
        initrd: None,
        e820: &map,
        rsdp: None,
    })
    .unwrap();
    let hdr = p.hdr;
    assert_eq!(
        ({ hdr.header }, { hdr.boot_flag }, { hdr.kernel_alignment }),
        (0x5372_6448, 0xaa55, 0x100_0000)
    );
    assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0, 0));
    assert_eq!({ hdr.cmdline_size }, 2047);
    let too_many = vec![map[0]; 129];
    assert!(matches!(
        zero_page::build(&zero_page::ZeroPage {
            header: None,
            initrd: None,
            e820: &too_many,
            rsdp: None
        }),
        Err(BootError::MemoryMapTooLarge(129))
    ));
}

#[test]
fn pvh_start_info_describes_cmdline_module_memmap_and_rsdp() {
    let m = mem(64 << 20);
    let map = memory_map(64 << 20);
    pvh::write(
        &m,
        &map,
        Some(InitrdRegion {
            addr: 0x200_0000,
            size: 777,
        }),
        Some(0xe0000),
    )
    .unwrap();
    let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, 0x336e_c578);
    assert_eq!(info.version, 1);
    assert_eq!(info.nr_modules, 1);
    assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(info.rsdp_paddr, 0xe0000);
    assert_eq!(
        (info.memmap_paddr, info.memmap_entries as usize),
        (PVH_MEMMAP_START, map.len())
    );
    let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
    assert_eq!((module.paddr, module.size), (0x200_0000, 777));
    for (i, want) in map.iter().enumerate() {
        let e: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(PVH_MEMMAP_START + i as u64 * 24))
            .unwrap();
        assert_eq!((e.addr, e.size, e.type_), (want.addr, want.size, want.kind));
    }

    let m = mem(64 << 20);
    pvh::write(&m, &map, None, None).unwrap();
    let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(
        (info.nr_modules, info.modlist_paddr, info.rsdp_paddr),
        (0, 0, 0)
    );
}
