//! The filter between a hostile guest and the host's ssh-agent
//! (`crates/cli/src/ssh_agent/`, its `wire` and `filter` modules compiled
//! in as they are). The input is a policy byte, then a stream of framed
//! messages read exactly as the relay reads them, alternately the guest's
//! requests and, for each forwarded one, the agent's answer. Checked:
//! only listing, signing and `session-bind` reach the agent, and exactly
//! the bytes judged; a signature with an unlisted key never does; the
//! guest never sees a key outside the allowlist, and gets only answers of
//! the agent protocol.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/cli/src/ssh_agent/wire.rs"]
mod wire;

#[allow(dead_code)]
#[path = "../../crates/cli/src/ssh_agent/filter.rs"]
mod filter;

use filter::{Policy, Session, Step};
use wire::{msg, Reader};

/// Keys the policies name: a key blob the inputs can also spell.
const ALLOWED_KEY: &[u8] = b"allowed-key";
const HOST_KEY: &[u8] = b"host-key";

fn policy(byte: u8) -> Policy {
    Policy {
        keys: (byte & 1 != 0).then(|| vec![wire::key_digest(ALLOWED_KEY)]),
        host_keys: (byte & 2 != 0).then(|| vec![HOST_KEY.to_vec()]),
    }
}

/// The key blobs in an identities answer the guest receives.
fn listed_keys(answer: &[u8]) -> Vec<Vec<u8>> {
    let mut r = Reader::new(answer);
    assert_eq!(r.u8(), Ok(msg::IDENTITIES_ANSWER));
    let n = r.u32().expect("a count");
    let keys = (0..n)
        .map(|_| {
            let key = r.string().expect("a key").to_vec();
            r.string().expect("a comment");
            key
        })
        .collect();
    r.finish().expect("nothing after the keys");
    keys
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, mut rest)) = data.split_first() else {
        return;
    };
    let policy = policy(which);
    let mut session = Session::new(&policy);
    // As many exchanges as the input holds; a frame the relay would not
    // read ends the connection, as in the relay.
    while let Ok(Some(request)) = wire::read_message(&mut rest) {
        assert!(!request.is_empty() && request.len() <= wire::MAX_MESSAGE);
        let answer = match session.request(&request) {
            Step::Refuse(_) => continue,
            Step::Forward(body) => {
                assert_eq!(body, request, "the judged bytes are the forwarded ones");
                let kind = body[0];
                assert!(
                    [msg::REQUEST_IDENTITIES, msg::SIGN_REQUEST, msg::EXTENSION].contains(&kind),
                    "request type {kind} reached the agent"
                );
                if kind == msg::SIGN_REQUEST && policy.keys.is_some() {
                    let key = Reader::new(&body[1..]).string().expect("a parsed key");
                    assert_eq!(key, ALLOWED_KEY, "an unlisted key reached the agent");
                }
                let Ok(Some(reply)) = wire::read_message(&mut rest) else {
                    return;
                };
                session.reply(&reply)
            }
        };
        match answer.first().copied() {
            Some(msg::FAILURE | msg::SUCCESS | msg::SIGN_RESPONSE) => {}
            Some(msg::IDENTITIES_ANSWER) => {
                if policy.keys.is_some() {
                    for key in listed_keys(&answer) {
                        assert_eq!(key, ALLOWED_KEY, "an unlisted key was shown");
                    }
                }
            }
            other => panic!("answer type {other:?} reached the guest"),
        }
        assert!(answer.len() <= wire::MAX_MESSAGE);
    }
});
