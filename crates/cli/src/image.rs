//! `agentvm image build`: the default guest image from Debian packages (and,
//! with `--rootfs`, its root file system with packages and agents);
//! `agentvm image list`/`prune`: the cached root file system layers; and
//! finding an image directory for `agentvm boot`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentvm_image::rootfs::{self, LayerKeys, Manifest, BUILTIN_AGENTS};
use agentvm_image::stamp::Stamp;
use agentvm_image::{
    debian, default_image_dir, files, is_static, own_kernel, which, BusyboxSource, Cache,
    GuestImage, KernelSource, OwnKernel, Recipe, Rootfs, RootfsRecipe,
};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::guest_agent::Agent;

/// Arguments of `agentvm image`.
#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Build the default guest image (Debian's cloud kernel, or agentvm's
    /// own with --kernel-build; busybox; the guest agent) into DIR:
    /// vmlinux, bzImage, initrd.img, cmdline.
    Build(BuildArgs),
    /// List the cached root file system layers (base, packages, agents)
    /// with their keys and sizes.
    List,
    /// Remove cached root file system layers that neither the image in the
    /// default directory nor the most recently built one uses.
    Prune(PruneArgs),
}

/// Arguments of `agentvm image prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Also keep the layers of the image in DIR (repeatable).
    #[arg(long, value_name = "DIR")]
    keep: Vec<PathBuf>,
}

/// Arguments of `agentvm image build`.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Where to write the image [default: $XDG_DATA_HOME/agentvm/images/default].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Take the kernel from this linux-image-*.deb instead of downloading
    /// linux-image-cloud-amd64 with apt.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel_build")]
    kernel_deb: Option<PathBuf>,
    /// Boot agentvm's own kernel instead of Debian's: built from
    /// linux-source-6.12 with guest/kernel/microvm.config, everything built
    /// in, so the guest loads no modules and reaches ready sooner. The
    /// first build takes about 9 minutes on two idle cores (it needs
    /// `linux-source-6.12` and a compiler; `scripts/setup --tests` installs
    /// them); later builds reuse it from ~/.cache/agentvm/kernel.
    #[arg(long)]
    kernel_build: bool,
    /// busybox to use: a static busybox binary or the busybox-static .deb
    /// [default: busybox-static through apt, else a static busybox on PATH].
    #[arg(long, value_name = "FILE")]
    busybox: Option<PathBuf>,
    /// The static guest agent (agentvm-guest) [default: the one built into
    /// this agentvm].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Also build the root file system (Debian 12 with the base tools, Node
    /// and the agents; minutes the first time, cached by layer after) into
    /// DIR/rootfs.erofs and DIR/rootfs.json. Implied by --package and --npm.
    #[arg(long)]
    rootfs: bool,
    /// An extra Debian package for the root file system (repeatable).
    #[arg(long = "package", value_name = "PKG")]
    packages: Vec<String>,
    /// An npm package installed globally in the root file system
    /// (repeatable) [default: the built-in agents' packages].
    #[arg(long = "npm", value_name = "PKG")]
    npm: Vec<String>,
}

/// The files `agentvm boot` takes from an image directory.
#[derive(Debug)]
pub struct ImageFiles {
    /// The image directory.
    pub dir: PathBuf,
    /// The vmlinux.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// Whether the image has a root file system ([`ROOTFS`]): the guest then
    /// boots into it (read-only, a writable layer above) instead of
    /// staying on the initramfs.
    pub has_rootfs: bool,
}

/// The image directory's root file system (erofs), shared read-only with
/// the guest, which loop-mounts it as its root.
pub const ROOTFS: &str = rootfs::files::EROFS;

/// The root file system the workspace's `packages` and `npm` (the agent
/// plugins' among them) ask for: built layer by layer on the first `up`
/// (minutes, with progress), found in the cache afterwards (the layers
/// whose inputs are unchanged are reused). `None` when it asks for none.
/// Returns the directory holding [`ROOTFS`].
pub fn workspace_rootfs(cfg: &crate::config::ResolvedConfig) -> anyhow::Result<Option<PathBuf>> {
    if cfg.packages.is_empty() && cfg.npm.is_empty() {
        return Ok(None);
    }
    let recipe = RootfsRecipe::new(cfg.packages.clone(), cfg.npm.clone());
    let cache = image_cache()?;
    let _lock = cache.lock().context("cannot lock the image build cache")?;
    let fs =
        Rootfs::build(&cache, &recipe, &mut *crate::progress::reporter()).with_context(|| {
            format!(
                "cannot build the guest's root file system (packages: {}; npm: {})",
                list_or_none(&cfg.packages),
                list_or_none(&cfg.npm)
            )
        })?;
    let built: Vec<String> = fs
        .timings
        .iter()
        .filter_map(|(kind, t)| t.map(|t| format!("{kind} {:.0} s", t.as_secs_f64())))
        .collect();
    if !built.is_empty() {
        eprintln!(
            "agentvm: built the guest's root file system ({}); later `up`s reuse it",
            built.join(", ")
        );
    }
    Ok(Some(fs.dir))
}

fn list_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(" ")
    }
}

/// The image in `dir`, or in the default directory.
pub fn load(dir: Option<&Path>) -> anyhow::Result<ImageFiles> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => default_dir()?,
    };
    let missing: Vec<&str> = [files::VMLINUX, files::INITRD, files::CMDLINE]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.len() == 3 {
        bail!(
            "no guest image at {}: run `agentvm image build{}`",
            dir.display(),
            if dir == default_dir()? {
                String::new()
            } else {
                format!(" --out {}", dir.display())
            }
        );
    }
    if !missing.is_empty() {
        bail!(
            "the guest image at {} lacks {}: run `agentvm image build` again",
            dir.display(),
            missing.join(", ")
        );
    }
    let cmdline_path = dir.join(files::CMDLINE);
    let cmdline = std::fs::read_to_string(&cmdline_path)
        .with_context(|| format!("cannot read {}", cmdline_path.display()))?;
    Ok(ImageFiles {
        kernel: dir.join(files::VMLINUX),
        dir: dir.clone(),
        initrd: dir.join(files::INITRD),
        cmdline: cmdline.trim().to_string(),
        has_rootfs: dir.join(ROOTFS).is_file(),
    })
}

fn default_dir() -> anyhow::Result<PathBuf> {
    default_image_dir()
        .context("neither XDG_DATA_HOME nor HOME is set: give the image directory with --image DIR")
}

/// Runs `agentvm image …`.
pub fn run(args: ImageArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ImageCommand::Build(b) => build(b),
        ImageCommand::List => list(),
        ImageCommand::Prune(p) => prune(p),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let out = match &args.out {
        Some(o) => o.clone(),
        None => default_dir()?,
    };
    let apt = debian::have_apt();
    let kernel = match &args.kernel_deb {
        Some(deb) => KernelSource::Deb(existing(deb, "--kernel-deb")?),
        None if args.kernel_build => KernelSource::Own(own_kernel()?),
        None if apt => KernelSource::Apt(agentvm_image::KERNEL_META.to_string()),
        None => bail!(
            "this host has no apt-get to download Debian's cloud kernel: pass --kernel-deb FILE \
             (a linux-image-*-cloud-amd64 .deb), or --kernel-build with AGENTVM_KERNEL_SRC \
             naming a Linux 6.12 tree, or boot an image directory made elsewhere \
             (e.g. by the Nix flake) with `agentvm boot --image DIR`"
        ),
    };
    let busybox = match &args.busybox {
        Some(b) if b.extension().is_some_and(|e| e == "deb") => {
            BusyboxSource::Deb(existing(b, "--busybox")?)
        }
        Some(b) => BusyboxSource::Binary(existing(b, "--busybox")?),
        None if apt => BusyboxSource::Apt,
        None => match static_busybox_on_path() {
            Some(b) => BusyboxSource::Binary(b),
            None => bail!(
                "this host has no apt-get to download busybox-static and no static busybox on \
                 PATH: pass --busybox FILE (a static busybox, or Debian's busybox-static .deb)"
            ),
        },
    };
    let agent = Agent::select(args.agent.as_deref())?;
    let mut recipe = Recipe::new(agent.path());
    recipe.kernel = kernel;
    recipe.busybox = busybox;

    let cache = image_cache()?;
    let _lock = cache.lock().context("cannot lock the image build cache")?;
    eprintln!(
        "agentvm: building the guest image (packages are cached in {})",
        cache.root().display()
    );
    let image = GuestImage::build_with(&cache, &recipe, &mut *crate::progress::reporter())
        .context("cannot build the guest image")?;
    image
        .install(&out)
        .with_context(|| format!("cannot write the image to {}", out.display()))?;
    // What `agentvm doctor` compares with what a build would make now.
    Stamp::of(&image, agent.path())
        .and_then(|s| s.write(&out))
        .with_context(|| format!("cannot write the image's stamp to {}", out.display()))?;
    // The installed copy is what boots; the cache keeps only the newest.
    cache.prune("image-", 1);
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| format!("{:.1} MB", m.len() as f64 / 1e6))
            .unwrap_or_else(|_| "?".into())
    };
    println!("guest image: {}", out.display());
    println!(
        "  kernel   {} ({} {}), vmlinux {}{}, bzImage {}",
        image.kernel.release,
        image.kernel.package,
        image.kernel.version,
        size(&image.vmlinux),
        if image.facts.pvh_entry.is_some() {
            " with PVH entry"
        } else {
            ""
        },
        size(&image.bzimage),
    );
    let modules = match image.kernel.debian {
        Some(_) => format!("{} modules", image.modules.load_order.len()),
        None => "no modules (all built in)".to_string(),
    };
    println!(
        "  initrd   {}: agent {}, busybox, {modules}",
        size(&image.initrd),
        agent.describe(),
    );
    if !image.modules.missing.is_empty() {
        println!("  not in this kernel: {}", image.modules.missing.join(", "));
    }
    println!("  cmdline  {}", image.cmdline);
    if args.rootfs || !args.packages.is_empty() || !args.npm.is_empty() {
        build_rootfs(&cache, &args, &out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The root file system: built (or found) layer by layer in the cache,
/// then linked into the image directory.
fn build_rootfs(cache: &Cache, args: &BuildArgs, out: &Path) -> anyhow::Result<()> {
    // In a workspace that asks for packages, what it asks for.
    let wanted = crate::config::load(Path::new("."))
        .ok()
        .filter(|c| c.file.is_some() && !(c.packages.is_empty() && c.npm.is_empty()));
    let (packages, npm) = match (&wanted, args.packages.is_empty() && args.npm.is_empty()) {
        (Some(cfg), true) => (cfg.packages.clone(), cfg.npm.clone()),
        _ if args.npm.is_empty() => (
            args.packages.clone(),
            BUILTIN_AGENTS.iter().map(|s| s.to_string()).collect(),
        ),
        _ => (args.packages.clone(), args.npm.clone()),
    };
    let recipe = RootfsRecipe::new(packages, npm);
    eprintln!("agentvm: building the root file system");
    let fs = Rootfs::build(cache, &recipe, &mut *crate::progress::reporter())
        .context("cannot build the root file system")?;
    fs.install(out)
        .with_context(|| format!("cannot write the root file system to {}", out.display()))?;
    let m = &fs.manifest;
    println!(
        "  rootfs   {} ({:.0} MB, tree {:.0} MB): Debian {} ({} packages), node {}, npm {}",
        rootfs::files::EROFS,
        m.erofs_bytes as f64 / 1e6,
        m.tree_bytes as f64 / 1e6,
        m.suite,
        m.debian.len(),
        m.node,
        m.npm_version
    );
    for (cmd, version) in &m.agents {
        println!("           {cmd}: {version}");
    }
    if !m.packages.is_empty() {
        println!("           packages: {}", m.packages.join(" "));
    }
    let timing: Vec<String> = fs
        .timings
        .iter()
        .map(|(kind, t)| match t {
            Some(t) => format!("{kind} {:.0} s", t.as_secs_f64()),
            None => format!("{kind} cached"),
        })
        .collect();
    println!("           layers: {}", timing.join(", "));
    Ok(())
}

/// agentvm's own kernel: the cached build, else built now (the build says
/// how long it takes before it starts).
fn own_kernel() -> anyhow::Result<OwnKernel> {
    let cache = Cache::from_env(own_kernel::CACHE_ENV, own_kernel::CACHE_DIR)
        .context("cannot create the kernel build cache")?;
    OwnKernel::build(
        &cache,
        &OwnKernel::source(),
        &mut *crate::progress::reporter(),
    )
    .context("cannot build agentvm's guest kernel")
}

fn image_cache() -> anyhow::Result<Cache> {
    Cache::from_env("AGENTVM_IMAGE_CACHE", "image-build")
        .context("cannot create the image build cache")
}

fn list() -> anyhow::Result<ExitCode> {
    let cache = image_cache()?;
    let layers = rootfs::list(&cache);
    if layers.is_empty() {
        println!(
            "no root file system layers in {} (agentvm image build --rootfs)",
            cache.root().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<9} {:<17} {:>9}  contents", "layer", "key", "size");
    for l in layers {
        let what = match &l.manifest {
            Some(m) => {
                let mut w = format!("node {}", m.node);
                if !m.npm.is_empty() {
                    let npm: Vec<String> = m.npm.iter().map(|(k, v)| format!("{k}@{v}")).collect();
                    w.push_str(&format!(", {}", npm.join(" ")));
                }
                if !m.packages.is_empty() {
                    w.push_str(&format!("; packages {}", m.packages.join(" ")));
                }
                w
            }
            None => String::new(),
        };
        println!(
            "{:<9} {:<17} {:>6.0} MB  {what}",
            l.kind,
            l.key,
            l.bytes as f64 / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let cache = image_cache()?;
    let _lock = cache.lock().context("cannot lock the image build cache")?;
    let mut keep: Vec<LayerKeys> = Vec::new();
    let dirs = default_image_dir().into_iter().chain(args.keep);
    for dir in dirs {
        let path = dir.join(rootfs::files::MANIFEST);
        if path.is_file() {
            keep.push(Manifest::read(&path)?.keys);
        }
    }
    let removed = rootfs::prune(&cache, 1, &keep);
    let bytes: u64 = removed.iter().map(|l| l.bytes).sum();
    for l in &removed {
        println!("removed {} layer {}", l.kind, l.key);
    }
    println!(
        "freed {:.0} MB in {}",
        bytes as f64 / 1e6,
        cache.root().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn existing(p: &Path, flag: &str) -> anyhow::Result<PathBuf> {
    if !p.is_file() {
        bail!("{flag} {} does not exist", p.display());
    }
    Ok(p.to_path_buf())
}

fn static_busybox_on_path() -> Option<PathBuf> {
    which("busybox").filter(|b| is_static(b).unwrap_or(false))
}
