//! The name a guest connection asks its server for, read before any of
//! its bytes leave the host: the TLS ClientHello's server name on port
//! 443 ([`tls`]), the HTTP request's `Host` on port 80 ([`http`]).
//!
//! A shared address (a CDN's, a cloud load balancer's) serves many names;
//! that the DNS server handed it out for an allowed name does not make
//! every site behind it allowed. So a flow the policy allowed for a name
//! is held at its first bytes ([`Gate`]): the host end is already
//! connected (no round trip is added), the guest's bytes wait in the
//! flow's receive buffer, and the stack lets them through once the name in
//! them is judged (`judge.rs`: pinned to the address, or allowed and handed
//! out for it) — or resets the flow.
//! A gate decides within [`MAX_PEEK`] bytes and [`PEEK_TIMEOUT`] of the
//! connection opening, whatever the guest sends.
//!
//! The parsers are pure functions of the bytes, public so fuzz targets can
//! drive them.

pub mod http;
pub mod tls;

use std::time::{Duration, Instant};

use smoltcp::socket::tcp;

/// The most bytes of a stream a parser looks at: a ClientHello or a
/// request's header block longer than this is refused (browsers' hellos
/// with post-quantum key shares stay under 4 KiB, servers refuse header
/// blocks over 8–16 KiB).
pub const MAX_PEEK: usize = 16 << 10;
/// How long a guest has, from the moment its connection opens, to send
/// its whole ClientHello or request head.
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the first bytes of a stream say so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// Not all of the first message yet.
    Incomplete,
    /// The whole first message: the host name it asks for (as sent, at
    /// most 254 ASCII bytes), or `None` when it names none.
    Name(Option<String>),
    /// Not the protocol of the port, or ambiguous: why.
    Malformed(&'static str),
}

/// Which parser a port's flows get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TLS (port 443): the ClientHello's server name.
    Tls,
    /// HTTP/1 (port 80): the `Host` header.
    Http,
}

impl Protocol {
    /// The protocol whose first message names the server on `port`.
    pub fn of_port(port: u16) -> Option<Self> {
        match port {
            443 => Some(Protocol::Tls),
            80 => Some(Protocol::Http),
            _ => None,
        }
    }

    /// Parses the start of a stream.
    pub fn peek(self, stream: &[u8]) -> Peeked {
        match self {
            Protocol::Tls => tls::client_hello_sni(stream),
            Protocol::Http => http::request_host(stream),
        }
    }

    /// What the first message is called (audit reasons).
    pub(crate) fn incomplete(self) -> &'static str {
        match self {
            Protocol::Tls => "no complete TLS ClientHello",
            Protocol::Http => "no complete HTTP request head",
        }
    }
}

/// Holds a flow's guest bytes until its first message is judged.
#[derive(Debug)]
pub struct Gate {
    protocol: Protocol,
    /// When the connection opened (the first look).
    opened: Option<Instant>,
    /// Bytes the guest had sent at the last parse: nothing new, nothing
    /// to parse again.
    parsed_len: usize,
    /// The first message was judged: the gate stays shut (a refused
    /// flow's bytes wait in its buffer until it is reaped) until lifted.
    decided: bool,
    /// The flow is held to be judged (else only to learn whether it is
    /// to be intercepted: it passes whatever its first message says).
    judges: bool,
}

impl Gate {
    /// A gate for a flow of `protocol`.
    pub fn new(protocol: Protocol) -> Self {
        Gate {
            protocol,
            opened: None,
            parsed_len: 0,
            decided: false,
            judges: true,
        }
    }

    /// A gate for a TLS flow the policy lets through whatever it names
    /// (`open` mode, a public address), held only to read its server name:
    /// a flow to a host a secret is bound to is intercepted
    /// ([`crate::intercept`]), any other passes.
    pub fn for_interception() -> Self {
        Gate {
            judges: false,
            ..Gate::new(Protocol::Tls)
        }
    }

    /// Whether the first message decides if the flow may pass (false: see
    /// [`Gate::for_interception`]).
    pub fn judges(&self) -> bool {
        self.judges
    }

    /// The protocol the gate reads.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Looks at what the guest sent so far (without taking it): `None`
    /// while undecided (and after the one decision), else
    /// [`Peeked::Name`] or [`Peeked::Malformed`] (too long, too slow,
    /// closed early included), once.
    pub fn look(&mut self, socket: &mut tcp::Socket<'_>, now: Instant) -> Option<Peeked> {
        let decided = self.look_again(socket, now);
        self.decided |= decided.is_some();
        decided
    }

    fn look_again(&mut self, socket: &mut tcp::Socket<'_>, now: Instant) -> Option<Peeked> {
        use tcp::State::{Listen, SynReceived, SynSent};
        if self.decided || matches!(socket.state(), Listen | SynReceived | SynSent) {
            return None;
        }
        let opened = *self.opened.get_or_insert(now);
        let queued = socket.recv_queue();
        let late = now.saturating_duration_since(opened) >= PEEK_TIMEOUT;
        let closed = !socket.may_recv();
        if queued == self.parsed_len && !late && !closed {
            return None;
        }
        self.parsed_len = queued;
        let mut head = vec![0; queued.min(MAX_PEEK)];
        let got = socket.peek_slice(&mut head).unwrap_or(0);
        head.truncate(got);
        match self.protocol.peek(&head) {
            Peeked::Incomplete if queued >= MAX_PEEK => {
                Some(Peeked::Malformed("first message over 16 KiB"))
            }
            Peeked::Incomplete if late || closed => {
                Some(Peeked::Malformed(self.protocol.incomplete()))
            }
            Peeked::Incomplete => None,
            decided => Some(decided),
        }
    }

    /// When the gate decides even if the guest sends nothing more.
    pub fn deadline(&self) -> Option<Instant> {
        match self.decided {
            true => None,
            false => self.opened.map(|t| t + PEEK_TIMEOUT),
        }
    }
}

/// A small deterministic generator (xorshift64) for the parsers' mutation
/// tests.
#[cfg(test)]
pub(crate) struct XorShift(pub u64);

#[cfg(test)]
impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
