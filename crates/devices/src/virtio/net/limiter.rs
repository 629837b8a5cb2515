//! Rate limiting for warnings a guest can trigger at will: a driver that
//! sends garbage in a loop must not flood the host's logs.

use std::time::{Duration, Instant};

use tracing::warn;

/// How many warnings of one kind may be logged per window.
const BURST: u32 = 10;
/// The window.
const WINDOW: Duration = Duration::from_secs(5);

/// Lets [`BURST`] warnings through per [`WINDOW`], and reports how many it
/// held back when the next window opens.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    what: &'static str,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter for warnings about `what`.
    pub(crate) const fn new(what: &'static str) -> Self {
        LogLimiter {
            what,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether the next warning may be logged.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        let expired = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= WINDOW);
        if expired {
            if self.suppressed > 0 {
                warn!(
                    "virtio-net: {} more {} warnings suppressed",
                    self.suppressed, self.what
                );
            }
            self.window_start = Some(now);
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window < BURST {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_holds_back() {
        let mut l = LogLimiter::new("test");
        let allowed = (0..100).filter(|_| l.allow()).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(l.suppressed, 100 - u64::from(BURST));
    }
}
