//! Process hygiene of a running VMM (T1, tiny guest on the host's KVM):
//! `agentvm boot` started with a descriptor it should not keep; then its
//! /proc entries are read while the guest runs. (The environment `up`
//! gives the background VMM is checked in lifecycle.rs.)
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentvm_testguest::{Asm64, Format, Program};

/// A guest that says it booted, then halts for good (the VMM keeps
/// running until it is killed).
fn halting_guest(dir: &Path) -> PathBuf {
    let mut code = Asm64::new().unwrap();
    code.serial_print("booted\n").unwrap();
    let mut top = code.create_label();
    code.set_label(&mut top).unwrap();
    code.cli().unwrap();
    code.hlt().unwrap();
    code.jmp(top).unwrap();
    Program::new("halt")
        .with_long64(code)
        .build(Format::Elf64)
        .unwrap()
        .write_to(dir)
        .unwrap()
}

/// Kills the VMM when the test ends, passed or not.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `field` of a /proc status file.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_owned()
}

#[test]
fn a_running_vmm_has_no_new_privs_no_core_dumps_and_no_inherited_fds() {
    if !common::kvm_usable() {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = halting_guest(dir.path());
    let serial = dir.path().join("console");
    // A descriptor without CLOEXEC, so the VMM inherits it.
    let secret_file = fs::File::create(dir.path().join("inherited")).unwrap();
    let inherited = nix::unistd::dup(&secret_file).unwrap();
    let vmm = Vmm(Command::new(env!("CARGO_BIN_EXE_agentvm"))
        .args(["boot", "--kernel"])
        .arg(&kernel)
        .args(["--memory", "128", "--vcpus", "2", "--serial"])
        .arg(&serial)
        .env("AGENTVM_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .unwrap());
    let proc = PathBuf::from(format!("/proc/{}", vmm.0.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read_to_string(&serial).unwrap_or_default() != "booted\n" {
        assert!(Instant::now() < deadline, "the guest did not boot");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Every thread (main, vCPUs, devices) has no_new_privs.
    let mut threads = 0;
    for task in fs::read_dir(proc.join("task")).unwrap().flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap();
        let name = status_field(&status, "Name:");
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "thread {name}");
        threads += 1;
    }
    assert!(threads >= 3, "{threads} threads: the vCPUs are missing");

    // No core dumps, and guest RAM is excluded from them anyway.
    let limits = fs::read_to_string(proc.join("limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let values: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(values, ["0", "0"], "{core}");
    let smaps = fs::read_to_string(proc.join("smaps")).unwrap();
    let mut ram_mappings = 0;
    let mut in_ram = false;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if in_ram {
                assert!(flags.split_whitespace().any(|f| f == "dd"), "{flags}");
                // Advised huge pages, too (it needs no sharing: private).
                assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
                ram_mappings += 1;
            }
        } else if line.contains('-') && line.split_whitespace().count() >= 5 {
            let range = line.split(' ').next().unwrap_or_default();
            let len = range.split_once('-').and_then(|(a, b)| {
                Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
            });
            in_ram = len == Some(128 << 20);
        }
    }
    assert_eq!(ram_mappings, 1, "one guest RAM mapping of 128 MiB");

    // The descriptor it inherited is closed (it is still open here).
    let open: Vec<PathBuf> = fs::read_dir(proc.join("fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .collect();
    let leaked = dir.path().join("inherited");
    assert!(!open.contains(&leaked), "inherited fd kept: {open:?}");
    assert!(fs::read_link(format!("/proc/self/fd/{}", inherited.as_raw_fd())).is_ok());
}
