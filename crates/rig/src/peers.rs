//! What a benchmark or scenario brings into L1 beyond the rig's own image:
//! the peer VMMs it compares agentvm with (Firecracker, cloud-hypervisor),
//! found through environment variables and built by the user from their
//! public sources, and agentvm's own guest kernel ([`OwnKernel`]) with the
//! default image built around it ([`own_image`]).
//!
//! All of it travels on the scenario's read-only disk: that image
//! directory under [`OWN_KERNEL_DIR`], each peer as a program with its
//! libraries ([`Tools`]), callable as `/usr/bin/firecracker` and
//! `/usr/bin/cloud-hypervisor` once the boot's setup lines ran.

use std::path::{Path, PathBuf};

use agentvm_image::{
    files, own_kernel, BusyboxSource, Cache, GuestImage, ImageError, KernelSource, KeyHasher,
    OwnKernel, Progress, Recipe,
};

use crate::image::{disk_image, L2Image};
use crate::scenario::{Vmm, OWN_KERNEL_DIR};
use crate::tools::Tools;

/// A Firecracker binary for the benchmarks.
pub const PEER_FIRECRACKER_ENV: &str = "AGENTVM_BENCH_FIRECRACKER";
/// A cloud-hypervisor binary for the benchmarks.
pub const PEER_CLOUD_HYPERVISOR_ENV: &str = "AGENTVM_BENCH_CLOUD_HYPERVISOR";

/// The peer VMMs this run has.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// `(which, binary)` for each peer found.
    pub found: Vec<(Vmm, PathBuf)>,
    /// A line for each peer left out, saying why.
    pub skipped: Vec<String>,
}

impl Peers {
    /// The peers the environment names, each checked to be a file.
    pub fn from_env() -> Peers {
        Peers::from_lookup(|var| std::env::var_os(var))
    }

    /// The peers `lookup` (an environment) names.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> Peers {
        let mut peers = Peers::default();
        for (vmm, var) in [
            (Vmm::Firecracker, PEER_FIRECRACKER_ENV),
            (Vmm::CloudHypervisor, PEER_CLOUD_HYPERVISOR_ENV),
        ] {
            match lookup(var).filter(|v| !v.is_empty()) {
                Some(path) if Path::new(&path).is_file() => {
                    peers.found.push((vmm, PathBuf::from(path)));
                }
                Some(path) => peers.skipped.push(format!(
                    "{}: skipped, {var}={} is not a file",
                    vmm.name(),
                    Path::new(&path).display()
                )),
                None => peers.skipped.push(format!(
                    "{}: skipped, {var} is not set (build it from its public source and \
                     point {var} at the binary)",
                    vmm.name()
                )),
            }
        }
        peers
    }

    /// The VMMs found.
    pub fn vmms(&self) -> Vec<Vmm> {
        self.found.iter().map(|(v, _)| *v).collect()
    }

    /// The peers as programs for the disk, under the names
    /// [`crate::BootPaths::in_l1`] calls them by.
    pub fn tools(&self) -> Tools {
        self.found.iter().fold(Tools::new(), |t, (vmm, path)| {
            let name = match vmm {
                Vmm::Firecracker => "firecracker",
                _ => "cloud-hypervisor",
            };
            t.program(name, path)
        })
    }
}

/// agentvm's own kernel, built when the kernel cache lacks it (minutes).
pub fn own_kernel(progress: &mut dyn Progress) -> Result<OwnKernel, ImageError> {
    let cache = Cache::from_env(own_kernel::CACHE_ENV, own_kernel::CACHE_DIR)?;
    OwnKernel::build(&cache, &OwnKernel::source(), progress)
}

/// The default image as `agentvm image build --kernel-build` makes it:
/// agentvm's own kernel (built when the kernel cache lacks it: minutes),
/// the L2 image's guest agent `agent` and busybox, no modules. Cached in
/// the rig's cache, apart from the L2 image's.
pub fn own_image(
    rig_cache: &Cache,
    l2: &L2Image,
    agent: &Path,
    progress: &mut dyn Progress,
) -> Result<GuestImage, ImageError> {
    let kernel = self::own_kernel(progress)?;
    let cache = Cache::at(rig_cache.root().join("own-image"))?;
    let mut recipe = Recipe::new(agent);
    recipe.kernel = KernelSource::Own(kernel);
    recipe.busybox = BusyboxSource::Binary(l2.image.busybox.clone());
    GuestImage::build(&cache, &recipe)
}

/// A disk with the own-kernel image (when given, under
/// [`OWN_KERNEL_DIR`]) and `tools`, cached in the rig's cache by content.
pub fn disk(cache: &Cache, own: Option<&GuestImage>, tools: &Tools) -> Result<PathBuf, ImageError> {
    let tool_files = tools.disk_files()?;
    let mut files: Vec<(String, PathBuf)> = tool_files;
    if let Some(image) = own {
        for name in files::ALL {
            files.push((format!("{OWN_KERNEL_DIR}/{name}"), image.dir.join(name)));
        }
    }
    let mut key = KeyHasher::default();
    key.add(b"rig-peers-1");
    for (name, path) in &files {
        key.add(name.as_bytes());
        key.add_file(path)?;
    }
    let refs: Vec<(&str, &Path)> = files
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let disk = disk_image(cache, &format!("disk-peers-{}", key.hex()), &refs)?;
    cache.prune("disk-peers-", 2);
    Ok(disk)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn peers_come_from_the_environment_or_are_skipped_with_a_reason() {
        let env = |var: &str| match var {
            PEER_FIRECRACKER_ENV => Some("/bin/sh".into()),
            PEER_CLOUD_HYPERVISOR_ENV => Some("/nonexistent/cloud-hypervisor".into()),
            _ => None,
        };
        let p = Peers::from_lookup(env);
        assert_eq!(p.vmms(), [Vmm::Firecracker]);
        assert_eq!(p.skipped.len(), 1);
        assert!(p.skipped[0].contains("is not a file"), "{:?}", p.skipped);
        let setup = p.tools().l1_setup();
        assert!(setup.contains("> /usr/bin/firecracker\n"), "{setup}");
        let p = Peers::from_lookup(|_| None);
        assert!(p.found.is_empty());
        assert!(p.skipped.iter().all(|s| s.contains("is not set")));
    }
}
