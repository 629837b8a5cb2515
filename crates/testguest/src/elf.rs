//! A minimal ELF64 writer for vmlinux-shaped kernels.
//!
//! The file is what `linux-loader`'s `Elf` loader and QEMU's `-kernel` read
//! from a real `vmlinux`: an `ET_EXEC`/`EM_X86_64` header, one `PT_LOAD` per
//! [`ElfSegment`] at its physical address (`p_paddr == p_vaddr`), and, for
//! PVH, a `PT_NOTE` holding the Xen `XEN_ELFNOTE_PHYS32_ENTRY` note. There is
//! no section header table (`e_shnum == 0`): loaders never look at sections.
//!
//! File layout: ELF header (64 bytes) at 0, program headers from 64
//! (`PT_LOAD`s first, then the `PT_NOTE`), the note right after the program
//! headers, then each segment at the next file offset congruent to its
//! address modulo [`SEGMENT_ALIGN`].

/// `e_type` of an executable.
pub const ET_EXEC: u16 = 2;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `p_type` of a note segment.
pub const PT_NOTE: u32 = 4;
/// Segment flags: read, write, execute (code and data share a segment).
pub const PF_RWX: u32 = 7;
/// The Xen note type carrying the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The note name of Xen notes, NUL included.
pub const XEN_NOTE_NAME: &[u8; 4] = b"Xen\0";
/// `p_align` of the loadable segments.
pub const SEGMENT_ALIGN: u64 = 0x1000;
/// `p_align` of the note segment (Linux uses 4-byte note alignment on x86-64).
pub const NOTE_ALIGN: u64 = 4;

/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of one ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// Size of the PVH note: header (12), name (4), descriptor (4).
pub const PVH_NOTE_SIZE: usize = 20;

/// One `PT_LOAD` segment: `data` loaded at physical (and virtual) `addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSegment {
    /// Physical load address (`p_paddr`, equal to `p_vaddr`).
    pub addr: u64,
    /// The bytes in the file (`p_filesz`).
    pub data: Vec<u8>,
    /// Size in memory (`p_memsz`); raised to `data.len()` if smaller. Bytes
    /// past the data are zero, as for `.bss`.
    pub mem_size: u64,
}

impl ElfSegment {
    /// A segment whose memory size is its data size.
    pub fn new(addr: u64, data: Vec<u8>) -> Self {
        let mem_size = data.len() as u64;
        Self {
            addr,
            data,
            mem_size,
        }
    }
}

/// A vmlinux-shaped ELF64 image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    /// `e_entry`: the 64-bit entry point (Linux 64-bit boot protocol).
    pub entry: u64,
    /// The 32-bit PVH entry point, written as a Xen
    /// `XEN_ELFNOTE_PHYS32_ENTRY` note when set.
    pub pvh_entry: Option<u32>,
    /// The loadable segments, in file order.
    pub segments: Vec<ElfSegment>,
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Fields of one program header, in file order after `p_type`/`p_flags`.
struct Phdr {
    kind: u32,
    offset: u64,
    addr: u64,
    file_size: u64,
    mem_size: u64,
    align: u64,
}

impl Phdr {
    fn write(&self, buf: &mut Vec<u8>) {
        put_u32(buf, self.kind);
        put_u32(
            buf,
            if self.kind == PT_LOAD {
                PF_RWX
            } else {
                4 /* PF_R */
            },
        );
        put_u64(buf, self.offset);
        put_u64(buf, self.addr); // p_vaddr
        put_u64(buf, self.addr); // p_paddr
        put_u64(buf, self.file_size);
        put_u64(buf, self.mem_size);
        put_u64(buf, self.align);
    }
}

/// The Xen PVH entry note: `n_namesz`, `n_descsz`, `n_type`, "Xen\0", entry.
pub fn pvh_note(entry: u32) -> [u8; PVH_NOTE_SIZE] {
    let mut note = [0u8; PVH_NOTE_SIZE];
    note[0..4].copy_from_slice(&4u32.to_le_bytes());
    note[4..8].copy_from_slice(&4u32.to_le_bytes());
    note[8..12].copy_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note[12..16].copy_from_slice(XEN_NOTE_NAME);
    note[16..20].copy_from_slice(&entry.to_le_bytes());
    note
}

/// The first offset at or after `from` that is congruent to `addr` modulo
/// [`SEGMENT_ALIGN`], as loaders that `mmap` segments expect.
fn segment_offset(from: u64, addr: u64) -> u64 {
    let page = from.div_ceil(SEGMENT_ALIGN) * SEGMENT_ALIGN;
    page + addr % SEGMENT_ALIGN
}

impl ElfImage {
    /// Serialises the image into ELF file bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let note_count = usize::from(self.pvh_entry.is_some());
        let phnum = self.segments.len() + note_count;
        let note_offset = EHDR_SIZE + phnum * PHDR_SIZE;
        let mut cursor = (note_offset + note_count * PVH_NOTE_SIZE) as u64;

        let mut phdrs = Vec::with_capacity(phnum);
        for seg in &self.segments {
            let offset = segment_offset(cursor, seg.addr);
            let file_size = seg.data.len() as u64;
            phdrs.push(Phdr {
                kind: PT_LOAD,
                offset,
                addr: seg.addr,
                file_size,
                mem_size: seg.mem_size.max(file_size),
                align: SEGMENT_ALIGN,
            });
            cursor = offset + file_size;
        }
        if self.pvh_entry.is_some() {
            // The note is not loaded: like a note in an object file it has
            // no address. Loaders read it from the file at p_offset.
            phdrs.push(Phdr {
                kind: PT_NOTE,
                offset: note_offset as u64,
                addr: 0,
                file_size: PVH_NOTE_SIZE as u64,
                mem_size: PVH_NOTE_SIZE as u64,
                align: NOTE_ALIGN,
            });
        }

        let mut out = Vec::with_capacity(cursor as usize);
        // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI.
        out.extend_from_slice(b"\x7fELF");
        out.extend_from_slice(&[2, 1, 1, 0]);
        out.extend_from_slice(&[0; 8]);
        put_u16(&mut out, ET_EXEC);
        put_u16(&mut out, EM_X86_64);
        put_u32(&mut out, 1); // e_version
        put_u64(&mut out, self.entry);
        put_u64(&mut out, EHDR_SIZE as u64); // e_phoff
        put_u64(&mut out, 0); // e_shoff
        put_u32(&mut out, 0); // e_flags
        put_u16(&mut out, EHDR_SIZE as u16);
        put_u16(&mut out, PHDR_SIZE as u16);
        put_u16(&mut out, phnum as u16);
        put_u16(&mut out, 64); // e_shentsize: the size a section header would have
        put_u16(&mut out, 0); // e_shnum
        put_u16(&mut out, 0); // e_shstrndx
        for phdr in &phdrs {
            phdr.write(&mut out);
        }
        if let Some(entry) = self.pvh_entry {
            out.extend_from_slice(&pvh_note(entry));
        }
        for (seg, phdr) in self.segments.iter().zip(&phdrs) {
            out.resize(phdr.offset as usize, 0);
            out.extend_from_slice(&seg.data);
        }
        out
    }
}
