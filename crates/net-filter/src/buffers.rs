//! The smoltcp sockets of the stack's TCP flows together with the memory
//! behind their buffers, in one owner ([`TcpSockets`]), so that a socket
//! can never outlive its buffers: it is the one place that makes sockets
//! from raw memory and the one place that frees them.
//!
//! Each socket's receive and send buffers are two anonymous mappings of
//! their own. A connection's buffers then cost only the pages data
//! actually passed through — an idle connection next to nothing — and go
//! back to the kernel when the connection ends. The same sizes from the
//! heap are zeroed (so made resident) whenever the allocator reuses
//! memory: 272 KiB per idle connection in bench-net before this.
//!
//! How large a new connection's buffers are is decided here too, from
//! what the stack's [`Budget`] has left ([`BufferSize::for_new_flow`]).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::ptr::NonNull;

use smoltcp::iface::{Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};

use crate::budget::{Budget, Charge};
use crate::phy::{Borrowed, Phy};

/// Largest buffer each way, bytes: the receive buffer is the window the
/// guest sees. 1 MiB keeps a bulk flow's bytes in flight (and so the
/// wake-ups per GiB) on a par with passt's, whose window is the guest's;
/// the budget, not this cap, bounds what all flows together take
/// (a new flow gets at most a fair share of what is left).
pub const MAX_BUFFER: usize = 1 << 20;
/// Smallest buffer each way, bytes; a flow that cannot have this much is
/// refused. Half of it is above the kernel's smallest socket buffers, so
/// the host socket's buffers are what [`BufferSize`] charges for them.
pub const MIN_BUFFER: usize = 8 << 10;
/// A new flow's buffers take at most this fraction of what the budget has
/// left, so the first flows do not take it all: buffers shrink as flows
/// add up instead of the next flow being refused.
const FAIR_SHARE: usize = 32;

/// One anonymous, private, zero-filled mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned memory like a Box<[u8]>; nothing else
// refers to it but the socket `TcpSockets` makes from it.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read the pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks;
        // no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the socket that
        // used it is gone (`TcpSockets` drops sockets first).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The buffer size of a new flow and its charge to the budget.
#[derive(Debug)]
pub struct BufferSize {
    /// Bytes each way.
    pub len: usize,
    /// The flow's smoltcp buffers (2 × `len`) and its host socket's
    /// kernel buffers, `len` each way (2 × `len`): see
    /// [`BufferSize::host_socket_option`].
    charge: Charge,
}

impl BufferSize {
    /// The largest power of two between [`MIN_BUFFER`] and [`MAX_BUFFER`]
    /// whose four buffers take at most a [`FAIR_SHARE`] of what `budget`
    /// has left — or [`MIN_BUFFER`] if only that fits; `None` when not even
    /// that does.
    pub fn for_new_flow(budget: &Budget) -> Option<Self> {
        let share = budget.free() / FAIR_SHARE / 4;
        let mut len = MAX_BUFFER;
        while len > MIN_BUFFER && len > share {
            len /= 2;
        }
        let charge = budget.charge(4 * len)?;
        Some(BufferSize { len, charge })
    }

    /// Buffers of `len` bytes each way for a socket of the stack's own
    /// (no host socket behind it), charged to `budget`; `None` when they
    /// do not fit.
    pub fn fixed(budget: &Budget, len: usize) -> Option<Self> {
        let charge = budget.charge(2 * len)?;
        Some(BufferSize { len, charge })
    }

    /// The SO_SNDBUF and SO_RCVBUF to give the host socket: Linux doubles
    /// what it is given (the rest is its bookkeeping), so half the buffer
    /// length keeps the socket's memory at `len` each way.
    pub fn host_socket_option(&self) -> usize {
        self.len / 2
    }
}

/// The receive and send buffers of one socket, and their charge.
struct SocketMemory {
    rx: Mapping,
    tx: Mapping,
    _charge: Charge,
}

/// A socket of [`TcpSockets`]. Never reused: a frame routed to a socket
/// that has gone since reaches no other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockId(u64);

/// One socket, alone in a socket set of its own: smoltcp walks every
/// socket of the set it is given, so one set per socket lets the stack
/// run smoltcp for the sockets that have something to do and no other.
struct Entry {
    /// Declared first so it drops first: the socket before its memory.
    set: SocketSet<'static>,
    handle: SocketHandle,
    memory: SocketMemory,
    /// Its deadline in [`TcpSockets::timers`], if it has one.
    timer: Option<SmolInstant>,
    /// How often smoltcp ran for it (ingress or egress).
    polls: u64,
}

/// Egress rounds for one socket per poll, at most (each sends at least a
/// frame; the guest-bound queue's room ends them sooner).
const EGRESS_ROUNDS: usize = 1024;

/// The TCP sockets smoltcp polls, each with the memory its buffers live in.
///
/// Sockets are built here from their memory and never leave: callers reach
/// one only through [`TcpSockets::with`], whose closure cannot keep it, and
/// [`TcpSockets::remove`] drops the socket before the memory.
///
/// smoltcp runs ([`TcpSockets::poll`]) only for the sockets with work: a
/// guest frame routed to them, a change through [`TcpSockets::with`]
/// (they are then "dirty"), or a timer of theirs that is due. An idle
/// connection costs nothing per poll.
pub struct TcpSockets {
    entries: HashMap<SockId, Entry>,
    next: u64,
    /// Sockets changed since smoltcp last ran for them, oldest first.
    dirty: VecDeque<SockId>,
    dirty_set: HashSet<SockId>,
    /// When smoltcp wants to run for a socket again (retransmissions,
    /// delayed ACKs, timeouts).
    timers: BTreeSet<(SmolInstant, SockId)>,
    /// Sockets smoltcp ran for since [`TcpSockets::take_touched`].
    touched: Vec<SockId>,
    touched_set: HashSet<SockId>,
    /// An empty set for frames no socket is routed (ARP, ICMP, segments
    /// of unknown connections, which smoltcp answers with a RST).
    unrouted: SocketSet<'static>,
    /// Every socket was woken since the last poll.
    woke_all: bool,
}

impl Default for TcpSockets {
    fn default() -> Self {
        TcpSockets {
            entries: HashMap::new(),
            next: 0,
            dirty: VecDeque::new(),
            dirty_set: HashSet::new(),
            timers: BTreeSet::new(),
            touched: Vec::new(),
            touched_set: HashSet::new(),
            unrouted: SocketSet::new(Vec::new()),
            woke_all: false,
        }
    }
}

impl TcpSockets {
    /// A new socket with buffers of `size`, set up by `configure` (which
    /// may refuse it: the socket and memory are then dropped).
    pub fn add<E>(
        &mut self,
        size: BufferSize,
        configure: impl FnOnce(&mut tcp::Socket<'_>) -> Result<(), E>,
    ) -> Result<SockId, AddError<E>> {
        let memory = SocketMemory {
            rx: Mapping::new(size.len).map_err(AddError::Memory)?,
            tx: Mapping::new(size.len).map_err(AddError::Memory)?,
            _charge: size.charge,
        };
        // SAFETY: each mapping is `len` writable bytes that stay mapped
        // until `memory` drops, which `remove` and the field order of
        // `Entry` order after the socket; each mapping backs one slice
        // only, so no two slices alias.
        let (rx, tx) = unsafe {
            (
                std::slice::from_raw_parts_mut(memory.rx.ptr.as_ptr(), memory.rx.len),
                std::slice::from_raw_parts_mut(memory.tx.ptr.as_ptr(), memory.tx.len),
            )
        };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        // A socket refused here drops before `memory` (declared earlier).
        configure(&mut socket).map_err(AddError::Configure)?;
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        let id = SockId(self.next);
        self.next += 1;
        self.entries.insert(
            id,
            Entry {
                set,
                handle,
                memory,
                timer: None,
                polls: 0,
            },
        );
        self.mark(id);
        Ok(id)
    }

    /// Runs `f` on the socket of `id`; `None` if there is none. The
    /// closure works for any buffer lifetime, so it cannot move the socket
    /// somewhere that outlives the call. A caller whose `f` changed the
    /// socket (data in or out, a close) calls [`TcpSockets::wake`].
    pub fn with<R>(
        &mut self,
        id: SockId,
        f: impl for<'a> FnOnce(&mut tcp::Socket<'a>) -> R,
    ) -> Option<R> {
        let entry = self.entries.get_mut(&id)?;
        Some(f(entry.set.get_mut::<tcp::Socket>(entry.handle)))
    }

    /// Has smoltcp run for the socket of `id` at the next poll (it has
    /// something to send, room to announce, or a new state).
    pub fn wake(&mut self, id: SockId) {
        if self.entries.contains_key(&id) {
            self.mark(id);
        }
    }

    /// The state of the socket of `id` (closed when there is none).
    pub fn state(&self, id: SockId) -> tcp::State {
        match self.entries.get(&id) {
            Some(e) => e.set.get::<tcp::Socket>(e.handle).state(),
            None => tcp::State::Closed,
        }
    }

    /// How often smoltcp ran for the socket of `id` (0 when there is none).
    pub fn polls(&self, id: SockId) -> u64 {
        self.entries.get(&id).map_or(0, |e| e.polls)
    }

    /// Drops the socket of `id`, then its memory.
    pub fn remove(&mut self, id: SockId) {
        if let Some(entry) = self.entries.remove(&id) {
            if let Some(at) = entry.timer {
                self.timers.remove(&(at, id));
            }
            if self.dirty_set.remove(&id) {
                self.dirty.retain(|d| *d != id);
            }
            let Entry {
                mut set,
                handle,
                memory,
                ..
            } = entry;
            drop(set.remove(handle));
            drop(set);
            drop(memory);
        }
    }

    /// Has smoltcp run for every socket at the next poll (once per poll
    /// however often it is called).
    pub fn wake_all(&mut self) {
        if self.woke_all {
            return;
        }
        self.woke_all = true;
        let ids: Vec<SockId> = self.entries.keys().copied().collect();
        for id in ids {
            self.mark(id);
        }
    }

    fn mark(&mut self, id: SockId) {
        if self.dirty_set.insert(id) {
            self.dirty.push_back(id);
        }
    }

    fn touch(&mut self, id: SockId) {
        if self.touched_set.insert(id) {
            self.touched.push(id);
        }
    }

    /// The sockets smoltcp ran for since the last call: their state,
    /// buffers or room may have changed.
    pub fn take_touched(&mut self) -> Vec<SockId> {
        self.touched_set.clear();
        std::mem::take(&mut self.touched)
    }

    /// Lets smoltcp process the guest's frames, each in the socket it is
    /// routed to, then send for the sockets that have work (dirty ones and
    /// those whose timer is due).
    pub fn poll(&mut self, iface: &mut Interface, now: SmolInstant, phy: &mut Phy) -> PollResult {
        let mut result = PollResult::None;
        self.woke_all = false;
        // Each iteration takes a frame from the bounded queue, or ends.
        while let Some(route) = phy.next_route() {
            let entry = route.and_then(|id| Some(id).zip(self.entries.get_mut(&id)));
            let (set, id) = match entry {
                Some((id, e)) => {
                    e.polls += 1;
                    (&mut e.set, Some(id))
                }
                None => (&mut self.unrouted, None),
            };
            match iface.poll_ingress_single(now, phy, set) {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => {
                    result = PollResult::SocketStateChanged;
                }
            }
            if let Some(id) = id {
                self.mark(id);
                self.touch(id);
            }
        }
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            if let Some(e) = self.entries.get_mut(&id) {
                e.timer = None;
            }
            self.mark(id);
        }
        // Each socket once; one that could not send (no room) stays dirty.
        for _ in 0..self.dirty.len() {
            if !phy.has_room() {
                break;
            }
            let Some(id) = self.dirty.pop_front() else {
                break;
            };
            self.dirty_set.remove(&id);
            if self.egress(id, iface, now, phy) {
                result = PollResult::SocketStateChanged;
            }
        }
        result
    }

    /// Lets smoltcp process the guest's `frame` in the socket of `id` at
    /// once, where the frame lies; false (nothing done) when there is no
    /// such socket or no room for a reply, and the caller queues it.
    pub fn ingest(
        &mut self,
        id: SockId,
        iface: &mut Interface,
        now: SmolInstant,
        phy: &mut Phy,
        frame: &[u8],
    ) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        let mut device = Borrowed::new(frame, phy);
        iface.poll_ingress_single(now, &mut device, &mut entry.set);
        if !device.taken() {
            return false;
        }
        entry.polls += 1;
        self.mark(id);
        self.touch(id);
        true
    }

    /// Lets smoltcp process what `phy` holds for the socket of `id` alone
    /// (a parked SYN) and send what it has.
    pub fn poll_one(&mut self, id: SockId, iface: &mut Interface, now: SmolInstant, phy: &mut Phy) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.polls += 1;
        for _ in 0..EGRESS_ROUNDS {
            if iface.poll_ingress_single(now, phy, &mut entry.set) == PollIngressSingleResult::None
            {
                break;
            }
        }
        self.egress(id, iface, now, phy);
    }

    /// Runs smoltcp's egress for one socket, then files its next deadline;
    /// true if it sent anything.
    fn egress(
        &mut self,
        id: SockId,
        iface: &mut Interface,
        now: SmolInstant,
        phy: &mut Phy,
    ) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        entry.polls += 1;
        let before = entry.set.get::<tcp::Socket>(entry.handle).state();
        let mut sent = false;
        for _ in 0..EGRESS_ROUNDS {
            match iface.poll_egress(now, phy, &mut entry.set) {
                PollResult::None => break,
                PollResult::SocketStateChanged => sent = true,
            }
        }
        let at = iface.poll_at(now, &entry.set);
        if let Some(old) = std::mem::replace(&mut entry.timer, at) {
            self.timers.remove(&(old, id));
        }
        if let Some(at) = at {
            self.timers.insert((at, id));
        }
        // What the flow above can do changes only with the socket's state
        // (sending leaves its buffers as they were until the ACK, which
        // comes in a frame routed here).
        if entry.set.get::<tcp::Socket>(entry.handle).state() != before {
            self.touch(id);
        }
        sent
    }

    /// How long until smoltcp wants to run again (`None`: only when a
    /// frame comes or a socket changes).
    pub fn poll_delay(&self, now: SmolInstant) -> Option<SmolDuration> {
        if !self.dirty.is_empty() {
            return Some(SmolDuration::ZERO);
        }
        let &(at, _) = self.timers.first()?;
        Some(if at > now {
            at - now
        } else {
            SmolDuration::ZERO
        })
    }
}

/// Why [`TcpSockets::add`] made no socket.
#[derive(Debug)]
pub enum AddError<E> {
    /// The buffers could not be mapped.
    Memory(io::Error),
    /// `configure` refused the socket.
    Configure(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn idle_socket_memory_is_not_resident_and_buffers_work() {
        let budget = Budget::new(1 << 30);
        let before = resident_kib();
        let mut sockets = TcpSockets::default();
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let size = BufferSize::for_new_flow(&budget).unwrap();
                assert_eq!(size.len, MAX_BUFFER);
                sockets.add(size, |_| Ok::<(), ()>(())).unwrap()
            })
            .collect();
        let grown = resident_kib().saturating_sub(before);
        // 64 × 2 MiB mapped; far less resident (other tests' threads
        // allocate meanwhile, hence the slack).
        assert!(
            grown < 8 << 10,
            "{grown} KiB resident for 128 MiB of idle buffers"
        );
        for &h in &handles {
            assert_eq!(sockets.with(h, |s| s.recv_capacity()), Some(MAX_BUFFER));
        }
        assert_eq!(budget.used(), 64 * 4 * MAX_BUFFER);
        for h in handles {
            sockets.remove(h);
            assert_eq!(sockets.with(h, |s| s.state()), None);
        }
        assert_eq!(budget.used(), 0, "removing a socket releases its charge");
    }

    #[test]
    fn smoltcp_runs_only_for_the_socket_a_frame_is_routed_to() {
        use smoltcp::iface::Config;
        use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint};

        use crate::addr::{GATEWAY_IP, GATEWAY_MAC, GUEST_IP};
        use crate::phy::QueueCaps;

        let budget = Budget::new(1 << 30);
        let mut phy = Phy::new(1500, QueueCaps::of_budget(1 << 26));
        let config = Config::new(HardwareAddress::Ethernet(GATEWAY_MAC));
        let mut iface = Interface::new(config, &mut phy, SmolInstant::ZERO);
        iface.update_ip_addrs(|a| a.push(IpCidr::new(GATEWAY_IP.into(), 24)).unwrap());
        iface.set_any_ip(true);
        let mut sockets = TcpSockets::default();
        let ids: Vec<SockId> = (0..3u16)
            .map(|i| {
                let size = BufferSize::fixed(&budget, MIN_BUFFER).unwrap();
                let endpoint = IpListenEndpoint {
                    addr: Some(GATEWAY_IP.into()),
                    port: 1000 + i,
                };
                sockets.add(size, |s| s.listen(endpoint)).unwrap()
            })
            .collect();
        let now = SmolInstant::from_secs(1);
        sockets.poll(&mut iface, now, &mut phy);
        let counts = |s: &TcpSockets| ids.iter().map(|&id| s.polls(id)).collect::<Vec<_>>();
        assert_eq!(counts(&sockets), [1, 1, 1], "a new socket runs once");
        // Nothing for them: nothing runs.
        sockets.poll(&mut iface, now, &mut phy);
        assert_eq!(counts(&sockets), [1, 1, 1]);
        assert_eq!(sockets.poll_delay(now), None);
        // A segment routed to the second one runs it alone.
        let segment = crate::frames::tcp_reset(
            GATEWAY_MAC,
            std::net::SocketAddrV4::new(GATEWAY_IP, 1001),
            std::net::SocketAddrV4::new(GUEST_IP, 40000),
            smoltcp::wire::TcpSeqNumber(7),
            1,
        );
        assert!(phy.take(&segment, Some(ids[1])));
        sockets.poll(&mut iface, now, &mut phy);
        let after = counts(&sockets);
        assert_eq!((after[0], after[2]), (1, 1), "{after:?}");
        assert!(after[1] > 1, "{after:?}");
        // A frame routed to a socket that is gone reaches no other one.
        sockets.remove(ids[1]);
        assert!(phy.take(&segment, Some(ids[1])));
        sockets.poll(&mut iface, now, &mut phy);
        assert_eq!(counts(&sockets), [1, 0, 1]);
        assert!(!phy.rx_waiting());
    }

    #[test]
    fn a_refused_socket_releases_its_memory() {
        let budget = Budget::new(0);
        let mut sockets = TcpSockets::default();
        let size = BufferSize::for_new_flow(&budget).unwrap();
        let refused = sockets.add(size, |_| Err("no"));
        assert!(matches!(refused, Err(AddError::Configure("no"))));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn buffers_shrink_as_the_budget_fills_then_flows_are_refused() {
        let budget = Budget::new(crate::budget::MIN_BUDGET);
        let mut held = Vec::new();
        let mut sizes = Vec::new();
        while let Some(size) = BufferSize::for_new_flow(&budget) {
            sizes.push(size.len);
            held.push(size);
            assert!(held.len() < 10_000, "the budget never ran out");
        }
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert_eq!(sizes.last(), Some(&MIN_BUFFER));
        assert!(budget.free() < 4 * MIN_BUFFER);
        assert!(budget.used() <= budget.limit());
        drop(held);
        assert_eq!(budget.used(), 0);
    }
}
