//! virtio-net (virtio 1.2 §5.1) in front of a frame backend: the user-mode
//! network stack of `agentvm-net` in a VM, anything implementing
//! [`FrameBackend`] in tests.
//!
//! Layers, as in every device here:
//! - [`device`]: the [`VirtioDevice`](crate::virtio::VirtioDevice) impl:
//!   features, the config space (MAC, link status, MTU), and the switch
//!   between idle and running. The backend moves into the worker at
//!   activation and comes back on reset, so a re-activated device keeps
//!   its stack (and every flow in it).
//! - [`handler`]: the worker-thread subscriber: the two queue
//!   notifications, the backend's fd and a timer armed from
//!   [`FrameBackend::poll_delay`], mapped to calls.
//! - [`tx`] and [`rx`]: the pure queue paths, generic over backend and
//!   interrupt; [`header`]: the `virtio_net_hdr_v1` and the checksum work.
//!
//! # Features
//!
//! Offered: VERSION_1, MAC, STATUS, MTU (65520 by default: the stack
//! terminates TCP, so large frames are where throughput comes from),
//! MRG_RXBUF, CSUM, GUEST_CSUM, HOST_TSO4, HOST_TSO6 and HOST_ECN.
//!
//! - CSUM: the guest may leave a frame's L4 checksum to us
//!   (`VIRTIO_NET_HDR_F_NEEDS_CSUM`). Our stack would not look at it, but
//!   the device completes it anyway (bounds-checked, at `csum_start` /
//!   `csum_offset`) so every frame a backend sees is correct on the wire.
//! - HOST_TSO4/6 (+ HOST_ECN): the guest may send one TCP segment of up to
//!   64 KiB instead of MTU-sized ones. The stack terminates TCP, so it takes
//!   the big segment as one frame: the device completes its checksum and
//!   passes it on unsegmented. ECN changes nothing when nothing is
//!   segmented (the CWR flag is on the one segment there is).
//! - GUEST_CSUM: frames from the backend carry correct checksums (the
//!   stack builds them), so they are marked `VIRTIO_NET_HDR_F_DATA_VALID`
//!   and the guest skips verifying them.
//! - Not offered: GUEST_TSO4/6 and GUEST_UFO. Frames we hand the guest are
//!   never larger than the MTU, so we would never use them; offering them
//!   would only make a driver without MRG_RXBUF post 64 KiB buffers for
//!   nothing. Neither the control queue, multiqueue, nor
//!   VIRTIO_RING_F_EVENT_IDX (see [`rx`] on how a frame's chains are
//!   published) nor indirect descriptors.
//!
//! Only what the driver acknowledged is used: without MRG_RXBUF every frame
//! must fit one receive chain; the header is 12 bytes either way (VERSION_1).
//!
//! # A hostile guest
//!
//! Every loop is bounded by one queue's worth of chains per call (then the
//! handler comes back through the queue's own notification), every
//! descriptor is checked (direction, inside guest memory, chains that end),
//! and a transmitted frame is copied into host memory before anything looks
//! at it. Broken transmit chains are returned empty with a rate-limited
//! warning; broken receive chains are returned empty and never receive a
//! frame. Frames for a guest that posts no receive buffers stay in the
//! backend, which bounds them.

pub mod backend;
pub mod device;
pub mod handler;
pub mod header;
pub mod rx;
pub mod tx;

mod chain;

use std::os::fd::AsRawFd;
use std::time::Duration;

pub use device::{Net, NetConfigError, DEFAULT_MTU, QUEUE_SIZE};
pub use header::{NetHeader, NET_HDR_LEN};

/// Index of the receive queue (device → guest).
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue (guest → device).
pub const TX_QUEUE: u16 = 1;

/// The longest Ethernet frame (without the virtio header) either way: a
/// 64 KiB TSO segment. Longer transmit chains are dropped; longer frames
/// from the backend too.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// What sits behind the device: takes the guest's Ethernet frames and hands
/// out frames for it. The fd ([`AsRawFd`]) is watched level-triggered:
/// readable means the backend has host-side work and wants
/// [`FrameBackend::poll`].
pub trait FrameBackend: AsRawFd + Send + 'static {
    /// Takes one Ethernet frame the guest sent (no virtio header).
    fn push_frame(&mut self, frame: &[u8]);
    /// The next frame for the guest, if any.
    fn pop_frame(&mut self) -> Option<Vec<u8>>;
    /// Whether frames wait for the guest.
    fn has_frames(&self) -> bool;
    /// Takes back a frame [`FrameBackend::pop_frame`] gave once its bytes
    /// are in guest memory, to reuse its buffer (by default it is freed).
    fn recycle(&mut self, frame: Vec<u8>) {
        drop(frame);
    }
    /// Does the pending work (host sockets, timers, frames taken).
    fn poll(&mut self);
    /// How long until [`FrameBackend::poll`] must run again even if nothing
    /// happens; `None`: only when the fd or a frame says so.
    fn poll_delay(&mut self) -> Option<Duration>;
}

/// Errors that stop a queue until the device is reset (every device's
/// queue paths share it).
pub use crate::virtio::queue::QueueError;

/// The features the driver acknowledged that change what the queue paths
/// do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several receive chains.
    pub mrg_rxbuf: bool,
    /// VIRTIO_NET_F_GUEST_CSUM: frames to the guest are marked DATA_VALID.
    pub guest_csum: bool,
    /// VIRTIO_NET_F_HOST_TSO4: the guest may send TCPv4 GSO frames.
    pub host_tso4: bool,
    /// VIRTIO_NET_F_HOST_TSO6: the guest may send TCPv6 GSO frames.
    pub host_tso6: bool,
    /// VIRTIO_NET_F_HOST_ECN: GSO frames may carry the ECN bit.
    pub host_ecn: bool,
}

impl Negotiated {
    /// Picks the relevant bits out of the acknowledged feature set.
    pub fn from_features(acked: u64) -> Self {
        use device::features as f;
        Negotiated {
            mrg_rxbuf: acked & f::MRG_RXBUF != 0,
            guest_csum: acked & f::GUEST_CSUM != 0,
            host_tso4: acked & f::HOST_TSO4 != 0,
            host_tso6: acked & f::HOST_TSO6 != 0,
            host_ecn: acked & f::HOST_ECN != 0,
        }
    }
}
