//! Listening: vsock (in the guest), a Unix socket or an inherited fd (tests).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

use crate::Agent;

/// `VMADDR_CID_ANY`: accept connections to any of the guest's CIDs.
const VMADDR_CID_ANY: u32 = u32::MAX;

/// Where `serve` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// AF_VSOCK stream on this port, any CID.
    Vsock(u32),
    /// A Unix stream socket bound at this path (replaced if it exists).
    Unix(String),
    /// An already listening stream socket inherited as this fd.
    Fd(RawFd),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad listen address {s:?}: use vsock:PORT, unix:PATH or fd:N");
        match s.split_once(':') {
            Some(("vsock", p)) => p.parse().map(Listen::Vsock).map_err(|_| bad()),
            Some(("unix", p)) if !p.is_empty() => Ok(Listen::Unix(p.to_owned())),
            Some(("fd", n)) => n
                .parse()
                .ok()
                .filter(|n| *n >= 3)
                .map(Listen::Fd)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// A bound, listening socket.
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Binds and listens.
    pub fn bind(at: &Listen) -> io::Result<Listener> {
        let fd = match at {
            Listen::Vsock(port) => {
                let fd = socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                bind(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_ANY, *port))?;
                listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
                fd
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(path);
                OwnedFd::from(UnixListener::bind(path)?)
            }
            Listen::Fd(n) => {
                // SAFETY: F_GETFD only inspects the descriptor table entry;
                // an unused number just fails with EBADF.
                if unsafe { libc::fcntl(*n, libc::F_GETFD) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: the fd is open (checked above) and was handed to us
                // to own; nothing else in this process uses it.
                unsafe { OwnedFd::from_raw_fd(*n) }
            }
        };
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        Ok(Listener { fd })
    }

    /// Accepts connections forever, one thread per connection.
    pub fn serve(&self, agent: &Arc<Agent>) -> io::Result<()> {
        loop {
            let conn = match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that only we hold.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
                Err(e @ (nix::Error::EMFILE | nix::Error::ENFILE | nix::Error::ENOMEM)) => {
                    crate::log!("accept: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let agent = Arc::clone(agent);
            let spawned = std::thread::Builder::new()
                .name("session".into())
                .spawn(move || crate::session::serve(conn, &agent));
            if let Err(e) = spawned {
                crate::log!("cannot start a session thread: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!("vsock:1024".parse(), Ok(Listen::Vsock(1024)));
        assert_eq!("unix:/tmp/a".parse(), Ok(Listen::Unix("/tmp/a".into())));
        assert_eq!("fd:3".parse(), Ok(Listen::Fd(3)));
        assert!("fd:1".parse::<Listen>().is_err());
        assert!("unix:".parse::<Listen>().is_err());
        assert!("tcp:1".parse::<Listen>().is_err());
    }
}
