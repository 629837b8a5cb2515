//! Guest RAM, laid out around the 32-bit MMIO hole: one memfd mapped
//! shared ([`GuestRam::new`]) when another process must map it, private
//! anonymous memory ([`GuestRam::private`]) otherwise.
//!
//! The memfd lets vhost-user back ends (virtiofsd) map the same pages, and
//! lets the balloon give pages back with `MADV_REMOVE`. Mappings are
//! `MAP_NORESERVE`: guest RAM is a limit, not a reservation; pages are
//! allocated when the guest first touches them. They are also
//! `MADV_DONTDUMP`: a crash of the VMM never writes guest memory into a
//! core dump (see [`crate::hygiene`]).
//!
//! Both kinds are advised `MADV_HUGEPAGE`. Every page the guest touches
//! for the first time is a fault KVM must resolve (and, nested, a world
//! switch of the outer hypervisor); a 2 MiB page resolves 512 of them at
//! once and takes a level off every guest TLB miss. Linux gives anonymous
//! memory huge pages under the default `enabled=madvise` or `always`, but
//! a memfd only when `shmem_enabled` is `advise` or `always` (the default
//! is `never`): a VM that needs no shared memory boots markedly faster on
//! private memory (nested, 0.55 to 0.87 of the memfd's time to init in
//! the same L1).
//!
//! Huge pages on the host are half of it: KVM maps guest memory with 2 MiB
//! pages only when each region's host address and guest address agree
//! modulo 2 MiB (otherwise it uses 4 KiB mappings for the whole memory
//! slot, and the guest takes a fault per 4 KiB page). `mmap` places
//! anonymous memory at any page, so each region is mapped into a gap made
//! 2 MiB-aligned first ([`in_aligned_gap`]); QEMU and cloud-hypervisor's
//! guest RAM is aligned too, Firecracker's is not.

use std::fs::File;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::arch::x86_64::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Smallest guest RAM we accept: room for the boot structures, a kernel and
/// its stack.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest RAM we accept (1 TiB); the host limit is checked separately.
pub const MAX_MEMORY: u64 = 1 << 40;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Size not a multiple of the page size, or outside the supported range.
    #[error("Guest memory of {0} bytes is not a multiple of 4 KiB between 16 MiB and 1 TiB")]
    InvalidSize(u64),
    /// memfd_create failed.
    #[error("Cannot create the guest memory file")]
    Memfd(#[source] nix::Error),
    /// ftruncate of the memfd failed.
    #[error("Cannot size the guest memory file")]
    Truncate(#[source] std::io::Error),
    /// The host refused to map this much memory (address-space limit,
    /// strict overcommit).
    #[error("The host cannot map {mib} MiB of guest memory")]
    Map {
        /// What was asked for.
        mib: u64,
        /// Why the mapping failed.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The mapping could not be kept out of core dumps.
    #[error("Cannot exclude guest memory from core dumps")]
    DontDump(#[source] nix::Error),
}

/// The guest's RAM and the memfd behind it.
#[derive(Clone)]
pub struct GuestRam {
    /// Every region maps the same memfd, at its own offset.
    mem: GuestMemoryMmap<()>,
}

/// The guest-physical RAM ranges for `size` bytes of RAM: everything below
/// the MMIO hole first, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START),
        ]
    }
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM backed by a new memfd. Nothing is
    /// committed: more RAM than the host has is fine until the guest touches
    /// it (the balloon gives unused pages back).
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        check_size(size)?;
        Self::shared_in(create_memfd(size)?, size)
    }

    /// Creates `size` bytes of guest RAM in `file` (see
    /// [`crate::VmConfig::shared_memory_file`]), mapped shared like the
    /// memfd of [`GuestRam::new`].
    pub fn in_file(file: File, size: u64) -> Result<Self, MemoryError> {
        check_size(size)?;
        file.set_len(size).map_err(MemoryError::Truncate)?;
        Self::shared_in(Arc::new(file), size)
    }

    fn shared_in(memfd: Arc<File>, size: u64) -> Result<Self, MemoryError> {
        let mut offset = 0;
        let ranges: Vec<_> = ram_ranges(size)
            .into_iter()
            .map(|(addr, len)| {
                let r = (
                    addr,
                    len as usize,
                    Some(FileOffset::from_arc(memfd.clone(), offset)),
                );
                offset += len;
                r
            })
            .collect();
        GuestRam::advised(map_aligned(ranges, size)?)
    }

    /// Creates `size` bytes of private anonymous guest RAM: only this
    /// process can map it (no vhost-user back end), and nothing is
    /// committed until the guest touches it. The balloon frees its pages
    /// with `MADV_DONTNEED`.
    pub fn private(size: u64) -> Result<Self, MemoryError> {
        check_size(size)?;
        let ranges: Vec<_> = ram_ranges(size)
            .into_iter()
            .map(|(addr, len)| (addr, len as usize, None))
            .collect();
        GuestRam::advised(map_aligned(ranges, size)?)
    }

    /// The RAM mapped in `mem`, kept out of core dumps and advised huge
    /// pages.
    fn advised(mem: GuestMemoryMmap<()>) -> Result<Self, MemoryError> {
        exclude_from_core_dumps(&mem)?;
        ask_for_huge_pages(&mem);
        Ok(GuestRam { mem })
    }

    /// Whether other processes can map this RAM (it is a shared file).
    pub fn is_shared(&self) -> bool {
        self.mem.iter().all(|r| r.file_offset().is_some())
    }

    /// The mapped memory.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// The memfd behind guest RAM (vhost-user back ends and the balloon
    /// reach it through the regions' file offsets).
    #[cfg(test)]
    fn memfd(&self) -> &File {
        self.mem
            .iter()
            .next()
            .and_then(|r| r.file_offset())
            .map(|f| f.file())
            .expect("guest RAM has a region backed by the memfd")
    }
}

/// The alignment KVM's huge mappings need ([`in_aligned_gap`]).
const HUGE_PAGE: usize = 2 << 20;

/// Maps each of `ranges` (guest address, length, file or anonymous) at a
/// host address that is 2 MiB-aligned, like every guest address of RAM
/// here, when the address space allows; `size` is for the error.
fn map_aligned(
    ranges: Vec<(GuestAddress, usize, Option<FileOffset>)>,
    size: u64,
) -> Result<GuestMemoryMmap<()>, MemoryError> {
    let map_err = |source| MemoryError::Map {
        mib: size >> 20,
        source,
    };
    let regions = ranges
        .into_iter()
        .map(|(addr, len, file)| {
            let region = in_aligned_gap(
                len,
                || GuestRegionMmap::from_range(addr, len, file.clone()),
                |r| r.as_ptr() as usize,
            );
            if let Ok(r) = &region {
                if !(r.as_ptr() as usize).is_multiple_of(HUGE_PAGE) {
                    tracing::debug!("guest RAM at {addr:#x?} is not 2 MiB-aligned on the host");
                }
            }
            region
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.into()))
}

/// How many placements [`in_aligned_gap`] makes before it keeps an
/// unaligned one: each failed one fills the gap that took it.
const PLACEMENT_TRIES: usize = 4;

/// Runs `map`, which makes one mapping of `len` bytes wherever the kernel
/// places it (`host_addr` says where), so that it lands at a 2 MiB-aligned
/// address when the address space allows.
///
/// The kernel places a new mapping at the top of the highest free gap that
/// is large enough, so each try ([`place_once`]) reserves `len` + 2 MiB and
/// opens a `len`-byte hole at its aligned middle for `map`. A gap above the
/// reservation that was too small for the reservation but is large enough
/// for the mapping takes the mapping instead (a thread's malloc arena
/// leaves such gaps). That mapping is kept until the next try has been
/// made, so the gap is full then, and dropped (unmapped) after. Each try
/// fills one such gap; after [`PLACEMENT_TRIES`] the last mapping is kept
/// wherever it is, which is slower for the guest, never wrong.
fn in_aligned_gap<T, E>(
    len: usize,
    mut map: impl FnMut() -> Result<T, E>,
    host_addr: impl Fn(&T) -> usize,
) -> Result<T, E> {
    if len == 0 || !len.is_multiple_of(4096) {
        return map();
    }
    let mut mapped = place_once(len, &mut map)?;
    let mut misplaced = Vec::new();
    for _ in 1..PLACEMENT_TRIES {
        if host_addr(&mapped).is_multiple_of(HUGE_PAGE) {
            break;
        }
        let next = place_once(len, &mut map)?;
        misplaced.push(std::mem::replace(&mut mapped, next));
    }
    Ok(mapped)
}

/// One try of [`in_aligned_gap`]: runs `map` with a `len`-byte gap at a
/// 2 MiB-aligned address waiting for it, the middle of a reservation of
/// `len` + 2 MiB that is unmapped there while `map` runs and wholly after.
/// Without room for the reservation, `map` runs as it is.
fn place_once<T>(len: usize, map: impl FnOnce() -> T) -> T {
    let Some(reserve) = len.checked_add(HUGE_PAGE).and_then(NonZeroUsize::new) else {
        return map();
    };
    // SAFETY: a new PROT_NONE mapping at an address the kernel chooses
    // overlaps nothing of this process.
    let Ok(base) = (unsafe {
        mmap_anonymous(
            None,
            reserve,
            ProtFlags::PROT_NONE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
        )
    }) else {
        return map();
    };
    let start = base.as_ptr() as usize;
    let end = start + reserve.get();
    // The highest aligned address with `len` bytes above it in the
    // reservation: at or above `start`, as the reservation is 2 MiB longer.
    let gap = (end - len) & !(HUGE_PAGE - 1);
    let unmap = |from: usize, to: usize| {
        if let Some(addr) = NonNull::new(from as *mut std::ffi::c_void).filter(|_| to > from) {
            // SAFETY: [from, to) lies in the PROT_NONE reservation made
            // above, which nothing else uses.
            if let Err(e) = unsafe { munmap(addr, to - from) } {
                tracing::debug!("cannot unmap a guest RAM reservation: {e}");
            }
        }
    };
    unmap(gap, gap + len);
    let mapped = map();
    unmap(start, gap);
    unmap(gap + len, end);
    mapped
}

/// Whole pages, between [`MIN_MEMORY`] and [`MAX_MEMORY`].
fn check_size(size: u64) -> Result<(), MemoryError> {
    if !size.is_multiple_of(4096) || !(MIN_MEMORY..=MAX_MEMORY).contains(&size) {
        return Err(MemoryError::InvalidSize(size));
    }
    Ok(())
}

fn create_memfd(size: u64) -> Result<Arc<File>, MemoryError> {
    let fd = memfd_create(
        c"agentvm-guest-ram",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(MemoryError::Memfd)?;
    let file = File::from(fd);
    file.set_len(size).map_err(MemoryError::Truncate)?;
    // Seal the size: nothing may shrink the file under a live mapping (that
    // would turn guest accesses into SIGBUS in the VMM).
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    if let Err(e) = fcntl(&file, FcntlArg::F_ADD_SEALS(seals)) {
        tracing::debug!("cannot seal guest memory size: {e}");
    }
    Ok(Arc::new(file))
}

/// Advises every RAM mapping `MADV_HUGEPAGE`. Advice only: a kernel
/// without transparent huge pages, or a memfd under `shmem_enabled=never`,
/// keeps 4 KiB pages and the VM works the same.
fn ask_for_huge_pages(mem: &GuestMemoryMmap<()>) {
    for region in mem.iter() {
        let Some(addr) = NonNull::new(region.as_ptr().cast::<std::ffi::c_void>()) else {
            continue;
        };
        // SAFETY: the range is exactly one live mapping owned by `mem`;
        // MADV_HUGEPAGE only changes how the kernel backs it, never its
        // contents or its lifetime.
        if let Err(e) = unsafe { madvise(addr, region.len() as usize, MmapAdvise::MADV_HUGEPAGE) } {
            tracing::debug!("guest memory stays on small pages: MADV_HUGEPAGE: {e}");
        }
    }
}

/// Marks every RAM mapping `MADV_DONTDUMP`.
fn exclude_from_core_dumps(mem: &GuestMemoryMmap<()>) -> Result<(), MemoryError> {
    for region in mem.iter() {
        let Some(addr) = NonNull::new(region.as_ptr().cast::<std::ffi::c_void>()) else {
            continue;
        };
        // SAFETY: the range is exactly one live mapping owned by `mem`;
        // MADV_DONTDUMP only sets a flag on it and never changes its
        // contents or its lifetime.
        unsafe { madvise(addr, region.len() as usize, MmapAdvise::MADV_DONTDUMP) }
            .map_err(MemoryError::DontDump)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::mman::{msync, MsFlags};
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    #[test]
    fn small_ram_is_one_range_and_large_ram_skips_the_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let big = 64u64 << 30;
        let r = ram_ranges(big);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1], (GuestAddress(MMIO_HOLE_END), big - MMIO_HOLE_START));
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), big);
    }

    #[test]
    fn ram_above_the_hole_shares_the_memfd_at_the_right_offset() {
        let ram = GuestRam::new(4 << 30).unwrap();
        let mem = ram.memory();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(MMIO_HOLE_START - 1)));
        assert!(!mem.address_in_range(GuestAddress(MMIO_HOLE_START)));
        assert!(mem.address_in_range(GuestAddress(MMIO_HOLE_END)));
        let high = mem.iter().nth(1).unwrap();
        assert_eq!(high.file_offset().unwrap().start(), MMIO_HOLE_START);
        mem.write_obj(0xabcd_u32, GuestAddress(MMIO_HOLE_END))
            .unwrap();
        // The write is visible through the memfd at the region's file offset.
        let mut buf = [0u8; 4];
        let n = pread(ram.memfd(), &mut buf, MMIO_HOLE_START);
        assert_eq!(n, 4);
        assert_eq!(u32::from_le_bytes(buf), 0xabcd);
    }

    fn pread(f: &File, buf: &mut [u8], off: u64) -> usize {
        use std::os::unix::fs::FileExt;
        f.read_at(buf, off).unwrap()
    }

    #[test]
    fn ram_of_64_gib_maps_without_committing_memory() {
        let ram = GuestRam::new(64 << 30).unwrap();
        assert_eq!(ram.memory().iter().map(|r| r.len()).sum::<u64>(), 64 << 30);
        // Only what is touched is allocated.
        ram.memory()
            .write_obj(1u64, GuestAddress(63 << 30))
            .unwrap();
        let blocks = ram.memfd().metadata().unwrap().blocks();
        assert!(blocks * 512 <= 2 << 20, "{blocks} blocks allocated");
    }

    /// The `VmFlags` of the mapping that holds `addr`, from smaps (the
    /// kernel merges adjacent anonymous mappings with the same flags).
    fn vm_flags(addr: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_mapping = false;
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
            if let Some((a, b)) =
                range.filter(|_| line.starts_with(|c: char| c.is_ascii_hexdigit()))
            {
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap(),
                    usize::from_str_radix(b, 16).unwrap(),
                );
                in_mapping = (a..b).contains(&addr);
            } else if let Some(flags) = line.strip_prefix("VmFlags:") {
                if in_mapping {
                    return flags.split_whitespace().map(str::to_owned).collect();
                }
            }
        }
        panic!("no mapping at {addr:#x} in /proc/self/smaps");
    }

    #[test]
    fn guest_ram_is_left_out_of_core_dumps() {
        let ram = GuestRam::new(4 << 30).unwrap();
        for region in ram.memory().iter() {
            let flags = vm_flags(region.as_ptr() as usize);
            assert!(flags.iter().any(|f| f == "dd"), "flags {flags:?}");
        }
        // The check itself tells a plain mapping apart.
        let plain = vec![0u8; 8 << 20];
        let page = (plain.as_ptr() as usize + 4095) & !4095;
        let owner = std::fs::read_to_string("/proc/self/maps").unwrap();
        let start = owner
            .lines()
            .filter_map(|l| {
                let (range, _) = l.split_once(' ')?;
                let (a, b) = range.split_once('-')?;
                let (a, b) = (
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                );
                (a..b).contains(&page).then_some(a)
            })
            .next()
            .unwrap();
        assert!(!vm_flags(start).iter().any(|f| f == "dd"));
    }

    fn anonymous(
        len: usize,
    ) -> Result<vm_memory::MmapRegion<()>, vm_memory::mmap::MmapRegionError> {
        vm_memory::MmapRegion::<()>::new(len)
    }

    /// A length the kernel would not align by itself (not a multiple of
    /// 2 MiB) still gets a 2 MiB-aligned address, every time.
    #[test]
    fn mappings_land_in_the_aligned_gap() {
        let len = (6 << 20) + 4096;
        let mut kept = Vec::new();
        for _ in 0..16 {
            let region = in_aligned_gap(len, || anonymous(len), |r| r.as_ptr() as usize).unwrap();
            assert_eq!(
                region.as_ptr() as usize % HUGE_PAGE,
                0,
                "{:p}",
                region.as_ptr()
            );
            assert_eq!(region.size(), len);
            // Kept mapped, so each placement starts from a new layout.
            kept.push(region);
        }
        // A length that cannot be reserved (none) is mapped as it is.
        let plain = in_aligned_gap(0, || Ok::<_, ()>(7), |_| 1);
        assert_eq!(plain, Ok(7));
    }

    /// A free gap too small for the reservation but large enough for the
    /// mapping, placed where the mapping would start unaligned, does not
    /// keep it: the first try lands there and the next one in the hole.
    #[test]
    fn a_gap_too_small_to_reserve_does_not_take_the_mapping() {
        let len = (6 << 20) + 4096;
        let outer = len + HUGE_PAGE;
        // SAFETY: a new PROT_NONE mapping at an address the kernel
        // chooses overlaps nothing of this process.
        let start = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(outer).unwrap(),
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .unwrap()
        .as_ptr() as usize;
        // Fill every gap above `outer` that holds `len` bytes. Each is
        // shorter than `outer` (which would be there otherwise), so what a
        // filler leaves of it holds no more; the first filler below
        // `outer` says none is left.
        let mut fillers = Vec::new();
        while fillers.len() < 64 {
            let filler = anonymous(len).unwrap();
            let below = (filler.as_ptr() as usize) < start;
            fillers.push(filler);
            if below {
                break;
            }
        }
        assert!((fillers.last().unwrap().as_ptr() as usize) < start);
        // The gap, inside `outer`: the highest that holds `len` bytes,
        // 1 MiB too short for a reservation, and its top `len` bytes begin
        // off a 2 MiB boundary.
        let gap_len = len + (1 << 20);
        let mut gap = start + 4096;
        if (gap + gap_len - len).is_multiple_of(HUGE_PAGE) {
            gap += 4096;
        }
        let unmap = |from: usize, to: usize| {
            // SAFETY: [from, to) lies in the PROT_NONE mapping made above,
            // which only this test uses.
            unsafe { munmap(NonNull::new(from as *mut _).unwrap(), to - from) }.unwrap();
        };
        unmap(gap, gap + gap_len);
        let mut tries = Vec::new();
        let region = in_aligned_gap(
            len,
            || {
                let r = anonymous(len);
                if let Ok(r) = &r {
                    tries.push(r.as_ptr() as usize);
                }
                r
            },
            |r| r.as_ptr() as usize,
        )
        .unwrap();
        assert_eq!(
            region.as_ptr() as usize % HUGE_PAGE,
            0,
            "{:p}",
            region.as_ptr()
        );
        assert_eq!(tries.first(), Some(&(gap + gap_len - len)), "{tries:x?}");
        // The first try's mapping is gone with the tries: the top of the
        // gap is unmapped again (msync refuses a range with a hole).
        let first = NonNull::new((gap + gap_len - len) as *mut _).unwrap();
        // SAFETY: msync only checks and flushes; nothing is written.
        let synced = unsafe { msync(first, len, MsFlags::MS_ASYNC) };
        assert_eq!(synced, Err(nix::errno::Errno::ENOMEM));
        drop(region);
        unmap(start, gap);
        unmap(gap + gap_len, start + outer);
    }

    /// Guest RAM, both sides of the MMIO hole, private and shared.
    #[test]
    fn guest_ram_is_2mib_aligned_on_the_host() {
        for ram in [
            GuestRam::private(256 << 20).unwrap(),
            GuestRam::private(MMIO_HOLE_START + (66 << 20)).unwrap(),
            GuestRam::new(130 << 20).unwrap(),
        ] {
            for r in ram.memory().iter() {
                let host = r.as_ptr() as usize;
                assert_eq!(host % HUGE_PAGE, 0, "{:#x} at {host:#x}", r.start_addr().0);
            }
        }
    }

    #[test]
    fn private_ram_is_anonymous_advised_huge_and_left_out_of_core_dumps() {
        let ram = GuestRam::private(4 << 30).unwrap();
        assert!(!ram.is_shared());
        assert!(GuestRam::new(64 << 20).unwrap().is_shared());
        let mem = ram.memory();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.iter().all(|r| r.file_offset().is_none()));
        mem.write_obj(0x5a_u8, GuestAddress(MMIO_HOLE_END)).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(MMIO_HOLE_END)).unwrap(),
            0x5a
        );
        for region in mem.iter() {
            let flags = vm_flags(region.as_ptr() as usize);
            assert!(flags.iter().any(|f| f == "dd"), "flags {flags:?}");
            // "hg": MADV_HUGEPAGE took (this kernel has THP).
            let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled");
            if thp.exists() {
                assert!(flags.iter().any(|f| f == "hg"), "flags {flags:?}");
            }
        }
        assert!(matches!(
            GuestRam::private((16 << 20) + 1),
            Err(MemoryError::InvalidSize(_))
        ));
    }

    #[test]
    fn ram_in_a_given_file_is_shared_through_it() {
        let file = tempfile::tempfile().unwrap();
        let probe = file.try_clone().unwrap();
        let ram = GuestRam::in_file(file, 64 << 20).unwrap();
        assert!(ram.is_shared());
        assert_eq!(probe.metadata().unwrap().len(), 64 << 20, "sized by us");
        ram.memory()
            .write_obj(0x1234_u16, GuestAddress(4096))
            .unwrap();
        let mut buf = [0u8; 2];
        assert_eq!(pread(&probe, &mut buf, 4096), 2);
        assert_eq!(u16::from_le_bytes(buf), 0x1234);
        assert!(matches!(
            GuestRam::in_file(tempfile::tempfile().unwrap(), 4097),
            Err(MemoryError::InvalidSize(_))
        ));
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(GuestRam::new(4095 << 20).is_ok());
        assert!(matches!(
            GuestRam::new((16 << 20) + 1),
            Err(MemoryError::InvalidSize(_))
        ));
        assert!(matches!(
            GuestRam::new(1 << 20),
            Err(MemoryError::InvalidSize(_))
        ));
        assert!(matches!(
            GuestRam::new(2 << 40),
            Err(MemoryError::InvalidSize(_))
        ));
    }
}
