//! Rate limiting for warnings a guest (or a local process) can trigger at
//! will: a driver that sends garbage in a loop must not flood the host's
//! logs. Every such warning in the devices goes through one
//! [`LogLimiter`]: a field of the device where it has state of its own,
//! or one per call site with [`warn_limited!`](crate::warn_limited).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::warn;

/// How many warnings of one kind may be logged per window.
const BURST: u64 = 10;
/// The window.
const WINDOW: Duration = Duration::from_secs(5);

/// Lets [`BURST`] warnings through per [`WINDOW`], and reports how many it
/// held back when the next window opens. Shared references suffice (it
/// counts with atomics), so one can be a `static`.
#[derive(Debug)]
pub struct LogLimiter {
    what: &'static str,
    /// Milliseconds since [`epoch`] at the window's start, plus one (zero:
    /// no window yet).
    window_start: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

/// The instant limiter windows are measured from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimiter {
    /// A limiter for warnings about `what` ("virtio-net rx").
    pub const fn new(what: &'static str) -> Self {
        LogLimiter {
            what,
            window_start: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether the next warning may be logged.
    pub fn allow(&self) -> bool {
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.allow_at(now)
    }

    /// [`LogLimiter::allow`] at `now_ms` milliseconds since [`epoch`].
    fn allow_at(&self, now_ms: u64) -> bool {
        let now = now_ms.saturating_add(1);
        let start = self.window_start.load(Ordering::Relaxed);
        let expired = start == 0 || now.saturating_sub(start) >= WINDOW.as_millis() as u64;
        // One caller opens the new window; others racing it count in it.
        if expired
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let held = self.suppressed.swap(0, Ordering::Relaxed);
            if held > 0 {
                warn!("{held} more {} warnings suppressed", self.what);
            }
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < BURST {
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// `warn!` through a [`LogLimiter`] of its own call site: at most
/// [`BURST`] per [`WINDOW`], then a count of what was held back.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::virtio::warn::LogLimiter =
            $crate::virtio::warn::LogLimiter::new(concat!(file!(), ":", line!()));
        if LIMITER.allow() {
            ::tracing::warn!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_holds_back() {
        let l = LogLimiter::new("test");
        let allowed = (0..100).filter(|_| l.allow_at(1000)).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 100 - BURST);
    }

    #[test]
    fn the_next_window_lets_a_burst_through_again() {
        let l = LogLimiter::new("test");
        let window = WINDOW.as_millis() as u64;
        assert_eq!((0..100).filter(|_| l.allow_at(0)).count(), BURST as usize);
        // Still the same window a moment before it ends.
        assert!(!l.allow_at(window - 1));
        let next = (0..100).filter(|_| l.allow_at(window)).count();
        assert_eq!(next, BURST as usize);
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 100 - BURST);
    }
}
