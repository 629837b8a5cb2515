//! What the stack's tests share: a stack with a policy, DNS lookups from
//! the smoltcp guest, host-side test servers.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentvm_net::testing::Guest;
use agentvm_net::{Audit, AuditEvent, NetStack, Policy, StackConfig};
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

/// The DNS server's address as the guest sees it.
pub const DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);

/// A stack with `policy`, recording audit events, forwarding DNS to
/// `resolvers` (none: every upstream query fails over to SERVFAIL).
pub fn stack_with(policy: Policy, resolvers: Vec<std::net::SocketAddr>) -> (NetStack, Events) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let stack = NetStack::new(StackConfig {
        policy,
        audit: Audit::callback(move |e| sink.lock().unwrap().push(e.clone())),
        resolvers,
        mtu: 0,
    })
    .unwrap();
    (stack, events)
}

/// Audit events a stack recorded.
pub type Events = Arc<Mutex<Vec<AuditEvent>>>;

/// A guest with its lease.
pub fn guest(stack: &mut NetStack) -> Guest {
    let mut guest = Guest::new();
    guest
        .dhcp(stack, Duration::from_secs(5))
        .expect("DHCP lease");
    guest
}

/// What a DNS lookup got.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Answered with these addresses (maybe none).
    Answer(RCODE, Vec<Ipv4Addr>),
    /// No reply within the time.
    Silence,
}

/// Looks `name` up (type `qtype`) through the stack's DNS server.
pub fn lookup(guest: &mut Guest, stack: &mut NetStack, name: &str, qtype: TYPE) -> Lookup {
    lookup_at(guest, stack, DNS, name, qtype, Duration::from_secs(3))
}

/// Looks `name` up at `server`.
pub fn lookup_at(
    guest: &mut Guest,
    stack: &mut NetStack,
    server: SocketAddrV4,
    name: &str,
    qtype: TYPE,
    timeout: Duration,
) -> Lookup {
    let mut query = Packet::new_query(0x4242);
    query.set_flags(simple_dns::PacketFlag::RECURSION_DESIRED);
    query.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    let bytes = query.build_bytes_vec().unwrap();
    let socket = guest.udp_bind(5353);
    guest
        .udp(socket)
        .send_slice(&bytes, (*server.ip(), server.port()))
        .unwrap();
    let mut reply = None;
    guest.run_until(stack, timeout, |g, _| {
        let mut buf = vec![0; 4096];
        if let Ok((n, _)) = g.udp(socket).recv_slice(&mut buf) {
            reply = Some(buf[..n].to_vec());
        }
        reply.is_some()
    });
    guest.sockets.remove(socket);
    let Some(reply) = reply else {
        return Lookup::Silence;
    };
    let packet = Packet::parse(&reply).unwrap();
    assert_eq!(packet.id(), 0x4242);
    let addrs = packet
        .answers
        .iter()
        .filter_map(|r| match &r.rdata {
            RData::A(a) => Some(Ipv4Addr::from(a.address)),
            _ => None,
        })
        .collect();
    Lookup::Answer(packet.rcode(), addrs)
}
