//! Frames the stack builds itself rather than through smoltcp's sockets:
//! UDP datagrams to the guest (DNS, DHCP, UDP flows), TCP resets for
//! refused connections and ICMP "administratively prohibited" for refused
//! datagrams. Every builder computes every checksum.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4DstUnreachable,
    Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use crate::addr::GATEWAY_MAC;
use crate::phy::ETH_HEADER;

/// IPv4 header length of the packets built here (no options).
const IPV4_HEADER: usize = 20;
/// UDP header length.
const UDP_HEADER: usize = 8;
/// TTL of the packets built here.
const HOP_LIMIT: u8 = 64;

/// An Ethernet + IPv4 frame to `dst_mac` with `payload_len` bytes of
/// `proto` after the IPv4 header, the payload written by `fill`.
fn ipv4_frame(
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut frame = vec![0; ETH_HEADER + IPV4_HEADER + payload_len];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: GATEWAY_MAC,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit: HOP_LIMIT,
    }
    .emit(&mut ip, &ChecksumCapabilities::default());
    fill(ip.payload_mut());
    frame
}

/// A UDP datagram from `src` to `dst` carrying `payload`; `None` when it
/// cannot fit one IPv4 packet.
pub fn udp(
    dst_mac: EthernetAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let len = UDP_HEADER + payload.len();
    if IPV4_HEADER + len > usize::from(u16::MAX) {
        return None;
    }
    let (src_ip, dst_ip) = (IpAddress::Ipv4(*src.ip()), IpAddress::Ipv4(*dst.ip()));
    Some(ipv4_frame(
        dst_mac,
        *src.ip(),
        *dst.ip(),
        IpProtocol::Udp,
        len,
        |buf| {
            let mut packet = UdpPacket::new_unchecked(buf);
            UdpRepr {
                src_port: src.port(),
                dst_port: dst.port(),
            }
            .emit(
                &mut packet,
                &src_ip,
                &dst_ip,
                payload.len(),
                |p| p.copy_from_slice(payload),
                &ChecksumCapabilities::default(),
            );
        },
    ))
}

/// The RST|ACK that refuses the connection whose SYN went from `guest` to
/// `remote` with sequence number `syn_seq`.
pub fn tcp_reset(
    dst_mac: EthernetAddress,
    guest: SocketAddrV4,
    remote: SocketAddrV4,
    syn_seq: TcpSeqNumber,
    syn_len: usize,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: remote.port(),
        dst_port: guest.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(syn_seq + syn_len),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (src_ip, dst_ip) = (IpAddress::Ipv4(*remote.ip()), IpAddress::Ipv4(*guest.ip()));
    ipv4_frame(
        dst_mac,
        *remote.ip(),
        *guest.ip(),
        IpProtocol::Tcp,
        repr.buffer_len(),
        |buf| {
            let mut packet = TcpPacket::new_unchecked(buf);
            repr.emit(
                &mut packet,
                &src_ip,
                &dst_ip,
                &ChecksumCapabilities::default(),
            );
        },
    )
}

/// ICMP "communication administratively prohibited" from `from` about the
/// IPv4 packet `refused` (its header and first 8 payload bytes are quoted,
/// as RFC 792 asks).
pub fn icmp_prohibited(
    dst_mac: EthernetAddress,
    from: Ipv4Addr,
    refused: &Ipv4Repr,
    refused_payload: &[u8],
) -> Vec<u8> {
    let data = &refused_payload[..refused_payload.len().min(8)];
    let repr = Icmpv4Repr::DstUnreachable {
        reason: Icmpv4DstUnreachable::CommProhibited,
        header: *refused,
        data,
    };
    ipv4_frame(
        dst_mac,
        from,
        refused.src_addr,
        IpProtocol::Icmp,
        repr.buffer_len(),
        |buf| {
            let mut packet = Icmpv4Packet::new_unchecked(buf);
            repr.emit(&mut packet, &ChecksumCapabilities::default());
        },
    )
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{Icmpv4Message, TcpPacket};

    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        assert_eq!(eth.dst_addr(), MAC);
        assert_eq!(eth.src_addr(), GATEWAY_MAC);
        let ip = Ipv4Packet::new_checked(&frame[ETH_HEADER..]).unwrap();
        assert!(ip.verify_checksum());
        ip
    }

    #[test]
    fn udp_frames_have_valid_checksums_and_payload() {
        let src: SocketAddrV4 = "10.0.2.3:53".parse().unwrap();
        let dst: SocketAddrV4 = "10.0.2.15:40000".parse().unwrap();
        let frame = udp(MAC, src, dst, b"hello").unwrap();
        let ip = ip_of(&frame);
        let packet = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(packet.verify_checksum(&(*src.ip()).into(), &(*dst.ip()).into()));
        assert_eq!((packet.src_port(), packet.dst_port()), (53, 40000));
        assert_eq!(packet.payload(), b"hello");
        assert!(udp(MAC, src, dst, &vec![0; 65536]).is_none());
    }

    #[test]
    fn resets_acknowledge_the_syn() {
        let guest: SocketAddrV4 = "10.0.2.15:40000".parse().unwrap();
        let remote: SocketAddrV4 = "1.2.3.4:22".parse().unwrap();
        let frame = tcp_reset(MAC, guest, remote, TcpSeqNumber(1000), 1);
        let ip = ip_of(&frame);
        assert_eq!(ip.src_addr(), *remote.ip());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&(*remote.ip()).into(), &(*guest.ip()).into()));
        assert!(tcp.rst() && tcp.ack());
        assert_eq!(tcp.ack_number(), TcpSeqNumber(1001));
        assert_eq!((tcp.src_port(), tcp.dst_port()), (22, 40000));
    }

    #[test]
    fn prohibited_quotes_the_refused_header() {
        let refused = Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 2, 15),
            dst_addr: Ipv4Addr::new(8, 8, 8, 8),
            next_header: IpProtocol::Udp,
            payload_len: 20,
            hop_limit: 64,
        };
        let frame = icmp_prohibited(MAC, Ipv4Addr::new(10, 0, 2, 2), &refused, &[7; 20]);
        let ip = ip_of(&frame);
        assert_eq!(ip.dst_addr(), refused.src_addr);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
        assert_eq!(icmp.msg_code(), 13);
        assert_eq!(icmp.data().len(), 20 + 8);
    }
}
