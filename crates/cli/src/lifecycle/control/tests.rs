use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::time::Duration;

use agentvm_net::{Mode, Policy};

use super::protocol::{decode, encode, DecodeError, ErrorKind, MAX_REQUEST, VERSION};
use super::server::{serve, MAX_REQUESTS};
use super::*;

/// One request of every op.
fn every_request() -> Vec<Request> {
    let mut policy = Policy::new(Mode::Open);
    policy.allow("a.test").unwrap();
    policy.pin("api.test", [10, 0, 0, 1].into()).unwrap();
    policy.forwards.push("8080:80".parse().unwrap());
    vec![
        Request::Status,
        Request::Stop { grace_ms: None },
        Request::Stop {
            grace_ms: Some(2500),
        },
        Request::Stats,
        Request::Balloon { target_mib: 64 },
        Request::Reclaim,
        Request::Net,
        Request::NetAllow {
            domains: vec!["x.test".into(), "Y.test".into()],
        },
        Request::NetDeny {
            domains: vec!["x.test".into()],
        },
        Request::NetPolicy { policy },
        Request::AttachFs {
            tag: "live0".into(),
            pid: 77,
        },
        Request::DetachFs {
            tag: "live0".into(),
        },
    ]
}

fn status_reply() -> StatusReply {
    StatusReply {
        uptime_ms: 1234,
        memory_mib: 128,
        rss_kib: 40_000,
        vcpus: 2,
        pid: 4242,
        network_mode: Mode::Filtered,
        ready: true,
        limits: Limits {
            vsock_refused: 1,
            vsock_connections_max: 1024,
            net: Some(NetLimits {
                net_memory_limit_kib: 65536,
                tcp_flows_max: 4096,
                ..NetLimits::default()
            }),
        },
        boot: Some(crate::lifecycle::timings::VmmStamps {
            started_us: 1,
            ready_us: 9,
            ..Default::default()
        }),
    }
}

fn stats_reply(balloon: BalloonStatus) -> StatsReply {
    StatsReply {
        uptime_ms: 99,
        memory_mib: 128,
        rss_kib: 1,
        vcpus: 1,
        pio_exits: 7,
        mmio_exits: 8,
        balloon,
    }
}

/// The reply a VMM gives `request` when all goes well.
fn reply_to(request: &Request) -> Reply {
    let policy = Policy::new(Mode::Filtered);
    match request {
        Request::Status => Reply::Status(status_reply()),
        Request::Stop { .. } => Reply::Stop,
        Request::Stats => Reply::Stats(stats_reply(BalloonStatus::Report(BalloonStats {
            target_pages: 256,
            actual_pages: 128,
            held_pages: 128,
            reported_bytes: 1 << 20,
            guest_stats: "[]".into(),
        }))),
        Request::Balloon { target_mib } => Reply::Balloon {
            target_mib: *target_mib,
        },
        Request::Reclaim => Reply::Reclaim,
        Request::Net => Reply::Net { policy },
        Request::NetAllow { domains } => Reply::NetAllow(PolicyChange {
            policy,
            changed: domains.clone(),
        }),
        Request::NetDeny { domains } => Reply::NetDeny(PolicyChange {
            policy,
            changed: domains.clone(),
        }),
        Request::NetPolicy { policy } => Reply::NetPolicy {
            policy: policy.clone(),
        },
        Request::AttachFs { tag, .. } => Reply::AttachFs(SlotReply {
            slot: 1,
            base: 0xc000_6000,
            tag: tag.clone(),
        }),
        Request::DetachFs { tag } => Reply::DetachFs(SlotReply {
            slot: 1,
            base: 0xc000_6000,
            tag: tag.clone(),
        }),
    }
}

/// One reply of every kind.
fn every_reply() -> Vec<Reply> {
    let mut replies: Vec<Reply> = every_request().iter().map(reply_to).collect();
    replies.push(Reply::Stats(stats_reply(BalloonStatus::Unavailable(
        "no balloon driver".into(),
    ))));
    replies.push(Reply::Status(StatusReply {
        network_mode: Mode::Off,
        limits: Limits {
            net: None,
            ..status_reply().limits
        },
        ..status_reply()
    }));
    for kind in [
        ErrorKind::BadRequest,
        ErrorKind::Version,
        ErrorKind::TooManyRequests,
        ErrorKind::Failed,
    ] {
        replies.push(Reply::error(kind, "why"));
    }
    replies
}

#[test]
fn every_request_and_reply_survives_its_encoding() {
    for request in every_request() {
        let line = encode(&request).unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b"\n"));
        let text = String::from_utf8(line.clone()).unwrap();
        let head = format!("{{\"version\":{VERSION},\"op\":\"{}\"", request.op());
        assert!(text.starts_with(&head), "{text}");
        assert_eq!(decode::<Request>(&line).unwrap(), request, "{text}");
    }
    for reply in every_reply() {
        let line = encode(&reply).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.starts_with(&format!("{{\"version\":{VERSION},\"reply\":\"")),
            "{text}"
        );
        assert_eq!(decode::<Reply>(&line).unwrap(), reply, "{text}");
    }
}

#[test]
fn the_wire_format_is_as_documented() {
    let allow = Request::NetAllow {
        domains: vec!["x.test".into(), "Y.test".into()],
    };
    assert_eq!(
        encode(&allow).unwrap(),
        b"{\"version\":1,\"op\":\"net_allow\",\"domains\":[\"x.test\",\"Y.test\"]}\n"
    );
    let mut open = Policy::new(Mode::Open);
    open.forwards.push("8080:80".parse().unwrap());
    let line = String::from_utf8(encode(&Request::NetPolicy { policy: open }).unwrap()).unwrap();
    assert!(
        line.starts_with(r#"{"version":1,"op":"net_policy","policy":{"mode":"open""#),
        "{line}"
    );
    assert!(
        line.contains(r#""forwards":[{"host":"127.0.0.1:8080","guest_port":80}]"#),
        "{line}"
    );
    assert_eq!(
        encode(&Reply::error(ErrorKind::BadRequest, "bad")).unwrap(),
        b"{\"version\":1,\"reply\":\"error\",\"kind\":\"bad_request\",\"error\":\"bad\"}\n"
    );
    assert_eq!(
        encode(&Reply::Stop).unwrap(),
        b"{\"version\":1,\"reply\":\"stop\"}\n"
    );
    // Surrounding white space and any field order are fine.
    assert_eq!(
        decode::<Request>(b" {\"op\":\"balloon\",\"target_mib\":3,\"version\":1}\r\n").unwrap(),
        Request::Balloon { target_mib: 3 }
    );
}

#[test]
fn lines_of_another_version_or_none_are_told_from_broken_ones() {
    let other = |line: &[u8]| match decode::<Request>(line) {
        Err(DecodeError::OtherVersion(v)) => v,
        other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
    };
    // The untyped protocol's request and reply (what an old CLI sends,
    // what an old VMM answers a versioned request with).
    assert_eq!(other(b"{\"op\":\"status\"}"), 0);
    assert_eq!(
        other(b"{\"ok\":false,\"error\":\"bad request: unknown field `version`\"}"),
        0
    );
    // A newer peer, whatever its body looks like.
    assert_eq!(other(b"{\"version\":2,\"op\":\"status\"}"), 2);
    assert_eq!(other(b"{\"version\":7,\"hello\":[1,2,3]}"), 7);
    for line in [&b"not json"[..], b"{\"version\":1", b"", b"{} x"] {
        assert!(
            matches!(decode::<Request>(line), Err(DecodeError::NotJson(_))),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    // (A request without fields ignores any it is sent: serde's way with
    // the unit variants of a tagged enum.)
    for line in [
        &b"{\"version\":\"1\",\"op\":\"status\"}"[..],
        b"{\"version\":-1}",
        b"{\"version\":4294967296}",
        b"{\"version\":1,\"op\":\"fly\"}",
        b"{\"version\":1}",
        b"{\"version\":1,\"op\":\"balloon\"}",
        b"{\"version\":1,\"op\":\"balloon\",\"target_mib\":-1}",
        b"{\"version\":1,\"op\":\"net_allow\",\"domain\":\"x.test\"}",
        b"{\"version\":1,\"version\":1,\"op\":\"status\"}",
        b"[1,\"status\"]",
        b"42",
    ] {
        assert!(
            matches!(decode::<Request>(line), Err(DecodeError::Invalid(_))),
            "{}: {:?}",
            String::from_utf8_lossy(line),
            decode::<Request>(line)
        );
    }
}

/// Answers every request with [`reply_to`] and keeps what it was asked,
/// except `reclaim`, which fails.
#[derive(Default)]
struct Canned {
    asked: Mutex<Vec<Request>>,
}

impl Handler for Canned {
    fn handle(&self, request: Request) -> Result<Reply, String> {
        self.asked.lock().unwrap().push(request.clone());
        match request {
            Request::Reclaim => Err("no agent".into()),
            other => Ok(reply_to(&other)),
        }
    }
}

/// Writes raw lines to a server and reads its replies, decoded.
struct Raw {
    to: UnixStream,
    from: BufReader<UnixStream>,
}

impl Raw {
    fn new(stream: UnixStream) -> Raw {
        Raw {
            to: stream.try_clone().unwrap(),
            from: BufReader::new(stream),
        }
    }

    fn ask(&mut self, line: &[u8]) -> Reply {
        self.to.write_all(line).unwrap();
        let mut reply = String::new();
        self.from.read_line(&mut reply).unwrap();
        decode::<Reply>(reply.as_bytes()).unwrap()
    }

    /// The kind and message of an error reply.
    fn refused(&mut self, line: &[u8]) -> (ErrorKind, String) {
        match self.ask(line) {
            Reply::Error { kind, message } => (kind, message),
            other => panic!("not an error: {other:?}"),
        }
    }
}

#[test]
fn bad_lines_get_error_replies_and_the_connection_goes_on() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || serve_connection(b, &Canned::default()));
    let mut raw = Raw::new(a);
    assert_eq!(
        raw.ask(b"{\"version\":1,\"op\":\"status\"}\n"),
        Reply::Status(status_reply())
    );
    let (kind, why) = raw.refused(b"{not json\n");
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(why.starts_with("bad request: "), "{why}");
    let (kind, why) = raw.refused(b"{\"version\":1,\"op\":\"fly\"}\n");
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(why.contains("unknown variant `fly`"), "{why}");
    let (kind, why) = raw.refused(b"{\"version\":1,\"op\":\"net_allow\",\"domain\":\"x\"}\n");
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(why.contains("domain"), "{why}");
    assert_eq!(raw.refused(b"  \n").0, ErrorKind::BadRequest);
    assert_eq!(
        raw.refused(b"{\"version\":1,\"op\":\"reclaim\"}\n"),
        (ErrorKind::Failed, "no agent".into())
    );
    let mut long = vec![b'x'; MAX_REQUEST * 3];
    long.push(b'\n');
    let (kind, why) = raw.refused(&long);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(why.contains("longer"), "{why}");
    // Just within the limit is read whole (and is no request).
    let mut padded = b"{\"version\":1,\"op\":\"status\"}".to_vec();
    padded.resize(MAX_REQUEST - 1, b' ');
    padded.push(b'\n');
    assert_eq!(raw.ask(&padded), Reply::Status(status_reply()));
    // Bytes that are no UTF-8 get a reply too.
    assert_eq!(raw.refused(b"\xff\xfe{\n").0, ErrorKind::BadRequest);
    assert_eq!(
        raw.ask(b"{\"version\":1,\"op\":\"stop\"}\n"),
        Reply::Stop,
        "still serving"
    );
    drop(raw);
    server.join().unwrap();
}

#[test]
fn a_request_of_another_version_is_refused_with_what_to_do() {
    let (a, b) = UnixStream::pair().unwrap();
    let handler = std::sync::Arc::new(Canned::default());
    let served = handler.clone();
    let server = std::thread::spawn(move || serve_connection(b, &*served));
    let mut raw = Raw::new(a);
    for (line, theirs) in [
        (&b"{\"op\":\"stop\"}\n"[..], 0),
        (b"{\"version\":2,\"op\":\"stop\"}\n", 2),
    ] {
        let (kind, why) = raw.refused(line);
        assert_eq!(kind, ErrorKind::Version);
        assert!(
            why.contains(&format!(
                "control protocol {theirs} and the VM's agentvm speaks 1"
            )),
            "{why}"
        );
        assert!(why.contains("different agentvm version"), "{why}");
        assert!(why.contains("`agentvm down` and `agentvm up`"), "{why}");
    }
    drop(raw);
    server.join().unwrap();
    assert!(
        handler.asked.lock().unwrap().is_empty(),
        "nothing of another version reaches the handler"
    );
}

#[test]
fn a_connection_serves_a_bounded_number_of_requests() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || serve_connection(b, &Canned::default()));
    let mut raw = Raw::new(a);
    for _ in 0..MAX_REQUESTS {
        assert_eq!(raw.ask(b"{\"version\":1,\"op\":\"stop\"}\n"), Reply::Stop);
    }
    assert_eq!(
        raw.refused(b"{\"version\":1,\"op\":\"stop\"}\n").0,
        ErrorKind::TooManyRequests
    );
    server.join().unwrap();
    let mut rest = Vec::new();
    raw.from.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the refusal");
}

#[test]
fn an_idle_connection_is_closed() {
    let (a, b) = UnixStream::pair().unwrap();
    let server =
        std::thread::spawn(move || serve(b, &Canned::default(), Duration::from_millis(50)));
    let mut raw = Raw::new(a);
    // Half a request, then nothing.
    raw.to.write_all(b"{\"version\":1,").unwrap();
    server.join().unwrap();
    let mut rest = Vec::new();
    raw.from.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

/// A client on one end of a socket pair, the server on the other.
fn client_and_server(handler: std::sync::Arc<Canned>) -> (Client, std::thread::JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || serve_connection(b, &*handler));
    (Client::over(a).unwrap(), server)
}

#[test]
fn every_client_call_gets_its_typed_reply() {
    let handler = std::sync::Arc::new(Canned::default());
    let (mut vmm, server) = client_and_server(handler.clone());
    assert_eq!(vmm.status().unwrap(), status_reply());
    vmm.stop(Duration::from_millis(1500)).unwrap();
    assert!(matches!(
        vmm.stats().unwrap().balloon,
        BalloonStatus::Report(BalloonStats {
            target_pages: 256,
            ..
        })
    ));
    assert_eq!(vmm.balloon(48).unwrap(), 48);
    assert_eq!(vmm.net().unwrap(), Policy::new(Mode::Filtered));
    let change = vmm.net_allow(vec!["a.test".into()]).unwrap();
    assert_eq!(change.changed, ["a.test"]);
    let change = vmm.net_deny(vec!["b.test".into()]).unwrap();
    assert_eq!(change.changed, ["b.test"]);
    let open = Policy::new(Mode::Open);
    assert_eq!(vmm.net_policy(open.clone()).unwrap(), open);
    assert_eq!(vmm.attach_fs("live3", 9).unwrap().base, 0xc000_6000);
    assert_eq!(vmm.detach_fs("live3").unwrap().tag, "live3");
    // A failure on the VMM's side reads as before.
    let err = vmm.reclaim().unwrap_err();
    assert_eq!(format!("{err:#}"), "the VMM refused: no agent");
    drop(vmm);
    server.join().unwrap();
    assert_eq!(
        *handler.asked.lock().unwrap(),
        [
            Request::Status,
            Request::Stop {
                grace_ms: Some(1500)
            },
            Request::Stats,
            Request::Balloon { target_mib: 48 },
            Request::Net,
            Request::NetAllow {
                domains: vec!["a.test".into()]
            },
            Request::NetDeny {
                domains: vec!["b.test".into()]
            },
            Request::NetPolicy { policy: open },
            Request::AttachFs {
                tag: "live3".into(),
                pid: 9
            },
            Request::DetachFs {
                tag: "live3".into()
            },
            Request::Reclaim,
        ]
    );
}

/// A VMM that reads one request and answers with `reply`, as it is.
fn answering(reply: &'static [u8]) -> (Client, std::thread::JoinHandle<Vec<u8>>) {
    let (a, b) = UnixStream::pair().unwrap();
    let vmm = std::thread::spawn(move || {
        let mut reader = BufReader::new(b.try_clone().unwrap());
        let mut request = Vec::new();
        reader.read_until(b'\n', &mut request).unwrap();
        (&b).write_all(reply).unwrap();
        request
    });
    (Client::over(a).unwrap(), vmm)
}

#[test]
fn a_vmm_of_another_version_is_named_as_such() {
    // An old VMM refuses the versioned request in its untyped way.
    let (mut client, vmm) =
        answering(b"{\"ok\":false,\"error\":\"bad request: unknown field `version`\"}\n");
    let err = client.status().unwrap_err();
    assert_eq!(
        err.downcast_ref::<VersionMismatch>(),
        Some(&VersionMismatch { vmm: 0 })
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the running VM was started by a different agentvm version (control protocol 0, \
             this is {VERSION}); run `agentvm down` and `agentvm up`"
        )
    );
    assert_eq!(vmm.join().unwrap(), b"{\"version\":1,\"op\":\"status\"}\n");
    // A newer one answers in a shape this client does not know.
    let (mut client, vmm) = answering(b"{\"version\":9,\"reply\":\"status\",\"up\":\"long\"}\n");
    let err = client.net_allow(vec!["a.test".into()]).unwrap_err();
    assert!(err.is::<VersionMismatch>(), "{err:#}");
    assert!(err.to_string().contains("control protocol 9, this is 1"));
    vmm.join().unwrap();
}

#[test]
fn broken_and_wrong_replies_are_errors() {
    let cases: [(&'static [u8], &str); 5] = [
        (b"", "the VMM sent a reply that is not JSON"),
        (
            b"{\"version\":1,\"rep",
            "the VMM sent a reply that is not JSON",
        ),
        (
            b"{\"version\":1,\"reply\":\"dance\"}\n",
            "the VMM sent a reply this agentvm cannot read",
        ),
        (
            b"{\"version\":1,\"reply\":\"stop\"}\n",
            "the VMM answered a `status` request with another reply",
        ),
        (
            b"{\"version\":1,\"reply\":\"error\",\"kind\":\"failed\",\"error\":\"busy\"}\n",
            "the VMM refused: busy",
        ),
    ];
    for (reply, want) in cases {
        let (mut client, vmm) = answering(reply);
        let err = format!("{:#}", client.status().unwrap_err());
        assert!(err.starts_with(want), "{err}");
        vmm.join().unwrap();
    }
}

#[test]
fn answers_tells_a_live_vmm_of_any_version_from_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    assert!(!client::answers(&path), "no socket");
    let listener = UnixListener::bind(&path).unwrap();
    let vmm = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        serve_connection(conn, &Canned::default());
        // Then an old VMM.
        let (conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        (&conn)
            .write_all(b"{\"ok\":false,\"error\":\"bad request\"}\n")
            .unwrap();
        // Then one that closes without a word.
        drop(listener.accept().unwrap());
    });
    assert!(client::answers(&path));
    assert!(client::answers(&path), "another version still answers");
    assert!(!client::answers(&path), "silence is no answer");
    vmm.join().unwrap();
}

/// The VMM's network side behind a real socket, driven by [`Client`].
struct Net(crate::lifecycle::net::NetControl);

impl Handler for Net {
    fn handle(&self, request: Request) -> Result<Reply, String> {
        self.0.answer(&request)
    }
}

#[test]
fn net_requests_round_trip() {
    use agentvm_net::{NetStack, StackConfig};
    let stack = NetStack::new(StackConfig {
        policy: Policy::new(Mode::Filtered),
        ..StackConfig::default()
    })
    .unwrap();
    let handler = Net(crate::lifecycle::net::NetControl::new(Some(stack.handle())));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        for conn in listener.incoming().take(6) {
            serve_connection(conn.unwrap(), &handler);
        }
    });
    let vmm = || Client::connect(&path).unwrap();
    let change = vmm()
        .net_allow(vec!["x.test".into(), "Y.test".into()])
        .unwrap();
    assert_eq!(change.changed, ["x.test", "y.test"]);
    assert_eq!(change.policy, stack.handle().policy());
    assert_eq!(stack.handle().policy().domains, ["x.test", "y.test"]);

    let change = vmm().net_deny(vec!["x.test".into()]).unwrap();
    assert_eq!(change.changed, ["x.test"]);
    let policy = vmm().net().unwrap();
    assert_eq!(policy.domains, ["y.test"]);
    assert_eq!(policy.ports, [80, 443]);

    let mut open = Policy::new(Mode::Open);
    open.forwards.push("8080:80".parse().unwrap());
    assert_eq!(vmm().net_policy(open.clone()).unwrap(), open);
    assert_eq!(stack.handle().policy(), open);

    let err = vmm().net_allow(vec!["no spaces".into()]).unwrap_err();
    assert!(
        format!("{err:#}").contains("the VMM refused: `no spaces` is not a domain name"),
        "{err:#}"
    );
    let err = vmm().status().unwrap_err();
    assert!(
        format!("{err:#}").contains("the VMM refused: not a network request: status"),
        "{err:#}"
    );
    server.join().unwrap();
}

#[test]
fn live_mount_requests_are_checked_field_by_field() {
    // As documented.
    assert_eq!(
        decode::<Request>(br#"{"version":1,"op":"attach_fs","tag":"live0","pid":5}"#).unwrap(),
        Request::AttachFs {
            tag: "live0".into(),
            pid: 5
        }
    );
    assert_eq!(
        decode::<Request>(br#"{"version":1,"op":"detach_fs","tag":"live0"}"#).unwrap(),
        Request::DetachFs {
            tag: "live0".into()
        }
    );
    // Missing, extra, mistyped or out-of-range fields are bad requests.
    for line in [
        &br#"{"version":1,"op":"attach_fs","tag":"live0"}"#[..],
        br#"{"version":1,"op":"attach_fs","tag":"live0","pid":-1}"#,
        br#"{"version":1,"op":"attach_fs","tag":"live0","pid":4294967296}"#,
        br#"{"version":1,"op":"attach_fs","tag":5,"pid":5}"#,
        br#"{"version":1,"op":"attach_fs","tag":"t","pid":5,"dir":"/etc"}"#,
        br#"{"version":1,"op":"detach_fs"}"#,
        br#"{"version":1,"op":"detach_fs","tag":null}"#,
    ] {
        assert!(
            matches!(decode::<Request>(line), Err(DecodeError::Invalid(_))),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    // A reply with a field too many is no reply of this protocol.
    assert!(decode::<Reply>(
        br#"{"version":1,"reply":"attach_fs","slot":0,"base":1,"tag":"t","x":1}"#
    )
    .is_err());
}
