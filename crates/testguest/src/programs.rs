//! Ready-made guests for the VMM's KVM tests and its benchmark.
//!
//! Every function returns a [`Guest`] (`AsRef<[u8]>`: the file's bytes).
//! Output conventions, shared by all probes and parsed by [`crate::Report`]:
//!
//! - one item per line, `\n` terminated, no `\r`;
//! - numbers as `key=0x` + exactly 16 lowercase hex digits, whatever their
//!   width in memory (a u8 field prints as `0x00000000000000NN`);
//! - a probe's first line is `probe=<name>` and its last `probe_end=<name>`,
//!   so a test can tell a complete run from one cut short;
//! - after the last line the guest resets: `out 0x64, 0xfe` (agentvm ends
//!   the VM), then `out 0xf4, 0` (QEMU with `isa-debug-exit` exits with
//!   status 1), then `cli; hlt` forever.
//!
//! 64-bit programs read memory through the VMM's identity map of the first
//! 4 GiB, 32-bit ones with paging off: pointers at or above 4 GiB (an initrd
//! placed there, say) would fault, so the 32-bit probe skips them and the
//! 64-bit one relies on the VMM's limits (`initrd_addr_max`).

use iced_x86::code_asm::{dword_ptr, eax, ebp, ebx, esi, ptr, r12, r13, r13d, r14, rax, rbx, rsi};

use crate::asm::{emit_halt_forever, Asm32, Asm64, ControlReg, Width, CSTR_MAX};
use crate::{Error, Format, Guest, Program};

/// Start of every line the benchmark guest prints.
pub const BENCH_READY: &str = "agentvm-bench ready";
/// The benchmark guest's line when entered in long mode.
pub const BENCH_LINE_LONG64: &str = "agentvm-bench ready long64\n";
/// The benchmark guest's line when entered through PVH (32-bit).
pub const BENCH_LINE_PVH32: &str = "agentvm-bench ready pvh32\n";
/// The most e820 entries the boot probe prints (the zero page's table size).
pub const E820_MAX: u32 = 128;
/// The most PVH memory map entries the PVH probe prints.
pub const MEMMAP_MAX: u32 = 128;
/// The most PVH modules the PVH probe prints.
pub const MODULES_MAX: u32 = 16;
/// `IA32_EFER`.
pub const MSR_EFER: u32 = 0xc000_0080;

/// `struct boot_params` (the zero page) offsets the boot probe reads.
pub mod zero_page {
    /// `acpi_rsdp_addr`, u64.
    pub const ACPI_RSDP_ADDR: i32 = 0x070;
    /// `ext_ramdisk_image`, u32: bits 63..32 of the initrd address.
    pub const EXT_RAMDISK_IMAGE: i32 = 0x0c0;
    /// `ext_ramdisk_size`, u32.
    pub const EXT_RAMDISK_SIZE: i32 = 0x0c4;
    /// `ext_cmd_line_ptr`, u32.
    pub const EXT_CMD_LINE_PTR: i32 = 0x0c8;
    /// `e820_entries`, u8.
    pub const E820_ENTRIES: i32 = 0x1e8;
    /// `hdr.boot_flag`, u16.
    pub const BOOT_FLAG: i32 = 0x1fe;
    /// `hdr.header`, u32 ("HdrS").
    pub const HEADER: i32 = 0x202;
    /// `hdr.type_of_loader`, u8.
    pub const TYPE_OF_LOADER: i32 = 0x210;
    /// `hdr.loadflags`, u8.
    pub const LOADFLAGS: i32 = 0x211;
    /// `hdr.ramdisk_image`, u32.
    pub const RAMDISK_IMAGE: i32 = 0x218;
    /// `hdr.ramdisk_size`, u32.
    pub const RAMDISK_SIZE: i32 = 0x21c;
    /// `hdr.cmd_line_ptr`, u32.
    pub const CMD_LINE_PTR: i32 = 0x228;
    /// `e820_table`: entries of 20 bytes (addr u64, size u64, type u32).
    pub const E820_TABLE: i32 = 0x2d0;
    /// Size of one e820 entry.
    pub const E820_ENTRY_SIZE: i32 = 20;
}

/// `struct hvm_start_info` offsets the PVH probe reads.
pub mod start_info {
    /// `magic`, u32 (0x336ec578).
    pub const MAGIC: i32 = 0;
    /// `version`, u32.
    pub const VERSION: i32 = 4;
    /// `flags`, u32.
    pub const FLAGS: i32 = 8;
    /// `nr_modules`, u32.
    pub const NR_MODULES: i32 = 12;
    /// `modlist_paddr`, u64.
    pub const MODLIST_PADDR: i32 = 16;
    /// `cmdline_paddr`, u64.
    pub const CMDLINE_PADDR: i32 = 24;
    /// `rsdp_paddr`, u64.
    pub const RSDP_PADDR: i32 = 32;
    /// `memmap_paddr`, u64 (version 1+).
    pub const MEMMAP_PADDR: i32 = 40;
    /// `memmap_entries`, u32 (version 1+).
    pub const MEMMAP_ENTRIES: i32 = 48;
    /// Size of a module list entry (paddr, size, cmdline_paddr, reserved).
    pub const MODLIST_ENTRY_SIZE: i32 = 32;
    /// Size of a memory map entry (addr, size, type, reserved).
    pub const MEMMAP_ENTRY_SIZE: i32 = 24;
}

fn print_then_reset64(text: &str) -> Result<Asm64, Error> {
    let mut a = Asm64::new()?;
    a.serial_print(text)?;
    a.reset()?;
    Ok(a)
}

fn print_then_reset32(text: &str) -> Result<Asm32, Error> {
    let mut a = Asm32::new()?;
    a.serial_print(text)?;
    a.reset()?;
    Ok(a)
}

/// [`hello_as`] as a vmlinux-shaped [`Format::Elf64`].
pub fn hello(msg: &str) -> Result<Guest, Error> {
    hello_as(Format::Elf64, msg)
}

/// Prints exactly `msg` (no newline added) on COM1, then resets. Any format;
/// in [`Format::DualElf`] both entries print the same.
pub fn hello_as(format: Format, msg: &str) -> Result<Guest, Error> {
    Program::new("hello")
        .with_long64(print_then_reset64(msg)?)
        .with_pvh32(print_then_reset32(msg)?)
        .build(format)
}

/// The benchmark guest, a [`Format::DualElf`]: prints one line and resets.
///
/// Entered in long mode (agentvm ignoring the note, or a loader without
/// PVH) it prints [`BENCH_LINE_LONG64`]; through PVH (QEMU microvm
/// `-kernel`, and agentvm, which prefers the note) it prints
/// [`BENCH_LINE_PVH32`]. Both start with [`BENCH_READY`].
pub fn bench_guest() -> Result<Guest, Error> {
    Program::new("bench")
        .with_long64(print_then_reset64(BENCH_LINE_LONG64)?)
        .with_pvh32(print_then_reset32(BENCH_LINE_PVH32)?)
        .build(Format::DualElf)
}

/// Where [`idle_guest`] looks for virtio-mmio transports: from each of
/// these (agentvm's first slot, and Firecracker's), one every
/// [`VIRTIO_MMIO_STRIDE`].
pub const VIRTIO_MMIO_FIRST: [u32; 2] = [0xc000_0000, 0xd000_0000];
/// The distance between two virtio-mmio transports.
pub const VIRTIO_MMIO_STRIDE: u32 = 0x1000;
/// Where [`idle_guest`] puts its virtqueues: one 4 KiB page per queue
/// from here (32 MiB, above the guest's own code at 16 MiB).
pub const IDLE_QUEUES_AT: u32 = 0x0200_0000;
/// The most transports [`idle_guest`] looks at.
const IDLE_MAX_DEVICES: u32 = 32;
/// The most queues per device [`idle_guest`] sets up.
const IDLE_MAX_QUEUES: u32 = 8;
/// The size of each queue [`idle_guest`] sets up (or the device's
/// maximum, if smaller).
const IDLE_QUEUE_SIZE: u32 = 16;

/// The density benchmark's guest, a [`Format::DualElf`]: drives every
/// virtio-mmio transport it finds (from each of [`VIRTIO_MMIO_FIRST`],
/// until a slot without the "virt" magic) through feature negotiation
/// (taking every feature offered) and queue setup to `DRIVER_OK`, with empty queues, so the VMM
/// activates each device as it would for a Linux guest; then prints the
/// [`bench_guest`]'s line and waits in `cli; hlt` for good, so the VMM
/// stays up until it is stopped from outside.
pub fn idle_guest() -> Result<Guest, Error> {
    let mut long64 = Asm64::new()?;
    a_queue_page(&mut long64)?;
    for base in VIRTIO_MMIO_FIRST {
        activate_virtio(&mut long64, base)?;
    }
    long64.serial_print(BENCH_LINE_LONG64)?;
    emit_halt_forever(&mut long64)?;
    let mut pvh32 = Asm32::new()?;
    a_queue_page(&mut pvh32)?;
    for base in VIRTIO_MMIO_FIRST {
        activate_virtio(&mut pvh32, base)?;
    }
    pvh32.serial_print(BENCH_LINE_PVH32)?;
    emit_halt_forever(&mut pvh32)?;
    Program::new("idle")
        .with_long64(long64)
        .with_pvh32(pvh32)
        .build(Format::DualElf)
}

/// Points `esi` at the first queue page, [`IDLE_QUEUES_AT`].
fn a_queue_page(a: &mut iced_x86::code_asm::CodeAssembler) -> Result<(), Error> {
    a.mov(esi, IDLE_QUEUES_AT)?;
    Ok(())
}

/// The virtio-mmio driver of [`idle_guest`] for the transports from
/// `first`, with 32-bit registers and addresses only, so the same code
/// serves both entries. Queues go to the pages from `esi` on (advanced
/// past them). Clobbers `eax`, `ecx`, `ebx`, `edi`, `ebp`.
fn activate_virtio(a: &mut iced_x86::code_asm::CodeAssembler, first: u32) -> Result<(), Error> {
    use iced_x86::code_asm::{ecx, edi};
    // Register offsets (virtio 1.x, MMIO transport version 2).
    const MAGIC: i32 = 0x000;
    const DEVICE_ID: i32 = 0x008;
    const DEVICE_FEATURES: i32 = 0x010;
    const DEVICE_FEATURES_SEL: i32 = 0x014;
    const DRIVER_FEATURES: i32 = 0x020;
    const DRIVER_FEATURES_SEL: i32 = 0x024;
    const QUEUE_SEL: i32 = 0x030;
    const QUEUE_NUM_MAX: i32 = 0x034;
    const QUEUE_NUM: i32 = 0x038;
    const QUEUE_READY: i32 = 0x044;
    const STATUS: i32 = 0x070;
    const QUEUE_DESC: i32 = 0x080;
    const QUEUE_DRIVER: i32 = 0x090;
    const QUEUE_DEVICE: i32 = 0x0a0;
    const MAGIC_VALUE: u32 = 0x7472_6976;
    // ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK.
    const ACK_DRIVER: u32 = 1 | 2;
    const FEATURES_OK: u32 = ACK_DRIVER | 8;
    const DRIVER_OK: u32 = FEATURES_OK | 4;

    let mut device = a.create_label();
    let mut queue = a.create_label();
    let mut queues_done = a.create_label();
    let mut next_device = a.create_label();
    let mut done = a.create_label();
    a.mov(ebx, first)?;
    a.mov(edi, IDLE_MAX_DEVICES)?;
    a.set_label(&mut device)?;
    a.cmp(dword_ptr(ebx + MAGIC), MAGIC_VALUE)?;
    a.jne(done)?;
    a.cmp(dword_ptr(ebx + DEVICE_ID), 0)?;
    a.je(next_device)?;
    a.mov(dword_ptr(ebx + STATUS), 0)?;
    a.mov(dword_ptr(ebx + STATUS), ACK_DRIVER)?;
    // Every feature the device offers (bits 0-63), as a driver that
    // knows them all would take.
    for sel in 0..2 {
        a.mov(dword_ptr(ebx + DEVICE_FEATURES_SEL), sel)?;
        a.mov(eax, dword_ptr(ebx + DEVICE_FEATURES))?;
        a.mov(dword_ptr(ebx + DRIVER_FEATURES_SEL), sel)?;
        a.mov(dword_ptr(ebx + DRIVER_FEATURES), eax)?;
    }
    a.mov(dword_ptr(ebx + STATUS), FEATURES_OK)?;
    a.xor(ebp, ebp)?;
    a.set_label(&mut queue)?;
    a.cmp(ebp, IDLE_MAX_QUEUES)?;
    a.jae(queues_done)?;
    a.mov(dword_ptr(ebx + QUEUE_SEL), ebp)?;
    a.mov(eax, dword_ptr(ebx + QUEUE_NUM_MAX))?;
    a.test(eax, eax)?;
    a.jz(queues_done)?;
    a.mov(ecx, IDLE_QUEUE_SIZE)?;
    a.cmp(eax, ecx)?;
    a.cmovb(ecx, eax)?;
    a.mov(dword_ptr(ebx + QUEUE_NUM), ecx)?;
    // Descriptors, driver (avail) and device (used) rings in one page.
    a.mov(dword_ptr(ebx + QUEUE_DESC), esi)?;
    a.mov(dword_ptr(ebx + (QUEUE_DESC + 4)), 0)?;
    a.lea(eax, ptr(esi + 0x400))?;
    a.mov(dword_ptr(ebx + QUEUE_DRIVER), eax)?;
    a.mov(dword_ptr(ebx + (QUEUE_DRIVER + 4)), 0)?;
    a.lea(eax, ptr(esi + 0x800))?;
    a.mov(dword_ptr(ebx + QUEUE_DEVICE), eax)?;
    a.mov(dword_ptr(ebx + (QUEUE_DEVICE + 4)), 0)?;
    a.mov(dword_ptr(ebx + QUEUE_READY), 1)?;
    a.add(esi, 0x1000)?;
    a.inc(ebp)?;
    a.jmp(queue)?;
    a.set_label(&mut queues_done)?;
    a.mov(dword_ptr(ebx + STATUS), DRIVER_OK)?;
    a.set_label(&mut next_device)?;
    a.add(ebx, VIRTIO_MMIO_STRIDE)?;
    a.dec(edi)?;
    a.jnz(device)?;
    a.set_label(&mut done)?;
    a.zero_bytes()?;
    Ok(())
}

/// What the boot probe reads besides the zero page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootProbeOptions {
    /// Also print `efer=` (an `rdmsr`, which exits into KVM). Off by
    /// default: the probe otherwise reads only memory and control registers.
    pub read_efer: bool,
}

/// [`boot_protocol_probe_as`] as a [`Format::Elf64`] without EFER.
pub fn boot_protocol_probe() -> Result<Guest, Error> {
    boot_protocol_probe_as(Format::Elf64, BootProbeOptions::default())
}

/// Reads back the Linux 64-bit boot protocol state the VMM set up. Long
/// mode only: [`Format::Elf64`] or [`Format::BzImage`] (others fail with
/// [`Error::MissingEntry`]). Prints, in order:
///
/// ```text
/// probe=boot64
/// rsi=0x…             the zero page address
/// boot_flag=0x…       hdr.boot_flag (u16, 0x1fe)
/// header=0x…          hdr.header (u32, 0x202; 0x53726448 = "HdrS")
/// type_of_loader=0x…  hdr.type_of_loader (u8, 0x210)
/// loadflags=0x…       hdr.loadflags (u8, 0x211)
/// cmdline_ptr=0x…     hdr.cmd_line_ptr (0x228) | ext_cmd_line_ptr (0x0c8) << 32
/// cmdline=<text>      the bytes at cmdline_ptr up to NUL, at most 256; empty if the pointer is 0
/// e820_entries=0x…    u8 at 0x1e8
/// e820_addr=0x…       } once per entry of the table at 0x2d0 (20 bytes each),
/// e820_size=0x…       } at most 128, in table order
/// e820_type=0x…       }
/// initrd_addr=0x…     hdr.ramdisk_image (0x218) | ext_ramdisk_image (0x0c0) << 32
/// initrd_size=0x…     hdr.ramdisk_size (0x21c) | ext_ramdisk_size (0x0c4) << 32
/// initrd_head=0x…     the initrd's first 8 bytes as a little-endian u64; only if addr and size are non-zero
/// acpi_rsdp_addr=0x…  u64 at 0x070
/// cr0=0x…
/// cr3=0x…
/// cr4=0x…
/// efer=0x…            only with `read_efer`
/// cs=0x…              the code segment selector
/// probe_end=boot64
/// ```
pub fn boot_protocol_probe_as(format: Format, options: BootProbeOptions) -> Result<Guest, Error> {
    use zero_page as zp;
    let mut a = Asm64::new()?;
    a.mov(rbx, rsi)?;
    a.serial_print("probe=boot64\n")?;
    a.report("rsi", rbx)?;
    a.report_mem("boot_flag", rbx, zp::BOOT_FLAG, Width::U16)?;
    a.report_mem("header", rbx, zp::HEADER, Width::U32)?;
    a.report_mem("type_of_loader", rbx, zp::TYPE_OF_LOADER, Width::U8)?;
    a.report_mem("loadflags", rbx, zp::LOADFLAGS, Width::U8)?;

    load_split_u64(&mut a, r12, zp::CMD_LINE_PTR, zp::EXT_CMD_LINE_PTR)?;
    a.report("cmdline_ptr", r12)?;
    a.serial_print("cmdline=")?;
    let mut no_cmdline = a.create_label();
    a.test(r12, r12)?;
    a.jz(no_cmdline)?;
    a.serial_cstr(r12, CSTR_MAX)?;
    a.set_label(&mut no_cmdline)?;
    a.serial_print("\n")?;

    // r13d = entries left (capped), r14 = current entry.
    a.load(r13, rbx, zp::E820_ENTRIES, Width::U8)?;
    a.report("e820_entries", r13)?;
    cap(&mut a, r13d, E820_MAX)?;
    a.lea(r14, ptr(rbx + zp::E820_TABLE))?;
    let mut top = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut top)?;
    a.test(r13d, r13d)?;
    a.jz(done)?;
    a.report_mem("e820_addr", r14, 0, Width::U64)?;
    a.report_mem("e820_size", r14, 8, Width::U64)?;
    a.report_mem("e820_type", r14, 16, Width::U32)?;
    a.add(r14, zp::E820_ENTRY_SIZE)?;
    a.dec(r13d)?;
    a.jmp(top)?;
    a.set_label(&mut done)?;
    a.zero_bytes()?;

    load_split_u64(&mut a, r12, zp::RAMDISK_IMAGE, zp::EXT_RAMDISK_IMAGE)?;
    a.report("initrd_addr", r12)?;
    load_split_u64(&mut a, r13, zp::RAMDISK_SIZE, zp::EXT_RAMDISK_SIZE)?;
    a.report("initrd_size", r13)?;
    let mut no_initrd = a.create_label();
    a.test(r12, r12)?;
    a.jz(no_initrd)?;
    a.test(r13, r13)?;
    a.jz(no_initrd)?;
    a.report_mem("initrd_head", r12, 0, Width::U64)?;
    a.set_label(&mut no_initrd)?;
    a.zero_bytes()?;

    a.report_mem("acpi_rsdp_addr", rbx, zp::ACPI_RSDP_ADDR, Width::U64)?;
    a.report_cr(ControlReg::Cr0)?;
    a.report_cr(ControlReg::Cr3)?;
    a.report_cr(ControlReg::Cr4)?;
    if options.read_efer {
        a.report_msr("efer", MSR_EFER)?;
    }
    a.report_cs("cs")?;
    a.serial_print("probe_end=boot64\n")?;
    a.reset()?;
    let name = if options.read_efer {
        "boot-probe-efer"
    } else {
        "boot-probe"
    };
    Program::new(name).with_long64(a).build(format)
}

/// `dst = u32 [rbx + lo] | u32 [rbx + hi] << 32`. Clobbers `rax`.
fn load_split_u64(
    a: &mut Asm64,
    dst: iced_x86::code_asm::AsmRegister64,
    lo: i32,
    hi: i32,
) -> Result<(), Error> {
    a.load(dst, rbx, lo, Width::U32)?;
    a.load(rax, rbx, hi, Width::U32)?;
    a.shl(rax, 32)?;
    a.or(dst, rax)?;
    Ok(())
}

/// `reg = min(reg, max)`, unsigned.
fn cap(
    a: &mut iced_x86::code_asm::CodeAssembler,
    reg: iced_x86::code_asm::AsmRegister32,
    max: u32,
) -> Result<(), Error> {
    let mut ok = a.create_label();
    a.cmp(reg, max)?;
    a.jbe(ok)?;
    a.mov(reg, max)?;
    a.set_label(&mut ok)?;
    a.zero_bytes()?;
    Ok(())
}

/// Reads back the PVH boot state, as a [`Format::PvhElf`]. Prints, in order:
///
/// ```text
/// probe=pvh32
/// ebx=0x…             the hvm_start_info address
/// magic=0x…           u32 +0 (0x336ec578)
/// version=0x…         u32 +4
/// flags=0x…           u32 +8
/// nr_modules=0x…      u32 +12
/// modlist_paddr=0x…   u64 +16
/// cmdline_paddr=0x…   u64 +24
/// rsdp_paddr=0x…      u64 +32
/// memmap_paddr=0x…    u64 +40
/// memmap_entries=0x…  u32 +48
/// cmdline=<text>      up to NUL, at most 256 bytes; empty if the address is 0 or >= 4 GiB
/// memmap_addr=0x…     } per memory map entry (24 bytes each), at most 128;
/// memmap_size=0x…     } only if version >= 1 and memmap_paddr < 4 GiB
/// memmap_type=0x…     }
/// module_paddr=0x…    } per module (32 bytes each), at most 16;
/// module_size=0x…     } only if modlist_paddr < 4 GiB
/// module_head=0x…     module 0's first 8 bytes as a little-endian u64; only if
///                     nr_modules >= 1, its size is non-zero and it is below 4 GiB
/// cr0=0x…             PE set, PG clear under PVH
/// cs=0x…
/// probe_end=pvh32
/// ```
pub fn pvh_probe() -> Result<Guest, Error> {
    use start_info as si;
    let mut a = Asm32::new()?;
    a.serial_print("probe=pvh32\n")?;
    a.report("ebx", ebx)?;
    a.report_mem("magic", ebx, si::MAGIC, Width::U32)?;
    a.report_mem("version", ebx, si::VERSION, Width::U32)?;
    a.report_mem("flags", ebx, si::FLAGS, Width::U32)?;
    a.report_mem("nr_modules", ebx, si::NR_MODULES, Width::U32)?;
    a.report_mem("modlist_paddr", ebx, si::MODLIST_PADDR, Width::U64)?;
    a.report_mem("cmdline_paddr", ebx, si::CMDLINE_PADDR, Width::U64)?;
    a.report_mem("rsdp_paddr", ebx, si::RSDP_PADDR, Width::U64)?;
    a.report_mem("memmap_paddr", ebx, si::MEMMAP_PADDR, Width::U64)?;
    a.report_mem("memmap_entries", ebx, si::MEMMAP_ENTRIES, Width::U32)?;

    a.serial_print("cmdline=")?;
    let mut no_cmdline = a.create_label();
    a.cmp(dword_ptr(ebx + (si::CMDLINE_PADDR + 4)), 0)?;
    a.jne(no_cmdline)?;
    a.mov(esi, dword_ptr(ebx + si::CMDLINE_PADDR))?;
    a.test(esi, esi)?;
    a.jz(no_cmdline)?;
    a.serial_cstr(esi, CSTR_MAX)?;
    a.set_label(&mut no_cmdline)?;
    a.serial_print("\n")?;

    // The memory map: esi = entry, ebp = entries left.
    let mut memmap_done = a.create_label();
    a.cmp(dword_ptr(ebx + si::VERSION), 1)?;
    a.jb(memmap_done)?;
    a.cmp(dword_ptr(ebx + (si::MEMMAP_PADDR + 4)), 0)?;
    a.jne(memmap_done)?;
    a.mov(esi, dword_ptr(ebx + si::MEMMAP_PADDR))?;
    a.mov(ebp, dword_ptr(ebx + si::MEMMAP_ENTRIES))?;
    cap(&mut a, ebp, MEMMAP_MAX)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.test(ebp, ebp)?;
    a.jz(memmap_done)?;
    a.report_mem("memmap_addr", esi, 0, Width::U64)?;
    a.report_mem("memmap_size", esi, 8, Width::U64)?;
    a.report_mem("memmap_type", esi, 16, Width::U32)?;
    a.add(esi, si::MEMMAP_ENTRY_SIZE)?;
    a.dec(ebp)?;
    a.jmp(top)?;
    a.set_label(&mut memmap_done)?;
    a.zero_bytes()?;

    // The module list, same registers.
    let mut modules_done = a.create_label();
    a.cmp(dword_ptr(ebx + (si::MODLIST_PADDR + 4)), 0)?;
    a.jne(modules_done)?;
    a.mov(esi, dword_ptr(ebx + si::MODLIST_PADDR))?;
    a.mov(ebp, dword_ptr(ebx + si::NR_MODULES))?;
    cap(&mut a, ebp, MODULES_MAX)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.test(ebp, ebp)?;
    a.jz(modules_done)?;
    a.report_mem("module_paddr", esi, 0, Width::U64)?;
    a.report_mem("module_size", esi, 8, Width::U64)?;
    a.add(esi, si::MODLIST_ENTRY_SIZE)?;
    a.dec(ebp)?;
    a.jmp(top)?;
    a.set_label(&mut modules_done)?;
    a.zero_bytes()?;

    // Module 0's first bytes (the initrd, when the VMM passes one).
    let mut no_head = a.create_label();
    a.cmp(dword_ptr(ebx + si::NR_MODULES), 0)?;
    a.je(no_head)?;
    a.cmp(dword_ptr(ebx + (si::MODLIST_PADDR + 4)), 0)?;
    a.jne(no_head)?;
    a.mov(esi, dword_ptr(ebx + si::MODLIST_PADDR))?;
    a.cmp(dword_ptr(esi + 4), 0)?;
    a.jne(no_head)?;
    a.mov(eax, dword_ptr(esi + 8))?;
    a.or(eax, dword_ptr(esi + 12))?;
    a.jz(no_head)?;
    a.mov(ebp, dword_ptr(esi))?;
    a.report_mem("module_head", ebp, 0, Width::U64)?;
    a.set_label(&mut no_head)?;
    a.zero_bytes()?;

    a.report_cr0()?;
    a.report_cs("cs")?;
    a.serial_print("probe_end=pvh32\n")?;
    a.reset()?;
    Program::new("pvh-probe")
        .with_pvh32(a)
        .build(Format::PvhElf)
}

/// [`mmio_probe_as`] as a [`Format::Elf64`].
pub fn mmio_probe(base: u64) -> Result<Guest, Error> {
    mmio_probe_as(Format::Elf64, base)
}

/// Reads a virtio-mmio transport's identification registers at `base`
/// (below 4 GiB, 4-byte aligned), notifies queue 0, and prints:
///
/// ```text
/// probe=mmio64            (probe=mmio32 when entered through PVH)
/// mmio_base=0x…
/// magic=0x…               u32 at base+0x000 (0x74726976 = "virt")
/// version=0x…             u32 at base+0x004
/// device_id=0x…           u32 at base+0x008
/// vendor_id=0x…           u32 at base+0x00c
/// notified                after writing u32 0 to base+0x050 (QueueNotify)
/// probe_end=mmio64        (probe_end=mmio32)
/// ```
///
/// The write is `mov [reg+0x50], eax` with `eax` = 0, the same shape as
/// Linux's `writel`, so an ioeventfd on QueueNotify sees it.
pub fn mmio_probe_as(format: Format, base: u64) -> Result<Guest, Error> {
    const NOTIFY: i32 = 0x050;
    let base32 = u32::try_from(base)
        .ok()
        .filter(|b| b.checked_add(0x100).is_some() && b % 4 == 0)
        .ok_or(Error::InvalidArgument(
            "MMIO base must be 4-byte aligned and below 4 GiB",
        ))?;
    let regs = [
        ("magic", 0x000),
        ("version", 0x004),
        ("device_id", 0x008),
        ("vendor_id", 0x00c),
    ];

    let mut a = Asm64::new()?;
    a.serial_print("probe=mmio64\n")?;
    a.mov(rbx, base)?;
    a.report("mmio_base", rbx)?;
    for (tag, off) in regs {
        a.report_mem(tag, rbx, off, Width::U32)?;
    }
    a.xor(eax, eax)?;
    a.mov(dword_ptr(rbx + NOTIFY), eax)?;
    a.serial_print("notified\nprobe_end=mmio64\n")?;
    a.reset()?;

    let mut b = Asm32::new()?;
    b.serial_print("probe=mmio32\n")?;
    b.mov(ebx, base32)?;
    b.report("mmio_base", ebx)?;
    for (tag, off) in regs {
        b.report_mem(tag, ebx, off, Width::U32)?;
    }
    b.xor(eax, eax)?;
    b.mov(dword_ptr(ebx + NOTIFY), eax)?;
    b.serial_print("notified\nprobe_end=mmio32\n")?;
    b.reset()?;

    Program::new("mmio-probe")
        .with_long64(a)
        .with_pvh32(b)
        .build(format)
}

#[cfg(test)]
mod tests;
