//! The server name (SNI) of a TLS ClientHello, read from the first bytes
//! a client sends (RFC 8446 §4.1.2, RFC 6066 §3).
//!
//! The bytes are the guest's and hostile: every length is checked against
//! what is left before it is used, nothing is indexed unchecked, and the
//! work is bounded by the input (at most [`super::MAX_PEEK`] bytes). What
//! a server could read differently from this parser is refused rather
//! than guessed: two `server_name` extensions, two host names in one, a
//! record that is no handshake before the ClientHello is complete.

use super::Peeked;

/// TLS record type of handshake messages.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension type of `server_name`.
const SERVER_NAME: u16 = 0;
/// `NameType` of a host name in the `server_name` extension.
const HOST_NAME: u8 = 0;
/// The largest plaintext record fragment (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 1 << 14;
/// The longest host name a ClientHello may carry that could be a DNS
/// name at all.
const MAX_NAME: usize = 253;

/// Reads the ClientHello at the start of `stream`: [`Peeked::Incomplete`]
/// until all of it arrived, then the host name it asks for (`None`
/// without a `server_name` extension), or why it is no ClientHello.
pub fn client_hello_sni(stream: &[u8]) -> Peeked {
    let mut message = Vec::new();
    let mut rest = stream;
    // Handshake messages may span records: gather fragments until the
    // ClientHello's own length is there. Each round eats one record
    // header, so the loop ends with the input.
    loop {
        if let Some(body) = whole_message(&message) {
            return match client_hello(body) {
                Ok(name) => Peeked::Name(name),
                Err(why) => Peeked::Malformed(why),
            };
        }
        let Some((&kind, after_kind)) = rest.split_first() else {
            return Peeked::Incomplete;
        };
        if kind != HANDSHAKE {
            return Peeked::Malformed("not a TLS handshake");
        }
        let Some((header, after_header)) = split(after_kind, 4) else {
            return Peeked::Incomplete;
        };
        if header[0] != 3 {
            return Peeked::Malformed("not a TLS record");
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if len == 0 || len > MAX_FRAGMENT {
            return Peeked::Malformed("bad TLS record length");
        }
        let Some((fragment, after)) = split(after_header, len) else {
            return Peeked::Incomplete;
        };
        message.extend_from_slice(fragment);
        rest = after;
        if let Some(&t) = message.first() {
            if t != CLIENT_HELLO {
                return Peeked::Malformed("first handshake message is no ClientHello");
            }
        }
    }
}

/// The body of the handshake message at the start of `message`, once all
/// of it is there.
fn whole_message(message: &[u8]) -> Option<&[u8]> {
    let (header, body) = split(message, 4)?;
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    body.get(..len)
}

/// The host name a ClientHello body asks for.
fn client_hello(body: &[u8]) -> Result<Option<String>, &'static str> {
    let bad = "malformed ClientHello";
    let mut r = Reader(body);
    r.take(2).ok_or(bad)?; // legacy_version
    r.take(32).ok_or(bad)?; // random
    let session_id = r.vec8().ok_or(bad)?;
    if session_id.len() > 32 {
        return Err(bad);
    }
    let suites = r.vec16().ok_or(bad)?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(bad);
    }
    if r.vec8().ok_or(bad)?.is_empty() {
        return Err(bad); // compression methods
    }
    if r.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut extensions = Reader(r.vec16().ok_or(bad)?);
    if !r.0.is_empty() {
        return Err(bad);
    }
    let mut name = None;
    let mut seen = false;
    while !extensions.0.is_empty() {
        let kind = extensions.u16().ok_or(bad)?;
        let data = extensions.vec16().ok_or(bad)?;
        if kind != SERVER_NAME {
            continue;
        }
        if seen {
            return Err("two server_name extensions");
        }
        seen = true;
        name = server_name(data)?;
    }
    Ok(name)
}

/// The host name of a `server_name` extension (one at most).
fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let bad = "malformed server_name extension";
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16().ok_or(bad)?);
    if !outer.0.is_empty() {
        return Err(bad);
    }
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8().ok_or(bad)?;
        let name = list.vec16().ok_or(bad)?;
        if kind != HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err("two host names in server_name");
        }
        if name.is_empty() || name.len() > MAX_NAME || !name.is_ascii() {
            return Err("server name is no host name");
        }
        // ASCII checked above, so this never fails.
        host = Some(String::from_utf8_lossy(name).into_owned());
    }
    Ok(host)
}

/// `bytes` split after `n`, if it is that long.
fn split(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= n).then(|| bytes.split_at(n))
}

/// Big-endian fields and length-prefixed vectors, front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = split(self.0, n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// ClientHellos for tests (here, the stack's, fuzz seeds): records
/// around a ClientHello with the given extensions.
#[cfg(any(test, feature = "testing"))]
pub mod build {
    /// A `server_name` extension naming `names` (as host names).
    pub fn sni(names: &[&[u8]]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for n in names {
            list.push(0);
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (0, data)
    }

    /// A ClientHello handshake message with `extensions`.
    pub fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7; 32]);
        body.push(32);
        body.extend([9; 32]);
        body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend([1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let len = body.len() as u32;
        let mut msg = vec![1];
        msg.extend(&len.to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// `message` in TLS records of at most `fragment` bytes each.
    pub fn records(message: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(fragment) {
            out.extend([22, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    /// A whole ClientHello record asking for `name`.
    pub fn client_hello(name: &str) -> Vec<u8> {
        records(&hello(&[sni(&[name.as_bytes()])]), 1 << 14)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn name(n: &str) -> Peeked {
        Peeked::Name(Some(n.to_string()))
    }

    #[test]
    fn the_server_name_is_read_whole_split_and_absent() {
        let alpn = (16, vec![0, 3, 2, b'h', b'2']);
        let hello_with = |ext: &[(u16, Vec<u8>)]| records(&hello(ext), 1 << 14);
        let ok = hello_with(&[alpn.clone(), sni(&[b"api.github.com"])]);
        assert_eq!(client_hello_sni(&ok), name("api.github.com"));
        // Extra bytes after the ClientHello (the client's next flight)
        // change nothing.
        let mut more = ok.clone();
        more.extend([23, 3, 3, 0, 1, 0]);
        assert_eq!(client_hello_sni(&more), name("api.github.com"));
        // Every prefix waits for more.
        for cut in 0..ok.len() {
            assert_eq!(client_hello_sni(&ok[..cut]), Peeked::Incomplete, "{cut}");
        }
        // Split over records of 7 bytes (a hello across many records).
        let split = records(&hello(&[sni(&[b"a.test"])]), 7);
        assert_eq!(client_hello_sni(&split), name("a.test"));
        // Absent: no server_name, or no extensions at all.
        assert_eq!(client_hello_sni(&hello_with(&[alpn])), Peeked::Name(None));
        let mut bare = hello(&[]);
        bare.truncate(bare.len() - 2);
        let len = (bare.len() - 4) as u32;
        bare[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
        assert_eq!(
            client_hello_sni(&records(&bare, 1 << 14)),
            Peeked::Name(None)
        );
        // A name type other than host_name is skipped.
        let mut other = sni(&[b"x.test"]);
        other.1[2] = 7;
        assert_eq!(client_hello_sni(&hello_with(&[other])), Peeked::Name(None));
    }

    #[test]
    fn ambiguous_or_malformed_hellos_are_refused() {
        let two_ext = records(&hello(&[sni(&[b"a.test"]), sni(&[b"b.test"])]), 1 << 14);
        let two_names = records(&hello(&[sni(&[b"a.test", b"b.test"])]), 1 << 14);
        let empty_name = records(&hello(&[sni(&[b""])]), 1 << 14);
        let long_name = records(&hello(&[sni(&[&[b'a'; 254]])]), 1 << 14);
        let binary_name = records(&hello(&[sni(&[b"a\xff.test"])]), 1 << 14);
        let mut not_hello = hello(&[sni(&[b"a.test"])]);
        not_hello[0] = 2;
        let not_hello = records(&not_hello, 1 << 14);
        let mut bad_ext_len = hello(&[sni(&[b"a.test"])]);
        let n = bad_ext_len.len();
        bad_ext_len[n - 12] = 0xff; // the server_name data length
        let bad_ext_len = records(&bad_ext_len, 1 << 14);
        for (what, bytes, why) in [
            (
                "http",
                b"GET / HTTP/1.1\r\n".to_vec(),
                "not a TLS handshake",
            ),
            ("alert", vec![21, 3, 3, 0, 2, 2, 40], "not a TLS handshake"),
            ("ssl2", vec![22, 2, 0, 0, 1, 1], "not a TLS record"),
            ("zero record", vec![22, 3, 1, 0, 0], "bad TLS record length"),
            (
                "huge record",
                vec![22, 3, 1, 0x40, 1],
                "bad TLS record length",
            ),
            ("two extensions", two_ext, "two server_name extensions"),
            ("two names", two_names, "two host names in server_name"),
            ("empty name", empty_name, "server name is no host name"),
            ("long name", long_name, "server name is no host name"),
            ("binary name", binary_name, "server name is no host name"),
            (
                "server hello",
                not_hello,
                "first handshake message is no ClientHello",
            ),
            ("bad length", bad_ext_len, "malformed ClientHello"),
        ] {
            assert_eq!(client_hello_sni(&bytes), Peeked::Malformed(why), "{what}");
        }
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let good = build::client_hello("mutated.test");
        let mut rng = super::super::XorShift(0x9e37_79b9_7f4a_7c15_u64);
        let mut next = || rng.next();
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] = next() as u8;
            }
            bytes.truncate((next() % (bytes.len() as u64 + 1)) as usize);
            let _ = client_hello_sni(&bytes);
            let random: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            let _ = client_hello_sni(&random);
        }
    }
}
