//! What a guest may ask of the host's ssh-agent.
//!
//! The guest is hostile, and the host's agent holds the user's keys: it
//! would add, remove and lock keys, list every key it holds and sign with
//! any of them for anyone who asks. Between the two sits this filter, one
//! [`Session`] per guest connection, each request parsed whole (see
//! [`super::wire`]) before anything reaches the agent:
//!
//! - `REQUEST_IDENTITIES` is forwarded; the answer is cut down to the
//!   allowed keys ([`Policy::keys`]).
//! - `SIGN_REQUEST` is forwarded only for an allowed key — an unlisted key
//!   is refused without asking the agent, so the guest cannot even learn
//!   whether the agent holds it.
//! - The extension `session-bind@openssh.com` is forwarded (it only
//!   narrows what the agent does).
//! - Everything else — adding, removing or locking keys, smartcards, other
//!   extensions, the SSH-1 messages — is answered `SSH_AGENT_FAILURE` here.
//!
//! # Hosts
//!
//! With [`Policy::host_keys`] set, signatures serve only logins to those
//! servers. `ssh` (OpenSSH 8.9 and later) binds each agent connection to
//! the server it talks to: after key exchange it sends `session-bind`
//! with the server's host key, the session identifier (the exchange hash)
//! and the host key's signature over it, which the host's agent verifies.
//! The filter forwards a bind only for an allowed host key, remembers it
//! once the agent accepted it (so its signature was good: only the real
//! server could have made it), and then signs only a user-authentication
//! request (RFC 4252 §7) for that very session, with the key being asked
//! for. The guest can thus sign only what logs it in to a session whose
//! other end holds an allowed host key: it cannot replay a bind (the
//! agent checks the signature over the identifier, and the signature
//! authenticates that session only), nor sign anything else. One bind per
//! connection, and no bind marked as forwarded: agent forwarding onwards
//! from the guest is not supported in this mode. Signatures that are no
//! login (`ssh-keygen -Y sign`, git's ssh commit signing) are refused.
//!
//! The filter does not verify the host's signature in the bind itself: it
//! relies on the host's agent doing so, as OpenSSH's `ssh-agent` (8.9 and
//! later) does before it answers `SSH_AGENT_SUCCESS`. An agent that
//! accepted binds without checking them would make `hosts` a mere hint;
//! one that does not know the extension answers failure, and then nothing
//! is signed in this mode. Verifying the signature here (ed25519, ECDSA and
//! RSA host keys) would remove that dependence.

use super::wire::{self, msg, KeyDigest, Reader, WireError};

/// What the guest may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The keys the guest may see and sign with (SHA-256 digests of their
    /// blobs); `None`: every key the agent holds.
    pub keys: Option<Vec<KeyDigest>>,
    /// The host keys (blobs) of the servers signatures may log in to;
    /// `None`: any server.
    pub host_keys: Option<Vec<Vec<u8>>>,
}

impl Policy {
    fn key_allowed(&self, blob: &[u8]) -> bool {
        self.keys
            .as_ref()
            .is_none_or(|keys| keys.contains(&wire::key_digest(blob)))
    }
}

/// What to do with a guest's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this message body to the agent, and its answer to
    /// [`Session::reply`].
    Forward(Vec<u8>),
    /// Answer the guest `SSH_AGENT_FAILURE` without asking the agent, for
    /// this reason (for the log; the guest learns nothing more).
    Refuse(&'static str),
}

/// The server a connection was bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    host_key: Vec<u8>,
    session_id: Vec<u8>,
}

/// The request forwarded and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Identities,
    Sign,
    Bind(Binding),
}

/// One guest connection's state: requests in, answers out, one at a time
/// (the agent protocol is strictly request and answer).
#[derive(Debug)]
pub struct Session<'p> {
    policy: &'p Policy,
    bound: Option<Binding>,
    pending: Option<Pending>,
}

impl<'p> Session<'p> {
    /// A new connection under `policy`.
    pub fn new(policy: &'p Policy) -> Self {
        Session {
            policy,
            bound: None,
            pending: None,
        }
    }

    /// Judges the guest's message `body` (without its length).
    pub fn request(&mut self, body: &[u8]) -> Step {
        if self.pending.is_some() {
            // The relay never asks twice; a bug rather than the guest.
            return Step::Refuse("a request is still waiting for its answer");
        }
        match self.judge(body) {
            Ok(pending) => {
                self.pending = Some(pending);
                Step::Forward(body.to_vec())
            }
            Err(why) => Step::Refuse(why),
        }
    }

    fn judge(&self, body: &[u8]) -> Result<Pending, &'static str> {
        let mut r = Reader::new(body);
        let kind = r.u8().map_err(|_| "empty message")?;
        let malformed = |_: WireError| "malformed request";
        match kind {
            msg::REQUEST_IDENTITIES => {
                r.finish().map_err(malformed)?;
                Ok(Pending::Identities)
            }
            msg::SIGN_REQUEST => {
                let key = r.string().map_err(malformed)?;
                let data = r.string().map_err(malformed)?;
                let _flags = r.u32().map_err(malformed)?;
                r.finish().map_err(malformed)?;
                if !self.policy.key_allowed(key) {
                    return Err("key not allowed");
                }
                if self.policy.host_keys.is_some() {
                    let bound = self.bound.as_ref().ok_or("no session bound to a host")?;
                    check_login(data, key, bound)?;
                }
                Ok(Pending::Sign)
            }
            msg::EXTENSION => {
                let name = r.string().map_err(malformed)?;
                if name != wire::SESSION_BIND {
                    return Err("extension not allowed");
                }
                let host_key = r.string().map_err(malformed)?;
                let session_id = r.string().map_err(malformed)?;
                let _signature = r.string().map_err(malformed)?;
                let forwarding = r.bool().map_err(malformed)?;
                r.finish().map_err(malformed)?;
                if let Some(allowed) = &self.policy.host_keys {
                    if !allowed.iter().any(|k| k == host_key) {
                        return Err("host not allowed");
                    }
                    if forwarding {
                        return Err("forwarding the agent onwards is not allowed");
                    }
                    if self.bound.is_some() {
                        return Err("connection already bound");
                    }
                }
                Ok(Pending::Bind(Binding {
                    host_key: host_key.to_vec(),
                    session_id: session_id.to_vec(),
                }))
            }
            _ => Err("request not allowed"),
        }
    }

    /// What the guest gets for the agent's answer `body` to the request
    /// forwarded last: the answer itself, filtered, or `SSH_AGENT_FAILURE`
    /// when it is not the answer that request expects.
    pub fn reply(&mut self, body: &[u8]) -> Vec<u8> {
        let failure = wire::bare(msg::FAILURE);
        let Some(pending) = self.pending.take() else {
            return failure;
        };
        let mut r = Reader::new(body);
        let Ok(kind) = r.u8() else {
            return failure;
        };
        match (pending, kind) {
            (Pending::Identities, msg::IDENTITIES_ANSWER) => {
                filter_identities(r, self.policy).unwrap_or(failure)
            }
            (Pending::Sign, msg::SIGN_RESPONSE) => match r.string().and_then(|_| r.finish()) {
                Ok(()) => body.to_vec(),
                Err(_) => failure,
            },
            (Pending::Bind(binding), msg::SUCCESS) if r.finish().is_ok() => {
                if self.policy.host_keys.is_some() {
                    self.bound = Some(binding);
                }
                wire::bare(msg::SUCCESS)
            }
            _ => failure,
        }
    }
}

/// The identities answer with only the allowed keys.
fn filter_identities(mut r: Reader<'_>, policy: &Policy) -> Option<Vec<u8>> {
    let count = r.u32().ok()?;
    // Each entry takes at least its two lengths: a count beyond that is a
    // lie, and nothing is reserved for it.
    if u64::from(count) * 8 > r.remaining() as u64 {
        return None;
    }
    let mut kept = Vec::new();
    for _ in 0..count {
        let key = r.string().ok()?;
        let comment = r.string().ok()?;
        if policy.key_allowed(key) {
            kept.push((key, comment));
        }
    }
    r.finish().ok()?;
    let mut out = vec![msg::IDENTITIES_ANSWER];
    wire::put_u32(&mut out, u32::try_from(kept.len()).ok()?);
    for (key, comment) in kept {
        wire::put_string(&mut out, key);
        wire::put_string(&mut out, comment);
    }
    Some(out)
}

/// The public-key login methods a signature may serve (RFC 4252 §7, and
/// OpenSSH's host-bound form, which names the host key too).
const PUBLICKEY: &[u8] = b"publickey";
const PUBLICKEY_HOSTBOUND: &[u8] = b"publickey-hostbound-v00@openssh.com";

/// Checks that `data` is a user-authentication request for the bound
/// session with `key`.
fn check_login(data: &[u8], key: &[u8], bound: &Binding) -> Result<(), &'static str> {
    let not_login = |_: WireError| "data to sign is not a login";
    let mut r = Reader::new(data);
    if r.string().map_err(not_login)? != bound.session_id {
        return Err("data to sign is for another session");
    }
    if r.u8().map_err(not_login)? != wire::USERAUTH_REQUEST {
        return Err("data to sign is not a login");
    }
    let _user = r.string().map_err(not_login)?;
    let _service = r.string().map_err(not_login)?;
    let hostbound = match r.string().map_err(not_login)? {
        PUBLICKEY => false,
        PUBLICKEY_HOSTBOUND => true,
        _ => return Err("data to sign is not a public-key login"),
    };
    if !r.bool().map_err(not_login)? {
        return Err("data to sign is not a login");
    }
    let _algorithm = r.string().map_err(not_login)?;
    if r.string().map_err(not_login)? != key {
        return Err("data to sign names another key");
    }
    if hostbound && r.string().map_err(not_login)? != bound.host_key {
        return Err("data to sign names another host");
    }
    r.finish().map_err(not_login)
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
