//! The stack's DNS server: guest queries (arbitrary UDP payloads) and the
//! answers a hostile upstream sends back to the queries it forwarded, in an
//! arbitrary order, under each policy mode. Forwarded queries really go to
//! a resolver socket on loopback that the target plays.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agentvm_net::dns::DnsServer;
use agentvm_net::{Audit, Mode, Policy};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

/// Steps per input at most.
const MAX_STEPS: usize = 64;
/// DNS header length.
const HEADER: usize = 12;

#[derive(Debug, Arbitrary)]
enum Step {
    /// A datagram from the guest to 10.0.2.3:53.
    Query(Vec<u8>),
    /// An answer from the resolver to the last query it got, carrying that
    /// query's id and (if `echo_question`) its question, then `tail`.
    Answer {
        echo_question: bool,
        flags: u16,
        counts: [u16; 3],
        tail: Vec<u8>,
    },
    /// An answer with a guessed id: `tail` as sent.
    Spoof(Vec<u8>),
    /// Time passes: pending queries expire.
    Wait(u8),
}

fn resolver() -> &'static UdpSocket {
    static RESOLVER: OnceLock<UdpSocket> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        let s = UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP socket");
        s.set_nonblocking(true).expect("a non-blocking socket");
        s
    })
}

fn policy(mode: u8) -> Policy {
    let mut policy = Policy::new(match mode % 3 {
        0 => Mode::Filtered,
        1 => Mode::Open,
        _ => Mode::Off,
    });
    for domain in ["example.com", "test", "a.b.c.d.e"] {
        policy.allow(domain).expect("a valid name");
    }
    policy
        .pin("pinned.test", Ipv4Addr::new(192, 0, 2, 7))
        .expect("a valid pin");
    policy
}

/// Takes what the server sent upstream; the last query and where from.
fn drain(resolver: &UdpSocket, last: &mut Option<(Vec<u8>, SocketAddr)>) {
    let mut buf = [0u8; 4096];
    while let Ok((len, from)) = resolver.recv_from(&mut buf) {
        *last = Some((buf[..len].to_vec(), from));
    }
}

/// The question section of `query` (one question), if it has one.
fn question(query: &[u8]) -> Option<&[u8]> {
    let mut at = HEADER;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        at += len;
    }
    query.get(HEADER..at + 4)
}

fuzz_target!(|input: (u8, Vec<Step>)| {
    let (mode, steps) = input;
    let resolver = resolver();
    let mut last = None;
    drain(resolver, &mut last);
    last = None;
    let Ok(poll) = mio::Poll::new() else {
        return;
    };
    let upstream = resolver.local_addr().expect("a bound socket");
    let Ok(mut server) = DnsServer::new(vec![upstream], poll.registry(), mio::Token(0)) else {
        return;
    };
    let policy = policy(mode);
    let audit = Audit::default();
    let guest = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 40000);
    let mut now = Instant::now();
    for step in steps.into_iter().take(MAX_STEPS) {
        match step {
            Step::Query(payload) => {
                let _ = server.query(now, &policy, guest, &payload, &audit);
                drain(resolver, &mut last);
            }
            Step::Answer {
                echo_question,
                flags,
                counts,
                tail,
            } => {
                let Some((query, server_addr)) = &last else {
                    continue;
                };
                let mut answer = query.get(..2).unwrap_or_default().to_vec();
                answer.extend_from_slice(&(flags | 0x8000).to_be_bytes());
                let qd = u16::from(echo_question);
                for count in [qd, counts[0], counts[1], counts[2]] {
                    answer.extend_from_slice(&count.to_be_bytes());
                }
                if echo_question {
                    answer.extend_from_slice(question(query).unwrap_or_default());
                }
                answer.extend_from_slice(&tail);
                let _ = resolver.send_to(&answer, server_addr);
                let _ = server.upstream_ready(now);
            }
            Step::Spoof(bytes) => {
                if let Some((_, server_addr)) = &last {
                    let _ = resolver.send_to(&bytes, server_addr);
                    let _ = server.upstream_ready(now);
                }
            }
            Step::Wait(secs) => {
                now += Duration::from_secs(u64::from(secs));
                let _ = server.expire(now);
            }
        }
        if let Some(ip) = [Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(1, 2, 3, 4)]
            .into_iter()
            .find(|ip| server.name_for(*ip, now).is_some())
        {
            let name = server.name_for(ip, now).unwrap_or_default();
            assert!(policy.allows_name(name) || policy.pinned(name).is_some());
        }
    }
});
