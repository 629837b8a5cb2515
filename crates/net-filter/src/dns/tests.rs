#![allow(clippy::unwrap_used)]

use std::net::UdpSocket as StdUdpSocket;
use std::sync::{Arc, Mutex};

use mio::{Events, Poll, Token};
use simple_dns::rdata::{OPTCode, A, CNAME, OPT};
use simple_dns::{Name, Question, ResourceRecord};

use super::*;

const GUEST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 40000);
const GUEST_ID: u16 = 0x1234;
const TOKEN: Token = Token(7);

/// What the test resolver puts in an answer.
enum Rec {
    A(&'static str, [u8; 4], u32),
    Cname(&'static str, &'static str),
}

/// A real UDP resolver on 127.0.0.1, driven by the test.
struct TestResolver {
    socket: StdUdpSocket,
}

impl TestResolver {
    fn new() -> Self {
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        TestResolver { socket }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// The next query (waiting up to 2 s) and where it came from.
    fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0; 1500];
        let (len, from) = self.socket.recv_from(&mut buf).unwrap();
        (buf[..len].to_vec(), from)
    }

    /// How many queries wait, taking them (loopback delivers at once).
    fn drain(&self) -> usize {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0; 1500];
        let count = std::iter::from_fn(|| self.socket.recv_from(&mut buf).ok()).count();
        self.socket.set_nonblocking(false).unwrap();
        count
    }

    /// Answers the next query with `records`; returns the query.
    fn serve(&self, records: &[Rec]) -> Vec<u8> {
        let (query, from) = self.recv();
        self.socket
            .send_to(&response(&query, records), from)
            .unwrap();
        query
    }
}

/// The answer to `query` carrying `records`.
fn response(query: &[u8], records: &[Rec]) -> Vec<u8> {
    let mut reply = Packet::parse(query).unwrap().into_reply();
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    for record in records {
        let (name, rdata) = match record {
            Rec::A(name, ip, _) => (name, RData::A(A::from(Ipv4Addr::from(*ip)))),
            Rec::Cname(name, target) => (name, RData::CNAME(CNAME(Name::new_unchecked(target)))),
        };
        let ttl = match record {
            Rec::A(_, _, ttl) => *ttl,
            Rec::Cname(..) => 300,
        };
        reply.answers.push(ResourceRecord::new(
            Name::new_unchecked(name),
            CLASS::IN,
            ttl,
            rdata,
        ));
    }
    reply.build_bytes_vec().unwrap()
}

fn guest_query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
    let mut query = Packet::new_query(id);
    query.set_flags(PacketFlag::RECURSION_DESIRED);
    let qname = Name::new_unchecked(name);
    query
        .questions
        .push(Question::new(qname, qtype.into(), CLASS::IN.into(), false));
    query.build_bytes_vec().unwrap()
}

fn filtered(domains: &[&str]) -> Policy {
    let mut policy = Policy::new(Mode::Filtered);
    for domain in domains {
        policy.allow(domain).unwrap();
    }
    policy
}

/// A server forwarding to a test resolver, with its poll and audit log.
struct Rig {
    poll: Poll,
    server: DnsServer,
    resolver: TestResolver,
    audit: Audit,
    events: Arc<Mutex<Vec<AuditEvent>>>,
    now: Instant,
}

impl Rig {
    fn new() -> Self {
        let poll = Poll::new().unwrap();
        let resolver = TestResolver::new();
        let server = DnsServer::new(vec![resolver.addr()], poll.registry(), TOKEN).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let audit = Audit::callback(move |e| seen.lock().unwrap().push(e.clone()));
        let now = Instant::now();
        Rig {
            poll,
            server,
            resolver,
            audit,
            events,
            now,
        }
    }

    fn ask(&mut self, policy: &Policy, name: &str, qtype: TYPE) -> Option<Vec<u8>> {
        let query = guest_query(GUEST_ID, name, qtype);
        self.server
            .query(self.now, policy, GUEST, &query, &self.audit)
    }

    /// Waits for the upstream socket's readiness and reads it.
    fn upstream(&mut self) -> Vec<(Client, Vec<u8>)> {
        let mut events = Events::with_capacity(4);
        self.poll
            .poll(&mut events, Some(Duration::from_secs(2)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == TOKEN && e.is_readable()));
        self.server.upstream_ready(self.now)
    }

    fn audited(&self) -> Vec<(Verdict, String, Option<String>)> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .map(|e| (e.verdict, e.reason.clone(), e.name.clone()))
            .collect()
    }
}

/// rcode, id and A addresses of a reply; checks it is a reply with RA
/// set echoing exactly one question.
fn read_reply(bytes: &[u8]) -> (RCODE, u16, Vec<Ipv4Addr>) {
    let reply = Packet::parse(bytes).unwrap();
    assert!(reply.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_AVAILABLE));
    assert_eq!(reply.questions.len(), 1);
    let addrs = reply.answers.iter().filter_map(|r| match &r.rdata {
        RData::A(a) => Some(Ipv4Addr::from(a.address)),
        _ => None,
    });
    (reply.rcode(), reply.id(), addrs.collect())
}

#[test]
fn allowed_names_go_upstream_under_a_fresh_id_and_come_back_under_the_guests() {
    let mut rig = Rig::new();
    let policy = filtered(&["github.com"]);
    let mut upstream_ids = Vec::new();
    for (i, name) in ["api.github.com", "github.com", "codeload.github.com"]
        .iter()
        .enumerate()
    {
        let ip = [140, 82, 112, i as u8 + 1];
        assert_eq!(rig.ask(&policy, name, TYPE::A), None);
        let query = rig.resolver.serve(&[Rec::A(name, ip, 300)]);
        upstream_ids.push(Packet::parse(&query).unwrap().id());
        let replies = rig.upstream();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, Client::Udp(GUEST));
        assert_eq!(
            read_reply(&replies[0].1),
            (RCODE::NoError, GUEST_ID, vec![ip.into()])
        );
        assert_eq!(rig.server.name_for(ip.into(), rig.now), Some(*name));
    }
    assert!(
        upstream_ids.iter().any(|id| *id != GUEST_ID),
        "{upstream_ids:?}"
    );
    assert_eq!(rig.server.next_deadline(), None);
    let audited = rig.audited();
    assert_eq!(audited.len(), 3);
    assert_eq!(
        audited[0],
        (
            Verdict::Allow,
            "allowlisted".into(),
            Some("api.github.com".into())
        )
    );
}

#[test]
fn denied_names_get_nxdomain_locally_and_never_reach_upstream() {
    let mut rig = Rig::new();
    let policy = filtered(&["github.com"]);
    for (name, qtype) in [
        ("evilgithub.com", TYPE::A),
        ("github.com.evil.net", TYPE::AAAA),
        ("x.test", TYPE::TXT),
    ] {
        let reply = rig.ask(&policy, name, qtype).unwrap();
        assert_eq!(read_reply(&reply), (RCODE::NameError, GUEST_ID, vec![]));
    }
    // Names the policy cannot judge are denied alike.
    let root = rig.ask(&policy, "", TYPE::NS).unwrap();
    assert_eq!(read_reply(&root).0, RCODE::NameError);
    assert_eq!(rig.resolver.drain(), 0);
    let audited = rig.audited();
    assert_eq!(audited.len(), 4);
    assert_eq!(
        audited[0],
        (
            Verdict::Deny,
            "name not allowed".into(),
            Some("evilgithub.com".into())
        )
    );
    assert_eq!(audited[3].1, "invalid name");

    // On the label boundary: a name below an allowed domain goes upstream.
    assert_eq!(rig.ask(&policy, "API.GitHub.com.", TYPE::A), None);
    assert_eq!(rig.resolver.drain(), 1);
}

/// The address tests pin names to (TEST-NET-1: no loopback alias).
const PIN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

#[test]
fn a_pin_to_the_host_loopback_is_answered_with_its_alias() {
    let mut rig = Rig::new();
    let mut policy = Policy::new(Mode::Filtered);
    policy.pin("api.test", Ipv4Addr::LOCALHOST).unwrap();
    let reply = rig.ask(&policy, "api.test", TYPE::A).unwrap();
    let alias = Ipv4Addr::new(198, 18, 0, 1);
    assert_eq!(read_reply(&reply), (RCODE::NoError, GUEST_ID, vec![alias]));
    assert_eq!(rig.server.name_for(alias, rig.now), Some("api.test"));
    assert_eq!(rig.server.name_for(Ipv4Addr::LOCALHOST, rig.now), None);
    assert_eq!(rig.resolver.drain(), 0);
}

#[test]
fn pinned_names_and_aaaa_are_answered_locally() {
    let mut rig = Rig::new();
    let mut policy = Policy::new(Mode::Open);
    policy.pin("api.test", PIN).unwrap();
    let reply = rig.ask(&policy, "Api.Test", TYPE::A).unwrap();
    assert_eq!(read_reply(&reply), (RCODE::NoError, GUEST_ID, vec![PIN]));
    assert_eq!(Packet::parse(&reply).unwrap().answers[0].ttl, 60);
    assert_eq!(rig.server.name_for(PIN, rig.now), Some("api.test"));
    for name in ["api.test", "example.com"] {
        let reply = rig.ask(&policy, name, TYPE::AAAA).unwrap();
        assert_eq!(read_reply(&reply), (RCODE::NoError, GUEST_ID, vec![]));
    }
    assert_eq!(rig.resolver.drain(), 0);
}

#[test]
fn off_mode_answers_nothing_and_open_mode_forwards_anything() {
    let mut rig = Rig::new();
    let off = Policy::new(Mode::Off);
    assert_eq!(rig.ask(&off, "example.com", TYPE::A), None);
    assert_eq!(rig.resolver.drain(), 0);
    assert!(rig.audited().is_empty());

    let open = Policy::new(Mode::Open);
    assert_eq!(rig.ask(&open, "anything.example", TYPE::A), None);
    assert_eq!(rig.ask(&open, "mail.example", TYPE::MX), None);
    assert_eq!(rig.resolver.drain(), 2);
    assert_eq!(rig.audited()[0].1, "open mode");
}

#[test]
fn queries_upstream_does_not_answer_get_servfail_at_the_deadline() {
    let mut rig = Rig::new();
    let policy = Policy::new(Mode::Open);
    assert_eq!(rig.ask(&policy, "slow.example", TYPE::A), None);
    rig.resolver.recv();
    let deadline = rig.now + UPSTREAM_TIMEOUT;
    assert_eq!(rig.server.next_deadline(), Some(deadline));
    assert!(rig
        .server
        .expire(deadline - Duration::from_millis(1))
        .is_empty());
    let expired = rig.server.expire(deadline);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, Client::Udp(GUEST));
    assert_eq!(
        read_reply(&expired[0].1),
        (RCODE::ServerFailure, GUEST_ID, vec![])
    );
    assert_eq!(rig.server.next_deadline(), None);
}

#[test]
fn addresses_behind_cnames_are_recorded_under_the_name_asked() {
    let mut rig = Rig::new();
    let policy = filtered(&["github.com"]);
    assert_eq!(rig.ask(&policy, "www.github.com", TYPE::A), None);
    rig.resolver.serve(&[
        Rec::Cname("www.github.com", "github.map.fastly.net"),
        Rec::A("github.map.fastly.net", [151, 101, 1, 1], 5),
    ]);
    assert_eq!(rig.upstream().len(), 1);
    let ip = Ipv4Addr::new(151, 101, 1, 1);
    // A 5 s TTL is remembered for a minute.
    assert_eq!(
        rig.server.name_for(ip, rig.now + Duration::from_secs(59)),
        Some("www.github.com")
    );
    assert_eq!(
        rig.server.name_for(ip, rig.now + Duration::from_secs(61)),
        None
    );
    assert_eq!(
        rig.server.name_for(Ipv4Addr::new(151, 101, 1, 2), rig.now),
        None
    );
}

#[test]
fn a_policy_change_forgets_the_names_it_denies() {
    let mut rig = Rig::new();
    let mut policy = filtered(&["github.com", "crates.io"]);
    policy.pin("api.test", PIN).unwrap();
    for (name, ip) in [
        ("api.github.com", [140, 82, 112, 5]),
        ("static.crates.io", [140, 82, 112, 5]),
    ] {
        assert_eq!(rig.ask(&policy, name, TYPE::A), None);
        rig.resolver.serve(&[Rec::A(name, ip, 300)]);
        assert_eq!(rig.upstream().len(), 1);
    }
    rig.ask(&policy, "api.test", TYPE::A).unwrap();
    let shared = Ipv4Addr::new(140, 82, 112, 5);

    policy.deny("crates.io").unwrap();
    rig.server.retain_allowed(&policy);
    assert_eq!(rig.server.name_for(shared, rig.now), Some("api.github.com"));
    assert_eq!(rig.server.name_for(PIN, rig.now), Some("api.test"));

    policy.deny("github.com").unwrap();
    policy
        .pin("api.test", Ipv4Addr::new(192, 0, 2, 11))
        .unwrap();
    rig.server.retain_allowed(&policy);
    assert_eq!(rig.server.name_for(shared, rig.now), None);
    assert_eq!(rig.server.name_for(PIN, rig.now), None);
}

#[test]
fn a_public_name_resolving_to_a_pinned_address_does_not_hide_the_pin() {
    let mut rig = Rig::new();
    let mut policy = Policy::new(Mode::Open);
    policy.pin("api.test", PIN).unwrap();
    rig.ask(&policy, "api.test", TYPE::A).unwrap();
    assert_eq!(rig.ask(&policy, "localhost.example", TYPE::A), None);
    rig.resolver
        .serve(&[Rec::A("localhost.example", [192, 0, 2, 10], 3600)]);
    assert_eq!(rig.upstream().len(), 1);
    let later = rig.now + Duration::from_secs(30);
    assert_eq!(rig.server.name_for(PIN, later), Some("api.test"));
    // Unpinned, the pin's entry goes; the public name stays.
    policy.hosts.clear();
    rig.server.retain_allowed(&policy);
    assert_eq!(rig.server.name_for(PIN, later), Some("localhost.example"));
}

#[test]
fn answers_from_elsewhere_or_to_other_questions_are_dropped() {
    let mut rig = Rig::new();
    let policy = Policy::new(Mode::Open);
    assert_eq!(rig.ask(&policy, "a.example", TYPE::A), None);
    let (query, server_addr) = rig.resolver.recv();

    let spoofer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let forged = response(&query, &[Rec::A("a.example", [6, 6, 6, 6], 300)]);
    spoofer.send_to(&forged, server_addr).unwrap();
    assert!(rig.upstream().is_empty());

    let other = guest_query(Packet::parse(&query).unwrap().id(), "b.example", TYPE::A);
    let wrong = response(&other, &[Rec::A("b.example", [6, 6, 6, 6], 300)]);
    rig.resolver.socket.send_to(&wrong, server_addr).unwrap();
    assert!(rig.upstream().is_empty());
    assert_eq!(
        rig.server.name_for(Ipv4Addr::new(6, 6, 6, 6), rig.now),
        None
    );

    let right = response(&query, &[Rec::A("a.example", [1, 2, 3, 4], 300)]);
    rig.resolver.socket.send_to(&right, server_addr).unwrap();
    assert_eq!(rig.upstream().len(), 1);
}

#[test]
fn odd_queries_get_formerr_notimp_servfail_or_nothing() {
    let mut rig = Rig::new();
    let policy = Policy::new(Mode::Open);
    let ask =
        |rig: &mut Rig, bytes: &[u8]| rig.server.query(rig.now, &policy, GUEST, bytes, &rig.audit);

    let header = |reply: Option<Vec<u8>>| {
        let reply = reply.unwrap();
        let reply = Packet::parse(&reply).unwrap();
        (reply.rcode(), reply.id(), reply.questions.len())
    };
    let query = guest_query(1, "a.example", TYPE::A);
    let mut two = Packet::parse(&query).unwrap();
    two.questions.push(two.questions[0].clone());
    let reply = ask(&mut rig, &two.build_bytes_vec().unwrap());
    assert_eq!(header(reply), (RCODE::FormatError, 1, 0));

    let mut update = Packet::parse(&query).unwrap();
    *update.opcode_mut() = OPCODE::Update;
    let reply = ask(&mut rig, &update.build_bytes_vec().unwrap());
    assert_eq!(header(reply), (RCODE::NotImplemented, 1, 0));

    let answer = response(&guest_query(3, "a.example", TYPE::A), &[]);
    assert_eq!(ask(&mut rig, &answer), None);
    assert_eq!(rig.resolver.drain(), 0);

    // No resolver: SERVFAIL at once.
    let mut alone = DnsServer::new(Vec::new(), rig.poll.registry(), Token(8)).unwrap();
    let query = guest_query(4, "a.example", TYPE::A);
    let reply = alone
        .query(rig.now, &policy, GUEST, &query, &rig.audit)
        .unwrap();
    assert_eq!(read_reply(&reply).0, RCODE::ServerFailure);
}

#[test]
fn only_the_question_and_the_payload_size_go_upstream() {
    let mut rig = Rig::new();
    let policy = Policy::new(Mode::Open);
    let query = guest_query(5, "a.example", TYPE::A);
    let mut query = Packet::parse(&query).unwrap();
    let cookie = OPTCode {
        code: 10,
        data: b"12345678".as_slice().into(),
    };
    *query.opt_mut() = Some(OPT {
        opt_codes: vec![cookie],
        udp_packet_size: 65000,
        version: 0,
    });
    query.additional_records.push(ResourceRecord::new(
        Name::new_unchecked("leak.example"),
        CLASS::IN,
        0,
        RData::A(A::from(Ipv4Addr::new(1, 2, 3, 4))),
    ));
    let bytes = query.build_bytes_vec().unwrap();
    assert_eq!(
        rig.server
            .query(rig.now, &policy, GUEST, &bytes, &rig.audit),
        None
    );
    let (sent, _) = rig.resolver.recv();
    let sent = Packet::parse(&sent).unwrap();
    assert!(sent.has_flags(PacketFlag::RECURSION_DESIRED));
    assert!(sent.additional_records.is_empty() && sent.answers.is_empty());
    let opt = sent.opt().unwrap();
    assert!(opt.opt_codes.is_empty());
    assert_eq!(opt.udp_packet_size, 4096);

    // Local answers to an EDNS query carry an OPT record.
    let aaaa = guest_query(6, "a.example", TYPE::AAAA);
    let mut aaaa = Packet::parse(&aaaa).unwrap();
    *aaaa.opt_mut() = query.opt().cloned();
    let aaaa = aaaa.build_bytes_vec().unwrap();
    let reply = rig
        .server
        .query(rig.now, &policy, GUEST, &aaaa, &rig.audit)
        .unwrap();
    let reply = Packet::parse(&reply).unwrap();
    assert_eq!(reply.opt().unwrap().udp_packet_size, 1232);
}

#[test]
fn a_truncated_answer_keeps_its_tc_bit_and_tcp_clients_ask_for_the_largest() {
    let mut rig = Rig::new();
    let policy = Policy::new(Mode::Open);
    // Over UDP, without EDNS: upstream is asked as the guest asked.
    assert_eq!(rig.ask(&policy, "big.example", TYPE::TXT), None);
    let (query, from) = rig.resolver.recv();
    assert!(Packet::parse(&query).unwrap().opt().is_none());
    let mut truncated = response(&query, &[]);
    truncated[2] |= 0x02; // TC
    rig.resolver.socket.send_to(&truncated, from).unwrap();
    let replies = rig.upstream();
    assert_eq!(replies.len(), 1);
    let reply = Packet::parse(&replies[0].1).unwrap();
    assert!(reply.has_flags(PacketFlag::TRUNCATION), "TC kept");
    assert_eq!(reply.id(), GUEST_ID);

    // The same question over TCP: upstream is asked for 4096 bytes, and
    // the answer goes back to the connection.
    let query = guest_query(GUEST_ID, "big.example", TYPE::TXT);
    let tcp = Client::Tcp(7);
    assert_eq!(
        rig.server.query(rig.now, &policy, tcp, &query, &rig.audit),
        None
    );
    let sent = rig.resolver.serve(&[]);
    assert_eq!(
        Packet::parse(&sent).unwrap().opt().unwrap().udp_packet_size,
        4096
    );
    let replies = rig.upstream();
    assert_eq!(replies[0].0, tcp);
    // The server's own answers over TCP carry no OPT the guest did not
    // send.
    let aaaa = guest_query(GUEST_ID, "big.example", TYPE::AAAA);
    let local = rig
        .server
        .query(rig.now, &policy, tcp, &aaaa, &rig.audit)
        .unwrap();
    assert!(Packet::parse(&local).unwrap().opt().is_none());
    // A connection that went away takes its pending queries along.
    assert_eq!(
        rig.server.query(rig.now, &policy, tcp, &query, &rig.audit),
        None
    );
    rig.server.forget_client(tcp);
    assert!(rig.server.next_deadline().is_none());
}

#[test]
fn a_truncated_answer_for_a_tcp_client_is_asked_again_over_tcp() {
    use std::io::{Read, Write};
    let mut rig = Rig::new();
    // The resolver's TCP side, on its UDP port.
    let listener = std::net::TcpListener::bind(rig.resolver.addr()).unwrap();
    let policy = Policy::new(Mode::Open);
    let client = Client::Tcp(3);
    let query = guest_query(GUEST_ID, "big.example", TYPE::A);
    assert_eq!(
        rig.server
            .query(rig.now, &policy, client, &query, &rig.audit),
        None
    );
    let (sent, from) = rig.resolver.recv();
    let mut truncated = response(&sent, &[]);
    truncated[2] |= 0x02; // TC
    rig.resolver.socket.send_to(&truncated, from).unwrap();
    let tcp_side = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut len = [0; 2];
        conn.read_exact(&mut len).unwrap();
        let mut asked = vec![0; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut asked).unwrap();
        let answer = response(&asked, &[Rec::A("big.example", [93, 184, 215, 50], 300)]);
        conn.write_all(&(answer.len() as u16).to_be_bytes())
            .unwrap();
        conn.write_all(&answer).unwrap();
        asked
    });
    let mut replies = Vec::new();
    let mut events = Events::with_capacity(8);
    for _ in 0..50 {
        rig.poll
            .poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        replies.extend(rig.server.upstream_ready(rig.now));
        if !replies.is_empty() {
            break;
        }
    }
    let asked_over_tcp = tcp_side.join().unwrap();
    // The same query (question, id, payload size) as the datagram.
    assert_eq!(asked_over_tcp, sent);
    assert_eq!(replies.len(), 1, "one answer, the whole one");
    assert_eq!(replies[0].0, client);
    let reply = Packet::parse(&replies[0].1).unwrap();
    assert!(!reply.has_flags(PacketFlag::TRUNCATION));
    assert_eq!(
        read_reply(&replies[0].1),
        (
            RCODE::NoError,
            GUEST_ID,
            vec![Ipv4Addr::new(93, 184, 215, 50)]
        )
    );
    assert!(rig
        .server
        .handed_out_for(Ipv4Addr::new(93, 184, 215, 50), "big.example", rig.now));
    // Nothing is left waiting.
    assert!(rig.server.next_deadline().is_none());
}

#[test]
fn a_full_pending_table_answers_servfail() {
    let mut rig = Rig::new();
    let policy = Policy::new(Mode::Open);
    for i in 0..MAX_PENDING {
        let query = guest_query(i as u16, &format!("n{i}.example"), TYPE::A);
        assert_eq!(
            rig.server
                .query(rig.now, &policy, GUEST, &query, &rig.audit),
            None
        );
    }
    assert_eq!(rig.server.busy(), 0);
    let reply = rig.ask(&policy, "one-more.example", TYPE::A).unwrap();
    assert_eq!(read_reply(&reply).0, RCODE::ServerFailure);
    // Counted for `agentvm status`.
    assert_eq!(rig.server.busy(), 1);
    assert_eq!(
        rig.server.expire(rig.now + UPSTREAM_TIMEOUT).len(),
        MAX_PENDING
    );
}

#[test]
fn resolv_conf_nameservers_become_port_53_addresses() {
    let text = "# generated\nnameserver 127.0.0.53\n  nameserver\t2001:db8::1 # v6\n\
                ;nameserver 9.9.9.9\n#nameserver 8.8.8.8\nsearch lan\noptions edns0\n\
                nameserver fe80::1%eth0\nnameserver bogus\nnameserver\n";
    let expected: Vec<SocketAddr> = vec![
        "127.0.0.53:53".parse().unwrap(),
        "[2001:db8::1]:53".parse().unwrap(),
    ];
    assert_eq!(resolvers_from(text), expected);
    assert!(resolvers_from("").is_empty());
}

/// xorshift64: pseudo-random bytes without a dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn malformed_messages_never_panic() {
    let mut rig = Rig::new();
    let policies = [filtered(&["example.com"]), Policy::new(Mode::Open)];
    let valid = guest_query(9, "www.example.com", TYPE::A);
    let ask = |rig: &mut Rig, policy, bytes: &[u8]| {
        rig.server.query(rig.now, policy, GUEST, bytes, &rig.audit)
    };
    for len in 0..valid.len() {
        assert_eq!(ask(&mut rig, &policies[1], &valid[..len]), None, "{len}");
    }
    let mut state = 0x9e37_79b9_7f4a_7c15;
    for i in 0..4000 {
        let mut bytes = if i % 2 == 0 {
            let len = xorshift(&mut state) as usize % 300;
            (0..len).map(|_| xorshift(&mut state) as u8).collect()
        } else {
            valid.clone()
        };
        for _ in 0..1 + i % 4 {
            if !bytes.is_empty() {
                let at = xorshift(&mut state) as usize % bytes.len();
                bytes[at] = xorshift(&mut state) as u8;
            }
        }
        ask(&mut rig, &policies[i % 2], &bytes);
    }

    // Upstream: mangled answers to a real pending query, from the resolver.
    rig.resolver.drain();
    assert_eq!(ask(&mut rig, &policies[1], &valid), None);
    let (query, server_addr) = rig.resolver.recv();
    let good = response(
        &query,
        &[Rec::A("www.example.com", [93, 184, 216, 34], 300)],
    );
    for i in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..1 + i % 4 {
            let at = 2 + xorshift(&mut state) as usize % (bytes.len() - 2);
            bytes[at] = xorshift(&mut state) as u8;
        }
        bytes.truncate(xorshift(&mut state) as usize % (bytes.len() + 1));
        rig.resolver.socket.send_to(&bytes, server_addr).unwrap();
        if i % 64 == 63 {
            rig.server.upstream_ready(rig.now);
        }
    }
    rig.server.upstream_ready(rig.now);
    rig.server.expire(rig.now + UPSTREAM_TIMEOUT);
}
