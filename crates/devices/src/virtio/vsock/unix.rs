//! The few Unix socket calls std does not offer: a connect that never
//! blocks, a send that never raises SIGPIPE, and a look at whether the
//! peer is gone entirely.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// Connects a non-blocking stream socket to `path`. A listener whose
/// backlog is full counts as refusing (the worker thread must not wait).
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // Rejects empty, too long and NUL-holding paths.
    let addr = SockAddr::unix(path)?;
    if path.as_os_str().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty socket path",
        ));
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    socket.connect(&addr)?;
    Ok(UnixStream::from(OwnedFd::from(socket)))
}

/// Sends without blocking and without SIGPIPE (a closed peer is EPIPE).
pub fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    let socket = SockRef::from(stream);
    loop {
        match socket.send_with_flags(buf, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Whether both directions of the socket are shut: the peer closed it
/// (rather than only shutting its sending side).
pub fn peer_gone(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Read;
    use std::net::Shutdown;
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn connects_sends_and_sees_the_peer_go() {
        let dir = std::env::temp_dir().join(format!("agentvm-unix-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("l");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let ours = connect_nonblocking(&path).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        assert_eq!(send(&ours, b"hi").unwrap(), 2);
        let mut buf = [0u8; 2];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");

        theirs.shutdown(Shutdown::Write).unwrap();
        assert!(!peer_gone(&ours), "a half-close is not gone");
        drop(theirs);
        assert!(peer_gone(&ours));
        assert_eq!(
            send(&ours, b"x").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );

        drop(listener);
        std::fs::remove_file(&path).unwrap();
        assert!(connect_nonblocking(&path).is_err());
        assert!(connect_nonblocking(&dir.join("x".repeat(200))).is_err());
        let _ = std::fs::remove_dir(&dir);
    }
}
