#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;

use vm_memory::Bytes;

use super::*;
use crate::virtio::test_support::Recorder;
use crate::virtio::vsock::packet::op;
use crate::virtio::InterruptKind;

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const RING: GuestAddress = GuestAddress(0x1000);
const BUFS: u64 = 0x10_0000;
const MEM_SIZE: usize = 0x40_0000;

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A backend that records what it is given and hands out canned packets.
struct Fake {
    ready: bool,
    got: Vec<(Header, Vec<u8>)>,
    malformed: Vec<Option<Header>>,
    out: VecDeque<(Header, Vec<u8>)>,
    /// has_rx() says yes even when `out` is empty.
    claims_rx: bool,
    max_payloads: Vec<usize>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            ready: true,
            got: Vec::new(),
            malformed: Vec::new(),
            out: VecDeque::new(),
            claims_rx: false,
            max_payloads: Vec::new(),
        }
    }
}

impl VsockBackend for Fake {
    fn tx_ready(&self) -> bool {
        self.ready
    }
    fn send_pkt(&mut self, hdr: &Header, payload: &[u8]) {
        self.got.push((*hdr, payload.to_vec()));
    }
    fn malformed(&mut self, hdr: Option<&Header>) {
        self.malformed.push(hdr.copied());
    }
    fn has_rx(&self) -> bool {
        self.claims_rx || !self.out.is_empty()
    }
    fn recv_pkt(&mut self, max_payload: usize, payload: &mut Vec<u8>) -> Option<Header> {
        self.max_payloads.push(max_payload);
        let (hdr, bytes) = self.out.pop_front()?;
        payload.clear();
        payload.extend_from_slice(&bytes[..bytes.len().min(max_payload)]);
        Some(Header {
            len: payload.len() as u32,
            ..hdr
        })
    }
}

/// Publishes chains given as (addr, len, writable) lists, linking them.
fn publish(vq: &MockSplitQueue<'_, GuestMemory>, first: u16, chains: &[&[(u64, u32, bool)]]) {
    let mut descs = Vec::new();
    let mut index = first;
    for chain in chains {
        for (i, &(addr, len, writable)) in chain.iter().enumerate() {
            let mut flags = if writable { WRITE } else { 0 };
            if i + 1 < chain.len() {
                flags |= NEXT;
            }
            descs.push(RawDescriptor::from(Descriptor::new(
                addr,
                len,
                flags,
                index + 1,
            )));
            index += 1;
        }
    }
    vq.add_desc_chains(&descs, first).unwrap();
}

fn used(vq: &MockSplitQueue<'_, GuestMemory>, i: usize) -> (u32, u32) {
    let elem = vq.used().ring().ref_at(i).unwrap().load();
    (elem.id(), elem.len())
}

fn packet(op: u16, payload: &[u8]) -> Vec<u8> {
    let hdr = Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 10,
        dst_port: 20,
        len: payload.len() as u32,
        socket_type: 1,
        op,
        ..Header::default()
    };
    [&hdr.to_bytes()[..], payload].concat()
}

#[test]
fn tx_copies_a_packet_split_anywhere() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    let bytes = packet(op::RW, b"payload!");
    mem.write_slice(&bytes, GuestAddress(BUFS)).unwrap();
    // 20 | 30 | 2: the header ends inside the second buffer.
    publish(
        &vq,
        0,
        &[&[
            (BUFS, 20, false),
            (BUFS + 20, 30, false),
            (BUFS + 50, 2, false),
        ]],
    );
    let mut fake = Fake::default();
    let irq = Recorder::default();
    let mut scratch = Vec::new();
    let p = process_tx(&mem, &mut queue, &mut fake, &irq, &mut scratch).unwrap();
    assert_eq!(
        p,
        Progress {
            completed: 1,
            more_pending: false,
            detail: Paused { paused: false },
        }
    );
    assert_eq!(fake.got.len(), 1);
    assert_eq!(fake.got[0].0.op, op::RW);
    assert_eq!(fake.got[0].1, b"payload!");
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(*irq.0.lock().unwrap(), [InterruptKind::Queue(TX_QUEUE)]);
}

#[test]
fn tx_reports_what_it_could_read_of_a_bad_chain() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    let long = packet(op::RW, &[7; 8]);
    mem.write_slice(&long[..HDR_LEN], GuestAddress(BUFS))
        .unwrap();
    // hdr.len says 8: the chain holds 4.
    mem.write_slice(&long, GuestAddress(BUFS + 0x100)).unwrap();
    publish(
        &vq,
        0,
        &[
            &[
                (BUFS, HDR_LEN as u32, false),
                (BUFS + HDR_LEN as u64, 4, false),
            ],
            // Payload descriptor writable.
            &[
                (BUFS + 0x100, HDR_LEN as u32, false),
                (BUFS + 0x200, 8, true),
            ],
            // Header outside memory.
            &[(MEM_SIZE as u64 - 10, HDR_LEN as u32, false)],
            // Header descriptor writable.
            &[(BUFS, HDR_LEN as u32 + 8, true)],
        ],
    );
    let mut fake = Fake::default();
    let irq = Recorder::default();
    let mut scratch = Vec::new();
    let p = process_tx(&mem, &mut queue, &mut fake, &irq, &mut scratch).unwrap();
    assert_eq!(p.completed, 4);
    assert!(fake.got.is_empty());
    let ops: Vec<Option<u16>> = fake.malformed.iter().map(|h| h.map(|h| h.op)).collect();
    assert_eq!(ops, [Some(op::RW), Some(op::RW), None, None]);
}

#[test]
fn tx_chain_loops_are_cut_at_the_queue_size() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 4);
    let mut queue: Queue = vq.create_queue().unwrap();
    mem.write_slice(&packet(op::RW, &[]), GuestAddress(BUFS))
        .unwrap();
    // 0 → 1 → 0 → …
    vq.desc_table()
        .store(0, RawDescriptor::from(Descriptor::new(BUFS, 8, NEXT, 1)))
        .unwrap();
    vq.desc_table()
        .store(
            1,
            RawDescriptor::from(Descriptor::new(BUFS + 8, 36, NEXT, 0)),
        )
        .unwrap();
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().idx().store(1);
    let mut fake = Fake::default();
    let mut scratch = Vec::new();
    let p = process_tx(
        &mem,
        &mut queue,
        &mut fake,
        &Recorder::default(),
        &mut scratch,
    )
    .unwrap();
    assert_eq!(p.completed, 1);
    assert_eq!(fake.malformed.len(), 1);
    assert!(fake.got.is_empty());
}

#[test]
fn tx_waits_while_the_backend_is_not_ready() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    mem.write_slice(&packet(op::RST, &[]), GuestAddress(BUFS))
        .unwrap();
    publish(&vq, 0, &[&[(BUFS, HDR_LEN as u32, false)]]);
    let mut fake = Fake {
        ready: false,
        ..Fake::default()
    };
    let irq = Recorder::default();
    let mut scratch = Vec::new();
    let p = process_tx(&mem, &mut queue, &mut fake, &irq, &mut scratch).unwrap();
    assert_eq!(
        p,
        Progress {
            completed: 0,
            more_pending: false,
            detail: Paused { paused: true },
        }
    );
    assert!(irq.0.lock().unwrap().is_empty());
    // The chain is still there once the backend is ready.
    fake.ready = true;
    let p = process_tx(&mem, &mut queue, &mut fake, &irq, &mut scratch).unwrap();
    assert_eq!(p.completed, 1);
    assert_eq!(fake.got.len(), 1);
}

#[test]
fn rx_scatters_a_packet_over_the_chain_and_caps_the_payload() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    publish(
        &vq,
        0,
        &[&[
            (BUFS, 10, true),
            (BUFS + 0x100, 50, true),
            (BUFS + 0x200, 40, true),
        ]],
    );
    let mut fake = Fake::default();
    let hdr = Header {
        op: op::RW,
        dst_port: 99,
        ..Header::default()
    };
    fake.out.push_back((hdr, (0..=255).collect()));
    let irq = Recorder::default();
    let mut scratch = Vec::new();
    let p = process_rx(&mem, &mut queue, &mut fake, &irq, &mut scratch).unwrap();
    assert_eq!(p.completed, 1);
    // Room: 100 bytes, 44 of them for the header.
    assert_eq!(fake.max_payloads, [56]);
    assert_eq!(used(&vq, 0), (0, 100));
    let mut bytes = [0u8; 100];
    mem.read_slice(&mut bytes[..10], GuestAddress(BUFS))
        .unwrap();
    mem.read_slice(&mut bytes[10..60], GuestAddress(BUFS + 0x100))
        .unwrap();
    mem.read_slice(&mut bytes[60..], GuestAddress(BUFS + 0x200))
        .unwrap();
    let got = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
    assert_eq!((got.op, got.dst_port, got.len), (op::RW, 99, 56));
    assert_eq!(bytes[HDR_LEN..], (0..56).collect::<Vec<u8>>()[..]);
    assert_eq!(*irq.0.lock().unwrap(), [InterruptKind::Queue(RX_QUEUE)]);
}

#[test]
fn rx_never_offers_more_than_a_packet() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    publish(&vq, 0, &[&[(BUFS, 0x20_0000, true)]]);
    let mut fake = Fake::default();
    fake.out.push_back((Header::default(), Vec::new()));
    let mut scratch = Vec::new();
    process_rx(
        &mem,
        &mut queue,
        &mut fake,
        &Recorder::default(),
        &mut scratch,
    )
    .unwrap();
    assert_eq!(fake.max_payloads, [MAX_PKT_PAYLOAD]);
}

#[test]
fn rx_keeps_the_buffer_when_the_backend_has_nothing_after_all() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    publish(&vq, 0, &[&[(BUFS, 4096, true)]]);
    let mut fake = Fake {
        claims_rx: true,
        ..Fake::default()
    };
    let irq = Recorder::default();
    let mut scratch = Vec::new();
    let p = process_rx(&mem, &mut queue, &mut fake, &irq, &mut scratch).unwrap();
    assert_eq!(p.completed, 0);
    assert!(irq.0.lock().unwrap().is_empty());
    // The same buffer carries the next packet.
    fake.claims_rx = false;
    fake.out.push_back((Header::default(), b"abc".to_vec()));
    let p = process_rx(&mem, &mut queue, &mut fake, &irq, &mut scratch).unwrap();
    assert_eq!(p.completed, 1);
    assert_eq!(used(&vq, 0), (0, HDR_LEN as u32 + 3));
}

#[test]
fn rx_buffers_that_cannot_hold_a_packet_come_back_empty() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    publish(
        &vq,
        0,
        &[
            &[(BUFS, HDR_LEN as u32 - 1, true)],
            &[(BUFS, 100, false)],
            &[(BUFS, 40, true), (BUFS + 0x100, 40, false)],
            &[(MEM_SIZE as u64 - 50, 100, true)],
            &[(BUFS, 0, true)],
            &[(BUFS + 0x800, HDR_LEN as u32, true)],
            &[(BUFS + 0x1000, HDR_LEN as u32 + 1, true)],
        ],
    );
    let mut fake = Fake::default();
    fake.out.push_back((
        Header {
            op: op::RST,
            ..Header::default()
        },
        Vec::new(),
    ));
    let mut scratch = Vec::new();
    let p = process_rx(
        &mem,
        &mut queue,
        &mut fake,
        &Recorder::default(),
        &mut scratch,
    )
    .unwrap();
    assert_eq!(p.completed, 7);
    let lens: Vec<u32> = (0..7).map(|i| used(&vq, i).1).collect();
    assert_eq!(lens, [0, 0, 0, 0, 0, 0, HDR_LEN as u32]);
    // Nothing was written where the device was not allowed to.
    let mut ro = [0u8; 100];
    mem.read_slice(&mut ro, GuestAddress(BUFS)).unwrap();
    assert!(ro.iter().all(|&b| b == 0));
}

#[test]
fn a_broken_avail_index_is_an_error() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    vq.avail().idx().store(1000);
    let mut fake = Fake::default();
    let mut scratch = Vec::new();
    let err = process_tx(
        &mem,
        &mut queue,
        &mut fake,
        &Recorder::default(),
        &mut scratch,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        QueueError::AvailRing {
            queue: TX_QUEUE,
            ..
        }
    ));
}
