use std::collections::BTreeSet;

use syscalls::Sysno;

use super::*;

fn calls(kind: ThreadKind) -> BTreeSet<i32> {
    allowlist::allowed(kind)
        .iter()
        .map(|a| a.call().id())
        .collect()
}

#[test]
fn every_filter_compiles_and_its_size_is_printed() {
    for kind in ThreadKind::ALL {
        let program = filter(SeccompLevel::Kill, kind).unwrap().unwrap();
        println!(
            "{:32} {:3} system calls, {:4} BPF instructions",
            kind.name(),
            syscall_count(kind),
            program.len()
        );
        assert!(syscall_count(kind) > 20, "{}", kind.name());
        assert!(filter(SeccompLevel::Off, kind).unwrap().is_none());
    }
    // The guest-facing threads stay small.
    assert!(syscall_count(ThreadKind::Vcpu) < 35);
    assert!(syscall_count(ThreadKind::Worker(WorkerDevice::Rng)) < 40);
}

#[test]
fn spawning_threads_cover_the_threads_they_spawn() {
    // Filters stack: a child's calls must pass its parent's filter too.
    for launches_daemons in [false, true] {
        let parent = calls(ThreadKind::Activation { launches_daemons });
        for device in [
            WorkerDevice::Net,
            WorkerDevice::Vsock,
            WorkerDevice::Balloon,
            WorkerDevice::Rng,
            WorkerDevice::Fs,
            WorkerDevice::Other,
        ] {
            let child = calls(ThreadKind::Worker(device));
            assert!(child.is_subset(&parent), "{device:?}");
        }
        assert!(calls(ThreadKind::DaemonLog).is_subset(&parent));
    }
}

#[test]
fn only_the_virtiofsd_launcher_may_start_processes() {
    let execve = Sysno::execve.id();
    for kind in ThreadKind::ALL {
        let launches = matches!(
            kind,
            ThreadKind::Activation {
                launches_daemons: true
            }
        );
        assert_eq!(calls(kind).contains(&execve), launches, "{}", kind.name());
    }
}

#[test]
fn a_vcpu_may_only_run_kvm_run() {
    let ioctls: Vec<_> = allowlist::allowed(ThreadKind::Vcpu)
        .into_iter()
        .filter(|a| a.call() == Sysno::ioctl)
        .collect();
    assert_eq!(
        ioctls,
        [Allow::ArgIn {
            call: Sysno::ioctl,
            arg: 1,
            values: &[0xae80]
        }]
    );
}

fn status_field(status: &str, field: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
}

#[test]
fn an_installed_filter_shows_in_the_threads_status() {
    let status = std::thread::spawn(|| {
        install(SeccompLevel::Log, ThreadKind::Vcpu).unwrap();
        // Not on the vCPU list: logged, and let through.
        let ppid = nix_free_getppid();
        assert!(ppid > 0);
        std::fs::read_to_string("/proc/thread-self/status").unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(status_field(&status, "Seccomp:").as_deref(), Some("2"));
    assert_eq!(status_field(&status, "NoNewPrivs:").as_deref(), Some("1"));
    // The test's own thread is untouched.
    let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert_eq!(status_field(&own, "Seccomp:").as_deref(), Some("0"));
}

fn nix_free_getppid() -> i32 {
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::getppid() }
}

#[test]
fn off_installs_nothing() {
    let status = std::thread::spawn(|| {
        install(SeccompLevel::Off, ThreadKind::Vcpu).unwrap();
        std::fs::read_to_string("/proc/thread-self/status").unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(status_field(&status, "Seccomp:").as_deref(), Some("0"));
}

#[test]
fn levels_parse_and_print() {
    for level in [SeccompLevel::Kill, SeccompLevel::Log, SeccompLevel::Off] {
        assert_eq!(level.as_str().parse::<SeccompLevel>().unwrap(), level);
    }
    assert_eq!(SeccompLevel::default(), SeccompLevel::Kill);
    assert_eq!(
        "strict".parse::<SeccompLevel>().unwrap_err().to_string(),
        "Unknown seccomp level \"strict\": use kill, log or off"
    );
}

#[test]
fn the_vsock_worker_may_connect_a_guest_to_a_socket_of_this_user() {
    // What the worker does for a guest connection to host port P (the
    // ssh-agent relay's path), under the kill level: a call outside its
    // list ends this test process.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock_1025");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let connected = std::thread::spawn(move || {
        install(SeccompLevel::Kill, ThreadKind::Worker(WorkerDevice::Vsock)).unwrap();
        let own = agentvm_devices::socket::is_own_socket(&path);
        let missing = agentvm_devices::socket::is_own_socket(&path.with_extension("x"));
        let stream = agentvm_devices::virtio::vsock::unix::connect_nonblocking(&path);
        (own, missing, stream.is_ok())
    })
    .join()
    .unwrap();
    assert_eq!(connected, (true, false, true));
    listener.accept().unwrap();
}
