//! agentvm's guest image, built from Debian packages without root, Nix or
//! a container: Debian's cloud kernel (its bzImage, and the vmlinux ELF
//! extracted from it, which carries the PVH entry note), and an initramfs
//! whose `/init` is the static guest agent, with busybox-static and the
//! kernel modules the VMM's devices need (virtio-mmio, vsock, virtio-fs,
//! overlay, …) in dependency order.
//!
//! Packages come through apt (`apt-get download`, no installation) or as
//! `.deb` files given by the caller; everything is cached by content in a
//! [`Cache`]. `agentvm image build` and the test rig both build their guest
//! with [`GuestImage::build`]:
//!
//! ```no_run
//! use agentvm_image::{Cache, GuestImage, Recipe};
//! # fn main() -> Result<(), agentvm_image::ImageError> {
//! let cache = Cache::from_env("AGENTVM_CACHE", "debian")?;
//! let _lock = cache.lock()?;
//! let image = GuestImage::build(&cache, &Recipe::new("target/agentvm-guest".as_ref()))?;
//! image.install("/tmp/agentvm-image".as_ref())?; // vmlinux bzImage initrd.img cmdline
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod archive;
pub mod cache;
pub mod cpio;
pub mod debian;
mod elf;
mod error;
pub mod image;
pub mod kernel;
pub mod lz4;
pub mod modules;
pub mod own_kernel;
pub mod progress;
pub mod rootfs;
pub mod stamp;

pub use archive::Initramfs;
pub use cache::{Cache, CacheLock, KeyHasher};
pub use debian::{DebPackage, DebianKernel};
pub use error::{on_path, run, which, ImageError};
pub use image::{
    files, is_static, layout, BusyboxSource, GuestImage, ImageKernel, KernelSource, Recipe,
    DEFAULT_CMDLINE, GUEST_MODULES, KERNEL_META, OWN_KERNEL_PACKAGE,
};
pub use own_kernel::OwnKernel;
pub use progress::{Event, Progress, Quiet};
pub use rootfs::{Rootfs, RootfsError, RootfsRecipe};

/// Where `agentvm` keeps its default guest image:
/// `$XDG_DATA_HOME/agentvm/images/default`, else
/// `~/.local/share/agentvm/images/default`; `None` without either variable.
pub fn default_image_dir() -> Option<std::path::PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    let data = match nonempty("XDG_DATA_HOME") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(nonempty("HOME")?).join(".local/share"),
    };
    Some(data.join("agentvm/images/default"))
}
