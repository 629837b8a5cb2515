//! Exec-protocol frames as the host reads them from the guest agent over
//! vsock: a stream of arbitrary bytes through `FrameReader`. Every frame
//! that decodes must encode back to a frame that decodes to itself.
#![no_main]

use std::io::Cursor;

use agentvm_protocol::frame;
use agentvm_protocol::io::FrameReader;
use libfuzzer_sys::fuzz_target;

/// Frames read from one input at most (each needs a header's worth of
/// bytes, so the input's length bounds it anyway).
const MAX_FRAMES: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(Cursor::new(data));
    for _ in 0..MAX_FRAMES {
        let Ok(Some(frame)) = reader.read_frame() else {
            break;
        };
        let bytes = frame.encode().expect("a decoded frame encodes");
        let (again, used) = frame::decode(&bytes)
            .expect("an encoded frame decodes")
            .expect("an encoded frame is complete");
        assert_eq!(used, bytes.len());
        assert_eq!(again, frame);
    }
    // The slice decoder agrees with the stream reader on the first frame.
    if let Ok(Some((frame, used))) = frame::decode(data) {
        assert!(used <= data.len());
        let first = FrameReader::new(Cursor::new(data)).read_frame();
        assert_eq!(first.ok().flatten(), Some(frame));
    }
});
