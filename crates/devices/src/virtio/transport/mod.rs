//! Transports that carry a virtio device to the guest.

pub mod mmio;
