//! Classification of the guest's frames (in [`NetStack::push_frame`]),
//! before smoltcp sees anything:
//! - ARP: only requests and replies about the gateway and DNS addresses
//!   reach smoltcp (which answers them); everything else is dropped.
//! - IPv4 from anything but the guest's address (or 0.0.0.0 for DHCP),
//!   fragments, IPv6 and other ethertypes: dropped.
//! - UDP to port 67: the DHCP server. UDP and TCP to 10.0.2.3:53: the DNS
//!   server ([`crate::dns::tcp`] for TCP).
//!   Other UDP: a host flow when the policy allows the destination, ICMP
//!   "administratively prohibited" at once when not — and for UDP to port
//!   443 where a TCP flow's server name would be checked (QUIC).
//! - TCP: segments of known connections go to smoltcp; a SYN for a new
//!   one is judged by the policy — refused with a RST at once, or parked
//!   while the host connects ([`crate::tcp`]), and held at its first
//!   bytes when the name they ask for must be judged too
//!   ([`crate::peek`]); other segments go to smoltcp, which resets them.
//! - ICMP echo to the gateway or DNS address: smoltcp answers. Other ICMP
//!   is dropped.
//!

use std::net::SocketAddrV4;
use std::time::Instant;

use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, DHCP_SERVER_PORT,
};
use tracing::debug;

use super::{take_token, NetStack};
use crate::addr::{DNS_IP, GATEWAY_IP, GUEST_IP};
use crate::judge::peek_protocol;
use crate::peek::{Gate, Protocol};
use crate::phy::ETH_HEADER;
use crate::tcp::FlowKey;
use crate::{dhcp, frames, Mode, Proto};

impl NetStack {
    /// Handles one guest frame; false if it was dropped.
    pub(super) fn classify(&mut self, frame: &[u8]) -> bool {
        if self.policy.mode == Mode::Off || frame.len() > ETH_HEADER + usize::from(u16::MAX) {
            return false;
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return false;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.classify_arp(frame, eth.payload()),
            EthernetProtocol::Ipv4 => {
                if eth.src_addr().is_unicast() {
                    self.guest_mac = eth.src_addr();
                }
                self.classify_ipv4(frame, eth.payload())
            }
            // IPv6 and everything else: this network has none.
            _ => false,
        }
    }

    fn classify_arp(&mut self, frame: &[u8], payload: &[u8]) -> bool {
        let Ok(arp) = ArpPacket::new_checked(payload) else {
            return false;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            target_protocol_addr,
            source_hardware_addr,
            ..
        }) = ArpRepr::parse(&arp)
        else {
            return false;
        };
        if target_protocol_addr != GATEWAY_IP && target_protocol_addr != DNS_IP {
            return false;
        }
        if source_hardware_addr.is_unicast() {
            self.guest_mac = source_hardware_addr;
        }
        // Sockets that waited for the guest's address may send now (ARP is
        // rare; a guest flooding it costs one visit per socket a frame).
        self.tcp.sockets().wake_all();
        self.phy.take(frame, None)
    }

    fn classify_ipv4(&mut self, frame: &[u8], payload: &[u8]) -> bool {
        let Ok(packet) = Ipv4Packet::new_checked(payload) else {
            return false;
        };
        if packet.more_frags() || packet.frag_offset() != 0 {
            return false;
        }
        let Ok(repr) = Ipv4Repr::parse(&packet, &smoltcp::phy::ChecksumCapabilities::ignored())
        else {
            return false;
        };
        let l4 = packet.payload();
        let from_guest = repr.src_addr == GUEST_IP;
        match repr.next_header {
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(l4) else {
                    return false;
                };
                if udp.dst_port() == DHCP_SERVER_PORT {
                    return self.dhcp(udp.payload());
                }
                if !from_guest {
                    return false;
                }
                let guest = SocketAddrV4::new(GUEST_IP, udp.src_port());
                let dst = SocketAddrV4::new(repr.dst_addr, udp.dst_port());
                self.classify_udp(&repr, l4, guest, dst, udp.payload());
                true
            }
            IpProtocol::Tcp if from_guest => {
                let Ok(tcp) = TcpPacket::new_checked(l4) else {
                    return false;
                };
                let key = FlowKey {
                    guest_port: tcp.src_port(),
                    remote: SocketAddrV4::new(repr.dst_addr, tcp.dst_port()),
                };
                if key.remote == SocketAddrV4::new(DNS_IP, 53) {
                    return self.classify_dns_tcp(frame, l4, &tcp, key);
                }
                match self.tcp.state_of(&key) {
                    // A retransmitted SYN while the host connects.
                    Some(true) => false,
                    // In order behind queued frames; at once (no copy)
                    // when none wait.
                    Some(false) if !self.phy.rx_waiting() => {
                        self.tcp.ingest(&key, &mut self.iface, &mut self.phy, frame)
                            || self.phy.take(frame, self.tcp.socket_of(&key))
                    }
                    Some(false) => self.phy.take(frame, self.tcp.socket_of(&key)),
                    None if tcp.syn() && !tcp.ack() => {
                        let syn_len = l4.len().saturating_sub(usize::from(tcp.header_len())) + 1;
                        self.new_connection(key, frame, tcp.seq_number(), syn_len);
                        true
                    }
                    // smoltcp resets segments of unknown connections.
                    None => self.phy.take(frame, None),
                }
            }
            IpProtocol::Icmp if from_guest => {
                let Ok(icmp) = Icmpv4Packet::new_checked(l4) else {
                    return false;
                };
                let to_us = repr.dst_addr == GATEWAY_IP || repr.dst_addr == DNS_IP;
                if to_us && icmp.msg_type() == Icmpv4Message::EchoRequest {
                    return self.phy.take(frame, None);
                }
                false
            }
            _ => false,
        }
    }

    /// A segment to the DNS server's TCP port: a SYN opens a connection of
    /// its own (a RST when there are too many), the rest go to smoltcp.
    fn classify_dns_tcp(
        &mut self,
        frame: &[u8],
        l4: &[u8],
        tcp: &TcpPacket<&[u8]>,
        key: FlowKey,
    ) -> bool {
        let new = tcp.syn() && !tcp.ack() && !self.dns_tcp.knows(key.guest_port);
        if new
            && !self.dns_tcp.accept(
                key.guest_port,
                self.tcp.sockets(),
                &self.budget,
                Instant::now(),
            )
        {
            let syn_len = l4.len().saturating_sub(usize::from(tcp.header_len())) + 1;
            let guest = SocketAddrV4::new(GUEST_IP, key.guest_port);
            let reset =
                frames::tcp_reset(self.guest_mac, guest, key.remote, tcp.seq_number(), syn_len);
            self.phy.send(reset);
            return true;
        }
        let route = self.dns_tcp.socket_of(key.guest_port);
        self.phy.take(frame, route)
    }

    fn dhcp(&mut self, payload: &[u8]) -> bool {
        match dhcp::reply(payload) {
            Some(reply) => self.phy.send(reply),
            None => false,
        }
    }

    fn classify_udp(
        &mut self,
        repr: &Ipv4Repr,
        l4: &[u8],
        guest: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) {
        let now = Instant::now();
        if dst == SocketAddrV4::new(DNS_IP, 53) {
            let busy = self.dns.busy();
            if let Some(reply) = self
                .dns
                .query(now, &self.policy, guest, payload, &self.audit)
            {
                self.send_udp(dst, guest, &reply);
            }
            if self.dns.busy() > busy {
                self.dns_cap.hit();
            } else {
                self.dns_cap.fits();
            }
            return;
        }
        let key = FlowKey {
            guest_port: guest.port(),
            remote: dst,
        };
        let mut name = None;
        if !self.udp.contains(&key) {
            let mut decision = self.decide(*dst.ip(), dst.port(), now);
            let port = dst.port();
            if peek_protocol(&self.policy, &decision, *dst.ip(), port) == Some(Protocol::Tls) {
                // QUIC hides its server name from a plain read; refused,
                // clients fall back to TCP, where the name is judged.
                decision.allow = false;
                decision.reason = "QUIC (UDP 443) where the server name is checked";
            }
            self.record(Proto::Udp, &decision, dst);
            if !decision.allow {
                let icmp = frames::icmp_prohibited(self.guest_mac, GATEWAY_IP, repr, l4);
                self.phy.send(icmp);
                return;
            }
            name = decision.name;
        }
        let (registry, next) = (self.poll.registry(), &mut self.next_token);
        let token = || take_token(next);
        let evicted = self.udp.evicted();
        if let Err(e) = self.udp.send(key, payload, name, registry, token, now) {
            debug!("net: udp {dst}: {e}");
        }
        if self.udp.evicted() > evicted {
            self.udp_cap.hit();
        } else if self.udp.len() < crate::udp::MAX_FLOWS {
            self.udp_cap.fits();
        }
    }

    fn new_connection(
        &mut self,
        key: FlowKey,
        frame: &[u8],
        seq: smoltcp::wire::TcpSeqNumber,
        syn_len: usize,
    ) {
        let now = Instant::now();
        let decision = self.decide(*key.remote.ip(), key.remote.port(), now);
        if decision.allow {
            let token = self.token();
            let (syn, name) = (frame.to_vec(), decision.name.clone());
            let hold = peek_protocol(&self.policy, &decision, *key.remote.ip(), key.remote.port());
            // A flow the policy does not judge by its name (`open` mode) is
            // still read for interception when secrets are bound.
            let intercepting = self.intercept.as_ref().is_some_and(|i| i.binds_any());
            let gate = match hold {
                Some(protocol) => Some(Gate::new(protocol)),
                None if intercepting && key.remote.port() == 443 => Some(Gate::for_interception()),
                None => None,
            };
            match self
                .tcp
                .connect(key, syn, name, self.poll.registry(), token, now)
            {
                Ok(()) => {
                    self.started();
                    self.record(Proto::Tcp, &decision, key.remote);
                    if let Some(gate) = gate {
                        self.tcp.hold(&key, gate);
                    }
                    return;
                }
                // Refused by a cap: recorded with the cap's reason.
                Err(e) if e.is_cap() => self.refuse_started(Proto::Tcp, key.remote, &e),
                Err(e) => {
                    self.record(Proto::Tcp, &decision, key.remote);
                    debug!("net: tcp {}: connect failed at once: {e}", key.remote);
                }
            }
        } else {
            self.record(Proto::Tcp, &decision, key.remote);
        }
        let guest = SocketAddrV4::new(GUEST_IP, key.guest_port);
        self.phy.send(frames::tcp_reset(
            self.guest_mac,
            guest,
            key.remote,
            seq,
            syn_len,
        ));
    }
}
