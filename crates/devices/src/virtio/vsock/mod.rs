//! virtio-vsock (virtio 1.2 §5.10) with a Firecracker-compatible hybrid host
//! side: guest stream sockets become host Unix sockets.
//!
//! - A host client connects to the device's Unix socket `UDS`, writes
//!   `CONNECT <port>\n`, and once the guest accepted on `<port>` reads
//!   `OK <host_port>\n`; from then on the socket carries the stream.
//! - A guest connection to host port `P` is connected to the Unix socket
//!   `UDS_P`; if nothing listens there the guest gets a reset.
//!
//! Layers, as in every device here:
//! - [`device`]: the [`VirtioDevice`](crate::virtio::VirtioDevice) impl, the
//!   config space (guest CID) and the listening socket's life;
//! - [`handler`]: the worker-thread subscriber: maps fd tokens to calls;
//! - [`queue`]: the pure queue path, generic over a [`VsockBackend`]: copies
//!   each guest packet into host memory before anything looks at it, and
//!   writes host packets into guest receive buffers;
//! - [`muxer`] and `connection`: the backend: the connection table, the
//!   per-connection state machine and credit-based flow control, and the
//!   host sockets;
//! - [`packet`]: the packet header and protocol constants.
//!
//! # Limits
//!
//! The guest is untrusted, so everything the device holds is bounded:
//! [`MAX_CONNECTIONS`] sockets (connected or still sending their CONNECT
//! line), [`CONN_BUF_ALLOC`] bytes buffered per connection towards the host
//! (the credit the guest gets; it grows back only as the host socket takes
//! bytes), [`MAX_PKT_PAYLOAD`] bytes per packet, [`MAX_CONNECT_LINE`] bytes
//! of CONNECT line, and [`MAX_PENDING_RESETS`] queued resets before the
//! device stops reading the guest's transmit queue. Host-to-guest data is
//! never buffered: it is read from the host socket straight into a guest
//! receive buffer, and only as far as the guest's credit allows. The worst
//! case, every connection's host peer not reading, holds
//! `MAX_CONNECTIONS × CONN_BUF_ALLOC` = 128 MiB.
//!
//! The device offers no feature bits beyond VIRTIO_F_VERSION_1 (stream
//! sockets are implied) and never uses the event queue: a transport reset
//! event only matters after migration.

pub mod device;
pub mod handler;
pub mod muxer;
pub mod packet;
pub mod queue;

mod connection;
pub mod unix;

pub use device::{Vsock, VsockError, DEFAULT_GUEST_CID};
pub use queue::VsockBackend;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How often the device's connection cap was hit, shared with whoever
/// reports it (`agentvm status`).
#[derive(Debug, Clone, Default)]
pub struct VsockCounters {
    refused: Arc<AtomicU64>,
}

impl VsockCounters {
    /// Connections (host clients' and the guest's) refused because
    /// [`MAX_CONNECTIONS`] were open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// The most connections (and host clients still sending their CONNECT
/// line) the device keeps at once; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;

/// The receive buffer each connection advertises to the guest
/// (`buf_alloc`): the most guest data the device holds for a host socket
/// that does not read.
pub const CONN_BUF_ALLOC: u32 = 128 * 1024;

/// The most payload one packet carries, either way (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`). Longer guest packets are malformed.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;

/// The longest `CONNECT <port>\n` line a host client may send, newline
/// included.
pub const MAX_CONNECT_LINE: usize = 32;

/// Connectionless resets (answers to guest packets for unknown
/// connections) queued for the guest before the device stops taking
/// packets from the transmit queue until the guest posts receive buffers.
pub const MAX_PENDING_RESETS: usize = 256;
