//! The VMM's control socket: any bytes a local client writes, served by
//! the CLI's own `serve_connection` over a socket pair. The control module
//! is compiled in as it is (the CLI has no library target); the handler
//! checks that every request survives its own encoding, and every line
//! the server writes must be a reply of this protocol version.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../crates/cli/src/lifecycle/control/mod.rs"]
mod control;

use control::protocol::{decode, encode};
use control::{Handler, Reply, Request};

struct Check;

impl Handler for Check {
    fn handle(&self, request: Request) -> Result<Reply, String> {
        let line = encode(&request).map_err(|e| e.to_string())?;
        let again: Request = decode(&line).expect("an encoded request decodes");
        assert_eq!(again, request, "{}", String::from_utf8_lossy(&line));
        match request {
            Request::Reclaim => Err("no agent".into()),
            Request::Balloon { target_mib } => Ok(Reply::Balloon { target_mib }),
            _ => Ok(Reply::Stop),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((client, server)) = UnixStream::pair() else {
        return;
    };
    let reader = {
        let Ok(mut client) = client.try_clone() else {
            return;
        };
        std::thread::spawn(move || {
            let mut replies = Vec::new();
            let _ = client.read_to_end(&mut replies);
            replies
        })
    };
    let mut writer = client;
    if writer.write_all(data).is_err() || writer.shutdown(Shutdown::Write).is_err() {
        return;
    }
    control::serve_connection(server, &Check);
    let replies = reader.join().expect("the reader ends");
    // One reply per request line, each of this version and well formed.
    for line in replies.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if let Err(e) = decode::<Reply>(line) {
            panic!("{e:?}: {}", String::from_utf8_lossy(line));
        }
    }
});
