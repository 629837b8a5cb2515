//! DNS over TCP at 10.0.2.3:53 (RFC 7766): what a resolver falls back to
//! when a UDP answer comes truncated. Each connection is a smoltcp socket
//! of the stack's own; its messages, each behind a two-byte length, are
//! queries for the same [`super::DnsServer`] as datagrams, under the same
//! policy, and their answers go back on the connection in any order (each
//! carries its query's id).
//!
//! Everything is bounded: [`MAX_CONNECTIONS`] connections (a SYN beyond
//! gets a RST), [`MAX_QUERY`] bytes a query (a longer length prefix closes
//! the connection with a RST), [`MAX_IN_FLIGHT`] queries a connection has
//! upstream at once and [`MAX_QUEUED`] bytes of answers it has not taken
//! (beyond either, its next queries wait in its receive window), and
//! [`IDLE_TIMEOUT`] without a query or an answer closes it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use super::{Client, DnsServer};
use crate::addr::DNS_IP;
use crate::budget::Budget;
use crate::buffers::{BufferSize, SockId, TcpSockets};
use crate::{Audit, Policy};

/// Connections at once, at most.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest query taken (a question and an OPT record take a few
/// hundred bytes).
pub const MAX_QUERY: usize = 4096;
/// Queries of one connection waiting for upstream, at most.
pub const MAX_IN_FLIGHT: usize = 8;
/// Bytes of answers queued for a connection beyond which it is not read.
pub const MAX_QUEUED: usize = 64 << 10;
/// How long a connection may go without a query or an answer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Each socket buffer, charged to the stack's memory budget: the receive
/// side holds whole queries with their lengths, the send side answers
/// (answers beyond wait in the connection's queue).
const BUFFER: usize = 16 << 10;

/// One connection.
struct Conn {
    socket: SockId,
    /// The guest's port (its key).
    guest_port: u16,
    /// Length-prefixed answers not yet in the socket's send buffer.
    out: Vec<u8>,
    /// When it last had a query or an answer.
    active: Instant,
}

/// The DNS server's TCP connections.
#[derive(Default)]
pub struct DnsTcp {
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

impl DnsTcp {
    /// Whether the guest's `port` has a connection to the server.
    pub fn knows(&self, guest_port: u16) -> bool {
        self.conns.values().any(|c| c.guest_port == guest_port)
    }

    /// The socket of the guest's `port`'s connection (where its frames go).
    pub fn socket_of(&self, guest_port: u16) -> Option<SockId> {
        (self.conns.values())
            .find(|c| c.guest_port == guest_port)
            .map(|c| c.socket)
    }

    /// A socket listening for the guest's SYN from `guest_port` (queued
    /// to smoltcp by the caller); false when the connections are at their
    /// bound or the socket cannot listen, and the caller resets the SYN.
    pub fn accept(
        &mut self,
        guest_port: u16,
        sockets: &mut TcpSockets,
        budget: &Budget,
        now: Instant,
    ) -> bool {
        if self.conns.len() >= MAX_CONNECTIONS {
            return false;
        }
        let Some(size) = BufferSize::fixed(budget, BUFFER) else {
            return false;
        };
        let listening = sockets.add(size, |socket| {
            socket.set_nagle_enabled(false);
            socket.set_timeout(Some(IDLE_TIMEOUT.into()));
            let endpoint = IpListenEndpoint {
                addr: Some(DNS_IP.into()),
                port: 53,
            };
            socket.listen(endpoint)
        });
        let Ok(socket) = listening else {
            return false;
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.conns.insert(
            id,
            Conn {
                socket,
                guest_port,
                out: Vec::new(),
                active: now,
            },
        );
        true
    }

    /// Reads the queries each connection has whole, answers those the
    /// server answers at once, and moves queued answers into the sockets;
    /// true if anything moved.
    pub fn serve(
        &mut self,
        sockets: &mut TcpSockets,
        dns: &mut DnsServer,
        policy: &Policy,
        audit: &Audit,
        now: Instant,
    ) -> bool {
        let mut progress = false;
        for (&id, conn) in &mut self.conns {
            let moved = sockets
                .with(conn.socket, |socket| {
                    serve_one(id, conn, socket, dns, policy, audit, now)
                })
                .unwrap_or(false);
            if moved {
                sockets.wake(conn.socket);
                progress = true;
            }
        }
        progress
    }

    /// An answer from upstream for connection `id` (dropped if it is
    /// gone).
    pub fn answer(&mut self, id: u64, reply: &[u8], sockets: &mut TcpSockets, now: Instant) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.active = now;
            push(&mut conn.out, reply);
            sockets.with(conn.socket, |socket| flush(conn, socket));
            sockets.wake(conn.socket);
        }
    }

    /// Removes closed connections, and closes idle ones; returns the
    /// clients whose pending queries are to be forgotten.
    pub fn reap(&mut self, sockets: &mut TcpSockets, dns: &DnsServer, now: Instant) -> Vec<Client> {
        let mut gone = Vec::new();
        self.conns.retain(|&id, conn| {
            let idle = now.saturating_duration_since(conn.active) >= IDLE_TIMEOUT;
            // A client that closed its side and has every answer: close
            // ours too.
            let answered = conn.out.is_empty() && dns.pending_for(Client::Tcp(id)) == 0;
            let state = sockets
                .with(conn.socket, |socket| {
                    let close = (idle || (answered && socket.state() == tcp::State::CloseWait))
                        && socket.is_open();
                    if close {
                        socket.close();
                    }
                    (socket.state(), close)
                })
                .unwrap_or((tcp::State::Closed, false));
            let (state, closed_now) = state;
            if closed_now {
                sockets.wake(conn.socket);
            }
            let closed = matches!(state, tcp::State::Closed | tcp::State::TimeWait);
            // Past the idle time twice over, a peer that never finishes
            // the close is cut off.
            let stuck = now.saturating_duration_since(conn.active) >= 2 * IDLE_TIMEOUT;
            if closed || stuck {
                sockets.remove(conn.socket);
                gone.push(Client::Tcp(id));
                return false;
            }
            true
        });
        gone
    }

    /// When the earliest connection goes idle.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.active + IDLE_TIMEOUT).min()
    }
}

/// Serves connection `id` on `socket`: queued answers out, whole queries
/// in (within the bounds); true if anything moved.
fn serve_one(
    id: u64,
    conn: &mut Conn,
    socket: &mut tcp::Socket<'_>,
    dns: &mut DnsServer,
    policy: &Policy,
    audit: &Audit,
    now: Instant,
) -> bool {
    let mut progress = flush(conn, socket);
    // Each query empties part of a receive buffer of
    // [`BUFFER`] bytes, and the bounds stop the loop before
    // the answers pile up.
    while dns.pending_for(Client::Tcp(id)) < MAX_IN_FLIGHT && conn.out.len() < MAX_QUEUED {
        let Some(query) = next_query(socket) else {
            break;
        };
        progress = true;
        conn.active = now;
        match query {
            Ok(query) => {
                // `None`: gone upstream (the answer comes through
                // `answer`), or dropped as a datagram would be.
                if let Some(reply) = dns.query(now, policy, Client::Tcp(id), &query, audit) {
                    push(&mut conn.out, &reply);
                }
            }
            Err(()) => {
                socket.abort();
                break;
            }
        }
    }
    progress |= flush(conn, socket);
    progress
}

/// The next whole query in `socket`'s receive buffer (taken out of it),
/// `None` while there is none, `Err` for a length no query has.
fn next_query(socket: &mut tcp::Socket<'_>) -> Option<Result<Vec<u8>, ()>> {
    let mut prefix = [0; 2];
    if socket.peek_slice(&mut prefix).ok()? < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes(prefix));
    if len == 0 || len > MAX_QUERY {
        return Some(Err(()));
    }
    if socket.recv_queue() < 2 + len {
        return None;
    }
    let mut message = vec![0; 2 + len];
    let got = socket.recv_slice(&mut message).ok()?;
    if got < message.len() {
        return Some(Err(()));
    }
    message.drain(..2);
    Some(Ok(message))
}

/// Queues `reply` behind its length (a reply too long for one is dropped:
/// the server never builds one).
fn push(out: &mut Vec<u8>, reply: &[u8]) {
    if let Ok(len) = u16::try_from(reply.len()) {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(reply);
    }
}

/// Moves queued answers into the socket as it has room; true if any did.
fn flush(conn: &mut Conn, socket: &mut tcp::Socket<'_>) -> bool {
    if conn.out.is_empty() || !socket.can_send() {
        return false;
    }
    match socket.send_slice(&conn.out) {
        Ok(n) if n > 0 => {
            conn.out.drain(..n);
            true
        }
        _ => false,
    }
}
