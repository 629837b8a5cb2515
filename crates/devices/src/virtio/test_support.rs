//! What the queue paths' unit tests share.

use std::io;
use std::sync::Mutex;

use super::{InterruptKind, VirtioInterrupt};

/// An interrupt that records what it was asked to signal.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<InterruptKind>>);

impl VirtioInterrupt for Recorder {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(kind);
        Ok(())
    }
}
