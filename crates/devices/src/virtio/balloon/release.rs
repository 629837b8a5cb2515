//! Giving the host memory behind a guest range back.
//!
//! Guest RAM in agentvm is a memfd mapped `MAP_SHARED`. `MADV_DONTNEED` on
//! such a mapping only drops this process's page table entries: the memfd
//! keeps its pages in the page cache, so nothing returns to the host.
//! `MADV_REMOVE` frees them (it punches a hole in the memfd, like
//! `fallocate(PUNCH_HOLE)`), and the next guest access faults in a zeroed
//! page. Private anonymous mappings (tests, embedders that do not use a
//! memfd) cannot take `MADV_REMOVE`; for them `MADV_DONTNEED` frees the
//! pages. A region with a backing file gets `MADV_REMOVE`, one without gets
//! `MADV_DONTNEED`; a file-backed private mapping, which refuses
//! `MADV_REMOVE`, falls back to `MADV_DONTNEED`.
//!
//! Host addresses only ever come from vm-memory, for a range checked to lie
//! inside one mapped region.

use std::io;

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

use crate::virtio::GuestMemory;

/// Errors releasing guest memory.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The range is empty, not 4 KiB aligned, or not inside one RAM region.
    #[error("Range {addr:#x}+{len:#x} is not whole pages inside one RAM region")]
    BadRange {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The region has no host mapping.
    #[error("No host address for guest address {0:#x}")]
    HostAddress(u64, #[source] GuestMemoryError),
    /// The kernel refused the advice.
    #[error("madvise({advice}) failed")]
    Madvise {
        /// The advice given.
        advice: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Frees the host memory behind guest ranges. The device calls it for every
/// inflated run of pages and every reported free range.
pub trait MemoryReleaser {
    /// Releases `[addr, addr + len)`, which the caller has checked to be
    /// whole 4 KiB pages inside one region of `mem`.
    fn release(
        &mut self,
        mem: &GuestMemory,
        addr: GuestAddress,
        len: u64,
    ) -> Result<(), ReleaseError>;
}

/// Releases memory with `madvise(2)` (see the module docs for which advice).
#[derive(Debug, Default, Clone, Copy)]
pub struct Madvise;

impl MemoryReleaser for Madvise {
    fn release(
        &mut self,
        mem: &GuestMemory,
        addr: GuestAddress,
        len: u64,
    ) -> Result<(), ReleaseError> {
        let bad = || ReleaseError::BadRange { addr: addr.0, len };
        let (region, offset) = locate(mem, addr.0, len).ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        let host = region
            .get_host_address(offset)
            .map_err(|e| ReleaseError::HostAddress(addr.0, e))?;
        if region.file_offset().is_some() {
            match advise(host, len, libc::MADV_REMOVE, "MADV_REMOVE") {
                // A private file mapping: its pages are anonymous copies.
                Err(ReleaseError::Madvise { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL) => {}
                other => return other,
            }
        }
        advise(host, len, libc::MADV_DONTNEED, "MADV_DONTNEED")
    }
}

/// Whether `[addr, addr + len)` is a non-empty run of whole 4 KiB pages.
pub fn whole_pages(addr: u64, len: u64) -> bool {
    let mask = super::PAGE_SIZE - 1;
    len > 0 && addr & mask == 0 && len & mask == 0 && addr.checked_add(len).is_some()
}

/// Whether `[addr, addr + len)` is whole pages inside one region of `mem`:
/// what [`MemoryReleaser::release`] may be given.
pub fn is_releasable(mem: &GuestMemory, addr: u64, len: u64) -> bool {
    locate(mem, addr, len).is_some()
}

/// The region holding all of `[addr, addr + len)` and the range's offset
/// in it, if the range is whole pages.
fn locate(
    mem: &GuestMemory,
    addr: u64,
    len: u64,
) -> Option<(&GuestRegionMmap, MemoryRegionAddress)> {
    if !whole_pages(addr, len) {
        return None;
    }
    let region = mem.find_region(GuestAddress(addr))?;
    let offset = region.to_region_addr(GuestAddress(addr))?;
    // find_region put `offset` inside the region, so no underflow.
    (len <= region.len() - offset.0).then_some((region, offset))
}

fn advise(
    host: *mut u8,
    len: usize,
    advice: libc::c_int,
    name: &'static str,
) -> Result<(), ReleaseError> {
    // SAFETY: `host..host + len` lies inside one mapping of the guest memory
    // the caller borrows, so it stays mapped for the call; madvise neither
    // unmaps nor moves it. The advice only replaces the contents with zeros
    // on the next access, and guest memory is only ever accessed through
    // vm-memory's volatile accessors, never through Rust references, so no
    // reference observes the change.
    let rc = unsafe { libc::madvise(host.cast(), len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(ReleaseError::Madvise {
            advice: name,
            source: io::Error::last_os_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs::File;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    use vm_memory::{Bytes, FileOffset};

    use super::*;

    const MIB: u64 = 1 << 20;

    fn memfd(size: u64) -> Arc<File> {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let file = File::from(memfd_create(c"balloon-release", MFdFlags::MFD_CLOEXEC).unwrap());
        file.set_len(size).unwrap();
        Arc::new(file)
    }

    fn fill(mem: &GuestMemory, addr: u64, len: u64) {
        mem.write_slice(&vec![0x5a; len as usize], GuestAddress(addr))
            .unwrap();
    }

    #[test]
    fn remove_frees_memfd_pages_and_the_guest_reads_zeros() {
        let file = memfd(8 * MIB);
        let mem = GuestMemory::from_ranges_with_files([(
            GuestAddress(0),
            8 * MIB as usize,
            Some(FileOffset::from_arc(file.clone(), 0)),
        )])
        .unwrap();
        fill(&mem, 0, 8 * MIB);
        let before = file.metadata().unwrap().blocks() * 512;
        assert!(before >= 8 * MIB);
        Madvise
            .release(&mem, GuestAddress(2 * MIB), 4 * MIB)
            .unwrap();
        let after = file.metadata().unwrap().blocks() * 512;
        assert!(before - after >= 4 * MIB, "{before} -> {after}");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(2 * MIB)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(6 * MIB - 1)).unwrap(), 0);
        // Outside the range the contents survive.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(2 * MIB - 1)).unwrap(), 0x5a);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(6 * MIB)).unwrap(), 0x5a);
    }

    #[test]
    fn anonymous_memory_gets_dontneed() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MIB as usize)]).unwrap();
        fill(&mem, 0, MIB);
        Madvise.release(&mem, GuestAddress(0x1000), 0x2000).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2fff)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0x5a);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xfff)).unwrap(), 0x5a);
    }

    #[test]
    fn ranges_that_are_not_whole_pages_in_one_region_are_refused() {
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(MIB), MIB as usize),
            (GuestAddress(4 * MIB), MIB as usize),
        ])
        .unwrap();
        fill(&mem, 0, 2 * MIB);
        for (addr, len) in [
            (0, 0),                     // empty
            (0x800, 0x1000),            // misaligned start
            (0x1000, 0x800),            // partial page
            (MIB - 0x1000, 0x2000),     // crosses two regions, even adjacent ones
            (2 * MIB, 0x1000),          // in the hole
            (5 * MIB - 0x1000, 0x2000), // past the end
            (u64::MAX - 0xfff, 0x1000), // wraps
        ] {
            let err = Madvise.release(&mem, GuestAddress(addr), len).unwrap_err();
            assert!(
                matches!(err, ReleaseError::BadRange { .. }),
                "{addr:#x}: {err}"
            );
        }
        // Nothing was released.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(MIB - 1)).unwrap(), 0x5a);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0x5a);
    }
}
