//! Hot-plug slots: a virtio-mmio window declared at boot with no device
//! behind it, filled and emptied while the guest runs.
//!
//! An empty slot answers MagicValue "virt", Version 2 and DeviceID 0.
//! Linux's virtio-mmio driver treats DeviceID 0 as a placeholder: its probe
//! ends with -ENODEV and the platform device stays unbound. Once the VMM
//! has filled the slot, writing the device's name to the driver's `bind`
//! file in sysfs probes it again and the real device appears; `unbind`
//! removes it before the slot is emptied.
//!
//! The slot keeps its notification eventfds (registered with KVM once, at
//! boot) and its interrupt across fillings; a device needing more queues
//! than the slot has eventfds is refused.

use std::io;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{MmioError, MmioTransport, QueueRegs, MAX_QUEUE_SIZE};
use crate::virtio::{
    ActivateError, ActivationContext, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// The device type an empty slot reports: "no device" to Linux.
pub const PLACEHOLDER_DEVICE_ID: u32 = 0;

/// Why a slot could not be filled or emptied.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The window is not a hot-plug slot (a device added at boot).
    #[error("This virtio-mmio window is not a hot-plug slot")]
    NotASlot,
    /// The slot already holds a device.
    #[error("The hot-plug slot already holds a device")]
    Occupied,
    /// The slot holds no device.
    #[error("The hot-plug slot holds no device")]
    Empty,
    /// The device has more queues than the slot has notification eventfds.
    #[error("The device needs {needed} queues; the slot has {available}")]
    TooManyQueues {
        /// Queues of the device.
        needed: usize,
        /// Queues the slot was declared with.
        available: usize,
    },
    /// The device itself is not usable behind virtio-mmio.
    #[error(transparent)]
    Device(#[from] MmioError),
}

/// The device behind an empty slot.
pub(super) struct Placeholder;

impl VirtioDevice for Placeholder {
    fn device_type(&self) -> u32 {
        PLACEHOLDER_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), ActivateError> {
        // A driver that ignores DeviceID 0 gets nothing to drive.
        ctx.check_queue_count(0)?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        true
    }
}

/// The queue registers `device` needs, checked as at construction.
pub(super) fn queue_regs(device: &dyn VirtioDevice) -> Result<Vec<QueueRegs>, MmioError> {
    if device.features() & VIRTIO_F_VERSION_1 == 0 {
        return Err(MmioError::NotModern(device.device_type()));
    }
    device
        .queue_max_sizes()
        .iter()
        .enumerate()
        .map(|(queue, &size)| {
            if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
                Err(MmioError::QueueMaxSize { queue, size })
            } else {
                Ok(QueueRegs::new(size))
            }
        })
        .collect()
}

impl MmioTransport {
    /// An empty hot-plug slot over `mem` with notification eventfds for
    /// devices of up to `queues` queues.
    pub fn empty_slot(mem: GuestMemory, queues: usize) -> Result<Self, MmioError> {
        let mut transport = MmioTransport::new(Box::new(Placeholder), mem)?;
        transport.notify = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(MmioError::NotifyEvent)?;
        transport.slot = true;
        Ok(transport)
    }

    /// Whether this window is a hot-plug slot.
    pub fn is_slot(&self) -> bool {
        self.slot
    }

    /// Whether this is a hot-plug slot with no device in it.
    pub fn is_empty_slot(&self) -> bool {
        self.slot && self.device.device_type() == PLACEHOLDER_DEVICE_ID
    }

    /// Puts `device` into this empty slot. The driver sees it the next
    /// time it probes the window (from the reset state).
    pub fn fill(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), SlotError> {
        if !self.slot {
            return Err(SlotError::NotASlot);
        }
        if !self.is_empty_slot() {
            return Err(SlotError::Occupied);
        }
        let queues = queue_regs(device.as_ref())?;
        if queues.len() > self.notify.len() {
            return Err(SlotError::TooManyQueues {
                needed: queues.len(),
                available: self.notify.len(),
            });
        }
        // Whatever a driver did to the placeholder is forgotten.
        self.shutdown();
        self.device = device;
        self.queues = queues;
        Ok(())
    }

    /// Stops the device in this slot (its worker joined, its clean-up
    /// run here) and leaves the slot empty. Returns the device, so the
    /// caller decides where dropping it (which may end a process) happens.
    pub fn empty(&mut self) -> Result<Box<dyn VirtioDevice>, SlotError> {
        if !self.slot {
            return Err(SlotError::NotASlot);
        }
        if self.is_empty_slot() {
            return Err(SlotError::Empty);
        }
        self.shutdown();
        self.queues.clear();
        Ok(std::mem::replace(&mut self.device, Box::new(Placeholder)))
    }
}
