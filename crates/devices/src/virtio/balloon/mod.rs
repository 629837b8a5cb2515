//! virtio-balloon (virtio 1.2 §5.5), modern only, with statistics and free
//! page reporting: the way guest memory the guest does not use goes back to
//! the host.
//!
//! The host sets a target (`num_pages`) through a [`BalloonHandle`]; the
//! guest's driver inflates the balloon towards it by handing over page frame
//! numbers, and writes how many it holds into `actual`. The device gives the
//! host memory behind every inflated page back at once (`MADV_REMOVE` on
//! our memfd-backed RAM, so the memfd's pages are freed, not just unmapped).
//! Free page reporting does the same for ranges the guest merely has free,
//! without holding them. Statistics come from the guest on request.
//!
//! Layers, as in every device here:
//! - [`device`]: the [`VirtioDevice`](crate::virtio::VirtioDevice) impl,
//!   the config space and the switch between idle and running;
//! - [`handle`]: the host's side: target, `actual`, statistics, counters;
//! - [`handler`]: the worker-thread subscriber (fds and tokens only);
//! - [`queue`]: the pure queue paths, generic over how memory is released
//!   and how the driver is signalled;
//! - [`pages`]: the set of pages the balloon holds, one bitmap per RAM
//!   region, and the coalescing of page numbers into ranges;
//! - [`release`]: giving host memory behind guest ranges back (`madvise`);
//! - [`stats`]: the statistics tags and their parsing.
//!
//! # Queues
//!
//! inflateq (0) and deflateq (1) always exist; statsq follows when
//! VIRTIO_BALLOON_F_STATS_VQ is negotiated, then the reporting queue when
//! VIRTIO_BALLOON_F_REPORTING is. Indexes are packed, as Linux and QEMU
//! number them: without statistics the reporting queue is queue 2. The
//! free page hinting queue is never offered. See [`QueueIndexes`].
//!
//! # Limits
//!
//! Everything the guest hands over is bounded: one queue's worth of chains
//! per wakeup, [`QUEUE_SIZE`] descriptors per chain, [`MAX_PFNS_PER_CHAIN`]
//! page numbers per inflate or deflate chain and [`MAX_STATS_BYTES`] of
//! statistics. The held-page bitmap costs one bit per page of guest RAM
//! (32 KiB per GiB), allocated lazily by the host kernel.

pub mod device;
pub mod handle;
pub mod handler;
pub mod pages;
pub mod queue;
pub mod release;
pub mod stats;

pub use device::Balloon;
pub use handle::{BalloonCounters, BalloonError, BalloonHandle, StatsUpdate};
pub use release::{Madvise, MemoryReleaser, ReleaseError};
pub use stats::BalloonStats;

/// Feature bit 1: the device has a statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// Feature bit 2: the guest deflates the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Feature bit 5: the device has a free page reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

/// The balloon always counts in 4 KiB pages, whatever the guest's page size.
pub const PAGE_SHIFT: u32 = 12;
/// Bytes in a balloon page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Maximum size of every queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most page numbers read from one inflate or deflate chain (256 MiB
/// worth of pages; Linux sends 256 at a time). The rest are ignored.
pub const MAX_PFNS_PER_CHAIN: usize = 64 * 1024;
/// The most statistics bytes read from one buffer (Linux sends 16 entries
/// of 10 bytes).
pub const MAX_STATS_BYTES: usize = 4096;

/// Which queue index serves what, for the features the driver acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueIndexes {
    /// The statistics queue, if negotiated.
    pub stats: Option<u16>,
    /// The free page reporting queue, if negotiated.
    pub reporting: Option<u16>,
}

impl QueueIndexes {
    /// The inflate queue.
    pub const INFLATE: u16 = 0;
    /// The deflate queue.
    pub const DEFLATE: u16 = 1;

    /// The layout for `acked_features`: optional queues follow the two
    /// fixed ones in feature order, packed.
    pub fn new(acked_features: u64) -> Self {
        let mut next = 2;
        let mut take = |feature: u64| {
            (acked_features & feature != 0).then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(VIRTIO_BALLOON_F_STATS_VQ);
        let reporting = take(VIRTIO_BALLOON_F_REPORTING);
        QueueIndexes { stats, reporting }
    }

    /// How many queues the driver must make ready.
    pub fn count(&self) -> usize {
        2 + usize::from(self.stats.is_some()) + usize::from(self.reporting.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_indexes_are_packed_in_feature_order() {
        let none = QueueIndexes::new(0);
        assert_eq!((none.stats, none.reporting, none.count()), (None, None, 2));
        let stats = QueueIndexes::new(VIRTIO_BALLOON_F_STATS_VQ);
        assert_eq!(
            (stats.stats, stats.reporting, stats.count()),
            (Some(2), None, 3)
        );
        let report = QueueIndexes::new(VIRTIO_BALLOON_F_REPORTING);
        assert_eq!((report.stats, report.reporting), (None, Some(2)));
        let both = QueueIndexes::new(VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_REPORTING);
        assert_eq!(
            (both.stats, both.reporting, both.count()),
            (Some(2), Some(3), 4)
        );
        // Features without a queue change nothing.
        assert_eq!(QueueIndexes::new(VIRTIO_BALLOON_F_DEFLATE_ON_OOM), none);
    }
}
