//! A query asked again over TCP: when a guest asked over TCP and the
//! upstream resolver's datagram answer came truncated, the server asks
//! the resolver over TCP (RFC 7766) for the whole answer, so the guest
//! gets what it reconnected for. One short connection per query, at most
//! [`MAX_UPSTREAM_TCP`] at once; the query's upstream deadline bounds it.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// Queries asked over TCP at once, at most (beyond, the guest gets the
/// truncated answer).
pub const MAX_UPSTREAM_TCP: usize = 8;
/// Bytes read per connection per call (an answer is at most 64 KiB).
const READ_CHUNK: usize = 4096;

/// One query on its way over TCP.
pub(super) struct UpstreamTcp {
    stream: TcpStream,
    /// The length-prefixed query not yet written.
    out: Vec<u8>,
    /// What came back so far (length prefix included).
    got: Vec<u8>,
}

/// What a connection has to say.
pub(super) enum Progress {
    /// Nothing whole yet.
    Waiting,
    /// The whole answer (without its length).
    Answer(Vec<u8>),
    /// Closed or failed before a whole answer.
    Failed,
}

impl UpstreamTcp {
    /// Connects to `resolver` for `query`, registered under `token`.
    pub fn start(
        resolver: SocketAddr,
        query: &[u8],
        registry: &Registry,
        token: Token,
    ) -> io::Result<Self> {
        let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long"))?;
        let mut stream = TcpStream::connect(resolver)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(query);
        Ok(UpstreamTcp {
            stream,
            out,
            got: Vec::new(),
        })
    }

    /// Writes what it can, reads what came (until the socket would block:
    /// its events are edge-triggered).
    pub fn advance(&mut self) -> Progress {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Progress::Failed,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Not connected yet reads as WouldBlock on some paths,
                // NotConnected on others: wait for the writable event.
                Err(e) if e.kind() == ErrorKind::NotConnected => return Progress::Waiting,
                Err(_) => return Progress::Failed,
            }
        }
        let mut chunk = [0; READ_CHUNK];
        loop {
            if let Some(answer) = self.whole() {
                return Progress::Answer(answer);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Progress::Failed,
                Ok(n) => self.got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return Progress::Waiting,
                Err(_) => return Progress::Failed,
            }
        }
    }

    /// The first whole message read, if there is one (each read adds at
    /// most a chunk past it, so `got` stays within one answer and a
    /// chunk).
    fn whole(&self) -> Option<Vec<u8>> {
        let [a, b, rest @ ..] = self.got.as_slice() else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*a, *b]));
        rest.get(..len).map(<[u8]>::to_vec)
    }

    /// Takes the connection out of the registry (before it is dropped).
    pub fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}
