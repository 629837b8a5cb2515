//! Loss recovery the guest's smoltcp lacks, in the manner of Linux's
//! tail-loss probe and fast retransmit (RFC 8985), for the one connection
//! a bulk upload runs on.
//!
//! Why: passt does not buffer guest data. What the host socket refuses it
//! drops and answers with duplicate ACKs, counting on the guest to send
//! it again. Linux does so within milliseconds; smoltcp ignores ACKs
//! whose window changed as duplicates and waits out its retransmission
//! timeout (at least one second, doubling), so without this a guest→host
//! run through passt measures smoltcp's timer, not passt. agentvm-net
//! never drops a segment, so it never sees a retransmission from here.
//!
//! How: every data segment the guest sends on the connection is kept
//! until the peer acknowledges it; when the peer has been silent for the
//! probe timeout while segments are unacknowledged, they are sent again
//! (go-back-N from the peer's ACK, as smoltcp does after its timeout).
//! Resending only the first one (NewReno on partial ACKs) made passt,
//! which ACKs as its host socket drains, answer with a storm of partial
//! ACKs and the guest with a storm of needless retransmissions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};

/// The first probe timeout (Linux: the larger of two smoothed RTTs and
/// 10 ms); it doubles while the peer stays silent.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(10);
/// The longest probe timeout (smoltcp's own timer takes over there).
const MAX_TIMEOUT: Duration = Duration::from_secs(1);

/// Unacknowledged segments of one guest connection.
pub struct Recovery {
    /// The guest's port of the connection.
    port: u16,
    /// Frames sent, with the sequence number just past their data.
    unacked: VecDeque<(u32, Vec<u8>)>,
    /// When the peer last sent anything on the connection, or when the
    /// last retransmission went.
    quiet_since: Instant,
    /// The current probe timeout.
    pub timeout: Duration,
    /// Segments sent again so far.
    pub retransmits: u64,
}

/// The TCP header of a frame, if it is IPv4 TCP.
fn tcp(frame: &[u8]) -> Option<TcpPacket<&[u8]>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let payload = ip.payload();
    TcpPacket::new_checked(payload).ok()
}

/// Whether sequence number `a` is at or before `b` (modulo 2^32).
fn at_or_before(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) as i32 >= 0
}

impl Recovery {
    /// Watches the guest connection from `port`.
    pub fn new(port: u16) -> Self {
        Recovery {
            port,
            unacked: VecDeque::new(),
            quiet_since: Instant::now(),
            timeout: PROBE_TIMEOUT,
            retransmits: 0,
        }
    }

    /// Notes a frame the guest sent (kept if it carries data of ours).
    pub fn sent(&mut self, frame: Vec<u8>) {
        let end = match tcp(&frame) {
            Some(t) if t.src_port() == self.port && !t.payload().is_empty() => {
                (t.seq_number().0 as u32).wrapping_add(t.payload().len() as u32)
            }
            _ => return,
        };
        if self.unacked.is_empty() {
            self.quiet_since = Instant::now();
        }
        self.unacked.push_back((end, frame));
    }

    /// Notes a frame the peer sent: its ACK releases segments.
    pub fn received(&mut self, frame: &[u8]) {
        let Some(t) = tcp(frame) else {
            return;
        };
        if t.dst_port() != self.port {
            return;
        }
        self.quiet_since = Instant::now();
        self.timeout = PROBE_TIMEOUT;
        if t.ack() {
            let ack = t.ack_number().0 as u32;
            while self
                .unacked
                .front()
                .is_some_and(|(end, _)| at_or_before(*end, ack))
            {
                self.unacked.pop_front();
            }
        }
    }

    /// The segments to send again now: all unacknowledged ones if the
    /// peer has been silent for the probe timeout, else none.
    pub fn due(&mut self, now: Instant) -> impl Iterator<Item = &Vec<u8>> {
        let due = !self.unacked.is_empty() && now.duration_since(self.quiet_since) >= self.timeout;
        if due {
            self.quiet_since = now;
            self.timeout = (self.timeout * 2).min(MAX_TIMEOUT);
            self.retransmits += self.unacked.len() as u64;
        }
        let n = if due { self.unacked.len() } else { 0 };
        self.unacked.iter().take(n).map(|(_, f)| f)
    }
}
