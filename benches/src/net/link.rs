//! One end of a QEMU `-netdev stream` link: Ethernet frames over a Unix
//! stream socket, each preceded by its length (4 bytes, big-endian).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Largest frame on the link (an IP packet of 64 KiB plus Ethernet).
pub const MAX_FRAME: usize = 65536 + 14;
/// Read buffer of a link end.
const READ_BUF: usize = 4 << 20;
/// Bytes a link end queues for writing before it stops taking frames.
pub const HIGH_WATER: usize = 1 << 20;

/// One end of a `-netdev stream` link, non-blocking.
pub struct Link {
    sock: UnixStream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

impl Link {
    /// Makes `sock` non-blocking and wraps it.
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Link {
            sock,
            rbuf: vec![0; READ_BUF],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(HIGH_WATER + MAX_FRAME),
            wpos: 0,
        })
    }

    /// Reads what the socket has; whether anything came. The peer closing
    /// is `UnexpectedEof`.
    pub fn fill(&mut self) -> io::Result<bool> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < MAX_FRAME + 4 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let mut got = false;
        while self.rend < self.rbuf.len() {
            let room = self.rbuf.len() - self.rend;
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.rend += n;
                    got = true;
                    // A Unix stream read takes all there is: a short one
                    // drained the socket (no second read for EAGAIN).
                    if n < room {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// The next whole frame read, if any.
    pub fn frame(&mut self) -> io::Result<Option<&[u8]>> {
        let avail = &self.rbuf[self.rstart..self.rend];
        let Some(&[a, b, c, d]) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let start = self.rstart + 4;
        self.rstart = start + len;
        Ok(Some(&self.rbuf[start..start + len]))
    }

    /// Queues a frame for [`Link::flush`].
    pub fn queue(&mut self, frame: &[u8]) {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.wbuf.extend_from_slice(&len.to_be_bytes());
        self.wbuf.extend_from_slice(frame);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes what the socket takes; whether anything went.
    pub fn flush(&mut self) -> io::Result<bool> {
        let mut wrote = false;
        while self.wpos < self.wbuf.len() {
            let len = self.wbuf.len() - self.wpos;
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wpos += n;
                    wrote = true;
                    // A short write filled the socket.
                    if n < len {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos >= self.wbuf.len() / 2 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(wrote)
    }

    /// Waits until the socket is readable (or writable, with bytes
    /// pending), `other` is readable, or `timeout` passes (`None`: no
    /// limit).
    pub fn wait(&self, other: Option<RawFd>, timeout: Option<Duration>) {
        let out = if self.pending() > 0 { libc::POLLOUT } else { 0 };
        let mut fds = [
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN | out,
                revents: 0,
            },
            libc::pollfd {
                fd: other.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: two valid pollfds (a negative fd is ignored), a valid
        // or null timespec, no signal mask; all live for the call.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 2, ts_ptr, std::ptr::null()) };
    }
}
