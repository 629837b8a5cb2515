#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use super::*;
use crate::peek::XorShift;
use crate::secrets::SecretValue;

const VALUE: &str = "sk-real-0123456789abcdef";
const OTHER_VALUE: &str = "ghp-real-other-value";

fn secrets() -> Arc<[Secret]> {
    vec![
        Secret {
            name: "API_KEY".into(),
            placeholder: "sk-placeholder-AAAA".into(),
            value: SecretValue::new(VALUE),
            hosts: vec!["api.test".into()],
        },
        Secret {
            name: "GH_TOKEN".into(),
            placeholder: "ghp-placeholder-BBBB".into(),
            value: SecretValue::new(OTHER_VALUE),
            hosts: vec!["gh.test".into()],
        },
    ]
    .into()
}

fn stream() -> RequestStream {
    RequestStream::new("api.test", secrets())
}

/// Pushes `input` in pieces of `step` bytes.
fn run(
    s: &mut RequestStream,
    input: &[u8],
    step: usize,
) -> (Vec<u8>, Vec<HttpEvent>, Result<(), HttpError>) {
    let (mut out, mut events) = (Vec::new(), Vec::new());
    for piece in input.chunks(step.max(1)) {
        if let Err(e) = s.push(piece, &mut out, &mut events) {
            return (out, events, Err(e));
        }
    }
    (out, events, Ok(()))
}

#[test]
fn bound_placeholders_are_replaced_in_the_head_only_and_audited() {
    let req = b"POST /v1/messages?key=sk-placeholder-AAAA HTTP/1.1\r\n\
        Host: api.test\r\nx-api-key: sk-placeholder-AAAA\r\n\
        Authorization: Bearer sk-placeholder-AAAA\r\nContent-Length: 19\r\n\r\n\
        sk-placeholder-AAAA";
    for step in [1, 3, 7, req.len()] {
        let (out, events, r) = run(&mut stream(), req, step);
        r.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches(VALUE).count(), 3, "{text}");
        // The body is not the head: it goes out verbatim.
        assert!(text.ends_with("\r\n\r\nsk-placeholder-AAAA"), "{text}");
        assert_eq!(
            events,
            [HttpEvent::Substituted {
                secret: "API_KEY".into(),
                method: "POST".into(),
                path: "/v1/messages".into(),
            }]
        );
    }
}

#[test]
fn keep_alive_requests_are_each_substituted() {
    let one =
        "GET /a HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer sk-placeholder-AAAA\r\n\r\n";
    let two = "POST /b HTTP/1.1\r\nHost: API.test:443\r\nx-api-key: sk-placeholder-AAAA\r\n\
        Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: sk-placeholder-AAAA\r\n\r\n";
    let three = "GET /c HTTP/1.1\r\nHost: api.test\r\nx-api-key: sk-placeholder-AAAA\r\n\r\n";
    let all = format!("{one}{two}{three}");
    for step in [1, 5, all.len()] {
        let (out, events, r) = run(&mut stream(), all.as_bytes(), step);
        r.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches(VALUE).count(), 3, "{text}");
        // A trailer is body, not head.
        assert!(text.contains("X-Trailer: sk-placeholder-AAAA"));
        let paths: Vec<_> = events
            .iter()
            .map(|HttpEvent::Substituted { path, .. }| path.as_str())
            .collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
    }
}

#[test]
fn a_placeholder_of_another_hosts_secret_refuses_the_request() {
    let req =
        b"GET /x HTTP/1.1\r\nHost: api.test\r\nAuthorization: token ghp-placeholder-BBBB\r\n\r\n";
    let (out, events, r) = run(&mut stream(), req, 4);
    assert_eq!(
        r,
        Err(HttpError::Unbound {
            secret: "GH_TOKEN".into(),
            method: "GET".into(),
            path: "/x".into(),
        })
    );
    assert!(out.is_empty() && events.is_empty());
    // Nothing passes afterwards.
    let mut s = stream();
    let _ = run(&mut s, req, req.len());
    let (out, _, r) = run(&mut s, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", 100);
    assert!(r.is_err() && out.is_empty());
}

#[test]
fn heads_naming_another_host_or_with_ambiguous_framing_are_refused() {
    type Check = fn(&HttpError) -> bool;
    let cases: [(&str, Check); 9] = [
        ("GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", |e| {
            *e == HttpError::OtherHost
        }),
        ("GET https://evil.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n", |e| {
            *e == HttpError::OtherHost
        }),
        ("GET / HTTP/1.1\r\n\r\n", |e| matches!(e, HttpError::Malformed(_))),
        (
            "GET / HTTP/1.1\r\nHost: api.test\r\nHost: api.test\r\n\r\n",
            |e| matches!(e, HttpError::Malformed(_)),
        ),
        (
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            |e| matches!(e, HttpError::Framing(_)),
        ),
        (
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            |e| matches!(e, HttpError::Framing(_)),
        ),
        (
            "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            |e| matches!(e, HttpError::Framing(_)),
        ),
        (
            "GET / HTTP/1.1\r\nHost: api.test\r\nX-A: 1\r\n folded\r\n\r\n",
            |e| matches!(e, HttpError::Malformed(_)),
        ),
        (
            "GET / HTTP/1.1\r\nHost: api.test\nX-Smuggled: 1\r\n\r\n",
            |e| matches!(e, HttpError::Malformed(_)),
        ),
    ];
    for (req, want) in cases {
        let (out, _, r) = run(&mut stream(), req.as_bytes(), 3);
        let e = r.unwrap_err();
        assert!(want(&e), "{req:?}: {e:?}");
        assert!(out.is_empty(), "{req:?}");
    }
}

#[test]
fn a_head_over_the_bound_is_refused_without_growing_past_it() {
    let mut s = stream();
    let mut req = b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Pad: ".to_vec();
    req.resize(MAX_HEAD + 10, b'a');
    let (out, _, r) = run(&mut s, &req, 4096);
    assert_eq!(r, Err(HttpError::TooLarge));
    assert!(out.is_empty());
    assert_eq!(s.buffered(), 0);
}

#[test]
fn bodies_and_upgrades_stream_without_being_collected() {
    let mut s = stream();
    let head = "POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1000000\r\n\r\n";
    let (mut out, mut events) = (Vec::new(), Vec::new());
    s.push(head.as_bytes(), &mut out, &mut events).unwrap();
    let body = vec![b'x'; 10_000];
    for _ in 0..100 {
        out.clear();
        s.push(&body, &mut out, &mut events).unwrap();
        assert_eq!(out.len(), body.len());
        assert_eq!(s.buffered(), 0);
    }
    // A WebSocket upgrade: afterwards everything passes verbatim.
    let mut s = stream();
    let up = "GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, Upgrade\r\n\
        Upgrade: websocket\r\nAuthorization: Bearer sk-placeholder-AAAA\r\n\r\n\x01\x05hello";
    let (out, events, r) = run(&mut s, up.as_bytes(), 2);
    r.unwrap();
    assert_eq!(events.len(), 1);
    assert!(out.ends_with(b"\x01\x05hello"));
    let (out, _, r) = run(&mut s, b"garbage ghp-placeholder-BBBB", 3);
    r.unwrap();
    assert_eq!(out, b"garbage ghp-placeholder-BBBB");
}

#[test]
fn audit_paths_name_placeholders_and_drop_the_query() {
    let req = b"GET /keys/sk-placeholder-AAAA/x?q=1 HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let (out, events, r) = run(&mut stream(), req, 9);
    r.unwrap();
    assert!(String::from_utf8(out).unwrap().contains(VALUE));
    let HttpEvent::Substituted { path, .. } = &events[0];
    assert_eq!(path, "/keys/<API_KEY>/x");
}

#[test]
fn mutated_requests_never_panic_nor_leak_an_unbound_value() {
    let base = b"POST /a HTTP/1.1\r\nHost: api.test\r\nx-api-key: sk-placeholder-AAAA\r\n\
        Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut input = base.to_vec();
        for _ in 0..(rng.next() % 6) {
            let at = (rng.next() as usize) % input.len();
            match rng.next() % 3 {
                0 => input[at] = rng.next() as u8,
                1 => {
                    input.remove(at);
                }
                _ => input.insert(at, rng.next() as u8),
            }
        }
        let step = 1 + (rng.next() % 40) as usize;
        let (out, _, _) = run(&mut stream(), &input, step);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains(OTHER_VALUE));
    }
}
