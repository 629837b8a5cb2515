//! The virtio-fs device: what the transport sees (type 26, a high-priority
//! queue and one request queue, `tag` and `num_request_queues` in config
//! space, the backend's features) and the switch between idle and running.
//!
//! # Lifecycle
//!
//! [`VirtioFs::new`] validates the share, finds virtiofsd, starts it and
//! runs the first half of the handshake: the features the guest is offered
//! come from the daemon, so it must run before the driver looks. The
//! driver's DRIVER_OK ([`VirtioDevice::activate`]) completes the handshake
//! and hands the daemon, the rings and the call eventfds to a worker.
//! A reset stops the worker at once; the daemon goes when the reset is
//! retired ([`VirtioDevice::retire`], off the vCPU thread). The next
//! activation starts a fresh daemon (same binary, same options, hence the
//! same features). Dropping the device stops everything.

use std::error::Error;
use std::sync::Arc;

use tracing::{error, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::BackendError;
use super::config::{ConfigError, FsConfig};
use super::daemon::STOP_GRACE;
use super::handle::{DaemonState, FsHandle, Shared};
use super::handler::FsHandler;
use super::locate::{LocateError, Search, Virtiofsd};
use super::session::{Session, Spawned, StartError};
use super::{CONFIG_LEN, NUM_QUEUES, NUM_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::virtio::worker::WorkerSlot;
use crate::virtio::{
    device_type, read_config_from, ActivateError, ActivationContext, VirtioDevice,
};

/// The queue sizes the transport offers.
const QUEUE_MAX_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

/// Why a share could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No usable virtiofsd (one line naming what to install).
    #[error(transparent)]
    Locate(#[from] LocateError),
    /// virtiofsd did not start or the handshake failed.
    #[error("Cannot start virtiofsd for share {tag}")]
    Start {
        /// The share.
        tag: String,
        /// What went wrong.
        #[source]
        source: StartError,
    },
    /// An eventfd could not be created.
    #[error("Cannot create the call eventfds")]
    CallEvent(#[source] std::io::Error),
    /// The second half of the handshake failed.
    #[error("Cannot set up virtiofsd for share {tag}")]
    Activate {
        /// The share.
        tag: String,
        /// What went wrong.
        #[source]
        source: BackendError,
    },
    /// The daemon of a live mount is gone and cannot be restarted here.
    #[error("virtiofsd of live mount {0} is gone; unmount and mount again")]
    Detached(String),
    /// The driver acknowledged features the (new) daemon does not offer.
    #[error("The driver acknowledged features {0:#x} virtiofsd does not offer")]
    Features(u64),
}

/// A virtio-fs device backed by one virtiofsd; see the [module docs](self).
pub struct VirtioFs {
    config: FsConfig,
    /// `None` for a daemon started elsewhere ([`VirtioFs::attach`]),
    /// which this device never restarts.
    binary: Option<Virtiofsd>,
    features: u64,
    config_space: [u8; CONFIG_LEN],
    /// A started daemon waiting for the driver.
    idle: Option<Session>,
    worker: WorkerSlot<FsHandler>,
    /// The handler of a reset session, holding its daemon until retired.
    retired: Option<FsHandler>,
    shared: Arc<Shared>,
}

impl VirtioFs {
    /// Starts the share `config` with the virtiofsd its configuration,
    /// `$AGENTVM_VIRTIOFSD` or the search path names.
    pub fn new(config: FsConfig) -> Result<Self, FsError> {
        let search = Search::from_env(config.virtiofsd.clone());
        Self::with_search(config, &search)
    }

    /// Starts the share `config` with the first virtiofsd `search` finds.
    pub fn with_search(config: FsConfig, search: &Search) -> Result<Self, FsError> {
        Self::spawn_with(config, search)?.connect()
    }

    /// The first half of [`VirtioFs::new`]: starts the share's virtiofsd
    /// and returns without waiting for it. Spawning every share before
    /// connecting to any lets their daemons start side by side.
    pub fn spawn(config: FsConfig) -> Result<SpawnedFs, FsError> {
        let search = Search::from_env(config.virtiofsd.clone());
        Self::spawn_with(config, &search)
    }

    /// [`VirtioFs::spawn`] with the first virtiofsd `search` finds.
    pub fn spawn_with(config: FsConfig, search: &Search) -> Result<SpawnedFs, FsError> {
        config.validate()?;
        let binary = search.find()?;
        let spawned = Session::spawn(&binary, &config);
        Ok(SpawnedFs {
            config,
            binary,
            spawned,
        })
    }

    /// A device for the daemon someone else started for `config` (its
    /// socket is [`FsConfig::socket_path`]; `shared_dir` is not looked
    /// at), whose pid is said to be `pid`. Connects and runs the first half
    /// of the handshake. After a reset of the device the daemon is gone
    /// (it ends with its connection) and the device fails to activate
    /// until it is replaced.
    pub fn attach(config: FsConfig, pid: u32) -> Result<Self, FsError> {
        super::config::validate_tag(&config.tag)?;
        let session =
            Session::attach(&config.socket_path(), pid).map_err(|source| FsError::Start {
                tag: config.tag.clone(),
                source,
            })?;
        Ok(Self::around(config, None, session, pid))
    }

    /// The device around a connected `session` to daemon `pid`, started
    /// from `binary` (`None`: started elsewhere).
    fn around(config: FsConfig, binary: Option<Virtiofsd>, session: Session, pid: u32) -> Self {
        let mut config_space = [0u8; CONFIG_LEN];
        config_space[..TAG_LEN].copy_from_slice(&config.tag_bytes());
        config_space[TAG_LEN..].copy_from_slice(&u32::from(NUM_REQUEST_QUEUES).to_le_bytes());
        let shared = Arc::new(Shared::new(&config.tag, config.socket_path()));
        shared.set(DaemonState::Running { pid });
        VirtioFs {
            features: session.guest_features(),
            config,
            binary,
            config_space,
            idle: Some(session),
            worker: WorkerSlot::new("virtio-fs", device_type::FS),
            retired: None,
            shared,
        }
    }

    /// The host's view of the daemon; valid for the device's lifetime and
    /// beyond (it then reports the last state).
    pub fn handle(&self) -> FsHandle {
        FsHandle::new(self.shared.clone())
    }

    /// The virtiofsd binary in use; `None` for a daemon started elsewhere.
    pub fn virtiofsd(&self) -> Option<&Virtiofsd> {
        self.binary.as_ref()
    }

    /// The share.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Whether a worker is running the queues.
    pub fn is_active(&self) -> bool {
        self.worker.is_active()
    }

    /// Completes the handshake with a daemon (the waiting one, or a new
    /// one) and builds the handler that serves the queues.
    fn start(&mut self, ctx: ActivationContext) -> Result<FsHandler, FsError> {
        let tag = self.config.tag.clone();
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::CallEvent)?;
        let mut idle = self.idle.take();
        let session = loop {
            let was_idle = idle.is_some();
            let mut session = match idle.take() {
                Some(session) => session,
                None => self.start_session()?,
            };
            self.shared.set(DaemonState::Running { pid: session.pid() });
            let unknown = ctx.acked_features & !session.guest_features();
            if unknown != 0 {
                return Err(FsError::Features(unknown));
            }
            match session.activate(&ctx.mem, &ctx.queues, &calls, ctx.acked_features) {
                Ok(()) => break session,
                // The daemon started at construction died while it waited
                // for the driver: start another, once.
                Err(e @ BackendError::Request { .. })
                    if was_idle && session.has_exited(STOP_GRACE) =>
                {
                    warn!(tag = %tag, "virtio-fs: the waiting virtiofsd exited ({e}); starting another");
                }
                Err(source) => return Err(FsError::Activate { tag, source }),
            }
        };
        Ok(FsHandler::new(
            &tag,
            session,
            ctx.mem,
            ctx.queues,
            calls,
            ctx.interrupt,
            self.shared.clone(),
        ))
    }

    fn start_session(&self) -> Result<Session, FsError> {
        let Some(binary) = &self.binary else {
            return Err(FsError::Detached(self.config.tag.clone()));
        };
        Session::start(binary, &self.config).map_err(|source| FsError::Start {
            tag: self.config.tag.clone(),
            source,
        })
    }
}

/// A share whose virtiofsd is starting ([`VirtioFs::spawn`]); dropped,
/// the daemon is stopped.
pub struct SpawnedFs {
    config: FsConfig,
    binary: Virtiofsd,
    spawned: Spawned,
}

impl SpawnedFs {
    /// The second half of [`VirtioFs::new`]: waits for the daemon to
    /// listen (falling back to the next sandbox mode when it cannot use
    /// this one) and runs the first half of the handshake.
    pub fn connect(self) -> Result<VirtioFs, FsError> {
        let SpawnedFs {
            config,
            binary,
            spawned,
        } = self;
        let session = spawned
            .connect(&binary, &config)
            .map_err(|source| FsError::Start {
                tag: config.tag.clone(),
                source,
            })?;
        let pid = session.pid();
        Ok(VirtioFs::around(config, Some(binary), session, pid))
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_from(&self.config_space, offset, data);
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), ActivateError> {
        self.worker.check_idle()?;
        ctx.check_queue_count(NUM_QUEUES)?;
        let interrupt = ctx.interrupt.clone();
        let started = match self.start(ctx) {
            // On failure the handler, and with it the daemon, is dropped.
            Ok(handler) => self.worker.start(handler, interrupt),
            Err(e) => Err(ActivateError::Backend(Box::new(e))),
        };
        if let Err(e) = &started {
            // The transport logs only the top line; the cause matters.
            let cause: &dyn Error = match e {
                ActivateError::Backend(fs) => fs.as_ref(),
                other => other,
            };
            error!(tag = %self.config.tag, "virtio-fs: {}", chain(cause));
            self.shared.set(DaemonState::Stopped);
        }
        started
    }

    fn reset(&mut self) -> bool {
        let was_active = self.worker.is_active();
        // Either way the thread is gone; the handler keeps the daemon
        // until retire (a lost worker dropped it while unwinding).
        match self.worker.stop() {
            Some(handler) => self.retired = Some(handler),
            None if was_active => self.shared.set(DaemonState::Stopped),
            None => {}
        }
        true
    }

    fn retire(&mut self) {
        if let Some(handler) = self.retired.take() {
            // Dropping the handler stops its daemon.
            drop(handler);
            self.shared.set(DaemonState::Stopped);
        }
    }
}

impl Drop for VirtioFs {
    fn drop(&mut self) {
        // The worker's handler and the idle session each stop their
        // daemon when dropped; this only makes the order explicit and
        // leaves the handle with the final state.
        self.reset();
        self.retire();
        drop(self.idle.take());
        self.shared.set(DaemonState::Stopped);
    }
}

/// An error and its sources on one line.
fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
