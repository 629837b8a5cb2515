use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Address;

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

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

fn ones(buf: &mut [u8]) -> io::Result<()> {
    buf.fill(0xa5);
    Ok(())
}

fn used(vq: &MockSplitQueue<'_, GuestMemory>, i: usize) -> (u32, u32) {
    let elem = vq.used().ring().ref_at(i).unwrap().load();
    (elem.id(), elem.len())
}

#[test]
fn serves_chains_and_signals_once() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    // Chain 0: one 32-byte buffer. Chain 1: 8 + 8 bytes.
    let descs = [
        desc(BUFS, 32, WRITE),
        desc(BUFS + 0x100, 8, WRITE | NEXT),
        desc(BUFS + 0x200, 8, WRITE),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    // add_desc_chains leaves `next` alone: link descriptor 1 to 2.
    vq.desc_table()
        .store(
            1,
            RawDescriptor::from(Descriptor::new(BUFS + 0x100, 8, WRITE | NEXT, 2)),
        )
        .unwrap();

    let irq = Recorder::default();
    let progress = process_queue(&mem, &mut queue, &mut ones, &irq).unwrap();
    assert_eq!(
        progress,
        Progress {
            completed: 2,
            more_pending: false,
            detail: Written { bytes: 48 },
        }
    );
    assert_eq!(used(&vq, 0), (0, 32));
    assert_eq!(used(&vq, 1), (1, 16));
    assert_eq!(*irq.0.lock().unwrap(), [InterruptKind::Queue(0)]);
    let mut got = [0u8; 8];
    mem.read_slice(&mut got, GuestAddress(BUFS + 0x200))
        .unwrap();
    assert_eq!(got, [0xa5; 8]);

    // Nothing new: no work, no interrupt.
    let progress = process_queue(&mem, &mut queue, &mut ones, &irq).unwrap();
    assert_eq!(progress, Progress::default());
    assert_eq!(irq.0.lock().unwrap().len(), 1);
}

#[test]
fn entropy_failure_completes_the_request_empty() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    vq.add_desc_chains(&[desc(BUFS, 32, WRITE)], 0).unwrap();
    let mut broken = |_: &mut [u8]| Err(io::Error::other("no entropy"));
    let irq = Recorder::default();
    let progress = process_queue(&mem, &mut queue, &mut broken, &irq).unwrap();
    assert_eq!(
        progress,
        Progress {
            completed: 1,
            more_pending: false,
            detail: Written { bytes: 0 },
        }
    );
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(irq.0.lock().unwrap().len(), 1);
}

#[test]
fn stops_after_one_queue_worth_and_reports_more() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 4);
    let mut queue: Queue = vq.create_queue().unwrap();
    let descs: Vec<_> = (0..4).map(|i| desc(BUFS + 0x100 * i, 4, WRITE)).collect();
    vq.add_desc_chains(&descs, 0).unwrap();
    // While the device serves the 4th request, the driver recycles
    // descriptor 0 into a 5th: more than one queue's worth in one call.
    let avail = vq.avail_addr();
    let driver_mem = mem.clone();
    let mut calls = 0;
    let mut racing = move |buf: &mut [u8]| {
        calls += 1;
        if calls == 4 {
            driver_mem.write_obj(0u16, avail.unchecked_add(4)).unwrap();
            driver_mem
                .write_obj(5u16.to_le(), avail.unchecked_add(2))
                .unwrap();
        }
        ones(buf)
    };
    let irq = Recorder::default();
    let progress = process_queue(&mem, &mut queue, &mut racing, &irq).unwrap();
    assert_eq!(
        progress,
        Progress {
            completed: 4,
            more_pending: true,
            detail: Written { bytes: 16 },
        }
    );
    let progress = process_queue(&mem, &mut queue, &mut racing, &irq).unwrap();
    assert_eq!(
        progress,
        Progress {
            completed: 1,
            more_pending: false,
            detail: Written { bytes: 4 },
        }
    );
}

#[test]
fn impossible_avail_index_is_an_error() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    mem.write_obj(100u16.to_le(), vq.avail_addr().unchecked_add(2))
        .unwrap();
    let irq = Recorder::default();
    let err = process_queue(&mem, &mut queue, &mut ones, &irq).unwrap_err();
    assert!(matches!(
        err,
        QueueError::AvailRing {
            queue: 0,
            source: virtio_queue::Error::InvalidAvailRingIndex
        }
    ));
    assert!(irq.0.lock().unwrap().is_empty());
}

#[test]
fn malformed_chains_complete_empty() {
    let mem = memory();
    let vq = MockSplitQueue::create(&mem, RING, 8);
    let mut queue: Queue = vq.create_queue().unwrap();
    let descs = [
        desc(BUFS, 8, 0),          // read-only
        desc(0x40_0000, 8, WRITE), // outside memory
        desc(0x1f_fffc, 8, WRITE), // straddles the end
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    // Descriptor 3 links to itself.
    vq.desc_table()
        .store(
            3,
            RawDescriptor::from(Descriptor::new(BUFS, 8, WRITE | NEXT, 3)),
        )
        .unwrap();
    mem.write_obj(3u16.to_le(), vq.avail_addr().unchecked_add(4 + 2 * 3))
        .unwrap();
    mem.write_obj(4u16.to_le(), vq.avail_addr().unchecked_add(2))
        .unwrap();
    let irq = Recorder::default();
    let progress = process_queue(&mem, &mut queue, &mut ones, &irq).unwrap();
    assert_eq!(
        progress,
        Progress {
            completed: 4,
            more_pending: false,
            detail: Written { bytes: 0 },
        }
    );
    for i in 0..4 {
        assert_eq!(used(&vq, i), (i as u32, 0));
    }
    let mut got = [0u8; 8];
    mem.read_slice(&mut got, GuestAddress(BUFS)).unwrap();
    assert_eq!(got, [0; 8]);
}

#[test]
fn host_entropy_fills_whole_buffers() {
    let mut a = vec![0u8; 100_000];
    let mut b = vec![0u8; 100_000];
    HostEntropy.fill(&mut a).unwrap();
    HostEntropy.fill(&mut b).unwrap();
    assert_ne!(a, b);
    // The last bytes are written too (not just a first short read).
    assert!(a[a.len() - 64..].iter().any(|&x| x != 0));
}
