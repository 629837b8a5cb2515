//! The vhost-user side of the device: the handshake with virtiofsd over the
//! `vhost` crate's [`Frontend`].
//!
//! At connection ([`VhostUserFs::connect`]): SET_OWNER, GET_FEATURES and,
//! when offered, the protocol features (we take REPLY_ACK, so every
//! request is confirmed and a refusal surfaces at once, and MQ, to check
//! the backend serves our queues). At activation
//! ([`VhostUserFs::activate`]): SET_FEATURES with what the driver
//! acknowledged, SET_MEM_TABLE with the memfd behind every guest RAM
//! region, and per queue SET_VRING_NUM / ADDR / BASE / CALL / KICK /
//! ENABLE. The kick fd is the transport's notify eventfd (the ioeventfd
//! under KVM), so guest notifications reach virtiofsd without passing
//! through the VMM; the call fds are the device's own, relayed to the
//! guest as interrupts by the [handler](super::handler).
//!
//! Ring addresses go to the backend as addresses in *our* address space,
//! as vhost-user wants: the backend maps the same memfd regions and
//! translates through the `userspace_addr` of each region in the table.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::NUM_QUEUES;
use crate::virtio::{ActiveQueue, GuestMemory, VIRTIO_F_VERSION_1};

/// VIRTIO_RING_F_INDIRECT_DESC.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// VIRTIO_RING_F_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// The backend features we pass on to the guest. Everything else stays
/// hidden: packed rings and notification data would not survive our
/// split-ring virtio-mmio transport, and VIRTIO_FS_F_NOTIFICATION would
/// need a queue we do not offer.
pub const GUEST_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;
/// The protocol features we use when offered.
const PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

/// Errors of the vhost-user handshake.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The socket's timeouts could not be set.
    #[error("Cannot set timeouts on the vhost-user socket")]
    Timeouts(#[source] io::Error),
    /// A vhost-user request failed or was refused.
    #[error("vhost-user {step} failed")]
    Request {
        /// The request.
        step: &'static str,
        /// What went wrong.
        #[source]
        source: vhost::Error,
    },
    /// The backend is not a modern virtio device.
    #[error("The backend does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    /// The backend serves fewer queues than the device has.
    #[error("The backend serves {got} queues; the device needs {need}")]
    QueueCount {
        /// Queues the device needs.
        need: usize,
        /// Queues the backend serves.
        got: u64,
    },
    /// A guest RAM region is not backed by a file the backend can map.
    #[error("Guest memory at {0:#x} is not file-backed, so virtiofsd cannot map it")]
    NotShareable(u64),
    /// A ring address is not in guest memory.
    #[error("Queue {queue}: ring address {addr:#x} is not in guest memory")]
    RingAddress {
        /// Queue index.
        queue: usize,
        /// The guest-physical address.
        addr: u64,
    },
    /// The device was activated with a different number of queues or call
    /// eventfds.
    #[error("Activation with {queues} queues and {calls} call eventfds; need {need} of each")]
    Queues {
        /// Queues given.
        queues: usize,
        /// Call eventfds given.
        calls: usize,
        /// Queues the device has.
        need: usize,
    },
}

fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> BackendError {
    move |source| BackendError::Request { step, source }
}

/// A connected, owned vhost-user-fs backend.
pub struct VhostUserFs {
    frontend: Frontend,
    features: u64,
    protocol: VhostUserProtocolFeatures,
}

impl VhostUserFs {
    /// Takes over `stream` (connected to virtiofsd), sets it to give up on
    /// any reply after `timeout`, and runs the first half of the
    /// handshake.
    pub fn connect(stream: UnixStream, timeout: Duration) -> Result<Self, BackendError> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(BackendError::Timeouts)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(BackendError::Timeouts)?;
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let features = frontend.get_features().map_err(step("GET_FEATURES"))?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(BackendError::NotModern);
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            protocol = offered & PROTOCOL_FEATURES;
            frontend
                .set_protocol_features(protocol)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let got = frontend.get_queue_num().map_err(step("GET_QUEUE_NUM"))?;
                if got < NUM_QUEUES as u64 {
                    return Err(BackendError::QueueCount {
                        need: NUM_QUEUES,
                        got,
                    });
                }
            }
        }
        Ok(VhostUserFs {
            frontend,
            features,
            protocol,
        })
    }

    /// The virtio features the backend offers, as the guest should see them.
    pub fn guest_features(&self) -> u64 {
        self.features & GUEST_FEATURES
    }

    /// The fd of the vhost-user socket: readable (EOF) once the backend is
    /// gone, since it never speaks unasked.
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }

    /// The second half of the handshake: features the driver acknowledged,
    /// guest memory, and the queues with their kick (`notify`) and `calls`
    /// eventfds. From here on virtiofsd serves the rings.
    pub fn activate(
        &mut self,
        mem: &GuestMemory,
        queues: &[ActiveQueue],
        calls: &[EventFd],
        acked_features: u64,
    ) -> Result<(), BackendError> {
        if queues.len() != NUM_QUEUES || calls.len() != NUM_QUEUES {
            return Err(BackendError::Queues {
                queues: queues.len(),
                calls: calls.len(),
                need: NUM_QUEUES,
            });
        }
        let uses_protocol = self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let mut features = acked_features & self.guest_features();
        if uses_protocol {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        let f = &mut self.frontend;
        f.set_features(features).map_err(step("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|_| BackendError::NotShareable(r.start_addr().0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        f.set_mem_table(&regions).map_err(step("SET_MEM_TABLE"))?;
        for (index, (active, call)) in queues.iter().zip(calls).enumerate() {
            let q = &active.queue;
            let host = |addr: u64| {
                mem.get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|_| BackendError::RingAddress { queue: index, addr })
            };
            let config = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            f.set_vring_num(index, q.size())
                .map_err(step("SET_VRING_NUM"))?;
            f.set_vring_addr(index, &config)
                .map_err(step("SET_VRING_ADDR"))?;
            f.set_vring_base(index, q.next_avail())
                .map_err(step("SET_VRING_BASE"))?;
            // The call fd before the kick fd: the backend may start on the
            // kick at once, and its first completion must find a call fd.
            f.set_vring_call(index, call)
                .map_err(step("SET_VRING_CALL"))?;
            f.set_vring_kick(index, &active.notify)
                .map_err(step("SET_VRING_KICK"))?;
            if uses_protocol {
                f.set_vring_enable(index, true)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        tracing::debug!(
            features,
            protocol = self.protocol.bits(),
            "virtio-fs: vhost-user backend set up"
        );
        Ok(())
    }
}
