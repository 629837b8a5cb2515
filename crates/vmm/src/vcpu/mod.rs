//! vCPU threads: the run loop, exit dispatch through the buses, and the
//! signal that stops a vCPU that is inside KVM_RUN.

mod exit;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use agentvm_devices::bus::Bus;
use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

pub use exit::{Exit, ExitSource};

use crate::exit::{ExitLatch, ExitStatus};
use crate::seccomp::{SeccompLevel, ThreadKind};

/// The buses a vCPU dispatches to.
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// Counts a vCPU's exits.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
}

/// Why a run loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopEnd {
    /// The VM is stopping (some thread decided the exit status).
    Stopped,
    /// This vCPU decided the VM's fate.
    Exit(ExitStatus),
}

/// Runs `source` until the VM stops. Port and MMIO accesses go to the
/// buses; accesses that no device claims read as all ones and are dropped
/// when written, like an empty bus on real hardware.
pub fn run_loop<S: ExitSource>(
    source: &mut S,
    buses: &Buses,
    exit: &ExitLatch,
    counters: &VcpuCounters,
) -> LoopEnd {
    loop {
        if exit.stopping() {
            return LoopEnd::Stopped;
        }
        match source.next_exit() {
            Exit::IoIn(port, data) => {
                counters.pio.fetch_add(1, Ordering::Relaxed);
                if !buses.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Exit::IoOut(port, data) => {
                counters.pio.fetch_add(1, Ordering::Relaxed);
                if !buses.pio.write(u64::from(port), data) {
                    tracing::trace!("write to unclaimed port {port:#x}");
                }
            }
            Exit::MmioRead(addr, data) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                if !buses.mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Exit::MmioWrite(addr, data) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                if !buses.mmio.write(addr, data) {
                    tracing::trace!("write to unclaimed MMIO {addr:#x}");
                }
            }
            Exit::Hlt => return LoopEnd::Exit(ExitStatus::Halted),
            Exit::Shutdown => return LoopEnd::Exit(ExitStatus::TripleFault),
            Exit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN) => {
                return LoopEnd::Exit(ExitStatus::PowerOff)
            }
            Exit::SystemEvent(KVM_SYSTEM_EVENT_RESET) => return LoopEnd::Exit(ExitStatus::Reset),
            Exit::SystemEvent(KVM_SYSTEM_EVENT_CRASH) => {
                return LoopEnd::Exit(ExitStatus::Crashed("guest crash event".into()))
            }
            Exit::SystemEvent(other) => tracing::debug!("ignoring KVM system event {other}"),
            Exit::Interrupted => source.clear_stop_request(),
            Exit::Failed(why) => return LoopEnd::Exit(ExitStatus::Crashed(why)),
            Exit::Ignored(what) => tracing::trace!("ignoring {what} exit"),
        }
    }
}

thread_local! {
    /// This thread's `kvm_run`, for the stop signal's handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's live kvm_run mapping, set by
        // the vCPU thread before it entered its run loop and cleared before
        // the VcpuFd is dropped. A volatile byte store is signal-safe; KVM
        // reads immediate_exit on the next KVM_RUN, which closes the race
        // between checking the stop flag and entering the guest.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick).map_err(std::io::Error::from);
    });
    result
}

/// Starts vCPU `index` on its own thread, which confines itself to the
/// vCPU filter at `seccomp` before the guest's first instruction, counts
/// its exits in `counters` and ends the VM through `exit` when the guest
/// or KVM decides it.
pub fn spawn(
    index: u8,
    mut vcpu: VcpuFd,
    buses: Arc<Buses>,
    exit: Arc<ExitLatch>,
    counters: Arc<VcpuCounters>,
    seccomp: SeccompLevel,
) -> std::io::Result<JoinHandle<()>> {
    install_kick_handler()?;
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .stack_size(256 << 10)
        .spawn(move || {
            if let Err(e) = crate::seccomp::install(seccomp, ThreadKind::Vcpu) {
                exit.request(ExitStatus::Crashed(format!("vCPU {index}: {e}")));
                return;
            }
            KVM_RUN.with(|c| c.set(vcpu.get_kvm_run() as *mut kvm_run));
            let end = run_loop(&mut vcpu, &buses, &exit, &counters);
            KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
            if let LoopEnd::Exit(status) = end {
                exit.request(status);
            }
            drop(vcpu);
        })
}

#[cfg(test)]
mod tests;
