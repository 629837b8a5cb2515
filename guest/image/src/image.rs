//! The default guest image: Debian's cloud kernel (bzImage, and the vmlinux
//! extracted from it), an initramfs whose `/init` is the static agentvm
//! guest agent with busybox and the virtio/vsock/fuse/overlay/loop/erofs/ext4
//! modules beside it, and the default kernel command line. With agentvm's
//! own kernel ([`KernelSource::Own`]) everything is built in and the
//! initramfs carries no modules.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::archive::Initramfs;
use crate::cache::{Cache, KeyHasher};
use crate::debian::{self, DebPackage, DebianKernel};
use crate::elf::Elf64;
use crate::error::ImageError;
use crate::kernel::{self, Compression, KernelFacts};
use crate::modules::ModulePlan;
use crate::own_kernel::OwnKernel;
use crate::progress::{Event, Progress, Quiet};

/// The kernel metapackage images are built from.
pub const KERNEL_META: &str = "linux-image-cloud-amd64";
/// Where busybox comes from.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Modules the image carries and the agent loads at boot (those that exist;
/// dependencies are added, in load order).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_rng",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_balloon",
    "fuse",
    "virtiofs",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "overlay",
    // The read-only root (`agentvm.rootfs`): an erofs image on a loop device.
    "loop",
    "erofs",
    // The persistent writable layer (`agentvm.upper=TAG`): an ext4 image.
    // crc32c for ext4 images made with metadata checksums (the kernel asks
    // for the algorithm through modprobe, which the initramfs does not have).
    "crc32c_generic",
    "ext4",
    "pvpanic",
    "pvpanic_mmio",
];

/// Modules without which the image is useless: device discovery and the
/// agent's vsock.
pub const REQUIRED_MODULES: &[&str] = &["virtio_mmio", "vmw_vsock_virtio_transport"];

/// The kernel command line images boot with: serial console, reboot on a
/// triple fault, panic → reset after 1 s, no PCI probing, quiet.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet";

/// The image's files, as `agentvm image build` writes them and
/// `agentvm boot --image` reads them.
pub mod files {
    /// The vmlinux ELF (PVH entry), what `agentvm boot` boots.
    pub const VMLINUX: &str = "vmlinux";
    /// The kernel's bzImage, for VMMs that want one.
    pub const BZIMAGE: &str = "bzImage";
    /// The initramfs (uncompressed newc cpio).
    pub const INITRD: &str = "initrd.img";
    /// The kernel command line, one line.
    pub const CMDLINE: &str = "cmdline";
    /// Every file of an image directory.
    pub const ALL: [&str; 4] = [VMLINUX, BZIMAGE, INITRD, CMDLINE];
}

/// Where the agent finds things in the initramfs.
pub mod layout {
    /// The agent is PID 1.
    pub const INIT: &str = "init";
    /// Module files: `<dir>/<name>.ko`.
    pub const MODULE_DIR: &str = "lib/modules";
    /// The modules to load, one path per line, dependencies first.
    pub const MODULE_LIST: &str = "etc/agentvm/modules";
    /// busybox; every applet is a symbolic link to it.
    pub const BUSYBOX: &str = "bin/busybox";
}

/// Bumped when the initramfs layout changes, so cached images are rebuilt.
pub(crate) const LAYOUT_VERSION: &str = "agentvm-image-1";

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// The package a metapackage (e.g. [`KERNEL_META`]) depends on, through apt.
    Apt(String),
    /// A `linux-image-<release>` `.deb` file.
    Deb(PathBuf),
    /// agentvm's own kernel, built ([`OwnKernel::build`]): no modules.
    Own(OwnKernel),
}

/// What [`ImageKernel::package`] says for agentvm's own kernel.
pub const OWN_KERNEL_PACKAGE: &str = "agentvm guest kernel";

/// The kernel an image boots.
#[derive(Debug, Clone)]
pub struct ImageKernel {
    /// `uname -r` (`6.1.0-41-cloud-amd64`, `6.12.118`).
    pub release: String,
    /// The Debian package it came from, or [`OWN_KERNEL_PACKAGE`].
    pub package: String,
    /// The package's version, or the own kernel's cache entry
    /// (`guest-kernel-<key>`), which names the fragment and source.
    pub version: String,
    /// Its bzImage.
    pub bzimage: PathBuf,
    /// The Debian package, whose modules the image carries; `None` for
    /// agentvm's own kernel, which has everything built in.
    pub debian: Option<DebianKernel>,
}

impl ImageKernel {
    fn debian(k: DebianKernel) -> Self {
        ImageKernel {
            release: k.release.clone(),
            package: k.package.name.clone(),
            version: k.package.version.clone(),
            bzimage: k.bzimage.clone(),
            debian: Some(k),
        }
    }

    fn own(k: &OwnKernel) -> Result<Self, ImageError> {
        let bzimage = k.bzimage();
        let bz = fs::read(&bzimage).map_err(|e| ImageError::io("Cannot read", &bzimage, e))?;
        let release = kernel::release(&bz).ok_or_else(|| ImageError::Kernel {
            path: bzimage.clone(),
            source: kernel::KernelError::NotBzImage,
        })?;
        let version = k
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(ImageKernel {
            release,
            package: OWN_KERNEL_PACKAGE.to_string(),
            version,
            bzimage,
            debian: None,
        })
    }
}

/// Where busybox comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusyboxSource {
    /// [`BUSYBOX_PACKAGE`] through apt.
    Apt,
    /// A `busybox-static` `.deb` file.
    Deb(PathBuf),
    /// A static busybox binary.
    Binary(PathBuf),
}

/// What goes into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The kernel.
    pub kernel: KernelSource,
    /// busybox.
    pub busybox: BusyboxSource,
    /// The static `agentvm-guest` binary, installed as `/init`.
    pub agent: PathBuf,
    /// Modules to carry and load (dependencies are added).
    pub modules: Vec<String>,
    /// The kernel command line written to `cmdline`.
    pub cmdline: String,
}

impl Recipe {
    /// The default image around `agent`: the cloud kernel and busybox
    /// through apt, [`GUEST_MODULES`], [`DEFAULT_CMDLINE`].
    pub fn new(agent: &Path) -> Self {
        Recipe {
            kernel: KernelSource::Apt(KERNEL_META.to_string()),
            busybox: BusyboxSource::Apt,
            agent: agent.to_path_buf(),
            modules: GUEST_MODULES.iter().map(|m| m.to_string()).collect(),
            cmdline: DEFAULT_CMDLINE.to_string(),
        }
    }
}

/// A built image, in the cache.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The cache directory holding the files.
    pub dir: PathBuf,
    /// The vmlinux extracted from the bzImage.
    pub vmlinux: PathBuf,
    /// The kernel's bzImage.
    pub bzimage: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line (also in `dir/cmdline`).
    pub cmdline: String,
    /// What the kernel image looks like.
    pub facts: KernelFacts,
    /// Which modules the image loads, which are built in, which do not
    /// exist (none of any with agentvm's own kernel).
    pub modules: ModulePlan,
    /// The kernel.
    pub kernel: ImageKernel,
    /// The busybox binary the image carries.
    pub busybox: PathBuf,
    /// The busybox package, when it came from one.
    pub busybox_package: Option<DebPackage>,
    /// The cache key.
    pub key: String,
}

impl GuestImage {
    /// Builds the image `recipe` describes, or finds it in `cache`.
    pub fn build(cache: &Cache, recipe: &Recipe) -> Result<Self, ImageError> {
        Self::build_with(cache, recipe, &mut Quiet)
    }

    /// [`GuestImage::build`], telling `progress` of the downloads and of
    /// writing the image.
    pub fn build_with(
        cache: &Cache,
        recipe: &Recipe,
        progress: &mut dyn Progress,
    ) -> Result<Self, ImageError> {
        if !is_static(&recipe.agent)? {
            return Err(ImageError::NotStatic(recipe.agent.clone()));
        }
        let kernel = match &recipe.kernel {
            KernelSource::Apt(meta) => {
                ImageKernel::debian(DebianKernel::fetch(cache, meta, progress)?)
            }
            KernelSource::Deb(deb) => ImageKernel::debian(DebianKernel::from_deb(cache, deb)?),
            KernelSource::Own(own) => ImageKernel::own(own)?,
        };
        let (busybox, busybox_package) = match &recipe.busybox {
            BusyboxSource::Apt => {
                let p = debian::fetch(cache, BUSYBOX_PACKAGE, progress)?;
                (p.root.join("bin/busybox"), Some(p))
            }
            BusyboxSource::Deb(deb) => {
                let p = debian::open_deb(cache, deb)?;
                (p.root.join("bin/busybox"), Some(p))
            }
            BusyboxSource::Binary(b) => (b.clone(), None),
        };
        if !is_static(&busybox)? {
            return Err(ImageError::NotStatic(busybox));
        }
        // Our own kernel has every module's code built in
        // (guest/kernel/required-options.txt): it loads nothing.
        let modules = match &kernel.debian {
            Some(debian) => {
                let wanted: Vec<&str> = recipe.modules.iter().map(String::as_str).collect();
                let modules = debian.modules()?.plan(&wanted)?;
                for needed in REQUIRED_MODULES {
                    if modules.missing.iter().any(|m| m == needed) {
                        return Err(ImageError::MissingModule(needed.to_string()));
                    }
                }
                modules
            }
            None => ModulePlan::default(),
        };
        let mut key = KeyHasher::default();
        key.add(LAYOUT_VERSION.as_bytes())
            .add(kernel.package.as_bytes())
            .add(kernel.version.as_bytes())
            .add(kernel.release.as_bytes())
            .add(recipe.cmdline.as_bytes());
        key.add_file(&busybox)?.add_file(&recipe.agent)?;
        for m in &modules.load_order {
            key.add(m.name.as_bytes());
        }
        let key = key.hex();
        let name = format!("image-{key}");
        if cache.root().join(&name).is_dir() {
            progress.event(Event::Cached(&format!("guest image {}", &key)));
        }
        let dir = cache.entry(&name, |tmp| {
            progress.event(Event::Start(&format!(
                "writing the guest image (kernel {}, {} modules)",
                kernel.release,
                modules.load_order.len()
            )));
            let start = Instant::now();
            let bz = fs::read(&kernel.bzimage)
                .map_err(|e| ImageError::io("Cannot read", &kernel.bzimage, e))?;
            let (vmlinux, facts) =
                kernel::extract_vmlinux(&bz).map_err(|source| ImageError::Kernel {
                    path: kernel.bzimage.clone(),
                    source,
                })?;
            write(&tmp.join(files::VMLINUX), &vmlinux)?;
            write(&tmp.join(files::BZIMAGE), &bz)?;
            write(&tmp.join("facts"), facts_to_text(&facts).as_bytes())?;
            write(
                &tmp.join(files::CMDLINE),
                format!("{}\n", recipe.cmdline).as_bytes(),
            )?;
            write_initramfs(&tmp.join(files::INITRD), recipe, &busybox, &modules)?;
            progress.event(Event::Done(start.elapsed()));
            Ok(())
        })?;
        // A new kernel or agent makes a new image; keep the last two.
        cache.prune("image-", 2);
        let facts_path = dir.join("facts");
        let text = fs::read_to_string(&facts_path)
            .map_err(|e| ImageError::io("Cannot read", &facts_path, e))?;
        let facts = facts_from_text(&text).ok_or(ImageError::BadFacts(facts_path))?;
        Ok(GuestImage {
            vmlinux: dir.join(files::VMLINUX),
            bzimage: dir.join(files::BZIMAGE),
            initrd: dir.join(files::INITRD),
            cmdline: recipe.cmdline.clone(),
            dir,
            facts,
            modules,
            kernel,
            busybox,
            busybox_package,
            key,
        })
    }

    /// Copies the image's files into `out` (created if needed); each file
    /// is replaced whole, so a VM booting the old image never reads a
    /// half-written one.
    pub fn install(&self, out: &Path) -> Result<(), ImageError> {
        fs::create_dir_all(out).map_err(|e| ImageError::io("Cannot create", out, e))?;
        for name in files::ALL {
            let src = self.dir.join(name);
            let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
            fs::copy(&src, &tmp).map_err(|e| ImageError::io("Cannot write", &tmp, e))?;
            let dst = out.join(name);
            fs::rename(&tmp, &dst).map_err(|e| ImageError::io("Cannot write", &dst, e))?;
        }
        Ok(())
    }
}

/// The initramfs: the agent as `/init`, busybox and its applet links, the
/// modules and their load list, and a root account.
fn write_initramfs(
    path: &Path,
    recipe: &Recipe,
    busybox: &Path,
    modules: &ModulePlan,
) -> Result<(), ImageError> {
    let mut a = Initramfs::create(path)?;
    a.copy(layout::INIT, 0o755, &recipe.agent)?;
    a.copy(layout::BUSYBOX, 0o755, busybox)?;
    for applet in busybox_applets(busybox)? {
        if !a.has(&applet) {
            a.symlink(&applet, "/bin/busybox")?;
        }
    }
    let mut list = String::new();
    for m in &modules.load_order {
        let name = format!("{}/{}.ko", layout::MODULE_DIR, m.name);
        a.bytes(&name, 0o644, &m.read()?)?;
        list.push('/');
        list.push_str(&name);
        list.push('\n');
    }
    a.bytes(layout::MODULE_LIST, 0o644, list.as_bytes())?;
    a.bytes("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    a.bytes("etc/group", 0o644, b"root:x:0:\n")?;
    a.dir("root")?;
    for d in ["run", "mnt", "var/tmp", "usr/bin", "usr/sbin", "sbin"] {
        a.dir(d)?;
    }
    a.finish()
}

/// Applet paths (`bin/sh`, `sbin/insmod`, `usr/bin/env`, …) from
/// `busybox --list-full`. The image is x86_64, like the hosts that build it;
/// where busybox cannot run here, the shells and tools the agent and the
/// tests use are linked at least.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let listed = Command::new(busybox)
        .arg("--list-full")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    Ok(match listed {
        Some(text) => text
            .lines()
            .map(|l| l.trim().trim_start_matches('/').to_string())
            .filter(|l| !l.is_empty() && !l.contains(".."))
            .collect(),
        None => [
            "sh", "ash", "cat", "echo", "ls", "mount", "uname", "true", "false", "insmod",
            "poweroff", "sleep", "ps", "kill", "env", "id",
        ]
        .iter()
        .map(|a| format!("bin/{a}"))
        .collect(),
    })
}

/// Whether `path` is an ELF executable that needs no dynamic loader.
pub fn is_static(path: &Path) -> Result<bool, ImageError> {
    let data = fs::read(path).map_err(|e| ImageError::io("Cannot read", path, e))?;
    Ok(Elf64::parse(&data).is_some_and(|e| e.is_static()))
}

fn write(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    fs::write(path, data).map_err(|e| ImageError::io("Cannot write", path, e))
}

fn facts_to_text(f: &KernelFacts) -> String {
    format!(
        "boot_protocol={:#x}\ncompression={}\nbzimage_bytes={}\nvmlinux_bytes={}\npvh_entry={}\n",
        f.boot_protocol,
        f.compression.name(),
        f.bzimage_bytes,
        f.vmlinux_bytes,
        f.pvh_entry
            .map(|e| format!("{e:#x}"))
            .unwrap_or_else(|| "none".into())
    )
}

fn facts_from_text(text: &str) -> Option<KernelFacts> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
    };
    let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let compression = [
        Compression::Gzip,
        Compression::Bzip2,
        Compression::Lzma,
        Compression::Xz,
        Compression::Lzo,
        Compression::Lz4,
        Compression::Zstd,
    ]
    .into_iter()
    .find(|c| Some(c.name()) == get("compression"))?;
    Some(KernelFacts {
        boot_protocol: u16::try_from(hex(get("boot_protocol")?)?).ok()?,
        compression,
        bzimage_bytes: get("bzimage_bytes")?.parse().ok()?,
        vmlinux_bytes: get("vmlinux_bytes")?.parse().ok()?,
        pvh_entry: match get("pvh_entry")? {
            "none" => None,
            e => Some(hex(e)?),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn facts_round_trip() {
        let f = KernelFacts {
            boot_protocol: 0x20f,
            compression: Compression::Lz4,
            bzimage_bytes: 14_186_432,
            vmlinux_bytes: 53_000_000,
            pvh_entry: Some(0x0100_0abc),
        };
        assert_eq!(facts_from_text(&facts_to_text(&f)), Some(f.clone()));
        let none = KernelFacts {
            pvh_entry: None,
            ..f
        };
        assert_eq!(facts_from_text(&facts_to_text(&none)), Some(none));
        assert_eq!(facts_from_text("compression=lz4\n"), None);
    }

    #[test]
    fn static_binaries_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("t");
        fs::write(&text, b"#!/bin/sh\n").unwrap();
        assert!(!is_static(&text).unwrap());
        // An ELF64 with one program header: PT_LOAD (static), PT_INTERP (dynamic).
        let elf = |p_type: u32| {
            let mut f = vec![0u8; 64 + 56];
            f[..6].copy_from_slice(b"\x7fELF\x02\x01");
            f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            f[64..68].copy_from_slice(&p_type.to_le_bytes());
            f
        };
        let st = dir.path().join("static");
        fs::write(&st, elf(1)).unwrap();
        assert!(is_static(&st).unwrap());
        let dy = dir.path().join("dynamic");
        fs::write(&dy, elf(3)).unwrap();
        assert!(!is_static(&dy).unwrap());
        assert!(is_static(&dir.path().join("missing")).is_err());
    }

    /// The initramfs has the agent as /init, busybox with its applet
    /// links, the modules and the list naming them in order.
    #[test]
    fn initramfs_layout() {
        use crate::modules::Module;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bb = dir.path().join("busybox");
        fs::write(
            &bb,
            "#!/bin/sh\necho /bin/sh; echo /sbin/insmod; echo usr/bin/env\n",
        )
        .unwrap();
        fs::set_permissions(&bb, fs::Permissions::from_mode(0o755)).unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"AGENT-BINARY").unwrap();
        let ko = |n: &str| {
            let p = dir.path().join(format!("{n}.ko"));
            fs::write(&p, format!("\x7fELF-{n}")).unwrap();
            Module {
                name: n.into(),
                path: p,
            }
        };
        let plan = ModulePlan {
            load_order: vec![ko("virtio_ring"), ko("virtio")],
            ..Default::default()
        };
        let out = dir.path().join("initrd.img");
        write_initramfs(&out, &Recipe::new(&agent), &bb, &plan).unwrap();
        let listing = Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&out)
            .output();
        let raw = String::from_utf8_lossy(&fs::read(&out).unwrap()).to_string();
        // "init", NUL, padding to 4 bytes, then the contents.
        assert!(raw.contains("init\0\0AGENT-BINARY"));
        assert!(raw.contains("/lib/modules/virtio_ring.ko\n/lib/modules/virtio.ko\n"));
        assert!(raw.contains("etc/agentvm/modules\0"));
        let Ok(listing) = listing else {
            eprintln!("skipped the cpio listing: no cpio tool");
            return;
        };
        let text = String::from_utf8_lossy(&listing.stdout);
        for want in [
            "bin/sh -> /bin/busybox",
            "sbin/insmod -> /bin/busybox",
            "usr/bin/env -> /bin/busybox",
            " init",
            " lib/modules/virtio.ko",
            " dev/console",
            " etc/passwd",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn recipe_defaults() {
        let r = Recipe::new(Path::new("/a/agentvm-guest"));
        assert_eq!(r.kernel, KernelSource::Apt(KERNEL_META.into()));
        assert_eq!(r.busybox, BusyboxSource::Apt);
        assert!(r.modules.iter().any(|m| m == "vmw_vsock_virtio_transport"));
        for m in ["overlay", "loop", "erofs", "ext4"] {
            assert!(r.modules.iter().any(|x| x == m), "{m}");
        }
        assert!(r.cmdline.starts_with("console=ttyS0"));
    }
}
