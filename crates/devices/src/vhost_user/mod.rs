//! agentvm's devices served as vhost-user backends, for VMMs other than
//! agentvm (QEMU, cloud-hypervisor): the same queue code as the in-VMM
//! device, driven by the `vhost-user-backend` crate's daemon instead of a
//! virtio-mmio transport and a worker thread.

pub mod net;
pub mod relay;
