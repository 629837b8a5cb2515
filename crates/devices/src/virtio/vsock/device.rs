//! The virtio-vsock device: what the transport sees (type 19, three queues,
//! the guest CID in config space), the host listening socket's life, and
//! the switch between idle and running.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::handler::{NotifiedQueue, VsockHandler};
use super::muxer::Muxer;
use super::{unix, VsockCounters};
use crate::virtio::worker::WorkerSlot;
use crate::virtio::{
    device_type, read_config_from, ActivateError, ActivationContext, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;

/// The guest CID when none is given: the first one not reserved.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0–2 and 2^32−1 are reserved; Linux takes 32-bit CIDs only.
    #[error("Guest CID {0} is reserved or too large (use 3 to 4294967294)")]
    InvalidCid(u64),
    /// Another process listens on the socket path.
    #[error("{} is in use by another process", .0.display())]
    InUse(PathBuf),
    /// Something other than a socket is at the path; it is left alone.
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// The path could not be inspected.
    #[error("Cannot inspect {}", path.display())]
    Inspect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A stale socket from an earlier run could not be removed.
    #[error("Cannot remove the stale socket {}", path.display())]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The listening socket could not be created.
    #[error("Cannot listen on {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The listening socket could not be made non-blocking.
    #[error("Cannot make the listening socket non-blocking")]
    Nonblocking(#[source] io::Error),
}

/// A vsock device (virtio 1.2 §5.10) whose host side is the Unix socket
/// `uds_path` (see the [module docs](super)).
///
/// The socket is bound by [`Vsock::new`], so a bad path fails before the
/// VM boots; host clients may connect at once and are served once the
/// guest's driver is up. Dropping the device removes the socket file.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: Arc<UnixListener>,
    /// (device, inode) of the socket file we bound, to remove only ours.
    socket_id: Option<(u64, u64)>,
    worker: WorkerSlot<VsockHandler>,
    counters: VsockCounters,
}

impl Vsock {
    /// A device for the guest `guest_cid`, listening on `uds_path` (a stale
    /// socket left there by a dead process is replaced).
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Result<Self, VsockError> {
        let uds_path = uds_path.into();
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        clear_stale_socket(&uds_path)?;
        let listener =
            crate::socket::bind_owner_only(&uds_path).map_err(|source| VsockError::Bind {
                path: uds_path.clone(),
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(VsockError::Nonblocking)?;
        let socket_id = std::fs::symlink_metadata(&uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(Vsock {
            guest_cid,
            uds_path,
            listener: Arc::new(listener),
            socket_id,
            worker: WorkerSlot::new("virtio-vsock", device_type::VSOCK),
            counters: VsockCounters::default(),
        })
    }

    /// Counts the connections refused at the cap into `counters`.
    pub fn with_counters(mut self, counters: VsockCounters) -> Self {
        self.counters = counters;
        self
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The socket host clients connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Whether a worker is running the queues.
    pub fn is_active(&self) -> bool {
        self.worker.is_active()
    }
}

/// Makes room for our socket at `path`: nothing there is fine, a socket
/// nobody listens on is removed, anything else is an error.
fn clear_stale_socket(path: &Path) -> Result<(), VsockError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(VsockError::Inspect {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(VsockError::NotASocket(path.to_owned()));
    }
    match unix::connect_nonblocking(path) {
        // Connected, or a full backlog: someone is listening.
        Ok(_) => return Err(VsockError::InUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(VsockError::InUse(path.to_owned()))
        }
        Err(_) => {}
    }
    std::fs::remove_file(path).map_err(|source| VsockError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Stop the worker before the socket file goes.
        self.worker.stop();
        let ours = std::fs::symlink_metadata(&self.uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            if let Err(e) = std::fs::remove_file(&self.uds_path) {
                warn!(
                    "virtio-vsock: cannot remove {}: {e}",
                    self.uds_path.display()
                );
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        // Stream sockets are implied without feature bits.
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_from(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, mut ctx: ActivationContext) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        let queues = ctx.take_queues::<3>()?.map(|q| NotifiedQueue {
            queue: q.queue,
            notify: q.notify,
        });
        let muxer = Muxer::new(self.guest_cid, self.uds_path.clone(), self.listener.clone())
            .with_counters(self.counters.clone());
        let interrupt = ctx.interrupt.clone();
        let handler = VsockHandler::new(ctx.mem, queues, ctx.interrupt, muxer);
        self.worker.start(handler, interrupt)
    }

    fn reset(&mut self) -> bool {
        // Either way the thread is gone, and with it every connection.
        self.worker.stop();
        true
    }
}
