//! Seccomp filters for every thread of the VMM.
//!
//! Each thread confines itself when it starts, before it touches anything
//! the guest controls, to the system calls its kind needs (one list per
//! [`ThreadKind`], in `allowlist.rs`): vCPUs, the activation thread, each
//! device's worker, the relay of virtiofsd's log, the thread that
//! supervises the VM, and the control-socket, signal and ssh-agent relay
//! threads of the `agentvm` process.
//! Filters stack: a thread keeps the filters of the thread that created
//! it, so the lists of threads that create others cover their children.
//!
//! Threads of `agentvm-devices` are confined through its start hook
//! ([`agentvm_devices::thread`]): [`device_thread_hook`] installs the
//! filter of the device thread's kind.
//!
//! [`SeccompLevel`] says what happens to a call outside the list:
//! [`Kill`](SeccompLevel::Kill) ends the VMM with a line naming the call
//! and the thread (exit code [`EXIT_CODE`]);
//! [`Log`](SeccompLevel::Log) lets it through and the kernel logs it
//! (audit log / dmesg); [`Off`](SeccompLevel::Off) installs no filter.
//! Installing a filter also sets no_new_privs on the thread.

mod allowlist;
mod sigsys;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use agentvm_devices::thread::{DeviceThread, StartHook};
use agentvm_devices::virtio::device_type;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use allowlist::Allow;
pub use sigsys::EXIT_CODE;

/// What a filter does with a system call its thread's list lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompLevel {
    /// End the VMM, naming the call and the thread on stderr.
    #[default]
    Kill,
    /// Let the call through; the kernel logs it.
    Log,
    /// No filters at all.
    Off,
}

impl SeccompLevel {
    /// The level's name, as `--seccomp` and the configuration spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            SeccompLevel::Kill => "kill",
            SeccompLevel::Log => "log",
            SeccompLevel::Off => "off",
        }
    }
}

impl fmt::Display for SeccompLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level name that is none of `kill`, `log`, `off`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Unknown seccomp level {0:?}: use kill, log or off")]
pub struct UnknownLevel(pub String);

impl FromStr for SeccompLevel {
    type Err = UnknownLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(SeccompLevel::Kill),
            "log" => Ok(SeccompLevel::Log),
            "off" => Ok(SeccompLevel::Off),
            other => Err(UnknownLevel(other.to_owned())),
        }
    }
}

/// The devices whose workers have lists of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerDevice {
    /// virtio-net and the user-mode network stack.
    Net,
    /// virtio-vsock and its muxer.
    Vsock,
    /// virtio-balloon.
    Balloon,
    /// virtio-rng.
    Rng,
    /// The virtio-fs frontend.
    Fs,
    /// A device agentvm does not know (an embedder's own).
    Other,
}

impl WorkerDevice {
    /// The worker list for virtio device type `device_type`.
    fn from_device_type(device: u32) -> Self {
        match device {
            device_type::NET => WorkerDevice::Net,
            device_type::VSOCK => WorkerDevice::Vsock,
            device_type::BALLOON => WorkerDevice::Balloon,
            device_type::RNG => WorkerDevice::Rng,
            device_type::FS => WorkerDevice::Fs,
            _ => WorkerDevice::Other,
        }
    }
}

/// The kinds of threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU.
    Vcpu,
    /// The thread that activates devices (and starts their workers),
    /// cleans up after resets and fills and empties hot-plug slots
    /// (connecting to a live mount's virtiofsd: the vhost-user calls of
    /// virtio-fs), off the vCPU threads; with
    /// `launches_daemons` it may also start virtiofsd, whose process then
    /// inherits this filter.
    Activation {
        /// Whether the VM has virtio-fs devices.
        launches_daemons: bool,
    },
    /// A device's worker (queue processing; the network stack and the
    /// vsock muxer run there).
    Worker(WorkerDevice),
    /// The relay of virtiofsd's stderr into the log.
    DaemonLog,
    /// The vhost-user reply pump.
    VhostUserReplies,
    /// The thread that waits for the VM to end and tears it down.
    Supervisor,
    /// The control socket of `agentvm`'s VMM process: accepting, serving a
    /// connection, stopping the VM.
    Control,
    /// The thread that turns termination signals into a stop.
    Signals,
    /// The thread that writes the guest's console into its capped log
    /// (opening and renaming the file when it rotates), so the vCPUs that
    /// hand it the bytes need no file system calls.
    ConsoleLog,
    /// `agentvm`'s ssh-agent relay (`[ssh] agent = true`): accepting the
    /// guest's connections on the vsock device's `<uds>_1025`, connecting
    /// each to the host's ssh-agent socket, and a thread per connection
    /// that passes the filtered agent protocol between them.
    SshAgent,
    /// `agentvm vhost-user net`: the process serving the network device
    /// to another VMM. Its main thread confines itself before it serves;
    /// the backend's threads (started by `vhost-user-backend`, which has
    /// no start hook) inherit the filter.
    VhostUserBackend,
}

impl ThreadKind {
    /// Every kind, for listing and tests.
    pub const ALL: [ThreadKind; 17] = [
        ThreadKind::Vcpu,
        ThreadKind::Activation {
            launches_daemons: false,
        },
        ThreadKind::Activation {
            launches_daemons: true,
        },
        ThreadKind::Worker(WorkerDevice::Net),
        ThreadKind::Worker(WorkerDevice::Vsock),
        ThreadKind::Worker(WorkerDevice::Balloon),
        ThreadKind::Worker(WorkerDevice::Rng),
        ThreadKind::Worker(WorkerDevice::Fs),
        ThreadKind::Worker(WorkerDevice::Other),
        ThreadKind::DaemonLog,
        ThreadKind::VhostUserReplies,
        ThreadKind::Supervisor,
        ThreadKind::Control,
        ThreadKind::Signals,
        ThreadKind::ConsoleLog,
        ThreadKind::SshAgent,
        ThreadKind::VhostUserBackend,
    ];

    /// The kind's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Activation {
                launches_daemons: false,
            } => "activation",
            ThreadKind::Activation {
                launches_daemons: true,
            } => "activation (virtiofsd launcher)",
            ThreadKind::Worker(WorkerDevice::Net) => "virtio-net worker",
            ThreadKind::Worker(WorkerDevice::Vsock) => "virtio-vsock worker",
            ThreadKind::Worker(WorkerDevice::Balloon) => "virtio-balloon worker",
            ThreadKind::Worker(WorkerDevice::Rng) => "virtio-rng worker",
            ThreadKind::Worker(WorkerDevice::Fs) => "virtio-fs worker",
            ThreadKind::Worker(WorkerDevice::Other) => "device worker",
            ThreadKind::DaemonLog => "virtiofsd log",
            ThreadKind::VhostUserReplies => "vhost-user replies",
            ThreadKind::Supervisor => "VM supervisor",
            ThreadKind::Control => "control",
            ThreadKind::Signals => "signals",
            ThreadKind::ConsoleLog => "console log",
            ThreadKind::SshAgent => "ssh-agent relay",
            ThreadKind::VhostUserBackend => "vhost-user backend",
        }
    }
}

impl From<DeviceThread> for ThreadKind {
    fn from(thread: DeviceThread) -> Self {
        match thread {
            DeviceThread::Worker(device) => {
                ThreadKind::Worker(WorkerDevice::from_device_type(device))
            }
            DeviceThread::DaemonLog => ThreadKind::DaemonLog,
            DeviceThread::VhostUserReplies => ThreadKind::VhostUserReplies,
        }
    }
}

/// Errors while confining a thread.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built (a bug in a list).
    #[error("Cannot build the seccomp filter of the {0} thread")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("Cannot install the seccomp filter of the {0} thread")]
    Install(&'static str, #[source] seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("Cannot install the SIGSYS handler")]
    Handler(#[source] io::Error),
}

impl From<SeccompError> for io::Error {
    fn from(e: SeccompError) -> Self {
        io::Error::other(e)
    }
}

/// The filter of `kind` at `level` (`None` when the level is off).
fn filter(level: SeccompLevel, kind: ThreadKind) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match level {
        SeccompLevel::Kill => SeccompAction::Trap,
        SeccompLevel::Log => SeccompAction::Log,
        SeccompLevel::Off => return Ok(None),
    };
    let build = |e| SeccompError::Build(kind.name(), e);
    let rules = rules(kind).map_err(build)?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    let program: BpfProgram = filter.try_into().map_err(build)?;
    Ok(Some(program))
}

/// The number of distinct system calls `kind` may make.
#[cfg(test)]
fn syscall_count(kind: ThreadKind) -> usize {
    let mut calls: Vec<_> = allowlist::allowed(kind).iter().map(Allow::call).collect();
    calls.sort_unstable_by_key(|c| c.id());
    calls.dedup();
    calls.len()
}

/// seccompiler's rules for `kind`: a call allowed with any arguments
/// takes no conditions; otherwise one rule per allowed value.
fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut any = Vec::new();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for allow in allowlist::allowed(kind) {
        let nr = i64::from(allow.call().id());
        match allow {
            Allow::Any(_) => any.push(nr),
            Allow::ArgIn { arg, values, .. } => {
                let entry = rules.entry(nr).or_default();
                for &value in values {
                    let cond = SeccompCondition::new(
                        arg,
                        SeccompCmpArgLen::Qword,
                        SeccompCmpOp::Eq,
                        value,
                    )?;
                    entry.push(SeccompRule::new(vec![cond])?);
                }
            }
        }
    }
    for nr in any {
        // An empty rule list allows the call whatever its arguments.
        rules.insert(nr, Vec::new());
    }
    Ok(rules)
}

/// Confines the calling thread to the list of `kind` at `level`.
pub fn install(level: SeccompLevel, kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(program) = filter(level, kind)? else {
        return Ok(());
    };
    sigsys::install_handler().map_err(SeccompError::Handler)?;
    sigsys::name_thread(kind.name());
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind.name(), e))?;
    tracing::debug!("seccomp: {} thread confined ({level})", kind.name());
    Ok(())
}

/// The start hook that confines each thread `agentvm-devices` creates to
/// its kind's list at `level`; `None` when the level is off.
pub fn device_thread_hook(level: SeccompLevel) -> Option<StartHook> {
    if level == SeccompLevel::Off {
        return None;
    }
    Some(Arc::new(move |thread: DeviceThread| {
        install(level, ThreadKind::from(thread)).map_err(io::Error::from)
    }))
}

#[cfg(test)]
mod tests;
