//! How a device signals the guest, without knowing its transport.

/// What an interrupt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device placed buffers in the used ring of this queue.
    Queue(u16),
    /// The device configuration space changed.
    Config,
}

/// Delivers interrupts to the driver. Transports implement it (virtio-mmio:
/// set the interrupt status bit, then signal the irqfd).
pub trait VirtioInterrupt: Send + Sync {
    /// Signals `kind` to the guest.
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()>;
}
