//! agentvm's end-to-end test rig ("T3"/"T4" in ARCHITECTURE.md).
//!
//! Real Linux exercises agentvm here: agentvm's default guest image (built
//! by `agentvm-image` from Debian's cloud kernel, busybox and the guest
//! agent; [`L2Image`] appends the rig's report init to it) boots under the
//! static agentvm binary, either straight on the host when its KVM is
//! hardware VT-x/AMD-V ([`Tier::Direct`]), or inside an L1 Debian guest that
//! QEMU runs in TCG mode with an SVM-capable AMD CPU, where kvm-amd gives
//! agentvm a real /dev/kvm ([`Tier::Nested`], [`L1Image`]). Everything is
//! cached under `$AGENTVM_RIG_CACHE` (default `~/.cache/agentvm/rig`), keyed
//! by package versions and the binaries' hashes.
//!
//! A [`Scenario`] is a list of [`Boot`]s. A boot in a report mode runs the
//! rig's init, which prints `RIG-L2 key=value` markers; a boot in
//! [`GuestMode::Agent`] runs the guest agent, and a script in L1 drives it
//! through `agentvm attach`, printing `RIG-EXEC key=value` markers. Both end
//! up in a [`ScenarioResult`]:
//!
//! ```no_run
//! use agentvm_rig::{Boot, KernelFormat, Rig, Scenario};
//! # fn main() -> Result<(), agentvm_rig::RunError> {
//! let rig = Rig::open()?;
//! let s = Scenario::new("smoke", vec![Boot::agentvm("pvh", KernelFormat::Vmlinux).vcpus(2)]);
//! let r = rig.run(&s)?;
//! let boot = r.boot("pvh").expect("ran");
//! assert_eq!(boot.exit_code(), Some(0));
//! assert_eq!(boot.marker("cpus"), Some("2"));
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod binaries;
pub mod image;
pub mod mock_llm;
pub mod peers;
pub mod runner;
pub mod scenario;
pub mod stamp;
pub mod tools;

pub use agentvm_image::{Cache, ImageError};
pub use image::{L1Image, L2Image, SshPeer, Tmux};
pub use peers::{Peers, PEER_CLOUD_HYPERVISOR_ENV, PEER_FIRECRACKER_ENV};
pub use runner::{required, select_tier, Rig, RunError};
pub use scenario::{
    Boot, BootResult, GuestMode, KernelFormat, Markers, Scenario, ScenarioResult, Tier, Vmm,
};
pub use stamp::VmmExit;

/// The rig's cache: `$AGENTVM_RIG_CACHE`, else `$XDG_CACHE_HOME/agentvm/rig`,
/// else `~/.cache/agentvm/rig`.
pub fn cache() -> Result<Cache, ImageError> {
    Cache::from_env("AGENTVM_RIG_CACHE", "rig")
}

/// An error and its sources on one line (`a: b: c`), for messages that end
/// a test or a binary.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Median of `values` (the mean of the middle two for an even count);
/// `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The `p`-th percentile (0–100) of `values` by nearest rank: the
/// smallest value with at least `p` % of the values at or below it; `None`
/// when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p.clamp(0.0, 100.0) / 100.0 * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn error_chain() {
        let io = std::io::Error::other("disk on fire");
        let e = super::ImageError::io("Cannot read", std::path::Path::new("/x"), io);
        let e = super::RunError::Image(e);
        assert_eq!(
            super::error_chain(&e),
            "Cannot build the rig's images: Cannot read /x: disk on fire"
        );
    }

    #[test]
    fn median() {
        assert_eq!(super::median(&[]), None);
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn percentile() {
        let v: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        assert_eq!(super::percentile(&v, 50.0), Some(100.0));
        assert_eq!(super::percentile(&v, 99.0), Some(198.0));
        assert_eq!(super::percentile(&v, 100.0), Some(200.0));
        assert_eq!(super::percentile(&v, 0.0), Some(1.0));
        assert_eq!(super::percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(super::percentile(&[], 50.0), None);
    }
}
