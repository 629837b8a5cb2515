//! What happens when a filter under [`SeccompLevel::Kill`] catches a
//! system call: the kernel sends the thread SIGSYS, and this handler writes
//! one line naming the call and the thread to stderr and ends the process
//! with [`EXIT_CODE`]. The handler only reads a thread-local, formats into
//! a stack buffer and calls `write` and `_exit`, all async-signal-safe and
//! allowed by every filter.
//!
//! [`SeccompLevel::Kill`]: super::SeccompLevel::Kill

use std::cell::Cell;
use std::io;
use std::sync::Once;

use syscalls::Sysno;
use vmm_sys_util::signal::register_signal_handler;

/// The exit code of a VMM stopped by its seccomp filter (128 + SIGSYS, as
/// a shell reports a process SIGSYS killed).
pub const EXIT_CODE: i32 = 128 + libc::SIGSYS;

thread_local! {
    /// The name of the calling thread's filter, for the handler.
    static KIND: Cell<&'static str> = const { Cell::new("unnamed") };
}

/// Records `name` as the calling thread's kind for the SIGSYS message.
pub(super) fn name_thread(name: &'static str) {
    KIND.with(|k| k.set(name));
}

/// The SIGSYS-specific part of `siginfo_t` (`_sigsys` in the kernel's
/// union), at its fixed place after the three leading ints.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Installs the handler (once per process).
pub(super) fn install_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(libc::SIGSYS, on_sigsys).map_err(io::Error::from);
    });
    result
}

/// A fixed buffer the handler formats its line into.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The message for a call to `nr` from a thread of kind `thread`.
fn message(thread: &str, nr: i32) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    let name = usize::try_from(nr)
        .ok()
        .and_then(Sysno::new)
        .map_or("unknown", |s| s.name());
    line.push(b"agentvm: seccomp: the ");
    line.push(thread.as_bytes());
    line.push(b" thread made the forbidden system call ");
    line.push(name.as_bytes());
    line.push(b" (");
    line.push_number(nr.unsigned_abs());
    line.push(b"); the VM is stopped (--seccomp log lets it through and logs it)\n");
    line
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SIGSYS handler
    // installed with SA_SIGINFO; for SIGSYS its union holds `_sigsys`,
    // laid out as SigsysInfo (see the kernel's siginfo.h).
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let thread = KIND.with(Cell::get);
    let line = message(thread, nr);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is
    // valid for `len` bytes.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_call_and_the_thread() {
        let line = message("vcpu", libc::SYS_execve as i32);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert_eq!(
            text,
            "agentvm: seccomp: the vcpu thread made the forbidden system call execve (59); \
             the VM is stopped (--seccomp log lets it through and logs it)\n"
        );
        let line = message("control", 100_000);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(text.contains("call unknown (100000)"), "{text}");
    }
}
