//! The guest's end of the forwarded ssh-agent (`agentvm.ssh_agent=PORT`).
//!
//! The agent listens on [`SOCKET`] (mode 0600, owned by the default user)
//! and relays each connection, byte for byte, to vsock port `PORT` of the
//! host (CID 2), where the VMM filters the agent protocol and passes it to
//! the host's ssh-agent; commands get `SSH_AUTH_SOCK` pointing here. This
//! side checks nothing: it is inside the guest, and the guest is not
//! trusted with the decision. It only bounds itself ([`MAX_CONNECTIONS`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// Where commands find the agent (`SSH_AUTH_SOCK`).
pub const SOCKET: &str = "/run/agentvm/ssh-agent.sock";

/// The host's vsock address (`VMADDR_CID_HOST`).
const HOST_CID: u32 = 2;

/// Connections relayed at once; more are closed (the host's relay has a
/// smaller cap of its own).
pub const MAX_CONNECTIONS: usize = 16;

/// Opens a connection to the host's side.
pub type Connect = dyn Fn() -> io::Result<OwnedFd> + Send + Sync;

/// A connection to vsock `port` of the host.
pub fn vsock_to_host(port: u32) -> impl Fn() -> io::Result<OwnedFd> + Send + Sync {
    move || {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, port))?;
        Ok(fd)
    }
}

/// Listens on `path` (for `owner`, `(uid, gid)`, alone) and relays every
/// connection to what `connect` opens, on threads of its own.
pub fn start(path: &Path, owner: Option<(u32, u32)>, connect: Arc<Connect>) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    std::thread::Builder::new()
        .name("ssh-agent".into())
        .spawn(move || serve(&listener, &connect))?;
    Ok(())
}

fn serve(listener: &UnixListener, connect: &Arc<Connect>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(local) = conn else { continue };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let (connect, slot) = (connect.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("ssh-agent-conn".into())
            .spawn(move || {
                match connect() {
                    Ok(host) => splice(OwnedFd::from(local), host),
                    Err(e) => crate::log!("ssh-agent: cannot reach the host: {e}"),
                }
                slot.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Copies both ways until both directions ended.
fn splice(a: OwnedFd, b: OwnedFd) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let back = std::thread::Builder::new()
        .name("ssh-agent-back".into())
        .spawn(move || copy_then_shut(b2, a2));
    copy_then_shut(a, b);
    if let Ok(t) = back {
        let _ = t.join();
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side.
fn copy_then_shut(from: OwnedFd, to: OwnedFd) {
    let (mut r, mut w) = (File::from(from), File::from(to));
    let _ = io::copy(&mut r, &mut w);
    let _ = nix::sys::socket::shutdown(w.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    // The peer of `from` is done too; unblock the other direction's read
    // if the other side never ends on its own.
    let _ = nix::sys::socket::shutdown(r.as_raw_fd(), nix::sys::socket::Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn connections_are_relayed_both_ways_and_the_socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        // The "host": an echo server that answers each message doubled.
        let host = dir.path().join("host.sock");
        let host_listener = UnixListener::bind(&host).unwrap();
        std::thread::spawn(move || {
            for conn in host_listener.incoming() {
                let mut c = conn.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let twice = [&buf[..n], &buf[..n]].concat();
                        c.write_all(&twice).unwrap();
                    }
                });
            }
        });
        let path = dir.path().join("run/ssh-agent.sock");
        let target = host.clone();
        let connect: Arc<Connect> =
            Arc::new(move || Ok(OwnedFd::from(UnixStream::connect(&target)?)));
        start(&path, None, connect).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut clients: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = format!("m{i}");
            c.write_all(msg.as_bytes()).unwrap();
            let mut got = vec![0u8; msg.len() * 2];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, format!("{msg}{msg}").as_bytes());
        }
        // The client's end reaches the host as end of file, and back.
        let mut c = clients.pop().unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn a_host_that_cannot_be_reached_closes_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh-agent.sock");
        let connect: Arc<Connect> = Arc::new(|| Err(io::ErrorKind::ConnectionRefused.into()));
        start(&path, None, connect).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        let _ = c.write_all(b"x");
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
    }
}
