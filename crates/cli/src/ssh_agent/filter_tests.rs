use super::*;
use crate::ssh_agent::wire::{put_string, put_u32};

const KEY_A: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const KEY_B: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
const HOST: &[u8] = b"host key of github";
const OTHER_HOST: &[u8] = b"host key of evil";

fn only_a() -> Policy {
    Policy {
        keys: Some(vec![wire::key_digest(KEY_A)]),
        host_keys: None,
    }
}

fn sign_request(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = vec![msg::SIGN_REQUEST];
    put_string(&mut m, key);
    put_string(&mut m, data);
    put_u32(&mut m, 0);
    m
}

fn identities(keys: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut m = vec![msg::IDENTITIES_ANSWER];
    put_u32(&mut m, keys.len() as u32);
    for (k, c) in keys {
        put_string(&mut m, k);
        put_string(&mut m, c);
    }
    m
}

fn bind(host_key: &[u8], session_id: &[u8], forwarding: bool) -> Vec<u8> {
    let mut m = vec![msg::EXTENSION];
    put_string(&mut m, wire::SESSION_BIND);
    put_string(&mut m, host_key);
    put_string(&mut m, session_id);
    put_string(&mut m, b"signature by the host key");
    m.push(u8::from(forwarding));
    m
}

fn login(session_id: &[u8], key: &[u8], hostbound: Option<&[u8]>) -> Vec<u8> {
    let mut d = Vec::new();
    put_string(&mut d, session_id);
    d.push(wire::USERAUTH_REQUEST);
    put_string(&mut d, b"git");
    put_string(&mut d, b"ssh-connection");
    put_string(
        &mut d,
        if hostbound.is_some() {
            PUBLICKEY_HOSTBOUND
        } else {
            PUBLICKEY
        },
    );
    d.push(1);
    put_string(&mut d, b"ssh-ed25519");
    put_string(&mut d, key);
    if let Some(h) = hostbound {
        put_string(&mut d, h);
    }
    d
}

fn forwarded(s: &mut Session<'_>, body: &[u8]) {
    assert_eq!(s.request(body), Step::Forward(body.to_vec()));
}

#[test]
fn identities_are_listed_and_cut_to_the_allowed_keys() {
    let policy = only_a();
    let mut s = Session::new(&policy);
    forwarded(&mut s, &[msg::REQUEST_IDENTITIES]);
    let answer = identities(&[(KEY_B, b"b@host"), (KEY_A, b"a@host")]);
    assert_eq!(s.reply(&answer), identities(&[(KEY_A, b"a@host")]));
    // Without a list every key passes unchanged.
    let all = Policy::default();
    let mut s = Session::new(&all);
    forwarded(&mut s, &[msg::REQUEST_IDENTITIES]);
    assert_eq!(s.reply(&answer), answer);
}

#[test]
fn a_malformed_or_unexpected_identities_answer_becomes_failure() {
    let policy = only_a();
    let failure = vec![msg::FAILURE];
    let good = identities(&[(KEY_A, b"a")]);
    let mut lying_count = good.clone();
    lying_count[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut trailing = good.clone();
    trailing.push(0);
    for bad in [
        lying_count,
        trailing,
        good[..good.len() - 1].to_vec(),
        vec![msg::SIGN_RESPONSE, 0, 0, 0, 0],
        vec![],
    ] {
        let mut s = Session::new(&policy);
        forwarded(&mut s, &[msg::REQUEST_IDENTITIES]);
        assert_eq!(s.reply(&bad), failure, "{bad:?}");
    }
    // An answer nobody asked for.
    let mut s = Session::new(&policy);
    assert_eq!(s.reply(&good), failure);
}

#[test]
fn signing_is_forwarded_only_for_allowed_keys() {
    let policy = only_a();
    let mut s = Session::new(&policy);
    let req = sign_request(KEY_A, b"anything");
    forwarded(&mut s, &req);
    let mut sig = vec![msg::SIGN_RESPONSE];
    put_string(&mut sig, b"signature");
    assert_eq!(s.reply(&sig), sig);
    // An unlisted key is refused without asking the agent.
    assert_eq!(
        s.request(&sign_request(KEY_B, b"anything")),
        Step::Refuse("key not allowed")
    );
    // The agent's refusal passes as failure; so does a bad signature answer.
    forwarded(&mut s, &req);
    assert_eq!(s.reply(&[msg::FAILURE]), [msg::FAILURE]);
    forwarded(&mut s, &req);
    assert_eq!(s.reply(&[msg::SIGN_RESPONSE, 0, 0]), [msg::FAILURE]);
}

#[test]
fn malformed_sign_requests_are_refused() {
    let policy = Policy::default();
    let good = sign_request(KEY_A, b"data");
    let mut trailing = good.clone();
    trailing.push(0);
    let mut huge_key = good.clone();
    huge_key[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    for bad in [good[..good.len() - 1].to_vec(), trailing, huge_key] {
        let mut s = Session::new(&policy);
        assert_eq!(s.request(&bad), Step::Refuse("malformed request"));
    }
}

#[test]
fn key_management_locking_and_other_requests_are_refused() {
    let policy = Policy::default();
    let mut s = Session::new(&policy);
    for kind in [
        msg::ADD_IDENTITY,
        msg::REMOVE_IDENTITY,
        msg::REMOVE_ALL_IDENTITIES,
        msg::ADD_SMARTCARD_KEY,
        msg::REMOVE_SMARTCARD_KEY,
        msg::LOCK,
        msg::UNLOCK,
        msg::ADD_ID_CONSTRAINED,
        msg::ADD_SMARTCARD_KEY_CONSTRAINED,
        // SSH-1 requests, and answers sent as requests.
        1,
        9,
        msg::FAILURE,
        msg::SUCCESS,
        msg::IDENTITIES_ANSWER,
        255,
    ] {
        assert_eq!(
            s.request(&[kind, 0, 0, 0, 0]),
            Step::Refuse("request not allowed"),
            "{kind}"
        );
    }
    assert_eq!(s.request(&[]), Step::Refuse("empty message"));
    // REQUEST_IDENTITIES carries nothing.
    assert_eq!(
        s.request(&[msg::REQUEST_IDENTITIES, 0]),
        Step::Refuse("malformed request")
    );
    let mut query = vec![msg::EXTENSION];
    put_string(&mut query, b"query");
    assert_eq!(s.request(&query), Step::Refuse("extension not allowed"));
}

#[test]
fn session_bind_is_forwarded_and_needs_success() {
    let policy = Policy::default();
    let mut s = Session::new(&policy);
    let b = bind(HOST, b"sid", false);
    forwarded(&mut s, &b);
    assert_eq!(s.reply(&[msg::SUCCESS]), [msg::SUCCESS]);
    forwarded(&mut s, &b);
    assert_eq!(s.reply(&[msg::EXTENSION_FAILURE]), [msg::FAILURE]);
    let mut truncated = b.clone();
    truncated.pop();
    assert_eq!(s.request(&truncated), Step::Refuse("malformed request"));
}

fn hosts_policy() -> Policy {
    Policy {
        keys: None,
        host_keys: Some(vec![HOST.to_vec()]),
    }
}

fn bound_session<'p>(policy: &'p Policy, sid: &[u8]) -> Session<'p> {
    let mut s = Session::new(policy);
    forwarded(&mut s, &bind(HOST, sid, false));
    assert_eq!(s.reply(&[msg::SUCCESS]), [msg::SUCCESS]);
    s
}

#[test]
fn with_hosts_only_logins_to_a_bound_allowed_host_are_signed() {
    let policy = hosts_policy();
    // Unbound: nothing is signed.
    let mut s = Session::new(&policy);
    assert_eq!(
        s.request(&sign_request(KEY_A, &login(b"sid", KEY_A, None))),
        Step::Refuse("no session bound to a host")
    );
    // A bind to another host, or one marked as forwarded, is refused.
    assert_eq!(
        s.request(&bind(OTHER_HOST, b"sid", false)),
        Step::Refuse("host not allowed")
    );
    assert_eq!(
        s.request(&bind(HOST, b"sid", true)),
        Step::Refuse("forwarding the agent onwards is not allowed")
    );
    // A bind the agent rejected (bad signature) binds nothing.
    forwarded(&mut s, &bind(HOST, b"sid", false));
    assert_eq!(s.reply(&[msg::FAILURE]), [msg::FAILURE]);
    assert_eq!(
        s.request(&sign_request(KEY_A, &login(b"sid", KEY_A, None))),
        Step::Refuse("no session bound to a host")
    );

    let mut s = bound_session(&policy, b"sid");
    forwarded(&mut s, &sign_request(KEY_A, &login(b"sid", KEY_A, None)));
    assert_eq!(s.reply(&[msg::FAILURE]), [msg::FAILURE]);
    forwarded(
        &mut s,
        &sign_request(KEY_A, &login(b"sid", KEY_A, Some(HOST))),
    );
    assert_eq!(s.reply(&[msg::FAILURE]), [msg::FAILURE]);
    for (data, why) in [
        (
            login(b"other", KEY_A, None),
            "data to sign is for another session",
        ),
        (login(b"sid", KEY_B, None), "data to sign names another key"),
        (
            login(b"sid", KEY_A, Some(OTHER_HOST)),
            "data to sign names another host",
        ),
        (
            b"\0\0\0\x03sidSSHSIG".to_vec(),
            "data to sign is not a login",
        ),
        (b"arbitrary".to_vec(), "data to sign is not a login"),
    ] {
        assert_eq!(s.request(&sign_request(KEY_A, &data)), Step::Refuse(why));
    }
    let mut trailing = login(b"sid", KEY_A, None);
    trailing.push(0);
    assert_eq!(
        s.request(&sign_request(KEY_A, &trailing)),
        Step::Refuse("data to sign is not a login")
    );
    // One bind per connection.
    assert_eq!(
        s.request(&bind(HOST, b"sid2", false)),
        Step::Refuse("connection already bound")
    );
}

#[test]
fn one_request_at_a_time() {
    let policy = Policy::default();
    let mut s = Session::new(&policy);
    forwarded(&mut s, &[msg::REQUEST_IDENTITIES]);
    assert!(matches!(
        s.request(&[msg::REQUEST_IDENTITIES]),
        Step::Refuse(_)
    ));
}
