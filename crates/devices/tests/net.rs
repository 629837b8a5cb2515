//! virtio-net end to end: a driver playing Linux's virtio-net driver over
//! virtio-mmio, against a mock backend that records the guest's frames and
//! queues frames for it — features and config space, both data paths,
//! mergeable receive buffers, checksum offload, and a guest that lies.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentvm_devices::testing::{Buf, Descriptor, Driver, HarnessError, Used};
use agentvm_devices::virtio::net::device::{config, features, OFFERED_FEATURES};
use agentvm_devices::virtio::net::header::{
    F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_UDP,
};
use agentvm_devices::virtio::net::{
    FrameBackend, Net, NetConfigError, NetHeader, DEFAULT_MTU, MAX_FRAME_LEN, NET_HDR_LEN,
    RX_QUEUE, TX_QUEUE,
};
use agentvm_devices::virtio::transport::mmio::status;
use agentvm_devices::virtio::{device_type, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM: usize = 48 << 20;
/// A hang guard only: every wait here ends as soon as the device answers.
const HANG_GUARD: Duration = Duration::from_secs(20);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(150);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const ALL: u64 = OFFERED_FEATURES;

#[derive(Default)]
struct Shared {
    sent: Vec<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
    polls: usize,
    /// A frame the backend produces on the first poll after a time,
    /// without signalling its fd (a retransmission timer, say).
    timed: Option<(Instant, Vec<u8>)>,
    /// poll() leaves the fd readable (a backend with host work it cannot
    /// do while the guest takes no frames).
    sticky_fd: bool,
    /// push_frame panics (a backend bug).
    panic_on_push: bool,
}

/// A backend that records what the guest sends and hands out what the test
/// queued; its fd (an eventfd) is readable while frames wait.
struct Mock {
    shared: Arc<Mutex<Shared>>,
    evt: EventFd,
}

/// The test's side of a [`Mock`].
#[derive(Clone)]
struct Ctl {
    shared: Arc<Mutex<Shared>>,
    evt: Arc<EventFd>,
}

fn mock() -> (Mock, Ctl) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let ctl = Ctl {
        shared: shared.clone(),
        evt: Arc::new(evt.try_clone().unwrap()),
    };
    (Mock { shared, evt }, ctl)
}

impl AsRawFd for Mock {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl FrameBackend for Mock {
    fn push_frame(&mut self, frame: &[u8]) {
        let mut shared = self.shared.lock().unwrap();
        if shared.panic_on_push {
            drop(shared);
            panic!("backend bug");
        }
        shared.sent.push(frame.to_vec());
    }
    fn pop_frame(&mut self) -> Option<Vec<u8>> {
        self.shared.lock().unwrap().to_guest.pop_front()
    }
    fn has_frames(&self) -> bool {
        !self.shared.lock().unwrap().to_guest.is_empty()
    }
    fn poll(&mut self) {
        let mut shared = self.shared.lock().unwrap();
        if !shared.sticky_fd {
            let _ = self.evt.read();
        }
        shared.polls += 1;
        if let Some((at, _)) = &shared.timed {
            if Instant::now() >= *at {
                let (_, frame) = shared.timed.take().unwrap();
                shared.to_guest.push_back(frame);
            }
        }
    }
    fn poll_delay(&mut self) -> Option<Duration> {
        let shared = self.shared.lock().unwrap();
        let (at, _) = shared.timed.as_ref()?;
        Some(at.saturating_duration_since(Instant::now()))
    }
}

impl Ctl {
    /// Queues a frame for the guest and wakes the device, as the stack's
    /// epoll fd would.
    fn queue_frame(&self, frame: Vec<u8>) {
        self.shared.lock().unwrap().to_guest.push_back(frame);
        self.evt.write(1).unwrap();
    }

    /// A frame the backend produces only when polled after `delay`.
    fn queue_timed(&self, frame: Vec<u8>, delay: Duration) {
        self.shared.lock().unwrap().timed = Some((Instant::now() + delay, frame));
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        self.shared.lock().unwrap().sent.clone()
    }

    fn polls(&self) -> usize {
        self.shared.lock().unwrap().polls
    }

    fn waiting(&self) -> usize {
        self.shared.lock().unwrap().to_guest.len()
    }

    /// Waits until the backend received `n` frames in total.
    fn wait_sent(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let sent = self.sent();
            if sent.len() >= n {
                return sent;
            }
            assert!(
                Instant::now() < deadline,
                "backend got {} of {n}",
                sent.len()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A driver for a net device over a fresh mock, initialised with `wanted`.
fn start(wanted: u64) -> (Driver, Ctl) {
    let (backend, ctl) = mock();
    let mut drv = Driver::new(Box::new(Net::new(backend, MAC)), MEM).unwrap();
    assert_eq!(drv.init(wanted).unwrap(), wanted & ALL);
    (drv, ctl)
}

/// A recognisable frame of `len` bytes: Ethernet-ish, then a counter.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 253) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

fn header(flags: u8, gso_type: u8) -> NetHeader {
    NetHeader {
        flags,
        gso_type,
        ..NetHeader::default()
    }
}

/// Transmits `bufs`, waits for the chain to come back and returns it.
fn transmit(drv: &mut Driver, bufs: &[Buf]) -> Used {
    let head = drv.add_chain(TX_QUEUE, bufs).unwrap();
    drv.notify(TX_QUEUE);
    let used = drv.wait_used(TX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].head, head);
    used.into_iter().next().unwrap()
}

fn with_header(hdr: NetHeader, frame: &[u8]) -> Vec<u8> {
    [hdr.to_bytes().as_slice(), frame].concat()
}

/// Posts `n` receive chains of `bufs` each, then notifies.
fn post_rx(drv: &mut Driver, n: usize, bufs: &[Buf]) -> Vec<u16> {
    let heads = (0..n)
        .map(|_| drv.add_chain(RX_QUEUE, bufs).unwrap())
        .collect();
    drv.notify(RX_QUEUE);
    heads
}

/// Splits what a used receive chain holds into header and frame.
fn received(drv: &Driver, used: &Used) -> (NetHeader, Vec<u8>) {
    let bytes = drv.read_written(used).unwrap();
    assert!(bytes.len() >= NET_HDR_LEN, "{} bytes", bytes.len());
    let hdr = NetHeader::from_bytes(bytes[..NET_HDR_LEN].try_into().unwrap());
    (hdr, bytes[NET_HDR_LEN..].to_vec())
}

/// Nothing more comes back on `queue` for a while.
fn assert_quiet(drv: &mut Driver, queue: u16) {
    std::thread::sleep(QUIET);
    assert_eq!(drv.used(queue).unwrap(), []);
}

/// The guest still gets service both ways.
fn still_serves(drv: &mut Driver, ctl: &Ctl) {
    let before = ctl.sent().len();
    let out = frame(80, 99);
    transmit(drv, &[Buf::readable(with_header(header(0, 0), &out))]);
    assert_eq!(ctl.wait_sent(before + 1)[before], out);
    let heads = post_rx(drv, 1, &[Buf::writable(2048)]);
    let back = frame(90, 98);
    ctl.queue_frame(back.clone());
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].head, heads[0]);
    assert_eq!(received(drv, &used[0]).1, back);
}

// ---- checksums, computed independently of the device ---------------------

fn sum16(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |&b| u32::from(b));
        sum += hi | lo;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An Ethernet + IPv4 + TCP frame with `payload`; the TCP checksum field
/// holds the pseudo-header sum, as a guest leaving it to the device writes.
fn tcp_frame(payload: &[u8]) -> Vec<u8> {
    let src = [10, 0, 2, 15];
    let dst = [93, 184, 216, 34];
    let tcp_len = 20 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&[0x52, 0x55, 10, 0, 2, 2]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + tcp_len) as u16;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let ip_csum = !fold(sum16(&f[14..34]));
    f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
    // TCP: ports, seq, ack, offset 5, flags ACK|PSH, window, csum, urgent.
    f.extend_from_slice(&[
        0xc0, 0x01, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff,
    ]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 6, (tcp_len >> 8) as u8, tcp_len as u8]);
    f.extend_from_slice(&fold(sum16(&pseudo)).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Whether the TCP checksum of an Ethernet/IPv4 frame verifies.
fn tcp_checksum_ok(f: &[u8]) -> bool {
    let tcp = &f[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 6, (tcp.len() >> 8) as u8, tcp.len() as u8]);
    fold(sum16(&pseudo) + sum16(tcp)) == 0xffff
}

const TCP_CSUM_START: u16 = 34;
const TCP_CSUM_OFFSET: u16 = 16;

// ---- identity -------------------------------------------------------------

#[test]
fn features_queues_and_config_space() {
    let (backend, _ctl) = mock();
    let mut drv = Driver::new(Box::new(Net::new(backend, MAC)), MEM).unwrap();
    assert_eq!(drv.probe().unwrap(), device_type::NET);
    let offered = drv.device_features();
    assert_eq!(offered, ALL);
    for f in [
        VIRTIO_F_VERSION_1,
        features::MAC,
        features::STATUS,
        features::MTU,
        features::MRG_RXBUF,
        features::CSUM,
        features::GUEST_CSUM,
        features::HOST_TSO4,
        features::HOST_TSO6,
        features::HOST_ECN,
    ] {
        assert_ne!(offered & f, 0, "feature {f:#x} not offered");
    }
    assert_eq!(offered & features::GUEST_TSO4, 0);
    assert_eq!(
        (0..3).map(|q| drv.queue_max(q)).collect::<Vec<_>>(),
        [256, 256, 0]
    );
    assert_eq!(drv.config_bytes(config::MAC, 6), MAC);
    assert_eq!(drv.config_u16(config::STATUS), 1, "link up");
    assert_eq!(drv.config_u16(config::MAX_VIRTQUEUE_PAIRS), 1);
    assert_eq!(drv.config_u16(config::MTU), DEFAULT_MTU);
    assert_eq!(drv.config_u32(12), 0, "nothing after mtu");
    // The MAC is read-only.
    drv.write_config(config::MAC, &[1, 2, 3, 4]);
    assert_eq!(drv.config_bytes(config::MAC, 6), MAC);
    assert_eq!(drv.init(ALL).unwrap(), ALL);
    assert!(drv.transport().is_activated());
}

#[test]
fn mtu_is_an_option_within_bounds() {
    let (backend, _ctl) = mock();
    let net = Net::new(backend, MAC).with_mtu(9000).unwrap();
    assert_eq!(net.mtu(), 9000);
    let mut drv = Driver::new(Box::new(net), MEM).unwrap();
    assert_eq!(drv.config_u16(config::MTU), 9000);
    for bad in [0, 67, u16::MAX] {
        let (backend, _ctl) = mock();
        let err = Net::new(backend, MAC).with_mtu(bad).err().unwrap();
        assert!(matches!(err, NetConfigError::Mtu(m) if m == bad));
    }
}

#[test]
fn activation_needs_both_queues() {
    let (backend, ctl) = mock();
    let mut drv = Driver::new(Box::new(Net::new(backend, MAC)), MEM).unwrap();
    drv.negotiate(ALL).unwrap();
    drv.setup_queue(RX_QUEUE, 64).unwrap();
    assert!(drv.driver_ok().is_err(), "one queue is not enough");
    drv.init(ALL).unwrap();
    still_serves(&mut drv, &ctl);
}

// ---- transmit -------------------------------------------------------------

#[test]
fn transmitted_frames_reach_the_backend() {
    let (mut drv, ctl) = start(ALL);
    let a = frame(60, 1);
    let used = transmit(&mut drv, &[Buf::readable(with_header(header(0, 0), &a))]);
    assert_eq!(used.len, 0, "the device writes nothing on tx");
    assert_eq!(ctl.wait_sent(1), [a]);
    // Header and frame split anywhere across descriptors.
    let b = frame(1514, 2);
    let bytes = with_header(header(0, 0), &b);
    let cuts = [0, 5, 12, 12, 40, 700, bytes.len()];
    let chain: Vec<Buf> = cuts
        .windows(2)
        .map(|w| Buf::readable(bytes[w[0]..w[1]].to_vec()))
        .collect();
    transmit(&mut drv, &chain);
    assert_eq!(ctl.wait_sent(2)[1], b);
    // Many at once, in order, after one notification.
    let frames: Vec<Vec<u8>> = (0..40).map(|i| frame(100 + i, i as u8)).collect();
    for f in &frames {
        drv.add_chain(TX_QUEUE, &[Buf::readable(with_header(header(0, 0), f))])
            .unwrap();
    }
    drv.notify(TX_QUEUE);
    drv.wait_used_n(TX_QUEUE, 40, HANG_GUARD).unwrap();
    assert_eq!(ctl.wait_sent(42)[2..], frames);
    assert!(drv.interrupt_count() >= 1);
}

#[test]
fn needs_csum_frames_get_their_checksum_completed() {
    let (mut drv, ctl) = start(ALL);
    for len in [0, 1, 333, 1400] {
        let f = tcp_frame(&frame(len, len as u8));
        assert!(!tcp_checksum_ok(&f), "the guest left the checksum to us");
        let hdr = NetHeader {
            csum_start: TCP_CSUM_START,
            csum_offset: TCP_CSUM_OFFSET,
            ..header(F_NEEDS_CSUM, 0)
        };
        let before = ctl.sent().len();
        transmit(&mut drv, &[Buf::readable(with_header(hdr, &f))]);
        let got = ctl.wait_sent(before + 1).pop().unwrap();
        assert!(tcp_checksum_ok(&got), "payload {len}");
        // Only the checksum changed.
        assert_eq!(got[..50], f[..50]);
        assert_eq!(got[52..], f[52..]);
    }
    // Without the flag the frame passes untouched.
    let f = tcp_frame(b"as is");
    transmit(&mut drv, &[Buf::readable(with_header(header(0, 0), &f))]);
    assert_eq!(ctl.wait_sent(5)[4], f);
}

#[test]
fn tso_segments_pass_whole_with_their_checksum() {
    let (mut drv, ctl) = start(ALL);
    let payload = frame(60_000, 7);
    let f = tcp_frame(&payload);
    let hdr = NetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4 | GSO_ECN,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: TCP_CSUM_START,
        csum_offset: TCP_CSUM_OFFSET,
        num_buffers: 0,
    };
    // As Linux sends it: the headers, then the payload in page-sized pieces.
    let mut chain = vec![Buf::readable(with_header(hdr, &f[..54]))];
    chain.extend(f[54..].chunks(4096).map(|c| Buf::readable(c.to_vec())));
    transmit(&mut drv, &chain);
    let got = ctl.wait_sent(1).pop().unwrap();
    assert_eq!(got.len(), f.len());
    assert!(tcp_checksum_ok(&got));
    assert_eq!(got[54..], f[54..]);

    // Without HOST_TSO4 the same segment is refused.
    let (mut drv, ctl) = start(ALL & !features::HOST_TSO4 & !features::HOST_ECN);
    transmit(&mut drv, &chain);
    assert_quiet(&mut drv, TX_QUEUE);
    assert!(ctl.sent().is_empty());
    still_serves(&mut drv, &ctl);
}

// ---- receive --------------------------------------------------------------

#[test]
fn received_frames_land_behind_a_header() {
    let (mut drv, ctl) = start(ALL);
    let heads = post_rx(&mut drv, 4, &[Buf::writable(2048)]);
    let f = frame(100, 3);
    ctl.queue_frame(f.clone());
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!((used[0].head, used[0].len), (heads[0], 112));
    let (hdr, got) = received(&drv, &used[0]);
    assert_eq!(
        hdr,
        NetHeader {
            flags: F_DATA_VALID,
            num_buffers: 1,
            ..NetHeader::default()
        }
    );
    assert_eq!(got, f);
    assert!(drv.interrupt_count() >= 1);

    // Several queued: one each, in order.
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(200 + i, i as u8)).collect();
    for f in &frames {
        ctl.queue_frame(f.clone());
    }
    let used = drv.wait_used_n(RX_QUEUE, 3, HANG_GUARD).unwrap();
    let got: Vec<Vec<u8>> = used.iter().map(|u| received(&drv, u).1).collect();
    assert_eq!(got, frames);
    assert_eq!(used.iter().map(|u| u.head).collect::<Vec<_>>(), heads[1..]);
}

#[test]
fn without_guest_csum_frames_are_not_marked_valid() {
    let (mut drv, ctl) = start(ALL & !features::GUEST_CSUM);
    post_rx(&mut drv, 1, &[Buf::writable(256)]);
    ctl.queue_frame(frame(64, 4));
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    let (hdr, got) = received(&drv, &used[0]);
    assert_eq!(hdr.flags, 0);
    assert_eq!(hdr.num_buffers, 1);
    assert_eq!(got, frame(64, 4));
}

#[test]
fn a_64k_frame_spreads_over_many_small_mergeable_buffers() {
    let (mut drv, ctl) = start(ALL);
    // 80 chains of 700 + 324 bytes: 1024 each.
    let heads = post_rx(&mut drv, 80, &[Buf::writable(700), Buf::writable(324)]);
    let big = frame(usize::from(DEFAULT_MTU) + 14, 5);
    let need = NET_HDR_LEN + big.len();
    let chains = need.div_ceil(1024);
    ctl.queue_frame(big.clone());
    let used = drv.wait_used_n(RX_QUEUE, chains, HANG_GUARD).unwrap();
    assert_eq!(used.len(), chains);
    assert_eq!(
        used.iter().map(|u| u.head).collect::<Vec<_>>(),
        heads[..chains]
    );
    let lens: Vec<u32> = used.iter().map(|u| u.len).collect();
    assert!(lens[..chains - 1].iter().all(|&l| l == 1024));
    assert_eq!(lens[chains - 1] as usize, need - 1024 * (chains - 1));
    let mut bytes = Vec::new();
    for u in &used {
        bytes.extend(drv.read_written(u).unwrap());
    }
    let hdr = NetHeader::from_bytes(bytes[..NET_HDR_LEN].try_into().unwrap());
    assert_eq!(hdr.num_buffers as usize, chains);
    assert_eq!(hdr.flags, F_DATA_VALID);
    assert!(bytes[NET_HDR_LEN..] == big[..], "frame not byte-exact");

    // The next frame takes the next buffer.
    ctl.queue_frame(frame(50, 6));
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used[0].head, heads[chains]);
    let (hdr, got) = received(&drv, &used[0]);
    assert_eq!((hdr.num_buffers, got), (1, frame(50, 6)));
}

#[test]
fn a_frame_waits_when_the_ring_runs_dry_mid_frame() {
    let (mut drv, ctl) = start(ALL);
    let first = post_rx(&mut drv, 10, &[Buf::writable(1024)]);
    let f = frame(20_000, 8);
    ctl.queue_frame(f.clone());
    ctl.queue_frame(frame(30, 9));
    // 10 KiB of buffers for a 20 KB frame: nothing is published.
    assert_quiet(&mut drv, RX_QUEUE);
    let more = post_rx(&mut drv, 12, &[Buf::writable(1024)]);
    let chains = (NET_HDR_LEN + f.len()).div_ceil(1024);
    let used = drv.wait_used_n(RX_QUEUE, chains + 1, HANG_GUARD).unwrap();
    let heads: Vec<u16> = used.iter().map(|u| u.head).collect();
    assert_eq!(heads[..10], first);
    assert_eq!(heads[10..], more[..chains + 1 - 10]);
    let mut bytes = Vec::new();
    for u in &used[..chains] {
        bytes.extend(drv.read_written(u).unwrap());
    }
    assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]) as usize, chains);
    assert!(bytes[NET_HDR_LEN..] == f[..]);
    assert_eq!(received(&drv, &used[chains]).1, frame(30, 9));
}

#[test]
fn frames_stay_in_the_backend_while_the_guest_posts_no_buffers() {
    let (mut drv, ctl) = start(ALL);
    for i in 0..300u16 {
        ctl.queue_frame(frame(60, i as u8));
    }
    std::thread::sleep(QUIET);
    // At most the frame at hand left the backend.
    assert!(ctl.waiting() >= 299);
    // A backend whose fd stays readable does not spin the worker while
    // the guest takes nothing.
    ctl.shared.lock().unwrap().sticky_fd = true;
    ctl.evt.write(1).unwrap();
    std::thread::sleep(QUIET);
    let polls = ctl.polls();
    std::thread::sleep(QUIET);
    assert_eq!(ctl.polls(), polls, "the worker spins on the backend's fd");
    ctl.shared.lock().unwrap().sticky_fd = false;
    // More than a queue's worth is served across rounds.
    let heads = post_rx(&mut drv, 256, &[Buf::writable(128)]);
    let used = drv.wait_used_n(RX_QUEUE, 256, HANG_GUARD).unwrap();
    assert_eq!(used.iter().map(|u| u.head).collect::<Vec<_>>(), heads);
    post_rx(&mut drv, 44, &[Buf::writable(128)]);
    let rest = drv.wait_used_n(RX_QUEUE, 44, HANG_GUARD).unwrap();
    let got: Vec<Vec<u8>> = used
        .iter()
        .chain(&rest)
        .map(|u| received(&drv, u).1)
        .collect();
    let want: Vec<Vec<u8>> = (0..300u16).map(|i| frame(60, i as u8)).collect();
    assert_eq!(got, want);
    assert_eq!(ctl.waiting(), 0);
}

#[test]
fn without_mrg_rxbuf_a_small_chain_loses_no_frame() {
    let (mut drv, ctl) = start(ALL & !features::MRG_RXBUF);
    let small = drv.add_chain(RX_QUEUE, &[Buf::writable(100)]).unwrap();
    let f = frame(1000, 10);
    ctl.queue_frame(f.clone());
    drv.notify(RX_QUEUE);
    // The small chain comes back empty and untouched; the frame waits.
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(
        used.iter().map(|u| (u.head, u.len)).collect::<Vec<_>>(),
        [(small, 0)]
    );
    assert_eq!(
        drv.read_mem(used[0].buffers[0].addr, 100).unwrap(),
        [0; 100]
    );
    let big = post_rx(&mut drv, 1, &[Buf::writable(600), Buf::writable(600)]);
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!((used[0].head, used[0].len), (big[0], 1012));
    let (hdr, got) = received(&drv, &used[0]);
    assert_eq!(hdr.num_buffers, 1);
    assert_eq!(got, f);
}

#[test]
fn without_the_mtu_feature_frames_are_limited_to_1514_bytes() {
    let (mut drv, ctl) = start(ALL & !features::MTU);
    post_rx(&mut drv, 4, &[Buf::writable(4096)]);
    ctl.queue_frame(frame(1515, 11));
    ctl.queue_frame(frame(1514, 12));
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(received(&drv, &used[0]).1, frame(1514, 12));
}

// ---- a guest that lies ----------------------------------------------------

#[test]
fn tx_chains_the_device_cannot_use_are_dropped() {
    let (mut drv, ctl) = start(ALL);
    let end = MEM as u64;
    let too_long = vec![0u8; NET_HDR_LEN + MAX_FRAME_LEN + 1];
    let bad_csum = NetHeader {
        csum_start: 50,
        csum_offset: 11,
        ..header(F_NEEDS_CSUM, 0)
    };
    let chains: Vec<Vec<Buf>> = vec![
        // Shorter than the header.
        vec![Buf::readable(vec![0; NET_HDR_LEN - 1])],
        vec![Buf::readable(Vec::new())],
        // Longer than a 64 KiB frame, in one piece and in several.
        vec![Buf::readable(too_long.clone())],
        vec![
            Buf::readable(too_long[..40_000].to_vec()),
            Buf::readable(too_long[40_000..].to_vec()),
        ],
        // Device-writable where the device must read.
        vec![Buf::writable(64)],
        vec![
            Buf::readable(with_header(header(0, 0), &[1; 20])),
            Buf::writable(8),
        ],
        // Outside guest memory, straddling its end, wrapping around.
        vec![Buf::raw(end + 0x1000, 64, false)],
        vec![Buf::raw(end - 20, 64, false)],
        vec![Buf::raw(u64::MAX - 8, 64, false)],
        // A checksum field beyond the frame.
        vec![Buf::readable(with_header(bad_csum, &[0; 60]))],
        // GSO kinds never offered or without NEEDS_CSUM.
        vec![Buf::readable(with_header(
            header(F_NEEDS_CSUM, GSO_UDP),
            &[0; 60],
        ))],
        vec![Buf::readable(with_header(header(0, GSO_TCPV4), &[0; 60]))],
        vec![Buf::readable(with_header(header(0, 42), &[0; 60]))],
    ];
    for chain in &chains {
        let used = transmit(&mut drv, chain);
        assert_eq!(used.len, 0);
    }
    assert!(ctl.sent().is_empty(), "nothing reached the backend");
    // The largest frame allowed still passes.
    let max = frame(MAX_FRAME_LEN, 13);
    transmit(&mut drv, &[Buf::readable(with_header(header(0, 0), &max))]);
    assert_eq!(ctl.wait_sent(1)[0], max);
    still_serves(&mut drv, &ctl);
}

#[test]
fn descriptor_loops_and_broken_links_end_without_a_hang() {
    let (mut drv, ctl) = start(ALL);
    for queue in [TX_QUEUE, RX_QUEUE] {
        let flag = if queue == RX_QUEUE { WRITE } else { 0 };
        let buf = drv.alloc(256, 16).unwrap();
        let ids = drv.reserve_descriptors(queue, 4).unwrap();
        let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
        // a → b → a → …
        drv.write_descriptor(queue, a, Descriptor::new(buf, 64, NEXT | flag, b))
            .unwrap();
        drv.write_descriptor(queue, b, Descriptor::new(buf + 64, 64, NEXT | flag, a))
            .unwrap();
        // c → c
        drv.write_descriptor(queue, c, Descriptor::new(buf + 128, 64, NEXT | flag, c))
            .unwrap();
        // d → beyond the table.
        drv.write_descriptor(queue, d, Descriptor::new(buf + 192, 64, NEXT | flag, 999))
            .unwrap();
        for head in [a, c, d] {
            drv.make_available(queue, head).unwrap();
        }
        // A head index beyond the queue.
        drv.make_available(queue, 999).unwrap();
        if queue == RX_QUEUE {
            ctl.queue_frame(frame(40, 14));
        }
        drv.notify(queue);
        let used = drv.wait_used_n(queue, 3, HANG_GUARD).unwrap();
        assert_eq!(
            used.iter().map(|u| (u.head, u.len)).collect::<Vec<_>>(),
            [(a, 0), (c, 0), (d, 0)]
        );
        assert!(drv.read_mem(buf, 256).unwrap().iter().all(|&b| b == 0));
    }
    assert!(ctl.sent().is_empty());
    // The frame that found no usable buffer was kept, and goes first.
    let heads = post_rx(&mut drv, 1, &[Buf::writable(256)]);
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used[0].head, heads[0]);
    assert_eq!(received(&drv, &used[0]).1, frame(40, 14));
    still_serves(&mut drv, &ctl);
}

#[test]
fn rx_chains_the_device_cannot_use_come_back_empty() {
    let (mut drv, ctl) = start(ALL);
    let end = MEM as u64;
    let bad = [
        drv.add_chain(RX_QUEUE, &[Buf::readable(vec![7; 100])])
            .unwrap(),
        drv.add_chain(RX_QUEUE, &[Buf::writable(100), Buf::readable(vec![7; 100])])
            .unwrap(),
        drv.add_chain(RX_QUEUE, &[Buf::raw(end + 0x1000, 2048, true)])
            .unwrap(),
        drv.add_chain(RX_QUEUE, &[Buf::raw(end - 100, 2048, true)])
            .unwrap(),
        // Smaller than a header, and empty.
        drv.add_chain(RX_QUEUE, &[Buf::writable(NET_HDR_LEN as u32 - 1)])
            .unwrap(),
        drv.add_chain(RX_QUEUE, &[Buf::writable(0)]).unwrap(),
    ];
    let good = drv.add_chain(RX_QUEUE, &[Buf::writable(2048)]).unwrap();
    drv.notify(RX_QUEUE);
    let f = frame(500, 15);
    ctl.queue_frame(f.clone());
    let used = drv
        .wait_used_n(RX_QUEUE, bad.len() + 1, HANG_GUARD)
        .unwrap();
    let mut want: Vec<(u16, u32)> = bad.iter().map(|&h| (h, 0)).collect();
    want.push((good, (NET_HDR_LEN + f.len()) as u32));
    assert_eq!(
        used.iter().map(|u| (u.head, u.len)).collect::<Vec<_>>(),
        want
    );
    // Checked before writing: nothing the device may not write changed.
    assert_eq!(
        drv.read_mem(used[0].buffers[0].addr, 100).unwrap(),
        [7; 100]
    );
    assert_eq!(
        drv.read_mem(used[1].buffers[0].addr, 100).unwrap(),
        [0; 100]
    );
    assert_eq!(received(&drv, &used[bad.len()]).1, f);
    still_serves(&mut drv, &ctl);
}

#[test]
fn oversized_frames_from_the_backend_are_dropped() {
    let (mut drv, ctl) = start(ALL);
    post_rx(&mut drv, 100, &[Buf::writable(4096)]);
    ctl.queue_frame(vec![0; usize::from(DEFAULT_MTU) + 15]);
    ctl.queue_frame(Vec::new());
    ctl.queue_frame(frame(42, 16));
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(received(&drv, &used[0]).1, frame(42, 16));
}

// ---- life cycle -----------------------------------------------------------

#[test]
fn the_backend_is_polled_when_its_delay_expires() {
    let (mut drv, ctl) = start(ALL);
    ctl.queue_timed(frame(77, 20), Duration::from_millis(50));
    let asked = Instant::now();
    // Any event makes the device ask the backend for its delay; nothing
    // but the timer wakes it afterwards.
    let heads = post_rx(&mut drv, 1, &[Buf::writable(256)]);
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(50));
    assert_eq!(used[0].head, heads[0]);
    assert_eq!(received(&drv, &used[0]).1, frame(77, 20));
}

#[test]
fn reset_and_reactivation_keep_the_backend() {
    let (mut drv, ctl) = start(ALL);
    transmit(
        &mut drv,
        &[Buf::readable(with_header(header(0, 0), &frame(60, 17)))],
    );
    ctl.wait_sent(1);
    drv.reset();
    assert!(!drv.transport().is_activated());
    // Frames queued while the device is down wait for the next driver.
    ctl.queue_frame(frame(70, 18));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        drv.init(ALL & !features::MRG_RXBUF).unwrap(),
        ALL & !features::MRG_RXBUF
    );
    let heads = post_rx(&mut drv, 1, &[Buf::writable(4096)]);
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used[0].head, heads[0]);
    assert_eq!(received(&drv, &used[0]).1, frame(70, 18));
    // The same backend sees the new driver's frames.
    transmit(
        &mut drv,
        &[Buf::readable(with_header(header(0, 0), &frame(61, 19)))],
    );
    assert_eq!(ctl.wait_sent(2), [frame(60, 17), frame(61, 19)]);
    assert!(ctl.shared.lock().unwrap().polls > 0);
    // And again, for good measure.
    drv.reset();
    drv.init(ALL).unwrap();
    still_serves(&mut drv, &ctl);
}

#[test]
fn impossible_avail_index_makes_the_device_need_a_reset() {
    for queue in [TX_QUEUE, RX_QUEUE] {
        let (mut drv, ctl) = start(ALL);
        let layout = drv.queue_layout(queue).unwrap();
        drv.write_mem(layout.avail + 2, &1000u16.to_le_bytes())
            .unwrap();
        if queue == RX_QUEUE {
            // The receive ring is read only when a frame waits for it
            // (dropped with the broken driver's state on reset).
            ctl.queue_frame(frame(60, 1));
        }
        drv.notify(queue);
        let s = drv
            .wait_needs_reset(HANG_GUARD)
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
        assert_eq!(s & status::DRIVER_OK, status::DRIVER_OK, "queue {queue}");
        // The reset clears the request and the next driver is served by
        // the same backend.
        drv.reset();
        assert_eq!(drv.status(), 0);
        drv.init(ALL).unwrap();
        still_serves(&mut drv, &ctl);
        assert_eq!(drv.status() & status::DEVICE_NEEDS_RESET, 0);
    }
}

#[test]
fn a_backend_lost_to_a_panic_makes_the_device_need_a_reset() {
    let (mut drv, ctl) = start(ALL);
    ctl.shared.lock().unwrap().panic_on_push = true;
    drv.add_chain(
        TX_QUEUE,
        &[Buf::readable(with_header(header(0, 0), &[0; 60]))],
    )
    .unwrap();
    drv.notify(TX_QUEUE);
    // The dying worker asks the driver for a reset at once.
    let s = drv.wait_needs_reset(HANG_GUARD).unwrap();
    assert_eq!(s & status::DRIVER_OK, status::DRIVER_OK);
    assert_quiet(&mut drv, TX_QUEUE);
    // The reset joins the dead worker; without a backend the device
    // cannot run again, and says so instead of serving nothing.
    drv.reset();
    let err = drv.init(ALL).unwrap_err();
    assert!(matches!(err, HarnessError::DeviceNotOk(s) if s & status::DEVICE_NEEDS_RESET != 0));
}

#[test]
fn works_in_front_of_the_real_stack() {
    use agentvm_net::addr::{GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC};

    // Filtered: the gateway answers ARP, nothing leaves the host here.
    let config = agentvm_net::StackConfig {
        policy: agentvm_net::Policy::new(agentvm_net::Mode::Filtered),
        resolvers: vec!["127.0.0.1:9".parse().unwrap()],
        ..agentvm_net::StackConfig::default()
    };
    let stack = agentvm_net::NetStack::new(config).unwrap();
    let net: Net = Net::with_default_mac(stack);
    assert_eq!(net.mac(), GUEST_MAC);
    let mut drv = Driver::new(Box::new(net), MEM).unwrap();
    drv.init(ALL).unwrap();
    assert_eq!(drv.config_bytes(config::MAC, 6), GUEST_MAC);
    // Who has the gateway? The stack answers over the receive queue.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&GUEST_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&GUEST_MAC);
    arp.extend_from_slice(&GUEST_IP.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&GATEWAY_IP.octets());
    let heads = post_rx(&mut drv, 16, &[Buf::writable(2048)]);
    let used = transmit(&mut drv, &[Buf::readable(with_header(header(0, 0), &arp))]);
    assert_eq!(used.len, 0);
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used[0].head, heads[0]);
    let (hdr, reply) = received(&drv, &used[0]);
    assert_eq!(hdr.num_buffers, 1);
    assert_eq!(reply[..6], GUEST_MAC, "to the guest");
    assert_eq!(reply[6..12], GATEWAY_MAC.0, "from the gateway");
    assert_eq!(reply[12..14], [0x08, 0x06], "an ARP packet");
    assert_eq!(reply[20..22], [0, 2], "a reply");
    assert_eq!(reply[22..28], GATEWAY_MAC.0);
    assert_eq!(reply[28..32], GATEWAY_IP.octets());
    // The stack survives a driver reload.
    drv.reset();
    drv.init(ALL).unwrap();
    post_rx(&mut drv, 16, &[Buf::writable(2048)]);
    transmit(&mut drv, &[Buf::readable(with_header(header(0, 0), &arp))]);
    let used = drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(received(&drv, &used[0]).1[..14], reply[..14]);
}
