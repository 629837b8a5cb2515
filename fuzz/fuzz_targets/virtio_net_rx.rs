//! virtio-net's receive path: frames of any length for a hostile driver's
//! receive buffers, with every feature combination and MTU.
#![no_main]

use agentvm_devices::virtio::net::rx::{process_rx, RxState};
use agentvm_devices::virtio::net::Negotiated;
use agentvm_fuzz::frames::Frames;
use agentvm_fuzz::ring::{Irq, Kick, Ring};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

/// Frames queued per kick at most.
const MAX_FRAMES: usize = 16;

#[derive(Debug, Arbitrary)]
struct Input {
    size: u8,
    event_idx: bool,
    features: u64,
    mtu: Option<u16>,
    /// Lengths of the frames queued, then what the driver does, per kick.
    kicks: Vec<(Vec<u16>, Kick)>,
}

fuzz_target!(|input: Input| {
    let mut ring = Ring::new(input.size, input.event_idx);
    let mut state = RxState::new(Negotiated::from_features(input.features), input.mtu);
    let mut backend = Frames::default();
    for (frames, kick) in input.kicks.iter().take(8) {
        // A frame is given by its length (up to 64 KiB + change) to keep
        // inputs small; its bytes are its offsets.
        for &len in frames.iter().take(MAX_FRAMES) {
            let len = usize::from(len) + usize::from(len & 1) * 0x1000;
            backend
                .pending
                .push_back((0..len).map(|i| i as u8).collect());
        }
        ring.apply(kick);
        let Ok(progress) = process_rx(&ring.mem, &mut ring.queue, &mut backend, &Irq, &mut state)
        else {
            break;
        };
        assert!(progress.completed <= ring.size());
    }
});
