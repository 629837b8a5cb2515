//! Host→guest port forwards: one listening host socket per forward of the
//! policy, opened and closed as the policy changes. What they accept counts
//! against the stack's flow cap and memory budget like the guest's own
//! connections ([`crate::tcp`]); a connection past them is closed at once,
//! so a local process opening connections in a loop holds no fds of ours.

use std::io;
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use tracing::warn;

use crate::policy::Forward;

/// Connections accepted per listener and event, at most.
const BURST: usize = 32;

struct Listener {
    forward: Forward,
    socket: TcpListener,
    token: Token,
}

/// The listening sockets of a stack's forwards.
#[derive(Default)]
pub struct Forwards {
    listeners: Vec<Listener>,
}

impl Forwards {
    /// Opens listeners for forwards new in `wanted` and closes those no
    /// longer in it. A forward whose port cannot be bound is reported and
    /// skipped (the rest still work).
    pub fn sync(
        &mut self,
        wanted: &[Forward],
        registry: &Registry,
        mut token: impl FnMut() -> Token,
    ) -> Vec<(Forward, io::Error)> {
        self.listeners.retain_mut(|l| {
            let keep = wanted.contains(&l.forward);
            if !keep {
                let _ = registry.deregister(&mut l.socket);
            }
            keep
        });
        let mut failed = Vec::new();
        for forward in wanted {
            if self.listeners.iter().any(|l| l.forward == *forward) {
                continue;
            }
            let token = token();
            let opened = TcpListener::bind(SocketAddr::V4(forward.host)).and_then(|mut socket| {
                registry.register(&mut socket, token, Interest::READABLE)?;
                Ok(socket)
            });
            match opened {
                Ok(socket) => self.listeners.push(Listener {
                    forward: *forward,
                    socket,
                    token,
                }),
                Err(e) => failed.push((*forward, e)),
            }
        }
        failed
    }

    /// Whether `token` is one of the listeners.
    pub fn owns(&self, token: Token) -> bool {
        self.listeners.iter().any(|l| l.token == token)
    }

    /// Accepts what waits on the listener of `token`: (connection, guest
    /// port) pairs. `more` is set when the burst bound left some behind.
    pub fn accept(&mut self, token: Token, more: &mut bool) -> Vec<(TcpStream, u16)> {
        let mut out = Vec::new();
        let Some(l) = self.listeners.iter().find(|l| l.token == token) else {
            return out;
        };
        for _ in 0..BURST {
            match l.socket.accept() {
                Ok((stream, _)) => out.push((stream, l.forward.guest_port)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("net: forward {:?}: accept failed: {e}", l.forward.host);
                    return out;
                }
            }
        }
        *more = true;
        out
    }

    /// The forwards listening now.
    pub fn active(&self) -> Vec<Forward> {
        self.listeners.iter().map(|l| l.forward).collect()
    }
}
