//! LZ4 "legacy" frame decoding: what `lz4 -l` writes and what Debian's x86
//! kernels use for their compressed payload (`CONFIG_KERNEL_LZ4`). The
//! blocks are decoded by `lz4_flex`; this module only walks the frame, so
//! extracting a vmlinux needs no external tool.

use thiserror::Error;

/// The legacy frame's magic number.
pub const LEGACY_MAGIC: u32 = 0x184c_2102;
/// Largest decompressed size of one legacy block (the format fixes it).
pub const LEGACY_BLOCK_SIZE: usize = 8 << 20;

/// Why an LZ4 stream could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Lz4Error {
    /// The stream does not start with the legacy frame magic.
    #[error("Not an LZ4 legacy frame")]
    NotLegacy,
    /// A block runs past the end of the input.
    #[error("LZ4 data truncated at byte {0}")]
    Truncated(usize),
    /// A block is not valid LZ4.
    #[error("Bad LZ4 block at byte {at}: {reason}")]
    Block {
        /// Offset of the block in the input.
        at: usize,
        /// What the decoder found wrong.
        reason: String,
    },
}

/// Decodes a legacy frame (magic, then blocks each prefixed by their LE u32
/// compressed size) until the input ends; a repeated magic (concatenated
/// frames) is skipped.
pub fn decode_legacy(input: &[u8]) -> Result<Vec<u8>, Lz4Error> {
    let magic = input.get(..4).ok_or(Lz4Error::NotLegacy)?;
    if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) != LEGACY_MAGIC {
        return Err(Lz4Error::NotLegacy);
    }
    let mut out = Vec::with_capacity(input.len() * 4);
    let mut p = 4;
    while let Some(size) = input.get(p..p + 4) {
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
        if size == LEGACY_MAGIC {
            p += 4;
            continue;
        }
        let start = p + 4;
        let end = start.saturating_add(size as usize);
        let block = input
            .get(start..end)
            .ok_or(Lz4Error::Truncated(input.len()))?;
        let mut decoded = vec![0u8; LEGACY_BLOCK_SIZE];
        let n =
            lz4_flex::block::decompress_into(block, &mut decoded).map_err(|e| Lz4Error::Block {
                at: start,
                reason: e.to_string(),
            })?;
        out.extend_from_slice(&decoded[..n]);
        p = end;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(blocks: &[&[u8]]) -> Vec<u8> {
        let mut f = LEGACY_MAGIC.to_le_bytes().to_vec();
        for b in blocks {
            f.extend_from_slice(&(b.len() as u32).to_le_bytes());
            f.extend_from_slice(b);
        }
        f
    }

    #[test]
    fn literals_only() {
        let block = [0x50, b'h', b'e', b'l', b'l', b'o'];
        assert_eq!(decode_legacy(&frame(&[&block])).unwrap(), b"hello");
    }

    #[test]
    fn overlapping_match_and_long_lengths() {
        // "ab" then a match of offset 2, length 4+15+3 = 22 -> "ab" * 12,
        // then 16 literal bytes "0123456789abcdef" (15 + 1 extra length byte).
        let mut block = vec![0x2f, b'a', b'b', 0x02, 0x00, 0x03];
        block.push(0xf0);
        block.push(0x01);
        block.extend_from_slice(b"0123456789abcdef");
        let out = decode_legacy(&frame(&[&block])).unwrap();
        let mut want = b"ab".repeat(12);
        want.extend_from_slice(b"0123456789abcdef");
        assert_eq!(out, want);
    }

    #[test]
    fn two_blocks_and_concatenated_frame() {
        let a = [0x30, b'x', b'y', b'z'];
        let b = [0x10, b'!'];
        let mut f = frame(&[&a]);
        f.extend_from_slice(&frame(&[&b]));
        assert_eq!(decode_legacy(&f).unwrap(), b"xyz!");
    }

    #[test]
    fn errors() {
        assert_eq!(decode_legacy(b"\x04\x22\x4d\x18"), Err(Lz4Error::NotLegacy));
        let bad_offset = [0x10, b'a', 0x05, 0x00, 0x00];
        assert!(matches!(
            decode_legacy(&frame(&[&bad_offset])),
            Err(Lz4Error::Block { at: 8, .. })
        ));
        let short = frame(&[&[0x50, b'a']]);
        assert!(matches!(decode_legacy(&short), Err(Lz4Error::Block { .. })));
        let mut cut = frame(&[&[0x10, b'a']]);
        cut.truncate(cut.len() - 1);
        assert!(matches!(decode_legacy(&cut), Err(Lz4Error::Truncated(_))));
    }

    /// Round trip against the real `lz4` tool when it is installed.
    #[test]
    fn matches_lz4_tool() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let input: Vec<u8> = (0..300_000u32)
            .map(|i| ((i * 7) % 251) as u8 ^ ((i / 1000) as u8))
            .collect();
        let child = Command::new("lz4")
            .args(["-l", "-9", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipped: no lz4 tool");
            return;
        };
        let mut stdin = child.stdin.take().unwrap();
        let data = input.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(decode_legacy(&out.stdout).unwrap(), input);
    }
}
