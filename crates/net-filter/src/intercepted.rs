//! An intercepted TCP flow's sockets as the two pipes of its
//! [`InterceptFlow`]: the smoltcp socket toward the guest, the host socket
//! toward the upstream. [`crate::tcp`] pumps a flow here instead of
//! splicing its bytes once [`crate::intercept`] took it over.
//!
//! Back-pressure is the pipes': a full smoltcp send buffer or host socket
//! is `WouldBlock`, and the flow stops reading the other side (see
//! [`InterceptFlow::pump`]).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4};

use mio::net::TcpStream;
use smoltcp::socket::tcp;

use crate::budget::Charge;
use crate::intercept::{FlowError, HttpEvent, InterceptFlow};

/// A flow taken over by interception.
pub struct Intercepted {
    flow: InterceptFlow,
    /// The bound name it was intercepted for.
    host: String,
    /// Its destination as the guest addressed it.
    remote: SocketAddrV4,
    /// The flow's interception buffers in the budget.
    _charge: Charge,
    /// The flow failed: the guest was reset, nothing more moves.
    failed: bool,
}

/// What an intercepted flow did, for the audit log.
#[derive(Debug)]
pub enum Report {
    /// A secret was substituted into a request to `host`.
    Substituted {
        /// The bound name.
        host: String,
        /// The destination.
        remote: SocketAddrV4,
        /// What was substituted.
        event: HttpEvent,
    },
    /// The flow failed and was reset.
    Failed {
        /// The bound name.
        host: String,
        /// The destination.
        remote: SocketAddrV4,
        /// Why.
        error: FlowError,
    },
}

impl Intercepted {
    /// `flow` to `host` at `remote`, its buffers charged with `charge`.
    pub fn new(flow: InterceptFlow, host: String, remote: SocketAddrV4, charge: Charge) -> Self {
        Intercepted {
            flow,
            host,
            remote,
            _charge: charge,
            failed: false,
        }
    }

    /// Moves what both sides have room for; true if anything moved. The
    /// guest's FIN becomes a host-side shutdown (and `guest_eof`), the
    /// upstream's end closes the guest's side (and `host_eof`), once what
    /// came before reached the other side. A failure resets the guest.
    #[allow(clippy::too_many_arguments)]
    pub fn pump(
        &mut self,
        socket: &mut tcp::Socket<'_>,
        host: &mut TcpStream,
        host_readable: &mut bool,
        host_writable: &mut bool,
        guest_eof: &mut bool,
        host_eof: &mut bool,
        reports: &mut Vec<Report>,
    ) -> bool {
        // A failed flow, or one aborted since (a new policy refused it):
        // nothing more moves, it is reaped with its socket.
        if self.failed || socket.state() == tcp::State::Closed {
            return false;
        }
        let mut guest_pipe = GuestPipe(socket);
        let mut host_pipe = HostPipe {
            stream: host,
            readable: host_readable,
            writable: host_writable,
        };
        let result = self.flow.pump(&mut guest_pipe, &mut host_pipe);
        let host_stream = host_pipe.stream;
        for event in self.flow.take_events() {
            reports.push(Report::Substituted {
                host: self.host.clone(),
                remote: self.remote,
                event,
            });
        }
        let pumped = match result {
            Ok(p) => p,
            Err(error) => {
                self.failed = true;
                socket.abort();
                let _ = host_stream.shutdown(Shutdown::Both);
                reports.push(Report::Failed {
                    host: self.host.clone(),
                    remote: self.remote,
                    error,
                });
                return true;
            }
        };
        let mut progress = pumped.progress;
        if pumped.close_upstream && !*guest_eof {
            *guest_eof = true;
            let _ = host_stream.shutdown(Shutdown::Write);
            progress = true;
        }
        if pumped.close_guest && !*host_eof {
            *host_eof = true;
            socket.close();
            progress = true;
        }
        progress
    }
}

/// The guest's side: the smoltcp socket.
struct GuestPipe<'a, 'b>(&'a mut tcp::Socket<'b>);

impl Read for GuestPipe<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.can_recv() {
            return self.0.recv_slice(buf).map_err(io::Error::other);
        }
        match self.0.may_recv() {
            true => Err(io::ErrorKind::WouldBlock.into()),
            // The guest's FIN, everything before it read.
            false => Ok(0),
        }
    }
}

impl Write for GuestPipe<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.0.may_send() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        match self.0.send_slice(buf) {
            Ok(0) if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The upstream's side: the host socket, with what epoll said of it.
struct HostPipe<'a> {
    stream: &'a mut TcpStream,
    readable: &'a mut bool,
    writable: &'a mut bool,
}

impl Read for HostPipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !*self.readable {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let read = self.stream.read(buf);
        if matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            *self.readable = false;
        }
        read
    }
}

impl Write for HostPipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !*self.writable {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let written = self.stream.write(buf);
        if matches!(&written, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            *self.writable = false;
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
