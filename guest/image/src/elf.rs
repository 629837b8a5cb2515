//! Just enough ELF64 reading for images: program headers and notes (the PVH
//! entry of a vmlinux), section lookup (a module's `.modinfo`), the end of
//! the ELF proper (the kernel payload has relocations appended after it),
//! and whether a program needs a dynamic loader.

/// A little-endian ELF64 file held in memory.
#[derive(Clone, Copy)]
pub(crate) struct Elf64<'a> {
    data: &'a [u8],
}

/// `PT_NOTE`.
const PT_NOTE: u32 = 4;
/// `PT_INTERP`: the program asks for a dynamic loader.
const PT_INTERP: u32 = 3;

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(d.get(off..off + 8)?.try_into().ok()?)).ok()
}

/// One ELF note.
pub(crate) struct Note<'a> {
    pub name: &'a [u8],
    pub kind: u32,
    pub desc: &'a [u8],
}

impl<'a> Elf64<'a> {
    /// Checks the magic, class (64-bit) and data encoding (little-endian).
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        (data.get(..6)? == b"\x7fELF\x02\x01").then_some(Elf64 { data })
    }

    /// `(p_type, p_offset, p_filesz)` of every program header.
    fn segments(&self) -> impl Iterator<Item = (u32, usize, usize)> + 'a {
        let d = self.data;
        let phoff = u64_at(d, 0x20).unwrap_or(0);
        let entsize = usize::from(u16_at(d, 0x36).unwrap_or(0));
        let num = if phoff == 0 {
            0
        } else {
            usize::from(u16_at(d, 0x38).unwrap_or(0))
        };
        (0..num).filter_map(move |i| {
            let h = phoff.checked_add(i.checked_mul(entsize)?)?;
            Some((u32_at(d, h)?, u64_at(d, h + 8)?, u64_at(d, h + 0x20)?))
        })
    }

    /// `(name, sh_offset, sh_size)` of every section.
    fn sections(&self) -> impl Iterator<Item = (&'a [u8], usize, usize)> + 'a {
        let d = self.data;
        let shoff = u64_at(d, 0x28).unwrap_or(0);
        let entsize = usize::from(u16_at(d, 0x3a).unwrap_or(0));
        let num = if shoff == 0 {
            0
        } else {
            usize::from(u16_at(d, 0x3c).unwrap_or(0))
        };
        let strndx = usize::from(u16_at(d, 0x3e).unwrap_or(0));
        let strtab = shoff
            .checked_add(strndx * entsize)
            .and_then(|h| Some((u64_at(d, h + 0x18)?, u64_at(d, h + 0x20)?)));
        (0..num).filter_map(move |i| {
            let h = shoff.checked_add(i.checked_mul(entsize)?)?;
            let (str_off, str_size) = strtab?;
            let name_off = usize::try_from(u32_at(d, h)?).ok()?;
            let names = d.get(str_off..str_off.checked_add(str_size)?)?;
            let name = names.get(name_off..)?;
            let name = &name[..name.iter().position(|&b| b == 0)?];
            Some((name, u64_at(d, h + 0x18)?, u64_at(d, h + 0x20)?))
        })
    }

    /// The contents of the section called `name`.
    pub fn section(&self, name: &str) -> Option<&'a [u8]> {
        self.sections()
            .find(|(n, _, _)| *n == name.as_bytes())
            .and_then(|(_, off, size)| self.data.get(off..off.checked_add(size)?))
    }

    /// Whether the file runs without a dynamic loader (no `PT_INTERP`):
    /// a static executable (static-pie included).
    pub fn is_static(&self) -> bool {
        !self.segments().any(|(kind, _, _)| kind == PT_INTERP)
    }

    /// Every note in every `PT_NOTE` segment.
    pub fn notes(&self) -> Vec<Note<'a>> {
        let mut out = Vec::new();
        for (kind, off, size) in self.segments() {
            if kind != PT_NOTE {
                continue;
            }
            let Some(seg) = off
                .checked_add(size)
                .and_then(|end| self.data.get(off..end))
            else {
                continue;
            };
            let mut p = 0;
            while let (Some(namesz), Some(descsz), Some(ty)) =
                (u32_at(seg, p), u32_at(seg, p + 4), u32_at(seg, p + 8))
            {
                let (namesz, descsz) = (namesz as usize, descsz as usize);
                let name_at = p + 12;
                let desc_at = name_at + namesz.next_multiple_of(4);
                let (Some(name), Some(desc)) = (
                    seg.get(name_at..name_at + namesz),
                    seg.get(desc_at..desc_at + descsz),
                ) else {
                    break;
                };
                out.push(Note {
                    name,
                    kind: ty,
                    desc,
                });
                p = desc_at + descsz.next_multiple_of(4);
            }
        }
        out
    }

    /// Where the ELF image ends: past the last segment and the section
    /// header table, whichever is later.
    pub fn file_end(&self) -> usize {
        let d = self.data;
        let segs = self
            .segments()
            .map(|(_, off, size)| off.saturating_add(size))
            .max()
            .unwrap_or(0);
        let shoff = u64_at(d, 0x28).unwrap_or(0);
        let shdrs = shoff
            + usize::from(u16_at(d, 0x3a).unwrap_or(0)) * usize::from(u16_at(d, 0x3c).unwrap_or(0));
        segs.max(shdrs).min(d.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`, followed by
    /// `trailer` bytes that are not part of the ELF.
    fn elf_with_notes(notes: &[(&[u8], u32, &[u8])], trailer: &[u8]) -> Vec<u8> {
        let mut note_bytes = Vec::new();
        for (name, kind, desc) in notes {
            note_bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            note_bytes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            note_bytes.extend_from_slice(&kind.to_le_bytes());
            note_bytes.extend_from_slice(name);
            note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
            note_bytes.extend_from_slice(desc);
            note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
        }
        let mut f = vec![0u8; 64 + 56];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        f[ph + 0x20..ph + 0x28].copy_from_slice(&(note_bytes.len() as u64).to_le_bytes());
        f.extend_from_slice(&note_bytes);
        f.extend_from_slice(trailer);
        f
    }

    #[test]
    fn finds_notes_and_end() {
        let f = elf_with_notes(
            &[
                (b"GNU\0", 3, b"abcd"),
                (b"Xen\0", 18, &0x0100_0000u32.to_le_bytes()),
            ],
            b"RELOCS",
        );
        let elf = Elf64::parse(&f).unwrap();
        let notes = elf.notes();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[1].name, b"Xen\0");
        assert_eq!(notes[1].kind, 18);
        assert_eq!(notes[1].desc, &0x0100_0000u32.to_le_bytes());
        assert_eq!(elf.file_end(), f.len() - 6);
        assert!(elf.is_static());
        let mut dynamic = f.clone();
        dynamic[64..68].copy_from_slice(&PT_INTERP.to_le_bytes());
        assert!(!Elf64::parse(&dynamic).unwrap().is_static());
    }

    #[test]
    fn rejects_non_elf() {
        assert!(Elf64::parse(b"MZ\0\0\0\0\0\0").is_none());
        assert!(Elf64::parse(b"\x7fELF\x01\x01").is_none());
    }
}
