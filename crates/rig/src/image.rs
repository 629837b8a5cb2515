//! The rig's images, cached by content key. L2 is agentvm's default guest
//! image ([`GuestImage`]: Debian's cloud kernel, the guest agent as `/init`,
//! busybox, the modules) with a small overlay archive appended to its
//! initramfs: the rig's report init (`rdinit=/rig/init`, for the boot
//! scenarios that must print what the guest sees before anything else runs)
//! and, for the exec benchmark, dropbear on vsock port 22 (started by the
//! agent's startup script). L1 is the same kernel with
//! kvm-amd, busybox, the static agentvm, the L2 image, and the helpers a
//! scenario needs (virtiofsd, QEMU, the SSH client, tmux).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use agentvm_image::archive::shared_libraries;
use agentvm_image::{
    files, run, which, Cache, GuestImage, ImageError, ImageKernel, Initramfs, KeyHasher, Recipe,
};

/// Modules the L1 initramfs loads: KVM for the L2 VMM, fw_cfg for the
/// scenario script.
pub const L1_MODULES: &[&str] = &[
    "irqbypass",
    "kvm",
    "kvm_amd",
    "qemu_fw_cfg",
    // A scenario's read-only disk (large payloads such as a root file
    // system), /dev/vda.
    "virtio_pci",
    "virtio_blk",
];

/// QEMU firmware files a `-M microvm` boot reads (copied when present).
const QEMU_FIRMWARE: &[&str] = &[
    "bios-microvm.bin",
    "qboot.rom",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "pvh.bin",
];

/// Path of QEMU's firmware directory on the host.
pub const QEMU_DATADIR: &str = "/usr/share/qemu";

/// The rig's report init inside L2 (selected with `rdinit=`).
pub const RIG_INIT: &str = "/rig/init";
/// The vsock helper inside L2 (when the image carries the SSH peer).
pub const L2_VSOCK_HELPER: &str = "/rig/rig-vsock";
/// The dropbear server inside L2.
pub const L2_DROPBEAR: &str = "/usr/sbin/dropbear";
/// Dropbear's host key inside L2.
pub const L2_DROPBEAR_HOST_KEY: &str = "/etc/dropbear/dropbear_ed25519_host_key";
/// The vsock port dropbear serves in L2.
pub const L2_SSH_PORT: u32 = 22;
/// The agent's startup script that starts the SSH server.
const L2_SSHD_STARTUP: &str = "/etc/agentvm/startup.d/50-rig-sshd";

const L2_INIT: &str = include_str!("guest/l2-init.sh");
const L1_INIT: &str = include_str!("guest/l1-init.sh");

/// The SSH peer of the exec benchmark: Debian's dropbear (server in L2,
/// `dbclient` in L1) with a client key and a host key made for the rig.
#[derive(Debug, Clone)]
pub struct SshPeer {
    /// The dropbear server binary (dynamic; its libraries go along).
    pub dropbear: PathBuf,
    /// The dropbear client.
    pub dbclient: PathBuf,
    /// The client's private key (dropbear format).
    pub client_key: PathBuf,
    /// The client's public key line, for `authorized_keys`.
    pub client_pub: String,
    /// The server's host key (dropbear format).
    pub host_key: PathBuf,
}

impl SshPeer {
    /// Finds dropbear on this host (Debian's `dropbear-bin`) and makes the
    /// keys once; `Ok(None)` when it is not installed.
    pub fn find(cache: &Cache) -> Result<Option<Self>, ImageError> {
        let sbin = |p: &str| which(p).or_else(|| Some(Path::new("/usr/sbin").join(p)));
        let (Some(dropbear), Some(dbclient), Some(keygen)) = (
            sbin("dropbear").filter(|p| p.is_file()),
            which("dbclient"),
            which("dropbearkey"),
        ) else {
            return Ok(None);
        };
        let dir = cache.entry("ssh-keys-ed25519", |tmp| {
            for name in ["client", "host"] {
                run(
                    Command::new(&keygen)
                        .args(["-t", "ed25519", "-f"])
                        .arg(tmp.join(name)),
                    "dropbearkey",
                )?;
            }
            Ok(())
        })?;
        let client_key = dir.join("client");
        let out = run(
            Command::new(&keygen).arg("-y").arg("-f").arg(&client_key),
            "dropbearkey -y",
        )?;
        let client_pub = String::from_utf8_lossy(&out)
            .lines()
            .find(|l| l.starts_with("ssh-"))
            .unwrap_or_default()
            .to_string();
        Ok(Some(SshPeer {
            dropbear,
            dbclient,
            client_key,
            client_pub,
            host_key: dir.join("host"),
        }))
    }
}

/// tmux, for scenarios that drive `agentvm shell` on a real terminal: the
/// host's binary (dynamic; its libraries go along) and glibc's C.UTF-8
/// character map, without which tmux refuses to start ("need UTF-8
/// locale"). A detached session needs no terminfo entry: no client
/// terminal is ever attached.
#[derive(Debug, Clone)]
pub struct Tmux {
    /// The tmux binary.
    pub binary: PathBuf,
    /// `LC_CTYPE` of the C.UTF-8 locale, when the host has it as a file.
    pub locale: Option<PathBuf>,
}

impl Tmux {
    /// Where Debian's libc-bin keeps the C.UTF-8 character map.
    pub const LOCALE: &'static str = "/usr/lib/locale/C.utf8/LC_CTYPE";

    /// Finds tmux on this host; `None` when it is not installed.
    pub fn find() -> Option<Self> {
        let binary = which("tmux")?;
        let locale = Some(PathBuf::from(Self::LOCALE)).filter(|p| p.is_file());
        Some(Tmux { binary, locale })
    }

    /// Adds everything carried to `key`: the binary, its libraries and the
    /// locale file.
    fn add_to(&self, key: &mut KeyHasher) -> Result<(), ImageError> {
        key.add(b"tmux").add_file(&self.binary)?;
        for lib in shared_libraries(&self.binary)? {
            key.add_file(&lib)?;
        }
        if let Some(l) = &self.locale {
            key.add_file(l)?;
        }
        Ok(())
    }
}

/// What the L2 overlay carries besides the report init.
#[derive(Debug, Clone, Copy, Default)]
pub struct L2Extras<'a> {
    /// The static `rig-vsock` helper and the SSH peer, for the exec
    /// benchmark.
    pub ssh: Option<(&'a Path, &'a SshPeer)>,
}

/// The L2 guest: the default image, and the rig's copy of it with the
/// overlay appended, laid out as an image directory (`agentvm boot
/// --image DIR` boots it).
#[derive(Debug, Clone)]
pub struct L2Image {
    /// The default guest image, exactly as `agentvm image build` makes it.
    pub image: GuestImage,
    /// The rig's image directory: `vmlinux`, `bzImage` and `cmdline` as in
    /// the default image, `initrd.img` with the overlay appended.
    pub dir: PathBuf,
    /// The vmlinux (PVH entry).
    pub vmlinux: PathBuf,
    /// The bzImage.
    pub bzimage: PathBuf,
    /// The default initramfs with the overlay appended.
    pub initrd: PathBuf,
    /// The cache key.
    pub key: String,
}

impl L2Image {
    /// Builds (or finds in the cache) the L2 image around the static
    /// guest agent `agent`.
    pub fn build(cache: &Cache, agent: &Path, extras: &L2Extras<'_>) -> Result<Self, ImageError> {
        let image = GuestImage::build(cache, &Recipe::new(agent))?;
        let mut key = KeyHasher::default();
        key.add(image.key.as_bytes()).add(L2_INIT.as_bytes());
        if let Some((helper, ssh)) = extras.ssh {
            key.add_file(helper)?.add_file(&ssh.dropbear)?;
            key.add(ssh.client_pub.as_bytes());
        }
        let key = key.hex();
        let dir = cache.entry(&format!("l2-{key}"), |tmp| {
            let overlay = tmp.join("overlay.cpio");
            let mut a = Initramfs::create_empty(&overlay)?;
            a.bytes(RIG_INIT, 0o755, L2_INIT.as_bytes())?;
            if let Some((helper, ssh)) = extras.ssh {
                a.copy(L2_VSOCK_HELPER, 0o755, helper)?;
                a.binary_with_libs(L2_DROPBEAR, &ssh.dropbear)?;
                a.copy(L2_DROPBEAR_HOST_KEY, 0o600, &ssh.host_key)?;
                a.bytes(
                    "root/.ssh/authorized_keys",
                    0o600,
                    format!("{}\n", ssh.client_pub).as_bytes(),
                )?;
                a.bytes("etc/shells", 0o644, b"/bin/sh\n")?;
                let start = format!(
                    "#!/bin/sh\n# Started by the agent before it serves exec.\n\
                     setsid {L2_VSOCK_HELPER} listen {L2_SSH_PORT} -- {L2_DROPBEAR} -i -s -r \
                     {L2_DROPBEAR_HOST_KEY} </dev/null >/dev/null 2>&1 &\n"
                );
                a.bytes(L2_SSHD_STARTUP, 0o755, start.as_bytes())?;
            }
            a.finish()?;
            let mut initrd = fs::read(&image.initrd)
                .map_err(|e| ImageError::io("Cannot read", &image.initrd, e))?;
            initrd.extend(
                fs::read(&overlay).map_err(|e| ImageError::io("Cannot read", &overlay, e))?,
            );
            let path = tmp.join(files::INITRD);
            fs::write(&path, initrd).map_err(|e| ImageError::io("Cannot write", &path, e))?;
            for name in [files::VMLINUX, files::BZIMAGE, files::CMDLINE] {
                let link = tmp.join(name);
                std::os::unix::fs::symlink(image.dir.join(name), &link)
                    .map_err(|e| ImageError::io("Cannot link", &link, e))?;
            }
            Ok(())
        })?;
        // A new agent or init script makes a new image; keep the last two.
        cache.prune("l2-", 2);
        Ok(L2Image {
            vmlinux: dir.join(files::VMLINUX),
            bzimage: dir.join(files::BZIMAGE),
            initrd: dir.join(files::INITRD),
            dir,
            image,
            key,
        })
    }

    /// The kernel package.
    pub fn kernel(&self) -> &ImageKernel {
        &self.image.kernel
    }
}

/// What goes into an L1 image besides the fixed parts.
#[derive(Debug, Clone)]
pub struct L1Contents<'a> {
    /// The L2 image to carry.
    pub l2: &'a L2Image,
    /// The agentvm binary (static; a dynamic one gets its libraries copied).
    pub agentvm: &'a Path,
    /// The static `rig-stamp` helper.
    pub stamp: &'a Path,
    /// The static `rig-mock-llm` (the end-to-end agent test's API).
    pub mock_llm: &'a Path,
    /// A QEMU binary to carry with its libraries and microvm firmware.
    pub qemu: Option<&'a Path>,
    /// The vsock helper and the SSH client, for the exec benchmark.
    pub ssh: Option<(&'a Path, &'a SshPeer)>,
    /// virtiofsd, for boots with `--share` (carried with its libraries).
    pub virtiofsd: Option<&'a Path>,
    /// tmux, for scripts that drive `agentvm shell` on a terminal.
    pub tmux: Option<&'a Tmux>,
}

/// Where L1 keeps things (the scenario scripts use these paths).
pub mod l1_paths {
    /// The L2 image directory.
    pub const L2_DIR: &str = "/l2";
    /// agentvm.
    pub const AGENTVM: &str = "/bin/agentvm";
    /// rig-stamp.
    pub const STAMP: &str = "/bin/rig-stamp";
    /// rig-mock-llm.
    pub const MOCK_LLM: &str = "/bin/rig-mock-llm";
    /// The host's mke2fs (agentvm makes a persistent root layer with it).
    pub const MKE2FS: &str = "/bin/mke2fs";
    /// Where a scenario's disk is expected (`mount -o ro /dev/vda` there).
    pub const DISK_DIR: &str = "/disk";
    /// rig-vsock.
    pub const VSOCK_HELPER: &str = "/bin/rig-vsock";
    /// dbclient.
    pub const DBCLIENT: &str = "/bin/dbclient";
    /// The SSH client key.
    pub const SSH_KEY: &str = "/etc/rig/ssh_id";
    /// QEMU.
    pub const QEMU: &str = "/bin/qemu-system-x86_64";
    /// virtiofsd (on L1's `PATH`, where agentvm looks for it).
    pub const VIRTIOFSD: &str = "/bin/virtiofsd";
    /// tmux (on L1's `PATH`).
    pub const TMUX: &str = "/bin/tmux";
    /// Where vsock sockets go.
    pub const SOCK_DIR: &str = "/tmp";
}

/// The L1 image: an initramfs for the Debian kernel.
#[derive(Debug, Clone)]
pub struct L1Image {
    /// The kernel to boot L1 with (the same Debian bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The cache key.
    pub key: String,
}

impl L1Image {
    /// Builds (or finds in the cache) the L1 image for `c`.
    pub fn build(cache: &Cache, c: &L1Contents<'_>) -> Result<Self, ImageError> {
        // L1 boots the L2 image's kernel, with the modules KVM needs.
        let kernel = &c.l2.kernel();
        let debian = kernel
            .debian
            .as_ref()
            .ok_or_else(|| ImageError::NoModules(kernel.release.clone()))?;
        let modules = debian.modules()?.plan(L1_MODULES)?;
        if let Some(m) = modules.missing.first() {
            return Err(ImageError::MissingModule(m.clone()));
        }
        let mut key = KeyHasher::default();
        key.add(c.l2.key.as_bytes()).add(L1_INIT.as_bytes());
        key.add_file(c.agentvm)?
            .add_file(c.stamp)?
            .add_file(c.mock_llm)?;
        let mke2fs = which("mke2fs");
        if let Some(m) = &mke2fs {
            key.add_file(m)?;
        }
        if let Some(q) = c.qemu {
            key.add_file(q)?;
        }
        if let Some((helper, ssh)) = c.ssh {
            key.add_file(helper)?.add_file(&ssh.dbclient)?;
            key.add_file(&ssh.client_key)?;
        }
        if let Some(v) = c.virtiofsd {
            key.add_file(v)?;
        }
        if let Some(t) = c.tmux {
            t.add_to(&mut key)?;
        }
        let base = match (c.qemu.is_some(), c.ssh.is_some(), c.virtiofsd.is_some()) {
            (true, _, _) => "qemu",
            (false, true, _) => "ssh",
            (false, false, true) => "fs",
            (false, false, false) => "vmm",
        };
        // Its own prefix, so that pruning one variant never evicts the other.
        let variant = match c.tmux {
            Some(_) => format!("{base}+tmux"),
            None => base.to_string(),
        };
        let name = format!("l1-{variant}-{}", key.hex());
        let dir = cache.entry(&name, |tmp| {
            use l1_paths as p;
            let mut a = Initramfs::create(&tmp.join("initrd"))?;
            a.bytes("init", 0o755, L1_INIT.as_bytes())?;
            a.copy("bin/busybox", 0o755, &c.l2.image.busybox)?;
            // dbclient looks its user up.
            a.bytes("etc/passwd", 0o644, b"root:x:0:0:root:/tmp:/bin/sh\n")?;
            let order: Vec<&str> = modules.load_order.iter().map(|m| m.name.as_str()).collect();
            a.bytes(
                "etc/rig/modules",
                0o644,
                format!("{}\n", order.join("\n")).as_bytes(),
            )?;
            for m in &modules.load_order {
                a.bytes(&format!("lib/modules/{}.ko", m.name), 0o644, &m.read()?)?;
            }
            a.binary_with_libs(p::AGENTVM, c.agentvm)?;
            a.binary_with_libs(p::STAMP, c.stamp)?;
            a.binary_with_libs(p::MOCK_LLM, c.mock_llm)?;
            if let Some(m) = &mke2fs {
                a.binary_with_libs(p::MKE2FS, m)?;
            }
            for name in files::ALL {
                let dst = format!("{}/{name}", p::L2_DIR);
                a.copy(&dst, 0o644, &c.l2.dir.join(name))?;
            }
            if let Some(q) = c.qemu {
                a.binary_with_libs(p::QEMU, q)?;
                for fw in QEMU_FIRMWARE {
                    let src = Path::new(QEMU_DATADIR).join(fw);
                    if src.exists() {
                        a.copy(&format!("usr/share/qemu/{fw}"), 0o644, &src)?;
                    }
                }
            }
            if let Some((helper, ssh)) = c.ssh {
                a.copy(p::VSOCK_HELPER, 0o755, helper)?;
                a.binary_with_libs(p::DBCLIENT, &ssh.dbclient)?;
                a.copy(p::SSH_KEY, 0o600, &ssh.client_key)?;
            }
            if let Some(v) = c.virtiofsd {
                a.binary_with_libs(p::VIRTIOFSD, v)?;
            }
            if let Some(t) = c.tmux {
                a.binary_with_libs(p::TMUX, &t.binary)?;
                if let Some(l) = &t.locale {
                    a.copy(Tmux::LOCALE, 0o644, l)?;
                }
            }
            a.finish()
        })?;
        // Each new agentvm build makes a new L1 image; keep the last two.
        cache.prune(&format!("l1-{variant}-"), 2);
        Ok(L1Image {
            kernel: c.l2.bzimage.clone(),
            initrd: dir.join("initrd"),
            key: name,
        })
    }
}

/// A read-only ext4 disk image for L1 holding `files` (name on the disk,
/// host file), made without root by `mke2fs -d` and cached as `name` (which
/// must change with the files' contents: a content key).
pub fn disk_image(
    cache: &Cache,
    name: &str,
    files: &[(&str, &Path)],
) -> Result<PathBuf, ImageError> {
    let dir = cache.entry(name, |tmp| {
        let stage = tmp.join("stage");
        fs::create_dir_all(&stage).map_err(|e| ImageError::io("Cannot create", &stage, e))?;
        let mut bytes = 0u64;
        for (name, src) in files {
            let dst = stage.join(name);
            if let Some(dir) = dst.parent() {
                fs::create_dir_all(dir).map_err(|e| ImageError::io("Cannot create", dir, e))?;
            }
            // The file itself, not a link to a path L1 does not have.
            let src = fs::canonicalize(src).map_err(|e| ImageError::io("Cannot read", src, e))?;
            let mode = fs::metadata(&src)
                .map_err(|e| ImageError::io("Cannot read", &src, e))?
                .permissions()
                .mode();
            // Never setuid or setgid on the disk: L1 runs it as root, and
            // a set-id program ignores the library path its wrapper gives
            // (`Tools`).
            if mode & 0o6000 != 0 || fs::hard_link(&src, &dst).is_err() {
                fs::copy(&src, &dst).map_err(|e| ImageError::io("Cannot copy", &src, e))?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode & 0o777))
                    .map_err(|e| ImageError::io("Cannot change the mode of", &dst, e))?;
            }
            bytes += fs::metadata(&dst)
                .map_err(|e| ImageError::io("Cannot read", &dst, e))?
                .len();
        }
        // Room for ext4's own structures.
        let mib = bytes / 10 * 11 / (1 << 20) + 64;
        let mut cmd = Command::new("mke2fs");
        cmd.args(["-q", "-F", "-t", "ext4", "-L", "rigdisk", "-d"])
            .arg(&stage)
            .arg(tmp.join(DISK_FILE))
            .arg(format!("{mib}M"));
        agentvm_image::run(&mut cmd, "mke2fs (e2fsprogs)")?;
        fs::remove_dir_all(&stage).map_err(|e| ImageError::io("Cannot remove", &stage, e))
    })?;
    Ok(dir.join(DISK_FILE))
}

/// The image file in a [`disk_image`] cache entry.
const DISK_FILE: &str = "disk.img";
