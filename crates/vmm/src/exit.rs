//! How a VM ends: its [`ExitStatus`], and the [`ExitLatch`] through which
//! the first thread to decide it (a vCPU, a device, a handle) tells all the
//! others.
//!
//! The vCPUs and the devices depend on this module, the VM on them: none of
//! them needs the VM itself to end it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How a VM ended.
///
/// Three kinds of ending: the guest ended the VM on purpose
/// ([`PowerOff`](ExitStatus::PowerOff), [`Reset`](ExitStatus::Reset),
/// [`Halted`](ExitStatus::Halted); see [`ExitStatus::ended_by_guest`]), the
/// host stopped it ([`Stopped`](ExitStatus::Stopped)), or the guest or a
/// vCPU failed ([`TripleFault`](ExitStatus::TripleFault),
/// [`Crashed`](ExitStatus::Crashed); see [`ExitStatus::is_failure`]).
///
/// ```
/// use agentvm_vmm::ExitStatus;
///
/// assert!(ExitStatus::PowerOff.ended_by_guest());
/// assert!(ExitStatus::Halted.ended_by_guest());
/// // A stop is the host's doing, and no failure.
/// assert!(!ExitStatus::Stopped.ended_by_guest());
/// assert!(!ExitStatus::Stopped.is_failure());
/// assert!(ExitStatus::Crashed("guest kernel panicked".into()).is_failure());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// The guest powered off (ACPI S5 or a KVM shutdown event).
    PowerOff,
    /// The guest reset itself (i8042, ACPI reset register or KVM reset
    /// event). The VMM does not reboot it: a reset ends the VM.
    Reset,
    /// The guest stopped itself by halting: a vCPU executed HLT and KVM
    /// handed the halt to the VMM (`KVM_EXIT_HLT`). That is an ending the
    /// guest chose, like a power-off without ACPI, not a failure.
    ///
    /// KVM reports a halt only to a VMM that keeps the local APIC itself.
    /// The VMs [`crate::VmBuilder`] builds have an in-kernel interrupt
    /// controller, so KVM waits out their halts itself: there a guest that
    /// halts with interrupts off sleeps until the host stops the VM
    /// ([`ExitStatus::Stopped`]).
    Halted,
    /// The host asked the VM to stop ([`crate::VmHandle::stop`]).
    Stopped,
    /// A vCPU triple-faulted.
    TripleFault,
    /// The guest kernel panicked, or a vCPU could not go on; the text says
    /// why.
    Crashed(String),
}

impl ExitStatus {
    /// Whether the guest ended the VM itself, on purpose: it powered off,
    /// reset or halted. A host-requested stop is not; neither is a failure.
    pub fn ended_by_guest(&self) -> bool {
        matches!(
            self,
            ExitStatus::PowerOff | ExitStatus::Reset | ExitStatus::Halted
        )
    }

    /// Whether the VM ended because the guest or a vCPU failed (a triple
    /// fault, a kernel panic, a vCPU that could not run). Every other
    /// ending, the guest's own or the host's stop, is not a failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, ExitStatus::TripleFault | ExitStatus::Crashed(_))
    }
}

/// Where a VM's exit status is decided, once: the first request wins, and
/// everyone waiting learns of it.
#[derive(Debug, Default)]
pub(crate) struct ExitLatch {
    status: Mutex<Option<ExitStatus>>,
    decided: Condvar,
    /// Set with the status; read by the vCPUs before each entry, without
    /// taking the lock.
    stopping: AtomicBool,
}

impl ExitLatch {
    /// Records how the VM ends. The first request wins; later ones are
    /// ignored (a reset racing a power-off keeps whichever came first).
    pub(crate) fn request(&self, status: ExitStatus) {
        let mut decided = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if decided.is_none() {
            tracing::debug!("VM exit requested: {status:?}");
            *decided = Some(status);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.decided.notify_all();
    }

    /// Whether the VM is on its way down.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The exit status, once decided.
    pub(crate) fn status(&self) -> Option<ExitStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the exit status is decided, or `timeout` has passed
    /// (`None`: for as long as it takes).
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut decided = self.status.lock().unwrap_or_else(|p| p.into_inner());
        while decided.is_none() {
            decided = match deadline {
                None => self
                    .decided
                    .wait(decided)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.decided
                        .wait_timeout(decided, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        decided.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_three_kinds_of_ending_do_not_overlap() {
        let all = [
            ExitStatus::PowerOff,
            ExitStatus::Reset,
            ExitStatus::Halted,
            ExitStatus::Stopped,
            ExitStatus::TripleFault,
            ExitStatus::Crashed("x".into()),
        ];
        let by_guest: Vec<_> = all.iter().filter(|s| s.ended_by_guest()).collect();
        let failed: Vec<_> = all.iter().filter(|s| s.is_failure()).collect();
        assert_eq!(
            by_guest,
            [
                &ExitStatus::PowerOff,
                &ExitStatus::Reset,
                &ExitStatus::Halted
            ]
        );
        assert_eq!(
            failed,
            [&ExitStatus::TripleFault, &ExitStatus::Crashed("x".into())]
        );
        assert!(
            !ExitStatus::Stopped.ended_by_guest() && !ExitStatus::Stopped.is_failure(),
            "a stop is the host's doing and no failure"
        );
    }

    #[test]
    fn the_first_request_wins_and_wakes_the_waiters() {
        let latch = Arc::new(ExitLatch::default());
        assert!(!latch.stopping());
        assert_eq!(latch.wait(Some(Duration::from_millis(1))), None);
        let waiter = {
            let latch = latch.clone();
            std::thread::spawn(move || latch.wait(None))
        };
        latch.request(ExitStatus::PowerOff);
        latch.request(ExitStatus::Stopped);
        assert!(latch.stopping());
        assert_eq!(waiter.join().unwrap(), Some(ExitStatus::PowerOff));
        assert_eq!(latch.status(), Some(ExitStatus::PowerOff));
        assert_eq!(latch.wait(Some(Duration::ZERO)), Some(ExitStatus::PowerOff));
    }
}
