//! How a device signals the guest, without knowing its transport.

/// What an interrupt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device placed buffers in the used ring of this queue.
    Queue(u16),
    /// The device configuration space changed.
    Config,
    /// The device hit an error it cannot recover from until the driver
    /// resets it (virtio 1.2 §2.1.2): the transport shows
    /// DEVICE_NEEDS_RESET in the device status and signals a
    /// configuration change, so the driver notices (Linux logs it and may
    /// reset the device). After the reset the device works again.
    NeedsReset,
}

/// Delivers interrupts to the driver. Transports implement it (virtio-mmio:
/// set the interrupt status bit, then signal the irqfd).
pub trait VirtioInterrupt: Send + Sync {
    /// Signals `kind` to the guest.
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()>;
}
