//! virtio-net as a vhost-user backend: the frontend (QEMU, say) owns the
//! device model and the guest's memory, we get the rings and the memory
//! table over the vhost-user socket and move frames between them and a
//! [`FrameBackend`] — by default agentvm's user-mode stack, so the
//! frontend's guest gets the same filtered network an agentvm guest has.
//!
//! The queue work is the in-VMM device's ([`process_rx`], [`process_tx`]);
//! only the wakeups differ: queue kicks come from the daemon's epoll
//! thread, and the backend's fd and a poll timer are added to that thread
//! as two more events ([`VhostUserNet::serve`]).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use agentvm_net::NetStack;
use tracing::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::timerfd::TimerFd;

use super::relay::relay;
use crate::virtio::net::device::{config_space, features, OFFERED_FEATURES};
use crate::virtio::net::rx::{process_rx, RxState};
use crate::virtio::net::tx::{process_tx, TxState};
use crate::virtio::net::{FrameBackend, Negotiated, RX_QUEUE, TX_QUEUE};
use crate::virtio::read_config_from;
use crate::virtio::{InterruptKind, VirtioInterrupt};

/// Event id of the backend's fd: ids up to the number of queues are the
/// queues' and the daemon's exit event.
const BACKEND_EVENT: u16 = 3;
/// Event id of the poll timer.
const TIMER_EVENT: u16 = 4;
/// The largest queue a frontend may set up.
const MAX_QUEUE_SIZE: usize = 1024;
/// Rounds of "tx, poll, rx" per wakeup, at most.
const ROUNDS: usize = 16;
/// The shortest timer the backend gets (a zero delay would disarm it).
const MIN_DELAY: std::time::Duration = std::time::Duration::from_micros(50);

/// Errors serving a vhost-user-net backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserNetError {
    /// The poll timer could not be created.
    #[error("Cannot create the poll timer")]
    Timer(#[source] io::Error),
    /// The daemon could not be created, or serving the socket failed
    /// (the crate's error is only displayable).
    #[error("vhost-user daemon failed: {0}")]
    Daemon(String),
    /// The daemon has no epoll thread to add our events to.
    #[error("The vhost-user daemon has no event thread")]
    NoEventThread,
    /// The backend's fd or the timer could not be watched.
    #[error("Cannot watch the backend's events")]
    Watch(#[source] io::Error),
    /// A socket could not be created, bound or accepted on.
    #[error("Cannot serve on {0}")]
    Socket(PathBuf, #[source] io::Error),
    /// Relaying the frontend's messages failed.
    #[error("Lost the frontend's messages")]
    Relay(#[source] io::Error),
}

/// Remembers that a queue wants its driver signalled; the signal is sent
/// once the vring's lock is released (the vring signals under its own
/// read lock).
#[derive(Default)]
struct Pending(AtomicBool);

impl VirtioInterrupt for Pending {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        // vhost-user has no message for DEVICE_NEEDS_RESET (the frontend
        // owns the status): a backend that gives up stays silent.
        if matches!(kind, InterruptKind::Queue(_)) {
            self.0.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A vhost-user-net backend in front of `B`.
pub struct VhostUserNet<B: FrameBackend = NetStack> {
    backend: B,
    mac: [u8; 6],
    mtu: u16,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    negotiated: Negotiated,
    acked: u64,
    rx: RxState,
    tx: TxState,
    timer: TimerFd,
    /// A queue failed for good; nothing moves until the frontend resets.
    broken: bool,
}

impl<B: FrameBackend + Sync> VhostUserNet<B> {
    /// A backend for a device with `mac` and `mtu` (the stack's MTU).
    pub fn new(backend: B, mac: [u8; 6], mtu: u16) -> Result<Self, VhostUserNetError> {
        let negotiated = Negotiated::default();
        Ok(VhostUserNet {
            backend,
            mac,
            mtu,
            mem: None,
            negotiated,
            acked: 0,
            rx: RxState::new(negotiated, None),
            tx: TxState::new(negotiated),
            timer: TimerFd::new()
                .map_err(|e| VhostUserNetError::Timer(io::Error::from_raw_os_error(e.errno())))?,
            broken: false,
        })
    }

    /// Serves one frontend on the Unix socket `path` (created) until it
    /// disconnects. The daemon itself listens on a private socket next to
    /// `path` and gets the frontend through [`relay`](super::relay).
    pub fn serve(self, path: &Path) -> Result<(), VhostUserNetError> {
        let backend_fd = self.backend.as_raw_fd();
        let timer_fd = self.timer.as_raw_fd();
        let shared = Arc::new(Mutex::new(self));
        let mut daemon = VhostUserDaemon::new(
            "agentvm-net".to_string(),
            shared,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| VhostUserNetError::Daemon(e.to_string()))?;
        let handlers = daemon.get_epoll_handlers();
        let handler = handlers.first().ok_or(VhostUserNetError::NoEventThread)?;
        let stop_threads = || handler.send_exit_event();
        for (fd, event) in [(backend_fd, BACKEND_EVENT), (timer_fd, TIMER_EVENT)] {
            if let Err(e) = handler.register_listener(fd, EventSet::IN, u64::from(event)) {
                // The daemon's threads run already; they end on this event
                // (else dropping the daemon would wait for them forever).
                stop_threads();
                return Err(VhostUserNetError::Watch(e));
            }
        }
        let connected = connect_daemon(&mut daemon, path).and_then(|back| {
            let frontend = crate::socket::bind_owner_only(path)
                .map_err(|e| VhostUserNetError::Socket(path.to_path_buf(), e))?;
            let (front, _) = frontend
                .accept()
                .map_err(|e| VhostUserNetError::Socket(path.to_path_buf(), e))?;
            Ok((front, back))
        });
        let (front, back) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                stop_threads();
                return Err(e);
            }
        };
        let relayed = relay(front, back);
        let served = daemon.wait();
        stop_threads();
        relayed.map_err(VhostUserNetError::Relay)?;
        match served {
            // The frontend hanging up is how a session ends.
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => Ok(()),
            Err(e) => Err(VhostUserNetError::Daemon(e.to_string())),
        }
    }

    /// Moves frames both ways as far as buffers allow, lets the backend
    /// work, and arms its timer.
    fn pump(&mut self, vrings: &[VringRwLock]) {
        let (Some(mem), false) = (&self.mem, self.broken) else {
            return;
        };
        let mem = mem.memory();
        let (Some(rx_ring), Some(tx_ring)) = (
            vrings.get(usize::from(RX_QUEUE)),
            vrings.get(usize::from(TX_QUEUE)),
        ) else {
            return;
        };
        // Events (the backend's, the timer's) can come before the frontend
        // has set both rings up and enabled them.
        let usable = |ring: &VringRwLock| {
            let state = ring.get_ref();
            state.is_enabled() && state.get_queue().ready()
        };
        if !usable(rx_ring) || !usable(tx_ring) {
            return;
        }
        for _ in 0..ROUNDS {
            let (tx_signal, rx_signal) = (Pending::default(), Pending::default());
            let tx = {
                let mut ring = tx_ring.get_mut();
                process_tx(
                    &mem,
                    ring.get_queue_mut(),
                    &mut self.backend,
                    &tx_signal,
                    &mut self.tx,
                )
            };
            self.backend.poll();
            let rx = {
                let mut ring = rx_ring.get_mut();
                process_rx(
                    &mem,
                    ring.get_queue_mut(),
                    &mut self.backend,
                    &rx_signal,
                    &mut self.rx,
                )
            };
            for (ring, signal) in [(tx_ring, &tx_signal), (rx_ring, &rx_signal)] {
                if signal.0.load(Ordering::Relaxed) {
                    if let Err(e) = ring.signal_used_queue() {
                        warn!("vhost-user-net: cannot signal the frontend: {e}");
                    }
                }
            }
            let (tx, rx) = match (tx, rx) {
                (Ok(tx), Ok(rx)) => (tx, rx),
                (Err(e), _) | (_, Err(e)) => {
                    error!("vhost-user-net: queues stopped until reset: {e}");
                    self.broken = true;
                    return;
                }
            };
            let again =
                tx.more_pending || rx.more_pending || (rx.detail.frames > 0 && !rx.detail.blocked);
            if !again {
                break;
            }
        }
        let armed = match self.backend.poll_delay() {
            Some(delay) => self.timer.reset(delay.max(MIN_DELAY), None),
            None => self.timer.clear(),
        };
        if let Err(e) = armed {
            error!("vhost-user-net: cannot arm the poll timer: {e}");
        }
    }
}

/// Starts `daemon` on a private socket beside `path` and returns our end
/// of its one connection (the socket's name is gone by then).
fn connect_daemon<B: FrameBackend + Sync>(
    daemon: &mut VhostUserDaemon<Arc<Mutex<VhostUserNet<B>>>>,
    path: &Path,
) -> Result<UnixStream, VhostUserNetError> {
    let mut inner = path.as_os_str().to_owned();
    inner.push(".daemon");
    let inner = PathBuf::from(inner);
    let mut listener =
        Listener::new(&inner, true).map_err(|e| VhostUserNetError::Daemon(e.to_string()))?;
    let back = UnixStream::connect(&inner).map_err(|e| VhostUserNetError::Socket(inner.clone(), e));
    let _ = std::fs::remove_file(&inner);
    let back = back?;
    // Accepts the connection made above, then serves it on its own thread.
    daemon
        .start(&mut listener)
        .map_err(|e| VhostUserNetError::Daemon(e.to_string()))?;
    Ok(back)
}

impl<B: FrameBackend + Sync> VhostUserBackendMut for VhostUserNet<B> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        // The frontend picks the size; QEMU's virtio-mmio lets the guest
        // driver take up to 1024.
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        // QEMU's net frontend cannot start the device without protocol
        // features (it enables vrings with SET_VRING_ENABLE).
        OFFERED_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, acked: u64) {
        self.acked = acked;
        self.negotiated = Negotiated::from_features(acked);
        let mtu = (acked & features::MTU != 0).then_some(self.mtu);
        self.rx = RxState::new(self.negotiated, mtu);
        self.tx = TxState::new(self.negotiated);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // Nothing beyond the base protocol: no REPLY_ACK (the relay holds
        // messages back and answers none), no CONFIG (QEMU's net device
        // model keeps MAC and MTU itself).
        VhostUserProtocolFeatures::empty()
    }

    fn reset_device(&mut self) {
        self.broken = false;
        self.acked_features(self.acked);
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // How the daemon stops its event thread when the session ends;
        // without one that thread outlives the frontend.
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                error!("vhost-user-net: cannot create the exit event: {e}");
                None
            }
        }
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // VIRTIO_RING_F_EVENT_IDX is not offered.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // The vhost crate refuses requests beyond the protocol's 256 bytes.
        let mut data = vec![0; size as usize];
        read_config_from(&config_space(self.mac, self.mtu), offset.into(), &mut data);
        data
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        match device_event {
            0 | 1 | BACKEND_EVENT | TIMER_EVENT => self.pump(vrings),
            other => warn!("vhost-user-net: event with unknown id {other}"),
        }
        Ok(())
    }
}
