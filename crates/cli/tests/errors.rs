//! `agentvm boot` and `agentvm doctor` from the user's side: exit codes and
//! one-line errors that say what to do.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{kvm_usable, one_line_error, stderr};

fn agentvm(args: &[&str]) -> std::process::Output {
    common::agentvm(args, &[])
}

/// A temporary directory with the tiny hello guest in it, or `None` (with
/// the reason printed) where /dev/kvm cannot be opened.
fn hello_guest() -> Option<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir().unwrap();
    let p = common::hello_guest(dir.path(), "hello from the cli test\n")?;
    Some((dir, p))
}

#[test]
fn missing_kernel_is_named() {
    let o = agentvm(&["boot", "--kernel", "/nonexistent/vmlinux"]);
    let line = one_line_error(&o);
    assert!(
        line.contains("kernel /nonexistent/vmlinux does not exist"),
        "{line}"
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_file_that_is_no_kernel_is_refused_before_anything_runs() {
    if !kvm_usable() {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    std::fs::write(
        &p,
        "not a kernel at all, just text that is long enough to have an offset 0x202".repeat(20),
    )
    .unwrap();
    let line = one_line_error(&agentvm(&["boot", "--kernel", p.to_str().unwrap()]));
    assert!(
        line.contains("neither an ELF vmlinux nor a bzImage"),
        "{line}"
    );
}

#[test]
fn initrd_larger_than_memory_is_refused() {
    let Some((dir, kernel)) = hello_guest() else {
        return;
    };
    let initrd = dir.path().join("big.img");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let o = agentvm(&[
        "boot",
        "--memory",
        "128",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    let line = one_line_error(&o);
    assert!(
        line.contains("Initrd of 209715200 bytes does not fit"),
        "{line}"
    );
    assert!(line.contains("give the VM more memory"), "{line}");
}

#[test]
fn command_line_too_long_is_refused() {
    let Some((_dir, kernel)) = hello_guest() else {
        return;
    };
    let long = "x".repeat(5000);
    let line = one_line_error(&agentvm(&[
        "boot",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        &long,
    ]));
    assert!(
        line.contains("command line is 5000 bytes; this kernel accepts at most 2047"),
        "{line}"
    );
}

#[test]
fn memory_beyond_what_the_host_can_map_is_refused() {
    use std::os::unix::process::CommandExt;
    let Some((_dir, kernel)) = hello_guest() else {
        return;
    };
    // Guest RAM is mapped, not committed, so the host's limit is its address
    // space: give agentvm 2 GiB of it and ask for 8 GiB of guest memory.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvm"));
    cmd.args(["boot", "--memory", "8192", "--kernel"])
        .arg(&kernel);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let line = one_line_error(&cmd.output().unwrap());
    assert!(
        line.contains("this host cannot map 8192 MiB of guest memory"),
        "{line}"
    );
    assert!(line.contains("lower --memory"), "{line}");
}

#[test]
fn more_memory_than_the_host_has_is_fine_until_touched() {
    let Some((_dir, kernel)) = hello_guest() else {
        return;
    };
    // 64 GiB on any host: a limit, not a reservation.
    let o = agentvm(&[
        "boot",
        "--memory",
        "65536",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn boot_prints_the_guest_output_and_exits_zero_on_reset() {
    let Some((_dir, kernel)) = hello_guest() else {
        return;
    };
    let o = agentvm(&[
        "boot",
        "--memory",
        "128",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from the cli test\n"
    );
}

#[test]
fn doctor_names_the_kvm_kind() {
    let o = agentvm(&["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let kind = if Path::new("/sys/module/kvm_pvm").exists() {
        "kvm: pvm"
    } else if Path::new("/sys/module/kvm_intel").exists()
        || Path::new("/sys/module/kvm_amd").exists()
    {
        "kvm: hardware"
    } else {
        "kvm: unknown"
    };
    assert!(out.lines().any(|l| l == kind), "{kind} missing from {out}");
    assert!(out.contains("virtiofsd:"), "{out}");
    // A PVM host runs tiny guests but not the default image's stock kernel.
    let pvm = kind == "kvm: pvm";
    let virtiofsd = !out.contains("virtiofsd: FAIL");
    assert_eq!(
        o.status.success(),
        kvm_usable() && !pvm && virtiofsd,
        "{out}"
    );
    assert_eq!(
        out.contains("default image: cannot boot here"),
        pvm,
        "{out}"
    );
}

#[test]
fn balloon_options_are_checked_and_a_target_boots() {
    let Some((_dir, kernel)) = hello_guest() else {
        return;
    };
    let k = kernel.to_str().unwrap();
    let o = agentvm(&["boot", "--memory", "128", "--balloon", "128", "--kernel", k]);
    let line = one_line_error(&o);
    assert!(
        line.contains("--balloon 128 MiB would take all of the guest's 128 MiB"),
        "{line}"
    );
    let o = agentvm(&["boot", "--no-balloon", "--balloon", "16", "--kernel", k]);
    assert_eq!(o.status.code(), Some(2), "clap refuses the conflict");
    // A guest without a balloon driver: the target waits, the guest runs.
    let o = agentvm(&["boot", "--memory", "128", "--balloon", "16", "--kernel", k]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from the cli test\n"
    );
}

#[test]
fn network_flags_name_their_bad_values() {
    for (args, expect) in [
        (
            &["--net", "bridge"][..],
            "invalid value 'bridge' for '--net <MODE>'",
        ),
        (
            &["--net", "filtered", "--allow", "*.github.com"][..],
            "write \"github.com\"",
        ),
        (
            &["--net", "filtered", "--port", "0"][..],
            "invalid value '0' for '--port <N>'",
        ),
        (
            &["--net", "open", "--host", "db.test"][..],
            "`db.test` is not a host pin",
        ),
        (
            &["--net", "open", "--forward", "8080"][..],
            "`8080` is not a port forward",
        ),
    ] {
        let mut all = vec!["boot", "--kernel", "/nonexistent/vmlinux"];
        all.extend_from_slice(args);
        let o = agentvm(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{args:?}: {}", stderr(&o));
    }
    // Valid values that need a network the VM would not have.
    let o = agentvm(&[
        "boot",
        "--kernel",
        "/nonexistent/vmlinux",
        "--allow",
        "a.test",
    ]);
    let line = one_line_error(&o);
    assert!(
        line.contains("--allow a.test needs a network") && line.contains("add --net filtered"),
        "{line}"
    );
}

#[test]
fn a_vm_with_a_network_device_boots_and_writes_its_audit_log() {
    let Some((dir, kernel)) = hello_guest() else {
        return;
    };
    let audit = dir.path().join("audit.jsonl");
    let o = agentvm(&[
        "boot",
        "--memory",
        "128",
        "--kernel",
        kernel.to_str().unwrap(),
        "--net",
        "filtered",
        "--allow",
        "a.test",
        "--port",
        "22",
        "--host",
        "db.test=127.0.0.1",
        "--forward",
        "0",
        "--audit",
        audit.to_str().unwrap(),
    ]);
    // `--forward 0` is refused before anything starts.
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!audit.exists());
    let o = agentvm(&[
        "boot",
        "--memory",
        "128",
        "--kernel",
        kernel.to_str().unwrap(),
        "--net",
        "filtered",
        "--allow",
        "a.test",
        "--port",
        "22",
        "--host",
        "db.test=127.0.0.1",
        "--audit",
        audit.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from the cli test\n"
    );
    // The guest sent nothing: the log exists and is empty.
    assert_eq!(std::fs::read_to_string(&audit).unwrap(), "");
    let o = agentvm(&[
        "boot",
        "--kernel",
        kernel.to_str().unwrap(),
        "--net",
        "open",
        "--audit",
        "/nonexistent/dir/audit.jsonl",
    ]);
    let line = one_line_error(&o);
    assert!(
        line.contains("--audit: cannot open /nonexistent/dir/audit.jsonl"),
        "{line}"
    );
}

#[test]
fn boot_with_a_secret_intercepts_its_hosts_and_refuses_a_value_that_breaks_a_header() {
    let Some((_dir, kernel)) = hello_guest() else {
        return;
    };
    let boot = |value: &str| {
        common::agentvm(
            &[
                "boot",
                "--memory",
                "128",
                "--kernel",
                kernel.to_str().unwrap(),
                "--net",
                "filtered",
                "--allow",
                "api.test",
                "--secret",
                "KEY=TEST_BOOT_SECRET@api.test",
            ],
            &[("TEST_BOOT_SECRET", value)],
        )
    };
    let o = boot("sk-boot-hunter4");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("agentvm: TLS interception is on for the secrets' hosts: KEY -> api.test"),
        "{err}"
    );
    assert!(
        !err.contains("hunter4") && !err.contains("cannot intercept"),
        "{err}"
    );
    // A value with a line break would split the request's head: refused
    // before the VM starts, without the value in the message.
    let o = boot("sk-boot\nX-Evil: hunter5");
    let line = one_line_error(&o);
    assert!(line.contains("secret KEY: its value must be"), "{line}");
    assert!(!stderr(&o).contains("hunter5"));
}
