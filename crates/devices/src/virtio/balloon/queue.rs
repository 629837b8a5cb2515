//! The balloon's queue paths: pure and synchronous, so unit tests and
//! fuzzers drive them without threads or fds.
//!
//! Every chain comes from an untrusted guest. A chain is walked once, at
//! most one queue size of descriptors; one that does not end (a loop, a
//! broken link) or points outside guest memory is dropped whole and given
//! back with length 0. What the device reads (page numbers, statistics) is
//! copied into host memory first and only then acted on, up to
//! [`MAX_PFNS_PER_CHAIN`] page numbers or [`MAX_STATS_BYTES`]; a trailing
//! partial entry is ignored. Every entry is checked on its own: a page
//! number that is not RAM, a page inflated twice, a reported range that is
//! misaligned or not inside one RAM region is skipped and counted, never
//! fatal. Work per call is bounded by one queue's worth of chains. Only an
//! available ring that cannot be read (an impossible index) is an error:
//! the caller stops serving the device until reset.
//!
//! The device never writes into guest buffers: every chain is used with
//! length 0.

use tracing::debug;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::handle::{BalloonCounters, Counters};
use super::pages::{HeldPages, Insert, PageRun, RunBuilder};
use super::release::{is_releasable, MemoryReleaser};
use super::stats::BalloonStats;
use super::{MAX_PFNS_PER_CHAIN, MAX_STATS_BYTES};
use crate::virtio::queue::next_chain;
use crate::virtio::{GuestMemory, VirtioInterrupt};
use crate::warn_limited;

/// What a call did.
pub use crate::virtio::queue::Progress;
/// Errors that stop queue processing (the device is unusable until reset).
pub use crate::virtio::queue::QueueError;

/// What the inflate and deflate queues do with their page numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOp {
    /// Take the pages into the balloon and release their host memory.
    Inflate,
    /// Give the pages back to the guest.
    Deflate,
}

/// What every queue path works with.
pub struct QueueContext<'a, I: ?Sized> {
    /// Guest memory.
    pub mem: &'a GuestMemory,
    /// Signals used buffers.
    pub interrupt: &'a I,
    /// Where the outcome of every chain is counted.
    pub counters: &'a Counters,
}

/// One queue and its index (for the interrupt).
pub struct IndexedQueue<'a> {
    /// The queue.
    pub queue: &'a mut Queue,
    /// Its index in the device.
    pub index: u16,
}

/// Serves the inflate or deflate queue: page numbers in, pages held or
/// given back, host memory released for inflated runs.
pub fn process_pages<I, R>(
    ctx: &QueueContext<'_, I>,
    vq: IndexedQueue<'_>,
    op: PageOp,
    held: &mut HeldPages,
    releaser: &mut R,
) -> Result<Progress, QueueError>
where
    I: VirtioInterrupt + ?Sized,
    R: MemoryReleaser + ?Sized,
{
    let mut done = Done::default();
    while done.popped < vq.queue.size() {
        let Some(chain) = next_chain(ctx.mem, vq.queue, vq.index)? else {
            break;
        };
        done.popped += 1;
        let head = chain.head_index();
        let mut delta = BalloonCounters::default();
        match read_chain(ctx.mem, chain, vq.queue.size(), MAX_PFNS_PER_CHAIN * 4) {
            Ok(bytes) => {
                let pfns = bytes
                    .chunks_exact(4)
                    .filter_map(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| u64::from(u32::from_le_bytes(b)));
                match op {
                    PageOp::Inflate => inflate(ctx.mem, pfns, held, releaser, &mut delta),
                    PageOp::Deflate => deflate(pfns, held, &mut delta),
                }
            }
            Err(why) => {
                warn_limited!(
                    "virtio-balloon: chain {head} of queue {} dropped: {why}",
                    vq.index
                );
                delta.malformed_chains += 1;
            }
        }
        // Counted before the chain is used: a driver that sees it back
        // sees its effect in the counters.
        ctx.counters.add(&delta);
        ctx.counters.set_held(held.held());
        done.complete(ctx.mem, vq.queue, head);
    }
    done.finish(ctx, vq)
}

fn inflate<R: MemoryReleaser + ?Sized>(
    mem: &GuestMemory,
    pfns: impl Iterator<Item = u64>,
    held: &mut HeldPages,
    releaser: &mut R,
    delta: &mut BalloonCounters,
) {
    let mut runs = RunBuilder::default();
    for pfn in pfns {
        match held.insert(pfn) {
            Insert::Added { region } => {
                delta.inflated_pages += 1;
                if let Some(run) = runs.push(region, pfn) {
                    release_run(mem, run, releaser, delta);
                }
            }
            Insert::AlreadyHeld | Insert::NotRam => {
                debug!("virtio-balloon: inflate of page {pfn:#x} ignored");
                delta.ignored_pfns += 1;
            }
        }
    }
    if let Some(run) = runs.finish() {
        release_run(mem, run, releaser, delta);
    }
}

fn release_run<R: MemoryReleaser + ?Sized>(
    mem: &GuestMemory,
    run: PageRun,
    releaser: &mut R,
    delta: &mut BalloonCounters,
) {
    if let Err(e) = releaser.release(mem, GuestAddress(run.addr()), run.len()) {
        // The pages stay in the balloon: the guest gave them up either way.
        warn_limited!("virtio-balloon: {e}");
        delta.release_errors += 1;
    }
}

fn deflate(pfns: impl Iterator<Item = u64>, held: &mut HeldPages, delta: &mut BalloonCounters) {
    for pfn in pfns {
        if held.remove(pfn) {
            delta.deflated_pages += 1;
        } else {
            debug!("virtio-balloon: deflate of page {pfn:#x} ignored");
            delta.ignored_pfns += 1;
        }
    }
}

/// Serves the free page reporting queue: every device-writable descriptor
/// is a free range whose host memory is released.
pub fn process_reports<I, R>(
    ctx: &QueueContext<'_, I>,
    vq: IndexedQueue<'_>,
    releaser: &mut R,
) -> Result<Progress, QueueError>
where
    I: VirtioInterrupt + ?Sized,
    R: MemoryReleaser + ?Sized,
{
    let mut done = Done::default();
    while done.popped < vq.queue.size() {
        let Some(chain) = next_chain(ctx.mem, vq.queue, vq.index)? else {
            break;
        };
        done.popped += 1;
        let head = chain.head_index();
        let mut delta = BalloonCounters::default();
        match walk(chain, vq.queue.size()) {
            Ok(bufs) => {
                for buf in bufs {
                    // Linux reports in device-writable buffers; QEMU only
                    // honours those, and so do we.
                    if !buf.writable || !is_releasable(ctx.mem, buf.addr, u64::from(buf.len)) {
                        debug!(
                            "virtio-balloon: report {:#x}+{:#x} ignored",
                            buf.addr, buf.len
                        );
                        delta.ignored_ranges += 1;
                        continue;
                    }
                    let len = u64::from(buf.len);
                    match releaser.release(ctx.mem, GuestAddress(buf.addr), len) {
                        Ok(()) => delta.reported_bytes += len,
                        Err(e) => {
                            warn_limited!("virtio-balloon: {e}");
                            delta.release_errors += 1;
                        }
                    }
                }
            }
            Err(why) => {
                warn_limited!("virtio-balloon: report chain {head} dropped: {why}");
                delta.malformed_chains += 1;
            }
        }
        ctx.counters.add(&delta);
        done.complete(ctx.mem, vq.queue, head);
    }
    done.finish(ctx, vq)
}

/// Serves the statistics queue: every buffer the driver sends holds fresh
/// statistics, handed to `publish`. The device keeps the newest buffer in
/// `held` until [`return_stats_buffer`] asks for the next round; an older
/// one still held (a driver that sent two) goes back at once, as does a
/// malformed one.
pub fn receive_stats<I>(
    ctx: &QueueContext<'_, I>,
    vq: IndexedQueue<'_>,
    held: &mut Option<u16>,
    publish: &mut dyn FnMut(BalloonStats),
) -> Result<Progress, QueueError>
where
    I: VirtioInterrupt + ?Sized,
{
    let mut done = Done::default();
    while done.popped < vq.queue.size() {
        let Some(chain) = next_chain(ctx.mem, vq.queue, vq.index)? else {
            break;
        };
        done.popped += 1;
        let head = chain.head_index();
        match read_chain(ctx.mem, chain, vq.queue.size(), MAX_STATS_BYTES) {
            Ok(bytes) => {
                publish(BalloonStats::parse(&bytes));
                if let Some(old) = held.replace(head) {
                    debug!("virtio-balloon: driver sent a second stats buffer");
                    done.complete(ctx.mem, vq.queue, old);
                }
            }
            Err(why) => {
                warn_limited!("virtio-balloon: stats chain {head} dropped: {why}");
                ctx.counters.add(&BalloonCounters {
                    malformed_chains: 1,
                    ..Default::default()
                });
                done.complete(ctx.mem, vq.queue, head);
            }
        }
    }
    done.finish(ctx, vq)
}

/// Gives the held statistics buffer back to the driver, which answers with
/// fresh statistics. Returns whether a buffer was held.
pub fn return_stats_buffer<I>(
    ctx: &QueueContext<'_, I>,
    vq: IndexedQueue<'_>,
    held: &mut Option<u16>,
) -> Result<bool, QueueError>
where
    I: VirtioInterrupt + ?Sized,
{
    let Some(head) = held.take() else {
        return Ok(false);
    };
    let mut done = Done::default();
    done.complete(ctx.mem, vq.queue, head);
    done.finish(ctx, vq)?;
    Ok(true)
}

/// Chains popped and completed by one call.
#[derive(Default)]
struct Done {
    popped: u16,
    progress: Progress,
}

impl Done {
    /// Puts `head` in the used ring with length 0.
    fn complete(&mut self, mem: &GuestMemory, queue: &mut Queue, head: u16) {
        self.progress
            .complete(mem, queue, head, 0, "virtio-balloon");
    }

    /// Signals the driver if anything was used, and says whether chains
    /// are left beyond this call's bound.
    fn finish<I: VirtioInterrupt + ?Sized>(
        self,
        ctx: &QueueContext<'_, I>,
        vq: IndexedQueue<'_>,
    ) -> Result<Progress, QueueError> {
        self.progress
            .finish(ctx.mem, vq.queue, vq.index, self.popped, ctx.interrupt)
    }
}

/// One descriptor of a chain, as the guest wrote it.
#[derive(Debug, Clone, Copy)]
struct ChainBuf {
    addr: u64,
    len: u32,
    writable: bool,
}

/// Walks a chain of at most `max_descriptors` (the queue size: no direct
/// chain is longer without looping, and indirect descriptors were never
/// offered).
fn walk(
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
) -> Result<Vec<ChainBuf>, &'static str> {
    let mut bufs = Vec::new();
    let mut last_has_next = None;
    for (count, desc) in chain.enumerate() {
        if count >= usize::from(max_descriptors) {
            return Err("chain longer than the queue");
        }
        bufs.push(ChainBuf {
            addr: desc.addr().0,
            len: desc.len(),
            writable: desc.is_write_only(),
        });
        last_has_next = Some(desc.has_next());
    }
    match last_has_next {
        None => Err("head descriptor unreadable"),
        // The walk stopped on a descriptor that still points onwards: the
        // next index was out of range or unreadable.
        Some(true) => Err("chain does not end"),
        Some(false) => Ok(bufs),
    }
}

/// Copies the device-readable bytes of a chain, up to `cap`, into host
/// memory. Device-writable descriptors are skipped.
fn read_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
    cap: usize,
) -> Result<Vec<u8>, &'static str> {
    let bufs = walk(chain, max_descriptors)?;
    let mut bytes = Vec::new();
    for buf in bufs.iter().filter(|b| !b.writable) {
        let take = (buf.len as usize).min(cap - bytes.len());
        if take == 0 {
            continue;
        }
        let start = bytes.len();
        bytes.resize(start + take, 0);
        mem.read_slice(&mut bytes[start..], GuestAddress(buf.addr))
            .map_err(|_| "buffer outside guest memory")?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
