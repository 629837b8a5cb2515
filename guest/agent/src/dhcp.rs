//! A minimal DHCP client: DISCOVER → OFFER → REQUEST → ACK over a UDP socket
//! bound to the interface (RFC 2131). It asks servers to broadcast replies,
//! so the socket receives them before the interface has an address.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::socket::SockaddrIn;
use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Prefix length of the subnet mask (24 when the server sends none).
    pub prefix: u8,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
}

/// A parsed server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// DHCP message type (option 53).
    pub kind: u8,
    /// Offered address (`yiaddr`).
    pub address: Ipv4Addr,
    /// Server identifier (option 54).
    pub server: Option<Ipv4Addr>,
    /// Lease details.
    pub lease: Lease,
}

/// Builds a DISCOVER (`requested` absent) or a REQUEST.
pub fn build(xid: u32, mac: [u8; 6], requested: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag: reply to 255.255.255.255
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC);
    let kind = if requested.is_some() {
        REQUEST
    } else {
        DISCOVER
    };
    p.extend_from_slice(&[53, 1, kind]);
    if let Some((addr, server)) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&addr.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    // Parameter request list: subnet mask, router, DNS, hostname, lease time.
    p.extend_from_slice(&[55, 5, 1, 3, 6, 12, 51, 255]);
    p
}

/// Parses a BOOTREPLY for transaction `xid`; `None` for anything else.
pub fn parse(buf: &[u8], xid: u32) -> Option<Reply> {
    if buf.len() < 240 || buf[0] != 2 || buf[4..8] != xid.to_be_bytes() || buf[236..240] != MAGIC {
        return None;
    }
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let address = ip(&buf[16..20]);
    let mut kind = None;
    let mut server = None;
    let mut prefix = 24;
    let mut router = None;
    let mut dns = Vec::new();
    let mut opts = &buf[240..];
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => {
                opts = rest;
                continue;
            }
            255 => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let data = rest.get(..len as usize)?;
        opts = &rest[len as usize..];
        match (code, data.len()) {
            (53, 1) => kind = Some(data[0]),
            (54, 4) => server = Some(ip(data)),
            (1, 4) => prefix = u32::from(ip(data)).leading_ones() as u8,
            (3, n) if n >= 4 => router = Some(ip(data)),
            (6, n) if n >= 4 => dns = data.chunks_exact(4).map(ip).collect(),
            _ => {}
        }
    }
    Some(Reply {
        kind: kind?,
        address,
        server,
        lease: Lease {
            address,
            prefix,
            router,
            dns,
        },
    })
}

/// Runs the exchange on `ifname` (which must be up); about 10 s at most.
pub fn acquire(ifname: &str) -> io::Result<Lease> {
    let mac = read_mac(ifname)?;
    let sock = open_socket(ifname)?;
    let xid = transaction_id();
    let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    for _attempt in 0..5 {
        sock.send_to(&build(xid, mac, None), server)?;
        let Some(offer) = receive(&sock, xid, |r| r.kind == OFFER)? else {
            continue;
        };
        let Some(server_id) = offer.server else {
            continue;
        };
        sock.send_to(&build(xid, mac, Some((offer.address, server_id))), server)?;
        match receive(&sock, xid, |r| r.kind == ACK || r.kind == NAK)? {
            Some(r) if r.kind == ACK => return Ok(r.lease),
            _ => continue,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no DHCP server answered",
    ))
}

fn receive(sock: &UdpSocket, xid: u32, want: impl Fn(&Reply) -> bool) -> io::Result<Option<Reply>> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(r) = parse(&buf[..n], xid).filter(&want) {
                    return Ok(Some(r));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn open_socket(ifname: &str) -> io::Result<UdpSocket> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)),
    )?;
    Ok(UdpSocket::from(fd))
}

fn read_mac(ifname: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    parse_mac(text.trim())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad MAC address"))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn transaction_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A server reply built the way a DHCP server lays it out.
    fn reply(xid: u32, kind: u8) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 2;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[28..34].copy_from_slice(&MAC);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, kind, 0, 54, 4, 10, 0, 2, 2, 1, 4, 255, 255, 255, 0]);
        p.extend_from_slice(&[
            3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1, 51, 4, 0, 0, 1, 0,
        ]);
        p.push(255);
        p
    }

    #[test]
    fn discover_and_request_layout() {
        let d = build(0xdead_beef, MAC, None);
        assert_eq!(&d[..4], &[1, 1, 6, 0]);
        assert_eq!(&d[4..8], &0xdead_beef_u32.to_be_bytes());
        assert_eq!(d[10], 0x80);
        assert_eq!(&d[28..34], &MAC);
        assert_eq!(&d[236..243], &[99, 130, 83, 99, 53, 1, DISCOVER]);
        let r = build(
            7,
            MAC,
            Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))),
        );
        assert_eq!(
            &r[240..255],
            &[53, 1, REQUEST, 50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]
        );
        assert_eq!(*r.last().unwrap(), 255);
    }

    #[test]
    fn parses_offer() {
        let r = parse(&reply(42, OFFER), 42).unwrap();
        assert_eq!(r.kind, OFFER);
        assert_eq!(r.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            r.lease,
            Lease {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
            }
        );
    }

    #[test]
    fn rejects_other_transactions_and_garbage() {
        assert_eq!(parse(&reply(42, OFFER), 43), None);
        assert_eq!(parse(&[2; 100], 42), None);
        let mut cut = reply(42, ACK);
        cut.truncate(252); // the mask option runs past the end
        assert_eq!(parse(&cut, 42), None);
        for n in 0..cut.len() {
            let _ = parse(&cut[..n], 42);
        }
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(MAC));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
    }
}
