//! The `virtio_net_hdr_v1` in front of every frame (virtio 1.2 §5.1.6), and
//! the checksum the guest may leave to the device.

use virtio_bindings::bindings::virtio_net as bindings;

/// Bytes of the header with VERSION_1 (with or without MRG_RXBUF).
pub const NET_HDR_LEN: usize = 12;

/// `flags`: the L4 checksum is left to the device (transmit).
pub const F_NEEDS_CSUM: u8 = bindings::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// `flags`: the checksums of the frame are known good (receive).
pub const F_DATA_VALID: u8 = bindings::VIRTIO_NET_HDR_F_DATA_VALID as u8;
/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = bindings::VIRTIO_NET_HDR_GSO_NONE as u8;
/// `gso_type`: a TCPv4 segment larger than the MTU.
pub const GSO_TCPV4: u8 = bindings::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
/// `gso_type`: a UDP datagram to fragment (never offered).
pub const GSO_UDP: u8 = bindings::VIRTIO_NET_HDR_GSO_UDP as u8;
/// `gso_type`: a TCPv6 segment larger than the MTU.
pub const GSO_TCPV6: u8 = bindings::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
/// `gso_type` bit: the segment has CWR set (with HOST_ECN).
pub const GSO_ECN: u8 = bindings::VIRTIO_NET_HDR_GSO_ECN as u8;

/// `struct virtio_net_hdr_v1`, fields in host order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetHeader {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, with the ECN bit.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (NEEDS_CSUM).
    pub csum_start: u16,
    /// Where after `csum_start` the checksum goes (NEEDS_CSUM).
    pub csum_offset: u16,
    /// Receive chains the frame spans (MRG_RXBUF); 1 otherwise.
    pub num_buffers: u16,
}

impl NetHeader {
    /// Parses the little-endian wire form.
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> Self {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }

    /// The little-endian wire form.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// Why a checksum could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsumError {
    /// `csum_start + csum_offset + 2` lies beyond the frame.
    #[error("Checksum field at {start}+{offset} outside a {len}-byte frame")]
    OutOfBounds {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length.
        len: usize,
    },
}

/// Completes a partial checksum as a NIC would (virtio 1.2 §5.1.6.2): the
/// ones' complement sum of `frame[csum_start..]` (the guest put the
/// pseudo-header sum in the checksum field already), complemented, stored
/// big-endian at `csum_start + csum_offset`. A result of 0 is stored as
/// 0xffff, which is the same in ones' complement and keeps UDP from
/// reading it as "no checksum".
pub fn complete_checksum(
    frame: &mut [u8],
    csum_start: u16,
    csum_offset: u16,
) -> Result<(), CsumError> {
    let start = usize::from(csum_start);
    let at = start + usize::from(csum_offset);
    if at + 2 > frame.len() {
        return Err(CsumError::OutOfBounds {
            start: csum_start,
            offset: csum_offset,
            len: frame.len(),
        });
    }
    let sum = ones_complement_sum(&frame[start..]);
    let csum = match !sum {
        0 => 0xffff,
        c => c,
    };
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// The folded 16-bit ones' complement sum of `data` (RFC 1071), an odd
/// last byte padded with zero.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded above: fits.
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = NetHeader {
            flags: 1,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        assert_eq!(NetHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[10..], [3, 0]);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&data), 0xddf2);
        assert_eq!(ones_complement_sum(&[0xab]), 0xab00);
    }

    #[test]
    fn completed_checksum_verifies() {
        let mut frame: Vec<u8> = (0..101u8).collect();
        frame[20..22].copy_from_slice(&[0x12, 0x34]);
        complete_checksum(&mut frame, 10, 10).unwrap();
        // The field held the pseudo-header sum: a receiver adds the pseudo
        // header to the range, checksum included, and gets all ones.
        let sum = u32::from(ones_complement_sum(&frame[10..])) + 0x1234;
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
    }

    #[test]
    fn checksum_field_must_lie_inside_the_frame() {
        let mut frame = vec![0u8; 40];
        assert!(complete_checksum(&mut frame, 30, 8).is_ok());
        assert!(complete_checksum(&mut frame, 30, 9).is_err());
        assert!(complete_checksum(&mut frame, u16::MAX, u16::MAX).is_err());
        assert!(complete_checksum(&mut [], 0, 0).is_err());
    }
}
