//! The steps every device takes on its virtqueues, in one place: take the
//! next available chain, put a chain in the used ring, tell whether chains
//! are left after a call's bound, and signal the driver when it wants to
//! know. Each device's loop bounds itself to one queue's worth of chains
//! per call (a driver that keeps refilling cannot hold the worker).

use std::sync::atomic::Ordering;

use tracing::error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::{GuestMemory, InterruptKind, VirtioInterrupt};
use crate::warn_limited;

/// Errors that stop a device's queues until the driver resets the device
/// (every device's queue paths return it).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The available ring could not be read or holds an impossible index.
    #[error("Cannot read the available ring of queue {queue}")]
    AvailRing {
        /// Queue index.
        queue: u16,
        /// What virtio-queue found.
        #[source]
        source: virtio_queue::Error,
    },
    /// The used ring could not be read.
    #[error("Cannot read the used ring of queue {queue}")]
    UsedRing {
        /// Queue index.
        queue: u16,
        /// What virtio-queue found.
        #[source]
        source: virtio_queue::Error,
    },
    /// The driver could not be signalled.
    #[error("Cannot signal the driver")]
    Interrupt(#[source] std::io::Error),
}

/// What one call of a queue path did. The fields every device shares are
/// here; `detail` holds what only one device counts (bytes written,
/// frames dropped, …), `()` when there is nothing more.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress<D = ()> {
    /// Chains put in the used ring.
    pub completed: u16,
    /// The call stopped at its bound with chains (and work) left: call
    /// again.
    pub more_pending: bool,
    /// The device's own counts.
    pub detail: D,
}

impl<D> Progress<D> {
    /// Puts chain `head` in the used ring with `len` bytes written
    /// ([`complete`]) and counts it if the ring took it.
    pub fn complete(
        &mut self,
        mem: &GuestMemory,
        queue: &mut Queue,
        head: u16,
        len: u32,
        device: &str,
    ) -> bool {
        let done = complete(mem, queue, head, len, device);
        self.completed += u16::from(done);
        done
    }

    /// Ends a call that took `popped` chains from queue `index`: notes
    /// whether chains are left beyond the bound ([`more_pending`]) and
    /// signals the driver if it wants to know ([`signal_used`]).
    pub fn finish<I: VirtioInterrupt + ?Sized>(
        mut self,
        mem: &GuestMemory,
        queue: &mut Queue,
        index: u16,
        popped: u16,
        interrupt: &I,
    ) -> Result<Self, QueueError> {
        self.more_pending = more_pending(mem, queue, popped);
        signal_used(mem, queue, index, self.completed, interrupt)?;
        Ok(self)
    }
}

/// The next chain the driver made available in queue `index`, if any. An
/// error means the available ring is unreadable or its index impossible:
/// the queue is unusable until the driver resets the device.
pub fn next_chain<'m>(
    mem: &'m GuestMemory,
    queue: &mut Queue,
    index: u16,
) -> Result<Option<DescriptorChain<&'m GuestMemory>>, QueueError> {
    match queue.iter(mem) {
        Ok(mut chains) => Ok(chains.next()),
        Err(source) => Err(QueueError::AvailRing {
            queue: index,
            source,
        }),
    }
}

/// Gives up on a device's queues after `error`: logs why, naming
/// `device`, and asks the driver for the reset that brings them back
/// ([`InterruptKind::NeedsReset`]). The caller ignores its queues until
/// then.
pub fn give_up<I: VirtioInterrupt + ?Sized>(device: &str, error: &QueueError, interrupt: &I) {
    // The guest can break its rings again after every reset: rate-limited.
    warn_limited!("{device}: queues stopped until reset: {error}");
    if let Err(e) = interrupt.trigger(InterruptKind::NeedsReset) {
        error!("{device}: cannot ask the driver for a reset: {e}");
    }
}

/// Puts chain `head` in the used ring with `len` bytes written; false (and
/// a warning naming `device`) if the ring refused it, which only a bogus
/// head index can cause (the used ring was checked at activation): the
/// driver never sees that chain again.
pub fn complete(mem: &GuestMemory, queue: &mut Queue, head: u16, len: u32, device: &str) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            warn_limited!("{device}: cannot complete chain {head}: {e}");
            false
        }
    }
}

/// Whether chains are still available after a call that took `popped`, its
/// bound being the queue's size: the caller should come back.
pub fn more_pending(mem: &GuestMemory, queue: &Queue, popped: u16) -> bool {
    popped >= queue.size()
        && queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail())
}

/// Signals queue `index` if `completed` chains were used and the driver
/// wants an interrupt for them. `needs_notification` only fails on a used
/// ring outside memory, which activation ruled out; signalling anyway is
/// the safe side.
pub fn signal_used<I: VirtioInterrupt + ?Sized>(
    mem: &GuestMemory,
    queue: &mut Queue,
    index: u16,
    completed: u16,
    interrupt: &I,
) -> Result<(), QueueError> {
    if completed > 0 && queue.needs_notification(mem).unwrap_or(true) {
        interrupt
            .trigger(InterruptKind::Queue(index))
            .map_err(QueueError::Interrupt)?;
    }
    Ok(())
}

/// Reads `out.len()` bytes starting `skip` bytes into the buffers
/// `regions` (address, length — already checked to lie in guest memory);
/// false if they hold fewer bytes or memory fails.
pub fn gather(
    mem: &GuestMemory,
    regions: &[(GuestAddress, usize)],
    skip: usize,
    out: &mut [u8],
) -> bool {
    copy_regions(regions, skip, out.len(), |at, range| {
        mem.read_slice(&mut out[range], at).is_ok()
    })
}

/// Writes `data` starting `skip` bytes into the buffers `regions`; the
/// mirror of [`gather`].
pub fn scatter(
    mem: &GuestMemory,
    regions: &[(GuestAddress, usize)],
    skip: usize,
    data: &[u8],
) -> bool {
    copy_regions(regions, skip, data.len(), |at, range| {
        mem.write_slice(&data[range], at).is_ok()
    })
}

/// Walks `regions` from byte `skip` for `total` bytes, handing each piece
/// (guest address, range of the host buffer) to `copy`.
fn copy_regions(
    regions: &[(GuestAddress, usize)],
    mut skip: usize,
    total: usize,
    mut copy: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut done = 0;
    for &(addr, len) in regions {
        if done == total {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(total - done);
        // addr + skip stays inside a buffer checked when it was collected.
        if !copy(GuestAddress(addr.0 + skip as u64), done..done + n) {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == total
}
