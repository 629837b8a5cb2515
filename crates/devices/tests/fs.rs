//! virtio-fs end to end with a real virtiofsd (T2): the driver harness sets
//! the device up over memfd-backed guest RAM, as the VMM maps it, and sends
//! FUSE requests through the request queue; virtiofsd maps that RAM and
//! serves them on a temporary host directory.
//!
//! Needs the Rust virtiofsd (`cargo install --locked virtiofsd`, or
//! `$AGENTVM_VIRTIOFSD`). Without one each test prints why it skipped —
//! unless `CI` is set, where a missing virtiofsd fails the test.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use agentvm_devices::testing::{Buf, Driver};
use agentvm_devices::virtio::fs::{
    launch_detached, stop_detached, DaemonState, FsConfig, FsHandle, LocateError, Search, VirtioFs,
    Virtiofsd, NUM_QUEUES, QUEUE_SIZE, TAG_LEN,
};
use agentvm_devices::virtio::transport::mmio::{regs, status, MmioTransport};
use agentvm_devices::virtio::{device_type, GuestMemory, VIRTIO_F_VERSION_1};
use vm_memory::{FileOffset, GuestAddress};

const MEM: u64 = 32 << 20;
/// A hang guard only: every wait ends as soon as the device answers.
const HANG_GUARD: Duration = Duration::from_secs(20);
const HIPRIO: u16 = 0;
const REQUEST: u16 = 1;
const EVENT_IDX: u64 = 1 << 29;
const INDIRECT_DESC: u64 = 1 << 28;

/// FUSE messages (linux/fuse.h, protocol 7.31): just what these tests send.
mod fuse {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SETXATTR: u32 = 21;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const RELEASE: u32 = 18;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const CREATE: u32 = 35;

    pub const ROOT: u64 = 1;
    pub const IN_HEADER: usize = 40;
    pub const OUT_HEADER: usize = 16;
    /// fuse_entry_out: nodeid, generation, two timeouts, two nsecs, attr.
    pub const ENTRY_OUT: usize = 40 + 88;
    pub const OPEN_OUT: usize = 16;
    pub const INIT_OUT: usize = 64;

    /// A little-endian byte builder.
    #[derive(Default)]
    pub struct Msg(pub Vec<u8>);

    impl Msg {
        pub fn u16(mut self, v: u16) -> Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        pub fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        pub fn u64(mut self, v: u64) -> Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        pub fn bytes(mut self, b: &[u8]) -> Self {
            self.0.extend(b);
            self
        }
        /// A NUL-terminated name.
        pub fn name(self, name: &str) -> Self {
            self.bytes(name.as_bytes()).bytes(&[0])
        }
    }

    /// fuse_in_header followed by `body`.
    pub fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let len = (IN_HEADER + body.len()) as u32;
        Msg::default()
            .u32(len)
            .u32(opcode)
            .u64(unique)
            .u64(nodeid)
            .u32(0) // uid
            .u32(0) // gid
            .u32(std::process::id())
            .u16(0) // total_extlen
            .u16(0) // padding
            .bytes(body)
            .0
    }

    pub fn init_in() -> Vec<u8> {
        // major, minor, max_readahead, flags.
        Msg::default().u32(7).u32(31).u32(128 << 10).u32(0).0
    }

    pub fn create_in(flags: u32, mode: u32, name: &str) -> Vec<u8> {
        // flags, mode, umask, open_flags.
        Msg::default()
            .u32(flags)
            .u32(mode)
            .u32(0o022)
            .u32(0)
            .name(name)
            .0
    }

    pub fn mknod_in(mode: u32, rdev: u32, name: &str) -> Vec<u8> {
        // mode, rdev, umask, padding.
        Msg::default()
            .u32(mode)
            .u32(rdev)
            .u32(0)
            .u32(0)
            .name(name)
            .0
    }

    /// fuse_setattr_in changing the mode only (FATTR_MODE).
    pub fn chmod_in(mode: u32) -> Vec<u8> {
        let mut m = Msg::default().u32(1).u32(0); // valid, padding
        for _ in 0..6 {
            m = m.u64(0); // fh, size, lock_owner, atime, mtime, ctime
        }
        m.u32(0)
            .u32(0)
            .u32(0) // nsecs
            .u32(mode)
            .u32(0) // unused4
            .u32(0) // uid
            .u32(0) // gid
            .u32(0) // unused5
            .0
    }

    /// fuse_setxattr_in (without SETXATTR_EXT): size, flags, name, value.
    pub fn setxattr_in(name: &str, value: &[u8]) -> Vec<u8> {
        Msg::default()
            .u32(value.len() as u32)
            .u32(0)
            .name(name)
            .bytes(value)
            .0
    }

    pub fn open_in(flags: u32) -> Vec<u8> {
        Msg::default().u32(flags).u32(0).0
    }

    pub fn mkdir_in(mode: u32, name: &str) -> Vec<u8> {
        Msg::default().u32(mode).u32(0o022).name(name).0
    }

    /// fuse_read_in, also READDIR's body.
    pub fn read_in(fh: u64, offset: u64, size: u32, flags: u32) -> Vec<u8> {
        Msg::default()
            .u64(fh)
            .u64(offset)
            .u32(size)
            .u32(0) // read_flags
            .u64(0) // lock_owner
            .u32(flags)
            .u32(0)
            .0
    }

    pub fn write_in(fh: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        Msg::default()
            .u64(fh)
            .u64(offset)
            .u32(data.len() as u32)
            .u32(0) // write_flags
            .u64(0) // lock_owner
            .u32(0) // flags
            .u32(0)
            .bytes(data)
            .0
    }

    pub fn release_in(fh: u64, flags: u32) -> Vec<u8> {
        Msg::default().u64(fh).u32(flags).u32(0).u64(0).0
    }

    pub fn forget_in(nlookup: u64) -> Vec<u8> {
        Msg::default().u64(nlookup).0
    }

    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// (nodeid, size, mode) of a fuse_entry_out.
    pub fn entry(b: &[u8]) -> (u64, u64, u32) {
        (u64_at(b, 0), u64_at(b, 40 + 8), u32_at(b, 40 + 60))
    }

    /// The names in a READDIR reply (fuse_dirent records, 8-byte aligned).
    pub fn dirent_names(mut b: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        while b.len() >= 24 {
            let namelen = u32_at(b, 16) as usize;
            let name = &b[24..24 + namelen];
            names.push(String::from_utf8_lossy(name).into_owned());
            let rec = (24 + namelen).next_multiple_of(8).min(b.len());
            b = &b[rec..];
        }
        names
    }
}

/// A FUSE reply: the out header's fields and what follows it.
#[derive(Debug)]
struct Reply {
    error: i32,
    unique: u64,
    body: Vec<u8>,
}

// ---- logs -----------------------------------------------------------------

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends every log line of this test process into [`LOGS`].
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

// ---- setup ----------------------------------------------------------------

/// The virtiofsd the device will use, or `None` (test skipped) outside CI.
fn virtiofsd(test: &str) -> Option<Virtiofsd> {
    match Search::from_env(None).find() {
        Ok(found) => Some(found),
        Err(e) if std::env::var_os("CI").is_some() => panic!("{test}: CI needs virtiofsd: {e}"),
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

/// Temporary shared and state directories.
struct Dirs {
    _tmp: tempfile::TempDir,
    shared: PathBuf,
    state: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("share");
    let state = tmp.path().join("state");
    fs::create_dir(&shared).unwrap();
    fs::create_dir(&state).unwrap();
    Dirs {
        _tmp: tmp,
        shared,
        state,
    }
}

/// Guest RAM as the VMM makes it: a memfd mapped shared.
fn memfd_ram(size: u64) -> GuestMemory {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(c"fs-test", MFdFlags::MFD_CLOEXEC).unwrap();
    let file = Arc::new(File::from(fd));
    file.set_len(size).unwrap();
    GuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        size as usize,
        Some(FileOffset::from_arc(file, 0)),
    )])
    .unwrap()
}

/// A guest with a virtio-fs device, driven through the harness.
struct Guest {
    drv: Driver,
    host: FsHandle,
    unique: u64,
}

impl Guest {
    fn start(config: FsConfig) -> Self {
        capture_logs();
        let fs = VirtioFs::new(config).unwrap();
        let host = fs.handle();
        let drv = Driver::with_memory(Box::new(fs), memfd_ram(MEM)).unwrap();
        let mut g = Guest {
            drv,
            host,
            unique: 0,
        };
        g.init_driver();
        g
    }

    /// Probe, features, both queues, DRIVER_OK: what Linux's driver does.
    fn init_driver(&mut self) {
        assert_eq!(self.drv.probe().unwrap(), device_type::FS);
        let offered = self.drv.device_features();
        assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
        let wanted = VIRTIO_F_VERSION_1 | EVENT_IDX | INDIRECT_DESC;
        self.drv.negotiate(wanted).unwrap();
        assert_eq!(self.drv.queue_max(NUM_QUEUES as u16), 0);
        for q in 0..NUM_QUEUES as u16 {
            assert_eq!(self.drv.queue_max(q), QUEUE_SIZE);
            self.drv.setup_queue(q, 64).unwrap();
        }
        self.drv.driver_ok().unwrap();
    }

    /// Sends one request on queue `queue` with room for `reply_len` bytes
    /// after the out header; waits for its reply.
    fn send(&mut self, queue: u16, opcode: u32, nodeid: u64, body: &[u8], reply_len: u32) -> Reply {
        self.unique += 1;
        let unique = self.unique;
        let req = fuse::request(opcode, unique, nodeid, body);
        let head = self
            .drv
            .add_chain(
                queue,
                &[
                    Buf::readable(req),
                    Buf::writable(fuse::OUT_HEADER as u32 + reply_len),
                ],
            )
            .unwrap();
        self.drv.notify(queue);
        let used = self.drv.wait_used(queue, HANG_GUARD).unwrap();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].head, head);
        let bytes = self.drv.read_written(&used[0]).unwrap();
        assert!(bytes.len() >= fuse::OUT_HEADER, "short reply {bytes:?}");
        let len = fuse::u32_at(&bytes, 0) as usize;
        assert_eq!(len, bytes.len(), "out header length vs used length");
        let reply = Reply {
            error: fuse::u32_at(&bytes, 4) as i32,
            unique: fuse::u64_at(&bytes, 8),
            body: bytes[fuse::OUT_HEADER..].to_vec(),
        };
        assert_eq!(reply.unique, unique);
        reply
    }

    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8], reply_len: u32) -> Reply {
        self.send(REQUEST, opcode, nodeid, body, reply_len)
    }

    /// FUSE_INIT; returns the server's minor version.
    fn fuse_init(&mut self) -> u32 {
        let r = self.request(fuse::INIT, 0, &fuse::init_in(), fuse::INIT_OUT as u32);
        assert_eq!(r.error, 0, "FUSE_INIT failed");
        assert_eq!(fuse::u32_at(&r.body, 0), 7, "major");
        let minor = fuse::u32_at(&r.body, 4);
        assert!(minor >= 31, "minor {minor}");
        minor
    }

    fn lookup(&mut self, name: &str) -> Result<(u64, u64, u32), i32> {
        let body = fuse::Msg::default().name(name).0;
        let r = self.request(fuse::LOOKUP, fuse::ROOT, &body, fuse::ENTRY_OUT as u32);
        match r.error {
            0 => Ok(fuse::entry(&r.body)),
            e => Err(-e),
        }
    }
}

fn config(dirs: &Dirs, tag: &str) -> FsConfig {
    FsConfig::new(tag, &dirs.shared, &dirs.state)
}

/// Live (not zombie) processes in process group `pgid`.
fn live_in_group(pgid: u32) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After "(comm)": state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z") {
            live.push(pid);
        }
    }
    live
}

/// Processes whose command line mentions `needle` (our socket path).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(pid);
        }
    }
    found
}

/// Asserts nothing of the daemon in group `pgid` with socket `socket` is left.
fn assert_gone(pgid: u32, socket: &Path) {
    assert_eq!(
        live_in_group(pgid),
        Vec::<u32>::new(),
        "daemon processes left"
    );
    assert_eq!(processes_mentioning(socket), Vec::<u32>::new());
    assert!(!socket.exists(), "{} left behind", socket.display());
}

// ---- tests ----------------------------------------------------------------

#[test]
fn fuse_requests_reach_the_host_directory() {
    let Some(bin) = virtiofsd("fuse_requests_reach_the_host_directory") else {
        return;
    };
    eprintln!("using {} {}", bin.path.display(), bin.version);
    let started = logs();
    let d = dirs();
    let mut g = Guest::start(config(&d, "work"));

    // The config space: the tag, NUL-padded, then one request queue.
    let tag = g.drv.config_bytes(0, TAG_LEN);
    assert_eq!(&tag[..5], b"work\0");
    assert!(tag[4..].iter().all(|&b| b == 0));
    assert_eq!(g.drv.config_u32(TAG_LEN as u64), 1);

    g.fuse_init();
    assert_eq!(g.lookup("hello.txt"), Err(libc::ENOENT));

    // CREATE hello.txt, O_RDWR.
    let create = fuse::create_in(
        libc::O_CREAT as u32 | libc::O_RDWR as u32,
        0o100644,
        "hello.txt",
    );
    let r = g.request(
        fuse::CREATE,
        fuse::ROOT,
        &create,
        (fuse::ENTRY_OUT + fuse::OPEN_OUT) as u32,
    );
    assert_eq!(r.error, 0, "CREATE failed");
    let (nodeid, size, mode) = fuse::entry(&r.body);
    assert!(nodeid > fuse::ROOT);
    assert_eq!(size, 0);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    let fh = fuse::u64_at(&r.body, fuse::ENTRY_OUT);

    // WRITE, READ back.
    let text = b"hello from the guest\n";
    let r = g.request(fuse::WRITE, nodeid, &fuse::write_in(fh, 0, text), 8);
    assert_eq!(r.error, 0, "WRITE failed");
    assert_eq!(fuse::u32_at(&r.body, 0), text.len() as u32);
    let r = g.request(fuse::READ, nodeid, &fuse::read_in(fh, 0, 4096, 2), 4096);
    assert_eq!(r.error, 0, "READ failed");
    assert_eq!(r.body, text);
    let r = g.request(fuse::RELEASE, nodeid, &fuse::release_in(fh, 2), 0);
    assert_eq!(r.error, 0);

    // The host sees the file at once.
    assert_eq!(fs::read(d.shared.join("hello.txt")).unwrap(), text);
    // A LOOKUP now finds it with the written size.
    let (again, size, _) = g.lookup("hello.txt").unwrap();
    assert_eq!((again, size), (nodeid, text.len() as u64));

    // READDIR lists it.
    fs::write(d.shared.join("from-host.txt"), b"x").unwrap();
    let r = g.request(
        fuse::OPENDIR,
        fuse::ROOT,
        &fuse::open_in(0),
        fuse::OPEN_OUT as u32,
    );
    assert_eq!(r.error, 0, "OPENDIR failed");
    let dh = fuse::u64_at(&r.body, 0);
    let r = g.request(
        fuse::READDIR,
        fuse::ROOT,
        &fuse::read_in(dh, 0, 4096, 0),
        4096,
    );
    assert_eq!(r.error, 0, "READDIR failed");
    let mut names = fuse::dirent_names(&r.body);
    names.sort();
    assert_eq!(names, [".", "..", "from-host.txt", "hello.txt"]);
    let r = g.request(fuse::RELEASEDIR, fuse::ROOT, &fuse::release_in(dh, 0), 0);
    assert_eq!(r.error, 0);

    // FORGET on the high-priority queue: no reply expected, none given.
    let forget = fuse::request(fuse::FORGET, 99, nodeid, &fuse::forget_in(2));
    let head = g.drv.add_chain(HIPRIO, &[Buf::readable(forget)]).unwrap();
    g.drv.notify(HIPRIO);
    // virtiofsd completes FORGETs without writing; wait for the used entry.
    let used = g.drv.wait_used(HIPRIO, HANG_GUARD).unwrap();
    assert_eq!((used[0].head, used[0].len), (head, 0));

    // Used buffers reached the guest as interrupts, not only by polling.
    assert!(g.drv.interrupt_count() > 0);
    let pid = g.host.daemon_pid().unwrap();
    let socket = g.host.socket_path().to_owned();
    drop(g);
    assert_gone(pid, &socket);
    // For the CI log: how the daemon was started here.
    let log = logs();
    let line = log[started.len().min(log.len())..]
        .lines()
        .find(|l| l.contains("starting virtiofsd"))
        .unwrap_or("(no start line logged)");
    eprintln!("{line}");
}

#[test]
fn read_only_share_refuses_changes_with_erofs() {
    let Some(_) = virtiofsd("read_only_share_refuses_changes_with_erofs") else {
        return;
    };
    let d = dirs();
    fs::write(d.shared.join("ro.txt"), b"read me").unwrap();
    let mut c = config(&d, "ro");
    c.read_only = true;
    let mut g = Guest::start(c);
    g.fuse_init();

    let create = fuse::create_in(
        libc::O_CREAT as u32 | libc::O_RDWR as u32,
        0o100644,
        "new.txt",
    );
    let r = g.request(
        fuse::CREATE,
        fuse::ROOT,
        &create,
        (fuse::ENTRY_OUT + fuse::OPEN_OUT) as u32,
    );
    assert_eq!(-r.error, libc::EROFS, "CREATE on a read-only share");
    let r = g.request(
        fuse::MKDIR,
        fuse::ROOT,
        &fuse::mkdir_in(0o755, "dir"),
        fuse::ENTRY_OUT as u32,
    );
    assert_eq!(-r.error, libc::EROFS, "MKDIR on a read-only share");

    let (nodeid, size, _) = g.lookup("ro.txt").unwrap();
    assert_eq!(size, 7);
    for flags in [libc::O_WRONLY, libc::O_RDWR] {
        let r = g.request(
            fuse::OPEN,
            nodeid,
            &fuse::open_in(flags as u32),
            fuse::OPEN_OUT as u32,
        );
        assert_eq!(-r.error, libc::EROFS, "OPEN with flags {flags:#o}");
    }
    // Reading still works.
    let r = g.request(fuse::OPEN, nodeid, &fuse::open_in(0), fuse::OPEN_OUT as u32);
    assert_eq!(r.error, 0);
    let fh = fuse::u64_at(&r.body, 0);
    let r = g.request(fuse::READ, nodeid, &fuse::read_in(fh, 0, 64, 0), 64);
    assert_eq!((r.error, r.body.as_slice()), (0, &b"read me"[..]));

    assert!(!d.shared.join("new.txt").exists());
    assert!(!d.shared.join("dir").exists());
    assert_eq!(fs::read(d.shared.join("ro.txt")).unwrap(), b"read me");
}

#[test]
fn missing_virtiofsd_names_what_to_install() {
    // Needs no virtiofsd: that is the point.
    let d = dirs();
    let mut c = config(&d, "missing");
    c.virtiofsd = Some(d.state.join("no-such-virtiofsd"));
    let msg = match VirtioFs::new(c.clone()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a missing binary was accepted"),
    };
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(msg.contains("no-such-virtiofsd"), "{msg}");
    for hint in [
        "cargo install --locked virtiofsd",
        "libseccomp-dev",
        "libcap-ng-dev",
        "apt install virtiofsd",
        "AGENTVM_VIRTIOFSD",
    ] {
        assert!(msg.contains(hint), "{hint} missing from: {msg}");
    }

    // Nothing anywhere on the search path.
    c.virtiofsd = None;
    let empty = Search {
        path_var: Some(d.state.clone().into_os_string()),
        ..Search::default()
    };
    let err = match VirtioFs::with_search(c, &empty) {
        Err(e) => e,
        Ok(_) => panic!("found a virtiofsd in an empty directory"),
    };
    let msg = err.to_string();
    assert_eq!(
        msg,
        LocateError::NotFound {
            skipped: String::new()
        }
        .to_string()
    );
    assert!(msg
        .starts_with("Cannot find virtiofsd: install it with `cargo install --locked virtiofsd`"));
    assert!(!msg.contains('\n'));
    // No socket was created for a share that never started.
    assert_eq!(fs::read_dir(&d.state).unwrap().count(), 0);
}

#[test]
fn killed_virtiofsd_turns_requests_into_eio() {
    let Some(_) = virtiofsd("killed_virtiofsd_turns_requests_into_eio") else {
        return;
    };
    let d = dirs();
    let mut g = Guest::start(config(&d, "doomed"));
    g.fuse_init();
    let pid = g.host.daemon_pid().unwrap();
    let socket = g.host.socket_path().to_owned();

    // Kill the whole daemon (its namespaced child too), as a crash would.
    // SAFETY: kill(2) on the process group the device started.
    assert_eq!(unsafe { libc::kill(-(pid as i32), libc::SIGKILL) }, 0);

    // The next request is answered, with EIO, well within the hang guard.
    let started = Instant::now();
    let err = g.lookup("anything").unwrap_err();
    assert_eq!(err, libc::EIO);
    assert!(started.elapsed() < HANG_GUARD);

    // The host side knows how it died, and the log says so once, clearly.
    match g.host.state() {
        DaemonState::Died { pid: died, status } => {
            assert_eq!(died, pid);
            assert_eq!(status.unwrap().signal(), Some(libc::SIGKILL));
        }
        other => panic!("daemon state {other:?}"),
    }
    let log = logs();
    let line = log
        .lines()
        .find(|l| l.contains("virtiofsd of share doomed died"))
        .unwrap_or_else(|| panic!("no death in the log:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("SIGKILL") || line.contains("signal: 9"),
        "{line}"
    );

    // Later requests fail the same way, on both queues; nothing hangs.
    let r = g.request(fuse::GETATTR, fuse::ROOT, &[0; 16], 104);
    assert_eq!(-r.error, libc::EIO);
    let r = g.send(HIPRIO, fuse::GETATTR, fuse::ROOT, &[0; 16], 104);
    assert_eq!(-r.error, libc::EIO);
    // The daemon was reaped and its socket removed when it died.
    assert_gone(pid, &socket);

    // A reset brings the share back with a new daemon.
    g.drv.reset();
    assert_eq!(g.host.state(), DaemonState::Stopped);
    g.init_driver();
    g.fuse_init();
    let new_pid = g.host.daemon_pid().unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(g.lookup("anything"), Err(libc::ENOENT));
}

#[test]
fn teardown_leaves_no_process_and_no_socket() {
    let Some(_) = virtiofsd("teardown_leaves_no_process_and_no_socket") else {
        return;
    };
    let d = dirs();
    let mut g = Guest::start(config(&d, "tidy"));
    g.fuse_init();
    let first = g.host.daemon_pid().unwrap();
    let socket = g.host.socket_path().to_owned();
    assert!(!live_in_group(first).is_empty());
    assert!(socket.starts_with(&d.state));

    // Reset: the daemon goes with the driver's session.
    g.drv.reset();
    assert_eq!(g.host.state(), DaemonState::Stopped);
    assert_gone(first, &socket);

    // The next activation starts a fresh one; dropping the VM ends it.
    g.init_driver();
    g.fuse_init();
    let second = g.host.daemon_pid().unwrap();
    assert_ne!(second, first);
    assert!(!live_in_group(second).is_empty());
    let host = g.host.clone();
    drop(g);
    assert_gone(second, &socket);
    assert_eq!(host.state(), DaemonState::Stopped);

    // A device that was never activated also stops its daemon on drop.
    let idle = VirtioFs::new(config(&d, "idle")).unwrap();
    let pid = idle.handle().daemon_pid().unwrap();
    let idle_socket = idle.handle().socket_path().to_owned();
    assert!(idle_socket.exists());
    drop(idle);
    assert_gone(pid, &idle_socket);
    assert_eq!(fs::read_dir(&d.state).unwrap().count(), 0);
}

#[test]
fn guest_memory_virtiofsd_cannot_map_is_refused_at_activation() {
    let Some(_) = virtiofsd("guest_memory_virtiofsd_cannot_map_is_refused_at_activation") else {
        return;
    };
    capture_logs();
    let d = dirs();
    let fs = VirtioFs::new(config(&d, "anon")).unwrap();
    let host = fs.handle();
    let pid = host.daemon_pid().unwrap();
    // Anonymous memory: nothing another process could map.
    let mut drv = Driver::new(Box::new(fs), MEM as usize).unwrap();
    drv.probe().unwrap();
    drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    for q in 0..NUM_QUEUES as u16 {
        drv.setup_queue(q, 64).unwrap();
    }
    // The device refuses DRIVER_OK: the transport reports DEVICE_NEEDS_RESET.
    assert!(drv.driver_ok().is_err());
    assert_eq!(host.state(), DaemonState::Stopped);
    assert_gone(pid, host.socket_path());
    assert!(logs().contains("not file-backed"), "{}", logs());
}

#[test]
fn a_daemon_that_died_before_the_driver_came_is_replaced() {
    let Some(_) = virtiofsd("a_daemon_that_died_before_the_driver_came_is_replaced") else {
        return;
    };
    capture_logs();
    let d = dirs();
    let fs = VirtioFs::new(config(&d, "early")).unwrap();
    let host = fs.handle();
    let pid = host.daemon_pid().unwrap();
    // SAFETY: kill(2) on the process group the device started.
    assert_eq!(unsafe { libc::kill(-(pid as i32), libc::SIGKILL) }, 0);
    let mut g = Guest {
        drv: Driver::with_memory(Box::new(fs), memfd_ram(MEM)).unwrap(),
        host,
        unique: 0,
    };
    g.init_driver();
    g.fuse_init();
    let new_pid = g.host.daemon_pid().unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(live_in_group(pid), Vec::<u32>::new());
    assert_eq!(g.lookup("nothing"), Err(libc::ENOENT));
}

#[test]
fn the_guest_creates_no_setuid_file_and_no_device_node_on_the_host() {
    let Some(_) = virtiofsd("the_guest_creates_no_setuid_file_and_no_device_node_on_the_host")
    else {
        return;
    };
    let d = dirs();
    let mut g = Guest::start(config(&d, "priv"));
    g.fuse_init();
    let mode_of = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(d.shared.join(name)).map(|m| m.permissions().mode())
    };

    // A plain file, then chmod u+s / g+s on it (FUSE_SETATTR).
    let create = fuse::create_in(libc::O_CREAT as u32 | libc::O_RDWR as u32, 0o100755, "tool");
    let reply_len = (fuse::ENTRY_OUT + fuse::OPEN_OUT) as u32;
    let r = g.request(fuse::CREATE, fuse::ROOT, &create, reply_len);
    assert_eq!(r.error, 0, "CREATE failed");
    let (tool, _, _) = fuse::entry(&r.body);
    for bits in [0o4755, 0o2755, 0o6755] {
        let r = g.request(fuse::SETATTR, tool, &fuse::chmod_in(bits), 104);
        assert_eq!(r.error, -libc::EPERM, "chmod {bits:o}");
    }
    // The harmless change still works: the filter is not a blanket refusal.
    let r = g.request(fuse::SETATTR, tool, &fuse::chmod_in(0o700), 104);
    assert_eq!(r.error, 0, "chmod 700");
    assert_eq!(mode_of("tool").unwrap() & 0o7777, 0o700);

    // Created setuid (FUSE_CREATE with the bit in its mode).
    let create = fuse::create_in(libc::O_CREAT as u32 | libc::O_RDWR as u32, 0o104755, "suid");
    let r = g.request(fuse::CREATE, fuse::ROOT, &create, reply_len);
    assert_ne!(r.error, 0, "CREATE with S_ISUID");
    assert!(mode_of("suid").is_err(), "{:?}", mode_of("suid"));

    // Device nodes (FUSE_MKNOD): /dev/mem's and a loop device's numbers.
    let char_dev = libc::S_IFCHR | 0o666;
    let block_dev = libc::S_IFBLK | 0o666;
    for (name, mode, rdev) in [("mem", char_dev, (1 << 8) | 1), ("loop", block_dev, 7 << 8)] {
        let r = g.request(
            fuse::MKNOD,
            fuse::ROOT,
            &fuse::mknod_in(mode, rdev, name),
            fuse::ENTRY_OUT as u32,
        );
        assert_eq!(r.error, -libc::EPERM, "mknod {name}");
        assert!(mode_of(name).is_err(), "{name}: {:?}", mode_of(name));
    }
    // A setuid regular file through mknod is refused too; a FIFO is fine.
    let suid_reg = libc::S_IFREG | 0o4755;
    let r = g.request(
        fuse::MKNOD,
        fuse::ROOT,
        &fuse::mknod_in(suid_reg, 0, "reg"),
        fuse::ENTRY_OUT as u32,
    );
    assert_eq!(r.error, -libc::EPERM, "mknod S_ISUID regular file");
    let fifo = libc::S_IFIFO | 0o644;
    let r = g.request(
        fuse::MKNOD,
        fuse::ROOT,
        &fuse::mknod_in(fifo, 0, "fifo"),
        fuse::ENTRY_OUT as u32,
    );
    assert_eq!(r.error, 0, "mknod FIFO");
    assert_eq!(mode_of("fifo").unwrap() & libc::S_IFMT, libc::S_IFIFO);

    // File capabilities: extended attributes are not served at all.
    let cap = [
        1u8, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let r = g.request(
        fuse::SETXATTR,
        tool,
        &fuse::setxattr_in("security.capability", &cap),
        0,
    );
    assert_ne!(r.error, 0, "SETXATTR security.capability");
    let mut buf = [0u8; 64];
    let path = std::ffi::CString::new(d.shared.join("tool").into_os_string().into_encoded_bytes())
        .unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n < 0, "the host file got a capability");

    // No file in the share has a setuid/setgid bit or is a device.
    for entry in fs::read_dir(&d.shared).unwrap().flatten() {
        let mode = mode_of(entry.file_name().to_str().unwrap()).unwrap();
        assert_eq!(mode & 0o6000, 0, "{:?} {mode:o}", entry.file_name());
        assert!(![libc::S_IFCHR, libc::S_IFBLK].contains(&(mode & libc::S_IFMT)));
    }
}

#[test]
fn a_daemon_restarted_under_landlock_falls_back_from_namespaces_and_serves() {
    use landlock::{
        path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };
    let Some(bin) =
        virtiofsd("a_daemon_restarted_under_landlock_falls_back_from_namespaces_and_serves")
    else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        // Without root the fallback is `none`, refused unless allowed.
        eprintln!("skipped: the chroot fallback needs root");
        return;
    }
    capture_logs();
    let d = dirs();
    // As the VMM does: the share starts, then the thread is restricted
    // (read: the system and virtiofsd; write: the share, state, /dev/null).
    let fs = VirtioFs::new(config(&d, "late")).unwrap();
    let host = fs.handle();
    let pid = host.daemon_pid().unwrap();
    let (shared, state) = (d.shared.clone(), d.state.clone());
    let outcome = std::thread::spawn(move || {
        let abi = ABI::V5;
        let read = ["/usr", "/lib", "/lib64", "/bin", "/etc", "/proc", "/sys"]
            .iter()
            .map(PathBuf::from)
            .chain([bin.path.clone()]);
        let status = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .unwrap()
            .create()
            .unwrap()
            .add_rules(path_beneath_rules(read, AccessFs::from_read(abi)))
            .unwrap()
            .add_rules(path_beneath_rules(
                [shared, state, PathBuf::from("/dev/null")],
                AccessFs::from_all(abi),
            ))
            .unwrap()
            .restrict_self()
            .unwrap();
        if status.ruleset == RulesetStatus::NotEnforced {
            return None;
        }
        // The first daemon dies; activation starts the next one from this
        // restricted thread.
        // SAFETY: kill(2) on the process group the device started.
        assert_eq!(unsafe { libc::kill(-(pid as i32), libc::SIGKILL) }, 0);
        let mut g = Guest {
            drv: Driver::with_memory(Box::new(fs), memfd_ram(MEM)).unwrap(),
            host,
            unique: 0,
        };
        g.init_driver();
        g.fuse_init();
        let create = fuse::create_in(libc::O_CREAT as u32 | libc::O_RDWR as u32, 0o100644, "new");
        let reply_len = (fuse::ENTRY_OUT + fuse::OPEN_OUT) as u32;
        let created = g
            .request(fuse::CREATE, fuse::ROOT, &create, reply_len)
            .error;
        Some((g.host.daemon_pid(), created))
    })
    .join()
    .unwrap();
    let Some((new_pid, created)) = outcome else {
        eprintln!("skipped: this kernel has no Landlock");
        return;
    };
    assert_ne!(new_pid, Some(pid));
    assert_eq!(created, 0, "CREATE in the share failed; {}", logs());
    assert!(d.shared.join("new").exists());
    // Landlock forbids mounts, so the namespace sandbox could not be set up.
    let log = logs();
    assert!(log.contains("cannot use --sandbox namespace"), "{log}");
}

#[test]
fn a_live_mount_fills_a_slot_serves_and_leaves_nothing_when_emptied() {
    let Some(bin) = virtiofsd("a_live_mount_fills_a_slot_serves_and_leaves_nothing_when_emptied")
    else {
        return;
    };
    capture_logs();
    let d = dirs();
    fs::write(d.shared.join("from-host"), b"hello").unwrap();
    let mut cfg = config(&d, "live0");
    cfg.allow_unsandboxed = true;
    // The CLI's part: a daemon that outlives it, its log in the state dir.
    let daemon = launch_detached(&bin, &cfg, &d.state.join("virtiofsd-live0.log")).unwrap();
    assert!(!live_in_group(daemon.pid).is_empty());

    // The VMM's part: an empty slot, filled with a device attached to it.
    let mem = memfd_ram(MEM);
    let slot = MmioTransport::empty_slot(mem.clone(), NUM_QUEUES).unwrap();
    let mut drv = Driver::with_transport(slot, mem).unwrap();
    assert!(drv.probe().is_err(), "an empty slot has no device");
    let device = VirtioFs::attach(cfg.clone(), daemon.pid).unwrap();
    let host = device.handle();
    drv.transport_mut().fill(Box::new(device)).unwrap();
    let mut g = Guest {
        drv,
        host,
        unique: 0,
    };
    g.init_driver();
    g.fuse_init();
    assert!(g.lookup("from-host").is_ok());
    assert_eq!(g.host.daemon_pid(), Some(daemon.pid));

    // Emptying the slot closes the connection: the daemon ends by itself.
    let old = g.drv.transport_mut().empty().unwrap();
    drop(old);
    assert!(stop_detached(
        daemon.pid,
        &daemon.socket,
        Duration::from_secs(5),
        || false
    ));
    assert_gone(daemon.pid, &daemon.socket);
    assert_eq!(g.drv.read_reg(regs::DEVICE_ID), 0);
}

#[test]
fn a_live_mount_whose_device_is_reset_fails_without_restarting() {
    let Some(bin) = virtiofsd("a_live_mount_whose_device_is_reset_fails_without_restarting") else {
        return;
    };
    capture_logs();
    let d = dirs();
    let mut cfg = config(&d, "live1");
    cfg.allow_unsandboxed = true;
    let daemon = launch_detached(&bin, &cfg, &d.state.join("virtiofsd-live1.log")).unwrap();
    // Nobody listens for another tag: attaching fails, nothing is left.
    assert!(VirtioFs::attach(config(&d, "nobody"), 0).is_err());

    let mem = memfd_ram(MEM);
    let slot = MmioTransport::empty_slot(mem.clone(), NUM_QUEUES).unwrap();
    let mut drv = Driver::with_transport(slot, mem).unwrap();
    let device = VirtioFs::attach(cfg, daemon.pid).unwrap();
    let host = device.handle();
    drv.transport_mut().fill(Box::new(device)).unwrap();
    let mut g = Guest {
        drv,
        host,
        unique: 0,
    };
    g.init_driver();
    g.fuse_init();
    // The guest resets the device: the connection closes with it, the
    // daemon ends, and the next activation cannot start another.
    g.drv.reset();
    assert!(stop_detached(
        daemon.pid,
        &daemon.socket,
        Duration::from_secs(5),
        || false
    ));
    g.drv.probe().unwrap();
    g.drv.negotiate(VIRTIO_F_VERSION_1).unwrap();
    for q in 0..NUM_QUEUES as u16 {
        g.drv.setup_queue(q, 64).unwrap();
    }
    assert!(g.drv.driver_ok().is_err());
    assert_ne!(g.drv.status() & status::DEVICE_NEEDS_RESET, 0);
    // The slot still empties cleanly.
    drop(g.drv.transport_mut().empty().unwrap());
    assert_gone(daemon.pid, &daemon.socket);
}
