//! `rig-vsock`: the two ends of a vsock stream for programs that only
//! speak stdio, so the exec benchmark can run SSH over the same transport
//! as the agent (the rig's L2 has no network device).
//!
//! - `rig-vsock listen PORT -- PROGRAM ARGS...` (in the guest): accepts
//!   vsock connections on PORT and serves each with PROGRAM (inetd style:
//!   `dropbear -i`). PROGRAM's stdin and stdout are a loopback TCP
//!   connection relayed to the vsock stream, because inetd servers look
//!   their peer's IP address up and fail on a vsock socket.
//! - `rig-vsock connect UDS PORT` (on the VMM's side): connects to the
//!   VMM's hybrid vsock socket, sends `CONNECT PORT`, and relays stdin and
//!   stdout (an ssh `ProxyCommand`, dbclient's `-J`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};

fn usage() -> String {
    "usage: rig-vsock listen PORT -- PROGRAM ARGS... | rig-vsock connect UDS PORT".into()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["listen", port, "--", ref prog @ ..] if !prog.is_empty() => port
            .parse()
            .map_err(|_| format!("bad port {port}"))
            .and_then(|p| listen(p, prog).map_err(|e| e.to_string())),
        ["connect", uds, port] => port
            .parse()
            .map_err(|_| format!("bad port {port}"))
            .and_then(|p| connect(uds, p).map_err(|e| e.to_string())),
        _ => Err(usage()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rig-vsock: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A listening `AF_VSOCK` stream socket on `port`, any CID.
fn vsock_listener(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes that outlives the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a socket this function owns.
    if unsafe { libc::listen(fd.as_raw_fd(), 64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn listen(port: u32, prog: &[&str]) -> io::Result<()> {
    let listener = vsock_listener(port)?;
    // Children are never waited for: let the kernel reap them.
    // SAFETY: setting SIGCHLD's disposition to SIG_IGN installs no handler.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    loop {
        // SAFETY: accept4(2) on a listening socket this function owns; the
        // peer address is not asked for.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: `fd` is a new connection this loop owns.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Err(e) = serve(conn, prog) {
            eprintln!("rig-vsock: cannot serve a connection with {}: {e}", prog[0]);
        }
    }
}

/// Runs `prog` on one end of a loopback TCP connection and relays the
/// other end to `conn`, both ways, on two threads.
fn serve(conn: OwnedFd, prog: &[&str]) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let near = TcpStream::connect(listener.local_addr()?)?;
    let (far, _) = listener.accept()?;
    near.set_nodelay(true)?;
    far.set_nodelay(true)?;
    let far = OwnedFd::from(far);
    Command::new(prog[0])
        .args(&prog[1..])
        .stdin(Stdio::from(far.try_clone()?))
        .stdout(Stdio::from(far))
        .spawn()?;
    let vsock = File::from(conn);
    let (mut from_guest, mut to_guest) = (vsock.try_clone()?, vsock);
    let (mut from_prog, mut to_prog) = (near.try_clone()?, near);
    std::thread::spawn(move || {
        let _ = io::copy(&mut from_guest, &mut to_prog);
        let _ = to_prog.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = io::copy(&mut from_prog, &mut to_guest);
        // SAFETY: shutdown(2) on the vsock connection this thread owns.
        unsafe { libc::shutdown(to_guest.as_raw_fd(), libc::SHUT_WR) };
    });
    Ok(())
}

/// Reads the handshake answer one byte at a time, so no payload byte is
/// consumed with it.
fn read_line(s: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        if s.read(&mut b)? == 0 {
            break;
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
    Err(io::Error::other(format!(
        "no handshake answer (got {:?})",
        String::from_utf8_lossy(&line)
    )))
}

fn connect(uds: &str, port: u32) -> io::Result<()> {
    let mut s = UnixStream::connect(uds)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {uds}: {e}")))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let answer = read_line(&mut s)?;
    if !answer.starts_with("OK ") {
        return Err(io::Error::other(format!(
            "vsock port {port} refused: {answer:?}"
        )));
    }
    let mut to_guest = s.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut to_guest);
        let _ = to_guest.shutdown(std::net::Shutdown::Write);
    });
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}
