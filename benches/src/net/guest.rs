//! The guest: smoltcp (`agentvm_net::testing::Guest`) on the client end
//! of the link, and what the benchmark does with it.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agentvm_net::addr::GUEST_MAC;
use agentvm_net::testing::Guest;
use anyhow::{anyhow, ensure, Context};
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, Question, CLASS, QCLASS, QTYPE, TYPE};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpCidr,
};

use crate::link::Link;
use crate::recovery::Recovery;
use crate::MTU;

/// Longest sleep of an idle loop (smoltcp's timers are coarser).
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Guest socket buffers for short and idle connections.
const SMALL_BUF: usize = 4096;
/// How long one phase may take before the run fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a close may take before the guest resets the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The guest and its end of the link.
pub struct Client {
    g: Guest,
    link: Link,
    next_port: u16,
    /// Socket buffers of bulk transfers.
    bulk_buf: usize,
    /// Loss recovery for the connection of a bulk upload.
    recovery: Option<Recovery>,
    /// Segments the loss recovery sent again so far.
    retransmits: u64,
    /// Connections that did not close within [`CLOSE_TIMEOUT`].
    pub unclean: u64,
}

impl Client {
    /// Connects to a peer listening at `path` (waiting up to 5 s for it).
    pub fn connect(path: &Path, bulk_buf: usize) -> anyhow::Result<Self> {
        let start = Instant::now();
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(5) => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
            }
        };
        Ok(Client {
            g: Guest::with_mtu(MTU),
            link: Link::new(sock)?,
            next_port: 10000,
            bulk_buf,
            recovery: None,
            retransmits: 0,
            unclean: 0,
        })
    }

    /// One round: frames in, smoltcp, frames out. Whether anything moved.
    fn step(&mut self) -> anyhow::Result<bool> {
        let mut moved = self.link.fill().context("link")?;
        while let Some(frame) = self.link.frame()? {
            if let Some(r) = &mut self.recovery {
                r.received(frame);
            }
            self.g.phy.rx.push_back(frame.to_vec());
            moved = true;
        }
        let g = &mut self.g;
        g.iface.poll(SmolInstant::now(), &mut g.phy, &mut g.sockets);
        while let Some(frame) = g.phy.tx.pop_front() {
            self.link.queue(&frame);
            if let Some(r) = &mut self.recovery {
                r.sent(frame);
            }
            moved = true;
        }
        if let Some(r) = &mut self.recovery {
            for frame in r.due(Instant::now()) {
                self.link.queue(frame);
            }
        }
        moved |= self.link.flush().context("link")?;
        Ok(moved)
    }

    /// Segments the loss recovery sent again so far.
    pub fn retransmits(&self) -> u64 {
        self.retransmits + self.recovery.as_ref().map_or(0, |r| r.retransmits)
    }

    /// Runs rounds until `done` holds; fails after [`PHASE_TIMEOUT`].
    fn run_until(
        &mut self,
        what: &str,
        done: impl FnMut(&mut Guest) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        self.run_for(PHASE_TIMEOUT, what, done)
    }

    /// Runs rounds until `done` holds; fails after `timeout`.
    fn run_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&mut Guest) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&mut self.g)? {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "timed out: {what}");
            if !self.step()? {
                let delay = self
                    .g
                    .iface
                    .poll_delay(SmolInstant::now(), &self.g.sockets)
                    .map_or(MAX_WAIT, Duration::from)
                    .min(MAX_WAIT)
                    .min(self.recovery.as_ref().map_or(MAX_WAIT, |r| r.timeout));
                self.link.wait(None, Some(delay));
            }
        }
    }

    /// Takes a DHCP lease: the address and the router.
    pub fn dhcp(&mut self) -> anyhow::Result<(IpCidr, Option<Ipv4Addr>)> {
        let handle = self.g.sockets.add(dhcpv4::Socket::new());
        let mut lease = None;
        self.run_until("DHCP lease", |g| {
            if let Some(dhcpv4::Event::Configured(config)) =
                g.sockets.get_mut::<dhcpv4::Socket>(handle).poll()
            {
                g.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(config.address));
                });
                if let Some(router) = config.router {
                    g.iface.routes_mut().add_default_ipv4_route(router)?;
                }
                lease = Some((IpCidr::Ipv4(config.address), config.router));
            }
            Ok(lease.is_some())
        })?;
        self.g.sockets.remove(handle);
        lease.context("no lease")
    }

    /// Asks for the MAC addresses of `targets` (ARP) from `me`, so the
    /// first packet to each does not wait out smoltcp's one-second
    /// neighbour discovery pause (a Linux guest queues it instead).
    pub fn learn(&mut self, me: Ipv4Addr, targets: &[Ipv4Addr]) -> anyhow::Result<()> {
        let mac = EthernetAddress(GUEST_MAC);
        for &target in targets {
            let repr = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: mac,
                source_protocol_addr: me,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: target,
            };
            let mut frame = vec![0; 14 + repr.buffer_len()];
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            EthernetRepr {
                src_addr: mac,
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EthernetProtocol::Arp,
            }
            .emit(&mut eth);
            repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
            self.link.queue(&frame);
        }
        // The replies come back within a round or two.
        let until = Instant::now() + Duration::from_millis(50);
        self.run_until("ARP", |_| Ok(Instant::now() >= until))
    }

    /// Looks up `name`'s A record at `server`.
    pub fn resolve(&mut self, name: &str, server: SocketAddrV4) -> anyhow::Result<Ipv4Addr> {
        let mut query = Packet::new_query(0x4242);
        query.set_flags(simple_dns::PacketFlag::RECURSION_DESIRED);
        query.questions.push(Question::new(
            Name::new(name)?,
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let bytes = query.build_bytes_vec()?;
        let socket = self.g.udp_bind(5353);
        self.g
            .udp(socket)
            .send_slice(&bytes, (*server.ip(), server.port()))?;
        let mut reply = None;
        self.run_until("DNS reply", |g| {
            let mut buf = vec![0; 4096];
            if let Ok((n, _)) = g.udp(socket).recv_slice(&mut buf) {
                buf.truncate(n);
                reply = Some(buf);
            }
            Ok(reply.is_some())
        })?;
        self.g.sockets.remove(socket);
        let reply = reply.context("no DNS reply")?;
        let packet = Packet::parse(&reply)?;
        packet
            .answers
            .iter()
            .find_map(|r| match &r.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .with_context(|| format!("no address for {name}"))
    }

    fn port(&mut self) -> u16 {
        self.next_port = if self.next_port >= 60000 {
            10000
        } else {
            self.next_port + 1
        };
        self.next_port
    }

    fn tcp_connect(&mut self, to: SocketAddrV4, buffer: usize) -> SocketHandle {
        let port = self.port();
        self.g.tcp_connect(to, port, buffer)
    }

    /// Sends `len` bytes, closes, and waits for the sink to count them.
    pub fn upload(
        &mut self,
        to: SocketAddrV4,
        len: u64,
        counted: &Mutex<mpsc::Receiver<u64>>,
    ) -> anyhow::Result<()> {
        let counted = counted.lock().map_err(|_| anyhow!("sink poisoned"))?;
        let chunk = vec![0x5a_u8; 1 << 20];
        let h = self.tcp_connect(to, self.bulk_buf);
        self.recovery = Some(Recovery::new(self.next_port));
        let mut sent = 0u64;
        let mut got = None;
        self.run_until("upload", |g| {
            let s = g.tcp(h);
            while sent < len && s.can_send() {
                let n = (len - sent).min(chunk.len() as u64) as usize;
                let k = s.send_slice(&chunk[..n])?;
                if k == 0 {
                    break;
                }
                sent += k as u64;
                if sent == len {
                    s.close();
                }
            }
            ensure!(
                sent == len || s.may_send() || s.state() == tcp::State::SynSent,
                "connection {} after {sent} bytes",
                s.state()
            );
            if let Ok(n) = counted.try_recv() {
                got = Some(n);
            }
            Ok(got.is_some())
        })?;
        ensure!(got == Some(len), "the sink read {got:?} of {len} bytes");
        let done = self.finish(h, false);
        self.retransmits += self.recovery.take().map_or(0, |r| r.retransmits);
        done
    }

    /// Reads `len` bytes and the FIN from the sink.
    pub fn download(&mut self, to: SocketAddrV4, len: u64) -> anyhow::Result<()> {
        let h = self.tcp_connect(to, self.bulk_buf);
        let mut received = 0u64;
        self.run_until("download", |g| {
            let s = g.tcp(h);
            while s.can_recv() {
                received += s.recv(|b| (b.len(), b.len()))? as u64;
            }
            Ok(!s.may_recv() && s.state() != tcp::State::SynSent)
        })?;
        ensure!(received == len, "received {received} of {len} bytes");
        self.finish(h, true)
    }

    /// Connects, lets the sink close first, closes, waits for the end.
    pub fn connect_close(&mut self, to: SocketAddrV4) -> anyhow::Result<()> {
        let h = self.tcp_connect(to, SMALL_BUF);
        self.run_until("connect", |g| {
            Ok(matches!(
                g.tcp(h).state(),
                tcp::State::CloseWait | tcp::State::Closed
            ))
        })?;
        ensure!(
            self.g.tcp(h).state() == tcp::State::CloseWait,
            "connection refused or reset"
        );
        self.finish(h, true)
    }

    /// Closes `h` and waits until it is closed (or, for the side closing
    /// first, in TIME-WAIT), then forgets it.
    /// A connection that does not get there within [`CLOSE_TIMEOUT`] is
    /// reset and counted in [`Client::unclean`].
    fn finish(&mut self, h: SocketHandle, close: bool) -> anyhow::Result<()> {
        if close {
            self.g.tcp(h).close();
        }
        let closed = self.run_for(CLOSE_TIMEOUT, "close", |g| {
            Ok(matches!(
                g.tcp(h).state(),
                tcp::State::Closed | tcp::State::TimeWait
            ))
        });
        if closed.is_err() {
            self.unclean += 1;
            self.g.tcp(h).abort();
            self.step()?;
        }
        self.g.sockets.remove(h);
        Ok(())
    }

    /// Opens `n` connections at once and waits until all are established
    /// and the sink holds them.
    pub fn open_idle(
        &mut self,
        to: SocketAddrV4,
        n: usize,
        held: &Arc<Mutex<Vec<TcpStream>>>,
    ) -> anyhow::Result<Vec<SocketHandle>> {
        let handles: Vec<SocketHandle> = (0..n).map(|_| self.tcp_connect(to, SMALL_BUF)).collect();
        let mut status = String::new();
        self.run_until("idle connections", |g| {
            let mut states = std::collections::BTreeMap::new();
            for h in &handles {
                *states.entry(g.tcp(*h).state().to_string()).or_insert(0) += 1;
            }
            let open = states.get("ESTABLISHED").copied().unwrap_or(0);
            let sink = held.lock().map_err(|_| anyhow!("sink poisoned"))?.len();
            status = format!("guest {states:?}, sink holds {sink}");
            Ok(open == n && sink >= n)
        })
        .with_context(|| status.clone())?;
        Ok(handles)
    }
}
