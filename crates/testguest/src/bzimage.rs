//! A bzImage-shaped file: a Linux x86 real-mode setup header followed by a
//! protected-mode payload (Documentation/arch/x86/boot.rst).
//!
//! File layout:
//!
//! | file offset | contents |
//! |---|---|
//! | 0x000 | zeros (the old boot sector) |
//! | 0x1f1 | the setup header, boot protocol [`BzImageOptions::version`] |
//! | 0x200 | `jmp short 0x280` (the real-mode setup entry) |
//! | 0x280 | 16-bit stub: prints [`REAL_MODE_LINE`], resets |
//! | 0x600 | NUL-terminated kernel version string (`kernel_version` = 0x400) |
//! | `(SETUP_SECTS + 1) * 512` | the payload, loaded at `code32_start` |
//!
//! The payload is position dependent at [`BZIMAGE_LOAD_ADDR`]; a loader
//! using the 64-bit boot protocol enters it at `+0x200`
//! ([`BZIMAGE_ENTRY64_OFFSET`]). [`crate::Program::build`] puts a stub at
//! `+0` that prints [`crate::WRONG_ENTRY_LINE`] and resets.

use iced_x86::code_asm::CodeAssembler;

use crate::asm::{emit_reset, emit_serial};
use crate::Error;

/// Where the payload is loaded: `code32_start` and `pref_address`.
pub const BZIMAGE_LOAD_ADDR: u64 = 0x10_0000;
/// The 64-bit entry's offset in the payload (boot protocol 2.12+ with
/// `XLF_KERNEL_64`).
pub const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
/// `setup_sects`: 512-byte sectors of setup code after the boot sector.
pub const SETUP_SECTS: u8 = 4;
/// File offset of the payload: `(setup_sects + 1) * 512`.
pub const PAYLOAD_OFFSET: usize = (SETUP_SECTS as usize + 1) * 512;

/// `boot_flag` at 0x1fe.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header` at 0x202: "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `loadflags` bit: the protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 0x01;
/// `xloadflags` bit: the kernel has the 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 0x01;
/// `kernel_alignment` (2 MiB, like x86-64 Linux).
pub const KERNEL_ALIGNMENT: u32 = 0x20_0000;

/// Offsets of the setup header fields in the file (boot.rst's table).
pub mod offsets {
    /// `setup_sects`, u8.
    pub const SETUP_SECTS: usize = 0x1f1;
    /// `syssize`, u32: payload size in 16-byte paragraphs.
    pub const SYSSIZE: usize = 0x1f4;
    /// `vid_mode`, u16.
    pub const VID_MODE: usize = 0x1fa;
    /// `boot_flag`, u16.
    pub const BOOT_FLAG: usize = 0x1fe;
    /// `jump`, 2 bytes of x86 code.
    pub const JUMP: usize = 0x200;
    /// `header`, u32 "HdrS".
    pub const HEADER: usize = 0x202;
    /// `version`, u16.
    pub const VERSION: usize = 0x206;
    /// `kernel_version`, u16: version string offset minus 0x200.
    pub const KERNEL_VERSION: usize = 0x20e;
    /// `type_of_loader`, u8 (written by the loader).
    pub const TYPE_OF_LOADER: usize = 0x210;
    /// `loadflags`, u8.
    pub const LOADFLAGS: usize = 0x211;
    /// `setup_move_size`, u16.
    pub const SETUP_MOVE_SIZE: usize = 0x212;
    /// `code32_start`, u32.
    pub const CODE32_START: usize = 0x214;
    /// `initrd_addr_max`, u32.
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    /// `kernel_alignment`, u32.
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    /// `relocatable_kernel`, u8.
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    /// `min_alignment`, u8 (log2).
    pub const MIN_ALIGNMENT: usize = 0x235;
    /// `xloadflags`, u16.
    pub const XLOADFLAGS: usize = 0x236;
    /// `cmdline_size`, u32.
    pub const CMDLINE_SIZE: usize = 0x238;
    /// `pref_address`, u64.
    pub const PREF_ADDRESS: usize = 0x258;
    /// `init_size`, u32.
    pub const INIT_SIZE: usize = 0x260;
}

/// File offset of the real-mode stub the `jump` at 0x200 goes to.
pub const REAL_MODE_STUB: usize = 0x280;
/// File offset of the kernel version string.
pub const VERSION_STRING: usize = 0x600;
/// What the real-mode stub prints if a loader runs the setup code (agentvm
/// never should: it uses the 64-bit boot protocol).
pub const REAL_MODE_LINE: &str =
    "agentvm-testguest: real-mode setup entered; use the 64-bit boot protocol\n";

/// Setup header values a test may vary to probe the loader's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BzImageOptions {
    /// Boot protocol `version` (default 2.15 = 0x020f; agentvm needs 2.12+).
    pub version: u16,
    /// `initrd_addr_max`: highest address the initrd may end at (default
    /// 0x7fff_ffff).
    pub initrd_addr_max: u32,
    /// `cmdline_size`: longest command line without its NUL (default 2047).
    pub cmdline_size: u32,
    /// `xloadflags` (default [`XLF_KERNEL_64`]). Clear it to test that the
    /// loader refuses an image without a 64-bit entry.
    pub xloadflags: u16,
}

impl Default for BzImageOptions {
    fn default() -> Self {
        Self {
            version: 0x020f,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
            xloadflags: XLF_KERNEL_64,
        }
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The 16-bit code at [`REAL_MODE_STUB`]: says the wrong path was taken.
fn real_mode_stub() -> Result<Vec<u8>, Error> {
    let mut a = CodeAssembler::new(16)?;
    emit_serial(&mut a, REAL_MODE_LINE.as_bytes())?;
    emit_reset(&mut a)?;
    // Only relative jumps: the address does not change the bytes.
    Ok(a.assemble(0)?)
}

/// Builds a bzImage file around `payload` (the protected-mode kernel, loaded
/// at [`BZIMAGE_LOAD_ADDR`]); `name` goes into the version string.
pub fn bzimage(payload: &[u8], options: &BzImageOptions, name: &str) -> Result<Vec<u8>, Error> {
    let mut setup = vec![0u8; PAYLOAD_OFFSET];
    let payload_len = u32::try_from(payload.len())
        .map_err(|_| Error::InvalidArgument("payload larger than 4 GiB"))?;

    setup[offsets::SETUP_SECTS] = SETUP_SECTS;
    put(
        &mut setup,
        offsets::SYSSIZE,
        &payload_len.div_ceil(16).to_le_bytes(),
    );
    put(&mut setup, offsets::VID_MODE, &0xffffu16.to_le_bytes()); // NORMAL_VGA
    put(&mut setup, offsets::BOOT_FLAG, &BOOT_FLAG.to_le_bytes());
    // jmp short REAL_MODE_STUB, relative to the end of the 2-byte jump.
    let rel = REAL_MODE_STUB - (offsets::JUMP + 2);
    put(&mut setup, offsets::JUMP, &[0xeb, rel as u8]);
    put(&mut setup, offsets::HEADER, &HDRS_MAGIC.to_le_bytes());
    put(&mut setup, offsets::VERSION, &options.version.to_le_bytes());
    put(
        &mut setup,
        offsets::KERNEL_VERSION,
        &((VERSION_STRING - 0x200) as u16).to_le_bytes(),
    );
    setup[offsets::LOADFLAGS] = LOADED_HIGH;
    put(
        &mut setup,
        offsets::SETUP_MOVE_SIZE,
        &0x8000u16.to_le_bytes(),
    );
    put(
        &mut setup,
        offsets::CODE32_START,
        &(BZIMAGE_LOAD_ADDR as u32).to_le_bytes(),
    );
    put(
        &mut setup,
        offsets::INITRD_ADDR_MAX,
        &options.initrd_addr_max.to_le_bytes(),
    );
    put(
        &mut setup,
        offsets::KERNEL_ALIGNMENT,
        &KERNEL_ALIGNMENT.to_le_bytes(),
    );
    // The payload is assembled for BZIMAGE_LOAD_ADDR and cannot move.
    setup[offsets::RELOCATABLE_KERNEL] = 0;
    setup[offsets::MIN_ALIGNMENT] = KERNEL_ALIGNMENT.trailing_zeros() as u8;
    put(
        &mut setup,
        offsets::XLOADFLAGS,
        &options.xloadflags.to_le_bytes(),
    );
    put(
        &mut setup,
        offsets::CMDLINE_SIZE,
        &options.cmdline_size.to_le_bytes(),
    );
    put(
        &mut setup,
        offsets::PREF_ADDRESS,
        &BZIMAGE_LOAD_ADDR.to_le_bytes(),
    );
    // The memory the kernel needs from its load address: the payload, page
    // rounded (nothing is decompressed).
    put(
        &mut setup,
        offsets::INIT_SIZE,
        &payload_len
            .div_ceil(0x1000)
            .saturating_mul(0x1000)
            .to_le_bytes(),
    );

    let stub = real_mode_stub()?;
    if REAL_MODE_STUB + stub.len() > VERSION_STRING {
        return Err(Error::InvalidArgument(
            "real-mode stub overlaps the version string",
        ));
    }
    put(&mut setup, REAL_MODE_STUB, &stub);

    let version = format!("agentvm-testguest {} ({name})\0", env!("CARGO_PKG_VERSION"));
    let room = PAYLOAD_OFFSET - VERSION_STRING;
    let version = if version.len() > room {
        &version.as_bytes()[..room - 1]
    } else {
        version.as_bytes()
    };
    put(&mut setup, VERSION_STRING, version);

    setup.extend_from_slice(payload);
    Ok(setup)
}
