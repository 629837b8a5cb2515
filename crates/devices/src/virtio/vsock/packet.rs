//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, virtio 1.2
//! §5.10.6) and the protocol's constants.
//!
//! The header is parsed from, and emitted into, a host-side copy of its 44
//! bytes: nothing here ever looks at guest memory.

/// The host's context id; every guest packet must be addressed to it.
pub const HOST_CID: u64 = 2;

/// Bytes of the packed little-endian header.
pub const HDR_LEN: usize = 44;

/// Socket types (`type`).
pub mod socket_type {
    /// Stream sockets: the only type this device supports.
    pub const STREAM: u16 = 1;
    /// Sequential packet sockets (VIRTIO_VSOCK_F_SEQPACKET, not offered).
    pub const SEQPACKET: u16 = 2;
}

/// Operations (`op`).
pub mod op {
    /// Never valid on the wire.
    pub const INVALID: u16 = 0;
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Reset: refused connection, unknown socket, or abortive close.
    pub const RST: u16 = 3;
    /// One or both directions closed; `flags` says which.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's credit (`buf_alloc`, `fwd_cnt`) changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    /// Both directions.
    pub const BOTH: u32 = RCV | SEND;
}

/// Event ids of the event queue.
pub mod event {
    /// The transport was reset (after migration): the guest drops its
    /// connections.
    pub const TRANSPORT_RESET: u32 = 0;
}

/// A packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes following the header.
    pub len: u32,
    /// Socket type ([`socket_type`]).
    pub socket_type: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags ([`shutdown`] for SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has taken out of that buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the wire form. Every bit pattern is a header; what it means
    /// is for the caller to check.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            socket_type: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.socket_type.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The reset answering `self`: addressed back to its sender, no credit.
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            socket_type: socket_type::STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_the_wire_layout() {
        let hdr = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 5,
            socket_type: socket_type::STREAM,
            op: op::RW,
            flags: shutdown::BOTH,
            buf_alloc: 0xaabb_ccdd,
            fwd_cnt: 7,
        };
        let b = hdr.to_bytes();
        assert_eq!(Header::from_bytes(&b), hdr);
        assert_eq!(b[0], 0x08, "little endian");
        assert_eq!(b[7], 0x01);
        assert_eq!(&b[20..24], &1024u32.to_le_bytes());
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(&b[40..44], &[7, 0, 0, 0]);
    }

    #[test]
    fn reset_reply_swaps_the_addresses() {
        let hdr = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 80,
            len: 9,
            op: op::REQUEST,
            buf_alloc: 1,
            ..Header::default()
        };
        let rst = hdr.reset_reply();
        assert_eq!(
            (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port),
            (2, 3, 80, 5000)
        );
        assert_eq!((rst.op, rst.len, rst.buf_alloc), (op::RST, 0, 0));
        assert_eq!(rst.socket_type, socket_type::STREAM);
    }
}
