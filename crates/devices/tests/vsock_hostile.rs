//! virtio-vsock against a guest that lies: chains that do not hold what
//! their header says, buffers outside memory or of the wrong direction,
//! loops, floods. The device drops what it cannot trust, resets the
//! connection it belongs to, and keeps serving — no panic, no hang.
#![allow(clippy::unwrap_used)]

mod vsock_support;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};

use agentvm_devices::testing::{Buf, Descriptor};
use agentvm_devices::virtio::vsock::packet::{op, HDR_LEN};
use agentvm_devices::virtio::vsock::queue::{RX_QUEUE, TX_QUEUE};
use agentvm_devices::virtio::vsock::{MAX_CONNECTIONS, MAX_PENDING_RESETS, MAX_PKT_PAYLOAD};
use agentvm_devices::virtio::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vsock_support::*;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// The guest still gets service: a connection with data. Returns the
/// client, whose end would otherwise reach the guest as a SHUTDOWN.
fn still_serves(g: &mut Guest) -> UnixStream {
    let (mut client, mut conn) = g.host_connect(4242);
    client.write_all(b"alive?").unwrap();
    assert_eq!(g.read_bytes(&mut conn, 6), b"alive?");
    client
}

fn header_bytes(op: u16, src: u32, dst: u32, len: u32) -> Vec<u8> {
    let mut hdr = from_guest(op, src, dst);
    hdr.len = len;
    hdr.to_bytes().to_vec()
}

#[test]
fn tx_chains_the_device_cannot_read_are_dropped() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let end = MEM as u64;
    let chains: Vec<Vec<Buf>> = vec![
        // Outside guest memory, straddling its end, wrapping the address space.
        vec![Buf::raw(end + 0x1000, 64, false)],
        vec![Buf::raw(end - 20, 64, false)],
        vec![Buf::raw(u64::MAX - 8, 64, false)],
        // Device-writable where the device must read.
        vec![Buf::writable(64)],
        // Zero-length buffers.
        vec![Buf::readable(Vec::new())],
        vec![Buf::readable(Vec::new()), Buf::readable(Vec::new())],
        // Shorter than a header.
        vec![Buf::readable(vec![0xaa; HDR_LEN - 1])],
    ];
    for chain in &chains {
        g.send_chain(chain);
    }
    // None of them said anything the device could answer.
    assert!(!g.has_packet());
    still_serves(&mut g);
}

#[test]
fn tx_headers_that_lie_about_their_payload_are_answered_with_a_reset() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let end = MEM as u64;
    let cases: Vec<(u32, Vec<Buf>)> = vec![
        // Claims 100 bytes, carries 10.
        (
            1,
            vec![Buf::readable(
                [header_bytes(op::REQUEST, 1, 9, 100), vec![0; 10]].concat(),
            )],
        ),
        // Claims more than any packet may carry (and has it).
        (
            2,
            vec![Buf::readable(
                [
                    header_bytes(op::RW, 2, 9, MAX_PKT_PAYLOAD as u32 + 1),
                    vec![0; MAX_PKT_PAYLOAD + 1],
                ]
                .concat(),
            )],
        ),
        (3, vec![Buf::readable(header_bytes(op::RW, 3, 9, u32::MAX))]),
        // Header fine, payload descriptor writable.
        (
            4,
            vec![
                Buf::readable(header_bytes(op::RW, 4, 9, 8)),
                Buf::writable(8),
            ],
        ),
        // Header fine, payload outside memory.
        (
            5,
            vec![
                Buf::readable(header_bytes(op::RW, 5, 9, 8)),
                Buf::raw(end, 8, false),
            ],
        ),
    ];
    for (_, chain) in &cases {
        g.send_chain(chain);
    }
    // The header named a (non-existent) connection: each gets its reset,
    // in order, and nothing else happened.
    for (port, _) in &cases {
        let rst = g.expect(op::RST);
        assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (9, *port));
    }
    assert!(!g.has_packet());
    still_serves(&mut g);
}

#[test]
fn a_lie_on_a_live_connection_resets_it() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let (mut client, conn) = g.host_connect(3000);
    let mut hdr = conn.hdr(op::RW);
    hdr.len = 1000;
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(b"only ten b");
    g.send_chain(&[Buf::readable(bytes)]);
    let rst = g.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (conn.host_port, 3000));
    // Nothing of the lie reached the host.
    assert_eq!(wait_closed(&mut client), b"");
    still_serves(&mut g);
}

#[test]
fn unknown_ops_on_a_live_connection_reset_it() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    for bad_op in [op::INVALID, 99] {
        let (mut client, conn) = g.host_connect(3001);
        g.send(conn.hdr(bad_op), &[]);
        let rst = g.expect(op::RST);
        assert_eq!(rst.hdr.dst_port, 3001);
        assert_eq!(wait_closed(&mut client), b"");
    }
}

#[test]
fn headers_and_payloads_split_anywhere_are_reassembled() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let listener = UnixListener::bind(port_path(&g.uds, 80)).unwrap();
    let (mut host, conn) = g.guest_connect(&listener, 1000, 80);
    let mut bytes = conn.hdr(op::RW).to_bytes().to_vec();
    bytes[24..28].copy_from_slice(&11u32.to_le_bytes());
    bytes.extend_from_slice(b"split bytes");
    // 10 | 30 | 4 + 3 | 0 | 8: the header ends mid-descriptor.
    let cuts = [0, 10, 40, 47, 47, bytes.len()];
    let chain: Vec<Buf> = cuts
        .windows(2)
        .map(|w| Buf::readable(bytes[w[0]..w[1]].to_vec()))
        .collect();
    g.send_chain(&chain);
    let mut buf = [0u8; 11];
    std::io::Read::read_exact(&mut host, &mut buf).unwrap();
    assert_eq!(&buf, b"split bytes");
    // Extra bytes after hdr.len are ignored.
    let mut bytes = conn.hdr(op::RW).to_bytes().to_vec();
    bytes[24..28].copy_from_slice(&2u32.to_le_bytes());
    bytes.extend_from_slice(b"okIGNORED");
    g.send_chain(&[Buf::readable(bytes)]);
    let mut buf = [0u8; 2];
    std::io::Read::read_exact(&mut host, &mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn rx_buffers_the_device_cannot_use_come_back_empty() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 0);
    g.keep_posted = false;
    let end = MEM as u64;
    let bad = [
        g.post_rx_chain(&[Buf::readable(vec![0; 100])]),
        g.post_rx_chain(&[Buf::raw(end + 0x1000, RX_BUF, true)]),
        g.post_rx_chain(&[Buf::raw(end - 100, RX_BUF, true)]),
        g.post_rx_chain(&[Buf::writable(HDR_LEN as u32 - 1)]),
        // Room for a header but never for data.
        g.post_rx_chain(&[Buf::writable(HDR_LEN as u32)]),
        g.post_rx_chain(&[Buf::writable(0)]),
        g.post_rx_chain(&[Buf::writable(100), Buf::readable(vec![0; 100])]),
    ];
    let good = g.post_rx_chain(&[
        Buf::writable(20),
        Buf::writable(24),
        Buf::writable(0),
        Buf::writable(8),
    ]);
    // Something to say: a reset for a packet to nowhere.
    g.send(from_guest(op::RW, 7, 8), b"x");
    let used = g
        .drv
        .wait_used_n(RX_QUEUE, bad.len() + 1, HANG_GUARD)
        .unwrap();
    let got: Vec<(u16, u32)> = used.iter().map(|u| (u.head, u.len)).collect();
    let mut want: Vec<(u16, u32)> = bad.iter().map(|&h| (h, 0)).collect();
    // A header split over two descriptors (and an empty one) is fine.
    want.push((good, HDR_LEN as u32));
    assert_eq!(got, want);
    // Nothing was written into the read-only buffer.
    let ro = &used[0].buffers[0];
    assert_eq!(g.drv.read_mem(ro.addr, 100).unwrap(), vec![0; 100]);
    let rst = g.drv.read_written(&used[bad.len()]).unwrap();
    assert_eq!(u16::from_le_bytes([rst[30], rst[31]]), op::RST);
    g.keep_posted = true;
    g.post_rx(8);
    still_serves(&mut g);
}

#[test]
fn descriptor_loops_end_without_a_hang() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 0);
    for queue in [TX_QUEUE, RX_QUEUE] {
        let flags = if queue == RX_QUEUE {
            NEXT | WRITE
        } else {
            NEXT
        };
        let buf = g.drv.alloc(256, 16).unwrap();
        let ids = g.drv.reserve_descriptors(queue, 2).unwrap();
        let (a, b) = (ids[0], ids[1]);
        g.drv
            .write_descriptor(queue, a, Descriptor::new(buf, 64, flags, b))
            .unwrap();
        g.drv
            .write_descriptor(queue, b, Descriptor::new(buf + 64, 64, flags, a))
            .unwrap();
        g.drv.make_available(queue, a).unwrap();
        g.drv.notify(queue);
    }
    // The tx loop is consumed at once; the rx loop when there is
    // something to say.
    let used = g.drv.wait_used(TX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used[0].len, 0);
    g.send(from_guest(op::RW, 7, 8), b"x");
    let used = g.drv.wait_used(RX_QUEUE, HANG_GUARD).unwrap();
    assert_eq!(used[0].len, 0);
    g.post_rx(8);
    let rst = g.expect(op::RST);
    assert_eq!(rst.hdr.dst_port, 7);
    still_serves(&mut g);
}

#[test]
fn a_reset_flood_without_rx_buffers_waits_instead_of_dropping() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 0);
    let bytes = |i: u32| header_bytes(op::RW, i, 9, 0);
    // More packets needing an answer than the device queues answers for.
    let total = MAX_PENDING_RESETS as u32 + 200;
    for i in 0..256 {
        g.drv
            .add_chain(TX_QUEUE, &[Buf::readable(bytes(i))])
            .unwrap();
    }
    g.drv.notify(TX_QUEUE);
    let first = g.drv.wait_used_n(TX_QUEUE, 256, HANG_GUARD).unwrap();
    assert_eq!(first.len(), 256);
    for i in 256..total {
        g.drv
            .add_chain(TX_QUEUE, &[Buf::readable(bytes(i))])
            .unwrap();
    }
    g.drv.notify(TX_QUEUE);
    // The device holds back: its answers for the first batch have nowhere
    // to go. (A device that read on would be caught here most of the time.)
    assert!(g.drv.used(TX_QUEUE).unwrap().is_empty());
    // Now the guest posts receive buffers; every packet gets its answer,
    // in order: none was dropped while the device waited.
    g.post_rx(64);
    for i in 0..total {
        let rst = g.expect(op::RST);
        assert_eq!(rst.hdr.dst_port, i);
    }
    let rest = g
        .drv
        .wait_used_n(TX_QUEUE, (total - 256) as usize, HANG_GUARD)
        .unwrap();
    assert_eq!(rest.len(), (total - 256) as usize);
}

#[test]
fn an_impossible_avail_index_stops_the_device_until_reset() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let layout = g.drv.queue_layout(TX_QUEUE).unwrap();
    g.drv
        .write_mem(layout.avail + 2, &1000u16.to_le_bytes())
        .unwrap();
    g.drv.notify(TX_QUEUE);
    // A reset joins the worker whatever it is doing; then all is well again.
    g.drv.reset();
    assert!(!g.drv.transport().is_activated());
    g.drv.init(VIRTIO_F_VERSION_1).unwrap();
    g.post_rx(8);
    still_serves(&mut g);
}

#[test]
fn a_guest_that_never_answers_keeps_clients_waiting_not_the_device() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 64);
    // Requests the guest ignores: the clients wait, the device goes on.
    let mut clients = Vec::new();
    let mut host_ports = Vec::new();
    for port in 0..20 {
        let mut client = UnixStream::connect(&g.uds).unwrap();
        client
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let req = g.expect(op::REQUEST);
        assert_eq!(req.hdr.dst_port, port);
        clients.push(client);
        host_ports.push(req.hdr.src_port);
    }
    let _alive = still_serves(&mut g);
    // When the clients give up, the guest is told, request by request.
    drop(clients);
    let mut withdrawn: Vec<u32> = (0..20).map(|_| g.expect(op::RST).hdr.src_port).collect();
    withdrawn.sort_unstable();
    assert_eq!(withdrawn, host_ports);
}

/// Raises the soft fd limit to `want` if the hard limit allows.
fn enough_fds(want: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        if lim.rlim_cur >= want {
            return true;
        }
        if lim.rlim_max < want {
            return false;
        }
        lim.rlim_cur = want;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

#[test]
fn the_connection_table_is_bounded() {
    // Both ends of every socket live in this process.
    if !enough_fds(3 * MAX_CONNECTIONS as u64) {
        eprintln!("skipped: the fd limit is below {}", 3 * MAX_CONNECTIONS);
        return;
    }
    let dir = TestDir::new();
    let counters = agentvm_devices::virtio::vsock::VsockCounters::default();
    let mut g = Guest::start_counted(&dir, 8, counters.clone());
    let listener = UnixListener::bind(port_path(&g.uds, 80)).unwrap();
    // MAX_CONNECTIONS host clients that never finish their CONNECT line.
    let mut clients: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&g.uds).unwrap())
        .collect();
    // One more is closed at once.
    let mut extra = UnixStream::connect(&g.uds).unwrap();
    assert_eq!(wait_closed(&mut extra), b"");
    // The guest cannot add one either.
    g.send(from_guest(op::REQUEST, 1, 80), &[]);
    let rst = g.expect(op::RST);
    assert_eq!(rst.hdr.dst_port, 1);
    // Both refusals counted (`agentvm status` shows them).
    assert_eq!(counters.refused(), 2);
    // The waiting ones were kept: the first can still go on.
    clients[0].write_all(b"CONNECT 5\n").unwrap();
    assert_eq!(g.expect(op::REQUEST).hdr.dst_port, 5);
    // Once one leaves, a newcomer gets its place. Newcomers are closed
    // until the device saw the departure; poll both ends till one wins.
    drop(clients.pop());
    let newcomer = |uds: &std::path::Path| {
        let mut c = UnixStream::connect(uds).unwrap();
        c.write_all(b"CONNECT 6\n").unwrap();
        c.set_nonblocking(true).unwrap();
        c
    };
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let mut c = newcomer(&g.uds);
    while !g.has_packet() {
        assert!(std::time::Instant::now() < deadline, "hang guard");
        let mut b = [0u8; 1];
        match std::io::Read::read(&mut c, &mut b) {
            Ok(0) => c = newcomer(&g.uds),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => c = newcomer(&g.uds),
            _ => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
    let req = g.expect(op::REQUEST);
    assert_eq!(req.hdr.dst_port, 6);
    drop(listener);
}
