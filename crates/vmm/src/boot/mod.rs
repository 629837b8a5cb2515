//! Loading the guest kernel, initrd and command line, and writing what the
//! kernel reads at entry (the zero page or the PVH start info).
//!
//! Formats: ELF `vmlinux` (entered through its PVH note when it has one, else
//! at its 64-bit entry) and bzImage (64-bit boot protocol, entered at
//! load address + 0x200 with the zero page built from the image's own setup
//! header).

pub mod pvh;
pub mod zero_page;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{CMDLINE_START, HIMEM_START, MMIO_HOLE_START};
use crate::arch::x86_64::regs::EntryMode;

/// Offset of the "HdrS" magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
/// Offset of the setup header's `initrd_addr_max` (u32) in a bzImage.
const BZIMAGE_INITRD_ADDR_MAX_OFFSET: u64 = 0x22c;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Boot protocol 2.12 introduced `xloadflags`.
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
/// `xloadflags` bit: the kernel has the 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry in the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `initrd_addr_max` of x86_64 Linux, used when the image carries no header.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// x86's COMMAND_LINE_SIZE (with the NUL) for kernels that do not say.
pub const DEFAULT_CMDLINE_SIZE: usize = 2048;

/// Errors while loading boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("Cannot read kernel {}", .0.display())]
    KernelFile(PathBuf, #[source] std::io::Error),
    /// The kernel is neither ELF nor bzImage.
    #[error("Kernel {} is neither an ELF vmlinux nor a bzImage", .0.display())]
    UnknownFormat(PathBuf),
    /// A bzImage too old for the 64-bit boot protocol.
    #[error("bzImage {} has no 64-bit entry point (boot protocol {:#x}, needs >= 2.12 with XLF_KERNEL_64)", .0.display(), .1)]
    No64BitEntry(PathBuf, u16),
    /// linux-loader rejected the image.
    #[error("Cannot load kernel {}: {}", .0.display(), .1)]
    Load(PathBuf, linux_loader::loader::Error),
    /// The initrd file cannot be read.
    #[error("Cannot read initrd {}", .0.display())]
    InitrdFile(PathBuf, #[source] std::io::Error),
    /// The initrd does not fit between the kernel and the kernel's limit.
    #[error("Initrd of {size} bytes does not fit in guest memory below {limit:#x} after the kernel (ends at {kernel_end:#x}); give the VM more memory")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Highest address the kernel accepts (or end of low memory).
        limit: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("Kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Length of the command line.
        len: usize,
        /// Maximum accepted length (without the NUL).
        max: usize,
    },
    /// The command line has a NUL byte.
    #[error("Kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The memory map has more entries than the boot structure holds.
    #[error("Memory map has {0} entries, more than the boot protocol holds")]
    MemoryMapTooLarge(usize),
    /// Writing boot data into guest memory failed.
    #[error("Cannot write boot data to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Kinds of kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF `vmlinux`.
    Elf,
    /// bzImage.
    BzImage,
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts.
    pub entry: u64,
    /// How it starts.
    pub mode: EntryMode,
    /// First byte after the kernel.
    pub end: u64,
    /// The bzImage's setup header (with `code32_start` as loaded).
    pub header: Option<setup_header>,
}

impl LoadedKernel {
    /// Highest address the initrd may end at, as the kernel declares it.
    pub fn initrd_addr_max(&self) -> u64 {
        self.header
            .map_or(DEFAULT_INITRD_ADDR_MAX, |h| u64::from(h.initrd_addr_max))
    }

    /// Most command line bytes the kernel accepts, without the NUL.
    pub fn cmdline_max(&self) -> usize {
        match self.header {
            // cmdline_size exists from protocol 2.06 and excludes the NUL.
            Some(h) if h.version >= 0x0206 && h.cmdline_size > 0 => h.cmdline_size as usize,
            _ => DEFAULT_CMDLINE_SIZE - 1,
        }
    }
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest-physical start.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Reads the first bytes of `path` to tell its format.
pub fn detect_format(path: &Path) -> Result<KernelFormat, BootError> {
    let err = |e| BootError::KernelFile(path.to_path_buf(), e);
    let mut f = File::open(path).map_err(err)?;
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    if f.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET)).is_ok()
        && f.read_exact(&mut magic).is_ok()
        && &magic == BZIMAGE_MAGIC
    {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownFormat(path.to_path_buf()))
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap<()>, path: &Path) -> Result<LoadedKernel, BootError> {
    load_kernel_as(mem, path, detect_format(path)?)
}

/// Loads the kernel at `path`, already known to be in `format`, into `mem`.
fn load_kernel_as(
    mem: &GuestMemoryMmap<()>,
    path: &Path,
    format: KernelFormat,
) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|e| BootError::KernelFile(path.to_path_buf(), e))?;
    let highmem = Some(GuestAddress(HIMEM_START));
    let load_err = |e| BootError::Load(path.to_path_buf(), e);
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, highmem).map_err(load_err)?;
            let (entry, mode) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr.0, EntryMode::Pvh),
                _ => (r.kernel_load.0, EntryMode::Linux64),
            };
            Ok(LoadedKernel {
                entry,
                mode,
                end: r.kernel_end,
                header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, highmem).map_err(load_err)?;
            let header = r
                .setup_header
                .ok_or_else(|| BootError::UnknownFormat(path.to_path_buf()))?;
            let version = header.version;
            if version < MIN_BZIMAGE_PROTOCOL || header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry(path.to_path_buf(), version));
            }
            // The kernel decompresses in place and needs init_size bytes from
            // its load address; count that as the kernel's extent so the
            // initrd is not placed where decompression will overwrite it.
            let init_end = r.kernel_load.0 + u64::from(header.init_size);
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                mode: EntryMode::Linux64,
                end: r.kernel_end.max(init_end),
                header: Some(header),
            })
        }
    }
}

/// Loads the kernel at `kernel_path` and the initrd at `initrd_path` (if
/// any) into `mem`, side by side on two threads: each copy into fresh
/// guest memory is CPU-bound (page faults, zeroing, copying), and the
/// vCPUs wait for both.
///
/// The initrd's place ([`place_initrd`]) depends on the kernel only
/// through the `initrd_addr_max` of its header, read first; that the
/// initrd lies above the kernel is checked once both are in. If it does
/// not, the VM is not built, so what the two copies wrote over each other
/// never runs.
pub fn load_kernel_and_initrd(
    mem: &GuestMemoryMmap<()>,
    ram_size: u64,
    kernel_path: &Path,
    initrd_path: Option<&Path>,
) -> Result<(LoadedKernel, Option<InitrdRegion>), BootError> {
    let Some(initrd_path) = initrd_path else {
        return Ok((load_kernel(mem, kernel_path)?, None));
    };
    let format = detect_format(kernel_path)?;
    let (file, size) = open_initrd(initrd_path)?;
    let limit = initrd_limit(ram_size, initrd_addr_max(kernel_path, format)?);
    let early = initrd_start(size, limit);
    let (kernel, copied) = std::thread::scope(|s| {
        // Without a thread the copy is made after the kernel's, below.
        let initrd = early.and_then(|addr| {
            std::thread::Builder::new()
                .name("load-initrd".into())
                // Smaller than a huge page, as the device threads' are.
                .stack_size(agentvm_devices::thread::STACK_SIZE)
                .spawn_scoped(s, move || copy_initrd(mem, addr, file, size))
                .ok()
        });
        let kernel = load_kernel_as(mem, kernel_path, format);
        // A panic while copying is a bug in the copy, never the guest's.
        let copied = initrd.map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        (kernel, copied)
    });
    let kernel = kernel?;
    let addr = place_initrd(size, ram_size, &kernel)?;
    match copied {
        Some(copied) if early == Some(addr) => copied?,
        // No thread, or the header said otherwise before loading than after.
        _ => copy_initrd(mem, addr, open_initrd(initrd_path)?.0, size)?,
    }
    Ok((kernel, Some(InitrdRegion { addr, size })))
}

fn open_initrd(path: &Path) -> Result<(File, u64), BootError> {
    let err = |e| BootError::InitrdFile(path.to_path_buf(), e);
    let file = File::open(path).map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    Ok((file, size))
}

/// Copies `size` bytes of `file` to `addr` in guest memory.
fn copy_initrd(
    mem: &GuestMemoryMmap<()>,
    addr: u64,
    mut file: File,
    size: u64,
) -> Result<(), BootError> {
    // `size` fits below the 4 GiB hole, so in a usize.
    let count = usize::try_from(size).unwrap_or(usize::MAX);
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, count)
        .map_err(BootError::GuestMemory)
}

/// The kernel's `initrd_addr_max`, read from a bzImage's setup header
/// before loading (what [`LoadedKernel::initrd_addr_max`] says after).
fn initrd_addr_max(path: &Path, format: KernelFormat) -> Result<u64, BootError> {
    if format == KernelFormat::Elf {
        return Ok(DEFAULT_INITRD_ADDR_MAX);
    }
    let err = |e| BootError::KernelFile(path.to_path_buf(), e);
    let mut file = File::open(path).map_err(err)?;
    let mut field = [0u8; 4];
    file.seek(SeekFrom::Start(BZIMAGE_INITRD_ADDR_MAX_OFFSET))
        .and_then(|_| file.read_exact(&mut field))
        .map_err(err)?;
    Ok(u64::from(u32::from_le_bytes(field)))
}

/// Picks the initrd's address: the highest page-aligned start whose end is
/// within both the kernel's `initrd_addr_max` and low RAM, above the
/// kernel.
pub fn place_initrd(size: u64, ram_size: u64, kernel: &LoadedKernel) -> Result<u64, BootError> {
    let limit = initrd_limit(ram_size, kernel.initrd_addr_max());
    let kernel_end = kernel.end.saturating_add(0xfff) & !0xfff;
    initrd_start(size, limit)
        .filter(|&start| start >= kernel_end)
        .ok_or(BootError::InitrdTooLarge {
            size,
            limit,
            kernel_end: kernel.end,
        })
}

/// Where an initrd must end: within both `initrd_addr_max` and low RAM.
fn initrd_limit(ram_size: u64, initrd_addr_max: u64) -> u64 {
    initrd_addr_max
        .saturating_add(1)
        .min(ram_size.min(MMIO_HOLE_START))
}

/// The highest page-aligned start for `size` bytes that end by `limit`.
fn initrd_start(size: u64, limit: u64) -> Option<u64> {
    limit.checked_sub(size).map(|start| start & !0xfff)
}

/// Checks `cmdline` against the kernel's limit and writes it, NUL
/// terminated, at [`CMDLINE_START`]. Returns its length without the NUL.
pub fn write_cmdline(
    mem: &GuestMemoryMmap<()>,
    kernel: &LoadedKernel,
    cmdline: &str,
) -> Result<usize, BootError> {
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let max = kernel.cmdline_max();
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(BootError::GuestMemory)?;
    Ok(cmdline.len())
}

#[cfg(test)]
mod tests;
