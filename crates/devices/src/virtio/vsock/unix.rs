//! The few Unix socket calls std does not offer: a connect that never
//! blocks, a send that never raises SIGPIPE, and a look at whether the
//! peer is gone entirely.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects a non-blocking stream socket to `path`. A listener whose
/// backlog is full counts as refusing (the worker thread must not wait).
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    // One byte stays zero: the path's terminator.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or empty",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, initialised sockaddr_un of `len` bytes and
    // `fd` a live socket.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Sends without blocking and without SIGPIPE (a closed peer is EPIPE).
pub fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a live slice of `buf.len()` bytes that send(2)
        // only reads; the fd belongs to `stream`.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether both directions of the socket are shut: the peer closed it
/// (rather than only shutting its sending side).
pub fn peer_gone(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & libc::POLLHUP != 0
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
