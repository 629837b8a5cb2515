//! virtio-fs (virtio 1.2 §5.11) as a vhost-user frontend: the guest's FUSE
//! requests go straight from guest memory to an external `virtiofsd`, which
//! maps guest RAM (our memfd) and serves the requests itself. The VMM never
//! parses a request on the working path; it only sets the rings up, relays
//! the backend's "used buffers" signals as interrupts, and watches the
//! daemon.
//!
//! One `virtiofsd` process serves one share, and the device owns it:
//! [`VirtioFs::new`] starts it, a device reset or drop stops it (kills and
//! reaps the whole process group, removes the socket). The next activation
//! after a reset starts a fresh one, so a rebooted guest never inherits
//! the old FUSE session.
//!
//! Layers:
//! - [`config`]: what a share is ([`FsConfig`]): tag, directories, cache
//!   mode, read-only flag; validated before anything starts;
//! - [`locate`]: which `virtiofsd` binary to run, and the one-line error
//!   naming what to install when there is none;
//! - [`daemon`]: starting, watching and stopping the process;
//! - [`filter`]: the seccomp filter it runs under (no setuid/setgid
//!   files, no device nodes on the host);
//! - [`backend`]: the vhost-user handshake (features, memory table,
//!   vrings) over the `vhost` crate's frontend;
//! - [`device`]: the [`VirtioDevice`](crate::virtio::VirtioDevice) impl,
//!   config space and the switch between idle and running;
//! - [`handle`]: the host's view of the daemon (pid, exit status);
//! - [`session`]: one started daemon and its connection, with the
//!   sandbox fallback;
//! - [`handler`]: the worker-thread subscriber (fds and tokens only);
//! - [`queue`]: the pure fallback path that answers requests with an
//!   error once the daemon is gone.
//!
//! # Wiring
//!
//! `VirtioFs::new(FsConfig::new(tag, shared_dir, state_dir))` starts the
//! daemon (errors are one line: a missing binary names what to install);
//! the device then goes behind a transport like any other. Guest RAM must
//! be file-backed (the VMM's memfd), or activation fails and the transport
//! sets DEVICE_NEEDS_RESET. The guest mounts it with
//! `mount -t virtiofs <tag> <dir>`. Activation runs on the thread that
//! writes DRIVER_OK (a vCPU under KVM): it is a few vhost-user round trips,
//! plus a daemon start (tens of milliseconds, at most
//! [`daemon::START_TIMEOUT`]) after a reset.
//!
//! # When virtiofsd dies
//!
//! The worker notices (the vhost-user socket hangs up, the process's pidfd
//! becomes readable), logs one `error!` naming the share's tag and the exit
//! status, reaps the process and takes the queues over: every request the
//! daemon had not completed, and every later one, is answered with a FUSE
//! error reply (`EIO`). The guest's file operations fail instead of
//! hanging; a device reset (e.g. unbinding and rebinding the driver, or a
//! reboot) starts a new daemon. The transport's DEVICE_NEEDS_RESET bit is
//! not reachable from a device through [`VirtioInterrupt`](crate::virtio::VirtioInterrupt),
//! and Linux's virtio-fs driver would not act on it anyway.
//!
//! The takeover resumes at the used index the daemon left in guest
//! memory. That is exact because the daemon is started with
//! `--thread-pool-size=0`: it completes requests in ring order, so every
//! available request past the used index is one it never answered.

pub mod backend;
pub mod config;
pub mod daemon;
pub mod detached;
pub mod device;
pub mod filter;
pub mod handle;
pub mod handler;
pub mod locate;
pub mod queue;
pub mod session;

pub use backend::BackendError;
pub use config::{CacheMode, ConfigError, FsConfig};
pub use daemon::{DaemonError, Sandbox};
pub use detached::{launch_detached, launch_detached_in, stop_detached, Detached};
pub use device::{FsError, SpawnedFs, VirtioFs};
pub use handle::{DaemonState, FsHandle};
pub use locate::{LocateError, Search, Virtiofsd};
pub use session::StartError;

/// Bytes of the tag in the config space (virtio 1.2 §5.11.4).
pub const TAG_LEN: usize = 36;
/// Bytes of the whole config space: `tag[36]` then `num_request_queues`.
pub const CONFIG_LEN: usize = TAG_LEN + 4;
/// Request queues the device offers. virtiofsd serves exactly one.
pub const NUM_REQUEST_QUEUES: u16 = 1;
/// The high-priority queue (FORGET, INTERRUPT) is queue 0; request queues
/// follow.
pub const HIPRIO_QUEUE: u16 = 0;
/// Total queues: the high-priority queue plus the request queues.
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES as usize;
/// Maximum size of every queue.
pub const QUEUE_SIZE: u16 = 256;
