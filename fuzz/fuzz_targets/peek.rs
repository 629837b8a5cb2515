//! The first bytes of a guest's TCP flow as the network stack judges them
//! against domain fronting: a TLS ClientHello's server name (port 443) and
//! an HTTP/1 request's `Host` (port 80). The first input byte picks the
//! parser. A name found is short ASCII, and bytes after the whole first
//! message never change what it says.
#![no_main]

use agentvm_net::peek::{http, tls, Peeked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, stream)) = data.split_first() else {
        return;
    };
    let parse = if which & 1 == 0 {
        tls::client_hello_sni
    } else {
        http::request_host
    };
    let peeked = parse(stream);
    if let Peeked::Name(Some(name)) = &peeked {
        assert!(name.len() <= 254, "{name:?}");
        assert!(name.is_ascii(), "{name:?}");
    }
    if let Peeked::Name(_) = &peeked {
        let mut longer = stream.to_vec();
        longer.extend_from_slice(
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: other.example\r\n\r\n\x16\x03\x01",
        );
        assert_eq!(parse(&longer), peeked);
    }
});
