//! Puts the platform devices and the virtio-mmio devices on the buses, wires
//! their interrupts (irqfd) and queue notifications (ioeventfd) into KVM, and
//! describes them for ACPI and the kernel command line.

use std::io::Write;
use std::sync::{Arc, Mutex};

use agentvm_devices::bus::{Bus, BusError};
use agentvm_devices::legacy::acpi_pm::{
    AcpiPm, PowerCallback, PowerRequest, ACPI_PM_BASE, ACPI_PM_LEN,
};
use agentvm_devices::legacy::i8042::{I8042, I8042_BASE, I8042_LEN};
use agentvm_devices::legacy::pvpanic::{PvPanic, PVPANIC_LEN, PVPANIC_PANICKED, PVPANIC_PORT};
use agentvm_devices::legacy::{Serial, COM1_BASE, COM1_IRQ, COM1_LEN};
use agentvm_devices::virtio::transport::mmio::{MmioTransport, NOTIFY_OFFSET};
use agentvm_devices::virtio::{GuestMemory, VirtioDevice};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::layout::{IRQ_BASE, IRQ_MAX, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::exit::{ExitLatch, ExitStatus};

/// Errors while setting up devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be created.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// KVM refused an irqfd or ioeventfd.
    #[error("KVM refused to wire {what}")]
    Kvm {
        /// What was being wired.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Two devices claim the same addresses.
    #[error("Device address conflict")]
    Bus(#[from] BusError),
    /// More virtio devices than interrupt lines.
    #[error("At most {0} virtio devices fit the interrupt controller")]
    TooManyDevices(usize),
    /// The virtio-mmio transport rejected the device.
    #[error("Cannot set up virtio-mmio transport")]
    Transport(#[source] agentvm_devices::virtio::transport::mmio::MmioError),
}

/// Where a virtio-mmio device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Start of the register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// GSI of its interrupt.
    pub gsi: u32,
    /// virtio device type.
    pub device_type: u32,
}

impl MmioSlot {
    /// The `virtio_mmio.device=` parameter for kernels that take devices
    /// from the command line.
    pub fn cmdline_param(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size >> 10,
            self.base,
            self.gsi
        )
    }
}

/// The VM's devices.
pub struct DeviceManager {
    serial: Arc<Mutex<Serial>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    slots: Vec<MmioSlot>,
    /// Wakes the activation thread ([`crate::activator`]); every transport
    /// defers its activations to it.
    activation: EventFd,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DeviceError {
    move |source| DeviceError::Kvm { what, source }
}

fn eventfd() -> Result<EventFd, DeviceError> {
    EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)
}

impl DeviceManager {
    /// Creates COM1, the i8042, the ACPI power registers and pvpanic on
    /// `pio`; the last three end the VM through `exit` when the guest asks.
    pub fn new(
        vm: &VmFd,
        pio: &mut Bus,
        serial_out: Box<dyn Write + Send>,
        exit: &Arc<ExitLatch>,
    ) -> Result<Self, DeviceError> {
        let irq = eventfd()?;
        vm.register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm("the serial interrupt"))?;
        let serial = Arc::new(Mutex::new(Serial::new(irq, serial_out)));
        pio.insert(COM1_BASE, COM1_LEN, serial.clone())?;

        let s = exit.clone();
        let i8042 = I8042::new(Arc::new(move || s.request(ExitStatus::Reset)));
        pio.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(i8042)))?;

        let s = exit.clone();
        let on_power: PowerCallback = Arc::new(move |req| {
            s.request(match req {
                PowerRequest::PowerOff => ExitStatus::PowerOff,
                PowerRequest::Reset => ExitStatus::Reset,
            })
        });
        pio.insert(
            ACPI_PM_BASE,
            ACPI_PM_LEN,
            Arc::new(Mutex::new(AcpiPm::new(on_power))),
        )?;

        let s = exit.clone();
        let pvpanic = PvPanic::new(Arc::new(move |events| {
            if events & PVPANIC_PANICKED != 0 {
                s.request(ExitStatus::Crashed("guest kernel panicked".into()));
            }
        }));
        pio.insert(PVPANIC_PORT, PVPANIC_LEN, Arc::new(Mutex::new(pvpanic)))?;

        // Blocking: the activation thread sleeps in read().
        let activation = EventFd::new(0).map_err(DeviceError::EventFd)?;
        Ok(DeviceManager {
            serial,
            transports: Vec::new(),
            slots: Vec::new(),
            activation,
        })
    }

    /// Adds a virtio device behind a virtio-mmio window on `mmio`, with its
    /// queue notifications as ioeventfds and its interrupt as an irqfd.
    pub fn add_virtio(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        mem: &GuestMemory,
        device: Box<dyn VirtioDevice>,
    ) -> Result<MmioSlot, DeviceError> {
        let transport = MmioTransport::new(device, mem.clone()).map_err(DeviceError::Transport)?;
        self.add_transport(vm, mmio, transport)
            .map(|(slot, _)| slot)
    }

    /// Adds an empty hot-plug slot (DeviceID 0) for devices of up to
    /// `queues` queues, wired like any device; returns where it sits and
    /// its transport, which the hot-plug requests fill and empty.
    pub(crate) fn add_hotplug_slot(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        mem: &GuestMemory,
        queues: usize,
    ) -> Result<(MmioSlot, Arc<Mutex<MmioTransport>>), DeviceError> {
        let transport =
            MmioTransport::empty_slot(mem.clone(), queues).map_err(DeviceError::Transport)?;
        self.add_transport(vm, mmio, transport)
    }

    fn add_transport(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        mut transport: MmioTransport,
    ) -> Result<(MmioSlot, Arc<Mutex<MmioTransport>>), DeviceError> {
        let index = self.slots.len();
        let gsi = IRQ_BASE + index as u32;
        if gsi > IRQ_MAX {
            return Err(DeviceError::TooManyDevices(
                (IRQ_MAX - IRQ_BASE + 1) as usize,
            ));
        }
        let base = VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE;
        transport.defer_activation(self.activation.try_clone().map_err(DeviceError::EventFd)?);
        let slot = MmioSlot {
            base,
            size: VIRTIO_MMIO_SIZE,
            gsi,
            device_type: transport.device_type(),
        };
        for (queue, evt) in transport.queue_notify_events().iter().enumerate() {
            let addr = IoEventAddress::Mmio(base + NOTIFY_OFFSET);
            vm.register_ioevent(evt, &addr, queue as u32)
                .map_err(kvm("a queue notification"))?;
        }
        vm.register_irqfd(transport.interrupt_event(), gsi)
            .map_err(kvm("a virtio interrupt"))?;
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(base, VIRTIO_MMIO_SIZE, transport.clone())?;
        self.transports.push(transport.clone());
        self.slots.push(slot);
        Ok((slot, transport))
    }

    /// The eventfd the transports signal when an activation waits, and the
    /// transports, for the activation thread.
    pub(crate) fn activation(&self) -> (&EventFd, Vec<Arc<Mutex<MmioTransport>>>) {
        (&self.activation, self.transports.clone())
    }

    /// The eventfd that wakes the activation thread.
    pub(crate) fn activation_event(&self) -> &EventFd {
        &self.activation
    }

    /// Whether activating a device may start a process (virtio-fs starts
    /// a new virtiofsd after a reset). A hot-plugged device never does.
    pub(crate) fn launches_daemons(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.device_type == agentvm_devices::virtio::device_type::FS)
    }

    /// The virtio-mmio devices, in bus order.
    pub fn slots(&self) -> &[MmioSlot] {
        &self.slots
    }

    /// A duplicate of the notify eventfd of `queue` on virtio device
    /// `device` (in [`DeviceManager::slots`] order): KVM signals it when the
    /// guest writes the queue's index to QueueNotify.
    #[cfg(test)]
    pub fn queue_notify_event(
        &self,
        device: usize,
        queue: usize,
    ) -> Option<std::io::Result<EventFd>> {
        let transport = self
            .transports
            .get(device)?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        transport
            .queue_notify_events()
            .get(queue)
            .map(EventFd::try_clone)
    }

    /// Stops every device's worker and flushes the console.
    pub fn shutdown(&mut self) {
        for t in &self.transports {
            t.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        }
        if let Err(e) = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
        {
            tracing::warn!("cannot flush the serial console: {e}");
        }
    }
}
