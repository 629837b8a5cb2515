//! agentvm-devices: the devices of an agentvm microVM.
//!
//! - [`bus`]: address-range buses that route vCPU exits to devices;
//! - [`legacy`]: the COM1 8250 serial port and the i8042 reset line;
//! - [`virtio`]: the transport-free virtio device model, the virtio-mmio
//!   transport and the virtio devices;
//! - `testing` (feature `testing`): a virtio driver harness that plays a
//!   Linux driver against a device through its MMIO registers.
#![deny(missing_docs)]

pub mod bus;
pub mod legacy;
pub mod socket;
pub mod thread;
pub mod vhost_user;
pub mod virtio;

#[cfg(feature = "testing")]
pub mod testing;
