//! The virtio-vsock queue path: pure and synchronous, generic over the
//! backend that owns the connections and over the interrupt, so unit tests
//! and fuzzers drive it without threads or sockets.
//!
//! Transmit (guest → device): each chain is walked once, every descriptor
//! checked (device-readable, inside guest memory, chain no longer than the
//! queue and ending), and the header plus `hdr.len` payload bytes are copied
//! into host memory before the backend sees them; the guest cannot change a
//! packet after it was checked. A chain that fails is handed to the backend
//! as malformed, with its header if that much was readable.
//!
//! Receive (device → guest): a chain must be device-writable buffers inside
//! guest memory with room for more than a header; the backend then fills it
//! with one packet of at most the room left. Broken chains go back empty.
//!
//! Work per call is bounded by the queue size.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::packet::{Header, HDR_LEN};
use super::MAX_PKT_PAYLOAD;
use crate::virtio::queue::{self as vq, gather, scatter};
use crate::virtio::{GuestMemory, VirtioInterrupt};
use crate::warn_limited;

/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: u16 = 2;

/// What owns the connections: takes guest packets, hands out host packets.
pub trait VsockBackend {
    /// Whether the backend takes guest packets now. `false` while its
    /// answers are backed up waiting for receive buffers.
    fn tx_ready(&self) -> bool;
    /// A well-formed packet from the guest: `payload` is `hdr.len` bytes.
    fn send_pkt(&mut self, hdr: &Header, payload: &[u8]);
    /// A guest packet that could not be read; `hdr` is its header if at
    /// least that much was readable.
    fn malformed(&mut self, hdr: Option<&Header>);
    /// Whether the backend may have packets for the guest.
    fn has_rx(&self) -> bool;
    /// The next packet for the guest, its payload (at most `max_payload`
    /// bytes, `hdr.len` of them) written to `payload` after clearing it.
    fn recv_pkt(&mut self, max_payload: usize, payload: &mut Vec<u8>) -> Option<Header>;
}

/// Errors that stop a queue until the device is reset (every device's
/// queue paths share it).
pub use crate::virtio::queue::QueueError;

/// What one call of [`process_tx`] or [`process_rx`] did.
pub type Progress = vq::Progress<Paused>;

/// Whether a transmit call stopped for the backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    /// Transmit only: the backend was not ready; call again once it is.
    pub paused: bool,
}

/// A chain's buffers as (address, length), already checked against memory.
type Regions = Vec<(GuestAddress, usize)>;

/// Hands the guest's transmitted packets to `backend`.
pub fn process_tx<B, I>(
    mem: &GuestMemory,
    queue: &mut Queue,
    backend: &mut B,
    interrupt: &I,
    scratch: &mut Vec<u8>,
) -> Result<Progress, QueueError>
where
    B: VsockBackend + ?Sized,
    I: VirtioInterrupt + ?Sized,
{
    let mut progress = Progress::default();
    let mut popped = 0;
    while popped < queue.size() {
        if !backend.tx_ready() {
            progress.detail.paused = true;
            break;
        }
        let Some(chain) = vq::next_chain(mem, queue, TX_QUEUE)? else {
            break;
        };
        popped += 1;
        let head = chain.head_index();
        match read_packet(mem, chain, queue.size(), scratch) {
            Ok(hdr) => backend.send_pkt(&hdr, scratch),
            Err(bad) => {
                warn_limited!("virtio-vsock: tx packet {head} dropped: {}", bad.why);
                backend.malformed(bad.hdr.as_ref());
            }
        }
        progress.complete(mem, queue, head, 0, DEVICE);
    }
    progress.finish(mem, queue, TX_QUEUE, popped, interrupt)
}

/// Fills the guest's receive buffers with `backend`'s packets.
pub fn process_rx<B, I>(
    mem: &GuestMemory,
    queue: &mut Queue,
    backend: &mut B,
    interrupt: &I,
    scratch: &mut Vec<u8>,
) -> Result<Progress, QueueError>
where
    B: VsockBackend + ?Sized,
    I: VirtioInterrupt + ?Sized,
{
    let mut progress = Progress::default();
    let mut popped = 0;
    while popped < queue.size() && backend.has_rx() {
        let Some(chain) = vq::next_chain(mem, queue, RX_QUEUE)? else {
            break;
        };
        popped += 1;
        let head = chain.head_index();
        let regions = match writable_regions(mem, chain, queue.size()) {
            Ok(r) => r,
            Err(why) => {
                warn_limited!("virtio-vsock: rx buffer {head} returned empty: {why}");
                progress.complete(mem, queue, head, 0, DEVICE);
                continue;
            }
        };
        let room: usize = regions.iter().map(|(_, len)| len).sum();
        let max_payload = (room - HDR_LEN).min(MAX_PKT_PAYLOAD);
        let Some(hdr) = backend.recv_pkt(max_payload, scratch) else {
            // Nothing after all: the buffer stays the guest's for later.
            queue.go_to_previous_position();
            popped -= 1;
            break;
        };
        let len = write_packet(mem, &regions, &hdr, scratch);
        progress.complete(mem, queue, head, len, DEVICE);
    }
    progress.finish(mem, queue, RX_QUEUE, popped, interrupt)
}

/// The device's name in the used-ring warnings.
const DEVICE: &str = "virtio-vsock";

/// Why a transmitted chain was not a packet.
#[derive(Debug)]
pub struct Malformed {
    /// The header, if at least that much of the chain was readable.
    pub hdr: Option<Header>,
    /// What was wrong.
    pub why: &'static str,
}

/// Copies one transmitted packet into host memory: returns its header and
/// leaves its `hdr.len` payload bytes in `payload`.
pub fn read_packet(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
    payload: &mut Vec<u8>,
) -> Result<Header, Malformed> {
    payload.clear();
    // Collect the readable prefix of the chain; stop at the first problem
    // but keep what came before it, to name the connection if possible.
    let mut regions = Regions::new();
    let mut problem = None;
    let mut last_has_next = false;
    let mut count = 0u16;
    for desc in chain {
        if count >= max_descriptors {
            problem = Some("chain longer than the queue");
            break;
        }
        count += 1;
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            problem = Some("device-writable descriptor");
            break;
        }
        let len = desc.len() as usize;
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            problem = Some("buffer outside guest memory");
            break;
        }
        regions.push((desc.addr(), len));
    }
    if problem.is_none() && count == 0 {
        problem = Some("head descriptor unreadable");
    } else if problem.is_none() && last_has_next {
        // The walk stopped on a descriptor that still points onwards: the
        // next index was out of range or unreadable.
        problem = Some("chain does not end");
    }
    let mut raw = [0u8; HDR_LEN];
    let hdr = gather(mem, &regions, 0, &mut raw).then(|| Header::from_bytes(&raw));
    if let Some(why) = problem {
        return Err(Malformed { hdr, why });
    }
    let Some(hdr) = hdr else {
        return Err(Malformed {
            hdr,
            why: "chain shorter than a header",
        });
    };
    let len = hdr.len as usize;
    if len > MAX_PKT_PAYLOAD {
        return Err(Malformed {
            hdr: Some(hdr),
            why: "payload longer than the maximum packet",
        });
    }
    payload.resize(len, 0);
    if !gather(mem, &regions, HDR_LEN, payload) {
        payload.clear();
        return Err(Malformed {
            hdr: Some(hdr),
            why: "header claims more payload than the chain holds",
        });
    }
    Ok(hdr)
}

/// Walks a receive chain: all device-writable, inside memory, ending, and
/// with room for a header and some data. Lengths are capped at a packet's
/// worth.
pub fn writable_regions(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
) -> Result<Vec<(GuestAddress, usize)>, &'static str> {
    let mut regions = Regions::new();
    let mut room = 0usize;
    let mut last_has_next = false;
    let mut count = 0u16;
    for desc in chain {
        if count >= max_descriptors {
            return Err("chain longer than the queue");
        }
        count += 1;
        last_has_next = desc.has_next();
        if !desc.is_write_only() {
            return Err("device-readable descriptor");
        }
        let len = desc.len() as usize;
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err("buffer outside guest memory");
        }
        let take = len.min(HDR_LEN + MAX_PKT_PAYLOAD - room);
        if take > 0 {
            regions.push((desc.addr(), take));
            room += take;
        }
    }
    if count == 0 {
        return Err("head descriptor unreadable");
    }
    if last_has_next {
        return Err("chain does not end");
    }
    // A header-only buffer could carry control packets but never data,
    // and would block every buffer behind it; no driver posts one.
    if room <= HDR_LEN {
        return Err("no room for a header and data");
    }
    Ok(regions)
}

/// Writes header and payload across `regions` (which have room for both);
/// returns the bytes written, 0 if guest memory failed.
fn write_packet(
    mem: &GuestMemory,
    regions: &[(GuestAddress, usize)],
    hdr: &Header,
    payload: &[u8],
) -> u32 {
    if scatter(mem, regions, 0, &hdr.to_bytes()) && scatter(mem, regions, HDR_LEN, payload) {
        // At most a header plus MAX_PKT_PAYLOAD.
        (HDR_LEN + payload.len()) as u32
    } else {
        warn_limited!("virtio-vsock: cannot write an rx buffer");
        0
    }
}

#[cfg(test)]
mod tests;
