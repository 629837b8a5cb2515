//! The VMM's control socket: any bytes a local client writes, served by
//! the CLI's own `serve_connection` over a socket pair. The source file is
//! compiled in as it is (the CLI has no library target); the handler
//! checks that every policy a request carries survives its own encoding.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../../crates/cli/src/lifecycle/control.rs"]
mod control;

use control::{Handler, Request};

struct Check;

impl Handler for Check {
    fn handle(&self, request: Request) -> Result<Value, String> {
        let line = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        let again: Request = serde_json::from_str(&line).expect("an encoded request parses");
        assert_eq!(again, request, "{line}");
        match request {
            Request::Reclaim => Err("no agent".into()),
            other => Ok(json!({ "op": format!("{other:?}") })),
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
    // One JSON reply per request line, each saying whether it worked.
    for line in replies.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let reply: Value = serde_json::from_slice(line).expect("replies are JSON");
        assert!(reply["ok"].is_boolean(), "{reply}");
    }
});
