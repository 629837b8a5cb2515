//! The pages the balloon holds, and the coalescing of page numbers into
//! ranges.
//!
//! [`HeldPages`] keeps one bitmap per guest RAM region, so a page number is
//! checked against RAM and looked up in one step, holes (the x86 MMIO hole)
//! cost nothing, and the set can never grow beyond one bit per page of
//! guest RAM however the guest behaves. The bitmaps are zero-initialised
//! allocations: the host kernel only commits the parts the guest touches.

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::PAGE_SHIFT;
use crate::virtio::GuestMemory;

/// Whole pages of one RAM region.
#[derive(Debug)]
struct RegionPages {
    /// First page number of the region.
    first: u64,
    /// Number of whole pages.
    pages: u64,
    /// One bit per page, set while the balloon holds it.
    bits: Vec<u64>,
}

/// What [`HeldPages::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// The page is now held; it lies in region number `region`.
    Added {
        /// Index of its region in guest memory.
        region: usize,
    },
    /// The balloon held the page already.
    AlreadyHeld,
    /// The page number is not guest RAM.
    NotRam,
}

/// The set of pages the balloon holds.
#[derive(Debug)]
pub struct HeldPages {
    regions: Vec<RegionPages>,
    held: u64,
}

impl HeldPages {
    /// An empty set covering every whole page of `mem`.
    pub fn new(mem: &GuestMemory) -> Self {
        let mut regions: Vec<RegionPages> = mem
            .iter()
            .filter_map(|r| {
                let start = r.start_addr().0;
                let end = start.checked_add(r.len())?;
                let first = start.div_ceil(super::PAGE_SIZE);
                let pages = (end >> PAGE_SHIFT).checked_sub(first)?;
                let words = usize::try_from(pages.div_ceil(64)).ok()?;
                Some(RegionPages {
                    first,
                    pages,
                    bits: vec![0; words],
                })
            })
            .collect();
        regions.sort_by_key(|r| r.first);
        HeldPages { regions, held: 0 }
    }

    /// Pages held now.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Pages of guest RAM the set covers.
    pub fn capacity(&self) -> u64 {
        self.regions.iter().map(|r| r.pages).sum()
    }

    /// Whether the balloon holds `pfn`.
    pub fn contains(&self, pfn: u64) -> bool {
        self.locate(pfn)
            .is_some_and(|(r, bit)| self.regions[r].bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Takes `pfn` into the balloon.
    pub fn insert(&mut self, pfn: u64) -> Insert {
        let Some((region, bit)) = self.locate(pfn) else {
            return Insert::NotRam;
        };
        let word = &mut self.regions[region].bits[bit / 64];
        let mask = 1 << (bit % 64);
        if *word & mask != 0 {
            return Insert::AlreadyHeld;
        }
        *word |= mask;
        self.held += 1;
        Insert::Added { region }
    }

    /// Gives `pfn` back to the guest; `false` if the balloon did not hold it.
    pub fn remove(&mut self, pfn: u64) -> bool {
        let Some((region, bit)) = self.locate(pfn) else {
            return false;
        };
        let word = &mut self.regions[region].bits[bit / 64];
        let mask = 1 << (bit % 64);
        if *word & mask == 0 {
            return false;
        }
        *word &= !mask;
        self.held -= 1;
        true
    }

    /// The region index and bit of `pfn`, if it is a page of guest RAM.
    fn locate(&self, pfn: u64) -> Option<(usize, usize)> {
        // Regions are sorted and disjoint: the candidate is the last one
        // starting at or below `pfn`.
        let r = self
            .regions
            .partition_point(|r| r.first <= pfn)
            .checked_sub(1)?;
        let bit = pfn - self.regions[r].first;
        (bit < self.regions[r].pages).then_some((r, bit as usize))
    }
}

/// A run of contiguous pages inside one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First page number.
    pub first: u64,
    /// Number of pages.
    pub pages: u64,
}

impl PageRun {
    /// Guest-physical address of the first page.
    pub fn addr(&self) -> u64 {
        self.first << PAGE_SHIFT
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.pages << PAGE_SHIFT
    }

    /// Whether the run is empty (never, for runs from [`RunBuilder`]).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// Coalesces page numbers, in the order the guest gave them, into runs of
/// contiguous pages within one region: one `madvise` per run instead of one
/// per page. A gap, a step backwards or a region change ends a run.
#[derive(Debug, Default)]
pub struct RunBuilder {
    current: Option<(usize, PageRun)>,
}

impl RunBuilder {
    /// Adds `pfn` of region `region`; returns the run it ended, if any.
    pub fn push(&mut self, region: usize, pfn: u64) -> Option<PageRun> {
        if let Some((r, run)) = &mut self.current {
            if *r == region && run.first + run.pages == pfn {
                run.pages += 1;
                return None;
            }
        }
        let ended = self.current.take().map(|(_, run)| run);
        self.current = Some((
            region,
            PageRun {
                first: pfn,
                pages: 1,
            },
        ));
        ended
    }

    /// The run still open.
    pub fn finish(self) -> Option<PageRun> {
        self.current.map(|(_, run)| run)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use vm_memory::GuestAddress;

    use super::*;

    /// Two regions with a hole: pages 0..16 and 32..40.
    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[
            (GuestAddress(0), 16 << 12),
            (GuestAddress(32 << 12), 8 << 12),
        ])
        .unwrap()
    }

    #[test]
    fn only_ram_pages_are_taken_and_each_once() {
        let mut set = HeldPages::new(&memory());
        assert_eq!(set.capacity(), 24);
        assert_eq!(set.insert(0), Insert::Added { region: 0 });
        assert_eq!(set.insert(15), Insert::Added { region: 0 });
        assert_eq!(set.insert(32), Insert::Added { region: 1 });
        assert_eq!(set.insert(39), Insert::Added { region: 1 });
        assert_eq!(set.insert(15), Insert::AlreadyHeld);
        for hole in [16, 31, 40, 1 << 40, u64::MAX] {
            assert_eq!(set.insert(hole), Insert::NotRam, "{hole}");
            assert!(!set.contains(hole));
        }
        assert_eq!(set.held(), 4);
        assert!(set.contains(39));
        assert!(set.remove(39));
        assert!(!set.remove(39), "removed twice");
        assert!(!set.remove(20), "a hole is never held");
        assert!(!set.remove(1), "never inserted");
        assert_eq!(set.held(), 3);
        assert!(!set.contains(39));
    }

    #[test]
    fn partial_pages_at_region_edges_are_not_ram() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0x1800), 0x3000)]).unwrap();
        let mut set = HeldPages::new(&mem);
        // 0x1800..0x4800: only page 2 (0x2000..0x3000) and 3 are whole.
        assert_eq!(set.capacity(), 2);
        assert_eq!(set.insert(1), Insert::NotRam);
        assert_eq!(set.insert(2), Insert::Added { region: 0 });
        assert_eq!(set.insert(3), Insert::Added { region: 0 });
        assert_eq!(set.insert(4), Insert::NotRam);
    }

    #[test]
    fn runs_break_at_gaps_steps_back_and_region_changes() {
        let mut b = RunBuilder::default();
        let mut runs = Vec::new();
        for (region, pfn) in [(0, 3), (0, 4), (0, 5), (0, 7), (0, 6), (1, 7), (1, 8)] {
            runs.extend(b.push(region, pfn));
        }
        runs.extend(b.finish());
        let got: Vec<_> = runs.iter().map(|r| (r.first, r.pages)).collect();
        assert_eq!(got, [(3, 3), (7, 1), (6, 1), (7, 2)]);
        assert_eq!((runs[0].addr(), runs[0].len()), (3 << 12, 3 << 12));
        assert!(RunBuilder::default().finish().is_none());
    }
}
