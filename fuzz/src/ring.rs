//! A virtqueue the fuzzer writes as a hostile driver would: descriptors
//! with any address, length, flags and next index (pointing into the data
//! area, a second memory region behind a hole, the rings themselves or
//! anywhere), an available ring with any head indices and index, and any
//! bytes in the buffers. Only what the MMIO transport checks before
//! activation holds: the rings lie inside guest memory and the size is a
//! power of two.

use std::io;

use agentvm_devices::virtio::{GuestMemory, InterruptKind, VirtioInterrupt};
use arbitrary::Arbitrary;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The descriptor table.
const DESC: u64 = 0x0000;
/// The available ring.
const AVAIL: u64 = 0x1000;
/// The used ring.
const USED: u64 = 0x2000;
/// Buffers in the first region.
const DATA: u64 = 0x3000;
const DATA_LEN: u64 = 0x1_0000 - DATA;
/// The second region, behind a hole.
const HIGH: u64 = 0x2_0000;
const HIGH_LEN: u64 = 0x4000;
/// Largest queue the fuzzer asks for (a 64-entry ring keeps every chain
/// walk short enough for many executions a second).
const MAX_SIZE_LOG2: u8 = 6;
/// Edits and heads per kick, at most.
const MAX_EDITS: usize = 64;

/// Where a descriptor points.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Addr {
    /// Into the first region's data area.
    Data(u16),
    /// Into the second region.
    High(u16),
    /// Into the rings (the device then writes over its own queue).
    Ring(u16),
    /// Anywhere at all.
    Raw(u64),
}

impl Addr {
    fn resolve(self) -> u64 {
        match self {
            Addr::Data(off) => DATA + u64::from(off) % DATA_LEN,
            Addr::High(off) => HIGH + u64::from(off) % HIGH_LEN,
            Addr::Ring(off) => u64::from(off) % DATA,
            Addr::Raw(addr) => addr,
        }
    }
}

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Desc {
    /// Table slot (modulo the queue size).
    pub slot: u16,
    /// Buffer address.
    pub addr: Addr,
    /// Buffer length.
    pub len: u32,
    /// VRING_DESC_F_* bits.
    pub flags: u16,
    /// Next slot.
    pub next: u16,
}

/// What the driver does before one notification.
#[derive(Debug, Clone, Arbitrary)]
pub struct Kick {
    /// Descriptors written.
    pub descs: Vec<Desc>,
    /// Buffer bytes written.
    pub data: Vec<(Addr, Vec<u8>)>,
    /// Heads made available.
    pub heads: Vec<u16>,
    /// Added to the available index past the heads (a lying driver).
    pub idx_skew: u16,
    /// The available ring's flags (NO_INTERRUPT).
    pub avail_flags: u16,
    /// The used_event field (EVENT_IDX).
    pub used_event: u16,
}

/// Interrupts counted, never failing.
#[derive(Debug, Default)]
pub struct Irq;

impl VirtioInterrupt for Irq {
    fn trigger(&self, _kind: InterruptKind) -> io::Result<()> {
        Ok(())
    }
}

/// Guest memory and one queue in it.
pub struct Ring {
    /// Guest memory: 64 KiB at 0 and 16 KiB at 128 KiB.
    pub mem: GuestMemory,
    /// The device's side of the queue.
    pub queue: Queue,
    avail_idx: u16,
}

impl Ring {
    /// A ready queue of `2^(size_log2 % 7)` entries, with EVENT_IDX if
    /// `event_idx`.
    pub fn new(size_log2: u8, event_idx: bool) -> Ring {
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(HIGH), HIGH_LEN as usize),
        ])
        .expect("guest memory");
        let size = 1u16 << (size_log2 % (MAX_SIZE_LOG2 + 1));
        let mut queue = Queue::new(size).expect("a queue");
        queue.set_size(size);
        queue
            .try_set_desc_table_address(GuestAddress(DESC))
            .expect("aligned");
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL))
            .expect("aligned");
        queue
            .try_set_used_ring_address(GuestAddress(USED))
            .expect("aligned");
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        assert!(queue.is_valid(&mem), "the transport's checks hold");
        Ring {
            mem,
            queue,
            avail_idx: 0,
        }
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// Writes what `kick` says into guest memory.
    pub fn apply(&mut self, kick: &Kick) {
        let size = self.size();
        for d in kick.descs.iter().take(MAX_EDITS) {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&d.addr.resolve().to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
            raw[14..].copy_from_slice(&d.next.to_le_bytes());
            let at = DESC + 16 * u64::from(d.slot % size);
            self.write(at, &raw);
        }
        for (addr, bytes) in kick.data.iter().take(MAX_EDITS) {
            // Writes that leave memory are cut short, as a driver's would be.
            let _ = self.mem.write(bytes, GuestAddress(addr.resolve()));
        }
        for &head in kick.heads.iter().take(MAX_EDITS) {
            let at = AVAIL + 4 + 2 * u64::from(self.avail_idx % size);
            self.write(at, &head.to_le_bytes());
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        let idx = self.avail_idx.wrapping_add(kick.idx_skew);
        self.write(AVAIL, &kick.avail_flags.to_le_bytes());
        self.write(AVAIL + 2, &idx.to_le_bytes());
        self.write(AVAIL + 4 + 2 * u64::from(size), &kick.used_event.to_le_bytes());
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(at))
            .expect("the rings lie in guest memory");
    }
}
