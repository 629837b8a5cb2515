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

use std::collections::HashMap;
use std::io;
use std::ptr::NonNull;

use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};

use crate::budget::{Budget, Charge};

/// Largest buffer each way, bytes: the receive buffer is the window the
/// guest sees.
pub const MAX_BUFFER: usize = 256 << 10;
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

/// The TCP sockets smoltcp polls, each with the memory its buffers live in.
///
/// Sockets are built here from their memory and never leave: callers reach
/// one only through [`TcpSockets::with`], whose closure cannot keep it, and
/// [`TcpSockets::remove`] drops the socket before the memory.
pub struct TcpSockets {
    /// Declared first so it drops first: the sockets before their memory.
    set: SocketSet<'static>,
    memory: HashMap<SocketHandle, SocketMemory>,
}

impl Default for TcpSockets {
    fn default() -> Self {
        TcpSockets {
            set: SocketSet::new(Vec::new()),
            memory: HashMap::new(),
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
    ) -> Result<SocketHandle, AddError<E>> {
        let memory = SocketMemory {
            rx: Mapping::new(size.len).map_err(AddError::Memory)?,
            tx: Mapping::new(size.len).map_err(AddError::Memory)?,
            _charge: size.charge,
        };
        // SAFETY: each mapping is `len` writable bytes that stay mapped
        // until `memory` drops, which `remove` and the field order of this
        // type order after the socket; each mapping backs one slice only,
        // so no two slices alias.
        let (rx, tx) = unsafe {
            (
                std::slice::from_raw_parts_mut(memory.rx.ptr.as_ptr(), memory.rx.len),
                std::slice::from_raw_parts_mut(memory.tx.ptr.as_ptr(), memory.tx.len),
            )
        };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        // A socket refused here drops before `memory` (declared earlier).
        configure(&mut socket).map_err(AddError::Configure)?;
        let handle = self.set.add(socket);
        self.memory.insert(handle, memory);
        Ok(handle)
    }

    /// Runs `f` on the socket of `handle`; `None` if there is none. The
    /// closure works for any buffer lifetime, so it cannot move the socket
    /// somewhere that outlives the call.
    pub fn with<R>(
        &mut self,
        handle: SocketHandle,
        f: impl for<'a> FnOnce(&mut tcp::Socket<'a>) -> R,
    ) -> Option<R> {
        if !self.memory.contains_key(&handle) {
            return None;
        }
        Some(f(self.set.get_mut::<tcp::Socket>(handle)))
    }

    /// The state of the socket of `handle` (closed when there is none).
    pub fn state(&self, handle: SocketHandle) -> tcp::State {
        if !self.memory.contains_key(&handle) {
            return tcp::State::Closed;
        }
        self.set.get::<tcp::Socket>(handle).state()
    }

    /// Drops the socket of `handle`, then its memory.
    pub fn remove(&mut self, handle: SocketHandle) {
        if let Some(memory) = self.memory.remove(&handle) {
            drop(self.set.remove(handle));
            drop(memory);
        }
    }

    /// Lets smoltcp process frames and timers for every socket.
    pub fn poll<D: Device + ?Sized>(
        &mut self,
        iface: &mut Interface,
        now: SmolInstant,
        device: &mut D,
    ) -> PollResult {
        iface.poll(now, device, &mut self.set)
    }

    /// How long until smoltcp wants to be polled again.
    pub fn poll_delay(&self, iface: &mut Interface, now: SmolInstant) -> Option<SmolDuration> {
        iface.poll_delay(now, &self.set)
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
        // 64 × 512 KiB mapped; far less resident (other tests' threads
        // allocate meanwhile, hence the slack).
        assert!(
            grown < 8 << 10,
            "{grown} KiB resident for 32 MiB of idle buffers"
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
