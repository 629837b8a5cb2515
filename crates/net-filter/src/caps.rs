//! The stack's caps as the user sees them: each has a counter of the times
//! it was hit (in [`crate::StackStats`]) and one warning per episode — the
//! first hit is logged, the rest of a flood is only counted, and the next
//! hit after the cap had room again starts a new episode.

use tracing::warn;

/// One cap's counter and episode.
#[derive(Debug)]
pub struct Cap {
    /// What is capped and what happens, for the warning.
    what: &'static str,
    hits: u64,
    in_episode: bool,
}

impl Cap {
    /// A cap described by `what` ("4096 TCP connections open; new ones are
    /// reset").
    pub const fn new(what: &'static str) -> Self {
        Cap {
            what,
            hits: 0,
            in_episode: false,
        }
    }

    /// The cap refused something: counted, and logged if it is the first
    /// time since the cap last had room.
    pub fn hit(&mut self) {
        self.hits += 1;
        if !self.in_episode {
            self.in_episode = true;
            warn!(
                "net: {} (further hits are counted in `agentvm status`)",
                self.what
            );
        }
    }

    /// The cap had room again: the next hit is logged.
    pub fn fits(&mut self) {
        self.in_episode = false;
    }

    /// Times the cap was hit.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_episode_per_stretch_of_hits() {
        let mut cap = Cap::new("test");
        for _ in 0..5 {
            cap.hit();
        }
        assert!(cap.in_episode);
        cap.fits();
        assert!(!cap.in_episode);
        cap.hit();
        assert!(cap.in_episode);
        assert_eq!(cap.hits(), 6);
    }
}
