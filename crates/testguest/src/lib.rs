//! agentvm-testguest: tiny x86 guests for agentvm's KVM tests and benchmark.
//!
//! The host's KVM (PVM) runs small guest code that uses only port I/O, MMIO
//! and `hlt` in real, 32-bit protected and long mode, but not a stock Linux
//! kernel. So the VMM's KVM tests boot guests assembled here with iced-x86
//! and wrapped in the kernel file formats the VMM loads, which exercises the
//! VMM's real loaders and boot-protocol setup:
//!
//! - [`Format::Elf64`]: a vmlinux-shaped ELF64 entered at `e_entry` in long
//!   mode with `rsi` = zero page;
//! - [`Format::PvhElf`]: an ELF64 whose Xen PVH note points at 32-bit code,
//!   entered with paging off and `ebx` = `hvm_start_info`;
//! - [`Format::DualElf`]: both entries in one file (the benchmark guest,
//!   which QEMU microvm boots through PVH and agentvm either way);
//! - [`Format::BzImage`]: a Linux setup header plus a payload entered at
//!   load address + 0x200 in long mode (64-bit boot protocol).
//!
//! Modules:
//! - [`asm`]: [`Asm64`]/[`Asm32`], builders over iced's `CodeAssembler`
//!   with serial, report and reset helpers;
//! - [`programs`]: the ready-made guests and exactly what they print;
//! - [`report`]: parses what the probes print;
//! - [`elf`], [`bzimage`]: the file writers.
//!
//! Layout ([`Program::build`]):
//!
//! | format | file | 64-bit entry | PVH entry |
//! |---|---|---|---|
//! | `Elf64` | one `PT_LOAD` at [`ELF_LOAD_ADDR`] | [`ELF_LOAD_ADDR`] | — |
//! | `PvhElf` | one `PT_LOAD` at [`ELF_LOAD_ADDR`], `PT_NOTE` | — (`e_entry` = PVH entry) | [`ELF_LOAD_ADDR`] |
//! | `DualElf` | one `PT_LOAD` at [`ELF_LOAD_ADDR`], `PT_NOTE` | [`ELF_LOAD_ADDR`] | after the 64-bit code, 256-byte aligned |
//! | `BzImage` | setup header, payload at 0x100000 | 0x100200 | — |
#![deny(missing_docs)]

use std::io;
use std::path::{Path, PathBuf};

pub mod asm;
pub mod bzimage;
pub mod elf;
pub mod programs;
pub mod report;

pub use asm::{Asm32, Asm64, Width};
pub use bzimage::{BzImageOptions, BZIMAGE_ENTRY64_OFFSET, BZIMAGE_LOAD_ADDR};
pub use report::Report;

use elf::{ElfImage, ElfSegment};

/// Where the ELF formats load their single segment (16 MiB, like a
/// vmlinux built with the default `CONFIG_PHYSICAL_START`).
pub const ELF_LOAD_ADDR: u64 = 0x100_0000;
/// Alignment of the PVH entry after the 64-bit code in [`Format::DualElf`].
pub const DUAL_PVH_ALIGN: u64 = 0x100;
/// What a bzImage payload prints if entered at `+0` instead of `+0x200`
/// (the stub there decodes the same in 32- and 64-bit mode), before it resets.
pub const WRONG_ENTRY_LINE: &str =
    "agentvm-testguest: entered at payload+0; the 64-bit entry is payload+0x200\n";

/// Errors building a guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Assembling the guest code failed.
    #[error("Assembling the guest code failed")]
    Assemble(#[from] iced_x86::IcedError),
    /// The format needs an entry flavour the program does not provide.
    #[error("Program {program} has no {entry} code, which the {format} format needs")]
    MissingEntry {
        /// The program's name.
        program: String,
        /// The format asked for.
        format: &'static str,
        /// The missing flavour: "long-mode" or "32-bit PVH".
        entry: &'static str,
    },
    /// An argument the guest cannot use.
    #[error("Invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Writing the guest file failed.
    #[error("Writing guest file {} failed", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The kernel file format a [`Program`] is wrapped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// vmlinux-shaped ELF64: entered at `e_entry` in long mode, identity
    /// paging, `rsi` = zero page.
    Elf64,
    /// ELF64 with a Xen PVH note: entered at the note's address in 32-bit
    /// protected mode, paging off, `ebx` = `hvm_start_info`.
    PvhElf,
    /// ELF64 with both a long-mode `e_entry` and a PVH note.
    DualElf,
    /// bzImage: setup header plus payload, 64-bit entry at payload + 0x200.
    BzImage(BzImageOptions),
}

impl Format {
    /// A bzImage with the default setup header values.
    pub fn bzimage() -> Self {
        Format::BzImage(BzImageOptions::default())
    }

    /// A short name: "elf64", "pvh-elf", "dual-elf" or "bzimage".
    pub fn name(&self) -> &'static str {
        match self {
            Format::Elf64 => "elf64",
            Format::PvhElf => "pvh-elf",
            Format::DualElf => "dual-elf",
            Format::BzImage(_) => "bzimage",
        }
    }

    fn needs_long64(&self) -> bool {
        !matches!(self, Format::PvhElf)
    }

    fn needs_pvh32(&self) -> bool {
        matches!(self, Format::PvhElf | Format::DualElf)
    }
}

/// A guest program: long-mode and/or 32-bit PVH code, not yet placed.
#[derive(Debug)]
pub struct Program {
    name: String,
    long64: Option<Asm64>,
    pvh32: Option<Asm32>,
}

impl Program {
    /// An empty program called `name` (used in file names and errors).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            long64: None,
            pvh32: None,
        }
    }

    /// Sets the long-mode code, run by [`Format::Elf64`], [`Format::DualElf`]
    /// and [`Format::BzImage`].
    pub fn with_long64(mut self, code: Asm64) -> Self {
        self.long64 = Some(code);
        self
    }

    /// Sets the 32-bit PVH code, run by [`Format::PvhElf`] and
    /// [`Format::DualElf`].
    pub fn with_pvh32(mut self, code: Asm32) -> Self {
        self.pvh32 = Some(code);
        self
    }

    /// Assembles the code at its load address and wraps it in `format`.
    /// Code the format does not run is ignored.
    pub fn build(self, format: Format) -> Result<Guest, Error> {
        let Program {
            name,
            long64,
            pvh32,
        } = self;
        let long64 = required(long64, format.needs_long64(), &name, format, "long-mode")?;
        let pvh32 = required(pvh32, format.needs_pvh32(), &name, format, "32-bit PVH")?;
        let mut guest = Guest {
            name,
            format,
            bytes: Vec::new(),
            load_addr: ELF_LOAD_ADDR,
            entry64: None,
            pvh_entry: None,
        };
        match (format, long64) {
            (Format::BzImage(options), Some(mut code)) => {
                let entry = BZIMAGE_LOAD_ADDR + BZIMAGE_ENTRY64_OFFSET;
                let mut payload = wrong_entry_stub()?;
                payload.resize(BZIMAGE_ENTRY64_OFFSET as usize, 0);
                payload.extend_from_slice(&code.assemble(entry)?);
                guest.load_addr = BZIMAGE_LOAD_ADDR;
                guest.entry64 = Some(entry);
                guest.bytes = bzimage::bzimage(&payload, &options, &guest.name)?;
            }
            (_, long64) => {
                let mut segment = Vec::new();
                if let Some(mut code) = long64 {
                    segment = code.assemble(ELF_LOAD_ADDR)?;
                    guest.entry64 = Some(ELF_LOAD_ADDR);
                }
                if let Some(mut code) = pvh32 {
                    let offset = (segment.len() as u64).div_ceil(DUAL_PVH_ALIGN) * DUAL_PVH_ALIGN;
                    let entry = u32::try_from(ELF_LOAD_ADDR + offset)
                        .map_err(|_| Error::InvalidArgument("PVH entry above 4 GiB"))?;
                    segment.resize(offset as usize, 0);
                    segment.extend_from_slice(&code.assemble(entry)?);
                    guest.pvh_entry = Some(entry);
                }
                let image = ElfImage {
                    // PVH-only images point e_entry at the PVH code: loaders
                    // (linux-loader) insist e_entry lies in high memory.
                    entry: guest
                        .entry64
                        .or(guest.pvh_entry.map(u64::from))
                        .unwrap_or(ELF_LOAD_ADDR),
                    pvh_entry: guest.pvh_entry,
                    segments: vec![ElfSegment::new(ELF_LOAD_ADDR, segment)],
                };
                guest.bytes = image.to_bytes();
            }
        }
        Ok(guest)
    }
}

/// `code` if the format runs it; an error if it runs it and it is missing.
fn required<T>(
    code: Option<T>,
    needed: bool,
    program: &str,
    format: Format,
    entry: &'static str,
) -> Result<Option<T>, Error> {
    match (needed, code) {
        (false, _) => Ok(None),
        (true, Some(code)) => Ok(Some(code)),
        (true, None) => Err(Error::MissingEntry {
            program: program.to_string(),
            format: format.name(),
            entry,
        }),
    }
}

/// The stub at bzImage payload + 0: encodes identically in 32- and 64-bit
/// mode, prints [`WRONG_ENTRY_LINE`] and resets.
fn wrong_entry_stub() -> Result<Vec<u8>, Error> {
    let mut a = iced_x86::code_asm::CodeAssembler::new(32)?;
    asm::emit_serial(&mut a, WRONG_ENTRY_LINE.as_bytes())?;
    asm::emit_reset(&mut a)?;
    let stub = a.assemble(BZIMAGE_LOAD_ADDR)?;
    if stub.len() as u64 > BZIMAGE_ENTRY64_OFFSET {
        return Err(Error::InvalidArgument(
            "wrong-entry stub overlaps the 64-bit entry",
        ));
    }
    Ok(stub)
}

/// A built guest: the kernel file's bytes and where things are in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    name: String,
    format: Format,
    bytes: Vec<u8>,
    load_addr: u64,
    entry64: Option<u64>,
    pvh_entry: Option<u32>,
}

impl Guest {
    /// The program's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file's bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Guest-physical address of the loaded code (the ELF `PT_LOAD` or the
    /// bzImage payload).
    pub fn load_addr(&self) -> u64 {
        self.load_addr
    }

    /// The long-mode entry point, if the format has one.
    pub fn entry64(&self) -> Option<u64> {
        self.entry64
    }

    /// The 32-bit PVH entry point, if the format has one.
    pub fn pvh_entry(&self) -> Option<u32> {
        self.pvh_entry
    }

    /// A file name unique per program and format: `<name>.<format name>`,
    /// e.g. `hello.elf64`, `pvh-probe.pvh-elf`, `hello.bzimage`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.format.name())
    }

    /// Writes the file into `dir` as [`Guest::file_name`] and returns its path.
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, Error> {
        let path = dir.join(self.file_name());
        std::fs::write(&path, &self.bytes).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl AsRef<[u8]> for Guest {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests;
