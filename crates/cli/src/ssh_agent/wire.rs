//! The ssh-agent protocol's wire format (draft-miller-ssh-agent), as far
//! as the filter needs it: message framing, the SSH data types
//! (`uint32`, `string`, `boolean`), key fingerprints and base64.
//!
//! Everything here reads bytes the guest wrote, so nothing panics and
//! nothing allocates before the bytes it describes were seen: a length is
//! checked against [`MAX_MESSAGE`] before its body is read, and every
//! field is checked against what remains of its message.
//!
//! A message on the wire is a `uint32` length, then that many bytes: a
//! type byte and the type's contents. This module calls the bytes after
//! the length the message's *body*.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// The longest message body either side may send (OpenSSH's own agent
/// takes at most 256 KiB); longer ones end the connection.
pub const MAX_MESSAGE: usize = 256 << 10;

/// Message types (draft-miller-ssh-agent §6.1). The filter names only
/// what it lets through; the rest are here for the tests that send them.
#[allow(dead_code)]
pub mod msg {
    /// The request failed (agent → client).
    pub const FAILURE: u8 = 5;
    /// The request succeeded (agent → client).
    pub const SUCCESS: u8 = 6;
    /// List the keys (client → agent).
    pub const REQUEST_IDENTITIES: u8 = 11;
    /// The key list (agent → client).
    pub const IDENTITIES_ANSWER: u8 = 12;
    /// Sign data with a key (client → agent).
    pub const SIGN_REQUEST: u8 = 13;
    /// The signature (agent → client).
    pub const SIGN_RESPONSE: u8 = 14;
    /// Add a private key (client → agent).
    pub const ADD_IDENTITY: u8 = 17;
    /// Remove a key (client → agent).
    pub const REMOVE_IDENTITY: u8 = 18;
    /// Remove every key (client → agent).
    pub const REMOVE_ALL_IDENTITIES: u8 = 19;
    /// Add a PKCS#11 token's keys (client → agent).
    pub const ADD_SMARTCARD_KEY: u8 = 20;
    /// Remove a PKCS#11 token's keys (client → agent).
    pub const REMOVE_SMARTCARD_KEY: u8 = 21;
    /// Lock the agent with a passphrase (client → agent).
    pub const LOCK: u8 = 22;
    /// Unlock it (client → agent).
    pub const UNLOCK: u8 = 23;
    /// Add a private key with constraints (client → agent).
    pub const ADD_ID_CONSTRAINED: u8 = 25;
    /// Add a token's keys with constraints (client → agent).
    pub const ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
    /// A vendor extension (client → agent).
    pub const EXTENSION: u8 = 27;
    /// The extension failed (agent → client).
    pub const EXTENSION_FAILURE: u8 = 28;
}

/// The extension by which `ssh` tells the agent which server (host key)
/// and which session (exchange hash) the following requests serve.
pub const SESSION_BIND: &[u8] = b"session-bind@openssh.com";

/// `SSH2_MSG_USERAUTH_REQUEST` (RFC 4252): the message a public-key
/// signature for logging in covers.
pub const USERAUTH_REQUEST: u8 = 50;

/// Why a message could not be read or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// A message announced an empty body (not even a type byte).
    Empty,
    /// A message announced a body over [`MAX_MESSAGE`] bytes.
    TooLong(u32),
    /// A message or field ends before what it announces.
    Truncated,
    /// A message has bytes after its last field.
    Trailing,
    /// A field has a value the protocol does not allow.
    Invalid(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => f.write_str("Empty ssh-agent message"),
            WireError::TooLong(n) => write!(f, "ssh-agent message of {n} bytes is too long"),
            WireError::Truncated => f.write_str("Truncated ssh-agent message"),
            WireError::Trailing => f.write_str("ssh-agent message has trailing bytes"),
            WireError::Invalid(what) => write!(f, "Invalid ssh-agent message: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Reads one message body from `r`: `Ok(None)` when `r` ends cleanly
/// before a message starts. A length over [`MAX_MESSAGE`], an empty body
/// or an end in the middle of a message is an error (`InvalidData`,
/// `UnexpectedEof`); the connection cannot continue after it.
pub fn read_message(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let n = check_length(u32::from_be_bytes(len))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// The body length a message header announces, if acceptable.
pub fn check_length(n: u32) -> Result<usize, WireError> {
    match usize::try_from(n) {
        Ok(0) => Err(WireError::Empty),
        Ok(n) if n <= MAX_MESSAGE => Ok(n),
        _ => Err(WireError::TooLong(n)),
    }
}

/// A message on the wire: `body` behind its length.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    put_string(&mut out, body);
    out
}

/// The body of a message that is only its type (`FAILURE`, `SUCCESS`, …).
pub fn bare(kind: u8) -> Vec<u8> {
    vec![kind]
}

/// Appends a `uint32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a `string` (its length, then its bytes). Callers only pass
/// what fits a message, so the length fits a `uint32`.
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(s);
}

/// Reads SSH data types from a message body, front to back. No accessor
/// panics: each checks what remains first.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A `byte`.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    /// A `uint32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `string`.
    pub fn string(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()?;
        let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        self.take(n)
    }

    /// A `boolean` (0 or 1; RFC 4251 reads any non-zero value as true,
    /// this filter wants no ambiguity).
    pub fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid("a boolean is neither 0 nor 1")),
        }
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Checks that nothing is left.
    pub fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

/// A key's SHA-256 digest: what its `SHA256:` fingerprint encodes.
pub type KeyDigest = [u8; 32];

/// The SHA-256 digest of a public key blob.
pub fn key_digest(blob: &[u8]) -> KeyDigest {
    Sha256::digest(blob).into()
}

/// The fingerprint OpenSSH prints for a public key blob (`ssh-add -l`):
/// `SHA256:` and the digest in unpadded base64.
#[cfg_attr(not(test), allow(dead_code))]
pub fn fingerprint(blob: &[u8]) -> String {
    let mut s = String::from("SHA256:");
    s.push_str(base64_encode(&key_digest(blob)).trim_end_matches('='));
    s
}

/// The digest a `SHA256:…` fingerprint names, if it is one.
pub fn parse_fingerprint(text: &str) -> Option<KeyDigest> {
    let b64 = text.strip_prefix("SHA256:")?;
    // 32 bytes are 43 base64 characters without padding.
    if b64.len() != 43 {
        return None;
    }
    base64_decode(b64)?.try_into().ok()
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
#[cfg_attr(not(test), allow(dead_code))]
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padded or not; `None` for anything else (stray
/// characters, an impossible length, bits set after the last byte).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    let body = text.strip_suffix(b"==").or_else(|| text.strip_suffix(b"="));
    let body = match body {
        Some(b) if text.len().is_multiple_of(4) => b,
        Some(_) => return None,
        None => text,
    };
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body {
        let v = BASE64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero (a canonical encoding).
    (acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_rejects_junk() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let enc = base64_encode(data);
            assert_eq!(base64_decode(&enc).as_deref(), Some(data), "{enc}");
            assert_eq!(
                base64_decode(enc.trim_end_matches('=')).as_deref(),
                Some(data)
            );
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        for bad in ["Z", "Zm9v!", "Zm9=v", "Zm8==", "Zn=="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn fingerprints_are_openssh_s() {
        // `ssh-keygen -lf` of this ed25519 key prints this fingerprint.
        let blob =
            base64_decode("AAAAC3NzaC1lZDI1NTE5AAAAIGb/dHbyceCiytJLDeVE+j5d52BCa/CPaI+BQaHz6/IQ")
                .unwrap();
        let fp = fingerprint(&blob);
        assert_eq!(fp, "SHA256:vJEOMYi0KD/7DnFpBKm8W86L+2eE5J+s0tkOeF1rh1w");
        assert_eq!(parse_fingerprint(&fp), Some(key_digest(&blob)));
        assert_eq!(parse_fingerprint("MD5:aa:bb"), None);
        assert_eq!(parse_fingerprint("SHA256:short"), None);
        assert_eq!(parse_fingerprint(&format!("{fp}=")), None);
    }

    #[test]
    fn messages_are_read_within_bounds() {
        let mut ok = &[0, 0, 0, 1, 11, 0, 0, 0][..];
        assert_eq!(read_message(&mut ok).unwrap(), Some(vec![11]));
        // Three bytes of the next header, then the end: truncated.
        assert_eq!(
            read_message(&mut ok).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(read_message(&mut &[][..]).unwrap(), None);
        // A body shorter than announced.
        let mut short = &[0, 0, 0, 5, 11][..];
        assert_eq!(
            read_message(&mut short).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        // 4 GiB announced: refused before anything is allocated.
        let mut huge = &[0xff, 0xff, 0xff, 0xff, 11][..];
        assert_eq!(
            read_message(&mut huge).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut empty = &[0, 0, 0, 0][..];
        assert_eq!(
            read_message(&mut empty).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(check_length(MAX_MESSAGE as u32), Ok(MAX_MESSAGE));
        assert_eq!(
            check_length(MAX_MESSAGE as u32 + 1),
            Err(WireError::TooLong(MAX_MESSAGE as u32 + 1))
        );
    }

    #[test]
    fn the_reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[0, 0, 0, 9, b'a']);
        assert_eq!(r.string(), Err(WireError::Truncated));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.string(), Err(WireError::Truncated));
        let mut r = Reader::new(&[2]);
        assert!(r.bool().is_err());
        let mut r = Reader::new(&[0, 0, 0, 1, b'x', 1]);
        assert_eq!(r.string(), Ok(&b"x"[..]));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.clone().finish(), Err(WireError::Trailing));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(frame(&[5]), [0, 0, 0, 1, 5]);
    }
}
