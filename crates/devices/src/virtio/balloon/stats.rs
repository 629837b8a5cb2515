//! Memory statistics (virtio 1.2 §5.5.6.3): the driver fills a buffer with
//! packed `{ le16 tag; le64 val; }` entries, one per statistic it supports.

/// Bytes of one statistics entry.
pub const STAT_LEN: usize = 10;

/// Statistics tags of virtio 1.2.
pub mod tag {
    /// Memory swapped in (bytes).
    pub const SWAP_IN: u16 = 0;
    /// Memory swapped out (bytes).
    pub const SWAP_OUT: u16 = 1;
    /// Major page faults.
    pub const MAJFLT: u16 = 2;
    /// Minor page faults.
    pub const MINFLT: u16 = 3;
    /// Memory not used at all (bytes).
    pub const MEMFREE: u16 = 4;
    /// Memory the guest can use (bytes).
    pub const MEMTOT: u16 = 5;
    /// Memory available for new applications without swapping (bytes).
    pub const AVAIL: u16 = 6;
    /// Memory in disk caches, reclaimable (bytes).
    pub const CACHES: u16 = 7;
    /// Successful hugetlb page allocations.
    pub const HTLB_PGALLOC: u16 = 8;
    /// Failed hugetlb page allocations.
    pub const HTLB_PGFAIL: u16 = 9;
}

/// The statistics of one buffer. A field is `None` when the driver did not
/// report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// [`tag::SWAP_IN`].
    pub swap_in: Option<u64>,
    /// [`tag::SWAP_OUT`].
    pub swap_out: Option<u64>,
    /// [`tag::MAJFLT`].
    pub major_faults: Option<u64>,
    /// [`tag::MINFLT`].
    pub minor_faults: Option<u64>,
    /// [`tag::MEMFREE`].
    pub free_memory: Option<u64>,
    /// [`tag::MEMTOT`].
    pub total_memory: Option<u64>,
    /// [`tag::AVAIL`].
    pub available_memory: Option<u64>,
    /// [`tag::CACHES`].
    pub disk_caches: Option<u64>,
    /// [`tag::HTLB_PGALLOC`].
    pub hugetlb_allocations: Option<u64>,
    /// [`tag::HTLB_PGFAIL`].
    pub hugetlb_failures: Option<u64>,
}

impl BalloonStats {
    /// Parses the entries of `bytes` up to the last whole one. Tags this
    /// device does not know (newer drivers send more) are skipped; a tag
    /// given twice keeps its last value.
    pub fn parse(bytes: &[u8]) -> Self {
        let mut stats = BalloonStats::default();
        for entry in bytes.chunks_exact(STAT_LEN) {
            let (tag, val) = entry.split_at(2);
            let (Ok(tag), Ok(val)) = (<[u8; 2]>::try_from(tag), <[u8; 8]>::try_from(val)) else {
                continue;
            };
            if let Some(field) = stats.field(u16::from_le_bytes(tag)) {
                *field = Some(u64::from_le_bytes(val));
            }
        }
        stats
    }

    fn field(&mut self, t: u16) -> Option<&mut Option<u64>> {
        Some(match t {
            tag::SWAP_IN => &mut self.swap_in,
            tag::SWAP_OUT => &mut self.swap_out,
            tag::MAJFLT => &mut self.major_faults,
            tag::MINFLT => &mut self.minor_faults,
            tag::MEMFREE => &mut self.free_memory,
            tag::MEMTOT => &mut self.total_memory,
            tag::AVAIL => &mut self.available_memory,
            tag::CACHES => &mut self.disk_caches,
            tag::HTLB_PGALLOC => &mut self.hugetlb_allocations,
            tag::HTLB_PGFAIL => &mut self.hugetlb_failures,
            _ => return None,
        })
    }
}

/// Encodes one entry, as a driver does (for tests and tools).
pub fn encode(tag: u16, val: u64) -> [u8; STAT_LEN] {
    let mut entry = [0; STAT_LEN];
    entry[..2].copy_from_slice(&tag.to_le_bytes());
    entry[2..].copy_from_slice(&val.to_le_bytes());
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_tags_and_skips_the_rest() {
        let mut buf = Vec::new();
        for (t, v) in [
            (tag::SWAP_IN, 1),
            (tag::MEMFREE, 4 << 20),
            (77, 99),
            (tag::MEMTOT, 1 << 30),
            (tag::HTLB_PGFAIL, 9),
            (tag::MEMFREE, 5 << 20),
        ] {
            buf.extend(encode(t, v));
        }
        let s = BalloonStats::parse(&buf);
        assert_eq!(
            s,
            BalloonStats {
                swap_in: Some(1),
                free_memory: Some(5 << 20),
                total_memory: Some(1 << 30),
                hugetlb_failures: Some(9),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_partial_last_entry_is_ignored() {
        let mut buf = encode(tag::AVAIL, 42).to_vec();
        buf.extend(&encode(tag::CACHES, 7)[..9]);
        let s = BalloonStats::parse(&buf);
        assert_eq!(s.available_memory, Some(42));
        assert_eq!(s.disk_caches, None);
        assert_eq!(BalloonStats::parse(&[1, 2, 3]), BalloonStats::default());
        assert_eq!(BalloonStats::parse(&[]), BalloonStats::default());
    }
}
