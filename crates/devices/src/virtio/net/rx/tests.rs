#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::test_support::Recorder;
use crate::virtio::InterruptKind;

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const RING: GuestAddress = GuestAddress(0x1000);
const BUFS: u64 = 0x10_0000;
const MEM_SIZE: usize = 0x40_0000;

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// Hands out canned frames; keeps those handed back.
struct Frames(VecDeque<Vec<u8>>, EventFd, Vec<Vec<u8>>);

impl Frames {
    fn new(frames: &[Vec<u8>]) -> Self {
        Frames(
            frames.iter().cloned().collect(),
            EventFd::new(0).unwrap(),
            Vec::new(),
        )
    }
}

impl AsRawFd for Frames {
    fn as_raw_fd(&self) -> RawFd {
        self.1.as_raw_fd()
    }
}

impl FrameBackend for Frames {
    fn push_frame(&mut self, _: &[u8]) {}
    fn pop_frame(&mut self) -> Option<Vec<u8>> {
        self.0.pop_front()
    }
    fn has_frames(&self) -> bool {
        !self.0.is_empty()
    }
    fn recycle(&mut self, frame: Vec<u8>) {
        self.2.push(frame);
    }
    fn poll(&mut self) {}
    fn poll_delay(&mut self) -> Option<Duration> {
        None
    }
}

/// Makes `lens.len()` single-buffer writable chains available, starting
/// at descriptor `first`, each at its own address.
fn post(vq: &MockSplitQueue<'_, GuestMemory>, first: u16, lens: &[u32]) {
    let descs: Vec<RawDescriptor> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let addr = BUFS + 0x1_0000 * (u64::from(first) + i as u64);
            RawDescriptor::from(Descriptor::new(addr, len, WRITE, 0))
        })
        .collect();
    vq.add_desc_chains(&descs, first).unwrap();
}

fn used_idx(vq: &MockSplitQueue<'_, GuestMemory>) -> u16 {
    vq.used().idx().load()
}

fn used(vq: &MockSplitQueue<'_, GuestMemory>, i: usize) -> (u32, u32) {
    let elem = vq.used().ring().ref_at(i).unwrap().load();
    (elem.id(), elem.len())
}

fn read(mem: &GuestMemory, desc: u16, len: u32) -> Vec<u8> {
    let mut out = vec![0; len as usize];
    let addr = BUFS + 0x1_0000 * u64::from(desc);
    mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

fn mergeable() -> RxState {
    let negotiated = Negotiated {
        mrg_rxbuf: true,
        ..Negotiated::default()
    };
    RxState::new(negotiated, Some(9000))
}

#[test]
fn a_frame_spans_chains_published_at_once() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    post(&vq, 0, &[64, 64, 64, 64]);
    let frame: Vec<u8> = (0..150u8).collect();
    let mut backend = Frames::new(std::slice::from_ref(&frame));
    let irq = Recorder::default();
    let mut state = mergeable();
    let p = process_rx(&mem, &mut queue, &mut backend, &irq, &mut state).unwrap();
    assert_eq!((p.completed, p.detail.frames, p.detail.dropped), (3, 1, 0));
    assert_eq!(used_idx(&vq), 3);
    assert_eq!(
        [used(&vq, 0), used(&vq, 1), used(&vq, 2)],
        [(0, 64), (1, 64), (2, 34)]
    );
    let mut bytes = [read(&mem, 0, 64), read(&mem, 1, 64), read(&mem, 2, 34)].concat();
    let hdr = NetHeader::from_bytes(bytes[..NET_HDR_LEN].try_into().unwrap());
    assert_eq!(hdr.num_buffers, 3);
    assert_eq!(hdr.flags, 0, "GUEST_CSUM not negotiated");
    assert_eq!(bytes.split_off(NET_HDR_LEN), frame);
    assert_eq!(*irq.0.lock().unwrap(), [InterruptKind::Queue(RX_QUEUE)]);
    // The fourth chain is still the guest's.
    assert_eq!(queue.next_avail(), 3);
    // The delivered frame went back to the backend for reuse.
    assert_eq!(backend.2, [frame]);
}

#[test]
fn a_ring_running_dry_mid_frame_publishes_nothing() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    post(&vq, 0, &[64, 64]);
    let mut backend = Frames::new(&[vec![9; 150]]);
    let irq = Recorder::default();
    let mut state = mergeable();
    let p = process_rx(&mem, &mut queue, &mut backend, &irq, &mut state).unwrap();
    assert!(p.detail.blocked);
    assert_eq!((p.completed, p.detail.frames), (0, 0));
    assert_eq!(used_idx(&vq), 0);
    assert!(irq.0.lock().unwrap().is_empty());
    assert!(state.has_work(&backend), "the frame is kept");
    assert!(
        backend.2.is_empty(),
        "a frame not delivered was handed back"
    );
    post(&vq, 2, &[64]);
    let p = process_rx(&mem, &mut queue, &mut backend, &irq, &mut state).unwrap();
    assert_eq!(
        (p.completed, p.detail.frames, p.detail.blocked),
        (3, 1, false)
    );
    assert_eq!(used_idx(&vq), 3);
    assert_eq!(read(&mem, 2, 34)[..], [9; 34]);
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped_and_its_chains_reused() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 4);
    let mut queue: Queue = vq.create_queue().unwrap();
    post(&vq, 0, &[16, 16, 16, 16]);
    let mut backend = Frames::new(&[vec![1; 200], vec![2; 10]]);
    let irq = Recorder::default();
    let mut state = mergeable();
    let p = process_rx(&mem, &mut queue, &mut backend, &irq, &mut state).unwrap();
    assert_eq!((p.detail.frames, p.detail.dropped, p.completed), (1, 1, 2));
    assert_eq!([used(&vq, 0), used(&vq, 1)], [(0, 16), (1, 6)]);
    assert_eq!(read(&mem, 0, 16)[10..], [2, 0, 2, 2, 2, 2], "num_buffers 2");
}

#[test]
fn without_mrg_rxbuf_a_frame_no_buffer_fits_is_dropped_after_a_queue_worth() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 4);
    let mut queue: Queue = vq.create_queue().unwrap();
    post(&vq, 0, &[20, 20, 20, 20]);
    let mut backend = Frames::new(&[vec![1; 100]]);
    let irq = Recorder::default();
    let mut state = RxState::new(Negotiated::default(), Some(1500));
    let p = process_rx(&mem, &mut queue, &mut backend, &irq, &mut state).unwrap();
    assert_eq!((p.detail.frames, p.detail.dropped, p.completed), (0, 1, 4));
    assert!((0..4).all(|i| used(&vq, i).1 == 0));
    assert!(!state.has_work(&backend));
    assert!(read(&mem, 0, 20).iter().all(|&b| b == 0));
}

#[test]
fn multi_descriptor_chains_filling_the_queue_drop_a_frame_they_cannot_take() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 4);
    let mut queue: Queue = vq.create_queue().unwrap();
    // Two chains of two 8-byte descriptors: every descriptor of the queue.
    let next = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    let descs: Vec<RawDescriptor> = (0..4u16)
        .map(|i| {
            let flags = if i % 2 == 0 { WRITE | next } else { WRITE };
            let addr = BUFS + 0x1_0000 * u64::from(i);
            RawDescriptor::from(Descriptor::new(addr, 8, flags, i + 1))
        })
        .collect();
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut backend = Frames::new(&[vec![1; 100], vec![2; 10]]);
    let irq = Recorder::default();
    let mut state = mergeable();
    let p = process_rx(&mem, &mut queue, &mut backend, &irq, &mut state).unwrap();
    assert_eq!(
        (
            p.detail.frames,
            p.detail.dropped,
            p.completed,
            p.detail.blocked
        ),
        (1, 1, 2, false)
    );
    assert_eq!([used(&vq, 0), used(&vq, 1)], [(0, 16), (2, 6)]);
    // Header in descriptor 0 and half of 1, the frame after it.
    assert_eq!(read(&mem, 1, 8)[4..], [2; 4]);
    assert_eq!(read(&mem, 2, 8), [2, 2, 2, 2, 2, 2, 0, 0]);
}
