//! T2: virtiofsd started from the activation thread (as after a virtio-fs
//! reset) inherits that thread's seccomp filter across fork and execve.
//! The filter must let the real virtiofsd set up its sandbox and serve
//! the vhost-user handshake, and stopping it must pass too.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use agentvm_devices::virtio::fs::{DaemonState, FsConfig, Search, VirtioFs};
use agentvm_vmm::seccomp::{self, SeccompLevel, ThreadKind};

#[test]
fn virtiofsd_starts_and_stops_under_the_launcher_filter() {
    if let Err(e) = Search::from_env(None).find() {
        assert!(std::env::var_os("CI").is_none(), "CI needs virtiofsd: {e}");
        eprintln!("skipped: {e}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("share");
    let state = tmp.path().join("state");
    std::fs::create_dir(&shared).unwrap();
    std::fs::create_dir(&state).unwrap();
    let config = FsConfig::new("confined", &shared, &state);
    // Under `kill`, a call outside the filter ends this test process with
    // a line naming it; in virtiofsd it kills the daemon and the handshake
    // fails.
    let outcome = std::thread::spawn(move || {
        seccomp::install(
            SeccompLevel::Kill,
            ThreadKind::Activation {
                launches_daemons: true,
            },
        )
        .unwrap();
        let fs = VirtioFs::new(config).map_err(|e| e.to_string())?;
        let host = fs.handle();
        let pid = host.daemon_pid().ok_or("no daemon pid")?;
        let running = host.state() == DaemonState::Running { pid };
        drop(fs);
        Ok::<_, String>((running, host.state()))
    })
    .join()
    .unwrap();
    assert_eq!(outcome, Ok((true, DaemonState::Stopped)));
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}
