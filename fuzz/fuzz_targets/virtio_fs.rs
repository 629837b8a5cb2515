//! virtio-fs once virtiofsd is gone: the device takes the queue over where
//! the daemon's used ring ends and answers every request it finds in a
//! hostile driver's queue with a FUSE error reply. (While virtiofsd runs,
//! the device relays the queue and reads none of it.)
#![no_main]

use agentvm_devices::virtio::fs::queue::{fail_requests, take_over};
use agentvm_fuzz::ring::{Irq, Kick, Ring};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// Where the used ring's index lies (see `ring`).
const USED_IDX: u64 = 0x2002;

fuzz_target!(|input: (u8, bool, u16, i32, Vec<Kick>)| {
    let (size, event_idx, daemon_used, errno, kicks) = input;
    let mut ring = Ring::new(size, event_idx);
    // How far the daemon got: any index, as it left it.
    ring.mem
        .write_obj(daemon_used, GuestAddress(USED_IDX))
        .expect("the used ring lies in memory");
    if take_over(&ring.mem, &mut ring.queue, 1).is_err() {
        return;
    }
    for kick in kicks.iter().take(8) {
        ring.apply(kick);
        let Ok(progress) = fail_requests(&ring.mem, &mut ring.queue, 1, errno, &Irq) else {
            break;
        };
        assert!(progress.detail.replied <= progress.completed);
    }
});
