//! virtio-rng end to end: a driver posts buffers through virtio-mmio and gets
//! them back filled by the device's worker thread — and a malicious driver's
//! chains come back empty, without hangs or panics.
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentvm_devices::testing::{Buf, Descriptor, Driver, HarnessError, Used};
use agentvm_devices::virtio::rng::queue::MAX_REQUEST_BYTES;
use agentvm_devices::virtio::rng::{EntropySource, Rng};
use agentvm_devices::virtio::transport::mmio::{regs, status, INT_USED_RING};
use agentvm_devices::virtio::{device_type, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 4 << 20;
/// A hang guard only: every wait here ends as soon as the device answers.
const HANG_GUARD: Duration = Duration::from_secs(20);
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// A recognisable, never-zero byte stream: 1, 2, …, 251, 1, 2, …
fn pattern(buf: &mut [u8]) -> io::Result<()> {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    Ok(())
}

fn expected(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    pattern(&mut v).unwrap();
    v
}

/// The pattern, counting how often the device asked for entropy.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl EntropySource for Counting {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        pattern(buf)
    }
}

/// A driver with the rng's one queue set up at `size`, running.
fn running<E: EntropySource + Clone + Send + 'static>(source: E, size: u16) -> Driver {
    let mut drv = Driver::new(Box::new(Rng::with_source(source)), MEM).unwrap();
    assert_eq!(drv.probe().unwrap(), device_type::RNG);
    assert_eq!(drv.queue_max(0), 256);
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    drv.setup_queue(0, size).unwrap();
    drv.driver_ok().unwrap();
    drv
}

/// Posts one chain, notifies, and returns what came back for it.
fn request(drv: &mut Driver, bufs: &[Buf]) -> Used {
    let head = drv.add_chain(0, bufs).unwrap();
    drv.notify(0);
    let used = drv.wait_used(0, HANG_GUARD).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].head, head);
    used.into_iter().next().unwrap()
}

#[test]
fn fills_a_buffer_with_host_entropy() {
    let mut drv = Driver::new(Box::new(Rng::new()), MEM).unwrap();
    assert_eq!(drv.init(VIRTIO_F_VERSION_1).unwrap(), VIRTIO_F_VERSION_1);
    assert_eq!(drv.interrupt_count(), 0);
    let used = request(&mut drv, &[Buf::writable(64)]);
    assert_eq!(used.len, 64);
    let bytes = drv.read_written(&used).unwrap();
    assert_eq!(bytes.len(), 64);
    assert!(
        bytes.iter().any(|&b| b != 0),
        "64 random bytes are all zero"
    );
    assert_eq!(drv.interrupt_count(), 1);
    assert_eq!(drv.ack_interrupt(), INT_USED_RING);

    // Again: the worker keeps serving, and the bytes differ.
    let again = request(&mut drv, &[Buf::writable(64)]);
    assert_ne!(drv.read_written(&again).unwrap(), bytes);
    assert_eq!(drv.interrupt_count(), 2);
}

#[test]
fn fills_multi_descriptor_chains_in_order() {
    let mut drv = running(pattern, 16);
    let used = request(
        &mut drv,
        &[
            Buf::writable(16),
            Buf::writable(0),
            Buf::writable(100),
            Buf::writable(7),
        ],
    );
    assert_eq!(used.len, 123);
    assert_eq!(drv.read_written(&used).unwrap(), expected(123));
    // Buffer by buffer: the stream continues across descriptors.
    let third = used.buffers[2];
    assert_eq!(drv.read_mem(third.addr, 100).unwrap(), expected(116)[16..]);
}

#[test]
fn caps_each_request() {
    let mut drv = running(pattern, 16);
    let big = (MAX_REQUEST_BYTES + 10_000) as u32;
    let used = request(&mut drv, &[Buf::writable(1000), Buf::writable(big)]);
    assert_eq!(used.len as usize, MAX_REQUEST_BYTES);
    assert_eq!(
        drv.read_written(&used).unwrap(),
        expected(MAX_REQUEST_BYTES)
    );
    // The rest of the big buffer is untouched.
    let tail = used.buffers[1].addr + (MAX_REQUEST_BYTES - 1000) as u64;
    assert!(drv.read_mem(tail, 10_000).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn serves_every_available_chain_after_one_notification() {
    let source = Counting::default();
    let fills = source.0.clone();
    let mut drv = running(source, 256);
    let heads: Vec<u16> = (0..100)
        .map(|_| drv.add_chain(0, &[Buf::writable(8)]).unwrap())
        .collect();
    drv.notify(0);
    let used = drv.wait_used_n(0, heads.len(), HANG_GUARD).unwrap();
    assert_eq!(used.iter().map(|u| u.head).collect::<Vec<_>>(), heads);
    assert!(used.iter().all(|u| u.len == 8));
    assert_eq!(fills.load(Ordering::SeqCst), 100);
    assert!(drv.interrupt_count() >= 1);
}

#[test]
fn read_only_descriptors_are_rejected() {
    let mut drv = running(pattern, 16);
    let used = request(
        &mut drv,
        &[Buf::writable(16), Buf::readable(*b"not for you")],
    );
    assert_eq!(used.len, 0);
    // Checked before writing: the writable part stays zero.
    assert_eq!(drv.read_mem(used.buffers[0].addr, 16).unwrap(), [0; 16]);
    let used = request(&mut drv, &[Buf::readable(vec![1; 32])]);
    assert_eq!(used.len, 0);
    assert_eq!(drv.read_mem(used.buffers[0].addr, 32).unwrap(), [1; 32]);
    // The device still serves a well-formed request afterwards.
    assert_eq!(request(&mut drv, &[Buf::writable(4)]).len, 4);
}

#[test]
fn buffers_outside_guest_memory_are_rejected() {
    let mut drv = running(pattern, 16);
    let end = MEM as u64;
    for raw in [
        Buf::raw(end + 0x1000, 64, true),
        Buf::raw(end - 32, 64, true),
        Buf::raw(u64::MAX - 8, 64, true),
    ] {
        let used = request(&mut drv, &[Buf::writable(16), raw]);
        assert_eq!(used.len, 0);
        assert_eq!(drv.read_mem(used.buffers[0].addr, 16).unwrap(), [0; 16]);
    }
    assert_eq!(request(&mut drv, &[Buf::writable(4)]).len, 4);
}

#[test]
fn descriptor_loops_end_without_a_hang() {
    let mut drv = running(pattern, 16);
    let buf = drv.alloc(64, 16).unwrap();
    let ids = drv.reserve_descriptors(0, 3).unwrap();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    // a → b → a → …
    drv.write_descriptor(0, a, Descriptor::new(buf, 16, NEXT | WRITE, b))
        .unwrap();
    drv.write_descriptor(0, b, Descriptor::new(buf + 16, 16, NEXT | WRITE, a))
        .unwrap();
    // c → c
    drv.write_descriptor(0, c, Descriptor::new(buf + 32, 16, NEXT | WRITE, c))
        .unwrap();
    drv.make_available(0, a).unwrap();
    drv.make_available(0, c).unwrap();
    drv.notify(0);
    let used = drv.wait_used_n(0, 2, HANG_GUARD).unwrap();
    assert_eq!(
        used.iter().map(|u| (u.head, u.len)).collect::<Vec<_>>(),
        [(a, 0), (c, 0)]
    );
    assert!(drv.read_mem(buf, 64).unwrap().iter().all(|&b| b == 0));
    assert_eq!(request(&mut drv, &[Buf::writable(4)]).len, 4);
}

#[test]
fn broken_chain_links_are_rejected() {
    let mut drv = running(pattern, 16);
    let buf = drv.alloc(32, 16).unwrap();
    let ids = drv.reserve_descriptors(0, 2).unwrap();
    // Next index beyond the table.
    drv.write_descriptor(0, ids[0], Descriptor::new(buf, 16, NEXT | WRITE, 500))
        .unwrap();
    drv.make_available(0, ids[0]).unwrap();
    // An indirect table longer than the queue (indirect was never offered).
    let table = drv.alloc(32 * 16, 16).unwrap();
    for i in 0..32u16 {
        let desc = Descriptor::new(buf + 16, 1, NEXT | WRITE, i + 1);
        drv.mem()
            .write_obj(desc, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
    let indirect = VRING_DESC_F_INDIRECT as u16;
    drv.write_descriptor(0, ids[1], Descriptor::new(table, 32 * 16, indirect, 0))
        .unwrap();
    drv.make_available(0, ids[1]).unwrap();
    drv.notify(0);
    let used = drv.wait_used_n(0, 2, HANG_GUARD).unwrap();
    assert_eq!(
        used.iter().map(|u| (u.head, u.len)).collect::<Vec<_>>(),
        [(ids[0], 0), (ids[1], 0)]
    );
    assert!(drv.read_mem(buf, 32).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn head_index_beyond_the_queue_is_dropped() {
    let mut drv = running(pattern, 16);
    drv.make_available(0, 999).unwrap();
    // Served in ring order: when the good request is back, the bad head
    // has been dealt with — and never appears in the used ring.
    let good = drv.add_chain(0, &[Buf::writable(8)]).unwrap();
    drv.notify(0);
    let used = drv.wait_used(0, HANG_GUARD).unwrap();
    assert_eq!(
        used.iter().map(|u| (u.head, u.len)).collect::<Vec<_>>(),
        [(good, 8)]
    );
}

#[test]
fn impossible_avail_index_makes_the_device_need_a_reset() {
    let mut drv = running(pattern, 16);
    let layout = drv.queue_layout(0).unwrap();
    drv.write_mem(layout.avail + 2, &1000u16.to_le_bytes())
        .unwrap();
    drv.notify(0);
    // The device says so instead of going silent.
    let s = drv.wait_needs_reset(HANG_GUARD).unwrap();
    assert_eq!(s & status::DRIVER_OK, status::DRIVER_OK);
    // A reset joins the worker and clears the request; then all is well
    // again.
    drv.reset();
    assert_eq!(drv.status(), 0);
    assert!(!drv.transport().is_activated());
    drv.init(VIRTIO_F_VERSION_1).unwrap();
    assert_eq!(request(&mut drv, &[Buf::writable(4)]).len, 4);
    assert_eq!(drv.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn notification_before_driver_ok_waits_for_activation() {
    let mut drv = Driver::new(Box::new(Rng::with_source(pattern)), MEM).unwrap();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    drv.setup_queue(0, 16).unwrap();
    let head = drv.add_chain(0, &[Buf::writable(8)]).unwrap();
    drv.notify(0);
    // No worker exists before DRIVER_OK, so nothing can have been served.
    assert!(!drv.transport().is_activated());
    assert!(drv.used(0).unwrap().is_empty());
    assert_eq!(drv.interrupt_count(), 0);
    // The pending notification is seen once the device runs.
    drv.driver_ok().unwrap();
    let used = drv.wait_used(0, HANG_GUARD).unwrap();
    assert_eq!(
        used.iter().map(|u| (u.head, u.len)).collect::<Vec<_>>(),
        [(head, 8)]
    );
}

#[test]
fn reset_stops_the_worker_and_setup_works_again() {
    let source = Counting::default();
    let fills = source.0.clone();
    let mut drv = running(source, 16);
    assert_eq!(request(&mut drv, &[Buf::writable(8)]).len, 8);
    drv.reset();
    assert_eq!(drv.status(), 0);
    assert!(!drv.transport().is_activated());
    // Notifications to a reset device go nowhere.
    drv.write_reg(regs::QUEUE_NOTIFY, 0);
    assert!(matches!(
        drv.add_chain(0, &[Buf::writable(8)]),
        Err(HarnessError::QueueNotSetUp(0))
    ));

    drv.init(VIRTIO_F_VERSION_1).unwrap();
    assert_eq!(request(&mut drv, &[Buf::writable(8)]).len, 8);
    assert_eq!(fills.load(Ordering::SeqCst), 2);
}

#[test]
fn driver_ok_without_the_queue_needs_reset() {
    let mut drv = Driver::new(Box::new(Rng::new()), MEM).unwrap();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    let err = drv.driver_ok().unwrap_err();
    assert!(matches!(err, HarnessError::DeviceNotOk(s) if s & status::DEVICE_NEEDS_RESET != 0));
    assert!(!drv.transport().is_activated());
    drv.init(VIRTIO_F_VERSION_1).unwrap();
    assert_eq!(request(&mut drv, &[Buf::writable(4)]).len, 4);
}

#[test]
fn rng_has_no_config_space_and_only_version_1() {
    let mut drv = Driver::new(Box::new(Rng::new()), MEM).unwrap();
    assert_eq!(drv.device_features(), VIRTIO_F_VERSION_1);
    assert_eq!(drv.config_u64(0), 0);
    drv.write_config(0, &[0xff; 4]);
    assert_eq!(drv.config_u32(0), 0);
}

// ---- warnings a driver triggers at will ------------------------------------

static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Log lines of this test process (each test runs in its own) containing
/// `needle`.
fn logged(needle: &str) -> usize {
    String::from_utf8_lossy(&LOGS.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn a_driver_flooding_bad_requests_and_failed_status_gets_a_few_warnings_not_one_each() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .try_init();
    let mut drv = running(pattern, 256);
    for _ in 0..200 {
        assert_eq!(request(&mut drv, &[Buf::readable(vec![1; 8])]).len, 0);
    }
    let rejected = logged("virtio-rng: request");
    assert!(
        (1..=10).contains(&rejected),
        "{rejected} warnings for 200 bad requests"
    );
    // The transport's "driver gave up" warning, set after every reset.
    for _ in 0..200 {
        drv.reset();
        drv.add_status(status::FAILED);
    }
    let failed = logged("the driver gave up on the device");
    assert!(
        (1..=10).contains(&failed),
        "{failed} warnings for 200 FAILED statuses"
    );
    // The device still serves a well-formed request afterwards.
    let mut drv = running(pattern, 16);
    assert_eq!(request(&mut drv, &[Buf::writable(4)]).len, 4);
}
