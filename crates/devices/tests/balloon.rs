//! virtio-balloon end to end: a driver inflates, deflates, reports free
//! pages and sends statistics through virtio-mmio, over guest RAM backed by
//! a memfd mapped `MAP_SHARED` as the VMM maps it — so the memory the host
//! gets back is measured on the memfd itself. A malicious driver's page
//! numbers, ranges and chains are ignored without harm, hangs or panics.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use agentvm_devices::testing::{Buf, Descriptor, Driver, HarnessError, Used};
use agentvm_devices::virtio::balloon::stats::{encode, tag};
use agentvm_devices::virtio::balloon::{
    Balloon, BalloonCounters, BalloonError, BalloonHandle, QueueIndexes, MAX_PFNS_PER_CHAIN,
    QUEUE_SIZE, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use agentvm_devices::virtio::transport::mmio::{regs, status, INT_CONFIG, INT_USED_RING};
use agentvm_devices::virtio::{device_type, GuestMemory, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use vm_memory::{Bytes, FileOffset, GuestAddress};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// Guest RAM: the harness's rings and buffers live in the first 32 MiB,
/// the balloon works on the 256 MiB above, 8 MiB stay untouched on top.
const MEM: u64 = 296 * MIB;
const AREA: u64 = 32 * MIB;
const AREA_LEN: u64 = 256 * MIB;
const AREA_PAGES: u64 = AREA_LEN / PAGE;
/// A hang guard only: every wait ends as soon as the device answers.
const HANG_GUARD: Duration = Duration::from_secs(20);
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const ALL: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_BALLOON_F_STATS_VQ
    | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    | VIRTIO_BALLOON_F_REPORTING;
const INFLATE: u16 = QueueIndexes::INFLATE;
const DEFLATE: u16 = QueueIndexes::DEFLATE;
const STATS: u16 = 2;
const REPORT: u16 = 3;

/// A guest: the driver harness over memfd-backed RAM, the host's handle,
/// and the memfd to measure.
struct Guest {
    drv: Driver,
    host: BalloonHandle,
    memfd: Arc<File>,
}

/// Guest RAM as the VMM makes it: a memfd of `size` bytes mapped shared.
fn memfd_ram(size: u64) -> (GuestMemory, Arc<File>) {
    // SAFETY: a valid NUL-terminated name and valid flags.
    let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create returned a new descriptor nothing else owns.
    let file = Arc::new(unsafe { File::from_raw_fd(fd) });
    file.set_len(size).unwrap();
    let mem = GuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        size as usize,
        Some(FileOffset::from_arc(file.clone(), 0)),
    )])
    .unwrap();
    (mem, file)
}

impl Guest {
    /// Probes, negotiates `features` and readies the queues they call for,
    /// as Linux's driver would (packed indexes), then DRIVER_OK.
    fn start(features: u64) -> Self {
        let (mem, memfd) = memfd_ram(MEM);
        let balloon = Balloon::new().unwrap();
        let host = balloon.handle();
        let drv = Driver::with_memory(Box::new(balloon), mem).unwrap();
        let mut g = Guest { drv, host, memfd };
        g.init(features);
        g
    }

    fn init(&mut self, features: u64) {
        assert_eq!(self.drv.probe().unwrap(), device_type::BALLOON);
        assert_eq!(self.drv.negotiate(features).unwrap(), features);
        for index in 0..QueueIndexes::new(features).count() as u16 {
            self.drv.setup_queue(index, QUEUE_SIZE).unwrap();
        }
        self.drv.driver_ok().unwrap();
    }

    /// Bytes of the memfd the host kernel has allocated.
    fn allocated(&self) -> u64 {
        self.memfd.metadata().unwrap().blocks() * 512
    }

    /// Writes every page of `[addr, addr + len)`: a mark with its page
    /// number, so the host allocates it and a survivor is recognisable.
    fn touch(&self, addr: u64, len: u64) {
        for page in (addr..addr + len).step_by(PAGE as usize) {
            self.drv
                .mem()
                .write_obj(mark(page), GuestAddress(page))
                .unwrap();
        }
    }

    /// Whether the page at `addr` still holds what [`Guest::touch`] wrote.
    fn survived(&self, addr: u64) -> bool {
        let got: u64 = self.drv.mem().read_obj(GuestAddress(addr)).unwrap();
        got == mark(addr)
    }

    fn word(&self, addr: u64) -> u64 {
        self.drv.mem().read_obj(GuestAddress(addr)).unwrap()
    }

    /// Posts chains on `queue`, notifies, waits for all of them back.
    fn send(&mut self, queue: u16, chains: &[Vec<Buf>]) -> Vec<Used> {
        let mut heads = Vec::new();
        for bufs in chains {
            heads.push(self.drv.add_chain(queue, bufs).unwrap());
        }
        self.drv.notify(queue);
        let used = self
            .drv
            .wait_used_n(queue, heads.len(), HANG_GUARD)
            .unwrap();
        assert_eq!(used.iter().map(|u| u.head).collect::<Vec<_>>(), heads);
        // The device never writes into a balloon buffer.
        assert!(used.iter().all(|u| u.len == 0));
        used
    }

    /// Sends `pfns` on `queue` as Linux does: 256 per buffer, at most 64
    /// buffers in flight.
    fn send_pfns(&mut self, queue: u16, pfns: &[u32]) {
        let chains: Vec<Vec<Buf>> = pfns
            .chunks(256)
            .map(|c| vec![Buf::readable(pfn_bytes(c))])
            .collect();
        for batch in chains.chunks(64) {
            self.send(queue, batch);
        }
    }

    /// Writes `actual` as Linux does after every inflate or deflate.
    fn write_actual(&mut self, pages: u32) {
        self.drv.write_config(4, &pages.to_le_bytes());
    }

    fn counters(&self) -> BalloonCounters {
        self.host.counters()
    }
}

/// What [`Guest::touch`] writes at the start of the page at `addr`.
fn mark(addr: u64) -> u64 {
    (0xa5a5 << 48) | (addr / PAGE)
}

fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn area_pfns() -> Vec<u32> {
    (AREA / PAGE..(AREA + AREA_LEN) / PAGE)
        .map(|p| p as u32)
        .collect()
}

/// Asserts that at least 90% of the 256 MiB area went back to the host.
fn assert_returned(before: u64, after: u64) {
    assert!(before >= AREA_LEN, "only {before} bytes allocated");
    let freed = before.saturating_sub(after);
    assert!(
        freed >= AREA_LEN / 10 * 9,
        "freed {} MiB of {} MiB ({before} -> {after})",
        freed / MIB,
        AREA_LEN / MIB
    );
}

#[test]
fn free_page_reports_return_memory_to_the_host() {
    let mut g = Guest::start(ALL);
    g.touch(AREA - PAGE, AREA_LEN + 2 * PAGE);
    let before = g.allocated();
    // 64 ranges of 4 MiB, in two reports of 32 (Linux's capacity).
    let ranges: Vec<Buf> = (0..AREA_LEN / (4 * MIB))
        .map(|i| Buf::raw(AREA + i * 4 * MIB, (4 * MIB) as u32, true))
        .collect();
    let chains: Vec<Vec<Buf>> = ranges.chunks(32).map(|c| c.to_vec()).collect();
    g.send(REPORT, &chains);
    assert_returned(before, g.allocated());
    let c = g.counters();
    assert_eq!(c.reported_bytes, AREA_LEN);
    assert_eq!(
        (c.ignored_ranges, c.release_errors, c.held_pages),
        (0, 0, 0)
    );
    // Reported pages read as zeros; the pages either side kept their data.
    assert_eq!(g.word(AREA), 0);
    assert_eq!(g.word(AREA + AREA_LEN - PAGE), 0);
    assert!(g.survived(AREA - PAGE));
    assert!(g.survived(AREA + AREA_LEN));
    // The guest may use reported pages again at once.
    g.touch(AREA, 4 * MIB);
    assert!(g.survived(AREA + 4 * MIB - PAGE));
}

#[test]
fn inflate_returns_memory_and_deflate_gives_it_back() {
    let mut g = Guest::start(ALL);
    g.host.set_target_mib(AREA_LEN / MIB).unwrap();
    assert_eq!(g.drv.config_u32(0), AREA_PAGES as u32);
    g.touch(AREA - PAGE, AREA_LEN + 2 * PAGE);
    let before = g.allocated();
    let pfns = area_pfns();
    g.send_pfns(INFLATE, &pfns);
    g.write_actual(pfns.len() as u32);
    assert_returned(before, g.allocated());
    let c = g.counters();
    assert_eq!((c.held_pages, c.inflated_pages), (AREA_PAGES, AREA_PAGES));
    assert_eq!(
        (c.deflated_pages, c.ignored_pfns, c.release_errors),
        (0, 0, 0)
    );
    assert_eq!(g.host.actual_pages(), AREA_PAGES as u32);
    assert_eq!(g.drv.config_u32(4), AREA_PAGES as u32);
    assert!(g.survived(AREA - PAGE));
    assert!(g.survived(AREA + AREA_LEN));

    // The host lowers the target; the guest takes the first half back.
    g.host.set_target_mib(AREA_LEN / MIB / 2).unwrap();
    let half = &pfns[..pfns.len() / 2];
    g.send_pfns(DEFLATE, half);
    g.write_actual((pfns.len() - half.len()) as u32);
    let c = g.counters();
    assert_eq!(c.held_pages, AREA_PAGES / 2);
    assert_eq!(
        (c.inflated_pages, c.deflated_pages),
        (AREA_PAGES, AREA_PAGES / 2)
    );
    assert_eq!(g.host.actual_pages(), (AREA_PAGES / 2) as u32);
    // Deflated pages come back zeroed and usable.
    assert_eq!(g.word(AREA), 0);
    g.touch(AREA, AREA_LEN / 2);
    assert!(g.survived(AREA + AREA_LEN / 2 - PAGE));
    assert!(g.allocated() >= AREA_LEN / 2);
}

#[test]
fn inflate_and_deflate_accounting_matches_the_driver() {
    let mut g = Guest::start(ALL);
    let base = (AREA / PAGE) as u32;
    // Scattered pages, so nothing coalesces; one chain of several buffers.
    let pfns: Vec<u32> = (0..300).map(|i| base + 3 * i).collect();
    let chain = vec![
        Buf::readable(pfn_bytes(&pfns[..100])),
        Buf::readable(pfn_bytes(&pfns[100..])),
    ];
    g.send(INFLATE, &[chain]);
    g.write_actual(300);
    let c = g.counters();
    assert_eq!(
        (c.held_pages, c.inflated_pages, c.ignored_pfns),
        (300, 300, 0)
    );
    g.send_pfns(DEFLATE, &pfns[..120]);
    g.write_actual(180);
    let c = g.counters();
    assert_eq!(
        (c.held_pages, c.deflated_pages, c.ignored_pfns),
        (180, 120, 0)
    );
    assert_eq!(g.host.actual_pages(), 180);
    assert_eq!(g.drv.config_u32(4), 180);
    // Deflating the same pages again changes nothing but the ignored count.
    g.send_pfns(DEFLATE, &pfns[..120]);
    let c = g.counters();
    assert_eq!(
        (c.held_pages, c.deflated_pages, c.ignored_pfns),
        (180, 120, 120)
    );
    // Interrupts: one per batch of used buffers, all of them used-ring.
    assert!(g.drv.interrupt_count() >= 3);
    assert_eq!(g.drv.ack_interrupt(), INT_USED_RING);
}

#[test]
fn invalid_pfns_and_ranges_are_ignored_without_harm() {
    let mut g = Guest::start(ALL);
    g.touch(AREA, 16 * MIB);
    let sentinel = AREA + 4 * MIB;
    let sentinel_pfn = (sentinel / PAGE) as u32;
    let victim = (AREA / PAGE) as u32;
    let beyond = (MEM / PAGE) as u32;
    // Out of RAM, a page twice in one buffer and again in the next.
    g.send(
        INFLATE,
        &[
            vec![Buf::readable(pfn_bytes(&[
                beyond,
                u32::MAX,
                victim,
                victim,
            ]))],
            vec![Buf::readable(pfn_bytes(&[victim, beyond + 1000]))],
        ],
    );
    let c = g.counters();
    assert_eq!((c.held_pages, c.inflated_pages, c.ignored_pfns), (1, 1, 5));
    assert_eq!(g.word(AREA), 0, "the one valid page was released");
    assert!(g.survived(AREA + PAGE));
    // Deflates of pages never held or not RAM.
    g.send(
        DEFLATE,
        &[vec![Buf::readable(pfn_bytes(&[
            sentinel_pfn,
            beyond,
            u32::MAX,
        ]))]],
    );
    let c = g.counters();
    assert_eq!((c.held_pages, c.deflated_pages, c.ignored_pfns), (1, 0, 8));

    // Ranges around the sentinel that are not whole pages in RAM, or come
    // device-readable.
    let bad = vec![
        Buf::raw(sentinel + 0x800, PAGE as u32, true),
        Buf::raw(sentinel, 0x800, true),
        Buf::raw(sentinel - PAGE, 0x1800, true),
        Buf::raw(sentinel, 0, true),
        Buf::raw(sentinel, (2 * MIB) as u32, false),
        Buf::raw(MEM - 2 * MIB, (4 * MIB) as u32, true),
        Buf::raw(MEM + 4 * MIB, (4 * MIB) as u32, true),
        Buf::raw(u64::MAX - 0xfff, PAGE as u32, true),
    ];
    g.send(REPORT, &[bad]);
    let c = g.counters();
    assert_eq!((c.ignored_ranges, c.reported_bytes), (8, 0));
    assert!(g.survived(sentinel));
    assert!(g.survived(sentinel - PAGE));
    assert!(g.survived(sentinel + PAGE));
    assert!(g.survived(AREA + 16 * MIB - PAGE));
    // A good range in the same chain as bad ones is still honoured.
    g.send(
        REPORT,
        &[vec![
            Buf::raw(sentinel + 0x10, PAGE as u32, true),
            Buf::raw(AREA + 8 * MIB, (2 * MIB) as u32, true),
        ]],
    );
    let c = g.counters();
    assert_eq!((c.ignored_ranges, c.reported_bytes), (9, 2 * MIB));
    assert_eq!(g.word(AREA + 8 * MIB), 0);
    assert!(g.survived(sentinel));
    assert!(g.survived(AREA + 10 * MIB));
}

#[test]
fn truncated_and_empty_pfn_buffers() {
    let mut g = Guest::start(ALL);
    let base = (AREA / PAGE) as u32;
    let mut bytes = pfn_bytes(&[base, base + 1, base + 2]);
    bytes.extend([0x01, 0x02]);
    g.send(
        INFLATE,
        &[
            vec![Buf::readable(bytes)],
            vec![Buf::readable(vec![0x07; 3])],
            vec![Buf::readable(Vec::new())],
            // Device-writable buffers hold no page numbers.
            vec![Buf::writable(64)],
        ],
    );
    let c = g.counters();
    assert_eq!(
        (c.held_pages, c.ignored_pfns, c.malformed_chains),
        (3, 0, 0)
    );
}

#[test]
fn loops_and_oversize_chains_end_without_a_hang() {
    let mut g = Guest::start(ALL);
    let buf = g.drv.alloc(64, 16).unwrap();
    g.drv
        .write_mem(buf, &pfn_bytes(&[(AREA / PAGE) as u32; 16]))
        .unwrap();
    let ids = g.drv.reserve_descriptors(INFLATE, 5).unwrap();
    let (a, b, c, d, e) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    // a → b → a → …
    g.drv
        .write_descriptor(INFLATE, a, Descriptor::new(buf, 4, NEXT, b))
        .unwrap();
    g.drv
        .write_descriptor(INFLATE, b, Descriptor::new(buf, 4, NEXT, a))
        .unwrap();
    // c → c
    g.drv
        .write_descriptor(INFLATE, c, Descriptor::new(buf, 4, NEXT, c))
        .unwrap();
    // d → beyond the table
    g.drv
        .write_descriptor(INFLATE, d, Descriptor::new(buf, 4, NEXT, 5000))
        .unwrap();
    // e: an indirect table longer than the queue (never offered).
    let n = u32::from(QUEUE_SIZE) + 8;
    let table = g.drv.alloc(16 * u64::from(n), 16).unwrap();
    for i in 0..n {
        let desc = Descriptor::new(buf, 4, NEXT, (i + 1) as u16);
        g.drv
            .mem()
            .write_obj(desc, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
    let indirect = VRING_DESC_F_INDIRECT as u16;
    g.drv
        .write_descriptor(INFLATE, e, Descriptor::new(table, 16 * n, indirect, 0))
        .unwrap();
    for head in [a, c, d, e] {
        g.drv.make_available(INFLATE, head).unwrap();
    }
    g.drv.notify(INFLATE);
    let used = g.drv.wait_used_n(INFLATE, 4, HANG_GUARD).unwrap();
    assert_eq!(
        used.iter().map(|u| (u.head, u.len)).collect::<Vec<_>>(),
        [(a, 0), (c, 0), (d, 0), (e, 0)]
    );
    let counters = g.counters();
    assert_eq!((counters.malformed_chains, counters.held_pages), (4, 0));

    // A buffer far longer than the device reads: 8 MiB of zeros is page 0
    // two million times; only the first MAX_PFNS_PER_CHAIN are looked at.
    g.send(INFLATE, &[vec![Buf::raw(AREA, (8 * MIB) as u32, false)]]);
    let counters = g.counters();
    assert_eq!(counters.held_pages, 1);
    assert_eq!(counters.ignored_pfns, MAX_PFNS_PER_CHAIN as u64 - 1);

    // Still serving.
    g.send_pfns(INFLATE, &[(AREA / PAGE) as u32 + 1]);
    assert_eq!(g.counters().held_pages, 2);
}

#[test]
fn config_space_reads_are_bounded_and_only_actual_is_writable() {
    let mut g = Guest::start(ALL);
    g.host.set_target_pages(0x1234_5678).unwrap();
    g.write_actual(0x0bad_cafe);
    assert_eq!(g.drv.config_u32(0), 0x1234_5678);
    assert_eq!(g.drv.config_u32(4), 0x0bad_cafe);
    assert_eq!(g.drv.config_u64(0), 0x0bad_cafe_1234_5678);
    assert_eq!(g.drv.config_u8(7), 0x0b);
    assert_eq!(g.drv.config_u16(6), 0x0bad);
    // Beyond the config space: zeros.
    assert_eq!(g.drv.config_u64(4), 0x0bad_cafe);
    for offset in [8, 12, 16, 0x100, 0xefc] {
        assert_eq!(g.drv.config_u32(offset), 0, "offset {offset:#x}");
    }
    let mut odd = [0xffu8; 3];
    g.drv.read_config(0, &mut odd);
    assert_eq!(odd, [0; 3], "the transport drops odd widths");
    // Writes to num_pages and beyond are ignored.
    g.drv.write_config(0, &[0; 4]);
    g.drv.write_config(8, &[0xff; 8]);
    g.drv.write_config(0x100, &[0xff; 4]);
    assert_eq!(g.drv.config_u64(0), 0x0bad_cafe_1234_5678);
    assert_eq!(g.host.target_pages(), 0x1234_5678);
    assert_eq!(g.drv.config_u32(8), 0);
}

#[test]
fn host_target_raises_a_config_interrupt() {
    let (mem, _memfd) = memfd_ram(MEM);
    let balloon = Balloon::new().unwrap();
    let host = balloon.handle();
    // Set before the driver runs: no interrupt, but the driver reads it.
    host.set_target_mib(64).unwrap();
    let mut drv = Driver::with_memory(Box::new(balloon), mem).unwrap();
    assert_eq!(drv.init(ALL).unwrap(), ALL);
    assert_eq!(drv.interrupt_count(), 0);
    assert_eq!(drv.config_u32(0), 64 * 256);

    let generation = drv.read_reg(regs::CONFIG_GENERATION);
    host.set_target_pages(1000).unwrap();
    assert_eq!(drv.interrupt_count(), 1);
    assert_eq!(drv.ack_interrupt(), INT_CONFIG);
    assert_ne!(drv.read_reg(regs::CONFIG_GENERATION), generation);
    assert_eq!(drv.config_u32(0), 1000);
    assert_eq!(host.target_pages(), 1000);

    // From another thread, as the VMM's control socket would.
    let remote = host.clone();
    std::thread::spawn(move || remote.set_target_pages(2000).unwrap())
        .join()
        .unwrap();
    assert_eq!(drv.interrupt_count(), 2);
    assert_eq!(drv.ack_interrupt(), INT_CONFIG);
    assert_eq!(drv.config_u32(0), 2000);
}

#[test]
fn stats_round_trip() {
    let mut g = Guest::start(ALL);
    assert!(g.host.stats().is_none());
    let mut first = Vec::new();
    for (t, v) in [
        (tag::SWAP_IN, 1),
        (tag::SWAP_OUT, 2),
        (tag::MAJFLT, 3),
        (tag::MINFLT, 4),
        (tag::MEMFREE, 100 * MIB),
        (tag::MEMTOT, 256 * MIB),
        (tag::AVAIL, 150 * MIB),
        (tag::CACHES, 20 * MIB),
        (tag::HTLB_PGALLOC, 8),
        (tag::HTLB_PGFAIL, 9),
        (4242, 77),
    ] {
        first.extend(encode(t, v));
    }
    // The driver's first buffer, at init: the device keeps it.
    let head = g.drv.add_chain(STATS, &[Buf::readable(first)]).unwrap();
    g.drv.notify(STATS);
    let update = g.host.wait_stats(0, HANG_GUARD).unwrap();
    assert_eq!(update.generation, 1);
    let s = update.stats;
    assert_eq!(
        (s.swap_in, s.swap_out, s.major_faults, s.minor_faults),
        (Some(1), Some(2), Some(3), Some(4))
    );
    assert_eq!(
        (
            s.free_memory,
            s.total_memory,
            s.available_memory,
            s.disk_caches
        ),
        (
            Some(100 * MIB),
            Some(256 * MIB),
            Some(150 * MIB),
            Some(20 * MIB)
        )
    );
    assert_eq!(
        (s.hugetlb_allocations, s.hugetlb_failures),
        (Some(8), Some(9))
    );
    assert!(g.drv.used(STATS).unwrap().is_empty(), "buffer held");

    // The host asks; the buffer comes back; the driver refills it, this
    // time with fewer statistics and a cut-off last entry.
    g.host.request_stats().unwrap();
    let used = g.drv.wait_used(STATS, HANG_GUARD).unwrap();
    assert_eq!((used[0].head, used[0].len), (head, 0));
    let mut second = encode(tag::MEMFREE, 50 * MIB).to_vec();
    second.extend(encode(99, 1));
    second.extend(&encode(tag::MEMTOT, 1)[..7]);
    g.drv.add_chain(STATS, &[Buf::readable(second)]).unwrap();
    g.drv.notify(STATS);
    let update = g.host.wait_stats(1, HANG_GUARD).unwrap();
    assert_eq!(update.generation, 2);
    assert_eq!(update.stats.free_memory, Some(50 * MIB));
    assert_eq!(update.stats.total_memory, None);
    assert_eq!(update.stats.swap_in, None);
    assert_eq!(g.host.stats(), Some(update));

    // Asked again before the refill: one buffer back, then nothing more
    // until the driver sends one.
    g.host.request_stats().unwrap();
    g.host.request_stats().unwrap();
    assert_eq!(g.drv.wait_used(STATS, HANG_GUARD).unwrap().len(), 1);
    g.drv
        .add_chain(STATS, &[Buf::readable(vec![1, 2, 3])])
        .unwrap();
    g.drv.notify(STATS);
    let update = g.host.wait_stats(2, HANG_GUARD).unwrap();
    assert_eq!(update.stats, Default::default(), "short buffer: no entries");
    assert!(g.drv.used(STATS).unwrap().is_empty());
}

#[test]
fn stats_need_a_running_driver_that_negotiated_them() {
    let (mem, _memfd) = memfd_ram(MEM);
    let balloon = Balloon::new().unwrap();
    let host = balloon.handle();
    assert!(matches!(host.request_stats(), Err(BalloonError::NotActive)));
    let mut drv = Driver::with_memory(Box::new(balloon), mem).unwrap();
    let features = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING;
    drv.probe().unwrap();
    drv.negotiate(features).unwrap();
    // Without statistics, the reporting queue is queue 2.
    for index in 0..3 {
        drv.setup_queue(index, 64).unwrap();
    }
    drv.driver_ok().unwrap();
    assert!(matches!(
        host.request_stats(),
        Err(BalloonError::StatsNotNegotiated)
    ));
    drv.write_mem(AREA, &[0xee; 16]).unwrap();
    drv.add_chain(2, &[Buf::raw(AREA, PAGE as u32, true)])
        .unwrap();
    drv.notify(2);
    assert_eq!(drv.wait_used(2, HANG_GUARD).unwrap().len(), 1);
    assert_eq!(host.counters().reported_bytes, PAGE);
    assert_eq!(drv.read_mem(AREA, 16).unwrap(), [0; 16]);
}

#[test]
fn queues_must_match_the_negotiated_features() {
    let (mem, _memfd) = memfd_ram(MEM);
    let balloon = Balloon::new().unwrap();
    let host = balloon.handle();
    let mut drv = Driver::with_memory(Box::new(balloon), mem).unwrap();
    // Statistics negotiated but only two queues ready.
    drv.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ)
        .unwrap();
    drv.setup_queue(0, 64).unwrap();
    drv.setup_queue(1, 64).unwrap();
    let err = drv.driver_ok().unwrap_err();
    assert!(matches!(err, HarnessError::DeviceNotOk(s) if s & status::DEVICE_NEEDS_RESET != 0));
    assert!(!host.is_active());
    // The plain two-queue balloon works.
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    drv.setup_queue(0, 64).unwrap();
    drv.setup_queue(1, 64).unwrap();
    drv.driver_ok().unwrap();
    assert!(host.is_active());
}

#[test]
fn impossible_avail_index_makes_the_device_need_a_reset() {
    let mut g = Guest::start(ALL);
    let layout = g.drv.queue_layout(INFLATE).unwrap();
    g.drv
        .write_mem(layout.avail + 2, &1000u16.to_le_bytes())
        .unwrap();
    g.drv.notify(INFLATE);
    let s = g.drv.wait_needs_reset(HANG_GUARD).unwrap();
    assert_eq!(s & status::DRIVER_OK, status::DRIVER_OK);
    // A reset joins the worker and clears the request; then all is well
    // again.
    g.drv.reset();
    assert_eq!(g.drv.status(), 0);
    assert!(!g.drv.transport().is_activated());
    g.init(ALL);
    g.send_pfns(INFLATE, &[(AREA / PAGE) as u32]);
    assert_eq!(g.counters().held_pages, 1);
}

#[test]
fn reset_empties_the_balloon_and_keeps_the_target() {
    let mut g = Guest::start(ALL);
    g.host.set_target_pages(500).unwrap();
    let pfns: Vec<u32> = area_pfns().into_iter().take(500).collect();
    g.send_pfns(INFLATE, &pfns);
    g.write_actual(500);
    assert_eq!(g.counters().held_pages, 500);
    g.drv.reset();
    assert_eq!(g.drv.status(), 0);
    assert!(!g.host.is_active());
    assert_eq!(g.host.actual_pages(), 0);
    assert_eq!(g.counters().held_pages, 0);
    assert_eq!(g.host.target_pages(), 500);
    // Notifications to a reset device go nowhere.
    g.drv.write_reg(regs::QUEUE_NOTIFY, u32::from(INFLATE));

    // A new driver inflates the same pages: they count again.
    g.init(ALL);
    assert_eq!(g.drv.config_u32(0), 500);
    assert_eq!(g.drv.config_u32(4), 0);
    g.send_pfns(INFLATE, &pfns);
    let c = g.counters();
    assert_eq!(
        (c.held_pages, c.inflated_pages, c.ignored_pfns),
        (500, 1000, 0)
    );
}
