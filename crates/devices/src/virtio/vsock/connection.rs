//! One vsock stream connection: its state machine, both directions of
//! credit-based flow control, and its host Unix socket.
//!
//! Guest → host: the guest may have at most [`CONN_BUF_ALLOC`] bytes in
//! flight (the `buf_alloc` we advertise minus what it sent since our last
//! reported `fwd_cnt`). Its data is written straight to the host socket;
//! what the socket does not take waits in `to_host`, and `fwd_cnt` (our
//! credit to the guest) only grows as the socket takes bytes — a host that
//! does not read stops the guest instead of growing a buffer. A guest that
//! sends beyond its credit is reset.
//!
//! Host → guest: nothing is buffered. When the host socket is readable and
//! the guest has credit (`peer_buf_alloc` minus bytes sent and not yet
//! forwarded by the guest), the bytes are read straight into the packet
//! for the guest's receive buffer.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{op, shutdown, socket_type, Header, HOST_CID};
use super::{unix, CONN_BUF_ALLOC};

/// Our `fwd_cnt` is reported unasked once it moved this far since the last
/// report: the guest never stalls while we hold free buffer it does not
/// know about for long.
pub(crate) const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// A buffer that drained keeps at most this much capacity.
const IDLE_BUFFER_CAPACITY: usize = 16 * 1024;

/// A connection's identity: host port and guest port (the CIDs are fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    /// The host side's port.
    pub local_port: u32,
    /// The guest side's port.
    pub peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A host client asked for it: REQUEST to send, or sent and waiting for
    /// the guest's RESPONSE. The socket is watched only for the client
    /// going away (EPOLLHUP, which epoll reports unasked).
    LocalInit { request_sent: bool },
    /// Both sides agreed; data flows.
    Established,
}

/// What the connection table should do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep the connection.
    Keep,
    /// Drop it and tell the guest with a RST.
    Reset,
    /// Drop it silently (the guest reset it).
    Close,
}

/// What [`Connection::next_packet`] produced.
#[derive(Debug)]
pub(crate) enum Emit {
    /// A packet for the guest (payload in the caller's buffer).
    Packet(Header),
    /// Nothing to send now.
    Nothing,
    /// The host socket failed: reset the connection.
    Reset,
}

pub(crate) struct Connection {
    stream: UnixStream,
    /// The event token of the socket.
    pub token: u32,
    pub key: ConnKey,
    /// The host port was allocated by us (host-initiated connection).
    pub allocated_port: bool,
    state: State,
    response_pending: bool,
    credit_update_pending: bool,
    /// We asked the guest for credit and heard nothing new since.
    credit_requested: bool,
    /// Bytes for the host socket (the OK line, then guest data).
    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` that are not guest data (the OK line).
    unaccounted: usize,
    /// Guest bytes the host socket took, ever (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest, ever.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The host socket signalled readable and has not returned EAGAIN since.
    host_readable: bool,
    /// The host socket returned end-of-file.
    host_eof: bool,
    host_write_shut: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shut: u32,
    /// The guest shut both directions: reset once `to_host` drained.
    close_when_flushed: bool,
    /// What the socket is registered for in the event loop, if at all.
    pub registered: Option<EventSet>,
    /// The key is in the muxer's queue of connections with packets to send.
    pub queued: bool,
}

impl Connection {
    /// A connection a host client asked for; the guest hears of it by the
    /// REQUEST [`Self::next_packet`] emits first.
    pub fn new_local(stream: UnixStream, token: u32, key: ConnKey) -> Self {
        Self::new(
            stream,
            token,
            key,
            State::LocalInit {
                request_sent: false,
            },
        )
    }

    /// A connection the guest asked for with `request`, already connected
    /// on the host; its RESPONSE is due.
    pub fn new_peer(stream: UnixStream, token: u32, key: ConnKey, request: &Header) -> Self {
        let mut conn = Self::new(stream, token, key, State::Established);
        conn.response_pending = true;
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(request.fwd_cnt);
        conn
    }

    fn new(stream: UnixStream, token: u32, key: ConnKey, state: State) -> Self {
        Connection {
            stream,
            token,
            key,
            allocated_port: matches!(state, State::LocalInit { .. }),
            state,
            response_pending: false,
            credit_update_pending: false,
            credit_requested: false,
            to_host: VecDeque::new(),
            unaccounted: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_readable: false,
            host_eof: false,
            host_write_shut: false,
            peer_shut: 0,
            close_when_flushed: false,
            registered: None,
            queued: false,
        }
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Gives the host socket up (to close it once it left the event loop).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Whether the guest knows the connection (and must hear of its end).
    pub fn guest_knows(&self) -> bool {
        self.state
            != State::LocalInit {
                request_sent: false,
            }
    }

    /// Bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        // A guest whose fwd_cnt runs ahead of what it received gets none.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shut & shutdown::RCV == 0
    }

    /// Whether [`Self::next_packet`] may produce something.
    pub fn has_rx_work(&self) -> bool {
        match self.state {
            State::LocalInit { request_sent } => !request_sent,
            State::Established => {
                self.response_pending
                    || self.credit_update_pending
                    || (self.wants_to_read() && (self.peer_credit() > 0 || !self.credit_requested))
            }
        }
    }

    /// The events the socket should be watched for (`None`: not at all,
    /// which also keeps a hung-up socket from waking the loop in vain).
    pub fn desired_events(&self) -> Option<EventSet> {
        if self.state != State::Established {
            // Bytes the client sent early stay in the socket until the
            // guest accepted; only a hang-up (never masked) wakes us.
            return Some(EventSet::empty());
        }
        let mut set = EventSet::empty();
        if !self.host_readable && !self.host_eof && self.peer_shut & shutdown::RCV == 0 {
            set |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }

    /// A header from our side of the connection, carrying our credit.
    fn header(&mut self, guest_cid: u64, op: u16, len: usize, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.credit_update_pending = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            // At most MAX_PKT_PAYLOAD.
            len: len as u32,
            socket_type: socket_type::STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The RST ending this connection.
    pub fn reset_header(&mut self, guest_cid: u64) -> Header {
        let mut hdr = self.header(guest_cid, op::RST, 0, 0);
        hdr.buf_alloc = 0;
        hdr.fwd_cnt = 0;
        hdr
    }

    /// The next packet for the guest, payload (at most `max_payload`
    /// bytes) in `payload`.
    pub fn next_packet(
        &mut self,
        guest_cid: u64,
        max_payload: usize,
        payload: &mut Vec<u8>,
    ) -> Emit {
        payload.clear();
        match self.state {
            State::LocalInit {
                request_sent: false,
            } => {
                self.state = State::LocalInit { request_sent: true };
                return Emit::Packet(self.header(guest_cid, op::REQUEST, 0, 0));
            }
            State::LocalInit { request_sent: true } => return Emit::Nothing,
            State::Established => {}
        }
        if self.response_pending {
            self.response_pending = false;
            return Emit::Packet(self.header(guest_cid, op::RESPONSE, 0, 0));
        }
        if self.wants_to_read() {
            let credit = self.peer_credit() as usize;
            // (A zero-byte read would look like end-of-file.)
            if credit > 0 && max_payload > 0 {
                let n = credit.min(max_payload);
                payload.resize(n, 0);
                match (&self.stream).read(payload) {
                    Ok(0) => {
                        payload.clear();
                        self.host_eof = true;
                        self.host_readable = false;
                        // A peer that closed outright will not read either.
                        let flags = if unix::peer_gone(&self.stream) {
                            shutdown::BOTH
                        } else {
                            shutdown::SEND
                        };
                        return Emit::Packet(self.header(guest_cid, op::SHUTDOWN, 0, flags));
                    }
                    Ok(k) => {
                        payload.truncate(k);
                        // k <= credit, a u32.
                        self.rx_cnt += Wrapping(k as u32);
                        return Emit::Packet(self.header(guest_cid, op::RW, k, 0));
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        payload.clear();
                        self.host_readable = false;
                    }
                    Err(_) => {
                        payload.clear();
                        return Emit::Reset;
                    }
                }
            } else if credit == 0 && !self.credit_requested {
                self.credit_requested = true;
                return Emit::Packet(self.header(guest_cid, op::CREDIT_REQUEST, 0, 0));
            }
        }
        if self.credit_update_pending {
            return Emit::Packet(self.header(guest_cid, op::CREDIT_UPDATE, 0, 0));
        }
        Emit::Nothing
    }

    /// A packet from the guest for this connection.
    pub fn on_packet(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        if (hdr.buf_alloc, hdr.fwd_cnt) != (self.peer_buf_alloc, self.peer_fwd_cnt.0) {
            self.peer_buf_alloc = hdr.buf_alloc;
            self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
            self.credit_requested = false;
        }
        match (self.state, hdr.op) {
            (_, op::RST) => Verdict::Close,
            (State::LocalInit { request_sent: true }, op::RESPONSE) => {
                self.state = State::Established;
                let line = format!("OK {}\n", self.key.local_port);
                self.unaccounted = line.len();
                self.to_host.extend(line.as_bytes());
                self.flush()
            }
            (State::LocalInit { .. }, _) => Verdict::Reset,
            (State::Established, op::RW) if self.peer_shut & shutdown::SEND == 0 => {
                self.take_guest_data(payload)
            }
            (State::Established, op::CREDIT_UPDATE) => Verdict::Keep,
            (State::Established, op::CREDIT_REQUEST) => {
                self.credit_update_pending = true;
                Verdict::Keep
            }
            (State::Established, op::SHUTDOWN) => {
                self.peer_shut |= hdr.flags & shutdown::BOTH;
                if self.peer_shut == shutdown::BOTH {
                    self.close_when_flushed = true;
                }
                self.after_flush()
            }
            // Data after the guest said it sends no more, a second REQUEST
            // or RESPONSE, unknown ops.
            (State::Established, _) => Verdict::Reset,
        }
    }

    /// The host socket signalled `events`.
    pub fn on_host_event(&mut self, events: EventSet) -> Verdict {
        let trouble = EventSet::ERROR | EventSet::HANG_UP;
        if self.state != State::Established {
            // The client gave up waiting for the guest.
            return if events.intersects(trouble) {
                Verdict::Reset
            } else {
                Verdict::Keep
            };
        }
        if !self.to_host.is_empty() && events.intersects(EventSet::OUT | trouble) {
            if let Verdict::Reset = self.flush() {
                return Verdict::Reset;
            }
        }
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | trouble) && !self.host_eof {
            self.host_readable = true;
        }
        self.after_flush()
    }

    /// Takes `data` from the guest: to the host socket, or into `to_host`
    /// within the guest's credit.
    fn take_guest_data(&mut self, data: &[u8]) -> Verdict {
        let buffered = self.to_host.len() - self.unaccounted;
        if buffered + data.len() > CONN_BUF_ALLOC as usize {
            tracing::debug!(
                port = self.key.local_port,
                "virtio-vsock: guest sent beyond its credit"
            );
            return Verdict::Reset;
        }
        let mut rest = data;
        if self.to_host.is_empty() {
            match unix::send(&self.stream, data) {
                Ok(n) => {
                    self.forwarded(n);
                    rest = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Verdict::Reset,
            }
        }
        self.to_host.extend(rest);
        self.after_flush()
    }

    /// `n` guest bytes reached the host socket.
    fn forwarded(&mut self, n: usize) {
        // n is at most CONN_BUF_ALLOC.
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
            && self.peer_shut & shutdown::SEND == 0
        {
            self.credit_update_pending = true;
        }
    }

    /// Writes `to_host` until the socket would block.
    fn flush(&mut self) -> Verdict {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match unix::send(&self.stream, front) {
                Ok(n) => {
                    let ours = n.min(self.unaccounted);
                    self.unaccounted -= ours;
                    self.forwarded(n - ours);
                    self.to_host.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Verdict::Reset,
            }
        }
        if self.to_host.is_empty() && self.to_host.capacity() > IDLE_BUFFER_CAPACITY {
            self.to_host.shrink_to(IDLE_BUFFER_CAPACITY);
        }
        self.after_flush()
    }

    /// Applies the guest's SHUTDOWN once everything it sent reached the host.
    fn after_flush(&mut self) -> Verdict {
        if !self.to_host.is_empty() {
            return Verdict::Keep;
        }
        if self.close_when_flushed {
            // Linux waits for this RST before it lets the socket go.
            return Verdict::Reset;
        }
        if self.peer_shut & shutdown::SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            // ENOTCONN: the host side is gone already; reads will say so.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Verdict::Keep
    }
}
