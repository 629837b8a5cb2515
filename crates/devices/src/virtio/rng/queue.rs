//! The virtio-rng request path: pure and synchronous, so unit tests and
//! fuzzers drive it without threads or fds.
//!
//! A request is a descriptor chain of device-writable buffers; the device
//! fills them with entropy and reports how many bytes it wrote. Everything in
//! a chain comes from the guest and is checked before a byte is written:
//! a read-only descriptor, a buffer outside guest memory, or a chain that
//! does not end within the queue size (a loop) completes the request with
//! length 0. Work per call is bounded: at most one queue's worth of chains,
//! at most [`MAX_REQUEST_BYTES`] per chain.

use std::io;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::queue as vq;
use crate::virtio::{GuestMemory, VirtioInterrupt};
use crate::warn_limited;

/// The most entropy one request receives; larger buffers are partly filled,
/// which the specification allows.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Where random bytes come from.
pub trait EntropySource {
    /// Fills all of `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

impl<F: FnMut(&mut [u8]) -> io::Result<()>> EntropySource for F {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self(buf)
    }
}

/// The host kernel's entropy pool, through `getrandom(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostEntropy;

impl EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            // SAFETY: `rest` is a live, exclusively borrowed buffer of
            // `rest.len()` bytes; getrandom writes at most that many.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            filled += n as usize;
        }
        Ok(())
    }
}

/// Errors that stop queue processing (the queue is unusable until reset).
pub use crate::virtio::queue::QueueError;

/// What one call of [`process_queue`] did.
pub type Progress = vq::Progress<Written>;

/// What virtio-rng counts beyond the chains used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Random bytes written to the guest.
    pub bytes: u64,
}

/// Serves the requests the driver made available in `queue` with bytes from
/// `source`, then signals `interrupt` if the driver wants to know.
pub fn process_queue<E, I>(
    mem: &GuestMemory,
    queue: &mut Queue,
    source: &mut E,
    interrupt: &I,
) -> Result<Progress, QueueError>
where
    E: EntropySource + ?Sized,
    I: VirtioInterrupt + ?Sized,
{
    let mut progress = Progress::default();
    let mut popped = 0;
    while popped < queue.size() {
        let Some(chain) = vq::next_chain(mem, queue, 0)? else {
            break;
        };
        popped += 1;
        let head = chain.head_index();
        // No chain may hold more descriptors than the queue: a direct one
        // cannot without looping, and we never offer indirect descriptors.
        let len = serve_request(mem, chain, queue.size(), source);
        if progress.complete(mem, queue, head, len, "virtio-rng") {
            progress.detail.bytes += u64::from(len);
        }
    }
    progress.finish(mem, queue, 0, popped, interrupt)
}

/// Fills one request; returns the number of bytes written (0 if the chain is
/// malformed).
fn serve_request<E>(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
    source: &mut E,
) -> u32
where
    E: EntropySource + ?Sized,
{
    let head = chain.head_index();
    let buffers = match writable_buffers(mem, chain, usize::from(max_descriptors)) {
        Ok(b) => b,
        Err(why) => {
            warn_limited!("virtio-rng: request {head} rejected: {why}");
            return 0;
        }
    };
    let total: usize = buffers.iter().map(|(_, len)| len).sum();
    let mut bytes = vec![0u8; total];
    if let Err(e) = source.fill(&mut bytes) {
        warn_limited!("virtio-rng: no entropy for request {head}: {e}");
        return 0;
    }
    let mut written = 0;
    for (addr, len) in buffers {
        if let Err(e) = mem.write_slice(&bytes[written..written + len], addr) {
            warn_limited!("virtio-rng: cannot write request {head}: {e}");
            break;
        }
        written += len;
    }
    // `written` is at most MAX_REQUEST_BYTES.
    written as u32
}

/// Walks a chain and returns the (address, length) of its buffers, capped
/// at [`MAX_REQUEST_BYTES`] in total.
fn writable_buffers(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: usize,
) -> Result<Vec<(GuestAddress, usize)>, &'static str> {
    let mut buffers = Vec::new();
    let mut total = 0;
    let mut last: Option<Descriptor> = None;
    for (count, desc) in chain.enumerate() {
        if count >= max_descriptors {
            return Err("chain longer than the queue");
        }
        if !desc.is_write_only() {
            return Err("read-only descriptor");
        }
        let len = desc.len() as usize;
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err("buffer outside guest memory");
        }
        let take = len.min(MAX_REQUEST_BYTES - total);
        if take > 0 {
            buffers.push((desc.addr(), take));
            total += take;
        }
        last = Some(desc);
    }
    match last {
        None => Err("head descriptor unreadable"),
        // The walk stopped on a descriptor that still points onwards: the
        // next index was out of range, unreadable, or the chain loops.
        Some(d) if d.has_next() => Err("chain does not end"),
        Some(_) => Ok(buffers),
    }
}

#[cfg(test)]
mod tests;
