//! virtio-balloon's queues over a hostile driver's chains: page numbers to
//! inflate and deflate (host memory really released with madvise), free
//! page reports, and statistics buffers.
#![no_main]

use agentvm_devices::virtio::balloon::handle::Counters;
use agentvm_devices::virtio::balloon::pages::HeldPages;
use agentvm_devices::virtio::balloon::queue::{
    process_pages, process_reports, receive_stats, return_stats_buffer, IndexedQueue, PageOp,
    QueueContext,
};
use agentvm_devices::virtio::balloon::release::Madvise;
use agentvm_fuzz::ring::{Irq, Kick, Ring};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Inflate,
    Deflate,
    Report,
    Stats,
    ReturnStats,
}

fuzz_target!(|input: (u8, bool, Vec<(Op, Kick)>)| {
    let (size, event_idx, kicks) = input;
    let mut ring = Ring::new(size, event_idx);
    let counters = Counters::default();
    let mut held = HeldPages::new(&ring.mem);
    let mut held_stats = None;
    let mut releaser = Madvise;
    for (op, kick) in kicks.iter().take(8) {
        ring.apply(kick);
        let ctx = QueueContext {
            mem: &ring.mem,
            interrupt: &Irq,
            counters: &counters,
        };
        let vq = IndexedQueue {
            queue: &mut ring.queue,
            index: 0,
        };
        let ok = match op {
            Op::Inflate => {
                process_pages(&ctx, vq, PageOp::Inflate, &mut held, &mut releaser).is_ok()
            }
            Op::Deflate => {
                process_pages(&ctx, vq, PageOp::Deflate, &mut held, &mut releaser).is_ok()
            }
            Op::Report => process_reports(&ctx, vq, &mut releaser).is_ok(),
            Op::Stats => receive_stats(&ctx, vq, &mut held_stats, &mut |_| {}).is_ok(),
            Op::ReturnStats => return_stats_buffer(&ctx, vq, &mut held_stats).is_ok(),
        };
        if !ok {
            break;
        }
        assert!(held.held() <= held.capacity());
    }
});
