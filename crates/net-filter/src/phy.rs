//! The frame queues between the stack and smoltcp: frames the classifier
//! lets through wait in `rx` for smoltcp, frames smoltcp sends wait in
//! `tx` for the guest. `tx` is bounded; when it is full smoltcp holds its
//! data (TCP's own flow control then slows the host side down), so a guest
//! that stops taking frames costs bounded memory. `rx` is bounded in bytes
//! too. Both byte bounds are shares of the stack's memory budget
//! ([`QueueCaps::of_budget`]), reserved when the stack starts.

use std::collections::VecDeque;

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Ethernet header length.
pub const ETH_HEADER: usize = 14;
/// Frames waiting for the guest, at most.
const TX_FRAMES: usize = 1024;
/// Guest frames waiting for smoltcp, at most (smoltcp takes none while the
/// guest-bound queue is full; a guest that keeps sending meanwhile loses
/// frames, which TCP retransmits).
const RX_FRAMES: usize = 1024;
/// The largest frame either queue holds (a 64 KiB IP packet and its
/// Ethernet header): a queue checks its byte bound before it takes a frame,
/// so it may pass it by up to this much.
pub const MAX_FRAME: usize = ETH_HEADER + u16::MAX as usize;

/// The byte bounds of the two queues.
#[derive(Debug, Clone, Copy)]
pub struct QueueCaps {
    /// Bytes waiting for the guest, at most.
    pub tx: usize,
    /// Guest bytes waiting for smoltcp, at most.
    pub rx: usize,
}

impl QueueCaps {
    /// A quarter of `budget` for frames to the guest (16 MiB of the
    /// default budget), a thirty-second for guest frames smoltcp has not
    /// taken yet.
    pub fn of_budget(budget: usize) -> Self {
        QueueCaps {
            tx: budget / 4,
            rx: budget / 32,
        }
    }

    /// The most the two queues hold, bytes.
    pub fn worst_case(&self) -> usize {
        self.tx + self.rx + 2 * MAX_FRAME
    }
}

/// The two queues and the MTU smoltcp sees.
pub struct Phy {
    /// Frames for smoltcp to process.
    rx: VecDeque<Vec<u8>>,
    rx_bytes: usize,
    /// Frames for the guest.
    tx: VecDeque<Vec<u8>>,
    tx_bytes: usize,
    caps: QueueCaps,
    /// Largest IP packet, bytes.
    mtu: usize,
}

impl Phy {
    /// Empty queues for an IP MTU of `mtu` bytes, bounded by `caps`.
    pub fn new(mtu: usize, caps: QueueCaps) -> Self {
        Phy {
            rx: VecDeque::new(),
            rx_bytes: 0,
            tx: VecDeque::new(),
            tx_bytes: 0,
            caps,
            mtu,
        }
    }

    /// Queues a guest frame for smoltcp; false (dropped) when full.
    pub fn take(&mut self, frame: &[u8]) -> bool {
        if self.rx.len() >= RX_FRAMES || self.rx_bytes >= self.caps.rx {
            return false;
        }
        self.rx_bytes += frame.len();
        self.rx.push_back(frame.to_vec());
        true
    }

    /// Runs `f` with `frame` as the only guest frame for smoltcp (a parked
    /// SYN, which must land in the socket made for it), the queued ones
    /// put back afterwards; true in the second place if smoltcp left the
    /// frame untaken. The frame passes the bounds: it was charged to the
    /// budget while parked.
    pub fn alone<R>(&mut self, frame: Vec<u8>, f: impl FnOnce(&mut Self) -> R) -> (R, bool) {
        let queued = std::mem::take(&mut self.rx);
        let queued_bytes = std::mem::replace(&mut self.rx_bytes, frame.len());
        self.rx.push_back(frame);
        let r = f(self);
        let untaken = !self.rx.is_empty();
        self.rx = queued;
        self.rx_bytes = queued_bytes;
        (r, untaken)
    }

    /// The next guest frame for smoltcp.
    fn next_rx(&mut self) -> Option<Vec<u8>> {
        let frame = self.rx.pop_front()?;
        self.rx_bytes -= frame.len();
        Some(frame)
    }

    /// Whether guest frames wait for smoltcp.
    pub fn rx_waiting(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Whether the guest-bound queue takes another frame.
    pub fn has_room(&self) -> bool {
        self.tx.len() < TX_FRAMES && self.tx_bytes < self.caps.tx
    }

    /// Queues a frame the stack built itself; false (dropped) when full.
    pub fn send(&mut self, frame: Vec<u8>) -> bool {
        if !self.has_room() {
            return false;
        }
        self.tx_bytes += frame.len();
        self.tx.push_back(frame);
        true
    }

    /// The next frame for the guest.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let frame = self.tx.pop_front()?;
        self.tx_bytes -= frame.len();
        Some(frame)
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        !self.tx.is_empty()
    }
}

/// A frame smoltcp takes.
pub struct RxTok(Vec<u8>);

/// Room for one frame smoltcp sends.
pub struct TxTok<'a>(&'a mut Phy);

impl smoltcp::phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        // transmit() only hands out a token when there is room.
        self.0.send(frame);
        r
    }
}

impl Device for Phy {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxTok, TxTok<'_>)> {
        if !self.has_room() {
            // A reply could not be queued; leave the frame for later.
            return None;
        }
        let frame = self.next_rx()?;
        Some((RxTok(frame), TxTok(self)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxTok<'_>> {
        self.has_room().then_some(TxTok(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETH_HEADER;
        caps.max_burst_size = None;
        // Guest frames' checksums are not verified: a guest that sends
        // corrupt data only corrupts its own connections, and with
        // checksum offload its L4 checksums are partial anyway. Frames to
        // the guest carry correct checksums.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}
