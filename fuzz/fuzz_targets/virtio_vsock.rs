//! virtio-vsock: the guest's packets (well-formed ones with any header
//! field, and hostile chains) through the transmit path into the real
//! connection muxer, its answers through the receive path, with host
//! peers on Unix sockets that connect, write and hang up in between.
#![no_main]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use agentvm_devices::virtio::vsock::muxer::{FdOp, Muxer};
use agentvm_devices::virtio::vsock::packet::{Header, HDR_LEN, HOST_CID};
use agentvm_devices::virtio::vsock::queue::{process_rx, process_tx};
use agentvm_fuzz::ring::{Buf, Irq, Kick, Ring};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::epoll::EventSet;

const GUEST_CID: u64 = 3;
/// The host port a peer listens on (`{uds}_52`).
const PEER_PORT: u32 = 52;
/// Actions per input at most.
const MAX_ACTIONS: usize = 48;

#[derive(Debug, Arbitrary)]
enum Action {
    /// A packet from the guest in one well-formed chain.
    Packet {
        header: PacketHeader,
        payload: Vec<u8>,
        /// Header and payload in separate descriptors.
        split: bool,
    },
    /// Hostile chains on the transmit queue.
    RawTx(Kick),
    /// Receive buffers of this size posted, then the receive path run.
    Rx { count: u8, size: u16 },
    /// Hostile chains on the receive queue, then the receive path run.
    RawRx(Kick),
    /// An event on the n-th socket the muxer watches.
    Event { which: u8, events: u8 },
    /// A host client connects to the device's socket and writes this.
    HostClient(Vec<u8>),
    /// A host peer the muxer connected to writes this.
    PeerWrite { which: u8, data: Vec<u8> },
    /// A host peer hangs up.
    PeerClose(u8),
}

#[derive(Debug, Arbitrary)]
struct PacketHeader {
    src_cid: Option<u64>,
    dst_cid: Option<u64>,
    src_port: u8,
    /// `None`: the peer's port (a connection that works).
    dst_port: Option<u32>,
    /// A declared length other than the payload's.
    len: Option<u32>,
    socket_type: Option<u16>,
    op: u8,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl PacketHeader {
    fn bytes(&self, payload: usize) -> [u8; HDR_LEN] {
        Header {
            src_cid: self.src_cid.unwrap_or(GUEST_CID),
            dst_cid: self.dst_cid.unwrap_or(HOST_CID),
            src_port: 1000 + u32::from(self.src_port % 8),
            dst_port: self.dst_port.unwrap_or(PEER_PORT),
            len: self.len.unwrap_or(payload as u32),
            socket_type: self.socket_type.unwrap_or(1),
            op: u16::from(self.op % 9),
            flags: self.flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
        .to_bytes()
    }
}

/// The device's socket and a peer's, in a directory made once.
struct Sockets {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    device: Arc<UnixListener>,
    peer: UnixListener,
}

fn sockets() -> &'static Sockets {
    static SOCKETS: OnceLock<Sockets> = OnceLock::new();
    SOCKETS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let uds = dir.path().join("vsock");
        let device = UnixListener::bind(&uds).expect("the device's socket");
        device.set_nonblocking(true).expect("non-blocking");
        let peer = UnixListener::bind(dir.path().join(format!("vsock_{PEER_PORT}")))
            .expect("the peer's socket");
        peer.set_nonblocking(true).expect("non-blocking");
        Sockets {
            _dir: dir,
            uds,
            device: Arc::new(device),
            peer,
        }
    })
}

/// Drops whatever the last input left waiting on `listener`.
fn drain(listener: &UnixListener) {
    while listener.accept().is_ok() {}
}

fuzz_target!(|input: (u8, u8, Vec<Action>)| {
    let (tx_size, rx_size, actions) = input;
    let s = sockets();
    drain(&s.device);
    drain(&s.peer);
    let mut muxer = Muxer::new(GUEST_CID, s.uds.clone(), s.device.clone());
    let mut tx = Ring::new(tx_size, false);
    let mut rx = Ring::in_memory(1, rx_size, false);
    let mut scratch = Vec::new();
    let mut watched: BTreeMap<u32, RawFd> = BTreeMap::new();
    let mut peers: Vec<UnixStream> = Vec::new();
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut rx_broken = false;
    let mut tx_broken = false;
    for action in actions.into_iter().take(MAX_ACTIONS) {
        match action {
            Action::Packet {
                header,
                payload,
                split,
            } => {
                let head = header.bytes(payload.len());
                if split {
                    tx.push(&[Buf::Read(head.to_vec()), Buf::Read(payload)]);
                } else {
                    let mut bytes = head.to_vec();
                    bytes.extend_from_slice(&payload);
                    tx.push(&[Buf::Read(bytes)]);
                }
            }
            Action::RawTx(kick) => tx.apply(&kick),
            Action::Rx { count, size } => {
                for _ in 0..count % 8 {
                    rx.push(&[Buf::Write(u32::from(size))]);
                }
            }
            Action::RawRx(kick) => rx.apply(&kick),
            Action::Event { which, events } => {
                let n = usize::from(which) % watched.len().max(1);
                if let Some(&token) = watched.keys().nth(n) {
                    muxer.on_event(token, EventSet::from_bits_truncate(u32::from(events)));
                }
            }
            Action::HostClient(line) => {
                if let Ok(mut client) = UnixStream::connect(&s.uds) {
                    let _ = client.write_all(&line);
                    clients.push(client);
                }
            }
            Action::PeerWrite { which, data } => {
                let n = usize::from(which) % peers.len().max(1);
                if let Some(peer) = peers.get_mut(n) {
                    let _ = peer.write_all(&data);
                }
            }
            Action::PeerClose(which) => {
                let n = usize::from(which) % peers.len().max(1);
                if n < peers.len() {
                    peers.remove(n);
                }
            }
        }
        if !tx_broken {
            tx_broken = process_tx(&tx.mem, &mut tx.queue, &mut muxer, &Irq, &mut scratch).is_err();
        }
        if !rx_broken {
            rx_broken = process_rx(&rx.mem, &mut rx.queue, &mut muxer, &Irq, &mut scratch).is_err();
        }
        muxer.apply_fd_ops(|op| match op {
            FdOp::Add { fd, token, .. } | FdOp::Modify { fd, token, .. } => {
                watched.insert(token, fd);
            }
            FdOp::Remove { fd } => watched.retain(|_, f| *f != fd),
        });
        while let Ok((peer, _)) = s.peer.accept() {
            let _ = peer.set_nonblocking(true);
            peers.push(peer);
        }
    }
});
