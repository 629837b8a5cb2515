//! The VMM's seccomp filters end to end with tiny guests on the host's
//! /dev/kvm: every thread of a running `agentvm boot` is confined (with
//! net, vsock, rng and balloon devices whose workers run, and the
//! ssh-agent relay), a forbidden
//! system call ends the VM naming it, and `--seccomp log` / `off` do what
//! they say.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentvm_testguest::{Asm64, Format, Program};
use agentvm_vmm::{VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use iced_x86::code_asm::{dword_ptr, rbx};

use common::{agentvm, hello_guest, kvm_usable, stderr};

/// virtio-mmio registers the guest writes (virtio 1.2 §4.2.2).
const DRIVER_FEATURES: i32 = 0x020;
const DRIVER_FEATURES_SEL: i32 = 0x024;
const QUEUE_SEL: i32 = 0x030;
const QUEUE_NUM: i32 = 0x038;
const QUEUE_READY: i32 = 0x044;
const STATUS: i32 = 0x070;
const QUEUE_DESC_LOW: i32 = 0x080;
const QUEUE_DRIVER_LOW: i32 = 0x090;
const QUEUE_DEVICE_LOW: i32 = 0x0a0;
const DEVICE_ID: i32 = 0x008;
/// virtio-vsock, the only device here with a third queue.
const VSOCK_ID: u32 = 19;
/// `agentvm boot`'s devices: rng, vsock, balloon, net.
const DEVICES: u64 = 4;
/// Where the (empty) rings go: far above the guest's code.
const RINGS: u64 = 0x40_0000;
/// The line the guest prints once every device is DRIVER_OK.
const READY: &str = "drivers ok";
/// The workers that must be running.
const WORKERS: [&str; 4] = ["virtio-net", "virtio-vsock", "virtio-rng", "virtio-balloon"];

/// A guest that drives every virtio-mmio device to DRIVER_OK (VERSION_1,
/// two queues of 16, a third on vsock; the rings stay empty), prints
/// [`READY`] and halts for good.
fn driver_guest(dir: &Path) -> PathBuf {
    let mut a = Asm64::new().unwrap();
    for slot in 0..DEVICES {
        let base = VIRTIO_MMIO_START + slot * VIRTIO_MMIO_SIZE;
        a.mov(rbx, base).unwrap();
        for status in [0, 1, 3] {
            a.mov(dword_ptr(rbx + STATUS), status).unwrap();
        }
        for (page, bits) in [(1, 1), (0, 0)] {
            a.mov(dword_ptr(rbx + DRIVER_FEATURES_SEL), page).unwrap();
            a.mov(dword_ptr(rbx + DRIVER_FEATURES), bits).unwrap();
        }
        a.mov(dword_ptr(rbx + STATUS), 0xb).unwrap();
        let mut done = a.create_label();
        for queue in 0..3u32 {
            if queue == 2 {
                a.cmp(dword_ptr(rbx + DEVICE_ID), VSOCK_ID).unwrap();
                a.jne(done).unwrap();
            }
            let ring = (RINGS + (slot * 3 + u64::from(queue)) * 0x1000) as u32;
            a.mov(dword_ptr(rbx + QUEUE_SEL), queue).unwrap();
            a.mov(dword_ptr(rbx + QUEUE_NUM), 16).unwrap();
            a.mov(dword_ptr(rbx + QUEUE_DESC_LOW), ring).unwrap();
            a.mov(dword_ptr(rbx + QUEUE_DRIVER_LOW), ring + 0x100)
                .unwrap();
            a.mov(dword_ptr(rbx + QUEUE_DEVICE_LOW), ring + 0x200)
                .unwrap();
            a.mov(dword_ptr(rbx + QUEUE_READY), 1).unwrap();
        }
        a.set_label(&mut done).unwrap();
        a.mov(dword_ptr(rbx + STATUS), 0xf).unwrap();
    }
    a.serial_print(&format!("{READY}\n")).unwrap();
    let mut top = a.create_label();
    a.set_label(&mut top).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    a.jmp(top).unwrap();
    Program::new("drivers")
        .with_long64(a)
        .build(Format::Elf64)
        .unwrap()
        .write_to(dir)
        .unwrap()
}

/// `agentvm boot` of the driver guest with every device, at `level`.
struct Booted {
    child: Child,
    serial: PathBuf,
    _dir: tempfile::TempDir,
}

impl Booted {
    fn start(level: &str) -> Booted {
        let dir = tempfile::tempdir().unwrap();
        let kernel = driver_guest(dir.path());
        let serial = dir.path().join("console");
        let vsock = dir.path().join("vsock.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_agentvm"))
            .args(["boot", "--kernel"])
            .arg(&kernel)
            .args(["--memory", "128", "--net", "open", "--seccomp", level])
            .arg("--serial")
            .arg(&serial)
            .arg("--vsock")
            .arg(&vsock)
            // The ssh-agent relay's thread too (it reaches the agent only
            // when the guest connects).
            .arg("--ssh-agent")
            .env("SSH_AUTH_SOCK", dir.path().join("agent.sock"))
            .env("AGENTVM_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Booted {
            child,
            serial,
            _dir: dir,
        }
    }

    /// Waits until the guest set every device up and each worker runs;
    /// returns `(thread name, status)` for every thread.
    fn threads_once_running(&mut self) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err)
                    .unwrap();
                panic!("agentvm boot ended ({status}): {err}");
            }
            let console = std::fs::read_to_string(&self.serial).unwrap_or_default();
            let threads = threads(self.child.id());
            let running = |w: &str| threads.iter().any(|(name, _)| name == w);
            if console.contains(READY) && WORKERS.iter().all(|w| running(w)) {
                return threads;
            }
            assert!(
                Instant::now() < deadline,
                "no workers: console {console:?}, threads {:?}",
                threads.iter().map(|t| &t.0).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every thread of process `pid`: its name and its status file.
fn threads(pid: u32) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            Some((name.trim().to_owned(), status))
        })
        .collect()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map_or("", str::trim)
}

#[test]
fn every_thread_of_a_running_vmm_is_confined() {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return;
    }
    for (level, seccomp) in [("kill", "2"), ("log", "2"), ("off", "0")] {
        let mut vm = Booted::start(level);
        let threads = vm.threads_once_running();
        let names: Vec<_> = threads.iter().map(|t| t.0.as_str()).collect();
        for want in ["agentvm", "vcpu0", "activation", "ssh-agent"] {
            assert!(names.contains(&want), "{level}: no {want} in {names:?}");
        }
        for (name, status) in &threads {
            assert_eq!(field(status, "Seccomp:"), seccomp, "{level}: thread {name}");
            if seccomp == "2" {
                assert_eq!(field(status, "NoNewPrivs:"), "1", "{level}: thread {name}");
            }
        }
        println!("--seccomp {level}: {} threads: {names:?}", threads.len());
    }
}

#[test]
fn a_forbidden_system_call_ends_the_vm_and_names_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = hello_guest(dir.path(), "hello\n") else {
        return;
    };
    let kernel = kernel.to_str().unwrap();
    let boot = |level: &str| {
        agentvm(
            &[
                "boot",
                "--kernel",
                kernel,
                "--memory",
                "64",
                "--seccomp",
                level,
                "--seccomp-selftest",
            ],
            &[],
        )
    };

    let killed = boot("kill");
    assert_eq!(killed.status.code(), Some(159), "{killed:?}");
    let err = stderr(&killed);
    assert!(
        err.contains(
            "agentvm: seccomp: the VM supervisor thread made the forbidden system call getppid (110)"
        ),
        "{err}"
    );
    assert!(!err.contains("self-test: getppid returned"), "{err}");

    // log and off let the call through; the guest then resets as usual.
    for level in ["log", "off"] {
        let out = boot(level);
        assert_eq!(out.status.code(), Some(0), "{level}: {out:?}");
        assert!(
            stderr(&out).contains("seccomp self-test: getppid returned"),
            "{level}: {out:?}"
        );
    }
}

#[test]
fn an_unknown_level_is_refused() {
    let out = agentvm(
        &["boot", "--kernel", "/nonexistent", "--seccomp", "strict"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("use kill, log or off"),
        "{}",
        stderr(&out)
    );
}
