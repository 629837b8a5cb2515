//! Guest UDP flows (other than DHCP and DNS to the stack): each
//! (guest port, remote) pair gets a connected host socket of its own,
//! dropped after a while without traffic. The number of flows is bounded;
//! the least recently used goes first.

use std::collections::HashMap;
use std::io;

use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use crate::tcp::FlowKey;

/// A flow without traffic for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(60);
/// Flows at most.
pub const MAX_FLOWS: usize = 256;
/// Datagrams read from one host socket per event, at most (fairness).
const BURST: usize = 64;

struct Flow {
    socket: UdpSocket,
    token: Token,
    last: Instant,
    /// The name the policy allowed the flow for.
    name: Option<String>,
}

/// Every UDP flow of a stack.
#[derive(Default)]
pub struct UdpFlows {
    flows: HashMap<FlowKey, Flow>,
    by_token: HashMap<Token, FlowKey>,
    evicted: u64,
}

impl UdpFlows {
    /// Number of flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// How many flows were dropped to make room for a new one.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Whether `key` has a flow.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.flows.contains_key(key)
    }

    /// Sends `payload` on the flow of `key`, opening it (with `token`,
    /// allowed for `name`) when new.
    pub fn send(
        &mut self,
        key: FlowKey,
        payload: &[u8],
        name: Option<String>,
        registry: &Registry,
        token: impl FnOnce() -> Token,
        now: Instant,
    ) -> io::Result<()> {
        if !self.flows.contains_key(&key) {
            if self.flows.len() >= MAX_FLOWS {
                self.evict_oldest(registry);
                self.evicted += 1;
            }
            let mut socket = UdpSocket::bind("0.0.0.0:0".parse().map_err(io::Error::other)?)?;
            socket.connect(crate::tcp::host_address(key.remote))?;
            let token = token();
            registry.register(&mut socket, token, Interest::READABLE)?;
            self.by_token.insert(token, key);
            self.flows.insert(
                key,
                Flow {
                    socket,
                    token,
                    last: now,
                    name,
                },
            );
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return Ok(());
        };
        flow.last = now;
        match flow.socket.send(payload) {
            Ok(_) => Ok(()),
            // An earlier ICMP error surfaces here; the datagram is lost as
            // it would be on a real network.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads what the host socket of `token` received: (flow, datagram)
    /// pairs. `more` is set when the burst bound left datagrams behind.
    pub fn receive(
        &mut self,
        token: Token,
        now: Instant,
        more: &mut bool,
    ) -> Vec<(FlowKey, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(key) = self.by_token.get(&token).copied() else {
            return out;
        };
        let Some(flow) = self.flows.get_mut(&key) else {
            return out;
        };
        let mut buf = vec![0; 65536];
        for _ in 0..BURST {
            match flow.socket.recv(&mut buf) {
                Ok(n) => {
                    flow.last = now;
                    out.push((key, buf[..n].to_vec()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock, or an ICMP error queued on the socket: done.
                Err(_) => return out,
            }
        }
        *more = true;
        out
    }

    /// Drops idle flows.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        let idle: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last) >= IDLE)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.remove(&key, registry);
        }
    }

    /// Drops every flow `keep` refuses (given the flow and the name it was
    /// allowed for).
    pub fn retain(
        &mut self,
        registry: &Registry,
        mut keep: impl FnMut(&FlowKey, Option<&str>) -> bool,
    ) {
        let gone: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(k, f)| !keep(k, f.name.as_deref()))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.remove(&key, registry);
        }
    }

    /// When the next flow goes idle.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.flows.values().map(|f| f.last + IDLE).min()
    }

    fn evict_oldest(&mut self, registry: &Registry) {
        if let Some(key) = self
            .flows
            .iter()
            .min_by_key(|(_, f)| f.last)
            .map(|(k, _)| *k)
        {
            self.remove(&key, registry);
        }
    }

    fn remove(&mut self, key: &FlowKey, registry: &Registry) {
        if let Some(mut flow) = self.flows.remove(key) {
            self.by_token.remove(&flow.token);
            let _ = registry.deregister(&mut flow.socket);
        }
    }
}
