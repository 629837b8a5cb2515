//! Giving guest memory back to the host at run time: the balloon's target
//! and its statistics.
//!
//! Free page reporting returns memory the guest has freed on its own; the
//! balloon takes memory the host asks back. A Linux guest keeps file pages
//! cached for as long as nothing else wants the memory; asking it to drop
//! them is the guest agent's business, not the VMM's (`agentvm`'s VMM does
//! it through the agent, and reporting then returns those pages too).

use std::time::Duration;

use agentvm_devices::virtio::balloon::{BalloonCounters, BalloonError, BalloonHandle, StatsUpdate};

/// Errors of the memory controls.
#[derive(Debug, thiserror::Error)]
pub enum MemoryControlError {
    /// The VM was built without a balloon device.
    #[error("This VM has no balloon device")]
    NoBalloon,
    /// The balloon device refused the request.
    #[error("Balloon request failed")]
    Balloon(#[source] BalloonError),
    /// The guest sent no statistics in time.
    #[error("The guest sent no balloon statistics within {0:?}")]
    StatsTimeout(Duration),
}

/// The balloon's state and the guest's latest statistics.
#[derive(Debug, Clone)]
pub struct BalloonReport {
    /// Target the host set, in 4 KiB pages.
    pub target_pages: u32,
    /// Pages the guest says the balloon holds.
    pub actual_pages: u32,
    /// The device's counters (pages held, reported bytes, ignored input).
    pub counters: BalloonCounters,
    /// The statistics the guest sent in answer to this request.
    pub stats: StatsUpdate,
}

/// Sets the balloon's target size in MiB (memory taken from the guest).
pub fn set_target_mib(balloon: Option<&BalloonHandle>, mib: u64) -> Result<(), MemoryControlError> {
    balloon
        .ok_or(MemoryControlError::NoBalloon)?
        .set_target_mib(mib)
        .map_err(MemoryControlError::Balloon)
}

/// Asks the guest for fresh statistics and waits up to `timeout` for them.
pub fn report(
    balloon: Option<&BalloonHandle>,
    timeout: Duration,
) -> Result<BalloonReport, MemoryControlError> {
    let balloon = balloon.ok_or(MemoryControlError::NoBalloon)?;
    let seen = balloon.stats().map_or(0, |s| s.generation);
    balloon
        .request_stats()
        .map_err(MemoryControlError::Balloon)?;
    let stats = balloon
        .wait_stats(seen, timeout)
        .ok_or(MemoryControlError::StatsTimeout(timeout))?;
    Ok(BalloonReport {
        target_pages: balloon.target_pages(),
        actual_pages: balloon.actual_pages(),
        counters: balloon.counters(),
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_balloon_the_controls_say_so() {
        assert!(matches!(
            set_target_mib(None, 1),
            Err(MemoryControlError::NoBalloon)
        ));
        assert!(matches!(
            report(None, Duration::ZERO),
            Err(MemoryControlError::NoBalloon)
        ));
    }
}
