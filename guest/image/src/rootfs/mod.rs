//! The guest's root file system: Debian 12 with the tools an agent expects,
//! Node and npm, the caller's Debian packages and the agents' npm packages,
//! as one read-only erofs image (`rootfs.erofs`) with a manifest
//! (`rootfs.json`).
//!
//! Built in three layers, each cached by content so that a changed input
//! rebuilds only its layer and the ones above it:
//! 1. **base** (`rootfs-base-<key>/layer.tar`): [`BASE_PACKAGES`] by
//!    mmdebstrap; key = suite, mirrors, package set, dpkg excludes,
//!    mmdebstrap version;
//! 2. **packages** (`rootfs-packages-<key>/layer.tar`): the caller's Debian
//!    packages on top (the base tar itself when there are none); key = base
//!    key + sorted package list;
//! 3. **agents** (`rootfs-agents-<key>/{rootfs.erofs,rootfs.json}`): Node
//!    and npm in `/usr/local`, the npm packages installed globally with
//!    them (`/usr/local/bin/claude`, …), and the image; key = packages key
//!    + sorted npm list + Node and npm versions.
//!
//! See [`mmdebstrap`] for how each layer is made and why.
//!
//! ```no_run
//! use agentvm_image::{rootfs::{Rootfs, RootfsRecipe}, Cache};
//! # fn main() -> Result<(), agentvm_image::ImageError> {
//! let cache = Cache::from_env("AGENTVM_IMAGE_CACHE", "image-build")?;
//! let _lock = cache.lock()?;
//! let recipe = RootfsRecipe::new(vec!["htop".into()], vec!["@openai/codex".into()]);
//! let rootfs = Rootfs::build(&cache, &recipe, &mut |line: &str| eprintln!("{line}"))?;
//! rootfs.install("/tmp/agentvm-image".as_ref())?; // rootfs.erofs rootfs.json
//! # Ok(()) }
//! ```

pub mod manifest;
pub mod mmdebstrap;
pub mod node;
mod run;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cache::{Cache, KeyHasher};
use crate::error::{on_path, ImageError};
use crate::progress::{Event, Progress};
pub use manifest::Manifest;
pub use mmdebstrap::{Mode, BASE_PACKAGES, SUITE};
pub use node::{BUILTIN_AGENTS, NODE, NPM};
pub use run::detect_mode;

/// The files a root file system adds to an image directory.
pub mod files {
    /// The erofs image (LZ4HC).
    pub const EROFS: &str = "rootfs.erofs";
    /// Its [`Manifest`](super::Manifest), JSON.
    pub const MANIFEST: &str = "rootfs.json";
}

/// Bumped when the layers' contents change for reasons the keys do not see
/// (a hook changed), so that cached layers are rebuilt.
const LAYOUT_VERSION: &str = "agentvm-rootfs-1";

/// Why a root file system cannot be built here, said so a user can act.
#[derive(Debug, Error)]
pub enum RootfsError {
    /// A host tool is missing.
    #[error("{tool} is not installed: {hint}")]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// How to get it.
        hint: String,
    },
    /// `--mode=unshare` needs a subordinate id range for the user.
    #[error(
        "User {user} has no subordinate {kind} range in /etc/{kind}: add one (as root: usermod \
         --add-subuids 100000-165535 --add-subgids 100000-165535 {user}), or build as root"
    )]
    NoSubordinateIds {
        /// The user name.
        user: String,
        /// `subuid` or `subgid`.
        kind: &'static str,
    },
    /// The kernel refuses user namespaces to this user.
    #[error(
        "Cannot create a user namespace ({0}): allow them (sysctl kernel.unprivileged_userns_clone=1 \
         or kernel.apparmor_restrict_unprivileged_userns=0), or build as root"
    )]
    NoUserNamespaces(String),
    /// A download does not have its pinned checksum.
    #[error("{url} has SHA-512 {got}, expected {expected}")]
    Checksum {
        /// What was downloaded.
        url: String,
        /// The pinned hash.
        expected: String,
        /// The hash of what arrived.
        got: String,
    },
    /// A package name could be read as an option or shell syntax.
    #[error("Invalid {kind} package name {name:?}")]
    BadPackage {
        /// `Debian` or `npm`.
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// An agent's command did not answer `--version` after the install.
    #[error("{0} was installed but does not run (`{0} --version` failed in the image)")]
    AgentBroken(String),
    /// A manifest cannot be parsed.
    #[error("Cannot parse the manifest {}", path.display())]
    BadManifest {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The hint for a missing tool: apt where there is apt, else the flake.
pub fn install_hint(package: &str) -> String {
    if on_path("apt-get") {
        format!("install it (apt-get install {package})")
    } else {
        "this host has no apt-get: build the guest image with the flake instead \
         (nix build .#guest-image)"
            .to_string()
    }
}

/// Fails with an actionable message unless `tool` is on `PATH`.
pub fn require_tool(tool: &'static str) -> Result<(), ImageError> {
    let package = match tool {
        "mmdebstrap" => "mmdebstrap uidmap erofs-utils",
        "mkfs.erofs" => "erofs-utils",
        "newuidmap" | "newgidmap" => "uidmap",
        other => other,
    };
    if on_path(tool) {
        Ok(())
    } else {
        Err(RootfsError::MissingTool {
            tool,
            hint: install_hint(package),
        }
        .into())
    }
}

/// What goes into a root file system beyond the base.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsRecipe {
    /// Extra Debian packages (the configuration's `packages = [...]`).
    pub packages: Vec<String>,
    /// npm packages installed globally (the enabled agents' packages).
    pub npm: Vec<String>,
}

impl RootfsRecipe {
    /// A recipe; the lists are sorted and deduplicated, so their order
    /// never changes a key.
    pub fn new(packages: Vec<String>, npm: Vec<String>) -> Self {
        let norm = |mut v: Vec<String>| {
            v.iter_mut().for_each(|s| *s = s.trim().to_string());
            v.retain(|s| !s.is_empty());
            v.sort();
            v.dedup();
            v
        };
        RootfsRecipe {
            packages: norm(packages),
            npm: norm(npm),
        }
    }

    /// Fails on a name that is not a Debian package name or an npm
    /// registry spec (they end up on command lines).
    pub fn validate(&self) -> Result<(), RootfsError> {
        for p in &self.packages {
            if !valid_deb_name(p) {
                return Err(RootfsError::BadPackage {
                    kind: "Debian",
                    name: p.clone(),
                });
            }
        }
        for p in &self.npm {
            if !node::valid_npm_spec(p) {
                return Err(RootfsError::BadPackage {
                    kind: "npm",
                    name: p.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A Debian package name (policy §5.6.1), optionally `=version` or `/release`.
pub fn valid_deb_name(s: &str) -> bool {
    let name = s.split(['=', '/']).next().unwrap_or("");
    let rest = &s[name.len()..];
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=/+-.~:".contains(&b))
}

/// The three layers' cache keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerKeys {
    /// The base layer.
    pub base: String,
    /// The packages layer.
    pub packages: String,
    /// The agents layer (and the image).
    pub agents: String,
}

impl LayerKeys {
    /// The keys of `recipe` built with `mmdebstrap_version`.
    pub fn compute(recipe: &RootfsRecipe, mmdebstrap_version: &str) -> Self {
        let recipe = RootfsRecipe::new(recipe.packages.clone(), recipe.npm.clone());
        let mut h = KeyHasher::default();
        h.add(LAYOUT_VERSION.as_bytes())
            .add(mmdebstrap_version.as_bytes())
            .add(SUITE.as_bytes());
        for x in mmdebstrap::MIRRORS
            .iter()
            .chain(BASE_PACKAGES)
            .chain(mmdebstrap::DPKG_EXCLUDES)
        {
            h.add(x.as_bytes());
        }
        let base = h.hex();
        let mut h = KeyHasher::default();
        h.add(base.as_bytes()).add(b"packages");
        for p in &recipe.packages {
            h.add(p.as_bytes());
        }
        let packages = h.hex();
        let mut h = KeyHasher::default();
        h.add(packages.as_bytes()).add(b"agents");
        for t in [NODE, NPM] {
            h.add(t.name.as_bytes()).add(t.version.as_bytes());
        }
        for p in &recipe.npm {
            h.add(p.as_bytes());
        }
        LayerKeys {
            base,
            packages,
            agents: h.hex(),
        }
    }
}

/// The kinds of cached layers, as their entry name prefixes.
pub const LAYER_PREFIXES: [&str; 3] = ["rootfs-base-", "rootfs-packages-", "rootfs-agents-"];

/// A root file system image in the cache.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The cache entry of the agents layer.
    pub dir: PathBuf,
    /// The erofs image in it.
    pub erofs: PathBuf,
    /// What it holds.
    pub manifest: Manifest,
    /// How long each layer took to build (`None`: it was cached).
    pub timings: Vec<(&'static str, Option<Duration>)>,
}

impl Rootfs {
    /// Builds the root file system `recipe` describes, reusing every
    /// cached layer whose inputs are unchanged; `progress` is told of each
    /// layer and download (and gets mmdebstrap's and npm's output while
    /// they run).
    /// The caller holds the cache lock.
    pub fn build(
        cache: &Cache,
        recipe: &RootfsRecipe,
        progress: &mut dyn Progress,
    ) -> Result<Rootfs, ImageError> {
        let recipe = RootfsRecipe::new(recipe.packages.clone(), recipe.npm.clone());
        recipe.validate()?;
        require_tool("mmdebstrap")?;
        require_tool("mkfs.erofs")?;
        // mkfs.erofs reads the tree through a bind mount (mmdebstrap.rs).
        require_tool("mount")?;
        let mode = detect_mode()?;
        let version = run::mmdebstrap_version()?;
        let keys = LayerKeys::compute(&recipe, &version);
        let mut timings = Vec::new();

        let base = layer(
            cache,
            "base",
            &keys.base,
            &mut timings,
            progress,
            |tmp, p| {
                let args = mmdebstrap::base_args(mode, &tmp.join("layer.tar"));
                run::mmdebstrap(&args, p)
            },
        )?;
        let base_tar = base.join("layer.tar");
        let packages_tar = if recipe.packages.is_empty() {
            base_tar
        } else {
            let dir = layer(
                cache,
                "packages",
                &keys.packages,
                &mut timings,
                progress,
                |tmp, p| {
                    let args = mmdebstrap::packages_args(
                        mode,
                        &base_tar,
                        &recipe.packages,
                        &tmp.join("layer.tar"),
                    );
                    run::mmdebstrap(&args, p)
                },
            )?;
            dir.join("layer.tar")
        };
        let node_tgz = NODE.fetch(cache, progress)?;
        let npm_tgz = NPM.fetch(cache, progress)?;
        let host_ca = mmdebstrap::host_ca_bundle();
        let dir = layer(
            cache,
            "agents",
            &keys.agents,
            &mut timings,
            progress,
            |tmp, p| {
                let args = mmdebstrap::agents_args(&mmdebstrap::AgentsRun {
                    mode,
                    packages_tar: &packages_tar,
                    node_tgz: &node_tgz,
                    npm_tgz: &npm_tgz,
                    npm: &recipe.npm,
                    out_dir: tmp,
                    host_ca: host_ca.as_deref(),
                    proxy_env: mmdebstrap::proxy_env(),
                });
                run::mmdebstrap(&args, p)?;
                let manifest = run::collect_manifest(tmp, &keys, &version, &recipe)?;
                let path = tmp.join(files::MANIFEST);
                fs::write(&path, manifest.to_json())
                    .map_err(|e| ImageError::io("Cannot write", &path, e))
            },
        )?;
        let manifest = Manifest::read(&dir.join(files::MANIFEST))?;
        Ok(Rootfs {
            erofs: dir.join(files::EROFS),
            dir,
            manifest,
            timings,
        })
    }

    /// Puts `rootfs.erofs` and `rootfs.json` into the image directory
    /// `out`: a hard link to the cached image where possible (same file
    /// system; the image is never written in place), else a copy; each file
    /// replaced whole.
    pub fn install(&self, out: &Path) -> Result<(), ImageError> {
        fs::create_dir_all(out).map_err(|e| ImageError::io("Cannot create", out, e))?;
        for name in [files::EROFS, files::MANIFEST] {
            let src = self.dir.join(name);
            let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            if fs::hard_link(&src, &tmp).is_err() {
                fs::copy(&src, &tmp).map_err(|e| ImageError::io("Cannot write", &tmp, e))?;
            }
            let dst = out.join(name);
            fs::rename(&tmp, &dst).map_err(|e| ImageError::io("Cannot write", &dst, e))?;
        }
        Ok(())
    }
}

/// One layer: the cached entry `rootfs-<kind>-<key>` (its time stamp
/// refreshed: prune keeps what was used last), or built by `build`.
fn layer(
    cache: &Cache,
    kind: &'static str,
    key: &str,
    timings: &mut Vec<(&'static str, Option<Duration>)>,
    progress: &mut dyn Progress,
    build: impl FnOnce(&Path, &mut dyn Progress) -> Result<(), ImageError>,
) -> Result<PathBuf, ImageError> {
    let name = format!("rootfs-{kind}-{key}");
    let path = cache.root().join(&name);
    if path.is_dir() {
        progress.event(Event::Cached(&format!("rootfs: {kind} layer {key}")));
        touch(&path);
        timings.push((kind, None));
        return Ok(path);
    }
    progress.event(Event::Start(&format!(
        "rootfs: building the {kind} layer {key}"
    )));
    let start = Instant::now();
    let dir = cache.entry(&name, |tmp| build(tmp, progress))?;
    let took = start.elapsed();
    progress.event(Event::Done(took));
    timings.push((kind, Some(took)));
    Ok(dir)
}

/// Sets a directory's modification time to now.
fn touch(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// A cached layer, for `agentvm image list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLayer {
    /// `base`, `packages` or `agents`.
    pub kind: String,
    /// Its key.
    pub key: String,
    /// The entry directory.
    pub path: PathBuf,
    /// Bytes of its files.
    pub bytes: u64,
    /// Last built or used.
    pub modified: std::time::SystemTime,
    /// The manifest (agents layers).
    pub manifest: Option<Manifest>,
}

/// The root file system layers in `cache`, most recently used first.
pub fn list(cache: &Cache) -> Vec<CachedLayer> {
    let Ok(entries) = fs::read_dir(cache.root()) else {
        return Vec::new();
    };
    let mut out: Vec<CachedLayer> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("rootfs-")?;
            let (kind, key) = rest.split_once('-')?;
            if key.contains(".tmp-") || !e.path().is_dir() {
                return None;
            }
            Some(CachedLayer {
                kind: kind.to_string(),
                key: key.to_string(),
                bytes: dir_bytes(&e.path()),
                modified: e.metadata().ok()?.modified().ok()?,
                manifest: Manifest::read(&e.path().join(files::MANIFEST)).ok(),
                path: e.path(),
            })
        })
        .collect();
    out.sort_by_key(|l| std::cmp::Reverse(l.modified));
    out
}

/// Bytes of the regular files directly in `dir` (0 when unreadable).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Removes the cached layers that neither the `keep_newest` most recently
/// used images (agents layers) nor the images in `keep` need, and any
/// half-built entry; returns what was removed.
pub fn prune(cache: &Cache, keep_newest: usize, keep: &[LayerKeys]) -> Vec<CachedLayer> {
    let layers = list(cache);
    let mut wanted: Vec<LayerKeys> = keep.to_vec();
    wanted.extend(
        layers
            .iter()
            .filter(|l| l.kind == "agents")
            .filter_map(|l| l.manifest.as_ref().map(|m| m.keys.clone()))
            .take(keep_newest),
    );
    let needed = |l: &CachedLayer| {
        wanted.iter().any(|k| match l.kind.as_str() {
            "base" => k.base == l.key,
            "packages" => k.packages == l.key,
            _ => k.agents == l.key,
        })
    };
    let mut removed = Vec::new();
    for l in layers {
        if !needed(&l) && fs::remove_dir_all(&l.path).is_ok() {
            removed.push(l);
        }
    }
    if let Ok(entries) = fs::read_dir(cache.root()) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("rootfs-") && name.contains(".tmp-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests;
