//! The system calls each kind of thread may make, with argument
//! conditions where they are cheap to state (the ioctl a vCPU makes, the
//! socket families a device opens, the fcntl commands).
//!
//! Found by running the T1 tests and the nested-rig scenarios with
//! `--seccomp log` and under `strace -f`; each list says what needs the
//! less obvious entries. Filters stack (a thread keeps the filter of the
//! thread that created it), so the list of a thread that creates others
//! contains theirs: the activation thread's holds every device worker's.

use syscalls::Sysno;

use super::{ThreadKind, WorkerDevice};

/// One allowed call: any arguments, or one of several argument values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// The call with any arguments.
    Any(Sysno),
    /// The call when argument `arg` (0-based) equals one of `values`.
    ArgIn {
        /// The call.
        call: Sysno,
        /// The argument checked.
        arg: u8,
        /// The values allowed.
        values: &'static [u64],
    },
}

impl Allow {
    /// The call this entry allows.
    pub fn call(&self) -> Sysno {
        match *self {
            Allow::Any(call) | Allow::ArgIn { call, .. } => call,
        }
    }
}

use Allow::{Any, ArgIn};

/// KVM_RUN: _IO(KVMIO, 0x80).
const KVM_RUN: u64 = 0xae80;
/// FIONBIO, FIOCLEX, FIONCLEX, FIONREAD: what sockets and std ask of ioctl.
const SOCKET_IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX, libc::FIONREAD];
/// The fcntl commands of std, mio and socket2.
const FCNTL_CMDS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD_CLOEXEC as u64,
];
/// The only socket family of vsock's host side and the control socket.
const UNIX_ONLY: &[u64] = &[libc::AF_UNIX as u64];
/// The network stack's host sockets (and netlink, to read the host's own
/// addresses).
const NET_FAMILIES: &[u64] = &[
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
];
/// Every family a thread creating all devices' sockets needs.
const ALL_FAMILIES: &[u64] = &[
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
];

/// What every thread of ours does: memory, locks, signals, time, logging
/// to stderr, ending (also by the SIGSYS handler, or a panic's abort).
const BASE: &[Allow] = &[
    Any(Sysno::brk),
    Any(Sysno::mmap),
    Any(Sysno::munmap),
    Any(Sysno::mremap),
    Any(Sysno::mprotect),
    Any(Sysno::madvise),
    Any(Sysno::futex),
    Any(Sysno::sched_yield),
    Any(Sysno::rt_sigprocmask),
    Any(Sysno::rt_sigreturn),
    Any(Sysno::sigaltstack),
    Any(Sysno::clock_gettime),
    Any(Sysno::clock_nanosleep),
    Any(Sysno::nanosleep),
    Any(Sysno::getrandom),
    Any(Sysno::gettid),
    Any(Sysno::getpid),
    Any(Sysno::write),
    Any(Sysno::writev),
    Any(Sysno::close),
    Any(Sysno::exit),
    Any(Sysno::exit_group),
    Any(Sysno::tgkill),
    Any(Sysno::rt_sigaction),
    // std checks descriptors it closes with F_GETFD (debug builds).
    ArgIn {
        call: Sysno::fcntl,
        arg: 1,
        values: FCNTL_CMDS,
    },
];

/// Creating a thread (and confining it: the new thread installs its own
/// filter on top of its creator's).
const SPAWN_THREAD: &[Allow] = &[
    Any(Sysno::clone),
    Any(Sysno::clone3),
    Any(Sysno::set_robust_list),
    Any(Sysno::rseq),
    Any(Sysno::prctl),
    Any(Sysno::seccomp),
    Any(Sysno::sched_getaffinity),
];

/// A vCPU: KVM_RUN, the buses' devices (serial output, eventfds, the
/// i8042 and ACPI exits), and a device reset (joining its worker).
const VCPU: &[Allow] = &[
    ArgIn {
        call: Sysno::ioctl,
        arg: 1,
        values: &[KVM_RUN],
    },
    Any(Sysno::read),
    Any(Sysno::shutdown),
];

/// Every device worker: its epoll loop, eventfds, timerfds.
const WORKER: &[Allow] = &[
    Any(Sysno::epoll_wait),
    Any(Sysno::epoll_pwait),
    Any(Sysno::epoll_ctl),
    Any(Sysno::read),
    Any(Sysno::timerfd_settime),
    Any(Sysno::timerfd_gettime),
    Any(Sysno::eventfd2),
];

/// virtio-net with the user-mode network stack: host TCP/UDP sockets,
/// the DNS relay, forwarded ports, the audit log.
const NET: &[Allow] = &[
    ArgIn {
        call: Sysno::socket,
        arg: 0,
        values: NET_FAMILIES,
    },
    Any(Sysno::connect),
    Any(Sysno::bind),
    Any(Sysno::listen),
    Any(Sysno::accept4),
    Any(Sysno::getsockopt),
    Any(Sysno::setsockopt),
    Any(Sysno::getsockname),
    Any(Sysno::getpeername),
    Any(Sysno::recvfrom),
    Any(Sysno::sendto),
    Any(Sysno::recvmsg),
    Any(Sysno::sendmsg),
    Any(Sysno::shutdown),
    Any(Sysno::readv),
    ArgIn {
        call: Sysno::ioctl,
        arg: 1,
        values: SOCKET_IOCTLS,
    },
    ArgIn {
        call: Sysno::fcntl,
        arg: 1,
        values: FCNTL_CMDS,
    },
    Any(Sysno::poll),
    Any(Sysno::ppoll),
];

/// virtio-vsock: the host side is Unix sockets (accepting host clients,
/// connecting to `<uds>_<port>` for the guest; poll tells a peer that hung
/// up).
const VSOCK: &[Allow] = &[
    Any(Sysno::poll),
    Any(Sysno::ppoll),
    // A guest connection to host port P: `<uds>_P` must be a socket of
    // this user (`agentvm_devices::socket::is_own_socket`) before the
    // worker connects to it.
    Any(Sysno::geteuid),
    Any(Sysno::statx),
    Any(Sysno::newfstatat),
    ArgIn {
        call: Sysno::socket,
        arg: 0,
        values: UNIX_ONLY,
    },
    Any(Sysno::connect),
    Any(Sysno::accept4),
    Any(Sysno::getsockopt),
    Any(Sysno::recvfrom),
    Any(Sysno::sendto),
    Any(Sysno::recvmsg),
    Any(Sysno::sendmsg),
    Any(Sysno::shutdown),
    ArgIn {
        call: Sysno::ioctl,
        arg: 1,
        values: SOCKET_IOCTLS,
    },
    ArgIn {
        call: Sysno::fcntl,
        arg: 1,
        values: FCNTL_CMDS,
    },
];

/// virtio-balloon: giving guest pages back to the host.
const BALLOON: &[Allow] = &[Any(Sysno::fallocate)];

/// virtio-rng: nothing beyond a worker's (entropy is getrandom).
const RNG: &[Allow] = &[];

/// The virtio-fs frontend: vhost-user messages with descriptors to
/// virtiofsd; stopping a daemon whose worker panicked.
const FS: &[Allow] = &[
    Any(Sysno::recvmsg),
    Any(Sysno::sendmsg),
    Any(Sysno::recvfrom),
    Any(Sysno::sendto),
    Any(Sysno::poll),
    Any(Sysno::ppoll),
    Any(Sysno::shutdown),
    Any(Sysno::kill),
    Any(Sysno::pidfd_send_signal),
    Any(Sysno::waitid),
    Any(Sysno::wait4),
    Any(Sysno::unlink),
    Any(Sysno::openat),
    Any(Sysno::getdents64),
    Any(Sysno::fstat),
    Any(Sysno::statx),
    Any(Sysno::newfstatat),
    ArgIn {
        call: Sysno::fcntl,
        arg: 1,
        values: FCNTL_CMDS,
    },
];

/// The relay of virtiofsd's stderr into our log.
const DAEMON_LOG: &[Allow] = &[Any(Sysno::read)];

/// Writing a capped log that rotates (the console log, the network audit
/// log): the full file is renamed to `NAME.1` and a new one opened (in the
/// state directory, which Landlock leaves writable).
const ROTATED_LOG: &[Allow] = &[
    Any(Sysno::openat),
    Any(Sysno::rename),
    Any(Sysno::renameat),
    Any(Sysno::renameat2),
    Any(Sysno::fsync),
];

/// The vhost-user reply pump.
const VHOST_USER_REPLIES: &[Allow] = &[
    Any(Sysno::read),
    Any(Sysno::recvfrom),
    Any(Sysno::sendto),
    Any(Sysno::shutdown),
];

/// The activation thread: it builds every device's worker (eventfds,
/// epoll, timers) and the first sockets, and cleans up after resets.
const ACTIVATION: &[Allow] = &[
    Any(Sysno::read),
    Any(Sysno::epoll_create1),
    Any(Sysno::eventfd2),
    Any(Sysno::timerfd_create),
    Any(Sysno::dup),
    Any(Sysno::poll),
    Any(Sysno::ppoll),
    ArgIn {
        call: Sysno::socket,
        arg: 0,
        values: ALL_FAMILIES,
    },
];

/// Starting virtiofsd again after a reset (and what virtiofsd itself
/// does, since it inherits the filter: its own seccomp set-up, its
/// namespace sandbox, serving FUSE requests on the host file system).
const LAUNCH_VIRTIOFSD: &[Allow] = &[
    Any(Sysno::clone),
    Any(Sysno::clone3),
    Any(Sysno::vfork),
    Any(Sysno::execve),
    Any(Sysno::execveat),
    Any(Sysno::pipe2),
    Any(Sysno::dup2),
    Any(Sysno::dup3),
    Any(Sysno::setpgid),
    Any(Sysno::pidfd_open),
    // The child marks what it inherited close-on-exec, then installs the
    // filter that keeps setuid files and device nodes off the host.
    Any(Sysno::close_range),
];

/// The thread that waits for the VM's end and tears it down: it kicks the
/// vCPUs out of KVM_RUN, stops devices (virtiofsd included), takes guest
/// memory out of KVM, removes the VM's sockets and reports the exit.
const SUPERVISOR: &[Allow] = &[
    ArgIn {
        call: Sysno::ioctl,
        arg: 1,
        values: &[KVM_SET_USER_MEMORY_REGION],
    },
    Any(Sysno::read),
    Any(Sysno::shutdown),
    Any(Sysno::kill),
    Any(Sysno::pidfd_send_signal),
    Any(Sysno::waitid),
    Any(Sysno::wait4),
    Any(Sysno::poll),
    Any(Sysno::ppoll),
    Any(Sysno::unlink),
    Any(Sysno::unlinkat),
    Any(Sysno::rmdir),
    Any(Sysno::openat),
    Any(Sysno::getdents64),
    Any(Sysno::fstat),
    Any(Sysno::statx),
    Any(Sysno::newfstatat),
    Any(Sysno::lseek),
    Any(Sysno::fsync),
    Any(Sysno::sigaltstack),
    ArgIn {
        call: Sysno::fcntl,
        arg: 1,
        values: FCNTL_CMDS,
    },
];

/// KVM_SET_USER_MEMORY_REGION: _IOW(KVMIO, 0x46, 32 bytes).
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;

/// The control socket: accepting the owner's connections, answering
/// (status reads /proc, `net` changes the policy, `reclaim` and `stop`
/// reach the guest agent over the vsock socket), starting a thread per
/// connection and one to stop the VM.
const CONTROL: &[Allow] = &[
    Any(Sysno::accept4),
    ArgIn {
        call: Sysno::socket,
        arg: 0,
        values: UNIX_ONLY,
    },
    Any(Sysno::connect),
    Any(Sysno::read),
    Any(Sysno::recvfrom),
    Any(Sysno::sendto),
    Any(Sysno::recvmsg),
    Any(Sysno::sendmsg),
    Any(Sysno::shutdown),
    Any(Sysno::poll),
    Any(Sysno::ppoll),
    Any(Sysno::getsockopt),
    Any(Sysno::setsockopt),
    Any(Sysno::openat),
    Any(Sysno::fstat),
    Any(Sysno::statx),
    Any(Sysno::newfstatat),
    Any(Sysno::lseek),
    ArgIn {
        call: Sysno::fcntl,
        arg: 1,
        values: FCNTL_CMDS,
    },
    ArgIn {
        call: Sysno::ioctl,
        arg: 1,
        values: SOCKET_IOCTLS,
    },
];

/// The vhost-user backend process besides its network worker: the
/// frontend's socket (created owner-only: a private staging directory,
/// bind, chmod, rename), the daemon's socket next to it, vhost-user
/// messages with descriptors, and mapping the frontend's guest memory.
const VHOST_USER_BACKEND: &[Allow] = &[
    ArgIn {
        call: Sysno::socket,
        arg: 0,
        values: ALL_FAMILIES,
    },
    Any(Sysno::epoll_create1),
    Any(Sysno::eventfd2),
    Any(Sysno::timerfd_create),
    Any(Sysno::dup),
    Any(Sysno::mkdir),
    Any(Sysno::chmod),
    Any(Sysno::fchmodat),
    Any(Sysno::rename),
    Any(Sysno::unlink),
    Any(Sysno::rmdir),
    Any(Sysno::newfstatat),
    Any(Sysno::statx),
    Any(Sysno::fstat),
    Any(Sysno::getrandom),
];

/// The ssh-agent relay: accepting the guest's connections (Unix sockets
/// only), connecting each to the host's agent, reading and writing whole
/// messages with a timeout on the agent's answers, a thread per
/// connection. Nothing is executed, and files are only opened read-only:
/// glibc's malloc reads `/sys/devices/system/cpu/online` when a new
/// thread first needs an arena of its own.
const SSH_AGENT: &[Allow] = &[
    ArgIn {
        call: Sysno::openat,
        arg: 2,
        values: &[(libc::O_RDONLY | libc::O_CLOEXEC) as u64],
    },
    Any(Sysno::accept4),
    ArgIn {
        call: Sysno::socket,
        arg: 0,
        values: UNIX_ONLY,
    },
    Any(Sysno::connect),
    Any(Sysno::read),
    Any(Sysno::recvfrom),
    Any(Sysno::sendto),
    Any(Sysno::shutdown),
    Any(Sysno::poll),
    Any(Sysno::ppoll),
    Any(Sysno::setsockopt),
    Any(Sysno::getsockopt),
    ArgIn {
        call: Sysno::ioctl,
        arg: 1,
        values: SOCKET_IOCTLS,
    },
];

/// The thread that turns SIGTERM/SIGINT/SIGHUP into a stop.
/// signal-hook's self-pipe is a Unix socket pair; its handler (which runs
/// on this thread: the others block the signals) writes to it.
const SIGNALS: &[Allow] = &[
    Any(Sysno::read),
    Any(Sysno::recvfrom),
    Any(Sysno::sendto),
    Any(Sysno::poll),
    Any(Sysno::ppoll),
];

/// Every entry a thread of `kind` is allowed, duplicates included (the
/// filter merges them).
pub fn allowed(kind: ThreadKind) -> Vec<Allow> {
    let mut list: Vec<Allow> = BASE.to_vec();
    let mut add = |parts: &[&[Allow]]| {
        for part in parts {
            list.extend_from_slice(part);
        }
    };
    match kind {
        ThreadKind::Vcpu => add(&[VCPU]),
        ThreadKind::Worker(device) => {
            add(&[WORKER]);
            add(worker_extra(device));
            if matches!(device, WorkerDevice::Net | WorkerDevice::Other) {
                // The stack writes the audit log.
                add(&[ROTATED_LOG]);
            }
        }
        ThreadKind::DaemonLog => add(&[DAEMON_LOG]),
        ThreadKind::VhostUserReplies => add(&[VHOST_USER_REPLIES]),
        ThreadKind::Activation { launches_daemons } => {
            add(&[
                ACTIVATION,
                SPAWN_THREAD,
                WORKER,
                NET,
                VSOCK,
                BALLOON,
                RNG,
                FS,
            ]);
            add(&[DAEMON_LOG, VHOST_USER_REPLIES, ROTATED_LOG]);
            if launches_daemons {
                add(&[LAUNCH_VIRTIOFSD, VIRTIOFSD]);
            }
        }
        ThreadKind::Supervisor => add(&[SUPERVISOR]),
        ThreadKind::Control => add(&[CONTROL, SPAWN_THREAD]),
        ThreadKind::Signals => add(&[SIGNALS]),
        ThreadKind::ConsoleLog => add(&[ROTATED_LOG]),
        ThreadKind::SshAgent => add(&[SSH_AGENT, SPAWN_THREAD]),
        ThreadKind::VhostUserBackend => {
            add(&[VHOST_USER_BACKEND, SPAWN_THREAD, WORKER, NET, ROTATED_LOG]);
            add(&[VHOST_USER_REPLIES]);
        }
    }
    list
}

/// What the worker of `device` adds to [`WORKER`]; a device agentvm does
/// not know gets what every known worker may do.
fn worker_extra(device: WorkerDevice) -> &'static [&'static [Allow]] {
    match device {
        WorkerDevice::Net => &[NET],
        WorkerDevice::Vsock => &[VSOCK],
        WorkerDevice::Balloon => &[BALLOON],
        WorkerDevice::Rng => &[RNG],
        WorkerDevice::Fs => &[FS],
        WorkerDevice::Other => &[NET, VSOCK, BALLOON, RNG, FS],
    }
}

/// virtiofsd's own calls (it inherits the filter of the thread that
/// starts it), from its seccomp list and its sandbox set-up.
const VIRTIOFSD: &[Allow] = &[
    Any(Sysno::read),
    Any(Sysno::pread64),
    Any(Sysno::preadv),
    Any(Sysno::preadv2),
    Any(Sysno::pwrite64),
    Any(Sysno::pwritev),
    Any(Sysno::pwritev2),
    Any(Sysno::readv),
    Any(Sysno::ioctl),
    Any(Sysno::fcntl),
    Any(Sysno::openat),
    Any(Sysno::openat2),
    Any(Sysno::open_by_handle_at),
    Any(Sysno::name_to_handle_at),
    Any(Sysno::fstat),
    Any(Sysno::newfstatat),
    Any(Sysno::statx),
    Any(Sysno::fstatfs),
    Any(Sysno::statfs),
    Any(Sysno::lseek),
    Any(Sysno::getdents64),
    Any(Sysno::mkdirat),
    Any(Sysno::mknodat),
    Any(Sysno::symlinkat),
    Any(Sysno::linkat),
    Any(Sysno::unlinkat),
    Any(Sysno::renameat),
    Any(Sysno::renameat2),
    Any(Sysno::readlinkat),
    Any(Sysno::fchmod),
    Any(Sysno::fchmodat),
    Any(Sysno::fchownat),
    Any(Sysno::fchown),
    Any(Sysno::ftruncate),
    Any(Sysno::fallocate),
    Any(Sysno::fsync),
    Any(Sysno::fdatasync),
    Any(Sysno::utimensat),
    Any(Sysno::fgetxattr),
    Any(Sysno::fsetxattr),
    Any(Sysno::flistxattr),
    Any(Sysno::fremovexattr),
    Any(Sysno::getxattr),
    Any(Sysno::setxattr),
    Any(Sysno::listxattr),
    Any(Sysno::removexattr),
    Any(Sysno::lgetxattr),
    Any(Sysno::lsetxattr),
    Any(Sysno::llistxattr),
    Any(Sysno::lremovexattr),
    Any(Sysno::copy_file_range),
    Any(Sysno::flock),
    Any(Sysno::fchdir),
    Any(Sysno::chdir),
    Any(Sysno::umask),
    Any(Sysno::socket),
    Any(Sysno::socketpair),
    Any(Sysno::bind),
    Any(Sysno::listen),
    Any(Sysno::accept4),
    Any(Sysno::connect),
    Any(Sysno::recvmsg),
    Any(Sysno::sendmsg),
    Any(Sysno::recvfrom),
    Any(Sysno::sendto),
    Any(Sysno::shutdown),
    Any(Sysno::getsockopt),
    Any(Sysno::setsockopt),
    Any(Sysno::epoll_create1),
    Any(Sysno::epoll_ctl),
    Any(Sysno::epoll_wait),
    Any(Sysno::epoll_pwait),
    Any(Sysno::eventfd2),
    Any(Sysno::poll),
    Any(Sysno::ppoll),
    Any(Sysno::getuid),
    Any(Sysno::geteuid),
    Any(Sysno::getgid),
    Any(Sysno::getegid),
    Any(Sysno::getppid),
    Any(Sysno::getresuid),
    Any(Sysno::getresgid),
    Any(Sysno::setresuid),
    Any(Sysno::setresgid),
    Any(Sysno::setuid),
    Any(Sysno::setgid),
    Any(Sysno::setgroups),
    Any(Sysno::capget),
    Any(Sysno::capset),
    Any(Sysno::unshare),
    Any(Sysno::setns),
    Any(Sysno::mount),
    Any(Sysno::umount2),
    Any(Sysno::pivot_root),
    Any(Sysno::chroot),
    Any(Sysno::setsid),
    Any(Sysno::getrlimit),
    Any(Sysno::setrlimit),
    Any(Sysno::prlimit64),
    Any(Sysno::set_tid_address),
    Any(Sysno::arch_prctl),
    Any(Sysno::access),
    Any(Sysno::faccessat),
    Any(Sysno::faccessat2),
    Any(Sysno::readlink),
    Any(Sysno::uname),
    Any(Sysno::sysinfo),
    Any(Sysno::getcwd),
    Any(Sysno::pipe2),
    Any(Sysno::kill),
    Any(Sysno::wait4),
    Any(Sysno::waitid),
    Any(Sysno::memfd_create),
    Any(Sysno::io_uring_setup),
    Any(Sysno::io_uring_enter),
    Any(Sysno::io_uring_register),
    Any(Sysno::statmount),
    Any(Sysno::listmount),
    Any(Sysno::open_tree),
    Any(Sysno::move_mount),
    Any(Sysno::getgroups),
];
