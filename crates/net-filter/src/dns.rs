//! The DNS server at 10.0.2.3 (placeholder while it is written; the
//! interface below is final).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use crate::{Audit, Policy};

/// Errors starting the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The upstream socket could not be created or registered.
    #[error("Cannot open the DNS server's upstream socket")]
    Socket(#[source] std::io::Error),
}

/// The stack's DNS server: answers guest queries locally or forwards them
/// upstream, and remembers which addresses it handed out for which names.
pub struct DnsServer {
    _resolvers: Vec<SocketAddr>,
}

impl DnsServer {
    /// A server forwarding to `resolvers`, its upstream socket registered
    /// in `registry` under `token`.
    pub fn new(
        resolvers: Vec<SocketAddr>,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> Result<Self, DnsError> {
        let _ = (registry, token);
        Ok(DnsServer {
            _resolvers: resolvers,
        })
    }

    /// A query (UDP payload) the guest sent from `from`; returns the reply
    /// payload when it is answered locally, `None` when it went upstream
    /// (or was malformed and dropped).
    pub fn query(
        &mut self,
        now: Instant,
        policy: &Policy,
        from: SocketAddrV4,
        payload: &[u8],
        audit: &Audit,
    ) -> Option<Vec<u8>> {
        let _ = (now, policy, from, payload, audit);
        None
    }

    /// Reads what upstream answered: (guest endpoint, reply payload) pairs.
    pub fn upstream_ready(&mut self, now: Instant) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let _ = now;
        Vec::new()
    }

    /// Queries upstream never answered in time, answered SERVFAIL now.
    pub fn expire(&mut self, now: Instant) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let _ = now;
        Vec::new()
    }

    /// When [`DnsServer::expire`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// The allowed name the server handed `ip` out for (unexpired), if any.
    pub fn name_for(&self, ip: Ipv4Addr, now: Instant) -> Option<&str> {
        let _ = (ip, now);
        None
    }

    /// Drops handed-out addresses whose names `policy` no longer allows.
    pub fn retain_allowed(&mut self, policy: &Policy) {
        let _ = policy;
    }
}

/// The `nameserver` lines of a resolv.conf, as port-53 socket addresses.
pub fn resolvers_from(resolv_conf: &str) -> Vec<SocketAddr> {
    let _ = resolv_conf;
    Vec::new()
}
