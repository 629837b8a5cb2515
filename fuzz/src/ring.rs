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
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
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
    /// Where [`Ring::push`] puts its next descriptor and buffer.
    next_slot: u16,
    next_data: u64,
}

/// A buffer of a well-formed chain.
#[derive(Debug, Clone)]
pub enum Buf {
    /// Device-readable, holding these bytes.
    Read(Vec<u8>),
    /// Device-writable, this long.
    Write(u32),
}

/// Guest memories a target uses at once, at most.
pub const MEMORIES: usize = 2;

/// Guest memory `n` of this thread, zeroed: mapped once and reused, as
/// mapping it anew for every input would cost more than most inputs.
fn memory(n: usize) -> GuestMemory {
    fn map() -> GuestMemory {
        GuestMemory::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(HIGH), HIGH_LEN as usize),
        ])
        .expect("guest memory")
    }
    thread_local! {
        static MEM: [GuestMemory; MEMORIES] = [map(), map()];
    }
    let mem = MEM.with(|m| m[n % MEMORIES].clone());
    let zeros = vec![0u8; 0x1_0000];
    for (start, len) in [(0, 0x1_0000), (HIGH, HIGH_LEN as usize)] {
        mem.write_slice(&zeros[..len], GuestAddress(start))
            .expect("the regions are mapped");
    }
    mem
}

impl Ring {
    /// A ready queue of `2^(size_log2 % 7)` entries, with EVENT_IDX if
    /// `event_idx`, in guest memory 0.
    pub fn new(size_log2: u8, event_idx: bool) -> Ring {
        Ring::in_memory(0, size_log2, event_idx)
    }

    /// The same in guest memory `n` (of [`MEMORIES`]): a device with two
    /// queues gets one memory each.
    pub fn in_memory(n: usize, size_log2: u8, event_idx: bool) -> Ring {
        let mem = memory(n);
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
            next_slot: 0,
            next_data: 0,
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
        self.write(
            AVAIL + 4 + 2 * u64::from(size),
            &kick.used_event.to_le_bytes(),
        );
    }

    /// Makes a well-formed chain of `bufs` available, as an honest driver
    /// would (descriptors and buffers are reused round-robin, so a long
    /// run overwrites what the device has not consumed yet, as a hostile
    /// driver may).
    pub fn push(&mut self, bufs: &[Buf]) {
        let size = self.size();
        let bufs = &bufs[..bufs.len().min(usize::from(size))];
        let Some(last) = bufs.len().checked_sub(1) else {
            return;
        };
        let head = self.next_slot % size;
        for (i, buf) in bufs.iter().enumerate() {
            let slot = self.next_slot % size;
            self.next_slot = self.next_slot.wrapping_add(1);
            let len = match buf {
                Buf::Read(bytes) => bytes.len().min(DATA_LEN as usize) as u64,
                Buf::Write(len) => u64::from(*len).min(DATA_LEN),
            };
            if self.next_data + len > DATA_LEN {
                self.next_data = 0;
            }
            let addr = DATA + self.next_data;
            self.next_data += len;
            if let Buf::Read(bytes) = buf {
                self.write(addr, &bytes[..len as usize]);
            }
            let mut flags = 0;
            if matches!(buf, Buf::Write(_)) {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            if i < last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = (slot + 1) % size;
            self.apply(&Kick {
                descs: vec![Desc {
                    slot,
                    addr: Addr::Raw(addr),
                    len: len as u32,
                    flags,
                    next,
                }],
                data: Vec::new(),
                heads: Vec::new(),
                idx_skew: 0,
                avail_flags: 0,
                used_event: 0,
            });
        }
        self.apply(&Kick {
            descs: Vec::new(),
            data: Vec::new(),
            heads: vec![head],
            idx_skew: 0,
            avail_flags: 0,
            used_event: 0,
        });
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(at))
            .expect("the rings lie in guest memory");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::QueueOwnedT;

    use super::*;

    #[test]
    fn a_pushed_chain_is_what_the_device_pops() {
        let mut ring = Ring::new(3, false);
        ring.push(&[Buf::Read(b"abc".to_vec()), Buf::Write(8)]);
        let mem = ring.mem.clone();
        let mut chains = ring.queue.iter(&mem).unwrap();
        let descs: Vec<_> = chains.next().unwrap().collect();
        assert!(chains.next().is_none(), "one chain");
        assert_eq!(descs.len(), 2);
        assert!(!descs[0].is_write_only() && descs[1].is_write_only());
        assert_eq!((descs[0].len(), descs[1].len()), (3, 8));
        let mut bytes = [0u8; 3];
        mem.read_slice(&mut bytes, descs[0].addr()).unwrap();
        assert_eq!(&bytes, b"abc");
    }

    #[test]
    fn a_lying_available_index_is_refused_and_memory_starts_zeroed() {
        let mut ring = Ring::new(0, false);
        ring.mem.write_obj(0xffu8, GuestAddress(DATA)).unwrap();
        let kick = Kick {
            descs: Vec::new(),
            data: Vec::new(),
            heads: vec![0],
            idx_skew: 100,
            avail_flags: 0,
            used_event: 0,
        };
        ring.apply(&kick);
        let mem = ring.mem.clone();
        assert!(ring.queue.iter(&mem).is_err(), "more chains than entries");
        let fresh = Ring::new(0, false);
        assert_eq!(fresh.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0);
    }
}
