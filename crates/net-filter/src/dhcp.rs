//! The DHCP server: one client, one address. DISCOVER gets an OFFER of
//! 10.0.2.15/24 with gateway 10.0.2.2 and DNS 10.0.2.3, REQUEST for that
//! address gets an ACK, REQUEST for any other a NAK. Replies are broadcast
//! (the client has no address yet).

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{
    DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, DHCP_CLIENT_PORT, DHCP_SERVER_PORT,
};

use crate::addr::{DNS_IP, GATEWAY_IP, GUEST_IP};
use crate::frames;

/// Lease time handed out, seconds (the stack never takes it back).
const LEASE_SECS: u32 = 86_400;

/// The reply frame to a client message (`payload` of a UDP datagram to
/// port 67), or `None` for messages that need none or do not parse.
pub fn reply(payload: &[u8]) -> Option<Vec<u8>> {
    let packet = DhcpPacket::new_checked(payload).ok()?;
    let request = DhcpRepr::parse(&packet).ok()?;
    let kind = match request.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => {
            let asked = request
                .requested_ip
                .or((!request.client_ip.is_unspecified()).then_some(request.client_ip));
            let for_us = request.server_identifier.is_none_or(|s| s == GATEWAY_IP);
            if !for_us {
                return None;
            }
            if asked.is_none_or(|a| a == GUEST_IP) {
                DhcpMessageType::Ack
            } else {
                DhcpMessageType::Nak
            }
        }
        _ => return None,
    };
    let ack = kind != DhcpMessageType::Nak;
    let mut dns = heapless::Vec::new();
    // Capacity is at least one.
    let _ = dns.push(DNS_IP);
    let answer = DhcpRepr {
        message_type: kind,
        transaction_id: request.transaction_id,
        secs: 0,
        client_hardware_address: request.client_hardware_address,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: if ack { GUEST_IP } else { Ipv4Addr::UNSPECIFIED },
        server_ip: GATEWAY_IP,
        router: ack.then_some(GATEWAY_IP),
        subnet_mask: ack.then_some(Ipv4Addr::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: true,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(GATEWAY_IP),
        parameter_request_list: None,
        dns_servers: ack.then_some(dns),
        max_size: None,
        lease_duration: ack.then_some(LEASE_SECS),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut buf = vec![0; answer.buffer_len()];
    answer
        .emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
        .ok()?;
    frames::udp(
        EthernetAddress::BROADCAST,
        SocketAddrV4::new(GATEWAY_IP, DHCP_SERVER_PORT),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT),
        &buf,
    )
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{EthernetFrame, Ipv4Packet, UdpPacket};

    use super::*;

    fn message(kind: DhcpMessageType, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: 0x1234_5678,
            secs: 0,
            client_hardware_address: EthernetAddress([2, 0, 0, 0, 0, 9]),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: true,
            requested_ip: requested,
            client_identifier: None,
            server_identifier: None,
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    }

    fn parse(frame: &[u8]) -> (DhcpMessageType, Ipv4Addr, Option<Ipv4Addr>, Vec<Ipv4Addr>) {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
        let packet = DhcpPacket::new_checked(udp.payload()).unwrap();
        let repr = DhcpRepr::parse(&packet).unwrap();
        assert_eq!(repr.transaction_id, 0x1234_5678);
        let dns = repr.dns_servers.map(|d| d.to_vec()).unwrap_or_default();
        (repr.message_type, repr.your_ip, repr.router, dns)
    }

    #[test]
    fn discover_is_offered_and_request_acked_with_the_slirp_addresses() {
        let offer = reply(&message(DhcpMessageType::Discover, None)).unwrap();
        assert_eq!(
            parse(&offer),
            (
                DhcpMessageType::Offer,
                GUEST_IP,
                Some(GATEWAY_IP),
                vec![DNS_IP]
            )
        );
        let ack = reply(&message(DhcpMessageType::Request, Some(GUEST_IP))).unwrap();
        assert_eq!(parse(&ack).0, DhcpMessageType::Ack);
    }

    #[test]
    fn other_addresses_are_refused_and_garbage_ignored() {
        let nak = reply(&message(
            DhcpMessageType::Request,
            Some(Ipv4Addr::new(10, 0, 2, 99)),
        ));
        assert_eq!(parse(&nak.unwrap()).0, DhcpMessageType::Nak);
        assert!(reply(&message(DhcpMessageType::Release, None)).is_none());
        assert!(reply(&[]).is_none());
        assert!(reply(&[0xff; 300]).is_none());
    }
}
