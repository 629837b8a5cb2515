//! The virtio-mmio transport (virtio 1.2 §4.2), modern interface only.
//!
//! [`MmioTransport`] is a [`BusDevice`] for a 0x1000-byte MMIO window. It keeps
//! the register state a driver sees (features, queue setup, status, interrupt
//! status) and nothing else: when the driver sets DRIVER_OK it hands the
//! device an [`ActivationContext`] and gets out of the way.
//!
//! Under KVM, queue notifications never reach the transport: the VMM registers
//! each [`MmioTransport::queue_notify_events`] fd as an ioeventfd on
//! `base + NOTIFY_OFFSET` (4-byte write, datamatch = queue index), and
//! [`MmioTransport::interrupt_event`] as an irqfd. A notification that does
//! reach [`BusDevice::write`] (no ioeventfd, e.g. in tests) is forwarded to the
//! same eventfd, so the device cannot tell the difference.
//!
//! # Activation off the vCPU thread
//!
//! Activating a device starts its worker thread, and for virtio-fs maybe a
//! virtiofsd process; a vCPU thread must not do either (its seccomp filter
//! allows neither). After [`MmioTransport::defer_activation`], DRIVER_OK
//! only checks the queues, records the activation and signals an eventfd;
//! the VMM's activation thread then calls
//! [`MmioTransport::complete_pending`]. The driver reads DRIVER_OK at once;
//! if the device then refuses, DEVICE_NEEDS_RESET follows with a
//! configuration interrupt, as the specification allows at any time. A
//! reset still stops the device on the vCPU thread, before the driver
//! frees its rings, but leaves the device's slow clean-up
//! ([`VirtioDevice::retire`]) to the same thread. Without
//! `defer_activation` (tests, the driver harness) all of it runs inline.
//!
//! A misbehaving driver gets ignored writes, never a panic: every register
//! write is checked against the status state machine, and a ready queue whose
//! rings do not fit guest memory puts the device in DEVICE_NEEDS_RESET instead
//! of activating it.
//!
//! # A device that gives up
//!
//! A running device whose queues fail for good (an impossible ring index)
//! signals [`InterruptKind::NeedsReset`] from its worker. The bit lives in
//! the [`MmioInterrupt`] the worker shares, next to InterruptStatus: the
//! Status register shows DEVICE_NEEDS_RESET from then on and a
//! configuration interrupt tells the driver to look. The driver's reset
//! stops the worker before it clears the bit, so a stale request cannot
//! survive into the next activation.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tracing::{debug, error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::virtio::{
    ActivationContext, ActiveQueue, GuestMemory, InterruptKind, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::warn_limited;

mod slot;
pub use slot::{SlotError, PLACEHOLDER_DEVICE_ID};

/// Size of one virtio-mmio window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// "virt" in little endian: the value of the MagicValue register.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The only interface version we implement (modern, non-legacy).
pub const MMIO_VERSION: u32 = 2;
/// Our VendorID: "AMVA" in little endian.
pub const MMIO_VENDOR_ID: u32 = 0x4156_4d41;
/// Offset of the QueueNotify register, where the VMM puts the ioeventfds.
pub const NOTIFY_OFFSET: u64 = regs::QUEUE_NOTIFY;
/// Offset of the device-specific configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;

/// Register offsets inside the window (virtio 1.2 §4.2.2).
pub mod regs {
    /// R: magic value [`super::MMIO_MAGIC`].
    pub const MAGIC_VALUE: u64 = 0x000;
    /// R: interface version, 2.
    pub const VERSION: u64 = 0x004;
    /// R: virtio device type.
    pub const DEVICE_ID: u64 = 0x008;
    /// R: vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// R: 32 bits of the device features, selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// W: which 32-bit page `DEVICE_FEATURES` shows.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// W: 32 bits of the driver features, selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// W: which 32-bit page `DRIVER_FEATURES` writes.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// W: which queue the queue registers address.
    pub const QUEUE_SEL: u64 = 0x030;
    /// R: maximum size of the selected queue, 0 if it does not exist.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// W: size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// RW: the selected queue is ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// W: queue notification (value: queue index).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// R: pending interrupt causes.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// W: acknowledges interrupt causes.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// RW: device status.
    pub const STATUS: u64 = 0x070;
    /// W: descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// W: descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// W: available (driver) ring address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// W: available (driver) ring address, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// W: used (device) ring address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// W: used (device) ring address, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// W: shared memory region selector.
    pub const SHM_SEL: u64 = 0x0ac;
    /// R: shared memory region length, low 32 bits.
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// R: shared memory region length, high 32 bits.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// R: shared memory region base, low 32 bits.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// R: shared memory region base, high 32 bits.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// RW: queue reset (only with VIRTIO_F_RING_RESET, which we never offer).
    pub const QUEUE_RESET: u64 = 0x0c0;
    /// R: changes whenever the configuration space may have changed.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 0x01;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 0x02;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 0x04;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 0x08;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bit: the device used buffers in a queue.
pub const INT_USED_RING: u32 = 0x1;
/// InterruptStatus bit: the device configuration changed.
pub const INT_CONFIG: u32 = 0x2;

/// The largest queue size a split virtqueue allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// Feature bit 29: VIRTIO_RING_F_EVENT_IDX.
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Errors while creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue notification eventfd could not be created.
    #[error("Cannot create a queue notification eventfd")]
    NotifyEvent(#[source] io::Error),
    /// The interrupt eventfd could not be created.
    #[error("Cannot create the interrupt eventfd")]
    InterruptEvent(#[source] io::Error),
    /// The device declares a queue size a split virtqueue cannot have.
    #[error("Queue {queue} has invalid maximum size {size}")]
    QueueMaxSize {
        /// Index of the queue.
        queue: usize,
        /// Its declared maximum size.
        size: u16,
    },
    /// The device does not offer VIRTIO_F_VERSION_1, so it is not a modern device.
    #[error("Device type {0} does not offer VIRTIO_F_VERSION_1")]
    NotModern(u32),
}

/// The interrupt of one virtio-mmio device: the InterruptStatus register plus
/// the eventfd the VMM registers as an irqfd. Devices see it as a
/// [`VirtioInterrupt`].
#[derive(Debug)]
pub struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    /// DEVICE_NEEDS_RESET, asked for by the device or the transport.
    needs_reset: AtomicBool,
    event: EventFd,
}

impl MmioInterrupt {
    fn new() -> io::Result<Self> {
        Ok(MmioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The pending interrupt causes ([`INT_USED_RING`], [`INT_CONFIG`]).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Whether the device needs a reset (DEVICE_NEEDS_RESET in Status).
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The eventfd written on every interrupt.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Forgets pending interrupts and a request for a reset (the device
    /// was just reset).
    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        let bit = match kind {
            InterruptKind::Queue(_) => INT_USED_RING,
            InterruptKind::Config => {
                // The driver re-reads the config space if the generation
                // moved while it was reading.
                self.config_generation.fetch_add(1, Ordering::SeqCst);
                INT_CONFIG
            }
            // Status shows the bit before the interrupt announces it.
            InterruptKind::NeedsReset => {
                self.needs_reset.store(true, Ordering::SeqCst);
                INT_CONFIG
            }
        };
        // The status bit must be visible before the guest takes the interrupt.
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.event.write(1)
    }
}

/// What the driver wrote into the queue registers of one queue.
#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Builds the device-side queue; `None` if the driver's values are not a
    /// usable queue (bad alignment, rings outside guest memory).
    fn to_queue(self, mem: &GuestMemory, event_idx: bool) -> Option<Queue> {
        let mut queue = Queue::new(self.max_size).ok()?;
        queue.try_set_size(self.size).ok()?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .ok()?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .ok()?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .ok()?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        queue.is_valid(mem).then_some(queue)
    }
}

fn set_low(value: &mut u64, low: u32) {
    *value = (*value & !0xffff_ffff) | u64::from(low);
}

fn set_high(value: &mut u64, high: u32) {
    *value = (*value & 0xffff_ffff) | (u64::from(high) << 32);
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    notify: Vec<EventFd>,
    queues: Vec<QueueRegs>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a non-zero value to a feature page beyond bit 63.
    unknown_driver_features: bool,
    status: u32,
    activated: bool,
    /// Signalled when work waits for [`MmioTransport::complete_pending`];
    /// `None` runs it inline.
    deferred: Option<EventFd>,
    /// An activation the driver asked for, not yet run.
    pending: Option<ActivationContext>,
    /// A reset whose [`VirtioDevice::retire`] has not run yet.
    unretired: bool,
    /// A hot-plug slot ([`MmioTransport::empty_slot`]).
    slot: bool,
}

impl MmioTransport {
    /// Puts `device` behind a new register window over guest memory `mem`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Result<Self, MmioError> {
        let queues = slot::queue_regs(device.as_ref())?;
        let notify = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(MmioError::NotifyEvent)?;
        let interrupt = Arc::new(MmioInterrupt::new().map_err(MmioError::InterruptEvent)?);
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            notify,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            unknown_driver_features: false,
            status: 0,
            activated: false,
            deferred: None,
            pending: None,
            unretired: false,
            slot: false,
        })
    }

    /// The virtio device type behind this window.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// One eventfd per queue, in queue order, signalled on each notification.
    pub fn queue_notify_events(&self) -> &[EventFd] {
        &self.notify
    }

    /// The eventfd signalled on every interrupt (the VMM's irqfd).
    pub fn interrupt_event(&self) -> &EventFd {
        self.interrupt.event()
    }

    /// The interrupt the device signals through.
    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    /// The device status register as the driver reads it: what the
    /// driver set, plus DEVICE_NEEDS_RESET when the device or the
    /// transport gave up.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device is running (activated and not reset since).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// From now on, activations and the clean-up after resets wait for
    /// [`MmioTransport::complete_pending`]; `event` is signalled whenever
    /// there is such work (see the [module docs](self)).
    pub fn defer_activation(&mut self, event: EventFd) {
        self.deferred = Some(event);
    }

    /// Whether an activation or a reset's clean-up waits for
    /// [`MmioTransport::complete_pending`].
    pub fn has_pending(&self) -> bool {
        self.pending.is_some() || self.unretired
    }

    /// Runs the work DRIVER_OK and resets left: first the clean-up of the
    /// last reset, then the activation, if the driver has not reset the
    /// device again meanwhile.
    pub fn complete_pending(&mut self) {
        if self.unretired {
            self.unretired = false;
            self.device.retire();
        }
        if let Some(ctx) = self.pending.take() {
            self.run_activation(ctx);
        }
    }

    /// Stops the device (joins its worker) and cleans up after it, as a
    /// reset would, e.g. when the VM shuts down.
    pub fn shutdown(&mut self) {
        self.reset();
        self.complete_pending();
    }

    /// Hands work to [`MmioTransport::complete_pending`]: signals the
    /// deferral event, or runs it now when there is none.
    fn schedule(&mut self) {
        let Some(event) = &self.deferred else {
            return self.complete_pending();
        };
        if let Err(e) = event.write(1) {
            // The activation thread would never run it: do not let the
            // driver wait for a device that cannot start.
            error!("virtio-mmio: cannot signal the activation thread: {e}");
            self.pending = None;
            self.needs_reset();
        }
    }

    fn selected_queue(&self) -> Option<&QueueRegs> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MMIO_MAGIC,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => MMIO_VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status(),
            // No shared memory regions: a length of -1 says "no such region".
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                u32::MAX
            }
            regs::CONFIG_GENERATION => self.interrupt.config_generation.load(Ordering::SeqCst),
            _ => {
                debug!(
                    offset,
                    "virtio-mmio: read of a write-only or unknown register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES => self.write_driver_features(value),
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM
            | regs::QUEUE_READY
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            regs::QUEUE_NOTIFY => self.notify_queue(value),
            regs::INTERRUPT_ACK => self.interrupt.ack(value),
            regs::STATUS => self.write_status(value),
            regs::SHM_SEL => {}
            _ => debug!(
                offset,
                value, "virtio-mmio: write to a read-only or unknown register"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let s = self.status;
        if s & status::DRIVER == 0 || s & status::FEATURES_OK != 0 {
            debug!(
                status = s,
                "virtio-mmio: driver features written outside negotiation"
            );
            return;
        }
        match self.driver_features_sel {
            0 => set_low(&mut self.driver_features, value),
            1 => set_high(&mut self.driver_features, value),
            _ => self.unknown_driver_features |= value != 0,
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        let s = self.status;
        if s & status::FEATURES_OK == 0 || s & (status::DRIVER_OK | status::FAILED) != 0 {
            debug!(
                offset,
                status = s,
                "virtio-mmio: queue register written outside queue setup"
            );
            return;
        }
        let Some(queue) = self.queues.get_mut(self.queue_sel as usize) else {
            debug!(
                queue = self.queue_sel,
                "virtio-mmio: queue register of a missing queue"
            );
            return;
        };
        if queue.ready && !(offset == regs::QUEUE_READY && value == 0) {
            debug!(
                offset,
                "virtio-mmio: queue register written while the queue is ready"
            );
            return;
        }
        match offset {
            regs::QUEUE_NUM => {
                let ok = u16::try_from(value)
                    .is_ok_and(|n| n != 0 && n <= queue.max_size && n.is_power_of_two());
                if ok {
                    queue.size = value as u16;
                } else {
                    debug!(
                        value,
                        max = queue.max_size,
                        "virtio-mmio: invalid queue size ignored"
                    );
                }
            }
            regs::QUEUE_READY => queue.ready = value == 1,
            regs::QUEUE_DESC_LOW => set_low(&mut queue.desc, value),
            regs::QUEUE_DESC_HIGH => set_high(&mut queue.desc, value),
            regs::QUEUE_DRIVER_LOW => set_low(&mut queue.driver, value),
            regs::QUEUE_DRIVER_HIGH => set_high(&mut queue.driver, value),
            regs::QUEUE_DEVICE_LOW => set_low(&mut queue.device, value),
            regs::QUEUE_DEVICE_HIGH => set_high(&mut queue.device, value),
            _ => {}
        }
    }

    fn notify_queue(&mut self, index: u32) {
        let Some(evt) = self.notify.get(index as usize) else {
            debug!(index, "virtio-mmio: notification of a missing queue");
            return;
        };
        if let Err(e) = evt.write(1) {
            warn!("virtio-mmio: cannot signal queue {index}: {e}");
        }
    }

    /// Applies a driver write to Status: 0 resets; otherwise bits may only be
    /// added, in the order ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK
    /// (FAILED at any time). The first bit out of order, and any after it,
    /// are dropped.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        const DRIVER_BITS: u32 = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::FAILED;
        let current = self.status & DRIVER_BITS;
        if value & current != current {
            debug!(
                value,
                status = self.status,
                "virtio-mmio: status bits cleared without a reset"
            );
            return;
        }
        let added = value & !current & DRIVER_BITS;
        if added & status::FAILED != 0 {
            warn_limited!(
                device_type = self.device.device_type(),
                "virtio: the driver gave up on the device"
            );
            self.status |= status::FAILED;
        }
        let steps = [
            (status::ACKNOWLEDGE, 0),
            (status::DRIVER, status::ACKNOWLEDGE),
            (status::FEATURES_OK, status::DRIVER),
            (status::DRIVER_OK, status::FEATURES_OK),
        ];
        for (bit, needs) in steps {
            if added & bit == 0 {
                continue;
            }
            if self.status & needs != needs || self.status & status::FAILED != 0 {
                debug!(
                    bit,
                    status = self.status,
                    "virtio-mmio: status bit set out of order"
                );
                return;
            }
            match bit {
                status::FEATURES_OK if !self.features_acceptable() => return,
                status::DRIVER_OK => {
                    self.status |= bit;
                    self.activate();
                }
                _ => self.status |= bit,
            }
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        let unknown = self.driver_features & !offered;
        if unknown != 0 || self.unknown_driver_features {
            debug!(
                unknown,
                "virtio-mmio: FEATURES_OK refused: driver took features not offered"
            );
            return false;
        }
        if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            debug!("virtio-mmio: FEATURES_OK refused: legacy drivers are not supported");
            return false;
        }
        true
    }

    /// DRIVER_OK: hands the ready queues to the device, or marks the device
    /// as needing a reset if they are unusable.
    fn activate(&mut self) {
        if self.interrupt.needs_reset() {
            return;
        }
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, regs) in self.queues.iter().enumerate().filter(|(_, q)| q.ready) {
            let Some(queue) = regs.to_queue(&self.mem, event_idx) else {
                warn_limited!(
                    index,
                    "virtio-mmio: ready queue is not usable in guest memory"
                );
                return self.needs_reset();
            };
            let notify = match self.notify[index].try_clone() {
                Ok(fd) => fd,
                Err(e) => {
                    error!("virtio-mmio: cannot share the notification of queue {index}: {e}");
                    return self.needs_reset();
                }
            };
            queues.push(ActiveQueue { queue, notify });
        }
        self.pending = Some(ActivationContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            acked_features: self.driver_features,
        });
        self.schedule();
    }

    fn run_activation(&mut self, ctx: ActivationContext) {
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                // A driver can ask again and again with the same bad set-up.
                warn_limited!(
                    device_type = self.device.device_type(),
                    "virtio: cannot activate: {e}"
                );
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        if let Err(e) = self.interrupt.trigger(InterruptKind::NeedsReset) {
            warn!("virtio-mmio: cannot signal DEVICE_NEEDS_RESET: {e}");
        }
    }

    /// Status 0: stops the device and forgets everything the driver set up.
    fn reset(&mut self) {
        // An activation not run yet never will be.
        self.pending = None;
        if self.activated {
            self.activated = false;
            if !self.device.reset() {
                warn_limited!(
                    device_type = self.device.device_type(),
                    "virtio: device cannot be reset"
                );
                // No interrupt: the driver is resetting, and reads Status.
                self.status = 0;
                self.interrupt.needs_reset.store(true, Ordering::SeqCst);
                return;
            }
            self.unretired = true;
            self.schedule();
        }
        for queue in &mut self.queues {
            *queue = QueueRegs::new(queue.max_size);
        }
        // Notifications written before the reset must not wake the next
        // activation. EAGAIN (nothing pending) is the expected outcome.
        for evt in &self.notify {
            let _ = evt.read();
        }
        self.interrupt.clear();
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.unknown_driver_features = false;
        self.status = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            data.fill(0);
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - CONFIG_OFFSET, data);
            }
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            debug!(
                offset,
                len = data.len(),
                "virtio-mmio: misaligned or not 4-byte read"
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - CONFIG_OFFSET, data);
            }
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset & 3 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => debug!(
                offset,
                len = data.len(),
                "virtio-mmio: misaligned or not 4-byte write"
            ),
        }
    }
}
