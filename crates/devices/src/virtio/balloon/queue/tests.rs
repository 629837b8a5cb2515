#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::Mutex;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Address;

use super::*;
use crate::virtio::balloon::release::ReleaseError;
use crate::virtio::balloon::stats::{encode, tag};
use crate::virtio::InterruptKind;

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const RING: GuestAddress = GuestAddress(0x1000);
/// Where the tests put their buffers.
const BUFS: u64 = 0x10_0000;
/// 4 MiB of RAM: pages 0 to 0x3ff.
const MEM_PAGES: u64 = 0x400;

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), (MEM_PAGES << 12) as usize)]).unwrap()
}

#[derive(Default)]
struct Irq(Mutex<Vec<InterruptKind>>);

impl VirtioInterrupt for Irq {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.0.lock().unwrap().push(kind);
        Ok(())
    }
}

/// Records every range instead of releasing it; fails on request.
#[derive(Default)]
struct Recorder {
    ranges: Vec<(u64, u64)>,
    fail: bool,
}

impl MemoryReleaser for Recorder {
    fn release(
        &mut self,
        _: &GuestMemory,
        addr: GuestAddress,
        len: u64,
    ) -> Result<(), ReleaseError> {
        if self.fail {
            return Err(ReleaseError::BadRange { addr: addr.0, len });
        }
        self.ranges.push((addr.0, len));
        Ok(())
    }
}

/// The driver side: a mock queue and where its next chain goes.
struct Guest<'a> {
    mem: &'a GuestMemory,
    vq: MockSplitQueue<'a, GuestMemory>,
    queue: Queue,
    next_desc: u16,
    next_buf: u64,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemory, size: u16) -> Self {
        let vq = MockSplitQueue::create(mem, RING, size);
        let queue = vq.create_queue().unwrap();
        Guest {
            mem,
            vq,
            queue,
            next_desc: 0,
            next_buf: BUFS,
        }
    }

    /// Posts a chain of raw descriptors `(addr, len, device-writable)`.
    fn post_raw(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { WRITE } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= NEXT;
                }
                let next = head + i as u16 + 1;
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        self.vq.add_desc_chains(&descs, head).unwrap();
        self.next_desc += bufs.len() as u16;
        head
    }

    /// Posts one device-readable buffer holding `bytes`.
    fn post_bytes(&mut self, bytes: &[u8]) -> u16 {
        let addr = self.next_buf;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.next_buf += (bytes.len() as u64).next_multiple_of(16).max(16);
        self.post_raw(&[(addr, bytes.len() as u32, false)])
    }

    fn post_pfns(&mut self, pfns: &[u32]) -> u16 {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.post_bytes(&bytes)
    }

    fn used(&self, i: usize) -> (u32, u32) {
        let elem = self.vq.used().ring().ref_at(i).unwrap().load();
        (elem.id(), elem.len())
    }

    fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }

    fn vq(&mut self, index: u16) -> IndexedQueue<'_> {
        IndexedQueue {
            queue: &mut self.queue,
            index,
        }
    }
}

struct Env {
    irq: Irq,
    counters: Counters,
}

impl Env {
    fn new() -> Self {
        Env {
            irq: Irq::default(),
            counters: Counters::default(),
        }
    }

    fn ctx<'a>(&'a self, mem: &'a GuestMemory) -> QueueContext<'a, Irq> {
        QueueContext {
            mem,
            interrupt: &self.irq,
            counters: &self.counters,
        }
    }

    fn irqs(&self) -> Vec<InterruptKind> {
        self.irq.0.lock().unwrap().clone()
    }
}

#[test]
fn inflate_coalesces_runs_and_skips_what_it_cannot_hold() {
    let mem = memory();
    let env = Env::new();
    let mut g = Guest::new(&mem, 16);
    let mut held = HeldPages::new(&mem);
    let mut rel = Recorder::default();
    // Three contiguous pages, a lone one, a repeat, then pages past RAM.
    let head = g.post_pfns(&[0x200, 0x201, 0x202, 0x210, 0x201, 0x400, u32::MAX]);
    let p = process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    assert_eq!(
        p,
        Progress {
            completed: 1,
            more_pending: false,
            detail: (),
        }
    );
    assert_eq!(g.used(0), (u32::from(head), 0));
    assert_eq!(rel.ranges, [(0x20_0000, 0x3000), (0x21_0000, 0x1000)]);
    let c = env.counters.snapshot();
    assert_eq!((c.held_pages, c.inflated_pages, c.ignored_pfns), (4, 4, 3));
    assert_eq!(env.irqs(), [InterruptKind::Queue(0)]);

    // Deflate two held pages, one never held, one past RAM.
    g.post_pfns(&[0x210, 0x200, 0x300, 0x5000]);
    process_pages(
        &env.ctx(&mem),
        g.vq(1),
        PageOp::Deflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    let c = env.counters.snapshot();
    assert_eq!((c.held_pages, c.deflated_pages, c.ignored_pfns), (2, 2, 5));
    assert!(held.contains(0x201) && !held.contains(0x200));
    assert_eq!(rel.ranges.len(), 2, "deflate releases nothing");
    assert_eq!(
        env.irqs(),
        [InterruptKind::Queue(0), InterruptKind::Queue(1)]
    );

    // Inflating a deflated page again releases it again.
    g.post_pfns(&[0x200]);
    process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    assert_eq!(rel.ranges[2], (0x20_0000, 0x1000));
    assert_eq!(env.counters.snapshot().held_pages, 3);
}

#[test]
fn pfn_buffers_are_read_up_to_the_last_whole_entry_across_descriptors() {
    let mem = memory();
    let env = Env::new();
    let mut g = Guest::new(&mem, 16);
    let mut held = HeldPages::new(&mem);
    let mut rel = Recorder::default();
    // 0x300 split over two descriptors, a device-writable one in between
    // that must be skipped, and a trailing partial entry.
    let mut bytes = Vec::new();
    for pfn in [0x100u32, 0x300, 0x301] {
        bytes.extend(pfn.to_le_bytes());
    }
    bytes.extend([0x02, 0x03, 0x00]);
    mem.write_slice(&bytes, GuestAddress(BUFS)).unwrap();
    mem.write_slice(&0x3ffu32.to_le_bytes(), GuestAddress(BUFS + 0x800))
        .unwrap();
    g.post_raw(&[
        (BUFS, 6, false),
        (BUFS + 0x800, 4, true),
        (BUFS + 6, 9, false),
    ]);
    process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    assert_eq!(rel.ranges, [(0x10_0000, 0x1000), (0x30_0000, 0x2000)]);
    let c = env.counters.snapshot();
    assert_eq!(
        (c.inflated_pages, c.ignored_pfns, c.malformed_chains),
        (3, 0, 0)
    );
    assert!(!held.contains(0x3ff));
}

#[test]
fn at_most_max_pfns_per_chain_are_read() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 30)]).unwrap();
    let env = Env::new();
    let mut g = Guest::new(&mem, 16);
    let mut held = HeldPages::new(&mem);
    let mut rel = Recorder::default();
    let pfns: Vec<u32> = (0x1000..0x1000 + MAX_PFNS_PER_CHAIN as u32 + 10).collect();
    g.post_pfns(&pfns);
    process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    assert_eq!(held.held(), MAX_PFNS_PER_CHAIN as u64);
    assert_eq!(
        rel.ranges,
        [(0x100_0000, (MAX_PFNS_PER_CHAIN as u64) << 12)]
    );
}

#[test]
fn malformed_chains_are_used_empty_and_do_nothing() {
    let mem = memory();
    let env = Env::new();
    let mut g = Guest::new(&mem, 8);
    let mut held = HeldPages::new(&mem);
    let mut rel = Recorder::default();
    mem.write_slice(&0x200u32.to_le_bytes(), GuestAddress(BUFS))
        .unwrap();
    // Outside memory, straddling the end, then a descriptor looping on
    // itself, then one linking past the table.
    g.post_raw(&[(BUFS, 4, false), (MEM_PAGES << 12, 4, false)]);
    g.post_raw(&[(BUFS, 4, false), ((MEM_PAGES << 12) - 2, 4, false)]);
    let looping = g.post_raw(&[(BUFS, 4, false)]);
    g.vq.desc_table()
        .store(
            looping,
            RawDescriptor::from(Descriptor::new(BUFS, 4, NEXT, looping)),
        )
        .unwrap();
    let dangling = g.post_raw(&[(BUFS, 4, false)]);
    g.vq.desc_table()
        .store(
            dangling,
            RawDescriptor::from(Descriptor::new(BUFS, 4, NEXT, 500)),
        )
        .unwrap();
    let p = process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    assert_eq!(p.completed, 4);
    for i in 0..4 {
        assert_eq!(g.used(i).1, 0);
    }
    assert!(rel.ranges.is_empty());
    assert_eq!(held.held(), 0);
    assert_eq!(env.counters.snapshot().malformed_chains, 4);
}

#[test]
fn release_failures_are_counted_and_pages_stay_held() {
    let mem = memory();
    let env = Env::new();
    let mut g = Guest::new(&mem, 8);
    let mut held = HeldPages::new(&mem);
    let mut rel = Recorder {
        fail: true,
        ..Default::default()
    };
    g.post_pfns(&[0x10, 0x11, 0x20]);
    process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    let c = env.counters.snapshot();
    assert_eq!((c.held_pages, c.release_errors), (3, 2));
}

#[test]
fn reports_release_valid_ranges_only() {
    let mem = GuestMemory::from_ranges(&[
        (GuestAddress(0), 8 << 20),
        (GuestAddress(16 << 20), 8 << 20),
    ])
    .unwrap();
    let env = Env::new();
    let mut g = Guest::new(&mem, 64);
    let mut rel = Recorder::default();
    let mib = 1u64 << 20;
    let head = g.post_raw(&[
        (4 * mib, 4 << 20, true),        // good
        (16 * mib, 2 << 20, true),       // good, second region
        (2 * mib, 2 << 20, false),       // device-readable
        (2 * mib + 0x800, 0x1000, true), // misaligned address
        (2 * mib, 0x1800, true),         // partial page
        (6 * mib, 4 << 20, true),        // runs off the first region
        (10 * mib, 2 << 20, true),       // in the hole
        (22 * mib, 4 << 20, true),       // past the end
        (0, 0, true),                    // empty
        (!0xfff, 0x1000, true),          // wraps
    ]);
    let p = process_reports(&env.ctx(&mem), g.vq(3), &mut rel).unwrap();
    assert_eq!(p.completed, 1);
    assert_eq!(g.used(0), (u32::from(head), 0));
    assert_eq!(rel.ranges, [(4 * mib, 4 << 20), (16 * mib, 2 << 20)]);
    let c = env.counters.snapshot();
    assert_eq!((c.reported_bytes, c.ignored_ranges), (6 << 20, 8));
    assert_eq!(env.irqs(), [InterruptKind::Queue(3)]);
}

#[test]
fn stats_buffers_are_held_until_the_host_asks() {
    let mem = memory();
    let env = Env::new();
    let mut g = Guest::new(&mem, 8);
    let mut held = None;
    let mut seen = Vec::new();
    let mut first = encode(tag::MEMFREE, 100).to_vec();
    first.extend(encode(999, 1));
    let a = g.post_bytes(&first);
    let p = receive_stats(&env.ctx(&mem), g.vq(2), &mut held, &mut |s| seen.push(s)).unwrap();
    assert_eq!(p.completed, 0, "the first buffer stays with the device");
    assert_eq!(held, Some(a));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].free_memory, Some(100));
    assert!(env.irqs().is_empty());

    assert!(return_stats_buffer(&env.ctx(&mem), g.vq(2), &mut held).unwrap());
    assert_eq!(held, None);
    assert_eq!(g.used(0), (u32::from(a), 0));
    assert_eq!(env.irqs(), [InterruptKind::Queue(2)]);
    assert!(!return_stats_buffer(&env.ctx(&mem), g.vq(2), &mut held).unwrap());
    assert_eq!(g.used_idx(), 1);

    // A driver that sends two: the older goes back at once.
    let b = g.post_bytes(&encode(tag::MEMTOT, 7)[..9]);
    let c = g.post_bytes(&encode(tag::MEMTOT, 8));
    let p = receive_stats(&env.ctx(&mem), g.vq(2), &mut held, &mut |s| seen.push(s)).unwrap();
    assert_eq!(p.completed, 1);
    assert_eq!(g.used(1), (u32::from(b), 0));
    assert_eq!(held, Some(c));
    assert_eq!(seen[1].total_memory, None, "partial entry ignored");
    assert_eq!(seen[2].total_memory, Some(8));
}

#[test]
fn malformed_stats_chains_go_back_at_once() {
    let mem = memory();
    let env = Env::new();
    let mut g = Guest::new(&mem, 8);
    let mut held = None;
    let bad = g.post_raw(&[(MEM_PAGES << 12, 10, false)]);
    let mut published = 0;
    receive_stats(&env.ctx(&mem), g.vq(2), &mut held, &mut |_| published += 1).unwrap();
    assert_eq!(published, 0);
    assert_eq!(held, None);
    assert_eq!(g.used(0), (u32::from(bad), 0));
    assert_eq!(env.counters.snapshot().malformed_chains, 1);
}

/// Publishes a fifth chain (recycling descriptor 0) while the device
/// releases the fourth page: more than one queue's worth in one call.
struct Racing {
    mem: GuestMemory,
    avail: GuestAddress,
    calls: usize,
}

impl MemoryReleaser for Racing {
    fn release(&mut self, _: &GuestMemory, _: GuestAddress, _: u64) -> Result<(), ReleaseError> {
        self.calls += 1;
        if self.calls == 4 {
            self.mem
                .write_obj(0u16, self.avail.unchecked_add(4))
                .unwrap();
            self.mem
                .write_obj(5u16.to_le(), self.avail.unchecked_add(2))
                .unwrap();
        }
        Ok(())
    }
}

#[test]
fn work_per_call_is_one_queue_worth() {
    let mem = memory();
    let env = Env::new();
    let mut g = Guest::new(&mem, 4);
    let mut held = HeldPages::new(&mem);
    for pfn in 0..4 {
        g.post_pfns(&[0x100 + 2 * pfn]);
    }
    let mut rel = Racing {
        mem: mem.clone(),
        avail: g.vq.avail_addr(),
        calls: 0,
    };
    let p = process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    assert_eq!(
        p,
        Progress {
            completed: 4,
            more_pending: true,
            detail: (),
        }
    );
    let p = process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut rel,
    )
    .unwrap();
    assert_eq!(
        p,
        Progress {
            completed: 1,
            more_pending: false,
            detail: (),
        }
    );
    // Chain 0 came twice: its page is a repeat.
    assert_eq!(env.counters.snapshot().ignored_pfns, 1);
    assert_eq!(held.held(), 4);
}

#[test]
fn impossible_avail_index_is_an_error() {
    let mem = memory();
    let env = Env::new();
    let mut g = Guest::new(&mem, 16);
    let mut held = HeldPages::new(&mem);
    mem.write_obj(100u16.to_le(), g.vq.avail_addr().unchecked_add(2))
        .unwrap();
    let err = process_pages(
        &env.ctx(&mem),
        g.vq(0),
        PageOp::Inflate,
        &mut held,
        &mut Recorder::default(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        QueueError::AvailRing {
            queue: 0,
            source: virtio_queue::Error::InvalidAvailRingIndex
        }
    ));
    let err = process_reports(&env.ctx(&mem), g.vq(3), &mut Recorder::default()).unwrap_err();
    assert!(matches!(err, QueueError::AvailRing { queue: 3, .. }));
    assert!(env.irqs().is_empty());
}
