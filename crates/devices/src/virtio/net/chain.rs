//! Walking a descriptor chain the guest built, trusting nothing: every
//! descriptor must go the expected way and lie inside guest memory, the
//! chain must end, and it may hold no more descriptors than the queue
//! (a longer one loops). Then gathering from and scattering to the checked
//! buffers.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::virtio::GuestMemory;

/// A chain's buffers as (address, length), checked against guest memory.
pub(crate) type Regions = Vec<(GuestAddress, usize)>;

/// Which way the device uses a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Transmit: the device reads every buffer.
    Read,
    /// Receive: the device writes every buffer.
    Write,
}

/// A walked chain.
#[derive(Debug)]
pub(crate) struct Walked {
    /// The buffers, at most `cap` bytes in total (buffers beyond are left
    /// out, lengths trimmed).
    pub(crate) regions: Regions,
    /// Their total length.
    pub(crate) total: usize,
    /// Descriptors in the chain.
    pub(crate) descriptors: u16,
}

/// Walks `chain` and checks every descriptor.
pub(crate) fn walk(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
    direction: Direction,
    cap: usize,
) -> Result<Walked, &'static str> {
    let mut regions = Regions::new();
    let mut total = 0usize;
    let mut count = 0u16;
    let mut last_has_next = false;
    for desc in chain {
        if count >= max_descriptors {
            return Err("chain longer than the queue");
        }
        count += 1;
        last_has_next = desc.has_next();
        match (direction, desc.is_write_only()) {
            (Direction::Read, true) => return Err("device-writable descriptor"),
            (Direction::Write, false) => return Err("device-readable descriptor"),
            _ => {}
        }
        let len = desc.len() as usize;
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err("buffer outside guest memory");
        }
        let take = len.min(cap - total);
        // Past the cap the walk goes on only to check that the chain ends.
        if take > 0 {
            regions.push((desc.addr(), take));
            total += take;
        }
    }
    if count == 0 {
        return Err("head descriptor unreadable");
    }
    if last_has_next {
        // The walk stopped on a descriptor that still points onwards: the
        // next index was out of range or unreadable.
        return Err("chain does not end");
    }
    Ok(Walked {
        regions,
        total,
        descriptors: count,
    })
}
