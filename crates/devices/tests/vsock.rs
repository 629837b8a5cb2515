//! virtio-vsock end to end: a driver playing the guest's vsock driver over
//! virtio-mmio, and real Unix sockets on the host side — connections both
//! ways, credit-based flow control both ways, half-close and resets.
#![allow(clippy::unwrap_used)]

mod vsock_support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};

use agentvm_devices::testing::{Buf, Driver};
use agentvm_devices::virtio::transport::mmio::status;
use agentvm_devices::virtio::vsock::packet::{op, shutdown};
use agentvm_devices::virtio::vsock::queue::TX_QUEUE;
use agentvm_devices::virtio::vsock::{Vsock, VsockError, CONN_BUF_ALLOC, MAX_PKT_PAYLOAD};
use agentvm_devices::virtio::{device_type, VirtioDevice, VIRTIO_F_VERSION_1};
use vsock_support::*;

#[test]
fn identity_config_space_and_features() {
    let dir = TestDir::new();
    let mut drv = Driver::new(Box::new(Vsock::new(77, dir.path("v")).unwrap()), MEM).unwrap();
    assert_eq!(drv.probe().unwrap(), device_type::VSOCK);
    assert_eq!(drv.device_features(), VIRTIO_F_VERSION_1);
    assert_eq!(
        (0..4).map(|q| drv.queue_max(q)).collect::<Vec<_>>(),
        [256, 256, 256, 0]
    );
    assert_eq!(drv.config_u64(0), 77);
    assert_eq!(drv.config_u32(4), 0);
    assert_eq!(drv.config_u8(8), 0, "nothing after guest_cid");
    // guest_cid is read-only.
    drv.write_config(0, &9u64.to_le_bytes());
    assert_eq!(drv.config_u64(0), 77);
    assert_eq!(drv.init(VIRTIO_F_VERSION_1).unwrap(), VIRTIO_F_VERSION_1);
    assert!(drv.transport().is_activated());
}

#[test]
fn activation_needs_all_three_queues() {
    let dir = TestDir::new();
    let mut drv = Driver::new(Box::new(Vsock::new(3, dir.path("v")).unwrap()), MEM).unwrap();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    drv.setup_queue(0, 64).unwrap();
    drv.setup_queue(1, 64).unwrap();
    assert!(drv.driver_ok().is_err(), "two queues are not enough");
    assert!(!drv.transport().is_activated());
    drv.init(VIRTIO_F_VERSION_1).unwrap();
    assert!(drv.transport().is_activated());
}

#[test]
fn reserved_cids_are_refused() {
    let dir = TestDir::new();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        let err = Vsock::new(cid, dir.path("v")).err().unwrap();
        assert!(matches!(err, VsockError::InvalidCid(c) if c == cid));
    }
    let dev = Vsock::new(u64::from(u32::MAX) - 1, dir.path("v")).unwrap();
    assert_eq!(dev.guest_cid(), u64::from(u32::MAX) - 1);
    assert_eq!(dev.device_type(), device_type::VSOCK);
}

#[test]
fn socket_file_life() {
    let dir = TestDir::new();
    let path = dir.path("v.sock");
    // A stale socket (nobody listening) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let dev = Vsock::new(3, &path).unwrap();
    assert_eq!(dev.uds_path(), path);
    // Clients can connect before the guest's driver is up.
    let _early = UnixStream::connect(&path).unwrap();
    // A live one is not.
    let err = Vsock::new(3, &path).err().unwrap();
    assert!(matches!(err, VsockError::InUse(_)), "{err}");
    drop(dev);
    assert!(!path.exists(), "drop removes the socket file");

    // A regular file is never deleted.
    std::fs::write(&path, b"keep me").unwrap();
    let err = Vsock::new(3, &path).err().unwrap();
    assert!(matches!(err, VsockError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    std::fs::remove_file(&path).unwrap();

    // A path that cannot be bound says so.
    let err = Vsock::new(3, dir.path("no/such/dir/v")).err().unwrap();
    assert!(matches!(err, VsockError::Bind { .. }), "{err}");

    // Drop leaves alone a socket someone else put there after us.
    let dev = Vsock::new(3, &path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let other = UnixListener::bind(&path).unwrap();
    drop(dev);
    assert!(path.exists());
    drop(other);
}

#[test]
fn host_connect_accepted_by_the_guest_carries_bytes_both_ways() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let (mut client, mut conn) = g.host_connect(1024);
    assert_eq!(conn.peer_buf_alloc, CONN_BUF_ALLOC);

    client.write_all(b"hello guest").unwrap();
    assert_eq!(g.read_bytes(&mut conn, 11), b"hello guest");

    g.send(conn.hdr(op::RW), b"hello host");
    conn.tx_cnt += 10;
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    // A second client gets its own host port.
    let (_client2, conn2) = g.host_connect(1024);
    assert_ne!(conn2.host_port, conn.host_port);
    assert!(g.drv.interrupt_count() > 0);
}

#[test]
fn bytes_sent_with_the_connect_line_are_kept() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.set_read_timeout(Some(HANG_GUARD)).unwrap();
    client.write_all(b"CONNECT 52\nearly bytes").unwrap();
    let req = g.expect(op::REQUEST);
    assert_eq!(req.hdr.dst_port, 52);
    let mut conn = Conn::new(52, req.hdr.src_port, &req.hdr);
    g.send(conn.hdr(op::RESPONSE), &[]);
    assert_eq!(read_line(&mut client), format!("OK {}\n", conn.host_port));
    assert_eq!(g.read_bytes(&mut conn, 11), b"early bytes");
}

#[test]
fn host_connect_refused_by_the_guest_closes_the_client() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 9999\n").unwrap();
    let req = g.expect(op::REQUEST);
    // No listener on 9999 in the guest: it answers with a reset.
    g.send(from_guest(op::RST, 9999, req.hdr.src_port), &[]);
    assert_eq!(wait_closed(&mut client), b"", "no OK line");
}

#[test]
fn guest_connect_reaches_the_port_listener_and_carries_bytes_both_ways() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let listener = UnixListener::bind(port_path(&g.uds, 5000)).unwrap();
    let (mut host, mut conn) = g.guest_connect(&listener, 40_000, 5000);

    g.send(conn.hdr(op::RW), b"ping");
    conn.tx_cnt += 4;
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    host.write_all(b"pong!").unwrap();
    assert_eq!(g.read_bytes(&mut conn, 5), b"pong!");

    // A CREDIT_REQUEST is answered with our credit.
    g.send(conn.hdr(op::CREDIT_REQUEST), &[]);
    let update = g.expect(op::CREDIT_UPDATE);
    conn.check(&update.hdr);
    assert_eq!(
        (update.hdr.buf_alloc, update.hdr.fwd_cnt),
        (CONN_BUF_ALLOC, 4)
    );
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    g.send(from_guest(op::REQUEST, 40_001, 6000), &[]);
    let rst = g.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (6000, 40_001));
    // A socket file nobody listens on is the same.
    drop(UnixListener::bind(port_path(&g.uds, 6001)).unwrap());
    g.send(from_guest(op::REQUEST, 40_002, 6001), &[]);
    let rst = g.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (6001, 40_002));
}

#[test]
fn packets_for_unknown_connections_are_reset() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    // A RST for nothing gets no answer, the rest get a RST: the first reply
    // is for the second packet.
    g.send(from_guest(op::RST, 1, 2), &[]);
    g.send(from_guest(op::RW, 3, 4), b"data");
    g.send(from_guest(op::SHUTDOWN, 5, 6), &[]);
    g.send(from_guest(op::RESPONSE, 7, 8), &[]);
    for (src, dst) in [(4, 3), (6, 5), (8, 7)] {
        let rst = g.expect(op::RST);
        assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (src, dst));
        assert_eq!(rst.hdr.len, 0);
    }
}

#[test]
fn misaddressed_and_non_stream_packets() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let listener = UnixListener::bind(port_path(&g.uds, 80)).unwrap();
    // Wrong source CID, wrong destination CID: ignored, no connection.
    let mut bad = from_guest(op::REQUEST, 10, 80);
    bad.src_cid = 4;
    g.send(bad, &[]);
    let mut bad = from_guest(op::REQUEST, 11, 80);
    bad.dst_cid = 1;
    g.send(bad, &[]);
    // SEQPACKET (never offered): reset.
    let mut seq = from_guest(op::REQUEST, 12, 80);
    seq.socket_type = 2;
    g.send(seq, &[]);
    let rst = g.expect(op::RST);
    assert_eq!(rst.hdr.dst_port, 12);
    // Only the good request reached the listener.
    let (_host, _conn) = g.guest_connect(&listener, 13, 80);
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "no other connection was made");
}

#[test]
fn host_to_guest_stops_at_the_guest_credit_and_resumes_on_update() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 16);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.set_read_timeout(Some(HANG_GUARD)).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    let req = g.expect(op::REQUEST);
    let mut conn = Conn::new(1024, req.hdr.src_port, &req.hdr);
    conn.buf_alloc = 4096;
    g.send(conn.hdr(op::RESPONSE), &[]);
    assert_eq!(read_line(&mut client), format!("OK {}\n", conn.host_port));

    let data = pattern(10_000, 7);
    client.write_all(&data).unwrap();
    let mut got = Vec::new();
    // The device sends exactly the credit, then asks for more.
    for granted in [4096, 8192] {
        loop {
            let p = g.recv();
            conn.check(&p.hdr);
            match p.hdr.op {
                op::RW => got.extend_from_slice(&p.payload),
                op::CREDIT_REQUEST => break,
                other => panic!("unexpected op {other}"),
            }
        }
        assert_eq!(got.len(), granted, "sent beyond the guest's credit");
        assert!(!g.has_packet());
        // The application read it all: fwd_cnt grows, credit is back.
        conn.fwd_cnt = granted as u32;
        g.send(conn.hdr(op::CREDIT_UPDATE), &[]);
    }
    while got.len() < data.len() {
        let p = g.expect(op::RW);
        got.extend_from_slice(&p.payload);
    }
    assert_eq!(got, data);
}

#[test]
fn host_data_fills_large_rx_buffers_up_to_a_packet() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 0);
    // Receive buffers one at a time, so the big one below is next in line.
    g.keep_posted = false;
    g.post_rx(1);
    let (mut client, mut conn) = g.host_connect(1024);
    let data = pattern(MAX_PKT_PAYLOAD + 10, 1);
    client.write_all(&data).unwrap();
    // One big buffer split like older Linux drivers: header, then data.
    g.post_rx_chain(&[
        Buf::writable(44),
        Buf::writable(MAX_PKT_PAYLOAD as u32 + 100),
    ]);
    let p = g.expect(op::RW);
    // Only a packet's worth, though the buffer has room for more.
    assert_eq!(p.payload.len(), MAX_PKT_PAYLOAD);
    assert_eq!(p.payload, data[..MAX_PKT_PAYLOAD]);
    g.post_rx(1);
    let rest = g.read_bytes(&mut conn, 10);
    assert_eq!(rest, data[MAX_PKT_PAYLOAD..]);
}

/// A guest connection from port 50000 to host port `port`, whose receive
/// buffers are from now on posted one at a time (none is posted now).
fn stall_ready(dir: &TestDir, port: u32) -> (Guest, UnixStream, Conn) {
    let mut g = Guest::start(dir, 0);
    g.keep_posted = false;
    g.post_rx(1);
    let listener = UnixListener::bind(port_path(&g.uds, port)).unwrap();
    let (host, conn) = g.guest_connect(&listener, 50_000, port);
    (g, host, conn)
}

/// Sends guest data to a host socket that does not read until the device
/// withholds credit. Returns what was sent. Receive buffers are posted only
/// to fetch a credit answer, so every answer is the current one.
fn send_until_stalled(g: &mut Guest, conn: &mut Conn) -> Vec<u8> {
    let mut sent = Vec::new();
    let chunk = pattern(MAX_PKT_PAYLOAD, 3);
    loop {
        assert!(sent.len() < 16 << 20, "the device never withheld credit");
        let credit = conn.credit() as usize;
        if credit == 0 {
            g.send(conn.hdr(op::CREDIT_REQUEST), &[]);
            g.post_rx(1);
            let update = g.expect(op::CREDIT_UPDATE);
            conn.check(&update.hdr);
            if conn.credit() == 0 {
                return sent;
            }
            continue;
        }
        let n = credit.min(chunk.len());
        let offset = sent.len() % 251;
        let piece: Vec<u8> = chunk[..n]
            .iter()
            .map(|b| b.wrapping_add(offset as u8))
            .collect();
        g.send(conn.hdr(op::RW), &piece);
        conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
        sent.extend_from_slice(&piece);
    }
}

#[test]
fn guest_to_host_credit_is_withheld_while_the_host_does_not_read() {
    let dir = TestDir::new();
    let (mut g, mut host, mut conn) = stall_ready(&dir, 7000);
    let sent = send_until_stalled(&mut g, &mut conn);
    // The device holds exactly one buffer's worth; the rest is in the
    // host socket.
    assert_eq!(conn.tx_cnt - conn.peer_fwd_cnt, CONN_BUF_ALLOC);
    assert!(sent.len() > CONN_BUF_ALLOC as usize);
    // Asking again changes nothing while the host does not read.
    g.send(conn.hdr(op::CREDIT_REQUEST), &[]);
    g.post_rx(1);
    let again = g.expect(op::CREDIT_UPDATE);
    assert_eq!(again.hdr.fwd_cnt, conn.peer_fwd_cnt);

    // The host reads everything; the device forwards its buffer.
    let mut got = vec![0u8; sent.len()];
    host.read_exact(&mut got).unwrap();
    assert!(got == sent, "byte stream differs");
    g.keep_posted = true;
    g.post_rx(4);
    g.send(conn.hdr(op::CREDIT_REQUEST), &[]);
    loop {
        let p = g.expect(op::CREDIT_UPDATE);
        conn.check(&p.hdr);
        if conn.peer_fwd_cnt == conn.tx_cnt {
            break;
        }
    }
    assert_eq!(conn.credit(), CONN_BUF_ALLOC);
    // And the connection still works.
    g.send(conn.hdr(op::RW), b"after");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after");
}

#[test]
fn guest_sending_beyond_its_credit_is_reset() {
    let dir = TestDir::new();
    let (mut g, mut host, mut conn) = stall_ready(&dir, 7001);
    let sent = send_until_stalled(&mut g, &mut conn);
    g.send(conn.hdr(op::RW), b"one too many");
    g.post_rx(1);
    let rst = g.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (7001, 50_000));
    // The host socket is closed after what reached it; the device's
    // buffer went with the connection.
    let rest = wait_closed(&mut host);
    assert_eq!(rest, sent[..sent.len() - CONN_BUF_ALLOC as usize]);
}

#[test]
fn guest_shutdown_send_is_a_half_close() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let (mut client, mut conn) = g.host_connect(2000);
    g.send(conn.hdr(op::RW), b"request");
    let mut shut = conn.hdr(op::SHUTDOWN);
    shut.flags = shutdown::SEND;
    g.send(shut, &[]);
    // The host reads the request, then end-of-file...
    let mut buf = Vec::new();
    client.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"request");
    // ...and can still answer.
    client.write_all(b"response").unwrap();
    assert_eq!(g.read_bytes(&mut conn, 8), b"response");
    // Data after SHUTDOWN(SEND) breaks the protocol: reset.
    g.send(conn.hdr(op::RW), b"late");
    let rst = g.expect(op::RST);
    assert_eq!(rst.hdr.dst_port, 2000);
    assert_eq!(wait_closed(&mut client), b"");
}

#[test]
fn guest_close_flushes_then_resets() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let (mut client, conn) = g.host_connect(2001);
    g.send(conn.hdr(op::RW), b"last words");
    let mut shut = conn.hdr(op::SHUTDOWN);
    shut.flags = shutdown::BOTH;
    g.send(shut, &[]);
    // Linux waits for this RST before it frees the socket.
    let rst = g.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (conn.host_port, 2001));
    assert_eq!(wait_closed(&mut client), b"last words");
}

#[test]
fn host_half_close_reaches_the_guest_as_shutdown_send() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let (mut client, mut conn) = g.host_connect(2002);
    client.write_all(b"stdin").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(g.read_bytes(&mut conn, 5), b"stdin");
    let shut = g.expect(op::SHUTDOWN);
    assert_eq!(shut.hdr.flags, shutdown::SEND, "the host still reads");
    // The guest keeps sending; the host keeps reading.
    g.send(conn.hdr(op::RW), b"stdout");
    let mut buf = [0u8; 6];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"stdout");
}

#[test]
fn host_close_reaches_the_guest_as_full_shutdown() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let listener = UnixListener::bind(port_path(&g.uds, 3000)).unwrap();
    let (host, conn) = g.guest_connect(&listener, 3001, 3000);
    drop(host);
    let shut = g.expect(op::SHUTDOWN);
    assert_eq!(shut.hdr.flags, shutdown::BOTH);
    // A guest that writes anyway is reset (the socket is gone).
    g.send(conn.hdr(op::RW), b"anyone?");
    let rst = g.expect(op::RST);
    assert_eq!(rst.hdr.dst_port, 3001);
}

#[test]
fn guest_reset_closes_the_host_socket() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let (mut client, conn) = g.host_connect(2003);
    g.send(conn.hdr(op::RST), &[]);
    assert_eq!(wait_closed(&mut client), b"");
    // The connection is gone: more packets on it get a RST.
    g.send(conn.hdr(op::RW), b"x");
    let rst = g.expect(op::RST);
    assert_eq!(rst.hdr.dst_port, 2003);
}

#[test]
fn second_request_on_a_live_connection_resets_it() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let listener = UnixListener::bind(port_path(&g.uds, 4000)).unwrap();
    let (mut host, conn) = g.guest_connect(&listener, 4001, 4000);
    g.send(conn.hdr(op::REQUEST), &[]);
    let rst = g.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (4000, 4001));
    assert_eq!(wait_closed(&mut host), b"");
}

#[test]
fn host_client_leaving_before_the_guest_answers() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    let req = g.expect(op::REQUEST);
    drop(client);
    // The device notices and withdraws the request.
    let rst = g.expect(op::RST);
    assert_eq!(
        (rst.hdr.src_port, rst.hdr.dst_port),
        (req.hdr.src_port, 1234)
    );
    // A late acceptance finds nothing.
    let conn = Conn::new(1234, req.hdr.src_port, &req.hdr);
    g.send(conn.hdr(op::RESPONSE), &[]);
    let rst = g.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (conn.host_port, 1234));
}

#[test]
fn host_client_half_closing_before_the_guest_answers_is_served() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.set_read_timeout(Some(HANG_GUARD)).unwrap();
    // As `printf 'CONNECT 77\nquery' | socat - UNIX-CONNECT:…` does.
    client.write_all(b"CONNECT 77\nquery").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let req = g.expect(op::REQUEST);
    let mut conn = Conn::new(77, req.hdr.src_port, &req.hdr);
    g.send(conn.hdr(op::RESPONSE), &[]);
    assert_eq!(read_line(&mut client), format!("OK {}\n", conn.host_port));
    assert_eq!(g.read_bytes(&mut conn, 5), b"query");
    assert_eq!(g.expect(op::SHUTDOWN).hdr.flags, shutdown::SEND);
    g.send(conn.hdr(op::RW), b"answer");
    let mut shut = conn.hdr(op::SHUTDOWN);
    shut.flags = shutdown::BOTH;
    g.send(shut, &[]);
    g.expect(op::RST);
    assert_eq!(wait_closed(&mut client), b"answer");
}

#[test]
fn connect_garbage_closes_the_client() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let cases: [&[u8]; 7] = [
        b"CONNECT 1024",
        b"CONNECT 1024 and then some more text without end",
        b"CONNECT port\n",
        b"CONNECT -5\n",
        b"CONNECT 4294967296\n",
        b"HELLO 1024\n",
        b"\n",
    ];
    for bytes in cases {
        let mut client = UnixStream::connect(&g.uds).unwrap();
        client.write_all(bytes).unwrap();
        // End of input without a newline is garbage too. (The device may
        // have closed the socket already.)
        let _ = client.shutdown(Shutdown::Write);
        assert_eq!(
            wait_closed(&mut client),
            b"",
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // None of them reached the guest; a good one still works.
    assert!(!g.has_packet());
    let (_client, _conn) = g.host_connect(1024);
}

#[test]
fn reset_closes_every_connection_and_the_device_serves_again() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let listener = UnixListener::bind(port_path(&g.uds, 8000)).unwrap();
    let (mut client, _) = g.host_connect(8001);
    let (mut host, _) = g.guest_connect(&listener, 8002, 8000);
    g.drv.reset();
    assert_eq!(wait_closed(&mut client), b"");
    assert_eq!(wait_closed(&mut host), b"");
    g.drv.init(VIRTIO_F_VERSION_1).unwrap();
    g.post_rx(8);
    let (mut client, mut conn) = g.host_connect(8001);
    client.write_all(b"again").unwrap();
    assert_eq!(g.read_bytes(&mut conn, 5), b"again");
}

#[test]
fn impossible_avail_index_makes_the_device_need_a_reset() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 8);
    let (mut client, _) = g.host_connect(8001);
    let layout = g.drv.queue_layout(TX_QUEUE).unwrap();
    g.drv
        .write_mem(layout.avail + 2, &1000u16.to_le_bytes())
        .unwrap();
    g.drv.notify(TX_QUEUE);
    let s = g.drv.wait_needs_reset(HANG_GUARD).unwrap();
    assert_eq!(s & status::DRIVER_OK, status::DRIVER_OK);
    // The reset closes the connections of the broken device and clears
    // the request; a fresh activation serves again.
    g.drv.reset();
    assert_eq!(wait_closed(&mut client), b"");
    assert_eq!(g.drv.status(), 0);
    g.drv.init(VIRTIO_F_VERSION_1).unwrap();
    g.post_rx(8);
    let (mut client, mut conn) = g.host_connect(8001);
    client.write_all(b"again").unwrap();
    assert_eq!(g.read_bytes(&mut conn, 5), b"again");
    assert_eq!(g.drv.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn many_connections_interleave() {
    let dir = TestDir::new();
    let mut g = Guest::start(&dir, 32);
    let mut conns: Vec<_> = (0..20).map(|i| g.host_connect(100 + i)).collect();
    for (i, (client, _)) in conns.iter_mut().enumerate() {
        client.write_all(&pattern(1000, i as u8)).unwrap();
    }
    let mut got = vec![Vec::new(); conns.len()];
    while got.iter().map(Vec::len).sum::<usize>() < 20 * 1000 {
        let p = g.expect(op::RW);
        let i = conns
            .iter()
            .position(|(_, c)| c.host_port == p.hdr.src_port)
            .unwrap();
        assert_eq!(p.hdr.dst_port, 100 + i as u32);
        got[i].extend_from_slice(&p.payload);
    }
    for (i, bytes) in got.iter().enumerate() {
        assert_eq!(*bytes, pattern(1000, i as u8));
    }
}
