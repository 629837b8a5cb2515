//! vCPU exits, abstracted so the run loop can be driven without KVM.

use kvm_ioctls::{VcpuExit, VcpuFd};

/// One exit the run loop must handle.
#[derive(Debug)]
pub enum Exit<'a> {
    /// Port read: fill the buffer.
    IoIn(u16, &'a mut [u8]),
    /// Port write.
    IoOut(u16, &'a [u8]),
    /// MMIO read: fill the buffer.
    MmioRead(u64, &'a mut [u8]),
    /// MMIO write.
    MmioWrite(u64, &'a [u8]),
    /// The vCPU executed HLT and KVM left the halt to the VMM
    /// (`KVM_EXIT_HLT`; KVM does so only without an in-kernel local APIC).
    Hlt,
    /// Triple fault or other shutdown condition.
    Shutdown,
    /// KVM system event (`KVM_SYSTEM_EVENT_*`).
    SystemEvent(u32),
    /// KVM_RUN returned because of a signal (a stop request).
    Interrupted,
    /// KVM could not run the guest; the text says why.
    Failed(String),
    /// An exit the VMM has no use for; the loop resumes the vCPU.
    Ignored(&'static str),
}

/// Where exits come from: KVM in production, a script in tests.
pub trait ExitSource {
    /// Runs the vCPU until the next exit.
    fn next_exit(&mut self) -> Exit<'_>;
    /// Clears the "stop requested" flag the signal handler set, before the
    /// loop resumes the vCPU after a spurious interruption.
    fn clear_stop_request(&mut self) {}
}

impl ExitSource for VcpuFd {
    fn next_exit(&mut self) -> Exit<'_> {
        match self.run() {
            Ok(VcpuExit::IoIn(port, data)) => Exit::IoIn(port, data),
            Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => Exit::MmioRead(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => Exit::MmioWrite(addr, data),
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent(kind),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Failed(format!(
                "VM entry failed on CPU {cpu}: hardware reason {reason:#x}"
            )),
            Ok(VcpuExit::InternalError) => Exit::Failed("KVM internal error".into()),
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::IrqWindowOpen) => Exit::Ignored("irq window"),
            Ok(other) => Exit::Failed(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => Exit::Failed(format!("KVM_RUN failed: {e}")),
        }
    }

    fn clear_stop_request(&mut self) {
        self.set_kvm_immediate_exit(0);
    }
}
