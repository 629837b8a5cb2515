//! The guest's physical memory map (e820), shared by the zero page and the
//! PVH start info.

use super::layout::{BIOS_END, EBDA_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START};

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved (BIOS area with the MP table and ACPI tables).
pub const E820_RESERVED: u32 = 2;

/// One memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for `ram_size` bytes of RAM laid out as in
/// [`crate::memory::ram_ranges`]: low RAM up to the EBDA, the reserved BIOS
/// area, RAM from 1 MiB to the MMIO hole, RAM above 4 GiB.
pub fn memory_map(ram_size: u64) -> Vec<E820Entry> {
    let low_end = ram_size.min(MMIO_HOLE_START);
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: BIOS_END - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if ram_size > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: ram_size - MMIO_HOLE_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_map() {
        let m = memory_map(128 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[2],
            E820Entry {
                addr: 0x10_0000,
                size: (128 << 20) - 0x10_0000,
                kind: E820_RAM
            }
        );
        // Everything but the 384 KiB BIOS area is RAM.
        assert_eq!(ram(&m), (128 << 20) - (BIOS_END - EBDA_START));
    }

    #[test]
    fn large_guest_map_skips_the_hole_and_entries_do_not_overlap() {
        let size = 64u64 << 30;
        let m = memory_map(size);
        assert_eq!(m.len(), 4);
        assert_eq!(m[3].addr, 1 << 32);
        assert_eq!(ram(&m), size - (BIOS_END - EBDA_START));
        for w in m.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
        assert!(m
            .iter()
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END));
    }
}
