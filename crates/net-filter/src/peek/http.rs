//! The host an HTTP/1 request is for, read from the first bytes a client
//! sends: its request line and `Host:` header (RFC 9112 §3, §3.2).
//!
//! The bytes are the guest's and hostile, and a server behind a shared
//! address picks its site from what this parser reads: where the two could
//! disagree, the request is refused rather than guessed. So lines end in
//! CRLF only; a header name has no space before its colon; no header is
//! folded; exactly one `Host` header; a target in absolute or authority
//! form (which servers prefer to `Host`) must name the same host. Work is
//! bounded by the input (at most [`super::MAX_PEEK`] bytes).

use super::Peeked;

/// Reads the request at the start of `stream`: [`Peeked::Incomplete`]
/// until its header block ended, then the host it is for (`None` when it
/// names none, or only an IP address), or why it is no request.
pub fn request_host(stream: &[u8]) -> Peeked {
    let Some(end) = find(stream, b"\r\n\r\n") else {
        return match stream.iter().position(|&b| !is_request_byte(b)) {
            Some(_) => Peeked::Malformed("not an HTTP/1 request"),
            None => Peeked::Incomplete,
        };
    };
    match parse(&stream[..end + 2]) {
        Ok(host) => Peeked::Name(host),
        Err(why) => Peeked::Malformed(why),
    }
}

/// Bytes a request line and headers may hold: visible ASCII, space, tab,
/// CR, LF (a byte outside them is no HTTP/1 request: TLS, binary).
fn is_request_byte(b: u8) -> bool {
    matches!(b, b' '..=b'~' | b'\t' | b'\r' | b'\n')
}

/// The host of the header block `head` (its lines each ending in CRLF,
/// the empty line after them cut off).
fn parse(head: &[u8]) -> Result<Option<String>, &'static str> {
    if !head.iter().all(|&b| is_request_byte(b)) {
        return Err("not an HTTP/1 request");
    }
    let body = head.strip_suffix(b"\n").ok_or("not an HTTP/1 request")?;
    let mut lines = body.split(|&b| b == b'\n').map(|line| {
        let line = line.strip_suffix(b"\r").ok_or("bare LF in HTTP request")?;
        match line.contains(&b'\r') {
            true => Err("bare CR in HTTP request"),
            false => Ok(line),
        }
    });
    let request_line = lines.next().ok_or("not an HTTP/1 request")??;
    let target_host = request_target_host(request_line)?;
    let mut host: Option<&[u8]> = None;
    for line in lines {
        let line = line?;
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err("folded HTTP header");
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("HTTP header without a colon")?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
            return Err("bad HTTP header name");
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err("two Host headers");
            }
            host = Some(value.trim_ascii());
        }
    }
    let host = match host {
        Some(value) => Some(host_of(value)?),
        None => None,
    };
    match (target_host, host) {
        (Some(t), Some(h)) if t != h => Err("request target and Host name different hosts"),
        (Some(t), _) => Ok(t),
        (None, Some(h)) => Ok(h),
        (None, None) => Ok(None),
    }
}

/// The host a request line's target names, when it is in absolute form
/// (`http://host/…`) or authority form (`host:port`, CONNECT): `Some`
/// of [`host_of`]; `None` for origin form (`/…`) and `*`.
fn request_target_host(line: &[u8]) -> Result<Option<Option<String>>, &'static str> {
    let bad = "malformed HTTP request line";
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if method.is_empty() || !method.iter().all(|&b| is_token_byte(b)) {
        return Err(bad);
    }
    if !matches!(version, b"HTTP/1.0" | b"HTTP/1.1") {
        return Err("not an HTTP/1 request");
    }
    if target.is_empty() {
        return Err(bad);
    }
    if target.starts_with(b"/") || target == b"*" {
        return Ok(None);
    }
    let authority = match find(target, b"://") {
        Some(i) => {
            let rest = &target[i + 3..];
            let end = rest
                .iter()
                .position(|&b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(rest.len());
            &rest[..end]
        }
        None if method == b"CONNECT" => target,
        None => return Err(bad),
    };
    host_of(authority).map(Some)
}

/// The host name of a `Host` value or authority (`name[:port]`), lower
/// case; `None` for an IP address (the client named no site).
fn host_of(authority: &[u8]) -> Result<Option<String>, &'static str> {
    let bad = "malformed Host";
    if authority.contains(&b'@') {
        return Err(bad);
    }
    if authority.starts_with(b"[") {
        // An IPv6 literal: no name.
        return match authority.iter().position(|&b| b == b']') {
            Some(end) if port_ok(&authority[end + 1..]) => Ok(None),
            _ => Err(bad),
        };
    }
    let (name, port) = match authority.iter().position(|&b| b == b':') {
        Some(i) => (&authority[..i], &authority[i..]),
        None => (authority, &b""[..]),
    };
    if name.is_empty() || name.len() > 254 || !port_ok(port) {
        return Err(bad);
    }
    let name = std::str::from_utf8(name).map_err(|_| bad)?;
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(None);
    }
    Ok(Some(name.to_ascii_lowercase()))
}

/// An empty port, or `:` and 1 to 5 digits.
fn port_ok(port: &[u8]) -> bool {
    match port.strip_prefix(b":") {
        None => port.is_empty(),
        Some(digits) => {
            (1..=5).contains(&digits.len()) && digits.iter().all(|b| b.is_ascii_digit())
        }
    }
}

/// A `tchar` of RFC 9110 §5.6.2 (method and header names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Peeked {
        Peeked::Name(Some(n.to_string()))
    }

    #[test]
    fn the_host_is_read_from_the_header_or_the_target() {
        for (request, want) in [
            ("GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", name("api.test")),
            (
                "GET /x?y HTTP/1.1\r\nUser-Agent: t\r\nhOsT:API.Test:80\r\nAccept: */*\r\n\r\nbody",
                name("api.test"),
            ),
            ("GET / HTTP/1.1\r\nHost:  a.test \t\r\n\r\n", name("a.test")),
            (
                "GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
                name("a.test"),
            ),
            ("GET http://a.test:8080?q HTTP/1.1\r\n\r\n", name("a.test")),
            (
                "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
                name("a.test"),
            ),
            ("OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n", name("a.test")),
            // Absent, or only an address: no name.
            ("GET / HTTP/1.0\r\n\r\n", Peeked::Name(None)),
            (
                "GET / HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n",
                Peeked::Name(None),
            ),
            (
                "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
                Peeked::Name(None),
            ),
        ] {
            assert_eq!(request_host(request.as_bytes()), want, "{request:?}");
        }
    }

    #[test]
    fn a_request_split_anywhere_waits_for_its_header_block() {
        let request = b"GET / HTTP/1.1\r\nHost: split.test\r\nAccept: */*\r\n\r\n";
        for cut in 0..request.len() {
            assert_eq!(request_host(&request[..cut]), Peeked::Incomplete, "{cut}");
        }
        assert_eq!(request_host(request), name("split.test"));
    }

    #[test]
    fn ambiguous_or_malformed_requests_are_refused() {
        for (request, why) in [
            ("\x16\x03\x01\x02\x00\x01", "not an HTTP/1 request"),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", "not an HTTP/1 request"),
            ("SSH-2.0-OpenSSH\r\n\r\n", "malformed HTTP request line"),
            ("GET  / HTTP/1.1\r\n\r\n", "malformed HTTP request line"),
            ("GET a.test HTTP/1.1\r\n\r\n", "malformed HTTP request line"),
            (
                "GET / HTTP/1.1\nHost: a.test\r\n\r\n",
                "bare LF in HTTP request",
            ),
            (
                "GET / HTTP/1.1\r\nX: 1\nHost: a.test\r\n\r\n",
                "bare LF in HTTP request",
            ),
            (
                "GET / HTTP/1.1\r\nX: 1\rHost: b\r\n\r\n",
                "bare CR in HTTP request",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
                "two Host headers",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.test\r\n host: b\r\n\r\n",
                "folded HTTP header",
            ),
            (
                "GET / HTTP/1.1\r\nHost : b.test\r\n\r\n",
                "bad HTTP header name",
            ),
            (
                "GET / HTTP/1.1\r\nnocolon\r\n\r\n",
                "HTTP header without a colon",
            ),
            ("GET / HTTP/1.1\r\nHost: u@a.test\r\n\r\n", "malformed Host"),
            (
                "GET / HTTP/1.1\r\nHost: a.test:http\r\n\r\n",
                "malformed Host",
            ),
            ("GET / HTTP/1.1\r\nHost: \r\n\r\n", "malformed Host"),
            (
                "GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "request target and Host name different hosts",
            ),
        ] {
            assert_eq!(
                request_host(request.as_bytes()),
                Peeked::Malformed(why),
                "{request:?}"
            );
        }
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let good = b"GET http://a.test/ HTTP/1.1\r\nHost: a.test:80\r\nX: [\r\n\r\n".to_vec();
        let mut rng = super::super::XorShift(0x2545_f491_4f6c_dd1d_u64);
        let mut next = || rng.next();
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % bytes.len() as u64) as usize;
                let alphabet = b" :/[]@\r\n\t.a1";
                bytes[i] = alphabet[(next() % alphabet.len() as u64) as usize];
            }
            bytes.truncate((next() % (bytes.len() as u64 + 1)) as usize);
            let _ = request_host(&bytes);
        }
    }
}
