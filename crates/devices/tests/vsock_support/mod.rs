//! A guest for the vsock tests: the driver harness plus the bookkeeping a
//! Linux vsock driver keeps (posted receive buffers, credit), and host-side
//! Unix socket helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentvm_devices::testing::{Buf, Driver, Used};
use agentvm_devices::virtio::vsock::packet::{op, socket_type, Header, HDR_LEN, HOST_CID};
use agentvm_devices::virtio::vsock::queue::{RX_QUEUE, TX_QUEUE};
use agentvm_devices::virtio::vsock::{Vsock, VsockCounters};
use agentvm_devices::virtio::VIRTIO_F_VERSION_1;

pub const GUEST_CID: u64 = 3;
pub const MEM: usize = 32 << 20;
/// A hang guard only: every wait ends as soon as the device answers.
pub const HANG_GUARD: Duration = Duration::from_secs(20);
/// Linux's receive buffer: a header plus 4 KiB.
pub const RX_BUF: u32 = HDR_LEN as u32 + 4096;
/// The receive buffer our guest advertises unless a test says otherwise.
pub const GUEST_BUF_ALLOC: u32 = 256 * 1024;

/// A directory for sockets, removed with its contents on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("avm-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `{uds}_{port}`, where guest connections to host port `port` go.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// A header from the guest's `src_port` to host port `dst_port`.
pub fn from_guest(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        socket_type: socket_type::STREAM,
        op,
        buf_alloc: GUEST_BUF_ALLOC,
        ..Header::default()
    }
}

/// A packet the device put in a receive buffer.
#[derive(Debug, Clone)]
pub struct Packet {
    pub hdr: Header,
    pub payload: Vec<u8>,
}

/// The driver plus a vsock driver's bookkeeping.
pub struct Guest {
    pub drv: Driver,
    pub uds: PathBuf,
    inbox: VecDeque<Packet>,
    /// Receive buffers to keep posted (re-posted as they come back).
    pub keep_posted: bool,
    rx_len: u32,
}

impl Guest {
    /// A running device listening on `dir/v.sock`, with `rx_buffers`
    /// receive buffers posted.
    pub fn start(dir: &TestDir, rx_buffers: usize) -> Guest {
        Self::start_counted(dir, rx_buffers, VsockCounters::default())
    }

    /// As [`Guest::start`], the device counting its refusals in `counters`.
    pub fn start_counted(dir: &TestDir, rx_buffers: usize, counters: VsockCounters) -> Guest {
        let uds = dir.path("v.sock");
        let vsock = Vsock::new(GUEST_CID, &uds).unwrap().with_counters(counters);
        let mut drv = Driver::new(Box::new(vsock), MEM).unwrap();
        drv.init(VIRTIO_F_VERSION_1).unwrap();
        let mut guest = Guest {
            drv,
            uds,
            inbox: VecDeque::new(),
            keep_posted: true,
            rx_len: RX_BUF,
        };
        guest.post_rx(rx_buffers);
        guest
    }

    /// Posts `n` fresh receive buffers and notifies.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            self.drv
                .add_chain(RX_QUEUE, &[Buf::writable(self.rx_len)])
                .unwrap();
        }
        if n > 0 {
            self.drv.notify(RX_QUEUE);
        }
    }

    /// Posts one chain of raw buffers on the receive queue and notifies.
    pub fn post_rx_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.drv.add_chain(RX_QUEUE, bufs).unwrap();
        self.drv.notify(RX_QUEUE);
        head
    }

    /// Transmits a packet and waits until the device consumed it.
    pub fn send(&mut self, hdr: Header, payload: &[u8]) {
        let mut hdr = hdr;
        hdr.len = payload.len() as u32;
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_chain(&[Buf::readable(bytes)]);
    }

    /// Transmits a chain as is and waits until the device consumed it.
    pub fn send_chain(&mut self, bufs: &[Buf]) -> Used {
        let head = self.drv.add_chain(TX_QUEUE, bufs).unwrap();
        self.drv.notify(TX_QUEUE);
        let used = self.drv.wait_used(TX_QUEUE, HANG_GUARD).unwrap();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].head, head);
        assert_eq!(used[0].len, 0, "the device writes nothing into tx chains");
        used.into_iter().next().unwrap()
    }

    /// Collects whatever the device returned in the receive queue.
    fn collect(&mut self, used: Vec<Used>) {
        for u in used {
            if u.len > 0 {
                let bytes = self.drv.read_written(&u).unwrap();
                assert!(bytes.len() >= HDR_LEN, "short packet {}", bytes.len());
                let hdr = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
                let payload = bytes[HDR_LEN..].to_vec();
                assert_eq!(hdr.len as usize, payload.len(), "{hdr:?}");
                self.inbox.push_back(Packet { hdr, payload });
            }
            if self.keep_posted {
                let bufs: Vec<Buf> = u
                    .buffers
                    .iter()
                    .map(|b| Buf::raw(b.addr, b.len, b.writable))
                    .collect();
                self.drv.add_chain(RX_QUEUE, &bufs).unwrap();
                self.drv.notify(RX_QUEUE);
            }
        }
    }

    /// The next packet from the device.
    pub fn recv(&mut self) -> Packet {
        while self.inbox.is_empty() {
            let used = self.drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
            self.collect(used);
        }
        self.inbox.pop_front().unwrap()
    }

    /// The next packet, which must have op `op`.
    pub fn expect(&mut self, op: u16) -> Packet {
        let p = self.recv();
        assert_eq!(p.hdr.op, op, "{:?}", p.hdr);
        assert_eq!((p.hdr.src_cid, p.hdr.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(p.hdr.socket_type, socket_type::STREAM);
        p
    }

    /// Whether a packet is already waiting (no waiting here).
    pub fn has_packet(&mut self) -> bool {
        let used = self.drv.used(RX_QUEUE).unwrap();
        self.collect(used);
        !self.inbox.is_empty()
    }

    /// A host client connects to guest port `port`; the guest accepts.
    /// Returns the client (past its OK line) and the guest's view.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, Conn) {
        let mut client = UnixStream::connect(&self.uds).unwrap();
        client.set_read_timeout(Some(HANG_GUARD)).unwrap();
        io::Write::write_all(&mut client, format!("CONNECT {port}\n").as_bytes()).unwrap();
        let req = self.expect(op::REQUEST);
        assert_eq!(req.hdr.dst_port, port);
        assert!(req.hdr.src_port >= 1 << 30, "ephemeral host port");
        let conn = Conn::new(req.hdr.dst_port, req.hdr.src_port, &req.hdr);
        self.send(conn.hdr(op::RESPONSE), &[]);
        let line = read_line(&mut client);
        assert_eq!(line, format!("OK {}\n", conn.host_port));
        (client, conn)
    }

    /// The guest connects to host port `port`, where a listener waits.
    /// Returns the accepted host socket and the guest's view.
    pub fn guest_connect(
        &mut self,
        listener: &UnixListener,
        guest_port: u32,
        port: u32,
    ) -> (UnixStream, Conn) {
        self.send(from_guest(op::REQUEST, guest_port, port), &[]);
        let resp = self.expect(op::RESPONSE);
        assert_eq!((resp.hdr.src_port, resp.hdr.dst_port), (port, guest_port));
        let (host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(HANG_GUARD)).unwrap();
        (host, Conn::new(guest_port, port, &resp.hdr))
    }

    /// Receives RW packets until `n` bytes arrived; other packets fail.
    pub fn read_bytes(&mut self, conn: &mut Conn, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let p = self.expect(op::RW);
            conn.check(&p.hdr);
            out.extend_from_slice(&p.payload);
        }
        assert_eq!(out.len(), n);
        conn.fwd_cnt += n as u32;
        out
    }
}

/// The guest's side of one connection.
#[derive(Debug, Clone)]
pub struct Conn {
    pub guest_port: u32,
    pub host_port: u32,
    /// What the guest advertises.
    pub buf_alloc: u32,
    /// Bytes the guest consumed.
    pub fwd_cnt: u32,
    /// Bytes the guest sent.
    pub tx_cnt: u32,
    /// The device's last advertised credit.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
}

impl Conn {
    pub fn new(guest_port: u32, host_port: u32, first: &Header) -> Conn {
        Conn {
            guest_port,
            host_port,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: 0,
            tx_cnt: 0,
            peer_buf_alloc: first.buf_alloc,
            peer_fwd_cnt: first.fwd_cnt,
        }
    }

    /// A header on this connection with the guest's credit.
    pub fn hdr(&self, op: u16) -> Header {
        Header {
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            ..from_guest(op, self.guest_port, self.host_port)
        }
    }

    /// Checks a packet belongs here and notes the device's credit.
    pub fn check(&mut self, hdr: &Header) {
        assert_eq!(
            (hdr.src_port, hdr.dst_port),
            (self.host_port, self.guest_port)
        );
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// What the device lets the guest send now, as far as the guest knows.
    pub fn credit(&self) -> u32 {
        self.peer_buf_alloc - (self.tx_cnt - self.peer_fwd_cnt)
    }
}

/// Reads up to and including a newline.
pub fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF before the newline");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whether the peer closed `s` (EOF or reset), reading away data first.
pub fn wait_closed(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return rest,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return rest,
            Err(e) => panic!("socket not closed: {e}"),
        }
    }
}

/// A recognisable byte stream.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}
