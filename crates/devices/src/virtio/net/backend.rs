//! [`FrameBackend`] for the user-mode network stack of `agentvm-net`: the
//! stack already speaks frames, so this is a one-to-one mapping.

use std::time::Duration;

use agentvm_net::NetStack;

use super::FrameBackend;

impl FrameBackend for NetStack {
    fn push_frame(&mut self, frame: &[u8]) {
        NetStack::push_frame(self, frame);
    }

    fn pop_frame(&mut self) -> Option<Vec<u8>> {
        NetStack::pop_frame(self)
    }

    fn has_frames(&self) -> bool {
        NetStack::has_frames(self)
    }

    fn recycle(&mut self, frame: Vec<u8>) {
        NetStack::recycle(self, frame);
    }

    fn poll(&mut self) {
        NetStack::poll(self);
    }

    fn poll_delay(&mut self) -> Option<Duration> {
        NetStack::poll_delay(self)
    }
}
