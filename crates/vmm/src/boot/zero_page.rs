//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol.

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BootError, InitrdRegion};
use crate::arch::x86_64::e820::E820Entry;
use crate::arch::x86_64::layout::{CMDLINE_START, ZERO_PAGE_START};

/// "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG: u16 = 0xaa55;
/// Loader type "undefined" (0xff): we have no assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags: protected-mode code loaded at 1 MiB.
const LOADED_HIGH: u8 = 0x01;
/// loadflags: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 0x80;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// What goes into the zero page.
pub struct ZeroPage<'a> {
    /// The bzImage setup header, or `None` for an ELF kernel.
    pub header: Option<setup_header>,
    /// The initrd, if any.
    pub initrd: Option<InitrdRegion>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Address of the ACPI RSDP.
    pub rsdp: Option<u64>,
}

/// Builds the `boot_params` for `zp`.
pub fn build(zp: &ZeroPage) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    let mut hdr = zp.header.unwrap_or(setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        kernel_alignment: KERNEL_ALIGNMENT,
        cmdline_size: (super::DEFAULT_CMDLINE_SIZE - 1) as u32,
        ..Default::default()
    });
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    // The heap ends where the setup code's 64 KiB segment would end.
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = (CMDLINE_START >> 32) as u32;
    if let Some(initrd) = zp.initrd {
        hdr.ramdisk_image = initrd.addr as u32;
        hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    params.hdr = hdr;
    if let Some(rsdp) = zp.rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    if zp.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::MemoryMapTooLarge(zp.e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(zp.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = zp.e820.len() as u8;
    Ok(params)
}

/// Builds the zero page and writes it at [`ZERO_PAGE_START`].
pub fn write(mem: &GuestMemoryMmap<()>, zp: &ZeroPage) -> Result<(), BootError> {
    mem.write_obj(build(zp)?, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::GuestMemory)
}
