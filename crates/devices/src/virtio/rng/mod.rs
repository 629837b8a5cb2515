//! virtio-rng (virtio 1.2 §5.4): one queue of device-writable buffers the
//! device fills with host entropy.
//!
//! - [`device`]: the [`VirtioDevice`](crate::virtio::VirtioDevice) impl;
//! - [`handler`]: the worker-thread subscriber (fds and tokens only);
//! - [`queue`]: the pure request path, generic over entropy source and
//!   interrupt.

pub mod device;
pub mod handler;
pub mod queue;

pub use device::Rng;
pub use queue::{EntropySource, HostEntropy};
