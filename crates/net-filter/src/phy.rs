//! The frame queues between the stack and smoltcp: frames the classifier
//! lets through wait in `rx` for smoltcp, frames smoltcp sends wait in
//! `tx` for the guest. `tx` is bounded; when it is full smoltcp holds its
//! data (TCP's own flow control then slows the host side down), so a guest
//! that stops taking frames costs bounded memory. `rx` is bounded in bytes
//! too. Both byte bounds are shares of the stack's memory budget
//! ([`QueueCaps::of_budget`]), reserved when the stack starts.
//!
//! Each guest frame carries the socket it is routed to (the stack knows
//! its connection when it classifies it), so smoltcp processes it in that
//! socket's set alone ([`crate::buffers::TcpSockets::poll`]).
//!
//! Frame buffers are reused: guest frames are copied into buffers kept
//! from earlier frames, and frames smoltcp sends are written into buffers
//! the consumer handed back ([`Phy::recycle`]). A reused buffer is not
//! zeroed again: only the part beyond what it held before is, once.

use std::collections::VecDeque;

use crate::buffers::SockId;

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
/// Spare frame buffers kept for reuse, at most, each way.
const POOL_FRAMES: usize = 32;
/// Frames up to this long (ACKs, ARP, DNS) reuse small buffers, longer ones
/// large buffers: a large buffer is then mostly handed out at about the
/// length it had, and grows (and is zeroed) rarely.
const SMALL_FRAME: usize = 2048;

/// Spare frame buffers (bounded by [`POOL_FRAMES`] and a byte cap).
///
/// A reused buffer keeps what it held before where the new frame does not
/// overwrite it (smoltcp and the frame builders write every byte of the
/// frames they make). The buffers of guest frames only ever hold guest
/// frames and are never handed out; those of frames for the guest only
/// ever hold frames for the same guest.
struct Pool {
    small: Vec<Vec<u8>>,
    large: Vec<Vec<u8>>,
    bytes: usize,
    cap: usize,
}

impl Pool {
    fn new(cap: usize) -> Self {
        Pool {
            small: Vec::new(),
            large: Vec::new(),
            bytes: 0,
            cap,
        }
    }

    /// A buffer of `len` bytes, reused when one is spare: only what it
    /// grows by is zeroed.
    fn get(&mut self, len: usize) -> Vec<u8> {
        let spare = if len <= SMALL_FRAME {
            &mut self.small
        } else {
            &mut self.large
        };
        match spare.pop() {
            Some(mut buf) => {
                self.bytes -= buf.capacity();
                if buf.len() >= len {
                    buf.truncate(len);
                } else {
                    buf.resize(len, 0);
                }
                buf
            }
            // Exactly as long: many small frames may be queued at once
            // (one per new connection), and their memory stays with the
            // allocator once freed.
            None => vec![0; len],
        }
    }

    /// Keeps `buf` for reuse if there is room (else it is freed).
    fn put(&mut self, buf: Vec<u8>) {
        let size = buf.capacity();
        let spare = if size <= SMALL_FRAME {
            &mut self.small
        } else {
            &mut self.large
        };
        if spare.len() < POOL_FRAMES && size <= MAX_FRAME && self.bytes + size <= self.cap {
            self.bytes += size;
            spare.push(buf);
        }
    }
}

/// A guest frame for smoltcp and the socket it is routed to.
struct RxFrame {
    data: Vec<u8>,
    route: Option<SockId>,
}

/// The byte bounds of the two queues.
#[derive(Debug, Clone, Copy)]
pub struct QueueCaps {
    /// Bytes waiting for the guest, at most.
    pub tx: usize,
    /// Guest bytes waiting for smoltcp, at most.
    pub rx: usize,
    /// Spare frame buffers kept for reuse, bytes at most (each way).
    pub pool: usize,
}

impl QueueCaps {
    /// A quarter of `budget` for frames to the guest (16 MiB of the
    /// default budget), a thirty-second for guest frames smoltcp has not
    /// taken yet.
    pub fn of_budget(budget: usize) -> Self {
        QueueCaps {
            tx: budget / 4,
            rx: budget / 32,
            pool: (budget / 32).min(POOL_FRAMES * MAX_FRAME),
        }
    }

    /// The most the two queues hold, bytes.
    pub fn worst_case(&self) -> usize {
        self.tx + self.rx + 2 * MAX_FRAME + 2 * self.pool
    }
}

/// The two queues and the MTU smoltcp sees.
pub struct Phy {
    /// Frames for smoltcp to process.
    rx: VecDeque<RxFrame>,
    rx_bytes: usize,
    /// Buffers of guest frames smoltcp processed.
    rx_pool: Pool,
    /// Buffers the consumer handed back, for frames smoltcp sends.
    tx_pool: Pool,
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
            rx_pool: Pool::new(caps.pool),
            tx_pool: Pool::new(caps.pool),
            tx: VecDeque::new(),
            tx_bytes: 0,
            caps,
            mtu,
        }
    }

    /// Queues a guest frame for smoltcp, for the socket of `route` (none:
    /// for smoltcp's own handling); false (dropped) when full.
    pub fn take(&mut self, frame: &[u8], route: Option<SockId>) -> bool {
        if self.rx.len() >= RX_FRAMES || self.rx_bytes >= self.caps.rx {
            return false;
        }
        self.rx_bytes += frame.len();
        let mut data = self.rx_pool.get(frame.len());
        data.copy_from_slice(frame);
        self.rx.push_back(RxFrame { data, route });
        true
    }

    /// Where the next guest frame for smoltcp is routed: `None` when there
    /// is none, `Some(None)` for a frame of no socket.
    pub fn next_route(&self) -> Option<Option<SockId>> {
        self.rx.front().map(|f| f.route)
    }

    /// Takes back a frame [`Phy::pop`] handed out, for reuse.
    pub fn recycle(&mut self, frame: Vec<u8>) {
        self.tx_pool.put(frame);
    }

    /// Runs `f` with `frame` as the only guest frame for smoltcp (a parked
    /// SYN, which must land in the socket made for it), the queued ones
    /// put back afterwards; true in the second place if smoltcp left the
    /// frame untaken. The frame passes the bounds: it was charged to the
    /// budget while parked.
    pub fn alone<R>(&mut self, frame: Vec<u8>, f: impl FnOnce(&mut Self) -> R) -> (R, bool) {
        let queued = std::mem::take(&mut self.rx);
        let queued_bytes = std::mem::replace(&mut self.rx_bytes, frame.len());
        self.rx.push_back(RxFrame {
            data: frame,
            route: None,
        });
        let r = f(self);
        let untaken = !self.rx.is_empty();
        self.rx = queued;
        self.rx_bytes = queued_bytes;
        (r, untaken)
    }

    /// The next guest frame for smoltcp.
    fn next_rx(&mut self) -> Option<Vec<u8>> {
        let frame = self.rx.pop_front()?;
        self.rx_bytes -= frame.data.len();
        Some(frame.data)
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

/// A frame smoltcp takes; its buffer is kept for the next guest frame.
pub struct RxTok<'a> {
    frame: Vec<u8>,
    pool: &'a mut Pool,
}

/// Room for one frame smoltcp sends.
pub struct TxTok<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    tx_bytes: &'a mut usize,
    pool: &'a mut Pool,
}

impl smoltcp::phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.frame);
        self.pool.put(self.frame);
        r
    }
}

impl smoltcp::phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = self.pool.get(len);
        let r = f(&mut frame);
        // Tokens are only handed out when there is room.
        *self.tx_bytes += frame.len();
        self.tx.push_back(frame);
        r
    }
}

/// One guest frame smoltcp processes where it lies (no copy), replies
/// queued to the guest as usual.
pub struct Borrowed<'f, 'p> {
    frame: Option<&'f [u8]>,
    phy: &'p mut Phy,
}

impl<'f, 'p> Borrowed<'f, 'p> {
    /// `frame` for smoltcp, its replies into `phy`.
    pub fn new(frame: &'f [u8], phy: &'p mut Phy) -> Self {
        Borrowed {
            frame: Some(frame),
            phy,
        }
    }

    /// Whether smoltcp took the frame (it does not when the guest-bound
    /// queue has no room for a reply).
    pub fn taken(&self) -> bool {
        self.frame.is_none()
    }
}

/// A borrowed guest frame smoltcp takes.
pub struct SliceTok<'f>(&'f [u8]);

impl smoltcp::phy::RxToken for SliceTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<'f> Device for Borrowed<'f, '_> {
    type RxToken<'a>
        = SliceTok<'f>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(SliceTok<'f>, TxTok<'_>)> {
        if !self.phy.has_room() {
            return None;
        }
        let frame = self.frame.take()?;
        Some((SliceTok(frame), self.phy.tx_token()))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxTok<'_>> {
        if self.phy.has_room() {
            Some(self.phy.tx_token())
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.phy.capabilities()
    }
}

impl Phy {
    fn tx_token(&mut self) -> TxTok<'_> {
        TxTok {
            tx: &mut self.tx,
            tx_bytes: &mut self.tx_bytes,
            pool: &mut self.tx_pool,
        }
    }
}

impl Device for Phy {
    type RxToken<'a> = RxTok<'a>;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        if !self.has_room() {
            // A reply could not be queued; leave the frame for later.
            return None;
        }
        let frame = self.next_rx()?;
        let rx = RxTok {
            frame,
            pool: &mut self.rx_pool,
        };
        let tx = TxTok {
            tx: &mut self.tx,
            tx_bytes: &mut self.tx_bytes,
            pool: &mut self.tx_pool,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxTok<'_>> {
        if self.has_room() {
            Some(self.tx_token())
        } else {
            None
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_buffer_is_reused_without_zeroing() {
        let mut pool = Pool::new(1 << 20);
        let mut buf = pool.get(9000);
        buf.fill(0xab);
        let ptr = buf.as_ptr();
        pool.put(buf);
        let again = pool.get(8000);
        assert_eq!(again.as_ptr(), ptr, "the spare buffer was not reused");
        assert_eq!(again.len(), 8000);
        assert!(
            again.iter().all(|&b| b == 0xab),
            "a reused buffer was zeroed"
        );
        // Growing zeroes only the new part.
        pool.put(again);
        let grown = pool.get(9500);
        assert!(grown[..8000].iter().all(|&b| b == 0xab));
        assert!(grown[9000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn small_frames_do_not_take_large_buffers() {
        let mut pool = Pool::new(1 << 20);
        let large = pool.get(60000);
        let ptr = large.as_ptr();
        pool.put(large);
        let small = pool.get(54);
        assert_ne!(small.as_ptr(), ptr);
        let large = pool.get(60000);
        assert_eq!(large.as_ptr(), ptr);
    }

    #[test]
    fn the_pool_is_bounded() {
        let mut pool = Pool::new(4 * MAX_FRAME);
        for _ in 0..10 {
            pool.put(vec![0; MAX_FRAME]);
        }
        assert_eq!(pool.large.len(), 4);
        assert!(pool.bytes <= 4 * MAX_FRAME);
        let mut pool = Pool::new(usize::MAX);
        for _ in 0..(POOL_FRAMES + 10) {
            pool.put(vec![0; 100]);
        }
        pool.put(vec![0; MAX_FRAME + 1]);
        assert_eq!(pool.small.len(), POOL_FRAMES);
        assert!(pool.large.is_empty(), "an oversized buffer was kept");
    }

    #[test]
    fn queued_frames_keep_their_order_and_route_and_the_bounds_hold() {
        let caps = QueueCaps::of_budget(1 << 20);
        let mut phy = Phy::new(1500, caps);
        assert!(phy.take(&[1; 60], None));
        assert!(phy.take(&[2; 70], None));
        assert_eq!(phy.next_route(), Some(None));
        assert_eq!(phy.next_rx(), Some(vec![1; 60]));
        assert_eq!(phy.next_rx(), Some(vec![2; 70]));
        assert_eq!(phy.next_route(), None);
        let mut taken = 0;
        while phy.take(&[0; 1514], None) {
            taken += 1;
            assert!(taken <= RX_FRAMES, "the guest frame queue is unbounded");
        }
        assert!(phy.rx_bytes <= caps.rx + MAX_FRAME);
    }
}
