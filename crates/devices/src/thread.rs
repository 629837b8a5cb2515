//! How this crate starts its threads.
//!
//! Every thread the devices create (a device's worker, the relay of
//! virtiofsd's log, the vhost-user reply pump) goes through [`spawn`]. It
//! runs the *start hook* of the thread that calls it on the new thread,
//! before the thread does anything else, and hands the hook on to it. The
//! VMM sets the hook (with [`set_start_hook`]) on the threads that create or
//! activate devices, and installs each thread's seccomp filter from it; this
//! crate knows nothing of seccomp. The hook follows threads the way seccomp
//! filters themselves do: a thread inherits its creator's.
//!
//! [`spawn`] returns only once the hook ran: a thread whose hook failed
//! never runs its body, and the caller gets the hook's error.

use std::cell::RefCell;
use std::io;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// The kinds of threads this crate starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceThread {
    /// The worker of a virtio device (its queue processing), by virtio
    /// device type.
    Worker(u32),
    /// The thread that copies virtiofsd's stderr into our log.
    DaemonLog,
    /// The thread that copies a vhost-user backend's replies to its
    /// frontend.
    VhostUserReplies,
}

/// The stack each thread this crate (and the VMM's activation thread)
/// starts gets: std's default of 2 MiB, less 64 KiB. A 2 MiB stack that
/// lands 2 MiB-aligned (as one placed right below the aligned guest RAM
/// does) is backed by a whole huge page on its first touch where
/// transparent huge pages are `always` (Debian's default), 2 MiB of
/// resident memory for a few KiB of stack; a stack smaller than a huge
/// page can never be.
pub const STACK_SIZE: usize = (2 << 20) - (64 << 10);

/// What a thread runs first: typically confining itself.
pub type StartHook = Arc<dyn Fn(DeviceThread) -> io::Result<()> + Send + Sync>;

thread_local! {
    static HOOK: RefCell<Option<StartHook>> = const { RefCell::new(None) };
}

/// Sets the start hook of the calling thread (the hook of the threads it
/// creates through [`spawn`]); returns the one it replaces.
pub fn set_start_hook(hook: Option<StartHook>) -> Option<StartHook> {
    HOOK.with(|h| h.replace(hook))
}

/// The start hook of the calling thread.
pub fn start_hook() -> Option<StartHook> {
    HOOK.with(|h| h.borrow().clone())
}

/// A thread started by [`spawn`].
#[derive(Debug)]
pub struct Thread<T> {
    inner: JoinHandle<Option<T>>,
}

impl<T> Thread<T> {
    /// Waits for the thread to end; `Err` carries its panic.
    pub fn join(self) -> std::thread::Result<T> {
        // `spawn` hands out a Thread only when the hook succeeded, and
        // then the body ran and produced its value.
        self.inner
            .join()?
            .ok_or_else(|| Box::new("the thread's start hook failed") as _)
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }
}

/// Starts `body` on a thread called `name` after the caller's start hook
/// ran there for `kind`.
pub fn spawn<F, T>(name: &str, kind: DeviceThread, body: F) -> io::Result<Thread<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let hook = start_hook();
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    let inner = std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let started = match &hook {
                Some(run) => run(kind),
                None => Ok(()),
            };
            let ok = started.is_ok();
            // The receiver waits for exactly this message.
            let _ = started_tx.send(started);
            if !ok {
                return None;
            }
            set_start_hook(hook);
            Some(body())
        })?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(Thread { inner }),
        Ok(Err(e)) => {
            let _ = inner.join();
            Err(e)
        }
        // The thread ended without a word: it panicked in the hook.
        Err(_) => {
            let _ = inner.join();
            Err(io::Error::other(format!(
                "thread {name} failed while starting"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The thread's stack mapping (the one holding a local of it) is
    /// smaller than a huge page, so it can never be backed by one.
    #[test]
    fn thread_stacks_are_smaller_than_a_huge_page() {
        let t = spawn("stack", DeviceThread::Worker(1), || {
            let local = 0u8;
            let at = std::ptr::addr_of!(local) as usize;
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines()
                .filter_map(|l| {
                    let (a, b) = l.split_once(' ')?.0.split_once('-')?;
                    Some((
                        usize::from_str_radix(a, 16).ok()?,
                        usize::from_str_radix(b, 16).ok()?,
                    ))
                })
                .find(|&(a, b)| (a..b).contains(&at))
                .map(|(a, b)| b - a)
        })
        .unwrap();
        let size = t.join().unwrap().expect("the stack is mapped");
        assert!(size < 2 << 20, "{size} bytes");
        assert!(size >= STACK_SIZE - (64 << 10), "{size} bytes");
    }

    #[test]
    fn the_hook_runs_first_on_the_new_thread_and_is_inherited() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let hook: StartHook = Arc::new(move |kind| {
            let name = std::thread::current().name().map(str::to_owned);
            log.lock().unwrap().push((kind, name));
            Ok(())
        });
        let previous = set_start_hook(Some(hook));
        let outer = spawn("outer", DeviceThread::Worker(4), || {
            spawn("inner", DeviceThread::DaemonLog, || 7)
                .unwrap()
                .join()
                .unwrap()
        })
        .unwrap();
        assert_eq!(outer.join().unwrap(), 7);
        set_start_hook(previous);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (DeviceThread::Worker(4), Some("outer".to_owned())),
                (DeviceThread::DaemonLog, Some("inner".to_owned())),
            ]
        );
    }

    #[test]
    fn a_failing_hook_keeps_the_body_from_running() {
        let hook: StartHook = Arc::new(|_| Err(io::Error::other("no filter")));
        let previous = set_start_hook(Some(hook));
        let ran = Arc::new(Mutex::new(false));
        let flag = ran.clone();
        let err = spawn("refused", DeviceThread::VhostUserReplies, move || {
            *flag.lock().unwrap() = true;
        })
        .unwrap_err();
        set_start_hook(previous);
        assert_eq!(err.to_string(), "no filter");
        assert!(!*ran.lock().unwrap());
    }

    #[test]
    fn without_a_hook_the_thread_just_runs() {
        assert!(start_hook().is_none());
        assert_eq!(
            spawn("plain", DeviceThread::Worker(1), || 3)
                .unwrap()
                .join()
                .unwrap(),
            3
        );
    }
}
