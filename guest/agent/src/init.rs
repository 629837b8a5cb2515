//! PID 1 duties: file systems, console, kernel modules, host name, shares,
//! startup scripts, and powering off.
//!
//! Files the image provides (all optional):
//!
//! | path | content |
//! |---|---|
//! | `/etc/agentvm/modules` | kernel modules to load, in order, one per line: a path (absolute, or relative to `/lib/modules/<release>/`) then optional module parameters; `#` starts a comment. `.ko.xz`/`.ko.zst`/`.ko.gz` are handed to the kernel to decompress |
//! | `/etc/agentvm/startup.d/*` | executables run in name order, one after the other, before exec is served; their output goes to the console |

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmdline::{BootConfig, Share};
use crate::reaper::Reaper;

/// The module list the image writes.
pub const MODULES_FILE: &str = "/etc/agentvm/modules";
/// Startup scripts the image provides.
pub const STARTUP_DIR: &str = "/etc/agentvm/startup.d";

/// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses the module itself.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// Mounts the API file systems. Already-mounted ones are left as they are.
pub fn mount_basics() {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let table: &[(&str, &str, &str, MsFlags, Option<&str>)] = &[
        (
            "proc",
            "/proc",
            "proc",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666,gid=5"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid_nodev,
            Some("mode=1777"),
        ),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777")),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
    ];
    for (src, target, fstype, flags, data) in table {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(*src), *target, Some(*fstype), *flags, *data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(e) => crate::log!("cannot mount {fstype} on {target}: {e}"),
        }
    }
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(to, link);
    }
}

/// If the kernel started us without a console on fds 0–2 (an initramfs
/// without `/dev/console`), opens the devtmpfs one.
pub fn ensure_console() {
    if nix::fcntl::fcntl(std::io::stdout(), nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    let Ok(console) = File::options().read(true).write(true).open("/dev/console") else {
        return;
    };
    for target in 0..3 {
        // SAFETY: dup2 onto 0/1/2, which are closed (checked above) or ours.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&console), target) };
    }
}

/// Loads the modules listed in [`MODULES_FILE`]; each failure is logged and
/// skipped (a module built into the kernel reports "exists", which is fine).
pub fn load_modules() {
    let Ok(list) = std::fs::read_to_string(MODULES_FILE) else {
        return;
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let base = Path::new("/lib/modules").join(release.trim());
    for (path, params) in parse_module_list(&list) {
        let path = module_path(&base, &path);
        if let Err(e) = load_module(&path, &params) {
            crate::log!("cannot load module {}: {e}", path.display());
        }
    }
}

/// `path` if absolute, else under `base` (`/lib/modules/<release>`).
fn module_path(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

fn load_module(path: &Path, params: &str) -> nix::Result<()> {
    let file = File::open(path).map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let params = CString::new(params).map_err(|_| nix::Error::EINVAL)?;
    let name = path.to_string_lossy();
    let compressed = [".xz", ".zst", ".gz"].iter().any(|s| name.ends_with(s));
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(&file, &params, flags) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `(path, parameters)` per non-empty, non-comment line.
pub fn parse_module_list(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((p, params)) => (PathBuf::from(p), params.trim().to_owned()),
            None => (PathBuf::from(l), String::new()),
        })
        .collect()
}

/// Sets the host name and makes it resolve locally.
pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        crate::log!("cannot set host name: {e}");
    }
    let _ = std::fs::create_dir_all("/etc");
    match std::fs::read_to_string("/etc/hosts") {
        Err(_) => {
            let _ = std::fs::write(
                "/etc/hosts",
                format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost\n"),
            );
        }
        // A root file system's own file: add the name (sudo warns on every
        // command when the host name does not resolve).
        Ok(hosts) if !hosts_names(&hosts, name) => {
            let sep = if hosts.is_empty() || hosts.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            let _ = std::fs::write("/etc/hosts", format!("{hosts}{sep}127.0.1.1\t{name}\n"));
        }
        Ok(_) => {}
    }
}

/// Whether an `/etc/hosts` text maps some address to `name`.
fn hosts_names(hosts: &str, name: &str) -> bool {
    hosts.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.split_whitespace().skip(1).any(|n| n == name)
    })
}

/// Mounts the virtio-fs shares; retries briefly while the device probes.
pub fn mount_shares(cfg: &BootConfig) {
    for share in &cfg.shares {
        if let Err(e) = mount_share(share) {
            crate::log!(
                "cannot mount share {} on {}: {e}",
                share.tag,
                share.mount_point
            );
        }
    }
}

fn mount_share(share: &Share) -> nix::Result<()> {
    std::fs::create_dir_all(&share.mount_point)
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_virtiofs(
        &share.tag,
        Path::new(&share.mount_point),
        share.read_only,
        flags,
    )
}

/// The guest's [`ShareMounter`](crate::root::ShareMounter): virtio-fs.
pub struct VirtioFs;

impl crate::root::ShareMounter for VirtioFs {
    fn mount_share(&self, tag: &str, target: &Path, read_only: bool) -> nix::Result<()> {
        // The root's layers keep set-uid programs and device nodes working.
        mount_virtiofs(tag, target, read_only, MsFlags::empty())
    }
}

/// Mounts virtio-fs `tag` on `target`; retries for a second while the
/// device probes.
pub(crate) fn mount_virtiofs(
    tag: &str,
    target: &Path,
    read_only: bool,
    flags: MsFlags,
) -> nix::Result<()> {
    let mut flags = flags;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let mut last = nix::Error::ENODEV;
    for _ in 0..20 {
        match mount(Some(tag), target, Some("virtiofs"), flags, None::<&str>) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

/// Mounts a tmpfs on each of `dirs` (created if missing): mode 1777 like
/// `/tmp`, or owned by `owner` (mode 0700) when inside its home `home`.
pub fn mount_tmpfs(dirs: &[String], owner: Option<(&str, u32, u32)>) {
    for dir in dirs {
        let data = match owner {
            Some((home, uid, gid)) if Path::new(dir).starts_with(home) && home != "/" => {
                format!("mode=0700,uid={uid},gid={gid}")
            }
            _ => "mode=1777".to_owned(),
        };
        let _ = std::fs::create_dir_all(dir);
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if let Err(e) = mount(
            Some("tmpfs"),
            dir.as_str(),
            Some("tmpfs"),
            flags,
            Some(data.as_str()),
        ) {
            crate::log!("cannot mount a tmpfs on {dir}: {e}");
        }
    }
}

/// Runs the executables in [`STARTUP_DIR`] in name order, waiting for each.
pub fn run_startup(reaper: &Reaper) {
    let Ok(dir) = std::fs::read_dir(STARTUP_DIR) else {
        return;
    };
    let mut scripts: Vec<PathBuf> = dir
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .collect();
    scripts.sort();
    for script in scripts {
        let mut cmd = Command::new(&script);
        crate::spawn::with_default_signals(&mut cmd);
        cmd.stdin(Stdio::null())
            .env_clear()
            .env("PATH", crate::spawn::DEFAULT_PATH)
            .env("HOME", "/root")
            .current_dir("/");
        let status = reaper
            .spawn(&mut cmd)
            .and_then(|(_child, watch)| watch.wait());
        match status {
            Ok(agentvm_protocol::ExitStatus::Code(0)) => {}
            Ok(s) => crate::log!("{} failed: {s:?}", script.display()),
            Err(e) => crate::log!("cannot run {}: {e}", script.display()),
        }
    }
}

/// Stops every process, flushes file systems and powers off. Never returns.
pub fn power_off() -> ! {
    crate::log!("powering off");
    // From PID 1, pid -1 means every process but ourselves.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        // ESRCH: nothing left to signal.
        if kill(Pid::from_raw(-1), None).is_err() {
            break;
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    loop {
        let Err(e) = reboot(RebootMode::RB_POWER_OFF);
        crate::log!("poweroff failed: {e}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_names() {
        let hosts = "127.0.0.1 localhost\n# 1.2.3.4 box\n::1 localhost ip6-localhost\n";
        assert!(hosts_names(hosts, "localhost"));
        assert!(!hosts_names(hosts, "box"));
        assert!(!hosts_names(hosts, "127.0.0.1"));
        assert!(hosts_names("127.0.1.1\tbox\n", "box"));
    }

    #[test]
    fn module_list() {
        let list = "# comment\nkernel/drivers/virtio/virtio_mmio.ko\n\n\
                    /abs/vsock.ko.xz  \n fuse.ko max_user_bgreq=64 x=1 # tail\n";
        assert_eq!(
            parse_module_list(list),
            [
                (
                    PathBuf::from("kernel/drivers/virtio/virtio_mmio.ko"),
                    String::new()
                ),
                (PathBuf::from("/abs/vsock.ko.xz"), String::new()),
                (PathBuf::from("fuse.ko"), "max_user_bgreq=64 x=1".to_owned()),
            ]
        );
        let base = Path::new("/lib/modules/6.1");
        assert_eq!(
            module_path(base, Path::new("/abs/vsock.ko.xz")),
            Path::new("/abs/vsock.ko.xz")
        );
        assert_eq!(
            module_path(base, Path::new("kernel/fs/fuse/fuse.ko")),
            Path::new("/lib/modules/6.1/kernel/fs/fuse/fuse.ko")
        );
    }
}
