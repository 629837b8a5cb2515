//! The virtio driver harness: plays a Linux virtio-mmio driver against a
//! device, through the transport's registers and guest memory, exactly as a
//! guest would — no KVM, no guest.
//!
//! [`Driver`] owns a [`MmioTransport`] and the guest memory behind it. It
//! negotiates features, lays out split virtqueues with a bump allocator,
//! posts descriptor chains, notifies, and collects the used ring, counting
//! interrupts as it goes. Every step also exists in raw form
//! ([`Driver::read_reg`], [`Driver::write_reg`],
//! [`Driver::write_descriptor`], …) so tests can misbehave on purpose.
//! [`MockDevice`] is a device that only records what the transport does to it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use agentvm_devices::testing::{Buf, Driver};
//! use agentvm_devices::virtio::{device_type, rng::Rng, VIRTIO_F_VERSION_1};
//!
//! # fn main() -> Result<(), agentvm_devices::testing::HarnessError> {
//! let mut drv = Driver::new(Box::new(Rng::new()), 1 << 20)?;
//! assert_eq!(drv.probe()?, device_type::RNG);
//! assert_eq!(drv.negotiate(VIRTIO_F_VERSION_1)?, VIRTIO_F_VERSION_1);
//! drv.setup_queue(0, 16)?;
//! drv.driver_ok()?;
//!
//! let head = drv.add_chain(0, &[Buf::writable(32)])?;
//! drv.notify(0);
//! let used = drv.wait_used(0, Duration::from_secs(10))?;
//! assert_eq!((used[0].head, used[0].len), (head, 32));
//! assert_eq!(drv.read_written(&used[0])?.len(), 32);
//! assert!(drv.interrupt_count() >= 1);
//! # Ok(())
//! # }
//! ```

mod mock;
mod ring;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::bus::BusDevice;
use crate::virtio::transport::mmio::{
    regs, status, MmioError, MmioTransport, CONFIG_OFFSET, INT_CONFIG, MMIO_MAGIC, MMIO_VERSION,
};
use crate::virtio::{GuestMemory, VirtioDevice};

pub use mock::{MockActivation, MockDevice, MockHandle};
use ring::DriverQueue;
pub use ring::{BufRegion, QueueLayout, Used};
/// A split-ring descriptor, for chains built by hand.
pub use virtio_queue::desc::split::Descriptor;

/// Where the bump allocator starts: address 0 stays unused, as a real
/// guest's would, so a zero address in a ring is always a bug.
const ALLOC_START: u64 = 0x1000;

/// What can go wrong while driving a device.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Guest memory could not be created.
    #[error("Cannot create guest memory")]
    CreateMemory(#[source] vm_memory::mmap::FromRangesError),
    /// The transport refused the device.
    #[error("Cannot create the transport")]
    Transport(#[source] MmioError),
    /// A guest memory access failed.
    #[error("Guest memory access failed")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// The bump allocator ran out of guest memory.
    #[error("Out of guest memory for {0} bytes")]
    OutOfMemory(u64),
    /// MagicValue is not "virt".
    #[error("Bad magic value {0:#x}")]
    BadMagic(u32),
    /// The window is not a modern virtio-mmio device.
    #[error("Unsupported virtio-mmio version {0}")]
    BadVersion(u32),
    /// DeviceID 0: a placeholder window without a device.
    #[error("No device behind the window")]
    NoDevice,
    /// The device did not keep FEATURES_OK.
    #[error("Device refused features {0:#x}")]
    FeaturesRefused(u64),
    /// The device raised DEVICE_NEEDS_RESET (or did not keep DRIVER_OK).
    #[error("Device status {0:#x} after DRIVER_OK")]
    DeviceNotOk(u32),
    /// QueueNumMax is 0 for this queue.
    #[error("Queue {0} does not exist")]
    NoSuchQueue(u16),
    /// The requested size is not one the device can take.
    #[error("Queue {queue}: size {size} is not a power of two up to {max}")]
    QueueSize {
        /// Queue index.
        queue: u16,
        /// Requested size.
        size: u16,
        /// QueueNumMax.
        max: u16,
    },
    /// QueueReady already reads 1 before setup.
    #[error("Queue {0} is already ready")]
    QueueAlreadyReady(u16),
    /// The harness has not set this queue up.
    #[error("Queue {0} is not set up")]
    QueueNotSetUp(u16),
    /// Not enough free descriptors for the chain.
    #[error("Queue {0} has no room for the chain")]
    QueueFull(u16),
    /// A chain needs at least one buffer.
    #[error("Empty descriptor chain")]
    EmptyChain,
    /// The device returned an id that is not a chain in flight.
    #[error("Device returned unknown or already used chain {0}")]
    UnknownUsedId(u32),
    /// The device moved the used index further than the queue size.
    #[error("Device moved the used index from {last} to {index}")]
    UsedRingOverrun {
        /// Index the device wrote.
        index: u16,
        /// Index the driver had seen.
        last: u16,
    },
    /// Nothing arrived in the used ring in time.
    #[error("Timed out waiting for queue {0}")]
    Timeout(u16),
    /// The device did not ask for a reset in time (status as last read).
    #[error("No DEVICE_NEEDS_RESET in time (status {0:#x})")]
    NoResetRequest(u32),
    /// The interrupt eventfd could not be waited on.
    #[error("Cannot wait for interrupts")]
    Wait(#[source] io::Error),
}

/// A buffer of a descriptor chain, as [`Driver::add_chain`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buf {
    /// Device-readable bytes, copied into freshly allocated guest memory.
    Readable(Vec<u8>),
    /// A zeroed, device-writable buffer of this many bytes.
    Writable(u32),
    /// A buffer at an address of the caller's choice, not allocated or
    /// checked: for drivers that misbehave.
    Raw(BufRegion),
}

impl Buf {
    /// A device-readable buffer holding `bytes`.
    pub fn readable(bytes: impl Into<Vec<u8>>) -> Self {
        Buf::Readable(bytes.into())
    }

    /// A device-writable buffer of `len` bytes.
    pub fn writable(len: u32) -> Self {
        Buf::Writable(len)
    }

    /// A buffer at `addr` (anywhere, even outside guest memory).
    pub fn raw(addr: u64, len: u32, writable: bool) -> Self {
        Buf::Raw(BufRegion {
            addr,
            len,
            writable,
        })
    }
}

/// A virtio driver talking to one device over virtio-mmio.
pub struct Driver {
    transport: MmioTransport,
    mem: GuestMemory,
    next_free: u64,
    mem_end: u64,
    queues: BTreeMap<u16, DriverQueue>,
    interrupts: u64,
    epoll: Epoll,
}

impl Driver {
    /// A driver for `device`, with `mem_size` bytes of guest memory at
    /// guest-physical address 0.
    pub fn new(device: Box<dyn VirtioDevice>, mem_size: usize) -> Result<Self, HarnessError> {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), mem_size)])
            .map_err(HarnessError::CreateMemory)?;
        Self::with_memory(device, mem)
    }

    /// A driver for `device` over `mem`. Rings and buffers are allocated in
    /// the first region (from 0x1000 up if it starts at 0).
    pub fn with_memory(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
    ) -> Result<Self, HarnessError> {
        let transport = MmioTransport::new(device, mem.clone()).map_err(HarnessError::Transport)?;
        Self::with_transport(transport, mem)
    }

    /// A driver for a transport made elsewhere (e.g. an empty hot-plug
    /// slot, [`MmioTransport::empty_slot`]) over `mem`, the transport's
    /// guest memory.
    pub fn with_transport(
        transport: MmioTransport,
        mem: GuestMemory,
    ) -> Result<Self, HarnessError> {
        let (start, end) = mem
            .iter()
            .next()
            .map_or((0, 0), |r| (r.start_addr().0, r.start_addr().0 + r.len()));
        let epoll = Epoll::new().map_err(HarnessError::Wait)?;
        let fd = transport.interrupt_event().as_raw_fd();
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
            .map_err(HarnessError::Wait)?;
        Ok(Driver {
            transport,
            mem,
            next_free: start.max(ALLOC_START),
            mem_end: end,
            queues: BTreeMap::new(),
            interrupts: 0,
            epoll,
        })
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// The transport under test.
    pub fn transport(&self) -> &MmioTransport {
        &self.transport
    }

    /// The transport under test, mutably (e.g. to call [`BusDevice`] directly).
    pub fn transport_mut(&mut self) -> &mut MmioTransport {
        &mut self.transport
    }

    // ---- raw register access ---------------------------------------------

    /// Reads the 32-bit register at `offset`.
    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// An access of any width at any offset of the window.
    pub fn read_raw(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data);
    }

    /// A write of any width at any offset of the window.
    pub fn write_raw(&mut self, offset: u64, data: &[u8]) {
        self.transport.write(offset, data);
    }

    // ---- initialisation (virtio 1.2 §3.1.1) -------------------------------

    /// Checks magic and version and returns the device id.
    pub fn probe(&mut self) -> Result<u32, HarnessError> {
        let magic = self.read_reg(regs::MAGIC_VALUE);
        if magic != MMIO_MAGIC {
            return Err(HarnessError::BadMagic(magic));
        }
        let version = self.read_reg(regs::VERSION);
        if version != MMIO_VERSION {
            return Err(HarnessError::BadVersion(version));
        }
        match self.read_reg(regs::DEVICE_ID) {
            0 => Err(HarnessError::NoDevice),
            id => Ok(id),
        }
    }

    /// The Status register.
    pub fn status(&mut self) -> u32 {
        self.read_reg(regs::STATUS)
    }

    /// Writes Status as is.
    pub fn write_status(&mut self, value: u32) {
        self.write_reg(regs::STATUS, value);
    }

    /// Sets `bits` on top of the current status, as Linux's
    /// `virtio_add_status` does.
    pub fn add_status(&mut self, bits: u32) {
        let s = self.status();
        self.write_status(s | bits);
    }

    /// Resets the device (Status 0) and forgets the driver-side queues.
    pub fn reset(&mut self) {
        self.write_status(0);
        self.queues.clear();
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&mut self) -> u64 {
        self.write_reg(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.read_reg(regs::DEVICE_FEATURES);
        self.write_reg(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.read_reg(regs::DEVICE_FEATURES);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// Writes both pages of DriverFeatures, unchecked.
    pub fn write_driver_features(&mut self, features: u64) {
        self.write_reg(regs::DRIVER_FEATURES_SEL, 0);
        self.write_reg(regs::DRIVER_FEATURES, features as u32);
        self.write_reg(regs::DRIVER_FEATURES_SEL, 1);
        self.write_reg(regs::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, then acknowledges the features in
    /// `wanted` the device offers and sets FEATURES_OK. Returns the
    /// negotiated features.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, HarnessError> {
        self.reset();
        self.add_status(status::ACKNOWLEDGE);
        self.add_status(status::DRIVER);
        let features = self.device_features() & wanted;
        self.write_driver_features(features);
        self.add_status(status::FEATURES_OK);
        if self.status() & status::FEATURES_OK == 0 {
            return Err(HarnessError::FeaturesRefused(features));
        }
        Ok(features)
    }

    /// QueueNumMax of queue `index` (0: no such queue).
    pub fn queue_max(&mut self, index: u16) -> u16 {
        self.write_reg(regs::QUEUE_SEL, u32::from(index));
        // QueueNumMax never exceeds 32768 on a working device.
        u16::try_from(self.read_reg(regs::QUEUE_NUM_MAX)).unwrap_or(u16::MAX)
    }

    /// Allocates rings for queue `index` with `size` entries and makes it ready.
    pub fn setup_queue(&mut self, index: u16, size: u16) -> Result<QueueLayout, HarnessError> {
        let max = self.queue_max(index);
        if max == 0 {
            return Err(HarnessError::NoSuchQueue(index));
        }
        if size == 0 || size > max || !size.is_power_of_two() {
            return Err(HarnessError::QueueSize {
                queue: index,
                size,
                max,
            });
        }
        let layout = QueueLayout {
            desc: self.alloc(QueueLayout::desc_bytes(size), 16)?,
            avail: self.alloc(QueueLayout::avail_bytes(size), 2)?,
            used: self.alloc(QueueLayout::used_bytes(size), 4)?,
        };
        self.setup_queue_at(index, size, layout)?;
        Ok(layout)
    }

    /// Programs queue `index` with rings at `layout`, wherever that is (even
    /// outside guest memory), and makes it ready. No size check.
    pub fn setup_queue_at(
        &mut self,
        index: u16,
        size: u16,
        layout: QueueLayout,
    ) -> Result<(), HarnessError> {
        self.write_reg(regs::QUEUE_SEL, u32::from(index));
        if self.read_reg(regs::QUEUE_READY) != 0 {
            return Err(HarnessError::QueueAlreadyReady(index));
        }
        self.write_reg(regs::QUEUE_NUM, u32::from(size));
        let pairs = [
            (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, layout.desc),
            (
                regs::QUEUE_DRIVER_LOW,
                regs::QUEUE_DRIVER_HIGH,
                layout.avail,
            ),
            (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, layout.used),
        ];
        for (low, high, addr) in pairs {
            self.write_reg(low, addr as u32);
            self.write_reg(high, (addr >> 32) as u32);
        }
        self.write_reg(regs::QUEUE_READY, 1);
        self.queues.insert(index, DriverQueue::new(size, layout));
        Ok(())
    }

    /// Sets DRIVER_OK and checks that the device took it.
    pub fn driver_ok(&mut self) -> Result<(), HarnessError> {
        self.add_status(status::DRIVER_OK);
        let s = self.status();
        if s & status::DRIVER_OK == 0 || s & status::DEVICE_NEEDS_RESET != 0 {
            return Err(HarnessError::DeviceNotOk(s));
        }
        Ok(())
    }

    /// The whole sequence: probe, negotiate `wanted`, set every queue up at
    /// its maximum size, DRIVER_OK. Returns the negotiated features.
    pub fn init(&mut self, wanted: u64) -> Result<u64, HarnessError> {
        self.probe()?;
        let features = self.negotiate(wanted)?;
        let mut index = 0;
        loop {
            let max = self.queue_max(index);
            if max == 0 {
                break;
            }
            self.setup_queue(index, max)?;
            index += 1;
        }
        self.driver_ok()?;
        Ok(features)
    }

    // ---- queues -----------------------------------------------------------

    fn queue(&mut self, index: u16) -> Result<&mut DriverQueue, HarnessError> {
        self.queues
            .get_mut(&index)
            .ok_or(HarnessError::QueueNotSetUp(index))
    }

    /// Where queue `index`'s rings are.
    pub fn queue_layout(&self, index: u16) -> Option<QueueLayout> {
        self.queues.get(&index).map(|q| q.layout)
    }

    /// Allocates the buffers, links them into a chain, and makes it available
    /// in queue `index`. Returns the head descriptor index. Does not notify.
    pub fn add_chain(&mut self, index: u16, bufs: &[Buf]) -> Result<u16, HarnessError> {
        let mut regions = Vec::with_capacity(bufs.len());
        for buf in bufs {
            regions.push(match buf {
                Buf::Readable(bytes) => {
                    let len = u32::try_from(bytes.len())
                        .map_err(|_| HarnessError::OutOfMemory(bytes.len() as u64))?;
                    let addr = self.alloc(u64::from(len), 8)?;
                    self.write_mem(addr, bytes)?;
                    BufRegion {
                        addr,
                        len,
                        writable: false,
                    }
                }
                Buf::Writable(len) => {
                    let addr = self.alloc(u64::from(*len), 8)?;
                    self.write_mem(addr, &vec![0; *len as usize])?;
                    BufRegion {
                        addr,
                        len: *len,
                        writable: true,
                    }
                }
                Buf::Raw(region) => *region,
            });
        }
        let mem = self.mem.clone();
        self.queue(index)?
            .add_chain(&mem, regions)?
            .ok_or(HarnessError::QueueFull(index))
    }

    /// Takes `n` descriptors of queue `index` for a hand-built chain; they
    /// never return to the free list.
    pub fn reserve_descriptors(&mut self, index: u16, n: usize) -> Result<Vec<u16>, HarnessError> {
        self.queue(index)?
            .reserve(n)
            .ok_or(HarnessError::QueueFull(index))
    }

    /// Writes descriptor `id` of queue `index` as is.
    pub fn write_descriptor(
        &mut self,
        index: u16,
        id: u16,
        desc: Descriptor,
    ) -> Result<(), HarnessError> {
        let mem = self.mem.clone();
        self.queue(index)?.write_descriptor(&mem, id, desc)
    }

    /// Puts descriptor `head` in the available ring of queue `index`.
    pub fn make_available(&mut self, index: u16, head: u16) -> Result<(), HarnessError> {
        let mem = self.mem.clone();
        self.queue(index)?.make_available(&mem, head)
    }

    /// Writes QueueNotify, as the guest's notification would.
    pub fn notify(&mut self, index: u16) {
        self.write_reg(regs::QUEUE_NOTIFY, u32::from(index));
    }

    /// Whatever the device returned in queue `index` since the last look.
    pub fn used(&mut self, index: u16) -> Result<Vec<Used>, HarnessError> {
        let mem = self.mem.clone();
        self.queue(index)?.take_used(&mem)
    }

    /// Waits until the device returns at least one chain in queue `index`.
    /// `timeout` is a hang guard, not a measurement.
    pub fn wait_used(&mut self, index: u16, timeout: Duration) -> Result<Vec<Used>, HarnessError> {
        self.wait_used_n(index, 1, timeout)
    }

    /// Waits until the device returned at least `n` chains in queue `index`.
    pub fn wait_used_n(
        &mut self,
        index: u16,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Used>, HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        loop {
            all.extend(self.used(index)?);
            if all.len() >= n {
                return Ok(all);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout(index));
            }
            // Wake on the interrupt, but also look again every few
            // milliseconds: a device may legitimately skip the interrupt.
            self.wait_interrupt(left.min(Duration::from_millis(10)))?;
        }
    }

    /// The bytes the device wrote into a returned chain: the first
    /// `used.len` bytes across its writable buffers.
    pub fn read_written(&self, used: &Used) -> Result<Vec<u8>, HarnessError> {
        let mut out = Vec::new();
        let mut left = used.len as usize;
        for buf in used.buffers.iter().filter(|b| b.writable) {
            let n = left.min(buf.len as usize);
            out.extend(self.read_mem(buf.addr, n)?);
            left -= n;
        }
        Ok(out)
    }

    // ---- memory -----------------------------------------------------------

    /// Allocates `len` bytes of guest memory aligned to `align` (a power of
    /// two). Never freed.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, HarnessError> {
        let addr = self.next_free.checked_next_multiple_of(align.max(1));
        let end = addr.and_then(|a| a.checked_add(len.max(1)));
        match (addr, end) {
            (Some(addr), Some(end)) if end <= self.mem_end => {
                self.next_free = end;
                Ok(addr)
            }
            _ => Err(HarnessError::OutOfMemory(len)),
        }
    }

    /// Reads `len` bytes of guest memory.
    pub fn read_mem(&self, addr: u64, len: usize) -> Result<Vec<u8>, HarnessError> {
        let mut out = vec![0; len];
        self.mem
            .read_slice(&mut out, GuestAddress(addr))
            .map_err(HarnessError::GuestMemory)?;
        Ok(out)
    }

    /// Writes guest memory.
    pub fn write_mem(&self, addr: u64, bytes: &[u8]) -> Result<(), HarnessError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(HarnessError::GuestMemory)
    }

    // ---- interrupts -------------------------------------------------------

    fn drain_interrupts(&mut self) {
        // EAGAIN: nothing new.
        if let Ok(n) = self.transport.interrupt_event().read() {
            self.interrupts += n;
        }
    }

    /// Blocks up to `timeout` for the interrupt eventfd.
    fn wait_interrupt(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut events = [EpollEvent::default()];
        match self.epoll.wait(ms, &mut events) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HarnessError::Wait(e)),
        }
        self.drain_interrupts();
        Ok(())
    }

    /// How many times the device signalled its interrupt eventfd so far.
    pub fn interrupt_count(&mut self) -> u64 {
        self.drain_interrupts();
        self.interrupts
    }

    /// Waits until the device asks for a reset as the specification has
    /// it (virtio 1.2 §2.1.2): a configuration interrupt, then
    /// DEVICE_NEEDS_RESET in Status. Acknowledges the interrupts it sees,
    /// as the guest's handler would. Returns Status.
    pub fn wait_needs_reset(&mut self, timeout: Duration) -> Result<u32, HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut config_seen = false;
        loop {
            config_seen |= self.ack_interrupt() & INT_CONFIG != 0;
            let status = self.status();
            if config_seen && status & status::DEVICE_NEEDS_RESET != 0 {
                return Ok(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::NoResetRequest(status));
            }
            self.wait_interrupt(left.min(Duration::from_millis(10)))?;
        }
    }

    /// Reads InterruptStatus and acknowledges what it shows, as the guest's
    /// interrupt handler does. Returns the status read.
    pub fn ack_interrupt(&mut self) -> u32 {
        let pending = self.read_reg(regs::INTERRUPT_STATUS);
        self.write_reg(regs::INTERRUPT_ACK, pending);
        pending
    }

    // ---- configuration space ----------------------------------------------

    /// One config-space read of `data.len()` bytes (1, 2, 4 or 8).
    pub fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(CONFIG_OFFSET + offset, data);
    }

    /// One config-space write of `data.len()` bytes (1, 2, 4 or 8).
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.transport.write(CONFIG_OFFSET + offset, data);
    }

    /// A little-endian u8 config field.
    pub fn config_u8(&mut self, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        self.read_config(offset, &mut b);
        b[0]
    }

    /// A little-endian u16 config field.
    pub fn config_u16(&mut self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        self.read_config(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// A little-endian u32 config field.
    pub fn config_u32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A little-endian u64 config field.
    pub fn config_u64(&mut self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read_config(offset, &mut b);
        u64::from_le_bytes(b)
    }

    /// `len` config bytes read one at a time, retried while ConfigGeneration
    /// moves underneath (as Linux's `virtio_cread_bytes`; gives up after a
    /// few rounds and returns the last read).
    pub fn config_bytes(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..16 {
            let before = self.read_reg(regs::CONFIG_GENERATION);
            bytes = (0..len as u64)
                .map(|i| self.config_u8(offset + i))
                .collect();
            if self.read_reg(regs::CONFIG_GENERATION) == before {
                break;
            }
        }
        bytes
    }
}
