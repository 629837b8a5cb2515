//! agentvm-net: the user-mode network stack that sits behind agentvm's
//! virtio-net device and enforces the egress policy.
//!
//! The stack is frame-in / frame-out and knows nothing of virtio. This crate
//! is a placeholder until the networking issue lands; it exists now so the
//! dependency direction (cli → vmm → devices → net-filter) is fixed from the
//! start.
#![deny(missing_docs)]

/// Network egress modes a VM can run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No frame leaves the VMM.
    #[default]
    Off,
    /// Only allowlisted names resolve, and only their addresses are reachable.
    Filtered,
    /// Everything is NATed out (host loopback and metadata stay unreachable).
    Open,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "filtered" => Ok(Mode::Filtered),
            "open" => Ok(Mode::Open),
            other => Err(format!(
                "unknown network mode `{other}` (expected off, filtered or open)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_the_three_names_and_rejects_others() {
        assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
        assert_eq!("filtered".parse::<Mode>(), Ok(Mode::Filtered));
        assert_eq!("open".parse::<Mode>(), Ok(Mode::Open));
        assert!("bridge".parse::<Mode>().unwrap_err().contains("bridge"));
    }
}
