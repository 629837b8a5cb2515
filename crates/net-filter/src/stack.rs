//! [`NetStack`]: placeholder API while the stack is written (this file is
//! replaced by the real stack; signatures are final).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Audit, Policy};

/// Errors starting a stack.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The epoll instance or a host socket could not be created.
    #[error("Cannot set up the network stack's host side")]
    Host(#[source] std::io::Error),
}

/// How a stack starts.
#[derive(Debug, Clone, Default)]
pub struct StackConfig {
    /// The egress policy.
    pub policy: Policy,
    /// Where decisions are recorded.
    pub audit: Audit,
    /// Upstream DNS resolvers; empty: the host's (from /etc/resolv.conf).
    pub resolvers: Vec<SocketAddr>,
    /// The largest IP packet either side sends (the MTU the device tells
    /// the guest); 0: 65520.
    pub mtu: usize,
}

/// Counters of a stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Frames taken from the guest.
    pub frames_in: u64,
    /// Frames handed to the guest.
    pub frames_out: u64,
    /// Frames dropped (malformed, spoofed, unsupported, mode off).
    pub dropped: u64,
    /// Open TCP connections.
    pub tcp_flows: usize,
    /// Open UDP flows.
    pub udp_flows: usize,
}

/// Replaces the policy of a running stack from another thread.
#[derive(Clone)]
pub struct NetHandle {
    policy: Arc<Mutex<Policy>>,
}

impl NetHandle {
    /// The policy in force.
    pub fn policy(&self) -> Policy {
        match self.policy.lock() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the policy; the stack applies it at its next poll
    /// (closing flows the new policy denies, keeping the rest).
    pub fn set_policy(&self, policy: Policy) {
        match self.policy.lock() {
            Ok(mut p) => *p = policy,
            Err(p) => *p.into_inner() = policy,
        }
    }
}

/// The user-mode network stack of one VM.
pub struct NetStack {
    handle: NetHandle,
    fd: std::fs::File,
}

impl NetStack {
    /// Starts a stack (no frames flow until the guest sends some).
    pub fn new(config: StackConfig) -> Result<Self, NetError> {
        Ok(NetStack {
            handle: NetHandle {
                policy: Arc::new(Mutex::new(config.policy)),
            },
            fd: std::fs::File::open("/dev/null").map_err(NetError::Host)?,
        })
    }

    /// A handle to replace the policy from another thread.
    pub fn handle(&self) -> NetHandle {
        self.handle.clone()
    }

    /// Takes one Ethernet frame (no virtio header) the guest sent.
    pub fn push_frame(&mut self, frame: &[u8]) {
        let _ = frame;
    }

    /// The next frame for the guest, if any.
    pub fn pop_frame(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        false
    }

    /// Does the pending work: host socket events, timers, frames taken.
    pub fn poll(&mut self) {}

    /// How long until [`NetStack::poll`] must run again even if nothing
    /// happens (`None`: only when the fd or a frame says so).
    pub fn poll_delay(&mut self) -> Option<Duration> {
        None
    }

    /// Counters.
    pub fn stats(&self) -> StackStats {
        StackStats::default()
    }
}

impl AsRawFd for NetStack {
    /// Readable when host sockets have news (an epoll fd).
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
