//! The host side of the VMM's hybrid vsock: a Unix socket plus a one-line
//! handshake (the Firecracker form).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::ClientError;

/// Longest reply line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 64;

/// Connects to the VMM's vsock Unix socket at `uds_path` and asks for guest
/// port `port`: writes `CONNECT <port>\n`, expects `OK <host port>\n`.
///
/// The reply is read one byte at a time so that nothing after the newline
/// (the agent's first frame) is consumed: the stream returned is positioned
/// exactly at the start of the guest's data.
pub fn connect_vsock(uds_path: impl AsRef<Path>, port: u32) -> Result<UnixStream, ClientError> {
    connect_vsock_within(uds_path, port, None)
}

/// [`connect_vsock`], giving up on the VMM's reply after `timeout` (a VMM
/// whose guest has not yet set up its vsock driver holds the connection).
pub fn connect_vsock_within(
    uds_path: impl AsRef<Path>,
    port: u32,
    timeout: Option<Duration>,
) -> Result<UnixStream, ClientError> {
    let path = uds_path.as_ref();
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    if timeout.is_some() {
        stream
            .set_read_timeout(timeout)
            .map_err(|e| ClientError::Handshake(format!("setting a timeout: {e}")))?;
    }
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| ClientError::Handshake(format!("sending CONNECT: {e}")))?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(ClientError::Handshake(format!(
                    "the VMM closed the connection (is anything listening on guest port {port}?)"
                )))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < MAX_REPLY => line.push(byte[0]),
            Ok(_) => return Err(ClientError::Handshake("reply line too long".into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Handshake(format!("reading reply: {e}"))),
        }
    }
    let reply = String::from_utf8_lossy(&line);
    match reply.strip_prefix("OK ") {
        Some(n) if n.trim().parse::<u32>().is_ok() => {
            stream
                .set_read_timeout(None)
                .map_err(|e| ClientError::Handshake(format!("clearing the timeout: {e}")))?;
            Ok(stream)
        }
        _ => Err(ClientError::Handshake(format!(
            "unexpected reply {reply:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(reply: &'static [u8]) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("v.sock")).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = vec![0u8; 13];
            s.read_exact(&mut got).unwrap();
            s.write_all(reply).unwrap();
            got
        });
        (dir, t)
    }

    #[test]
    fn handshake_ok_leaves_following_bytes_unread() {
        let (dir, t) = serve_once(b"OK 1073741824\nHELLO");
        let mut s = connect_vsock(dir.path().join("v.sock"), 1024).unwrap();
        assert_eq!(t.join().unwrap(), b"CONNECT 1024\n");
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"HELLO");
    }

    #[test]
    fn handshake_refused() {
        let (dir, t) = serve_once(b"");
        let err = connect_vsock(dir.path().join("v.sock"), 1024).unwrap_err();
        t.join().unwrap();
        assert!(matches!(err, ClientError::Handshake(_)), "{err}");
    }

    #[test]
    fn handshake_garbage() {
        let (dir, t) = serve_once(b"NO\n");
        let err = connect_vsock(dir.path().join("v.sock"), 1024).unwrap_err();
        t.join().unwrap();
        assert!(err.to_string().contains("unexpected reply"), "{err}");
    }

    #[test]
    fn missing_socket() {
        let err = connect_vsock("/nonexistent/agentvm.sock", 1024).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }));
    }
}
