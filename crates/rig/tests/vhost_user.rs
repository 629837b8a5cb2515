//! T2 for `agentvm vhost-user net`: QEMU (TCG, on this host) is the
//! frontend, with a virtio-net device whose backend is agentvm's filtered
//! network served over vhost-user; its guest is the default image's kernel
//! with the rig's init in `rig.mode=net`. The guest gets a DHCP lease,
//! resolves a name pinned to the host's 127.0.0.1 (to its alias
//! 198.18.0.1), fetches from a test server there, and fails to reach an
//! address the DNS server never handed out; the backend writes an audit
//! line for each connection and exits when QEMU does. The same run with
//! agentvm-vmm's `vhost_user_net` example as the backend shows that
//! example working.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentvm_rig::{binaries, error_chain, Rig};

/// What the test server answers every request with.
const BODY: &str = "vhost-ok";

/// Serves `BODY` over HTTP/1.0 on 127.0.0.1 until the process ends.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
        }
    });
    port
}

/// The host's TSC rate for the guest's command line: under TCG the
/// guest's TSC runs at it, and calibrating against the emulated PIT on a
/// busy host sometimes fails and hangs the boot.
fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))?
        .trim_start_matches([' ', '\t', ':'])
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Which backend serves the socket.
enum Backend {
    /// `agentvm vhost-user net`, its audit log in a file.
    Cli,
    /// agentvm-vmm's `vhost_user_net` example, its audit lines on stderr.
    Example,
}

#[test]
fn a_qemu_guest_gets_the_filtered_network_over_vhost_user() {
    filtered_network_over_vhost_user(Backend::Cli);
}

#[test]
fn the_vhost_user_example_serves_the_same_network() {
    filtered_network_over_vhost_user(Backend::Example);
}

fn filtered_network_over_vhost_user(kind: Backend) {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    if !agentvm_image::on_path("qemu-system-x86_64") {
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
        );
        eprintln!("skipped: qemu-system-x86_64 not found");
        return;
    }
    let l2 = rig
        .l2_image()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let bins = binaries::build().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let port = http_server();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    let audit = dir.path().join("audit.jsonl");
    let mut backend = match kind {
        Backend::Cli => {
            let mut c = Command::new(&bins.agentvm);
            c.arg("vhost-user")
                .arg("net")
                .arg("--socket")
                .arg(&socket)
                .args(["--net", "filtered", "--host", "sink.test=127.0.0.1"])
                .args(["--port", &port.to_string()])
                .arg("--audit")
                .arg(&audit);
            c
        }
        Backend::Example => {
            let mut c = Command::new(bins.example("vhost_user_net"));
            c.arg(&socket)
                .arg(port.to_string())
                .arg("sink.test=127.0.0.1");
            c
        }
    }
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    assert!(
        wait_for(&socket, Duration::from_secs(10)),
        "the backend never listened"
    );
    let mut cmdline = format!(
        "console=ttyS0 reboot=k panic=1 pci=off rdinit=/rig/init rig.mode=net \
         rig.host=sink.test rig.port={port} rig.denied=198.18.0.2"
    );
    if let Some(khz) = tsc_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let started = Instant::now();
    let qemu = Command::new("timeout")
        .arg("300")
        .arg("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,memory-backend=mem",
            "-cpu",
            "max",
            "-m",
            "256",
        ])
        .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
        .arg("-chardev")
        .arg(format!("socket,id=vu,path={}", socket.display()))
        .args(["-netdev", "vhost-user,id=n0,chardev=vu"])
        .args(["-device", "virtio-net-device,netdev=n0,host_mtu=65520"])
        .arg("-kernel")
        .arg(&l2.bzimage)
        .arg("-initrd")
        .arg(&l2.initrd)
        .args(["-append", &cmdline, "-nographic", "-no-reboot"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&qemu.stdout).to_string();
    let log = dir.path().join("console.log");
    std::fs::write(&log, &console).unwrap();
    let marker = |key: &str| {
        let prefix = format!("RIG-L2 {key}=");
        console
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| "<missing>".into())
    };
    let tail: String = console
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .join("\n");
    let ctx = || {
        format!(
            "QEMU stderr: {}; console tail:\n{tail}",
            String::from_utf8_lossy(&qemu.stderr)
        )
    };
    eprintln!(
        "vhost-user net: QEMU ran {:.1} s; lease: {}; fetch: {}",
        started.elapsed().as_secs_f64(),
        marker("dhcp"),
        marker("fetch")
    );
    assert_eq!(marker("done"), "1", "{}", ctx());
    assert!(
        marker("dhcp").contains("lease of 10.0.2.15 obtained"),
        "{}",
        ctx()
    );
    assert_eq!(marker("resolved"), "198.18.0.1", "{}", ctx());
    assert_eq!(marker("fetch").trim(), BODY, "{}", ctx());
    assert_ne!(marker("denied_rc"), "0", "{}", ctx());

    // QEMU is gone: the backend ends too, cleanly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = backend.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = backend.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    backend
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "backend: {status:?}; {stderr}"
    );
    let lines = match kind {
        Backend::Cli => std::fs::read_to_string(&audit).unwrap(),
        Backend::Example => stderr,
    };
    let allowed = format!("\"port\":{port},\"verdict\":\"allow\"");
    assert!(
        lines
            .lines()
            .any(|l| l.contains("\"proto\":\"tcp\"") && l.contains(&allowed)),
        "{lines}"
    );
    assert!(
        lines
            .lines()
            .any(|l| l.contains("\"ip\":\"198.18.0.2\"") && l.contains("\"verdict\":\"deny\"")),
        "{lines}"
    );
}
