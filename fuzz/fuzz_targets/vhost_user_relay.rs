//! The vhost-user relay between a frontend (QEMU, cloud-hypervisor) and
//! the `agentvm vhost-user` backend: any message sequence the frontend
//! sends, checked against a model of the relay (every message passes
//! through unchanged and in order, except SET_VRING_ENABLE before the
//! first SET_FEATURES, which waits for it).
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use agentvm_devices::vhost_user::relay::relay;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_VRING_ENABLE: u32 = 18;
/// The relay's limits (see relay.rs): a larger payload or more held
/// messages end it with an error.
const MAX_PAYLOAD: usize = 4096;
const MAX_HELD: usize = 64;

#[derive(Debug, Arbitrary)]
enum Request {
    SetFeatures,
    SetVringEnable,
    SetOwner,
    Other(u32),
}

#[derive(Debug, Arbitrary)]
struct Message {
    request: Request,
    flags: u32,
    payload: Vec<u8>,
}

impl Message {
    fn request(&self) -> u32 {
        match self.request {
            Request::SetFeatures => SET_FEATURES,
            Request::SetVringEnable => SET_VRING_ENABLE,
            Request::SetOwner => SET_OWNER,
            Request::Other(r) => r,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + self.payload.len());
        b.extend_from_slice(&self.request().to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.payload);
        b
    }
}

/// What the backend should receive, or `None` when the relay should fail.
fn model(messages: &[Message], tail: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut held = Vec::new();
    let mut features_set = false;
    for m in messages {
        if m.payload.len() > MAX_PAYLOAD {
            return None;
        }
        let request = m.request();
        if request == SET_VRING_ENABLE && !features_set {
            if held.len() >= MAX_HELD {
                return None;
            }
            held.push(m.bytes());
            continue;
        }
        out.extend(m.bytes());
        if request == SET_FEATURES && !features_set {
            features_set = true;
            out.extend(held.drain(..).flatten());
        }
    }
    // Trailing bytes short of a whole message end the relay with an error.
    tail.is_empty().then_some(out)
}

fuzz_target!(|input: (Vec<Message>, Vec<u8>)| {
    let (messages, tail) = input;
    let Ok((mut frontend, front)) = UnixStream::pair() else {
        return;
    };
    let Ok((back, mut daemon)) = UnixStream::pair() else {
        return;
    };
    let expected = model(&messages, &tail);
    let mut sent: Vec<u8> = messages.iter().flat_map(Message::bytes).collect();
    sent.extend_from_slice(&tail);
    let writer = std::thread::spawn(move || {
        // The relay may stop reading (an error): the rest is refused.
        let _ = frontend.write_all(&sent);
    });
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = daemon.read_to_end(&mut got);
        got
    });
    let result = relay(front, back);
    let _ = writer.join();
    let got = reader.join().expect("the reader ends");
    match expected {
        Some(expected) => {
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(got, expected);
        }
        None => assert!(result.is_err()),
    }
});
