//! `bench-balloon`: how fast free page reporting returns guest memory to the
//! host. 1 GiB of memfd-backed guest RAM (as the VMM maps it) is touched,
//! then reported free through the virtio-balloon device's reporting queue
//! by the virtio driver harness, in Linux's shape (4 MiB ranges, 32 per
//! report); the memfd's allocated size is read before and after. The peer
//! is the host kernel alone: `fallocate(PUNCH_HOLE)` of the same 1 GiB in
//! the same 4 MiB pieces, with no device, queue or guest in between. The
//! ratio is the device's cost over the bare system call.
//!
//! Usage: `cargo run --release -p agentvm-benches --bin bench-balloon -- [RUNS]`

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentvm_devices::testing::{Buf, Driver};
use agentvm_devices::virtio::balloon::{
    Balloon, QueueIndexes, QUEUE_SIZE, VIRTIO_BALLOON_F_REPORTING,
};
use agentvm_devices::virtio::{GuestMemory, VIRTIO_F_VERSION_1};
use anyhow::{bail, ensure, Context};
use vm_memory::{Bytes, FileOffset, GuestAddress};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// The harness's rings and buffers live below this.
const AREA: u64 = 32 * MIB;
/// What is reported free each run.
const AREA_LEN: u64 = 1024 * MIB;
const RANGE: u64 = 4 * MIB;
const RANGES_PER_REPORT: usize = 32;
const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING;
/// The reporting queue's index when only REPORTING is negotiated.
const REPORT_QUEUE: u16 = 2;

fn main() -> anyhow::Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("RUNS must be a number")?,
        None => 5,
    };
    ensure!(runs > 0, "RUNS must be at least 1");
    ensure!(
        QueueIndexes::new(FEATURES).count() == 3,
        "unexpected queue layout"
    );
    let mut device = Vec::new();
    let mut peer = Vec::new();
    for _ in 0..runs {
        device.push(device_run()?);
        peer.push(peer_run()?);
    }
    let d = median(&mut device);
    let p = median(&mut peer);
    println!("1 GiB reported free, {runs} runs each, medians:");
    for (name, r) in [
        ("virtio-balloon reporting", d),
        ("fallocate(PUNCH_HOLE)", p),
    ] {
        println!(
            "  {name:<26} {:>7.1} ms  {:>6.2} GiB/s  memfd {:>5} MiB -> {:>3} MiB",
            r.took.as_secs_f64() * 1e3,
            gib_per_s(r.took),
            r.before / MIB,
            r.after / MIB
        );
    }
    println!(
        "  device / bare syscall: {:.2}x the time",
        d.took.as_secs_f64() / p.took.as_secs_f64()
    );
    Ok(())
}

#[derive(Clone, Copy)]
struct Run {
    took: Duration,
    before: u64,
    after: u64,
}

fn median(v: &mut [Run]) -> Run {
    v.sort_by_key(|r| r.took);
    v[v.len() / 2]
}

fn gib_per_s(d: Duration) -> f64 {
    (AREA_LEN as f64 / (1u64 << 30) as f64) / d.as_secs_f64()
}

/// A memfd of `size` bytes and guest memory mapping it shared.
fn memfd_ram(size: u64) -> anyhow::Result<(GuestMemory, Arc<File>)> {
    // SAFETY: a valid NUL-terminated name and valid flags.
    let fd = unsafe { libc::memfd_create(c"bench-balloon".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        bail!("memfd_create: {}", std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor nothing else owns.
    let file = Arc::new(unsafe { File::from_raw_fd(fd) });
    file.set_len(size)?;
    let mem = GuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        usize::try_from(size)?,
        Some(FileOffset::from_arc(file.clone(), 0)),
    )])
    .context("mapping the memfd")?;
    Ok((mem, file))
}

fn allocated(f: &File) -> anyhow::Result<u64> {
    Ok(f.metadata()?.blocks() * 512)
}

fn touch(mem: &GuestMemory) -> anyhow::Result<()> {
    for page in (AREA..AREA + AREA_LEN).step_by(PAGE as usize) {
        mem.write_obj(page, GuestAddress(page))?;
    }
    Ok(())
}

fn device_run() -> anyhow::Result<Run> {
    let (mem, memfd) = memfd_ram(AREA + AREA_LEN)?;
    touch(&mem)?;
    let mut drv = Driver::with_memory(Box::new(Balloon::new()?), mem)?;
    drv.probe()?;
    drv.negotiate(FEATURES)?;
    for q in 0..3 {
        drv.setup_queue(q, QUEUE_SIZE)?;
    }
    drv.driver_ok()?;
    let ranges: Vec<Buf> = (0..AREA_LEN / RANGE)
        .map(|i| Buf::raw(AREA + i * RANGE, RANGE as u32, true))
        .collect();
    let before = allocated(&memfd)?;
    let t = Instant::now();
    for report in ranges.chunks(RANGES_PER_REPORT) {
        drv.add_chain(REPORT_QUEUE, report)?;
        drv.notify(REPORT_QUEUE);
        drv.wait_used_n(REPORT_QUEUE, 1, Duration::from_secs(30))?;
    }
    let took = t.elapsed();
    Ok(Run {
        took,
        before,
        after: allocated(&memfd)?,
    })
}

fn peer_run() -> anyhow::Result<Run> {
    let (mem, memfd) = memfd_ram(AREA + AREA_LEN)?;
    touch(&mem)?;
    let before = allocated(&memfd)?;
    let t = Instant::now();
    for off in (AREA..AREA + AREA_LEN).step_by(RANGE as usize) {
        // SAFETY: fallocate on an fd we own, a range inside the file.
        let rc = unsafe {
            libc::fallocate(
                memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                RANGE as libc::off_t,
            )
        };
        if rc != 0 {
            bail!("fallocate: {}", std::io::Error::last_os_error());
        }
    }
    let took = t.elapsed();
    Ok(Run {
        took,
        before,
        after: allocated(&memfd)?,
    })
}
