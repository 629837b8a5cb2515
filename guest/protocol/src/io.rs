//! Blocking frame I/O over any [`Read`] / [`Write`].

use std::io::{self, Read, Write};

use crate::frame::{decode_header, decode_payload, DecodeError, EncodeError, Frame};
use crate::HEADER_LEN;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed.
    #[error("read failed")]
    Io(#[source] io::Error),
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The peer sent a malformed frame.
    #[error("malformed frame")]
    Decode(#[source] DecodeError),
}

/// Why writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The stream failed.
    #[error("write failed")]
    Io(#[source] io::Error),
    /// The frame cannot be encoded.
    #[error("cannot encode frame")]
    Encode(#[source] EncodeError),
}

/// Reads frames one at a time, reusing one buffer.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next frame, or `Ok(None)` at a clean end of stream (between frames).
    pub fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        let mut header = [0u8; HEADER_LEN];
        if !read_full(&mut self.inner, &mut header, true)? {
            return Ok(None);
        }
        let (len, kind) = match decode_header(&header) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(ReadError::Truncated),
            Err(e) => return Err(ReadError::Decode(e)),
        };
        self.buf.clear();
        self.buf.resize(len, 0);
        read_full(&mut self.inner, &mut self.buf, false)?;
        decode_payload(kind, &self.buf)
            .map(Some)
            .map_err(ReadError::Decode)
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Fills `buf`. `Ok(false)` if the stream ended before the first byte and
/// `eof_ok`; a stream ending anywhere else is [`ReadError::Truncated`].
fn read_full(r: &mut impl Read, buf: &mut [u8], eof_ok: bool) -> Result<bool, ReadError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 && eof_ok => return Ok(false),
            Ok(0) => return Err(ReadError::Truncated),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(true)
}

/// Encodes `frame` and writes it in one `write_all`.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), WriteError> {
    let bytes = frame.encode().map_err(WriteError::Encode)?;
    w.write_all(&bytes).map_err(WriteError::Io)
}
