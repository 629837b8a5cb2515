//! Whether a file can be the guest's `/init`: a little-endian ELF64
//! executable for x86-64 that needs no dynamic loader (no `PT_INTERP`; the
//! initramfs has no libraries). Shared with the build script (`build.rs`),
//! which refuses to embed anything else, so it uses only `std`.

/// `PT_INTERP`: the program asks for a dynamic loader.
const PT_INTERP: u32 = 3;
/// `EM_X86_64`.
const EM_X86_64: u16 = 62;
/// `ET_EXEC` and `ET_DYN` (a static-pie executable is `ET_DYN`).
const EXECUTABLE_TYPES: [u16; 2] = [2, 3];
/// The size of an ELF64 program header.
const PHDR_SIZE: usize = 56;

/// Why a file cannot be the guest's `/init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStatic {
    /// Not a little-endian 64-bit ELF file.
    NotElf64,
    /// An ELF file for another machine than x86-64.
    NotX86_64,
    /// A relocatable object, core dump, …
    NotExecutable,
    /// The program headers lie outside the file.
    Truncated,
    /// It asks for a dynamic loader.
    Dynamic,
}

impl NotStatic {
    /// What is wrong, in words that end a sentence "the agent … is …".
    pub fn reason(self) -> &'static str {
        match self {
            NotStatic::NotElf64 => "not a 64-bit little-endian ELF executable",
            NotStatic::NotX86_64 => "not built for x86-64",
            NotStatic::NotExecutable => "not an executable (ELF type)",
            NotStatic::Truncated => "truncated (its program headers lie outside the file)",
            NotStatic::Dynamic => "dynamically linked (it has a PT_INTERP)",
        }
    }
}

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// `Ok` when `data` is a static x86-64 ELF executable.
pub fn check_static_x86_64(data: &[u8]) -> Result<(), NotStatic> {
    if data.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(NotStatic::NotElf64);
    }
    let kind = u16_at(data, 0x10).ok_or(NotStatic::NotElf64)?;
    if !EXECUTABLE_TYPES.contains(&kind) {
        return Err(NotStatic::NotExecutable);
    }
    if u16_at(data, 0x12) != Some(EM_X86_64) {
        return Err(NotStatic::NotX86_64);
    }
    let phoff = u64_at(data, 0x20)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or(NotStatic::Truncated)?;
    let entsize = usize::from(u16_at(data, 0x36).ok_or(NotStatic::Truncated)?);
    let count = usize::from(u16_at(data, 0x38).ok_or(NotStatic::Truncated)?);
    if count == 0 || entsize < PHDR_SIZE {
        // An executable the kernel can load has program headers.
        return Err(NotStatic::Truncated);
    }
    // At most 65535 headers (a u16): the loop is bounded.
    for i in 0..count {
        let at = i
            .checked_mul(entsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(NotStatic::Truncated)?;
        let end = at.checked_add(PHDR_SIZE).ok_or(NotStatic::Truncated)?;
        if end > data.len() {
            return Err(NotStatic::Truncated);
        }
        if u32_at(data, at) == Some(PT_INTERP) {
            return Err(NotStatic::Dynamic);
        }
    }
    Ok(())
}
