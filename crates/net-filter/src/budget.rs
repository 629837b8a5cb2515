//! The stack's memory budget: one account that every allocation the guest
//! can multiply is charged to where it is made — the frame queues (their
//! byte caps, reserved at start), each TCP flow's smoltcp buffers and the
//! host socket's kernel buffers sized to match, each flow's bookkeeping,
//! and the SYN a pending connect parks. What does not fit is refused (the
//! guest gets a RST), so whatever the guest does, the stack's memory stays
//! under the limit.
//!
//! Charges are reservations of the most a thing can hold, not of what it
//! holds now: a guest decides how full its buffers get, so only the upper
//! bound is safe to count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The budget when the configuration names none.
pub const DEFAULT_BUDGET: usize = 64 << 20;
/// The smallest budget a stack runs with (its queues need room).
pub const MIN_BUDGET: usize = 4 << 20;

/// A shared account of bytes against a limit. Clones share the account.
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl Budget {
    /// An account of `limit` bytes (0: [`DEFAULT_BUDGET`]; at least
    /// [`MIN_BUDGET`]).
    pub fn new(limit: usize) -> Self {
        let limit = if limit == 0 { DEFAULT_BUDGET } else { limit };
        Budget {
            inner: Arc::new(Inner {
                limit: limit.max(MIN_BUDGET),
                used: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            }),
        }
    }

    /// The limit, bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The most bytes ever charged at once.
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::Relaxed)
    }

    /// Bytes still free.
    pub fn free(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// Charges `bytes`, released when the [`Charge`] drops; `None` when
    /// they do not fit.
    pub fn charge(&self, bytes: usize) -> Option<Charge> {
        let inner = &self.inner;
        let fitted = inner
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&n| n <= inner.limit)
            });
        let before = fitted.ok()?;
        inner.peak.fetch_max(before + bytes, Ordering::Relaxed);
        Some(Charge {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Bytes charged to a [`Budget`] until this drops.
#[derive(Debug)]
#[must_use = "the bytes are released when the charge drops"]
pub struct Charge {
    budget: Budget,
    bytes: usize,
}

impl Charge {
    /// Gives back all but `bytes` of the charge (nothing if it is smaller).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget
                .inner
                .used
                .fetch_sub(self.bytes - bytes, Ordering::Relaxed);
            self.bytes = bytes;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget
            .inner
            .used
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_under_the_limit_and_are_released_on_drop() {
        let budget = Budget::new(MIN_BUDGET);
        let a = budget.charge(MIN_BUDGET - 10).unwrap();
        assert!(budget.charge(11).is_none(), "one byte over the limit");
        let b = budget.charge(10).unwrap();
        assert_eq!(budget.free(), 0);
        let mut a = a;
        a.shrink_to(5);
        assert_eq!(budget.used(), 15);
        drop(a);
        assert_eq!(budget.used(), 10);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.peak(), MIN_BUDGET);
    }

    #[test]
    fn a_huge_charge_is_refused_not_wrapped() {
        let budget = Budget::new(0);
        assert_eq!(budget.limit(), DEFAULT_BUDGET);
        let _a = budget.charge(1).unwrap();
        assert!(budget.charge(usize::MAX).is_none());
        assert_eq!(budget.used(), 1);
    }
}
