//! The virtio-net device: what the transport sees (type 1, an rx and a tx
//! queue, the features of the [module docs](super), MAC / status / MTU in
//! config space) and the switch between idle and running. The backend
//! lives here while the device is idle and in the worker while it runs.

use agentvm_net::addr::GUEST_MAC;
use agentvm_net::NetStack;
use virtio_bindings::bindings::virtio_net as bindings;
use vmm_sys_util::timerfd::TimerFd;

use super::handler::NetHandler;
use super::{FrameBackend, MAX_FRAME_LEN};
use crate::virtio::worker::WorkerSlot;
use crate::virtio::{
    device_type, read_config_from, ActivateError, ActivationContext, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;

/// The MTU offered by default: the largest IPv4 packet that fits 64 KiB
/// frames with room to spare, as passt and slirp4netns use.
pub const DEFAULT_MTU: u16 = 65520;

/// The smallest MTU accepted (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// The largest MTU accepted: an MTU-sized frame with its Ethernet header
/// is at most [`MAX_FRAME_LEN`].
pub const MAX_MTU: u16 = (MAX_FRAME_LEN - 14) as u16;

/// Feature bits of virtio-net (virtio 1.2 §5.1.3) this device knows.
pub mod features {
    use super::bindings as b;

    /// Device completes the guest's L4 checksums.
    pub const CSUM: u64 = 1 << b::VIRTIO_NET_F_CSUM;
    /// Frames to the guest carry valid checksums.
    pub const GUEST_CSUM: u64 = 1 << b::VIRTIO_NET_F_GUEST_CSUM;
    /// Config space holds the MTU.
    pub const MTU: u64 = 1 << b::VIRTIO_NET_F_MTU;
    /// Config space holds the MAC address.
    pub const MAC: u64 = 1 << b::VIRTIO_NET_F_MAC;
    /// Guest may receive TCPv4 GSO frames (not offered).
    pub const GUEST_TSO4: u64 = 1 << b::VIRTIO_NET_F_GUEST_TSO4;
    /// Guest may send TCPv4 GSO frames.
    pub const HOST_TSO4: u64 = 1 << b::VIRTIO_NET_F_HOST_TSO4;
    /// Guest may send TCPv6 GSO frames.
    pub const HOST_TSO6: u64 = 1 << b::VIRTIO_NET_F_HOST_TSO6;
    /// Guest may send GSO frames with ECN.
    pub const HOST_ECN: u64 = 1 << b::VIRTIO_NET_F_HOST_ECN;
    /// Frames to the guest may span several receive chains.
    pub const MRG_RXBUF: u64 = 1 << b::VIRTIO_NET_F_MRG_RXBUF;
    /// Config space holds the link status.
    pub const STATUS: u64 = 1 << b::VIRTIO_NET_F_STATUS;
}

/// Everything the device offers.
pub const OFFERED_FEATURES: u64 = VIRTIO_F_VERSION_1
    | features::CSUM
    | features::GUEST_CSUM
    | features::MTU
    | features::MAC
    | features::HOST_TSO4
    | features::HOST_TSO6
    | features::HOST_ECN
    | features::MRG_RXBUF
    | features::STATUS;

/// Config-space offsets of `struct virtio_net_config`.
pub mod config {
    /// `mac[6]`.
    pub const MAC: u64 = 0;
    /// `le16 status`.
    pub const STATUS: u64 = 6;
    /// `le16 max_virtqueue_pairs`.
    pub const MAX_VIRTQUEUE_PAIRS: u64 = 8;
    /// `le16 mtu`.
    pub const MTU: u64 = 10;
    /// Bytes of the fields the device offers.
    pub const LEN: usize = 12;
}

/// The config space of a device with `mac` and `mtu`: link up, one queue
/// pair (shared with the vhost-user backend, whose frontend reads it).
pub fn config_space(mac: [u8; 6], mtu: u16) -> [u8; config::LEN] {
    let mut c = [0u8; config::LEN];
    c[..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&(bindings::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.to_le_bytes());
    c
}

/// Errors configuring a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// The MTU is outside what frames of at most 64 KiB allow.
    #[error("MTU {0} is outside {MIN_MTU}..={MAX_MTU}")]
    Mtu(u16),
    /// A worker panicked and took the backend with it; the device cannot
    /// run again.
    #[error("The network backend was lost with a panicked worker")]
    BackendLost,
}

/// A network device (virtio 1.2 §5.1) in front of a [`FrameBackend`],
/// by default the user-mode stack of `agentvm-net`.
///
/// The backend is created by the caller (with the same MTU in its
/// `StackConfig`) and kept across device resets, so a guest that reloads
/// its driver finds the same network.
pub struct Net<B: FrameBackend = NetStack> {
    mac: [u8; 6],
    mtu: u16,
    backend: Option<B>,
    worker: WorkerSlot<NetHandler<B>>,
}

impl<B: FrameBackend> Net<B> {
    /// A device with MAC address `mac` (e.g. [`GUEST_MAC`]) and the
    /// [`DEFAULT_MTU`], in front of `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Self {
        Net {
            mac,
            mtu: DEFAULT_MTU,
            backend: Some(backend),
            worker: WorkerSlot::new("virtio-net", device_type::NET),
        }
    }

    /// A device with the default MAC address.
    pub fn with_default_mac(backend: B) -> Self {
        Self::new(backend, GUEST_MAC)
    }

    /// Sets the MTU offered to the guest.
    pub fn with_mtu(mut self, mtu: u16) -> Result<Self, NetConfigError> {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(NetConfigError::Mtu(mtu));
        }
        self.mtu = mtu;
        Ok(self)
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Whether a worker is running the queues.
    pub fn is_active(&self) -> bool {
        self.worker.is_active()
    }

    /// The backend, while the device is idle (it lives in the worker while
    /// the device runs).
    pub fn backend(&self) -> Option<&B> {
        self.backend.as_ref()
    }

    /// The backend, mutably, while the device is idle.
    pub fn backend_mut(&mut self) -> Option<&mut B> {
        self.backend.as_mut()
    }

    fn config_bytes(&self) -> [u8; config::LEN] {
        config_space(self.mac, self.mtu)
    }
}

impl<B: FrameBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_from(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, mut ctx: ActivationContext) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        let queues = ctx.take_queues()?;
        let timer = TimerFd::new().map_err(|e| ActivateError::Backend(Box::new(e)))?;
        let Some(backend) = self.backend.take() else {
            return Err(ActivateError::Backend(Box::new(
                NetConfigError::BackendLost,
            )));
        };
        let mtu = (ctx.acked_features & features::MTU != 0).then_some(self.mtu);
        let interrupt = ctx.interrupt.clone();
        let handler = NetHandler::new(
            ctx.mem,
            queues,
            ctx.interrupt,
            backend,
            timer,
            ctx.acked_features,
            mtu,
        );
        // A failed spawn drops the handler, and the backend with it.
        self.worker.start(handler, interrupt)
    }

    fn reset(&mut self) -> bool {
        // A lost worker took the backend with it: the next activation
        // fails with BackendLost.
        if let Some(handler) = self.worker.stop() {
            self.backend = Some(handler.into_backend());
        }
        true
    }
}
