//! virtio-rng's request path over a hostile driver's queue.
#![no_main]

use agentvm_devices::virtio::rng::queue::{process_queue, MAX_REQUEST_BYTES};
use agentvm_fuzz::ring::{Irq, Kick, Ring};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, bool, bool, Vec<Kick>)| {
    let (size, event_idx, failing, kicks) = input;
    let mut ring = Ring::new(size, event_idx);
    let mut source = |buf: &mut [u8]| {
        if failing {
            return Err(std::io::Error::other("no entropy"));
        }
        buf.fill(0xa5);
        Ok(())
    };
    for kick in kicks.iter().take(8) {
        ring.apply(kick);
        let Ok(progress) = process_queue(&ring.mem, &mut ring.queue, &mut source, &Irq) else {
            // The queue is unusable until the driver resets the device.
            break;
        };
        assert!(progress.completed <= ring.size());
        assert!(progress.detail.bytes <= u64::from(progress.completed) * MAX_REQUEST_BYTES as u64);
    }
});
