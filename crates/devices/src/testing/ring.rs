//! The driver's side of one split virtqueue (virtio 1.2 §2.7), as a Linux
//! driver keeps it: a free list of descriptors, the chains in flight, and
//! the positions in the available and used rings.
//!
//! This is the *driver* half, which virtio-queue does not provide outside its
//! mock module; devices always use `virtio_queue::Queue`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::HarnessError;
use crate::virtio::GuestMemory;

/// Guest-physical addresses of a queue's three parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Descriptor table (16 bytes per entry, 16-byte aligned).
    pub desc: u64,
    /// Available ("driver") ring (2-byte aligned).
    pub avail: u64,
    /// Used ("device") ring (4-byte aligned).
    pub used: u64,
}

impl QueueLayout {
    /// Bytes of the descriptor table for `size` entries.
    pub fn desc_bytes(size: u16) -> u64 {
        16 * u64::from(size)
    }

    /// Bytes of the available ring, including `used_event`.
    pub fn avail_bytes(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }

    /// Bytes of the used ring, including `avail_event`.
    pub fn used_bytes(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }
}

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufRegion {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device may write it (VRING_DESC_F_WRITE).
    pub writable: bool,
}

/// A chain the device returned in the used ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index of the chain.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// The chain's buffers as the driver posted them (empty for chains built
    /// by hand with [`Driver::write_descriptor`](super::Driver::write_descriptor)).
    pub buffers: Vec<BufRegion>,
}

struct InFlight {
    /// Descriptors to give back to the free list (none for hand-built chains).
    descriptors: Vec<u16>,
    buffers: Vec<BufRegion>,
}

pub(crate) struct DriverQueue {
    pub(crate) size: u16,
    pub(crate) layout: QueueLayout,
    free: VecDeque<u16>,
    next_avail: u16,
    last_used: u16,
    in_flight: HashMap<u16, InFlight>,
}

impl DriverQueue {
    pub(crate) fn new(size: u16, layout: QueueLayout) -> Self {
        DriverQueue {
            size,
            layout,
            free: (0..size).collect(),
            next_avail: 0,
            last_used: 0,
            in_flight: HashMap::new(),
        }
    }

    /// Takes `n` descriptors off the free list for a hand-built chain.
    pub(crate) fn reserve(&mut self, n: usize) -> Option<Vec<u16>> {
        (self.free.len() >= n).then(|| self.free.drain(..n).collect())
    }

    pub(crate) fn write_descriptor(
        &self,
        mem: &GuestMemory,
        index: u16,
        desc: Descriptor,
    ) -> Result<(), HarnessError> {
        let addr = self.layout.desc + 16 * u64::from(index % self.size);
        mem.write_obj(desc, GuestAddress(addr))
            .map_err(HarnessError::GuestMemory)
    }

    /// Links `buffers` into a chain, publishes it, and returns its head.
    pub(crate) fn add_chain(
        &mut self,
        mem: &GuestMemory,
        buffers: Vec<BufRegion>,
    ) -> Result<Option<u16>, HarnessError> {
        if buffers.is_empty() {
            return Err(HarnessError::EmptyChain);
        }
        let Some(ids) = self.reserve(buffers.len()) else {
            return Ok(None);
        };
        for (i, (buf, &id)) in buffers.iter().zip(&ids).enumerate() {
            let next = ids.get(i + 1).copied();
            let mut flags = if buf.writable { VRING_DESC_F_WRITE } else { 0 };
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT;
            }
            let desc = Descriptor::new(buf.addr, buf.len, flags as u16, next.unwrap_or(0));
            self.write_descriptor(mem, id, desc)?;
        }
        let head = ids.first().copied().ok_or(HarnessError::EmptyChain)?;
        self.publish(
            mem,
            head,
            InFlight {
                descriptors: ids,
                buffers,
            },
        )?;
        Ok(Some(head))
    }

    /// Puts a hand-built chain starting at `head` in the available ring.
    pub(crate) fn make_available(
        &mut self,
        mem: &GuestMemory,
        head: u16,
    ) -> Result<(), HarnessError> {
        self.publish(
            mem,
            head,
            InFlight {
                descriptors: Vec::new(),
                buffers: Vec::new(),
            },
        )
    }

    fn publish(
        &mut self,
        mem: &GuestMemory,
        head: u16,
        chain: InFlight,
    ) -> Result<(), HarnessError> {
        let slot = self.layout.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_obj(head.to_le(), GuestAddress(slot))
            .map_err(HarnessError::GuestMemory)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The ring entry must be visible before the index that exposes it.
        mem.store(
            self.next_avail.to_le(),
            GuestAddress(self.layout.avail + 2),
            Ordering::Release,
        )
        .map_err(HarnessError::GuestMemory)?;
        self.in_flight.insert(head, chain);
        Ok(())
    }

    /// Collects what the device put in the used ring since the last call.
    /// A device that returns a chain it was never given, or moves the used
    /// index further than the queue allows, is reported as an error.
    pub(crate) fn take_used(&mut self, mem: &GuestMemory) -> Result<Vec<Used>, HarnessError> {
        let idx: u16 = mem
            .load(GuestAddress(self.layout.used + 2), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(HarnessError::GuestMemory)?;
        let new = idx.wrapping_sub(self.last_used);
        if new > self.size {
            return Err(HarnessError::UsedRingOverrun {
                index: idx,
                last: self.last_used,
            });
        }
        let mut used = Vec::with_capacity(usize::from(new));
        for _ in 0..new {
            let slot = self.layout.used + 4 + 8 * u64::from(self.last_used % self.size);
            let id: u32 = mem
                .read_obj(GuestAddress(slot))
                .map_err(HarnessError::GuestMemory)?;
            let len: u32 = mem
                .read_obj(GuestAddress(slot + 4))
                .map_err(HarnessError::GuestMemory)?;
            let (id, len) = (u32::from_le(id), u32::from_le(len));
            let chain = u16::try_from(id)
                .ok()
                .and_then(|head| Some((head, self.in_flight.remove(&head)?)));
            let Some((head, chain)) = chain else {
                return Err(HarnessError::UnknownUsedId(id));
            };
            self.free.extend(&chain.descriptors);
            self.last_used = self.last_used.wrapping_add(1);
            used.push(Used {
                head,
                len,
                buffers: chain.buffers,
            });
        }
        // With VIRTIO_RING_F_EVENT_IDX, ask for an interrupt at the very
        // next used buffer, as Linux's virtqueue_enable_cb does; without it
        // the device ignores the field.
        let used_event = self.layout.avail + 4 + 2 * u64::from(self.size);
        mem.store(
            self.last_used.to_le(),
            GuestAddress(used_event),
            Ordering::Release,
        )
        .map_err(HarnessError::GuestMemory)?;
        Ok(used)
    }
}
