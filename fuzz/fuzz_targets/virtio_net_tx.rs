//! virtio-net's transmit path over a hostile driver's queue, with every
//! feature combination the driver may acknowledge.
#![no_main]

use agentvm_devices::virtio::net::tx::{process_tx, TxState};
use agentvm_devices::virtio::net::{Negotiated, MAX_FRAME_LEN};
use agentvm_fuzz::frames::Frames;
use agentvm_fuzz::ring::{Irq, Kick, Ring};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, bool, u64, Vec<Kick>)| {
    let (size, event_idx, features, kicks) = input;
    let mut ring = Ring::new(size, event_idx);
    let mut state = TxState::new(Negotiated::from_features(features));
    let mut backend = Frames::default();
    for kick in kicks.iter().take(8) {
        ring.apply(kick);
        let Ok(progress) = process_tx(&ring.mem, &mut ring.queue, &mut backend, &Irq, &mut state)
        else {
            break;
        };
        assert!(progress.detail.frames + progress.detail.dropped <= ring.size());
    }
    assert!(backend.sent.iter().all(|f| f.len() <= MAX_FRAME_LEN));
});
