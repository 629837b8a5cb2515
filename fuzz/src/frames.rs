//! A virtio-net backend that records what the guest sends and hands the
//! guest the frames the fuzzer chose.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;

use agentvm_devices::virtio::net::FrameBackend;

/// Frames in and out, in memory.
#[derive(Debug, Default)]
pub struct Frames {
    /// What the guest sent.
    pub sent: Vec<Vec<u8>>,
    /// What waits for the guest.
    pub pending: VecDeque<Vec<u8>>,
}

impl AsRawFd for Frames {
    fn as_raw_fd(&self) -> RawFd {
        // Never watched here: any open fd does.
        static NULL: OnceLock<File> = OnceLock::new();
        NULL.get_or_init(|| File::open("/dev/null").expect("/dev/null"))
            .as_raw_fd()
    }
}

impl FrameBackend for Frames {
    fn push_frame(&mut self, frame: &[u8]) {
        self.sent.push(frame.to_vec());
    }

    fn pop_frame(&mut self) -> Option<Vec<u8>> {
        self.pending.pop_front()
    }

    fn has_frames(&self) -> bool {
        !self.pending.is_empty()
    }

    fn poll(&mut self) {}

    fn poll_delay(&mut self) -> Option<Duration> {
        None
    }
}
