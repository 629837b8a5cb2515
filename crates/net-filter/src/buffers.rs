//! The memory behind each TCP connection's smoltcp buffers: two anonymous
//! mappings of its own. A connection's 2 × 256 KiB then cost only the
//! pages data actually passed through — an idle connection next to
//! nothing — and go back to the kernel when the connection ends. The same
//! sizes from the heap are zeroed (so made resident) whenever the allocator
//! reuses memory: 272 KiB per idle connection in bench-net before this.

use std::io;
use std::ptr::NonNull;

use smoltcp::socket::tcp;

/// One anonymous, private, zero-filled mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned memory like a Box<[u8]>; nothing else
// refers to it but the socket its owner hands it to.
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
        // used it is gone (see `SocketMemory::socket`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The receive and send buffers of one connection's smoltcp socket.
pub struct SocketMemory {
    rx: Mapping,
    tx: Mapping,
}

impl SocketMemory {
    /// Two buffers of `len` bytes.
    pub fn new(len: usize) -> io::Result<Self> {
        Ok(SocketMemory {
            rx: Mapping::new(len)?,
            tx: Mapping::new(len)?,
        })
    }

    /// A smoltcp socket whose buffers are this memory.
    ///
    /// # Safety
    ///
    /// The socket must be dropped before this `SocketMemory` (the slices
    /// it holds are only valid while the mappings exist), and only one
    /// socket may be made from it.
    pub unsafe fn socket(&mut self) -> tcp::Socket<'static> {
        // SAFETY: each mapping is `len` writable bytes that stay mapped
        // until `self` drops, which the caller orders after the socket;
        // one socket per memory means no two slices alias.
        let (rx, tx) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.rx.ptr.as_ptr(), self.rx.len),
                std::slice::from_raw_parts_mut(self.tx.ptr.as_ptr(), self.tx.len),
            )
        };
        tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx))
    }
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
        let before = resident_kib();
        let mut memories: Vec<SocketMemory> = (0..64)
            .map(|_| SocketMemory::new(256 << 10).unwrap())
            .collect();
        // SAFETY: every socket is dropped before the memories below.
        let sockets: Vec<_> = memories.iter_mut().map(|m| unsafe { m.socket() }).collect();
        let grown = resident_kib().saturating_sub(before);
        // 64 × 512 KiB mapped; far less resident (other tests' threads
        // allocate meanwhile, hence the slack).
        assert!(
            grown < 8 << 10,
            "{grown} KiB resident for 32 MiB of idle buffers"
        );
        assert!(sockets.iter().all(|s| s.recv_capacity() == 256 << 10));
        drop(sockets);
        drop(memories);
    }
}
