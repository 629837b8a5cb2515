//! The receive path (backend → guest): pure and synchronous, generic over
//! backend and interrupt.
//!
//! A frame goes to the guest behind a `virtio_net_hdr_v1`. Receive chains
//! must be device-writable buffers inside guest memory that end; any other
//! goes back empty at once and never carries a frame.
//!
//! - Without MRG_RXBUF a frame must fit one chain. A chain too small for
//!   the frame at hand goes back empty and the frame waits for the next
//!   one; only after a whole queue's worth of chains too small is the frame
//!   dropped (a driver that never posts buffers for the MTU it accepted
//!   must not stop all traffic).
//! - With MRG_RXBUF a frame spans as many chains as it needs, each filled
//!   up before the next; `num_buffers` in the header says how many. Chains
//!   are taken from the ring and held until the whole frame fits, so a
//!   ring that runs dry mid-frame loses nothing: frame and chains wait for
//!   the driver's next buffers. A frame that the held chains cannot take
//!   when they hold every descriptor of the queue is dropped (and the
//!   chains serve the next frame).
//!
//! The chains of one frame are published to the used ring together, with
//! one update of the used index: a driver polling the ring meanwhile (NAPI)
//! never sees the first chain of a frame without the rest. virtio-queue's
//! `add_used` moves the index per element, so all but the last element are
//! written into the ring directly and the last one goes through `add_used`.
//! That counts the frame once in the queue's interrupt-suppression
//! bookkeeping, which only VIRTIO_RING_F_EVENT_IDX reads; the device does
//! not offer it.
//!
//! Frames longer than the MTU plus an Ethernet header (1514 bytes if the
//! driver did not take VIRTIO_NET_F_MTU) are dropped: the driver sized its
//! buffers for that. Frames stay in the backend while the guest posts no
//! buffers. Work per call: at most one queue's worth of chains and of
//! frames taken from the backend.

use std::collections::VecDeque;

use tracing::{error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::chain::{self, Direction, Regions};
use super::header::{NetHeader, F_DATA_VALID, GSO_NONE, NET_HDR_LEN};
use super::{FrameBackend, Negotiated, QueueError, MAX_FRAME_LEN, RX_QUEUE};
use crate::virtio::queue as vq;
use crate::virtio::warn::LogLimiter;
use crate::virtio::{GuestMemory, VirtioInterrupt};

/// Bytes of an Ethernet header (no VLAN tag).
const ETH_HLEN: usize = 14;
/// The MTU a driver assumes when it does not negotiate VIRTIO_NET_F_MTU.
const DEFAULT_ETH_MTU: usize = 1500;

/// What one call of [`process_rx`] did.
pub type RxProgress = vq::Progress<RxCounts>;

/// What the receive path counts beyond the chains used (frames' and
/// broken ones).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxCounts {
    /// Frames written to the guest.
    pub frames: u16,
    /// Frames dropped (too long, never fitting).
    pub dropped: u16,
    /// A frame waits and the ring ran out of buffers: call again once the
    /// driver posts some.
    pub blocked: bool,
}

/// A receive chain taken from the ring and not yet used.
#[derive(Debug)]
struct Held {
    head: u16,
    regions: Regions,
    room: usize,
    descriptors: u16,
}

/// The receive path's state between calls: the frame at hand and the
/// chains held for it.
#[derive(Debug)]
pub struct RxState {
    negotiated: Negotiated,
    /// The longest frame the driver takes.
    max_frame: usize,
    frame: Option<Vec<u8>>,
    held: VecDeque<Held>,
    held_room: usize,
    /// Descriptors in `held`: when they fill the queue, no more can come.
    held_descriptors: usize,
    /// Chains (without MRG_RXBUF) too small for the frame at hand.
    bounced: u16,
    warnings: LogLimiter,
}

impl RxState {
    /// State for a driver that acknowledged `negotiated`, with `mtu` if it
    /// acknowledged VIRTIO_NET_F_MTU.
    pub fn new(negotiated: Negotiated, mtu: Option<u16>) -> Self {
        let mtu = mtu.map_or(DEFAULT_ETH_MTU, usize::from);
        RxState {
            negotiated,
            max_frame: (mtu + ETH_HLEN).min(MAX_FRAME_LEN),
            frame: None,
            held: VecDeque::new(),
            held_room: 0,
            held_descriptors: 0,
            bounced: 0,
            warnings: LogLimiter::new("virtio-net rx"),
        }
    }

    /// Whether a frame waits here or in `backend`.
    pub fn has_work<B: FrameBackend + ?Sized>(&self, backend: &B) -> bool {
        self.frame.is_some() || backend.has_frames()
    }

    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        if self.warnings.allow() {
            warn!("virtio-net: {what}");
        }
    }
}

/// Writes the frames `backend` has for the guest into the buffers it made
/// available in `queue`.
pub fn process_rx<B, I>(
    mem: &GuestMemory,
    queue: &mut Queue,
    backend: &mut B,
    interrupt: &I,
    state: &mut RxState,
) -> Result<RxProgress, QueueError>
where
    B: FrameBackend + ?Sized,
    I: VirtioInterrupt + ?Sized,
{
    let mut progress = RxProgress::default();
    let bound = queue.size();
    let mut popped = 0u16;
    let mut taken = 0u16;
    'frames: loop {
        let need = match &state.frame {
            Some(frame) => NET_HDR_LEN + frame.len(),
            None => {
                if taken >= bound {
                    progress.more_pending = backend.has_frames();
                    break;
                }
                let Some(frame) = backend.pop_frame() else {
                    break;
                };
                taken += 1;
                if frame.len() > state.max_frame || frame.is_empty() {
                    progress.detail.dropped += 1;
                    let (len, max) = (frame.len(), state.max_frame);
                    state.warn(format_args!("rx frame of {len} bytes dropped (max {max})"));
                    continue;
                }
                let need = NET_HDR_LEN + frame.len();
                state.frame = Some(frame);
                state.bounced = 0;
                need
            }
        };
        // Take chains until the frame fits in those held.
        while state.held_room < need {
            if state.held_descriptors >= usize::from(bound) {
                // Every buffer the queue can hold is not enough.
                state.frame = None;
                progress.detail.dropped += 1;
                state.warn(format_args!(
                    "rx frame of {need} bytes dropped: larger than the whole ring"
                ));
                continue 'frames;
            }
            if popped >= bound {
                progress.more_pending = true;
                break 'frames;
            }
            let Some(chain) = vq::next_chain(mem, queue, RX_QUEUE)? else {
                progress.detail.blocked = true;
                break 'frames;
            };
            popped += 1;
            let head = chain.head_index();
            let cap = NET_HDR_LEN + state.max_frame;
            let walked = match chain::walk(mem, chain, bound, Direction::Write, cap) {
                Ok(walked) => walked,
                Err(why) => {
                    state.warn(format_args!("rx chain {head} returned empty: {why}"));
                    progress.complete(mem, queue, head, 0, "virtio-net");
                    continue;
                }
            };
            let room = walked.total;
            if room < NET_HDR_LEN {
                state.warn(format_args!("rx chain {head} returned empty: {room} bytes"));
                progress.complete(mem, queue, head, 0, "virtio-net");
                continue;
            }
            if !state.negotiated.mrg_rxbuf && room < need {
                // Without MRG_RXBUF the frame needs one chain that fits it.
                progress.complete(mem, queue, head, 0, "virtio-net");
                state.bounced += 1;
                if state.bounced >= bound {
                    state.frame = None;
                    progress.detail.dropped += 1;
                    state.warn(format_args!(
                        "rx frame of {need} bytes dropped: no buffer fits it"
                    ));
                    continue 'frames;
                }
                state.warn(format_args!(
                    "rx chain {head} of {room} bytes too small for {need}, returned empty"
                ));
                continue;
            }
            state.held_room += room;
            state.held_descriptors += usize::from(walked.descriptors);
            state.held.push_back(Held {
                head,
                regions: walked.regions,
                room,
                descriptors: walked.descriptors,
            });
        }
        let Some(frame) = state.frame.take() else {
            continue;
        };
        if deliver(mem, queue, state, &frame, &mut progress) {
            progress.detail.frames += 1;
        } else {
            progress.detail.dropped += 1;
        }
        backend.recycle(frame);
    }
    vq::signal_used(mem, queue, RX_QUEUE, progress.completed, interrupt)?;
    Ok(progress)
}

/// Writes header and `frame` across the first held chains (which have room
/// for both) and publishes them. False if guest memory failed (the chains
/// then go back empty).
fn deliver(
    mem: &GuestMemory,
    queue: &mut Queue,
    state: &mut RxState,
    frame: &[u8],
    progress: &mut RxProgress,
) -> bool {
    let need = NET_HDR_LEN + frame.len();
    let mut chains = Vec::new();
    let mut room = 0;
    while room < need {
        let Some(held) = state.held.pop_front() else {
            break;
        };
        room += held.room;
        state.held_room -= held.room;
        state.held_descriptors -= usize::from(held.descriptors);
        chains.push(held);
    }
    let hdr = NetHeader {
        flags: if state.negotiated.guest_csum {
            F_DATA_VALID
        } else {
            0
        },
        gso_type: GSO_NONE,
        // At most a queue's worth of chains.
        num_buffers: u16::try_from(chains.len()).unwrap_or(u16::MAX),
        ..NetHeader::default()
    }
    .to_bytes();
    let mut used = Vec::with_capacity(chains.len());
    let mut written = 0;
    let mut ok = room >= need;
    for held in &chains {
        let n = held.room.min(need - written);
        ok = ok && write_part(mem, &held.regions, &hdr, frame, written, n);
        written += n;
        // n is at most a frame and a header.
        used.push((held.head, n as u32));
    }
    if !ok {
        error!("virtio-net: cannot write an rx frame to guest memory");
        for held in &chains {
            progress.complete(mem, queue, held.head, 0, "virtio-net");
        }
        return false;
    }
    progress.completed += publish(mem, queue, &used);
    true
}

/// Writes bytes `[from, from + n)` of the stream "header then frame" to
/// the start of a chain's `regions`. Only the first chain holds the header
/// (every chain has room for one).
fn write_part(
    mem: &GuestMemory,
    regions: &[(GuestAddress, usize)],
    hdr: &[u8; NET_HDR_LEN],
    frame: &[u8],
    from: usize,
    n: usize,
) -> bool {
    let end = from + n;
    let mut at = 0;
    if from < NET_HDR_LEN {
        let part = &hdr[from..end.min(NET_HDR_LEN)];
        if !vq::scatter(mem, regions, 0, part) {
            return false;
        }
        at = part.len();
    }
    let frame_from = from.max(NET_HDR_LEN) - NET_HDR_LEN;
    let frame_end = end.saturating_sub(NET_HDR_LEN);
    frame_from >= frame_end || vq::scatter(mem, regions, at, &frame[frame_from..frame_end])
}

/// Puts `used` (head, length) in the used ring with a single move of the
/// used index (see the module docs). Returns how many were published.
fn publish(mem: &GuestMemory, queue: &mut Queue, used: &[(u16, u32)]) -> u16 {
    let Some((&(last_head, last_len), first)) = used.split_last() else {
        return 0;
    };
    let size = queue.size();
    let start = queue.next_used();
    for (i, &(head, len)) in first.iter().enumerate() {
        // At most a queue's worth of chains.
        let slot = start.wrapping_add(i as u16) % size;
        let addr = queue
            .used_ring()
            .checked_add(4 + 8 * u64::from(slot))
            .map(GuestAddress);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let written = head < size && addr.is_some_and(|a| mem.write_slice(&elem, a).is_ok());
        if !written {
            // The used ring was checked at activation and the heads came
            // from chains that walked: only a broken invariant gets here.
            // Nothing was published; the chains are lost until reset.
            error!("virtio-net: cannot write the used ring");
            return 0;
        }
    }
    queue.set_next_used(start.wrapping_add(first.len() as u16));
    if vq::complete(mem, queue, last_head, last_len, "virtio-net") {
        used.len() as u16
    } else {
        queue.set_next_used(start);
        0
    }
}

#[cfg(test)]
mod tests;
