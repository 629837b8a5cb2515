//! A relay between a vhost-user frontend and the `vhost-user-backend`
//! daemon that holds back VHOST_USER_SET_VRING_ENABLE until the frontend
//! has sent VHOST_USER_SET_FEATURES.
//!
//! Why: QEMU's virtio-net (7.2 and later) enables its vrings when the
//! device is created or reset — before it sets the features — and the
//! vhost crate refuses SET_VRING_ENABLE until PROTOCOL_FEATURES is among
//! the acknowledged features, dropping the connection. Held messages are
//! replayed, in order, right after SET_FEATURES, which is when the
//! specification lets them take effect anyway. Everything else, file
//! descriptors included, passes through unchanged; replies go back as a
//! byte stream (the requests this backend serves carry no descriptors in
//! replies). REPLY_ACK is not offered, so no held message awaits an answer.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::thread::{self, DeviceThread};

/// vhost-user message header: request, flags, payload size (all le32).
const HEADER: usize = 12;
/// VHOST_USER_SET_FEATURES.
const SET_FEATURES: u32 = 2;
/// VHOST_USER_SET_VRING_ENABLE.
const SET_VRING_ENABLE: u32 = 18;
/// Descriptors one message may carry (the protocol's limit).
const MAX_FDS: usize = 8;
/// The longest payload accepted (the largest the protocol defines is a
/// memory table of 8 regions or a 256-byte config space).
const MAX_PAYLOAD: usize = 4096;
/// Messages held before SET_FEATURES, at most (one per vring and state
/// change is all a frontend sends).
const MAX_HELD: usize = 64;

/// Relays `front` (the frontend) to `back` (the daemon) until the
/// frontend hangs up; then the daemon's side is shut so it ends too.
pub fn relay(front: UnixStream, back: UnixStream) -> io::Result<()> {
    let mut replies_in = back.try_clone()?;
    let mut replies_out = front.try_clone()?;
    let replies = thread::spawn(
        "vhost-user-replies",
        DeviceThread::VhostUserReplies,
        move || {
            let _ = io::copy(&mut replies_in, &mut replies_out);
            let _ = replies_out.shutdown(Shutdown::Both);
        },
    )?;
    let result = forward_requests(&front, &back);
    let _ = back.shutdown(Shutdown::Both);
    let _ = front.shutdown(Shutdown::Both);
    let _ = replies.join();
    result
}

/// One message read from the frontend.
struct Message {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        le32(&self.bytes[0..4])
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn forward_requests(front: &UnixStream, back: &UnixStream) -> io::Result<()> {
    let mut held: Vec<Message> = Vec::new();
    let mut features_set = false;
    while let Some(message) = read_message(front)? {
        let request = message.request();
        if request == SET_VRING_ENABLE && !features_set {
            if held.len() >= MAX_HELD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "too many SET_VRING_ENABLE before SET_FEATURES",
                ));
            }
            held.push(message);
            continue;
        }
        write_message(back, &message)?;
        if request == SET_FEATURES && !features_set {
            features_set = true;
            for message in held.drain(..) {
                write_message(back, &message)?;
            }
        }
    }
    Ok(())
}

/// The next message, or `None` when the frontend hung up.
fn read_message(front: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER];
    let mut raw = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER,
    }];
    let (n, nfds) = loop {
        // SAFETY: the iovec points into `header`, which outlives the call;
        // every descriptor received is taken into an OwnedFd below, so each
        // is closed exactly once.
        match unsafe { front.recv_with_fds(&mut iov, &mut raw) } {
            Ok(got) => break got,
            // A signal before anything arrived: nothing was received.
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    let fds: Vec<OwnedFd> = raw[..nfds.min(MAX_FDS)]
        .iter()
        .filter(|fd| **fd >= 0)
        // SAFETY: the kernel just installed these descriptors for us and
        // nothing else refers to them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    let mut front_reader = front;
    front_reader.read_exact(&mut header[n..])?;
    let size = le32(&header[8..12]) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes"),
        ));
    }
    let mut bytes = header.to_vec();
    bytes.resize(HEADER + size, 0);
    front_reader.read_exact(&mut bytes[HEADER..])?;
    Ok(Some(Message { bytes, fds }))
}

fn write_message(back: &UnixStream, message: &Message) -> io::Result<()> {
    let fds: Vec<RawFd> = message.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = loop {
        match back.send_with_fds(&[&message.bytes[..]], &fds) {
            Ok(sent) => break sent,
            // A signal before anything was sent: send it all again.
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    let mut back_writer = back;
    back_writer.write_all(&message.bytes[sent..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn read_all(mut s: UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn vring_enable_waits_for_set_features_and_the_rest_passes_in_order() {
        let (mut frontend, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(front, back));
        let enable = message(SET_VRING_ENABLE, &[0, 0, 0, 0, 1, 0, 0, 0]);
        let owner = message(3, &[]);
        let features = message(SET_FEATURES, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let later_enable = message(SET_VRING_ENABLE, &[1, 0, 0, 0, 1, 0, 0, 0]);
        for m in [&owner, &enable, &features, &later_enable] {
            frontend.write_all(m).unwrap();
        }
        drop(frontend);
        relay.join().unwrap().unwrap();
        let expected: Vec<u8> = [owner, features, enable, later_enable].concat();
        assert_eq!(read_all(daemon), expected);
    }

    #[test]
    fn descriptors_travel_with_their_message() {
        let (frontend, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(front, back));
        let file = tempfile::tempfile().unwrap();
        let kick = message(12, &[0; 8]);
        frontend
            .send_with_fds(&[&kick[..]], &[file.as_raw_fd()])
            .unwrap();
        let mut got = [0u8; 20];
        let mut raw = [-1 as RawFd; 2];
        let mut iov = [libc::iovec {
            iov_base: got.as_mut_ptr().cast(),
            iov_len: got.len(),
        }];
        // SAFETY: as in read_message; the received fd is closed below.
        let (n, nfds) = unsafe { daemon.recv_with_fds(&mut iov, &mut raw) }.unwrap();
        assert_eq!((n, nfds), (20, 1));
        assert_eq!(&got[..], &kick[..]);
        // SAFETY: received just now, owned by nobody else.
        drop(unsafe { OwnedFd::from_raw_fd(raw[0]) });
        drop(frontend);
        relay.join().unwrap().unwrap();
    }

    extern "C" fn ignore(_: libc::c_int) {}

    /// Found by the vhost_user_relay fuzz target: a signal that interrupts
    /// the relay's wait for the frontend (a handler installed without
    /// SA_RESTART, as libFuzzer's timer is) ended the relay with EINTR,
    /// dropping the frontend's connection.
    #[test]
    fn a_signal_does_not_end_the_relay() {
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler does nothing, so it is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
        let (mut frontend, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(front, back));
        // Let it block in recvmsg, then interrupt it there.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let thread = relay.as_pthread_t();
        // SAFETY: the relay thread has not been joined, so its pthread_t
        // is live.
        let sent = unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        assert_eq!(sent, 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let owner = message(3, &[]);
        frontend.write_all(&owner).unwrap();
        drop(frontend);
        relay.join().unwrap().unwrap();
        assert_eq!(read_all(daemon), owner);
    }

    #[test]
    fn oversized_messages_end_the_relay() {
        let (mut frontend, front) = UnixStream::pair().unwrap();
        let (back, _daemon) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(front, back));
        let mut m = message(5, &[]);
        m[8..12].copy_from_slice(&(1u32 << 30).to_le_bytes());
        frontend.write_all(&m).unwrap();
        assert!(relay.join().unwrap().is_err());
    }

    /// Found by the fuzzer (its model took these bytes for a cut-off
    /// message): a bare header with any request and flags and a zero size
    /// is a whole message, relayed as it is; bytes short of a header end
    /// the relay with an error.
    #[test]
    fn a_bare_header_is_a_whole_message_and_a_partial_one_an_error() {
        let bare = [73, 112, 255, 255, 255, 255, 73, 255, 0, 0, 0, 0];
        let (mut frontend, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay_thread = std::thread::spawn(move || relay(front, back));
        frontend.write_all(&bare).unwrap();
        drop(frontend);
        relay_thread.join().unwrap().unwrap();
        assert_eq!(read_all(daemon), bare);

        let (mut frontend, front) = UnixStream::pair().unwrap();
        let (back, _daemon) = UnixStream::pair().unwrap();
        let relay_thread = std::thread::spawn(move || relay(front, back));
        frontend.write_all(&bare[..11]).unwrap();
        drop(frontend);
        assert!(relay_thread.join().unwrap().is_err());
    }
}
