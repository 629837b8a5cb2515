//! The kernel image taken apart: the bzImage's setup header, its compressed
//! payload, the vmlinux ELF inside it, and the PVH entry note.

use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

use crate::elf::Elf64;
use crate::lz4;

/// Xen's ELF note type `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Why a kernel image could not be taken apart.
#[derive(Debug, Error)]
pub enum KernelError {
    /// No `HdrS` signature at 0x202, or a boot protocol older than 2.08
    /// (the first with `payload_offset`).
    #[error("Not a bzImage with boot protocol >= 2.08")]
    NotBzImage,
    /// `payload_offset`/`payload_length` point outside the file.
    #[error("Payload {offset:#x}+{length:#x} lies outside the {size}-byte image")]
    PayloadOutOfRange {
        /// Payload start in the file.
        offset: usize,
        /// Payload length.
        length: usize,
        /// File size.
        size: usize,
    },
    /// The payload's magic matches no known compressor.
    #[error("Unknown payload compression (first bytes {0:02x?})")]
    UnknownCompression(Vec<u8>),
    /// The LZ4 payload did not decode.
    #[error("Cannot decode the LZ4 payload")]
    Lz4(#[from] lz4::Lz4Error),
    /// An external decompressor failed.
    #[error("{tool} failed to decompress the payload: {why}")]
    Tool {
        /// The program run.
        tool: &'static str,
        /// Its complaint.
        why: String,
    },
    /// The decompressed payload is not an ELF64 file.
    #[error("The decompressed payload is not an ELF64 vmlinux")]
    NotElf,
    /// The decompressed size differs from the size the kernel appended.
    #[error("Decompressed {got} bytes, the image says {want}")]
    SizeMismatch {
        /// Bytes produced.
        got: usize,
        /// The trailing size field.
        want: usize,
    },
}

/// How the bzImage payload is compressed (`CONFIG_KERNEL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip
    Gzip,
    /// bzip2
    Bzip2,
    /// raw LZMA (`.lzma`)
    Lzma,
    /// xz
    Xz,
    /// lzop
    Lzo,
    /// LZ4 legacy frame
    Lz4,
    /// zstd
    Zstd,
}

impl Compression {
    /// Recognises a compressor by its magic bytes.
    pub fn detect(data: &[u8]) -> Option<Self> {
        let starts = |m: &[u8]| data.starts_with(m);
        Some(if starts(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if starts(b"BZh") {
            Compression::Bzip2
        } else if starts(&[0x5d, 0x00, 0x00]) {
            Compression::Lzma
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Compression::Lzo
        } else if starts(&lz4::LEGACY_MAGIC.to_le_bytes()) {
            Compression::Lz4
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            return None;
        })
    }

    /// Lower-case name, as in `CONFIG_KERNEL_<NAME>`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The Debian tool (program, arguments) that decompresses stdin to stdout.
    fn tool(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Compression::Gzip => ("gzip", &["-dc"]),
            Compression::Bzip2 => ("bzip2", &["-dc"]),
            Compression::Lzma => ("xz", &["--format=lzma", "-dc"]),
            Compression::Xz => ("xz", &["-dc"]),
            Compression::Lzo => ("lzop", &["-dc"]),
            Compression::Lz4 => ("lz4", &["-dc"]),
            Compression::Zstd => ("zstd", &["-dc"]),
        }
    }
}

/// What a bzImage looks like inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFacts {
    /// Boot protocol version from the setup header (e.g. 0x20f).
    pub boot_protocol: u16,
    /// Payload compression.
    pub compression: Compression,
    /// Size of the bzImage file.
    pub bzimage_bytes: usize,
    /// Size of the extracted vmlinux ELF (trailing relocations cut off).
    pub vmlinux_bytes: usize,
    /// The PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`), if the note exists.
    pub pvh_entry: Option<u32>,
}

/// The payload (compressed vmlinux, with the kernel's 4-byte uncompressed
/// size appended) and the boot protocol version.
pub fn payload(bzimage: &[u8]) -> Result<(&[u8], u16), KernelError> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(KernelError::NotBzImage);
    }
    let u32_at = |off: usize| -> Result<usize, KernelError> {
        let b = bzimage.get(off..off + 4).ok_or(KernelError::NotBzImage)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let version = bzimage
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    if version < 0x208 {
        return Err(KernelError::NotBzImage);
    }
    // setup_sects == 0 means 4 (boot protocol document).
    let setup_sects = match bzimage.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let offset = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let length = u32_at(0x24c)?;
    let data = offset
        .checked_add(length)
        .and_then(|end| bzimage.get(offset..end))
        .ok_or(KernelError::PayloadOutOfRange {
            offset,
            length,
            size: bzimage.len(),
        })?;
    Ok((data, version))
}

/// The kernel release (`uname -r`) a bzImage names in its setup header:
/// `kernel_version` (0x20e) points, less 0x200, at a NUL-terminated
/// string such as `6.12.118 (agentvm@agentvm) #1 SMP …`, whose first word
/// is the release. `None` when the header has no readable one.
pub fn release(bzimage: &[u8]) -> Option<String> {
    /// The string is at most this long (the kernel's UTS_RELEASE and build
    /// banner); a longer run without a NUL is not a version string.
    const MAX: usize = 256;
    payload(bzimage).ok()?;
    let ptr = bzimage
        .get(0x20e..0x210)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))?;
    if ptr == 0 {
        return None;
    }
    let start = usize::from(ptr) + 0x200;
    let tail = bzimage.get(start..)?;
    let text = &tail[..tail.len().min(MAX)];
    let end = text.iter().position(|&b| b == 0)?;
    let word = std::str::from_utf8(&text[..end]).ok()?.split(' ').next()?;
    let printable = |c: char| c.is_ascii_alphanumeric() || "._+-~".contains(c);
    (!word.is_empty() && word.chars().all(printable)).then(|| word.to_string())
}

/// Decompresses the payload into the vmlinux ELF (with the relocation table
/// the x86 build appends cut off) and reports what it found.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<(Vec<u8>, KernelFacts), KernelError> {
    let (payload, boot_protocol) = payload(bzimage)?;
    let compression = Compression::detect(payload).ok_or_else(|| {
        KernelError::UnknownCompression(payload.iter().take(8).copied().collect())
    })?;
    // The payload ends in the uncompressed size: appended by every x86
    // compressor rule (size_append) but gzip's, whose own trailer ends in
    // it (ISIZE), so there it stays part of the stream.
    let (rest, size) = payload.split_at(payload.len().saturating_sub(4));
    let stream = if compression == Compression::Gzip {
        payload
    } else {
        rest
    };
    let want = size.try_into().map(u32::from_le_bytes).unwrap_or(0) as usize;
    let mut raw = decompress(compression, stream)?;
    if raw.len() != want {
        return Err(KernelError::SizeMismatch {
            got: raw.len(),
            want,
        });
    }
    let elf = Elf64::parse(&raw).ok_or(KernelError::NotElf)?;
    let pvh_entry = pvh_entry_of(&elf);
    let end = elf.file_end();
    raw.truncate(end);
    let facts = KernelFacts {
        boot_protocol,
        compression,
        bzimage_bytes: bzimage.len(),
        vmlinux_bytes: raw.len(),
        pvh_entry,
    };
    Ok((raw, facts))
}

/// The PVH entry of an ELF vmlinux, if it carries the Xen note.
pub fn pvh_entry(vmlinux: &[u8]) -> Option<u32> {
    Elf64::parse(vmlinux).and_then(|e| pvh_entry_of(&e))
}

fn pvh_entry_of(elf: &Elf64<'_>) -> Option<u32> {
    elf.notes()
        .into_iter()
        .find(|n| n.name == b"Xen\0" && n.kind == XEN_ELFNOTE_PHYS32_ENTRY)
        .and_then(|n| {
            n.desc
                .get(..4)
                .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
        })
}

/// Decompresses `input`: LZ4 legacy frames here, the other formats with
/// their Debian tool (`xz`, `zstd`, `gzip`, …).
pub fn decompress(c: Compression, input: &[u8]) -> Result<Vec<u8>, KernelError> {
    match c {
        Compression::Lz4 => Ok(lz4::decode_legacy(input)?),
        other => run_tool(other, input),
    }
}

fn run_tool(c: Compression, input: &[u8]) -> Result<Vec<u8>, KernelError> {
    let (tool, args) = c.tool();
    let fail = |why: String| KernelError::Tool { tool, why };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it ({e}); install it with apt")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
    let out = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(input));
        let out = child.wait_with_output();
        // A tool that stops reading early makes the writer fail; its own
        // exit status says why.
        let _ = writer.join();
        out
    })
    .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(out.stdout)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A fake bzImage: setup header fields at their offsets, payload after
    /// the setup sectors.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 3u8;
        let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        img[0x1f1] = setup_sects;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0xaa; 16]);
        img.extend_from_slice(payload);
        img.extend_from_slice(&[0xbb; 32]);
        img
    }

    #[test]
    fn finds_payload_and_compression() {
        let img = fake_bzimage(&[0x02, 0x21, 0x4c, 0x18, 1, 2, 3]);
        let (p, v) = payload(&img).unwrap();
        assert_eq!(v, 0x20f);
        assert_eq!(p, &[0x02, 0x21, 0x4c, 0x18, 1, 2, 3]);
        assert_eq!(Compression::detect(p), Some(Compression::Lz4));
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::detect(b"nope"), None);
    }

    #[test]
    fn release_comes_from_the_setup_header() {
        let mut img = fake_bzimage(&[1, 2, 3]);
        assert_eq!(release(&img), None, "no kernel_version pointer");
        img[0x20e..0x210].copy_from_slice(&0x200u16.to_le_bytes());
        img[0x400..0x400 + 30].copy_from_slice(b"6.12.118 (agentvm@agentvm) #1\0");
        assert_eq!(release(&img).as_deref(), Some("6.12.118"));
        // A pointer past the end, no NUL, or bytes no release has.
        img[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert_eq!(release(&img), None);
        img[0x20e..0x210].copy_from_slice(&0x200u16.to_le_bytes());
        img[0x400..0x400 + 8].copy_from_slice(b"6.1\x1b]0;x");
        assert_eq!(release(&img), None);
        let mut no_nul = fake_bzimage(&[7; 600]);
        no_nul[0x20e..0x210].copy_from_slice(&0x200u16.to_le_bytes());
        no_nul[0x400..].fill(b'6');
        assert_eq!(release(&no_nul), None);
        assert_eq!(release(&[0u8; 1024]), None, "not a bzImage");
    }

    #[test]
    fn rejects_non_bzimage() {
        assert!(matches!(
            payload(&[0u8; 1024]),
            Err(KernelError::NotBzImage)
        ));
        let mut img = fake_bzimage(&[1, 2, 3]);
        img[0x24c..0x250].copy_from_slice(&0x1000_0000u32.to_le_bytes());
        assert!(matches!(
            payload(&img),
            Err(KernelError::PayloadOutOfRange { .. })
        ));
    }

    /// An ELF64 header with one PT_NOTE program header over a Xen PVH note.
    fn elf_with_pvh_note() -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&4u32.to_le_bytes());
        elf[72..80].copy_from_slice(&120u64.to_le_bytes());
        elf[96..104].copy_from_slice(&20u64.to_le_bytes());
        for v in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
        elf.extend_from_slice(b"Xen\0");
        elf.extend_from_slice(&0x0100_0abcu32.to_le_bytes());
        elf
    }

    /// gzip, the kernel's default compressor: its payload is the gzip file
    /// as it is, whose trailer already ends in the size (no size_append).
    #[test]
    fn extracts_gzip_vmlinux() {
        let elf = elf_with_pvh_note();
        let mut child = Command::new("gzip")
            .args(["-n", "-9", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&elf).unwrap();
        let gz = child.wait_with_output().unwrap().stdout;
        assert_eq!(gz[gz.len() - 4..], (elf.len() as u32).to_le_bytes());
        let (vmlinux, facts) = extract_vmlinux(&fake_bzimage(&gz)).unwrap();
        assert_eq!(vmlinux, elf);
        assert_eq!(facts.compression, Compression::Gzip);
        assert_eq!(facts.pvh_entry, Some(0x0100_0abc));
        // A truncated stream is an error, not a short kernel.
        assert!(extract_vmlinux(&fake_bzimage(&gz[..gz.len() - 8])).is_err());
    }

    #[test]
    fn extracts_lz4_vmlinux_with_pvh_note() {
        // An ELF with a Xen PVH note, LZ4-"compressed" as literals only,
        // followed by fake relocations and the appended size.
        let elf = elf_with_pvh_note();
        let elf_len = elf.len();
        let mut plain = elf.clone();
        plain.extend_from_slice(&[0xee; 8]);
        let mut block = vec![0xf0, (plain.len() - 15) as u8];
        block.extend_from_slice(&plain);
        let mut payload = lz4::LEGACY_MAGIC.to_le_bytes().to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        let (vmlinux, facts) = extract_vmlinux(&fake_bzimage(&payload)).unwrap();
        assert_eq!(vmlinux, elf);
        assert_eq!(facts.compression, Compression::Lz4);
        assert_eq!(facts.pvh_entry, Some(0x0100_0abc));
        assert_eq!(facts.vmlinux_bytes, elf_len);
        assert_eq!(pvh_entry(&vmlinux), Some(0x0100_0abc));
    }
}
