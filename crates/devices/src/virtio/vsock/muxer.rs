//! The vsock backend: the connection table, the listening socket and the
//! host clients still sending their CONNECT line, and the order in which
//! connections get the guest's receive buffers.
//!
//! The muxer never touches the event loop itself. It records what the loop
//! should watch as [`FdOp`]s, and keeps sockets it dropped open until the
//! handler applied them ([`Muxer::apply_fd_ops`]), so an fd number is never
//! reused while the loop still knows it. Every registered fd carries a
//! token; connection tokens are never reused soon, so a stale event finds
//! nothing and is ignored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use tracing::debug;
use vmm_sys_util::epoll::EventSet;

use super::connection::{ConnKey, Connection, Emit, Verdict};
use super::packet::{op, socket_type, Header, HOST_CID};
use super::queue::VsockBackend;
use super::{unix, VsockCounters, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_PENDING_RESETS};
use crate::warn_limited;

/// Token of the listening socket.
pub const LISTENER_TOKEN: u32 = 3;
/// Tokens below this are the handler's own (queue notifications).
pub const FIRST_SOCKET_TOKEN: u32 = 16;

/// Host-initiated connections get host ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Connections accepted per listener event; the rest wait for the next.
const ACCEPT_BATCH: usize = 32;
/// Resets kept beyond [`MAX_PENDING_RESETS`] for connections the host side
/// ended; past this they are dropped (the guest then keeps a dead socket).
const MAX_QUEUED_RESETS: usize = MAX_PENDING_RESETS + MAX_CONNECTIONS;

/// A change to the set of fds the event loop watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdOp {
    /// Start watching `fd` for `events`, reporting `token`.
    Add {
        /// The fd.
        fd: RawFd,
        /// Reported with its events.
        token: u32,
        /// What to watch for.
        events: EventSet,
    },
    /// Change what a watched `fd` is watched for.
    Modify {
        /// The fd.
        fd: RawFd,
        /// Reported with its events.
        token: u32,
        /// What to watch for.
        events: EventSet,
    },
    /// Stop watching `fd`.
    Remove {
        /// The fd.
        fd: RawFd,
    },
}

/// A host client that has not finished its `CONNECT <port>\n` line.
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The connection table and the host side of the device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: Arc<UnixListener>,
    listener_watched: bool,
    conns: HashMap<ConnKey, Connection>,
    pending: HashMap<u32, PendingClient>,
    tokens: HashMap<u32, ConnKey>,
    next_token: u32,
    local_ports: HashSet<u32>,
    next_local_port: u32,
    /// Connections that may have packets for the guest, served in turn.
    rx_ready: VecDeque<ConnKey>,
    /// Resets for the guest that belong to no live connection.
    resets: VecDeque<Header>,
    fd_ops: Vec<FdOp>,
    /// Sockets dropped since the last [`Self::apply_fd_ops`].
    graveyard: Vec<UnixStream>,
    counters: VsockCounters,
}

impl Muxer {
    /// A muxer for the guest `guest_cid`, accepting host clients on
    /// `listener` (non-blocking) and connecting guest requests for port P
    /// to `{uds_path}_P`.
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: Arc<UnixListener>) -> Self {
        let mut muxer = Muxer {
            guest_cid,
            uds_path,
            listener,
            listener_watched: false,
            conns: HashMap::new(),
            pending: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_SOCKET_TOKEN,
            local_ports: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_ready: VecDeque::new(),
            resets: VecDeque::new(),
            fd_ops: Vec::new(),
            graveyard: Vec::new(),
            counters: VsockCounters::default(),
        };
        muxer.watch_listener();
        muxer
    }

    /// Counts refusals at the connection cap into `counters`.
    pub fn with_counters(mut self, counters: VsockCounters) -> Self {
        self.counters = counters;
        self
    }

    /// Live connections (not counting host clients still sending CONNECT).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Hands the pending [`FdOp`]s to `apply` in order, then closes the
    /// sockets they removed.
    pub fn apply_fd_ops(&mut self, mut apply: impl FnMut(FdOp)) {
        for fd_op in self.fd_ops.drain(..) {
            apply(fd_op);
        }
        self.graveyard.clear();
    }

    /// An event on a socket the muxer registered.
    pub fn on_event(&mut self, token: u32, events: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept_clients();
        } else if self.pending.contains_key(&token) {
            self.read_connect_line(token);
        } else if let Some(&key) = self.tokens.get(&token) {
            let verdict = match self.conns.get_mut(&key) {
                Some(conn) => conn.on_host_event(events),
                None => return,
            };
            self.settle(key, verdict);
        }
        // Otherwise a stale token: its socket is gone.
    }

    fn watch_listener(&mut self) {
        self.listener_watched = true;
        self.fd_ops.push(FdOp::Add {
            fd: self.listener.as_raw_fd(),
            token: LISTENER_TOKEN,
            events: EventSet::IN,
        });
    }

    fn is_full(&self) -> bool {
        self.conns.len() + self.pending.len() >= MAX_CONNECTIONS
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of fds, most likely. The listener stays readable,
                    // so stop watching it until a socket closes.
                    warn_limited!("virtio-vsock: cannot accept host clients: {e}");
                    self.listener_watched = false;
                    self.fd_ops.push(FdOp::Remove {
                        fd: self.listener.as_raw_fd(),
                    });
                    return;
                }
            };
            if self.is_full() {
                warn_limited!(
                    "virtio-vsock: {MAX_CONNECTIONS} connections open; host client refused"
                );
                self.counters.count_refused();
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn_limited!("virtio-vsock: host client dropped: {e}");
                continue;
            }
            let Some(token) = self.alloc_token() else {
                continue;
            };
            self.fd_ops.push(FdOp::Add {
                fd: stream.as_raw_fd(),
                token,
                events: EventSet::IN,
            });
            self.pending.insert(
                token,
                PendingClient {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    fn alloc_token(&mut self) -> Option<u32> {
        // At most MAX_CONNECTIONS tokens are in use, so this ends quickly.
        for _ in 0..=MAX_CONNECTIONS {
            let token = self.next_token;
            self.next_token = match self.next_token.wrapping_add(1) {
                t if t < FIRST_SOCKET_TOKEN => FIRST_SOCKET_TOKEN,
                t => t,
            };
            if !self.tokens.contains_key(&token) && !self.pending.contains_key(&token) {
                return Some(token);
            }
        }
        None
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            // u32::MAX is VMADDR_PORT_ANY, never a real port.
            self.next_local_port = match self.next_local_port.wrapping_add(1) {
                p if p < FIRST_LOCAL_PORT || p == u32::MAX => FIRST_LOCAL_PORT,
                p => p,
            };
            if self.local_ports.insert(port) {
                return Some(port);
            }
        }
        None
    }

    /// Reads a host client's CONNECT line one byte at a time (what follows
    /// the newline is stream data and must stay in the socket).
    fn read_connect_line(&mut self, token: u32) {
        let Some(client) = self.pending.get_mut(&token) else {
            return;
        };
        let port = loop {
            if client.line.len() >= MAX_CONNECT_LINE {
                debug!("virtio-vsock: CONNECT line too long");
                break None;
            }
            let mut byte = [0u8; 1];
            match (&client.stream).read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect(&client.line),
                Ok(_) => client.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let Some(client) = self.pending.remove(&token) else {
            return;
        };
        let local_port = port.and_then(|_| self.alloc_local_port());
        let (Some(peer_port), Some(local_port)) = (port, local_port) else {
            debug!("virtio-vsock: host client sent no valid CONNECT line");
            self.fd_ops.push(FdOp::Remove {
                fd: client.stream.as_raw_fd(),
            });
            self.bury(client.stream);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let mut conn = Connection::new_local(client.stream, token, key);
        // Still registered as it was while reading the line.
        conn.registered = Some(EventSet::IN);
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        self.sync(key);
        self.schedule(key);
    }

    fn bury(&mut self, stream: UnixStream) {
        self.graveyard.push(stream);
        if !self.listener_watched {
            self.watch_listener();
        }
    }

    /// Queues `key` for the receive path if it has something to send.
    fn schedule(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.queued && conn.has_rx_work() {
                conn.queued = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    /// Brings the socket's registration in line with what the connection
    /// wants.
    fn sync(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let want = conn.desired_events();
        let fd = conn.stream().as_raw_fd();
        let token = conn.token;
        match (conn.registered, want) {
            (None, Some(events)) => self.fd_ops.push(FdOp::Add { fd, token, events }),
            (Some(had), Some(events)) if had != events => {
                self.fd_ops.push(FdOp::Modify { fd, token, events })
            }
            (Some(_), None) => self.fd_ops.push(FdOp::Remove { fd }),
            _ => {}
        }
        conn.registered = want;
    }

    fn settle(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {
                self.sync(key);
                self.schedule(key);
            }
            Verdict::Reset => self.remove(key, true),
            Verdict::Close => self.remove(key, false),
        }
    }

    /// Drops a connection, with a RST to the guest if `reset` and the guest
    /// knows of it.
    fn remove(&mut self, key: ConnKey, reset: bool) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        self.tokens.remove(&conn.token);
        if conn.allocated_port {
            self.local_ports.remove(&key.local_port);
        }
        if conn.queued {
            self.rx_ready.retain(|k| *k != key);
        }
        if conn.registered.is_some() {
            self.fd_ops.push(FdOp::Remove {
                fd: conn.stream().as_raw_fd(),
            });
        }
        if reset && conn.guest_knows() {
            let rst = conn.reset_header(self.guest_cid);
            self.push_reset(rst);
        }
        self.bury(conn.into_stream());
    }

    fn push_reset(&mut self, rst: Header) {
        if self.resets.len() >= MAX_QUEUED_RESETS {
            warn_limited!("virtio-vsock: too many resets queued for the guest; one dropped");
            return;
        }
        self.resets.push_back(rst);
    }

    /// The guest asked for host port `key.local_port`: connect to
    /// `{uds}_{port}`.
    fn guest_connect(&mut self, key: ConnKey, request: &Header) {
        if self.is_full() {
            warn_limited!(
                "virtio-vsock: {MAX_CONNECTIONS} connections open; guest request refused"
            );
            self.counters.count_refused();
            self.push_reset(request.reset_reply());
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        // Only to a socket of our own user: in a shared directory another
        // user's socket would receive what the guest sends.
        if !crate::socket::is_own_socket(path.as_ref()) {
            debug!(
                "virtio-vsock: guest connection to {} refused: not a socket of this user",
                PathBuf::from(&path).display()
            );
            self.push_reset(request.reset_reply());
            return;
        }
        let stream = match unix::connect_nonblocking(path.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                debug!(
                    "virtio-vsock: guest connection to {} refused: {e}",
                    PathBuf::from(&path).display()
                );
                self.push_reset(request.reset_reply());
                return;
            }
        };
        let Some(token) = self.alloc_token() else {
            self.push_reset(request.reset_reply());
            return;
        };
        self.tokens.insert(token, key);
        self.conns
            .insert(key, Connection::new_peer(stream, token, key, request));
        self.sync(key);
        self.schedule(key);
    }
}

/// `CONNECT <port>` (without the newline) → the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim();
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u32>().ok().filter(|&p| p != u32::MAX)
}

impl VsockBackend for Muxer {
    fn tx_ready(&self) -> bool {
        self.resets.len() < MAX_PENDING_RESETS
    }

    fn send_pkt(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            debug!(
                src = hdr.src_cid,
                dst = hdr.dst_cid,
                "virtio-vsock: misaddressed packet dropped"
            );
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.socket_type != socket_type::STREAM {
            self.malformed(Some(hdr));
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            let verdict = conn.on_packet(hdr, payload);
            self.settle(key, verdict);
            return;
        }
        match hdr.op {
            op::REQUEST => self.guest_connect(key, hdr),
            op::RST => {}
            _ => self.push_reset(hdr.reset_reply()),
        }
    }

    fn malformed(&mut self, hdr: Option<&Header>) {
        let Some(hdr) = hdr else { return };
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.remove(key, true);
        } else if hdr.op != op::RST {
            self.push_reset(hdr.reset_reply());
        }
    }

    fn has_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rx_ready.is_empty()
    }

    fn recv_pkt(&mut self, max_payload: usize, payload: &mut Vec<u8>) -> Option<Header> {
        payload.clear();
        // Each connection gets one look per call, in turn.
        for _ in 0..=self.rx_ready.len() {
            if let Some(rst) = self.resets.pop_front() {
                return Some(rst);
            }
            let key = self.rx_ready.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.next_packet(self.guest_cid, max_payload, payload) {
                Emit::Packet(hdr) => {
                    self.sync(key);
                    self.schedule(key);
                    return Some(hdr);
                }
                Emit::Nothing => self.sync(key),
                Emit::Reset => self.remove(key, true),
            }
        }
        self.resets.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52 \r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967294"), Some(u32::MAX - 1));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT x",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 4294967295",
            b"CONNECT 4294967296",
            b"connect 1",
            b"CONNECT\t1",
            b"CONNECT 1 2",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
