//! The transmit path (guest → backend): pure and synchronous, generic over
//! backend and interrupt.
//!
//! Each chain is walked once and checked (device-readable, inside guest
//! memory, ending, no longer than the queue), then copied whole into host
//! memory: header and frame are read from that copy only, so the guest
//! cannot change a frame after it was checked. A chain shorter than the
//! header or longer than [`MAX_FRAME_LEN`] plus the header is dropped; so
//! is a GSO frame of a kind the driver did not negotiate, or one whose
//! checksum field lies outside it. Every chain goes back with length 0
//! (the device writes nothing). At most one queue's worth of chains per
//! call.

use tracing::warn;
use virtio_queue::{Queue, QueueT};

use super::chain::{self, Direction};
use super::header::{
    complete_checksum, CsumError, NetHeader, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6,
    NET_HDR_LEN,
};
use super::{FrameBackend, Negotiated, QueueError, MAX_FRAME_LEN, TX_QUEUE};
use crate::virtio::queue as vq;
use crate::virtio::warn::LogLimiter;
use crate::virtio::{GuestMemory, VirtioInterrupt};

/// What one call of [`process_tx`] did.
pub type TxProgress = vq::Progress<TxCounts>;

/// What the transmit path counts beyond the chains used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxCounts {
    /// Frames handed to the backend.
    pub frames: u16,
    /// Chains dropped as malformed.
    pub dropped: u16,
}

/// The transmit path's state between calls.
#[derive(Debug)]
pub struct TxState {
    negotiated: Negotiated,
    /// Header and frame of the chain at hand, reused.
    scratch: Vec<u8>,
    warnings: LogLimiter,
}

impl TxState {
    /// State for a driver that acknowledged `negotiated`.
    pub fn new(negotiated: Negotiated) -> Self {
        TxState {
            negotiated,
            scratch: Vec::with_capacity(NET_HDR_LEN + MAX_FRAME_LEN),
            warnings: LogLimiter::new("virtio-net tx"),
        }
    }
}

/// Hands the frames the guest made available in `queue` to `backend`.
pub fn process_tx<B, I>(
    mem: &GuestMemory,
    queue: &mut Queue,
    backend: &mut B,
    interrupt: &I,
    state: &mut TxState,
) -> Result<TxProgress, QueueError>
where
    B: FrameBackend + ?Sized,
    I: VirtioInterrupt + ?Sized,
{
    let mut progress = TxProgress::default();
    let mut popped = 0;
    while popped < queue.size() {
        let Some(chain) = vq::next_chain(mem, queue, TX_QUEUE)? else {
            break;
        };
        popped += 1;
        let head = chain.head_index();
        match read_frame(mem, chain, queue.size(), state) {
            Ok(()) => {
                backend.push_frame(&state.scratch[NET_HDR_LEN..]);
                progress.detail.frames += 1;
            }
            Err(why) => {
                progress.detail.dropped += 1;
                if state.warnings.allow() {
                    warn!("virtio-net: tx chain {head} dropped: {why}");
                }
            }
        }
        progress.complete(mem, queue, head, 0, "virtio-net");
    }
    progress.finish(mem, queue, TX_QUEUE, popped, interrupt)
}

/// Why a transmit chain was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A descriptor is unusable or the chain does not end.
    #[error("Bad chain: {0}")]
    Chain(&'static str),
    /// The chain holds less than a header.
    #[error("{0} bytes, shorter than the header")]
    Short(usize),
    /// The chain holds more than a header and a 64 KiB frame.
    #[error("Longer than {} bytes", NET_HDR_LEN + MAX_FRAME_LEN)]
    Long,
    /// Guest memory failed while copying.
    #[error("Guest memory unreadable")]
    Memory,
    /// A GSO kind the driver did not negotiate.
    #[error("GSO type {0:#x} not negotiated")]
    Gso(u8),
    /// A GSO frame that does not leave its checksum to the device.
    #[error("GSO frame without NEEDS_CSUM")]
    GsoWithoutCsum,
    /// NEEDS_CSUM with a checksum field outside the frame.
    #[error(transparent)]
    Csum(#[from] CsumError),
}

/// Copies one chain into `state.scratch` (header then frame), checks the
/// header against the negotiated features and completes the checksum.
/// NEEDS_CSUM is honoured even if the driver did not take VIRTIO_NET_F_CSUM
/// (it must not set it then; completing it is harmless).
fn read_frame(
    mem: &GuestMemory,
    chain: virtio_queue::DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
    state: &mut TxState,
) -> Result<(), Malformed> {
    let limit = NET_HDR_LEN + MAX_FRAME_LEN;
    // One byte over the limit is enough to tell the chain is too long.
    let walked = chain::walk(mem, chain, max_descriptors, Direction::Read, limit + 1)
        .map_err(Malformed::Chain)?;
    let total = walked.total;
    if total < NET_HDR_LEN {
        return Err(Malformed::Short(total));
    }
    if total > limit {
        return Err(Malformed::Long);
    }
    let buf = &mut state.scratch;
    buf.clear();
    buf.resize(total, 0);
    if !vq::gather(mem, &walked.regions, 0, buf) {
        return Err(Malformed::Memory);
    }
    let mut raw = [0u8; NET_HDR_LEN];
    raw.copy_from_slice(&buf[..NET_HDR_LEN]);
    let hdr = NetHeader::from_bytes(&raw);
    check_gso(&hdr, state.negotiated)?;
    if hdr.flags & F_NEEDS_CSUM != 0 {
        complete_checksum(&mut buf[NET_HDR_LEN..], hdr.csum_start, hdr.csum_offset)?;
    }
    Ok(())
}

/// A GSO frame is passed on whole (the backend terminates TCP), but only
/// of a kind the driver negotiated.
fn check_gso(hdr: &NetHeader, negotiated: Negotiated) -> Result<(), Malformed> {
    let ecn = hdr.gso_type & GSO_ECN != 0;
    let kind = hdr.gso_type & !GSO_ECN;
    let allowed = match kind {
        GSO_NONE => !ecn,
        GSO_TCPV4 => negotiated.host_tso4 && (!ecn || negotiated.host_ecn),
        GSO_TCPV6 => negotiated.host_tso6 && (!ecn || negotiated.host_ecn),
        _ => false,
    };
    if !allowed {
        return Err(Malformed::Gso(hdr.gso_type));
    }
    // A GSO frame must leave its checksum to us: its guest-side checksum
    // covers the pseudo-header only.
    if kind != GSO_NONE && hdr.flags & F_NEEDS_CSUM == 0 {
        return Err(Malformed::GsoWithoutCsum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso_type: u8) -> NetHeader {
        NetHeader {
            flags,
            gso_type,
            ..NetHeader::default()
        }
    }

    #[test]
    fn gso_kinds_need_their_feature() {
        let none = Negotiated::default();
        let tso = Negotiated {
            host_tso4: true,
            host_tso6: true,
            ..Negotiated::default()
        };
        let ecn = Negotiated {
            host_ecn: true,
            ..tso
        };
        assert!(check_gso(&hdr(0, GSO_NONE), none).is_ok());
        assert!(check_gso(&hdr(F_NEEDS_CSUM, GSO_TCPV4), none).is_err());
        assert!(check_gso(&hdr(F_NEEDS_CSUM, GSO_TCPV4), tso).is_ok());
        assert!(check_gso(&hdr(F_NEEDS_CSUM, GSO_TCPV6), tso).is_ok());
        assert!(check_gso(&hdr(0, GSO_TCPV4), tso).is_err());
        assert!(check_gso(&hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN), tso).is_err());
        assert!(check_gso(&hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN), ecn).is_ok());
        assert!(check_gso(&hdr(F_NEEDS_CSUM, super::super::header::GSO_UDP), ecn).is_err());
        assert!(check_gso(&hdr(0, GSO_ECN), ecn).is_err());
    }
}
