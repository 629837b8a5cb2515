//! The VMM process's own memory footprint: what a process that runs one VM
//! does so that dozens of them side by side cost little beyond their
//! guests' memory (measured by `bench-density`).
//!
//! - [`limit_malloc_arenas`]: glibc gives each thread that allocates an
//!   arena of its own (up to 8 per core), each with pages of its own
//!   resident; a VMM's threads allocate little, and a few arenas serve
//!   them all.
//! - [`release_startup_code`]: once the VM runs (and again once the guest
//!   has activated every device), the code and read-only
//!   data that only start-up used (argument parsing, configuration,
//!   building the VM) is still mapped, and with the kernel's fault-around
//!   (it maps up to 16 neighbouring pages of a file on each fault) that is
//!   most of the binary's text: ~5 MiB of resident file pages per VMM. They
//!   are never written, so dropping them from the process's page tables
//!   loses nothing: the page cache keeps them (shared with every other
//!   VMM), code that runs again faults back in what it needs, and what no
//!   VMM maps any more becomes easy for the kernel to reclaim.

/// How many malloc arenas a VMM uses at most: the main one and one for
/// the device threads (which then share its lock; none of them allocates
/// on a hot path it could not share).
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc malloc's arenas at [`MALLOC_ARENAS`] for the whole process.
/// Call it before the process starts threads. Best effort: a refusal
/// (or another C library) leaves malloc as it was.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes a malloc tunable; it touches no
        // memory of ours and is safe to call at any time.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
        if ok != 1 {
            tracing::debug!("malloc refused M_ARENA_MAX {MALLOC_ARENAS}");
        }
    }
}

/// `DT_TEXTREL`: the object's text is relocated in place (so written).
const DT_TEXTREL: i64 = 22;
/// `DT_FLAGS`, whose [`DF_TEXTREL`] bit says the same.
const DT_FLAGS: i64 = 30;
/// `DF_TEXTREL` in `DT_FLAGS`.
const DF_TEXTREL: u64 = 0x4;
/// `DT_NULL`: the end of the dynamic section.
const DT_NULL: i64 = 0;
/// The most dynamic entries read per object (real objects have < 100).
const MAX_DYNAMIC: usize = 4096;

/// An ELF64 dynamic section entry (`Elf64_Dyn`).
#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

/// What [`release_startup_code`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Read-only segments whose pages were dropped.
    pub segments: usize,
    /// Their size in bytes (mapped, not only resident).
    pub bytes: usize,
}

/// Drops the resident pages of every read-only segment (text, read-only
/// data) of every loaded object from this process's page tables, except
/// the vDSO and objects whose text is relocated in place. Call it once
/// the VM runs, before the calling thread is confined (it needs
/// `madvise`). Best effort: a segment the kernel refuses is left as it is.
pub fn release_startup_code() -> Released {
    let mut released = Released::default();
    // SAFETY: dl_iterate_phdr calls `visit` for each loaded object with a
    // pointer valid for the call, and passes `data` through unchanged: it
    // points to `released`, alive and not otherwise borrowed until the
    // call returns.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&raw mut released).cast());
    }
    // What start-up freed inside the heap goes back too.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // takes malloc's locks like any allocation.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(
        "released {} read-only segments ({} KiB mapped) of start-up code",
        released.segments,
        released.bytes >> 10
    );
    released
}

/// [`release_startup_code`] for one object.
///
/// # Safety
/// `info` is dl_iterate_phdr's description of a loaded object and `data`
/// points to a live [`Released`].
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: per this function's contract.
    let (info, released) = unsafe { (&*info, &mut *data.cast::<Released>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: the loader's program headers of this object: dlpi_phnum
    // entries at dlpi_phdr, mapped for as long as the object is loaded.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    let vdso = libc_getauxval(libc::AT_SYSINFO_EHDR);
    let contains_vdso = headers.iter().any(|h| {
        let start = base.wrapping_add(h.p_vaddr as usize);
        h.p_type == libc::PT_LOAD && (start..start.wrapping_add(h.p_memsz as usize)).contains(&vdso)
    });
    if contains_vdso {
        return 0;
    }
    for h in headers.iter().filter(|h| h.p_type == libc::PT_DYNAMIC) {
        // SAFETY: the object's dynamic section, mapped while it is loaded
        // and ending in DT_NULL; MAX_DYNAMIC bounds the walk regardless.
        if unsafe { relocates_text(base.wrapping_add(h.p_vaddr as usize) as *const Dyn) } {
            return 0;
        }
    }
    let page = page_size();
    for h in headers {
        if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
            continue;
        }
        // Whole pages inside the segment only: a page it shares with a
        // writable neighbour keeps its contents.
        let start = base.wrapping_add(h.p_vaddr as usize).next_multiple_of(page);
        let end = base.wrapping_add((h.p_vaddr + h.p_memsz) as usize) / page * page;
        if end <= start {
            continue;
        }
        // SAFETY: [start, end) is a read-only, never written segment of a
        // loaded object (its text is not relocated in place: checked
        // above), so its pages are the file's; MADV_DONTNEED drops them
        // from our page tables and the next access maps the same file
        // contents again. No Rust reference sees a difference.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released.segments += 1;
            released.bytes += end - start;
        }
    }
    0
}

/// Whether the dynamic section at `dynamic` marks text relocations.
///
/// # Safety
/// `dynamic` points to a mapped dynamic section ending in `DT_NULL`.
unsafe fn relocates_text(dynamic: *const Dyn) -> bool {
    for i in 0..MAX_DYNAMIC {
        // SAFETY: within the section: it ends at DT_NULL, which stops us.
        let entry = unsafe { &*dynamic.add(i) };
        match entry.tag {
            DT_NULL => return false,
            DT_TEXTREL => return true,
            DT_FLAGS if entry.val & DF_TEXTREL != 0 => return true,
            _ => {}
        }
    }
    // An endless section: assume the worst.
    true
}

fn libc_getauxval(kind: libc::c_ulong) -> usize {
    // SAFETY: getauxval reads the process's auxiliary vector; 0 for an
    // entry that does not exist.
    unsafe { libc::getauxval(kind) as usize }
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// This process's resident file-backed memory, KiB.
    fn rss_file() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn released_code_runs_again_and_its_pages_leave_the_resident_set() {
        let before = rss_file();
        let released = release_startup_code();
        let after = rss_file();
        assert!(released.segments > 0, "{released:?}");
        assert!(released.bytes > 0);
        assert!(
            after < before,
            "RssFile {before} KiB before, {after} KiB after"
        );
        // Code and read-only data dropped above work again.
        let text = format!("{:?}", vec![1u8, 2, 3]);
        assert_eq!(text, "[1, 2, 3]");
        assert!(!std::fs::read_to_string("/proc/self/comm")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn text_relocations_are_recognised() {
        let with = [
            Dyn { tag: 1, val: 0 },
            Dyn {
                tag: DT_TEXTREL,
                val: 0,
            },
            Dyn {
                tag: DT_NULL,
                val: 0,
            },
        ];
        let flags = [
            Dyn {
                tag: DT_FLAGS,
                val: DF_TEXTREL,
            },
            Dyn {
                tag: DT_NULL,
                val: 0,
            },
        ];
        let without = [
            Dyn {
                tag: DT_FLAGS,
                val: 0x8,
            },
            Dyn {
                tag: DT_NULL,
                val: 0,
            },
        ];
        // SAFETY: each array ends in DT_NULL.
        unsafe {
            assert!(relocates_text(with.as_ptr()));
            assert!(relocates_text(flags.as_ptr()));
            assert!(!relocates_text(without.as_ptr()));
        }
    }
}
