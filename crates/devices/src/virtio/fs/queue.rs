//! The request path once virtiofsd is gone: pure and synchronous, so unit
//! tests drive it without threads, fds or a daemon.
//!
//! The device takes each queue over where the daemon's used ring ends
//! ([`take_over`]) and answers every request with a FUSE error reply
//! ([`fail_requests`]): a 16-byte `fuse_out_header` with `error = -errno`
//! and the request's `unique`, so the guest's FUSE layer ends the request
//! with that error instead of waiting forever. Requests that expect no
//! reply (FORGET on the high-priority queue: no device-writable buffer)
//! complete with length 0.
//!
//! Everything in a chain comes from the guest and is checked before use: a
//! buffer outside guest memory, a chain longer than the queue or one that
//! does not end completes the request with length 0 (the guest's driver
//! then sees a short reply, which it reports as an error). Work per call
//! is bounded by the queue size.

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::queue as vq;
use crate::virtio::{GuestMemory, VirtioInterrupt};
use crate::warn_limited;

/// Bytes of `fuse_in_header` (linux/fuse.h).
pub const FUSE_IN_HEADER_LEN: usize = 40;
/// Bytes of `fuse_out_header`.
pub const FUSE_OUT_HEADER_LEN: usize = 16;
/// Offset of `unique` in both headers.
const UNIQUE_OFFSET: usize = 8;

/// Errors that stop the fallback path (the queue stays silent until reset).
pub use crate::virtio::queue::QueueError;

/// What one call of [`fail_requests`] did.
pub type Progress = vq::Progress<Replied>;

/// What the fallback path counts beyond the requests used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replied {
    /// Requests that got an error reply (the rest got length 0).
    pub replied: u16,
}

/// Makes `queue` continue where the backend's used ring ends: every
/// request past the used index is one the backend never completed.
/// Returns that index.
pub fn take_over(mem: &GuestMemory, queue: &mut Queue, index: u16) -> Result<u16, QueueError> {
    let used = queue
        .used_idx(mem, Ordering::Acquire)
        .map_err(|source| QueueError::UsedRing {
            queue: index,
            source,
        })?;
    queue.set_next_avail(used.0);
    queue.set_next_used(used.0);
    Ok(used.0)
}

/// Answers every request available in `queue` (queue number `index`) with
/// a FUSE error reply carrying `-errno`, re-enables notifications (the
/// backend may have left them off) and signals the driver if it wants to
/// know.
pub fn fail_requests<I>(
    mem: &GuestMemory,
    queue: &mut Queue,
    index: u16,
    errno: i32,
    interrupt: &I,
) -> Result<Progress, QueueError>
where
    I: VirtioInterrupt + ?Sized,
{
    let mut progress = Progress::default();
    let mut popped = 0;
    loop {
        while popped < queue.size() {
            let Some(chain) = vq::next_chain(mem, queue, index)? else {
                break;
            };
            popped += 1;
            let head = chain.head_index();
            let len = error_reply(mem, chain, queue.size(), errno);
            if progress.complete(mem, queue, head, len, "virtio-fs") {
                progress.detail.replied += u16::from(len > 0);
            }
        }
        if popped >= queue.size() {
            progress.more_pending = vq::more_pending(mem, queue, popped);
            break;
        }
        // Notifications back on; requests that slipped in meanwhile are
        // served now rather than waiting for a kick that may not come.
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(source) => {
                return Err(QueueError::AvailRing {
                    queue: index,
                    source,
                })
            }
        }
    }
    vq::signal_used(mem, queue, index, progress.completed, interrupt)?;
    Ok(progress)
}

/// Writes the error reply for one chain; returns the used length (0 when
/// the request expects no reply or the chain is malformed).
fn error_reply(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
    errno: i32,
) -> u32 {
    let head = chain.head_index();
    let mut header = [0u8; FUSE_IN_HEADER_LEN];
    let mut have = 0;
    let mut writable: Vec<(GuestAddress, usize)> = Vec::new();
    let mut room = 0;
    let mut ended = false;
    for (count, desc) in chain.enumerate() {
        let len = desc.len() as usize;
        if count >= usize::from(max_descriptors) || !mem.check_range(desc.addr(), len) {
            warn_limited!("virtio-fs: malformed request {head} ignored");
            return 0;
        }
        if desc.is_write_only() {
            let take = len.min(FUSE_OUT_HEADER_LEN - room);
            if take > 0 {
                writable.push((desc.addr(), take));
                room += take;
            }
        } else if writable.is_empty() && have < FUSE_IN_HEADER_LEN {
            let take = len.min(FUSE_IN_HEADER_LEN - have);
            if mem
                .read_slice(&mut header[have..have + take], desc.addr())
                .is_err()
            {
                return 0;
            }
            have += take;
        }
        ended = !desc.has_next();
    }
    // The walk stops early on a loop or an out-of-range `next`.
    if !ended || have < UNIQUE_OFFSET + 8 || room < FUSE_OUT_HEADER_LEN {
        return 0;
    }
    let mut out = [0u8; FUSE_OUT_HEADER_LEN];
    out[..4].copy_from_slice(&(FUSE_OUT_HEADER_LEN as u32).to_le_bytes());
    out[4..8].copy_from_slice(&(-errno).to_le_bytes());
    out[8..].copy_from_slice(&header[UNIQUE_OFFSET..UNIQUE_OFFSET + 8]);
    let mut written = 0;
    for (addr, n) in writable {
        if mem.write_slice(&out[written..written + n], addr).is_err() {
            return 0;
        }
        written += n;
    }
    FUSE_OUT_HEADER_LEN as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::virtio::test_support::Recorder;
    use crate::virtio::InterruptKind;

    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const RING: GuestAddress = GuestAddress(0x1000);
    const BUFS: u64 = 0x10_0000;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn in_header(unique: u64) -> [u8; FUSE_IN_HEADER_LEN] {
        let mut h = [0u8; FUSE_IN_HEADER_LEN];
        h[..4].copy_from_slice(&(FUSE_IN_HEADER_LEN as u32).to_le_bytes());
        h[4..8].copy_from_slice(&3u32.to_le_bytes()); // GETATTR
        h[8..16].copy_from_slice(&unique.to_le_bytes());
        h
    }

    fn used(vq: &MockSplitQueue<'_, GuestMemory>, i: usize) -> (u32, u32) {
        let elem = vq.used().ring().ref_at(i).unwrap().load();
        (elem.id(), elem.len())
    }

    #[test]
    fn requests_get_eio_replies_and_forgets_get_nothing() {
        let mem = memory();
        let vq = MockSplitQueue::create(&mem, RING, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        mem.write_slice(&in_header(0x1234), GuestAddress(BUFS))
            .unwrap();
        mem.write_slice(&in_header(0x99), GuestAddress(BUFS + 0x100))
            .unwrap();
        // Chain 0: header, then the reply split 10 + 6 bytes.
        // Chain 3: a FORGET-like request, readable only.
        // Chain 4: header in two pieces (16 + 24), reply in one buffer.
        let descs = [
            raw(BUFS, 40, NEXT, 1),
            raw(BUFS + 0x1000, 10, WRITE | NEXT, 2),
            raw(BUFS + 0x2000, 6, WRITE, 0),
            raw(BUFS + 0x100, 40, 0, 0),
            raw(BUFS, 16, NEXT, 5),
            raw(BUFS + 16, 24, NEXT, 6),
            raw(BUFS + 0x3000, 64, WRITE, 0),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        let irq = Recorder::default();
        let p = fail_requests(&mem, &mut queue, 1, libc::EIO, &irq).unwrap();
        assert_eq!(
            p,
            Progress {
                completed: 3,
                more_pending: false,
                detail: Replied { replied: 2 },
            }
        );
        assert_eq!(used(&vq, 0), (0, 16));
        assert_eq!(used(&vq, 1), (3, 0));
        assert_eq!(used(&vq, 2), (4, 16));
        let mut reply = [0u8; 16];
        mem.read_slice(&mut reply[..10], GuestAddress(BUFS + 0x1000))
            .unwrap();
        mem.read_slice(&mut reply[10..], GuestAddress(BUFS + 0x2000))
            .unwrap();
        assert_eq!(u32::from_le_bytes(reply[..4].try_into().unwrap()), 16);
        assert_eq!(
            i32::from_le_bytes(reply[4..8].try_into().unwrap()),
            -libc::EIO
        );
        assert_eq!(u64::from_le_bytes(reply[8..].try_into().unwrap()), 0x1234);
        assert_eq!(*irq.0.lock().unwrap(), [InterruptKind::Queue(1)]);
    }

    #[test]
    fn hostile_chains_complete_empty() {
        let mem = memory();
        let vq = MockSplitQueue::create(&mem, RING, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        mem.write_slice(&in_header(7), GuestAddress(BUFS)).unwrap();
        let descs = [
            // Reply buffer outside guest memory.
            raw(BUFS, 40, NEXT, 1),
            raw(0x4000_0000, 16, WRITE, 0),
            // Reply too small for a header.
            raw(BUFS, 40, NEXT, 3),
            raw(BUFS + 0x1000, 8, WRITE, 0),
            // A loop: 4 -> 5 -> 4.
            raw(BUFS, 40, NEXT, 5),
            raw(BUFS + 0x1000, 16, WRITE | NEXT, 4),
        ];
        vq.add_desc_chains(&descs[..4], 0).unwrap();
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        // add_desc_chains published heads 0 and 2; publish the loop at 4.
        vq.avail().ring().ref_at(2).unwrap().store(4u16.to_le());
        vq.avail().idx().store(3u16.to_le());
        let irq = Recorder::default();
        let p = fail_requests(&mem, &mut queue, 1, libc::EIO, &irq).unwrap();
        assert_eq!((p.completed, p.detail.replied), (3, 0));
        for i in 0..3 {
            assert_eq!(used(&vq, i).1, 0);
        }
    }

    #[test]
    fn take_over_resumes_at_the_used_index() {
        let mem = memory();
        let vq = MockSplitQueue::create(&mem, RING, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        mem.write_slice(&in_header(1), GuestAddress(BUFS)).unwrap();
        let descs: Vec<RawDescriptor> = (0..6)
            .map(|i| {
                if i % 2 == 0 {
                    raw(BUFS, 40, NEXT, i + 1)
                } else {
                    raw(BUFS + 0x1000 * u64::from(i), 16, WRITE, 0)
                }
            })
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        // A "backend" completed the first of three requests and died.
        vq.used().idx().store(1u16.to_le());
        assert_eq!(take_over(&mem, &mut queue, 1).unwrap(), 1);
        let irq = Recorder::default();
        let p = fail_requests(&mem, &mut queue, 1, libc::EIO, &irq).unwrap();
        assert_eq!(p.completed, 2);
        assert_eq!(used(&vq, 1), (2, 16));
        assert_eq!(used(&vq, 2), (4, 16));
    }
}
