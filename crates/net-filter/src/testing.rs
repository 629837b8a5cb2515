//! A guest for tests and benchmarks: smoltcp playing the guest's network
//! stack, wired to a [`NetStack`] in memory. It sends exactly the frames a
//! guest kernel would (ARP, DHCP, IPv4 with TCP/UDP/ICMP) and lets tests
//! add raw frames of their own.
//!
//! ```
//! use std::time::Duration;
//! use agentvm_net::testing::Guest;
//! use agentvm_net::{Mode, NetStack, Policy, StackConfig};
//!
//! let mut stack = NetStack::new(StackConfig {
//!     policy: Policy::new(Mode::Filtered),
//!     ..StackConfig::default()
//! })
//! .unwrap();
//! let mut guest = Guest::new();
//! let lease = guest.dhcp(&mut stack, Duration::from_secs(5)).unwrap();
//! assert_eq!(lease.to_string(), "10.0.2.15/24");
//! ```

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, Ipv4Cidr,
};

use crate::addr::{DNS_IP, GATEWAY_IP, GUEST_IP, GUEST_MAC, PREFIX_LEN};
use crate::{NetStack, DEFAULT_MTU};

/// The guest's frame queues.
#[derive(Default)]
pub struct GuestPhy {
    /// Frames from the stack, for the guest's smoltcp.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames the guest sent, for the stack.
    pub tx: VecDeque<Vec<u8>>,
    /// The guest's IP MTU.
    pub mtu: usize,
}

/// A received frame.
pub struct Rx(Vec<u8>);
/// Room for a frame to send.
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for GuestPhy {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps
    }
}

/// A smoltcp guest.
pub struct Guest {
    /// The guest's interface.
    pub iface: Interface,
    /// The guest's sockets.
    pub sockets: SocketSet<'static>,
    /// The guest's frame queues.
    pub phy: GuestPhy,
    /// Frames the stack sent the guest, in order (when recording).
    pub seen: Vec<Vec<u8>>,
    /// Frames the guest sent the stack, in order (when recording).
    pub sent: Vec<Vec<u8>>,
    /// Whether to keep a copy of every frame the stack sends in `seen`
    /// and of every frame the guest sends in `sent`.
    pub record: bool,
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    /// A guest without an address (ask by [`Guest::dhcp`] or set with
    /// [`Guest::configure`]), MTU 65520.
    pub fn new() -> Self {
        Self::with_mtu(DEFAULT_MTU)
    }

    /// A guest whose IP MTU is `mtu`.
    pub fn with_mtu(mtu: usize) -> Self {
        let mut phy = GuestPhy {
            mtu,
            ..GuestPhy::default()
        };
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let iface = Interface::new(config, &mut phy, SmolInstant::now());
        Guest {
            iface,
            sockets: SocketSet::new(Vec::new()),
            phy,
            seen: Vec::new(),
            sent: Vec::new(),
            record: false,
        }
    }

    /// Gives the guest 10.0.2.15/24 and the default route by hand.
    pub fn configure(&mut self) {
        self.iface.update_ip_addrs(|a| {
            a.clear();
            let _ = a.push(IpCidr::new(GUEST_IP.into(), PREFIX_LEN));
        });
        let _ = self.iface.routes_mut().add_default_ipv4_route(GATEWAY_IP);
    }

    /// [`Guest::configure`], then [`Guest::learn_gateway`].
    pub fn configure_with(&mut self, stack: &mut NetStack) {
        self.configure();
        self.learn_gateway(stack);
    }

    /// One round: the guest sends, the stack works, the guest receives.
    /// True if any frame moved.
    pub fn exchange(&mut self, stack: &mut NetStack) -> bool {
        let mut moved = false;
        self.iface
            .poll(SmolInstant::now(), &mut self.phy, &mut self.sockets);
        while let Some(frame) = self.phy.tx.pop_front() {
            stack.push_frame(&frame);
            if self.record {
                self.sent.push(frame);
            }
            moved = true;
        }
        stack.poll();
        while let Some(frame) = stack.pop_frame() {
            if self.record {
                self.seen.push(frame.clone());
            }
            self.phy.rx.push_back(frame);
            moved = true;
        }
        if moved {
            stack.poll();
        }
        self.iface
            .poll(SmolInstant::now(), &mut self.phy, &mut self.sockets);
        moved
    }

    /// Runs rounds until `done` (given the guest and the stack) says so or `timeout` passes; between idle
    /// rounds it waits (at most 1 ms) on the stack's fd. Returns whether
    /// `done` held.
    pub fn run_until(
        &mut self,
        stack: &mut NetStack,
        timeout: Duration,
        mut done: impl FnMut(&mut Guest, &NetStack) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self, stack) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if !self.exchange(stack) {
                wait_readable(stack.as_raw_fd(), Duration::from_millis(1));
            }
        }
    }

    /// Asks for a lease with smoltcp's DHCP client and applies it.
    pub fn dhcp(&mut self, stack: &mut NetStack, timeout: Duration) -> Option<Ipv4Cidr> {
        let handle = self.sockets.add(dhcpv4::Socket::new());
        let mut lease = None;
        let got = self.run_until(stack, timeout, |g, _| {
            if let Some(dhcpv4::Event::Configured(config)) =
                g.sockets.get_mut::<dhcpv4::Socket>(handle).poll()
            {
                lease = Some(config.address);
                g.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(config.address));
                });
                if let Some(router) = config.router {
                    let _ = g.iface.routes_mut().add_default_ipv4_route(router);
                }
            }
            lease.is_some()
        });
        self.sockets.remove(handle);
        if got {
            self.learn_gateway(stack);
        }
        got.then_some(lease).flatten()
    }

    /// Sends ARP requests for the gateway and DNS addresses, so the first
    /// packet to either does not wait out smoltcp's one-second neighbour
    /// discovery pause (a Linux guest queues it instead).
    pub fn learn_gateway(&mut self, stack: &mut NetStack) {
        for target in [GATEWAY_IP, DNS_IP] {
            let repr = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: EthernetAddress(GUEST_MAC),
                source_protocol_addr: GUEST_IP,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: target,
            };
            let mut frame = vec![0; 14 + repr.buffer_len()];
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            EthernetRepr {
                src_addr: EthernetAddress(GUEST_MAC),
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EthernetProtocol::Arp,
            }
            .emit(&mut eth);
            repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
            self.phy.tx.push_back(frame);
        }
        self.exchange(stack);
    }

    /// A TCP socket connecting from `local_port` to `remote`.
    pub fn tcp_connect(
        &mut self,
        remote: std::net::SocketAddrV4,
        local_port: u16,
        buffer: usize,
    ) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        // A fresh socket with a free port: connect cannot fail.
        let _ = socket.connect(
            self.iface.context(),
            (*remote.ip(), remote.port()),
            local_port,
        );
        self.sockets.add(socket)
    }

    /// A TCP socket listening on `port` (for forwards).
    pub fn tcp_listen(&mut self, port: u16, buffer: usize) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        let _ = socket.listen(port);
        self.sockets.add(socket)
    }

    /// A UDP socket bound to `port`.
    pub fn udp_bind(&mut self, port: u16) -> SocketHandle {
        let meta = || vec![udp::PacketMetadata::EMPTY; 16];
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(meta(), vec![0; 1 << 17]),
            udp::PacketBuffer::new(meta(), vec![0; 1 << 17]),
        );
        let _ = socket.bind(port);
        self.sockets.add(socket)
    }

    /// The TCP socket of `handle`.
    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// The UDP socket of `handle`.
    pub fn udp(&mut self, handle: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(handle)
    }
}

/// Waits until `fd` is readable or `timeout` passes.
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// A guest TCP socket as an [`std::io::Write`] (for a TLS library's
/// `write_tls`): what fits in its send buffer is taken; a full buffer is
/// `WouldBlock`.
pub struct SocketWriter<'a, 'b>(pub &'a mut tcp::Socket<'b>);

impl std::io::Write for SocketWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.send_slice(buf) {
            Ok(0) => Err(std::io::ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
