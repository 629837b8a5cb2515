//! The VMM's side of the control socket: reads request lines, bounded,
//! and writes one reply line for each.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::protocol::{decode, encode, DecodeError, ErrorKind, Reply, Request};
use super::protocol::{MAX_REQUEST, VERSION};

/// Requests one connection may send; the VMM answers the next with an
/// error and closes it.
pub const MAX_REQUESTS: usize = 1024;
/// How long the VMM waits for a client to send its next request or to
/// take its reply before it closes the connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the VMM answers a request with.
pub trait Handler: Send + Sync {
    /// Answers `request`: the reply of its op, or why it failed (an error
    /// reply of kind [`ErrorKind::Failed`]).
    fn handle(&self, request: Request) -> Result<Reply, String>;
}

/// Serves one connection until the peer closes it, stays silent for
/// [`IDLE_TIMEOUT`], or has sent [`MAX_REQUESTS`].
pub fn serve_connection(stream: UnixStream, handler: &dyn Handler) {
    serve(stream, handler, IDLE_TIMEOUT);
}

/// [`serve_connection`] with the idle timeout `idle`.
pub(super) fn serve(stream: UnixStream, handler: &dyn Handler, idle: Duration) {
    if stream.set_read_timeout(Some(idle)).is_err() || stream.set_write_timeout(Some(idle)).is_err()
    {
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    for served in 1.. {
        let mut line = Vec::new();
        let n = match (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let too_long = n > MAX_REQUEST && !line.ends_with(b"\n");
        if too_long && skip_line(&mut reader).is_err() {
            return;
        }
        let last = served > MAX_REQUESTS;
        let reply = if last {
            Reply::error(
                ErrorKind::TooManyRequests,
                format!("more than {MAX_REQUESTS} requests on one connection; connect again"),
            )
        } else if too_long {
            Reply::error(
                ErrorKind::BadRequest,
                format!("request longer than {MAX_REQUEST} bytes"),
            )
        } else {
            answer(&line, handler)
        };
        if !send(&mut writer, &reply) || last {
            return;
        }
    }
}

/// The reply to one request line.
fn answer(line: &[u8], handler: &dyn Handler) -> Reply {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Reply::error(ErrorKind::BadRequest, "empty request");
    }
    match decode::<Request>(line) {
        Ok(request) => handler
            .handle(request)
            .unwrap_or_else(|why| Reply::error(ErrorKind::Failed, why)),
        Err(DecodeError::OtherVersion(theirs)) => Reply::error(
            ErrorKind::Version,
            format!(
                "the request is control protocol {theirs} and the VM's agentvm speaks \
                 {VERSION}: the VM was started by a different agentvm version; run `agentvm \
                 down` and `agentvm up`"
            ),
        ),
        Err(DecodeError::NotJson(e) | DecodeError::Invalid(e)) => {
            Reply::error(ErrorKind::BadRequest, format!("bad request: {e}"))
        }
    }
}

/// Writes `reply` (or, when it cannot be encoded, an error saying so);
/// false when the connection is gone.
fn send(writer: &mut UnixStream, reply: &Reply) -> bool {
    let line = encode(reply).or_else(|e| {
        encode(&Reply::error(
            ErrorKind::Failed,
            format!("cannot encode the reply: {e}"),
        ))
    });
    line.is_ok_and(|line| writer.write_all(&line).is_ok())
}

/// Reads and drops the rest of an over-long line.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}
