//! `agentvm image build` and `agentvm boot` without `--kernel`, from the
//! user's side: where the image goes, what it holds, and one-line errors
//! that say what to do.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::path::Path;

mod common;

use common::{agentvm, one_line_error};

/// Whether apt-get is on the PATH (the image's downloads need it).
fn has_apt() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("apt-get").is_file()))
}

/// `agentvm image build ARGS` into a new data directory, which must
/// succeed: the directory and what it printed.
fn build_image(args: &[&str]) -> (tempfile::TempDir, String) {
    let data = tempfile::tempdir().unwrap();
    let mut all = vec!["image", "build"];
    all.extend_from_slice(args);
    let o = agentvm(&all, &[("XDG_DATA_HOME", data.path().to_str().unwrap())]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{stdout}");
    (data, stdout)
}

#[test]
fn boot_without_an_image_says_to_build_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let line = one_line_error(&agentvm(&["boot"], &[("XDG_DATA_HOME", data)]));
    assert!(
        line.ends_with(&format!(
            "no guest image at {data}/agentvm/images/default: run `agentvm image build`"
        )),
        "{line}"
    );
    let other = dir.path().join("img");
    let other = other.to_str().unwrap();
    let line = one_line_error(&agentvm(&["boot", "--image", other], &[]));
    assert!(
        line.ends_with(&format!(
            "no guest image at {other}: run `agentvm image build --out {other}`"
        )),
        "{line}"
    );
    std::fs::create_dir_all(other).unwrap();
    std::fs::write(dir.path().join("img/vmlinux"), b"x").unwrap();
    let line = one_line_error(&agentvm(&["boot", "--image", other], &[]));
    assert!(line.contains("lacks initrd.img, cmdline"), "{line}");
    let o = agentvm(&["boot", "--image", other, "--kernel", "/k"], &[]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
}

#[test]
fn build_without_apt_says_what_to_do_instead() {
    let empty = tempfile::tempdir().unwrap();
    let o = agentvm(
        &["image", "build", "--out", "/nonexistent/img"],
        &[("PATH", empty.path().to_str().unwrap())],
    );
    let line = one_line_error(&o);
    assert!(
        line.contains("no apt-get") && line.contains("--kernel-deb") && line.contains("--image"),
        "{line}"
    );
    let o = agentvm(
        &["image", "build", "--kernel-deb", "/nonexistent/k.deb"],
        &[("PATH", empty.path().to_str().unwrap())],
    );
    assert!(one_line_error(&o).contains("--kernel-deb /nonexistent/k.deb does not exist"));
}

#[test]
fn a_dynamic_agent_is_refused() {
    if !has_apt() {
        eprintln!("skipped: no apt-get");
        return;
    }
    // This test binary is dynamically linked.
    let me = std::env::current_exe().unwrap();
    let o = agentvm(&["image", "build", "--agent", me.to_str().unwrap()], &[]);
    let line = one_line_error(&o);
    assert!(
        line.contains("dynamically linked") && line.contains("crt-static"),
        "{line}"
    );
}

/// The real thing: Debian's cloud kernel through apt, the agent built into
/// agentvm, the files where `agentvm boot` looks.
#[test]
fn build_writes_the_default_image() {
    if !has_apt() {
        eprintln!("skipped: needs apt-get");
        return;
    }
    let (data, stdout) = build_image(&[]);
    let dir = data.path().join("agentvm/images/default");
    assert!(stdout.contains(&format!("guest image: {}", dir.display())));
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    assert_eq!(&read("vmlinux")[..4], b"\x7fELF");
    assert_eq!(&read("bzImage")[0x202..0x206], b"HdrS");
    let cmdline = String::from_utf8(read("cmdline")).unwrap();
    assert!(cmdline.starts_with("console=ttyS0 "), "{cmdline}");
    let initrd = read("initrd.img");
    assert!(initrd.starts_with(b"070701"));
    let text = String::from_utf8_lossy(&initrd);
    for entry in [
        "init\0",
        "bin/busybox\0",
        "bin/sh\0",
        "etc/agentvm/modules\0",
        "lib/modules/vmw_vsock_virtio_transport.ko\0",
    ] {
        assert!(text.contains(entry), "{entry:?} not in initrd.img");
    }
    assert!(!Path::new(&dir.join(".vmlinux.tmp")).exists());
}

/// `--kernel-build`: agentvm's own kernel (built when its cache lacks it:
/// minutes), and an initramfs without modules, which it needs none of.
#[test]
fn build_with_our_kernel_writes_an_image_without_modules() {
    if !has_apt() {
        eprintln!("skipped: needs apt-get (busybox-static)");
        return;
    }
    let (data, stdout) = build_image(&["--kernel-build"]);
    assert!(
        stdout.contains("(agentvm guest kernel guest-kernel-"),
        "{stdout}"
    );
    assert!(stdout.contains("no modules (all built in)"), "{stdout}");
    let dir = data.path().join("agentvm/images/default");
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    assert_eq!(&read("vmlinux")[..4], b"\x7fELF");
    assert_eq!(&read("bzImage")[0x202..0x206], b"HdrS");
    let names = cpio_names(&read("initrd.img"));
    assert!(names.iter().any(|n| n == "init"), "{names:?}");
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.ends_with(".ko")),
        "a module in the initramfs: {names:?}"
    );
    let stamp = String::from_utf8(read("image.json")).unwrap();
    assert!(
        stamp.contains("\"kernel_package\": \"agentvm guest kernel\""),
        "{stamp}"
    );
    assert!(stamp.contains("\"kernel_release\": \"6.12."), "{stamp}");
}

/// The entry names of a newc cpio archive (as the kernel reads it).
fn cpio_names(data: &[u8]) -> Vec<String> {
    let field = |at: usize, i: usize| {
        let hex = std::str::from_utf8(&data[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
        usize::from_str_radix(hex, 16).unwrap()
    };
    let pad = |n: usize| (n + 3) & !3;
    let mut names = Vec::new();
    let mut at = 0;
    while at + 110 <= data.len() && &data[at..at + 6] == b"070701" {
        let (size, name_len) = (field(at, 6), field(at, 11));
        let name = String::from_utf8_lossy(&data[at + 110..at + 110 + name_len - 1]).into_owned();
        if name == "TRAILER!!!" {
            break;
        }
        names.push(name);
        at = pad(pad(at + 110 + name_len) + size);
    }
    names
}

#[test]
fn our_kernel_without_its_source_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("kernel-cache");
    let o = agentvm(
        &[
            "image",
            "build",
            "--kernel-build",
            "--out",
            "/nonexistent/img",
        ],
        &[
            ("AGENTVM_KERNEL_CACHE", cache.to_str().unwrap()),
            ("AGENTVM_KERNEL_SRC", "/nonexistent/linux.tar.xz"),
        ],
    );
    let line = one_line_error(&o);
    assert!(
        line.contains("cannot build agentvm's guest kernel")
            && line.contains("apt-get install linux-source-6.12"),
        "{line}"
    );
    let o = agentvm(
        &["image", "build", "--kernel-build", "--kernel-deb", "/k.deb"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "a usage error");
}

#[test]
fn booting_the_stock_image_on_pvm_fails_at_once_and_says_why() {
    let doctor = agentvm(&["doctor"], &[]);
    if !String::from_utf8_lossy(&doctor.stdout).contains("kvm: pvm") {
        eprintln!("skipped: this host's KVM is not PVM");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for f in ["vmlinux", "initrd.img"] {
        std::fs::write(dir.path().join(f), b"not read").unwrap();
    }
    std::fs::write(dir.path().join("cmdline"), "console=ttyS0\n").unwrap();
    let image = dir.path().to_str().unwrap();
    let line = one_line_error(&agentvm(&["boot", "--image", image], &[]));
    assert!(
        line.contains(&format!("KVM is PVM (nested virtualization without VT-x/AMD-V), and the guest image at {image} has a stock kernel")),
        "{line}"
    );
    assert!(
        line.contains("Supply a PVM guest kernel with --kernel"),
        "{line}"
    );
    assert!(line.contains("cargo demo"), "{line}");
}
