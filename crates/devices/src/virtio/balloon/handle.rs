//! The host's side of the balloon: the target it sets, what the guest says
//! it holds, the latest statistics and the device's counters.
//!
//! [`BalloonHandle`] is cheap to clone and safe to use from any thread. It
//! shares one [`Shared`] with the device and its worker: the config fields
//! and statistics under a mutex (held only for a few loads and stores),
//! the counters as atomics.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::stats::BalloonStats;
use super::PAGE_SHIFT;
use crate::virtio::{InterruptKind, VirtioInterrupt};

/// Errors of the host control API.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The stats request eventfd could not be created.
    #[error("Cannot create the stats request eventfd")]
    StatsEvent(#[source] io::Error),
    /// The guest's driver is not running the device.
    #[error("The balloon is not active")]
    NotActive,
    /// The driver did not negotiate the statistics queue.
    #[error("The driver did not negotiate balloon statistics")]
    StatsNotNegotiated,
    /// The worker could not be asked for statistics.
    #[error("Cannot request balloon statistics")]
    StatsRequest(#[source] io::Error),
    /// The driver could not be told about the new target.
    #[error("Cannot signal the configuration change")]
    Interrupt(#[source] io::Error),
}

/// One set of statistics and its place in the sequence the guest sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsUpdate {
    /// 1 for the first buffer the device received, then counting up. Kept
    /// across resets, so a newer update always has a larger number.
    pub generation: u64,
    /// The statistics of that buffer.
    pub stats: BalloonStats,
}

/// A snapshot of the device's counters. `held_pages` is the balloon's
/// current size; the rest are totals since the device was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Pages in the balloon now (0 after a reset: the guest owns its memory
    /// again).
    pub held_pages: u64,
    /// Pages taken into the balloon.
    pub inflated_pages: u64,
    /// Pages given back to the guest.
    pub deflated_pages: u64,
    /// Bytes the guest reported free and the host got back.
    pub reported_bytes: u64,
    /// Page numbers that had no effect: not guest RAM, inflated while
    /// already held, deflated while not held.
    pub ignored_pfns: u64,
    /// Reported ranges refused: misaligned, empty, not inside one RAM
    /// region, or in a device-readable descriptor.
    pub ignored_ranges: u64,
    /// Chains dropped whole: loops, broken links, buffers outside memory.
    pub malformed_chains: u64,
    /// Ranges the host kernel refused to release.
    pub release_errors: u64,
}

/// The counters, shared between the worker and every handle.
///
/// The worker updates them before it puts the chain in the used ring (a
/// release store), so a driver that sees the chain back also sees the
/// counts that include it.
#[derive(Debug, Default)]
pub struct Counters {
    held_pages: AtomicU64,
    inflated_pages: AtomicU64,
    deflated_pages: AtomicU64,
    reported_bytes: AtomicU64,
    ignored_pfns: AtomicU64,
    ignored_ranges: AtomicU64,
    malformed_chains: AtomicU64,
    release_errors: AtomicU64,
}

impl Counters {
    /// Adds every total of `delta`; its `held_pages` is ignored (use
    /// [`Counters::set_held`]).
    pub fn add(&self, delta: &BalloonCounters) {
        let pairs = [
            (&self.inflated_pages, delta.inflated_pages),
            (&self.deflated_pages, delta.deflated_pages),
            (&self.reported_bytes, delta.reported_bytes),
            (&self.ignored_pfns, delta.ignored_pfns),
            (&self.ignored_ranges, delta.ignored_ranges),
            (&self.malformed_chains, delta.malformed_chains),
            (&self.release_errors, delta.release_errors),
        ];
        for (counter, n) in pairs {
            if n != 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Sets the balloon's current size.
    pub fn set_held(&self, pages: u64) {
        self.held_pages.store(pages, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> BalloonCounters {
        BalloonCounters {
            held_pages: self.held_pages.load(Ordering::Relaxed),
            inflated_pages: self.inflated_pages.load(Ordering::Relaxed),
            deflated_pages: self.deflated_pages.load(Ordering::Relaxed),
            reported_bytes: self.reported_bytes.load(Ordering::Relaxed),
            ignored_pfns: self.ignored_pfns.load(Ordering::Relaxed),
            ignored_ranges: self.ignored_ranges.load(Ordering::Relaxed),
            malformed_chains: self.malformed_chains.load(Ordering::Relaxed),
            release_errors: self.release_errors.load(Ordering::Relaxed),
        }
    }
}

/// Config space and statistics, under one lock.
#[derive(Default)]
struct State {
    /// Config `num_pages`: the host's target.
    num_pages: u32,
    /// Config `actual`: what the driver says the balloon holds.
    actual: u32,
    /// Set while the device is active.
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    /// The running driver negotiated the statistics queue.
    stats_queue: bool,
    /// The latest statistics.
    stats: Option<StatsUpdate>,
}

/// What the device, its worker and the handles share.
pub struct Shared {
    state: Mutex<State>,
    stats_changed: Condvar,
    counters: Counters,
    stats_request: EventFd,
}

impl Shared {
    /// Idle state: no target, nothing held.
    pub(super) fn new() -> Result<Self, BalloonError> {
        Ok(Shared {
            state: Mutex::default(),
            stats_changed: Condvar::new(),
            counters: Counters::default(),
            stats_request: EventFd::new(EFD_NONBLOCK).map_err(BalloonError::StatsEvent)?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State is plain values, each always valid on its own: a panic
        // while holding the lock leaves nothing half-written to fear.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Signalled by [`BalloonHandle::request_stats`]; the worker watches it.
    pub fn stats_request(&self) -> &EventFd {
        &self.stats_request
    }

    /// The config space: `num_pages` then `actual`, little-endian.
    pub(super) fn config(&self) -> [u8; 8] {
        let state = self.lock();
        let mut bytes = [0; 8];
        bytes[..4].copy_from_slice(&state.num_pages.to_le_bytes());
        bytes[4..].copy_from_slice(&state.actual.to_le_bytes());
        bytes
    }

    /// A driver write of `data` at config `offset`: only bytes landing in
    /// `actual` (offsets 4 to 7) are taken.
    pub(super) fn write_config(&self, offset: u64, data: &[u8]) {
        let mut state = self.lock();
        let mut actual = state.actual.to_le_bytes();
        for (i, byte) in data.iter().enumerate() {
            let at = offset.checked_add(i as u64).and_then(|a| a.checked_sub(4));
            if let Some(slot) = at
                .and_then(|a| usize::try_from(a).ok())
                .and_then(|a| actual.get_mut(a))
            {
                *slot = *byte;
            }
        }
        state.actual = u32::from_le_bytes(actual);
    }

    /// The device became active with `interrupt`.
    pub(super) fn activate(&self, interrupt: Arc<dyn VirtioInterrupt>, stats_queue: bool) {
        // A request left over from before: the new driver's first buffer
        // answers it anyway. EAGAIN (none pending) is the usual outcome.
        let _ = self.stats_request.read();
        let mut state = self.lock();
        state.interrupt = Some(interrupt);
        state.stats_queue = stats_queue;
        self.counters.set_held(0);
    }

    /// The device was reset: the guest owns all its memory again and
    /// `actual` is back to 0. The target and the latest statistics stay.
    pub(super) fn deactivate(&self) {
        let mut state = self.lock();
        state.interrupt = None;
        state.stats_queue = false;
        state.actual = 0;
        self.counters.set_held(0);
    }

    /// Makes `stats` the latest statistics and wakes waiters.
    pub(super) fn publish_stats(&self, stats: BalloonStats) {
        let mut state = self.lock();
        let generation = state.stats.map_or(1, |s| s.generation + 1);
        state.stats = Some(StatsUpdate { generation, stats });
        drop(state);
        self.stats_changed.notify_all();
    }
}

/// The host's control of one balloon device. Clone it freely.
#[derive(Clone)]
pub struct BalloonHandle {
    shared: Arc<Shared>,
}

impl BalloonHandle {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        BalloonHandle { shared }
    }

    /// Sets the target balloon size in 4 KiB pages and, if the driver is
    /// running, raises a configuration change interrupt so it re-reads it.
    pub fn set_target_pages(&self, pages: u32) -> Result<(), BalloonError> {
        let mut state = self.shared.lock();
        state.num_pages = pages;
        // Signalled under the lock: a reset cannot slip in between and
        // have this interrupt land on the next activation.
        match &state.interrupt {
            Some(i) => i
                .trigger(InterruptKind::Config)
                .map_err(BalloonError::Interrupt),
            None => Ok(()),
        }
    }

    /// Sets the target in MiB (saturating at the largest page count the
    /// config field holds, 16 TiB).
    pub fn set_target_mib(&self, mib: u64) -> Result<(), BalloonError> {
        let pages = mib.saturating_mul(1 << (20 - PAGE_SHIFT));
        self.set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX))
    }

    /// The target in pages.
    pub fn target_pages(&self) -> u32 {
        self.shared.lock().num_pages
    }

    /// What the driver last wrote into `actual`: the pages it says the
    /// balloon holds.
    pub fn actual_pages(&self) -> u32 {
        self.shared.lock().actual
    }

    /// Whether the guest's driver is running the device.
    pub fn is_active(&self) -> bool {
        self.shared.lock().interrupt.is_some()
    }

    /// The device's counters.
    pub fn counters(&self) -> BalloonCounters {
        self.shared.counters.snapshot()
    }

    /// The latest statistics the guest sent, if any.
    pub fn stats(&self) -> Option<StatsUpdate> {
        self.shared.lock().stats
    }

    /// Asks the guest for fresh statistics: the device returns the buffer
    /// the driver left in the statistics queue, and the driver sends it
    /// back refilled (see [`BalloonHandle::wait_stats`]). If the driver has
    /// not given a buffer back since the last request, this one is
    /// answered by that buffer when it comes.
    pub fn request_stats(&self) -> Result<(), BalloonError> {
        {
            let state = self.shared.lock();
            if state.interrupt.is_none() {
                return Err(BalloonError::NotActive);
            }
            if !state.stats_queue {
                return Err(BalloonError::StatsNotNegotiated);
            }
        }
        self.shared
            .stats_request
            .write(1)
            .map_err(BalloonError::StatsRequest)
    }

    /// Waits up to `timeout` for statistics newer than `generation` (0 for
    /// any) and returns them, or `None` if none came in time.
    pub fn wait_stats(&self, generation: u64, timeout: Duration) -> Option<StatsUpdate> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(s) = state.stats.filter(|s| s.generation > generation) {
                return Some(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = match self.shared.stats_changed.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Default)]
    struct Count(AtomicU64);

    impl VirtioInterrupt for Count {
        fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
            assert_eq!(kind, InterruptKind::Config);
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn config_takes_writes_to_actual_only() {
        let shared = Shared::new().unwrap();
        let handle = BalloonHandle::new(Arc::new(shared));
        let shared = &handle.shared;
        handle.set_target_pages(0x1122_3344).unwrap();
        shared.write_config(0, &[0xff; 4]);
        shared.write_config(4, &0xaabb_ccddu32.to_le_bytes());
        assert_eq!(
            shared.config(),
            [0x44, 0x33, 0x22, 0x11, 0xdd, 0xcc, 0xbb, 0xaa]
        );
        // Straddling writes keep only the bytes inside `actual`.
        shared.write_config(2, &[1, 2, 3, 4]);
        shared.write_config(6, &[5, 6, 7, 8]);
        shared.write_config(u64::MAX, &[9, 9]);
        assert_eq!(shared.config(), [0x44, 0x33, 0x22, 0x11, 3, 4, 5, 6]);
        assert_eq!(handle.actual_pages(), 0x0605_0403);
        assert_eq!(handle.target_pages(), 0x1122_3344);
    }

    #[test]
    fn target_signals_only_an_active_driver() {
        let handle = BalloonHandle::new(Arc::new(Shared::new().unwrap()));
        handle.set_target_mib(1).unwrap();
        assert_eq!(handle.target_pages(), 256);
        let irq = Arc::new(Count::default());
        handle.shared.activate(irq.clone(), false);
        handle.set_target_mib(u64::MAX).unwrap();
        assert_eq!(handle.target_pages(), u32::MAX);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            handle.request_stats(),
            Err(BalloonError::StatsNotNegotiated)
        ));
        handle.shared.write_config(4, &7u32.to_le_bytes());
        handle.shared.deactivate();
        handle.set_target_pages(5).unwrap();
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        assert_eq!(handle.actual_pages(), 0, "reset empties the balloon");
        assert_eq!(handle.target_pages(), 5, "the host's wish survives a reset");
        assert!(matches!(
            handle.request_stats(),
            Err(BalloonError::NotActive)
        ));
    }

    #[test]
    fn stats_generations_count_up_and_waiters_wake() {
        let handle = BalloonHandle::new(Arc::new(Shared::new().unwrap()));
        assert!(handle.stats().is_none());
        assert!(handle.wait_stats(0, Duration::ZERO).is_none());
        let publisher = handle.clone();
        let t = std::thread::spawn(move || {
            publisher.shared.publish_stats(BalloonStats {
                swap_in: Some(3),
                ..Default::default()
            })
        });
        let got = handle.wait_stats(0, Duration::from_secs(20)).unwrap();
        t.join().unwrap();
        assert_eq!((got.generation, got.stats.swap_in), (1, Some(3)));
        handle.shared.publish_stats(BalloonStats::default());
        assert_eq!(handle.stats().unwrap().generation, 2);
        assert!(handle.wait_stats(2, Duration::ZERO).is_none());
    }
}
