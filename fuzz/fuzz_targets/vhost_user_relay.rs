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

/// Bytes of a message header (request, flags, payload size).
const HEADER: usize = 12;

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// What the backend should receive from the frontend's byte `stream`, or
/// `None` when the relay should fail. The stream is cut into messages as
/// the relay cuts it: trailing bytes may form whole messages too (a bare
/// 12-byte header is a message without payload).
fn model(stream: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut held: Vec<&[u8]> = Vec::new();
    let mut features_set = false;
    let mut rest = stream;
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return None;
        }
        let size = le32(&rest[8..12]) as usize;
        if size > MAX_PAYLOAD || rest.len() < HEADER + size {
            return None;
        }
        let (message, tail) = rest.split_at(HEADER + size);
        rest = tail;
        let request = le32(message);
        if request == SET_VRING_ENABLE && !features_set {
            if held.len() >= MAX_HELD {
                return None;
            }
            held.push(message);
            continue;
        }
        out.extend_from_slice(message);
        if request == SET_FEATURES && !features_set {
            features_set = true;
            out.extend(held.drain(..).flatten());
        }
    }
    Some(out)
}

fuzz_target!(|input: (Vec<Message>, Vec<u8>)| {
    let (messages, tail) = input;
    let Ok((mut frontend, front)) = UnixStream::pair() else {
        return;
    };
    let Ok((back, mut daemon)) = UnixStream::pair() else {
        return;
    };
    let mut sent: Vec<u8> = messages.iter().flat_map(Message::bytes).collect();
    sent.extend_from_slice(&tail);
    let expected = model(&sent);
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
