//! Debian packages: resolve a name to apt's candidate version and download
//! it with `apt-get download`, or take a `.deb` file as given; either way
//! unpack it into the cache (the `ar` archive is read here, its
//! `data.tar.*` by `tar`, so a host without dpkg can use a given `.deb`).
//! [`DebianKernel`] is a `linux-image-*` package unpacked.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cache::{Cache, KeyHasher};
use crate::error::{on_path, run, ImageError};
use crate::modules::ModuleTree;
use crate::progress::{self, Event, Progress};

/// A Debian package unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPackage {
    /// Binary package name.
    pub name: String,
    /// Exact version (`6.1.192-2`).
    pub version: String,
    /// Where its files were unpacked.
    pub root: PathBuf,
}

static UPDATED: AtomicBool = AtomicBool::new(false);

/// Whether this host has the apt tools the downloads need.
pub fn have_apt() -> bool {
    on_path("apt-get") && on_path("apt-cache")
}

/// The candidate version of `name` and its download size, or `None` when
/// apt does not know it.
fn candidate(name: &str) -> Result<Option<Candidate>, ImageError> {
    let out = run(
        Command::new("apt-cache").args(["show", "--no-all-versions", name]),
        "apt-cache",
    );
    let out = match out {
        Ok(o) => o,
        Err(ImageError::CommandFailed { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(parse_show(&String::from_utf8_lossy(&out)))
}

/// What `apt-cache show` says about a package's candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    /// `Version:`.
    version: String,
    /// `Size:` of the `.deb`, bytes, when given.
    size: Option<u64>,
}

/// The first record of `apt-cache show` output.
fn parse_show(text: &str) -> Option<Candidate> {
    let record = text.split("\n\n").next().unwrap_or("");
    let field = |k: &str| {
        record
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(": "))
            .map(str::trim)
    };
    Some(Candidate {
        version: field("Version").filter(|v| !v.is_empty())?.to_string(),
        size: field("Size").and_then(|s| s.parse().ok()),
    })
}

/// Runs `apt-get update` once per process, when a lookup fails (a machine
/// whose package lists were never fetched).
fn update_once() -> Result<(), ImageError> {
    if UPDATED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )
    .map(drop)
}

/// Resolves `name` to its candidate version, updating the package lists
/// once if apt does not know it.
pub fn resolve(name: &str) -> Result<String, ImageError> {
    resolve_candidate(name).map(|c| c.version)
}

fn resolve_candidate(name: &str) -> Result<Candidate, ImageError> {
    if !have_apt() {
        return Err(ImageError::NoApt(name.to_string()));
    }
    if let Some(c) = candidate(name)? {
        return Ok(c);
    }
    update_once()?;
    candidate(name)?.ok_or_else(|| ImageError::PackageNotFound(name.to_string()))
}

/// The package a metapackage depends on whose name starts with `prefix`
/// (`linux-image-cloud-amd64` → `linux-image-6.1.0-56-cloud-amd64`).
pub fn dependency_of(meta: &str, prefix: &str) -> Result<String, ImageError> {
    resolve(meta)?;
    let out = run(
        Command::new("apt-cache").args(["depends", meta]),
        "apt-cache depends",
    )?;
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| {
            d.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .find(|d| d.starts_with(prefix))
        .ok_or_else(|| ImageError::PackageNotFound(format!("{prefix}* (a dependency of {meta})")))
}

/// A name safe for a directory: the version's `:` (epoch) and other
/// punctuation become `_`.
fn dir_name(name: &str, version: &str) -> String {
    format!("pkg-{name}_{version}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Downloads and unpacks `name` at its candidate version, unless the cache
/// has it already; the download is a step of `progress`.
pub fn fetch(
    cache: &Cache,
    name: &str,
    progress: &mut dyn Progress,
) -> Result<DebPackage, ImageError> {
    let Candidate { version, size } = resolve_candidate(name)?;
    let mut downloaded = false;
    let root = cache.entry(&dir_name(name, &version), |tmp| {
        let dl = tmp.join("dl");
        fs::create_dir_all(&dl).map_err(|e| ImageError::io("Cannot create", &dl, e))?;
        downloaded = true;
        progress::download(
            Command::new("apt-get")
                .args(["download", "-qq", &format!("{name}={version}")])
                .current_dir(&dl),
            "apt-get download",
            &format!("downloading {name} {version}"),
            &dl,
            size,
            progress,
        )?;
        let deb = fs::read_dir(&dl)
            .map_err(|e| ImageError::io("Cannot list", &dl, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| {
                ImageError::PackageNotFound(format!(
                    "{name}={version} (apt-get download left no .deb)"
                ))
            })?;
        unpack_deb(&deb, tmp)?;
        fs::remove_dir_all(&dl).map_err(|e| ImageError::io("Cannot remove", &dl, e))
    })?;
    if !downloaded {
        progress.event(Event::Cached(&format!("{name} {version}")));
    }
    Ok(DebPackage {
        name: name.to_string(),
        version,
        root: root.join("root"),
    })
}

/// Unpacks a `.deb` file (cached by its content).
pub fn open_deb(cache: &Cache, deb: &Path) -> Result<DebPackage, ImageError> {
    let key = KeyHasher::default().add_file(deb)?.hex();
    let dir = cache.entry(&format!("deb-{key}"), |tmp| unpack_deb(deb, tmp))?;
    let control = dir.join("control/control");
    let text =
        fs::read_to_string(&control).map_err(|e| ImageError::io("Cannot read", &control, e))?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let bad = |why: &str| ImageError::BadDeb {
        path: deb.to_path_buf(),
        why: why.to_string(),
    };
    Ok(DebPackage {
        name: field("Package").ok_or_else(|| bad("no Package field"))?,
        version: field("Version").ok_or_else(|| bad("no Version field"))?,
        root: dir.join("root"),
    })
}

/// One member of an `ar` archive: its name and its bytes.
fn ar_members(data: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let mut rest = data
        .strip_prefix(b"!<arch>\n")
        .ok_or("no ar archive signature")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 60 || &rest[58..60] != b"`\n" {
            return Err("bad ar member header".into());
        }
        let name = String::from_utf8_lossy(&rest[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = String::from_utf8_lossy(&rest[48..58])
            .trim()
            .parse()
            .map_err(|_| format!("bad size of ar member {name}"))?;
        let body = rest
            .get(60..60 + size)
            .ok_or_else(|| format!("ar member {name} is truncated"))?;
        out.push((name, body));
        // Members are padded to an even offset.
        let next = (60 + size + (size & 1)).min(rest.len());
        rest = &rest[next..];
    }
    Ok(out)
}

/// Unpacks `deb` into `dest/control` and `dest/root`.
fn unpack_deb(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    let data = fs::read(deb).map_err(|e| ImageError::io("Cannot read", deb, e))?;
    let bad = |why: String| ImageError::BadDeb {
        path: deb.to_path_buf(),
        why,
    };
    let members = ar_members(&data).map_err(bad)?;
    if members.first().map(|(n, _)| n.as_str()) != Some("debian-binary") {
        return Err(bad("no debian-binary member first".into()));
    }
    for (prefix, sub) in [("control.tar", "control"), ("data.tar", "root")] {
        let (name, body) = members
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .ok_or_else(|| bad(format!("no {prefix}.* member")))?;
        let tarball = dest.join(name);
        fs::write(&tarball, body).map_err(|e| ImageError::io("Cannot write", &tarball, e))?;
        let out = dest.join(sub);
        fs::create_dir_all(&out).map_err(|e| ImageError::io("Cannot create", &out, e))?;
        // tar recognises the compression (xz, zstd, gzip) by itself.
        run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .arg("-C")
                .arg(&out),
            "tar (unpacking a .deb)",
        )?;
        fs::remove_file(&tarball).map_err(|e| ImageError::io("Cannot remove", &tarball, e))?;
    }
    Ok(())
}

/// A Debian kernel package (`linux-image-<release>`), unpacked.
#[derive(Debug, Clone)]
pub struct DebianKernel {
    /// The package.
    pub package: DebPackage,
    /// `uname -r` (`6.1.0-56-cloud-amd64`).
    pub release: String,
    /// `boot/vmlinuz-<release>`.
    pub bzimage: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

impl DebianKernel {
    /// Fetches the kernel a metapackage (`linux-image-cloud-amd64`)
    /// currently points to.
    pub fn fetch(
        cache: &Cache,
        meta: &str,
        progress: &mut dyn Progress,
    ) -> Result<Self, ImageError> {
        let name = dependency_of(meta, "linux-image-")?;
        Self::from_package(fetch(cache, &name, progress)?)
    }

    /// Takes the kernel from a `linux-image-<release>` `.deb` file.
    pub fn from_deb(cache: &Cache, deb: &Path) -> Result<Self, ImageError> {
        Self::from_package(open_deb(cache, deb)?)
    }

    /// Finds the release, bzImage and modules in an unpacked package.
    pub fn from_package(package: DebPackage) -> Result<Self, ImageError> {
        let mods = package.root.join("lib/modules");
        let releases: Vec<String> = fs::read_dir(&mods)
            .map_err(|_| ImageError::KernelLayout(package.root.clone()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        let [release] = releases.as_slice() else {
            return Err(ImageError::KernelLayout(package.root.clone()));
        };
        let bzimage = package.root.join(format!("boot/vmlinuz-{release}"));
        if !bzimage.is_file() {
            return Err(ImageError::KernelLayout(package.root.clone()));
        }
        Ok(DebianKernel {
            modules_dir: mods.join(release),
            release: release.clone(),
            bzimage,
            package,
        })
    }

    /// Opens the module tree.
    pub fn modules(&self) -> Result<ModuleTree, ImageError> {
        ModuleTree::open(&self.modules_dir)
    }

    /// `boot/config-<release>`.
    pub fn config_path(&self) -> PathBuf {
        self.package
            .root
            .join(format!("boot/config-{}", self.release))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn apt_cache_show_gives_version_and_size() {
        let text = "Package: busybox-static\nVersion: 1:1.35.0-4+b3\nInstalled-Size: 2035\n\
                    Size: 905204\nDescription: x\n\nPackage: busybox-static\nVersion: 0.1\n";
        assert_eq!(
            parse_show(text),
            Some(Candidate {
                version: "1:1.35.0-4+b3".into(),
                size: Some(905_204)
            })
        );
        // A size apt does not give, or garbles, is unknown, not an error.
        let c = parse_show("Version: 2\nSize: lots\n").unwrap();
        assert_eq!((c.version.as_str(), c.size), ("2", None));
        // No version: apt does not know the package.
        assert_eq!(parse_show("Size: 10\n"), None);
        assert_eq!(parse_show(""), None);
        assert_eq!(parse_show("Version: \n"), None);
    }

    #[test]
    fn dir_names_are_plain() {
        assert_eq!(
            dir_name("busybox-static", "1:1.35.0-4+deb12u1+b1"),
            "pkg-busybox-static_1_1.35.0-4+deb12u1+b1"
        );
    }

    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut a = b"!<arch>\n".to_vec();
        for (name, body) in members {
            let h = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                format!("{name}/"),
                0,
                0,
                0,
                "100644",
                body.len()
            );
            assert_eq!(h.len(), 60);
            a.extend_from_slice(h.as_bytes());
            a.extend_from_slice(body);
            if body.len() % 2 == 1 {
                a.push(b'\n');
            }
        }
        a
    }

    #[test]
    fn reads_ar_members_with_padding() {
        let a = ar(&[("debian-binary", b"2.0\n"), ("odd", b"abc"), ("next", b"x")]);
        let m = ar_members(&a).unwrap();
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["debian-binary", "odd", "next"]);
        assert_eq!(m[1].1, b"abc");
        assert_eq!(m[2].1, b"x");
        assert!(ar_members(b"not an archive").is_err());
        let mut cut = a.clone();
        cut.truncate(70);
        assert!(ar_members(&cut).is_err());
    }

    /// A `.deb` made here (tar + our ar writer) unpacks to its files and
    /// control fields; a kernel-shaped one is recognised as a kernel.
    #[test]
    fn opens_a_deb_without_dpkg() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = |src: &Path, name: &str| {
            let out = dir.path().join(name);
            let ok = Command::new("tar")
                .arg("-cJf")
                .arg(&out)
                .arg("-C")
                .arg(src)
                .arg(".")
                .status()
                .unwrap()
                .success();
            assert!(ok, "tar -cJ");
            fs::read(out).unwrap()
        };
        let ctrl = dir.path().join("c");
        fs::create_dir_all(&ctrl).unwrap();
        fs::write(
            ctrl.join("control"),
            "Package: linux-image-9.9.9-1-test\nVersion: 9.9.9-1\nArchitecture: amd64\n",
        )
        .unwrap();
        let data = dir.path().join("d");
        fs::create_dir_all(data.join("boot")).unwrap();
        fs::create_dir_all(data.join("lib/modules/9.9.9-1-test/kernel")).unwrap();
        fs::write(data.join("boot/vmlinuz-9.9.9-1-test"), b"bz").unwrap();
        let deb = dir.path().join("k.deb");
        fs::write(
            &deb,
            ar(&[
                ("debian-binary", b"2.0\n"),
                ("control.tar.xz", &tarball(&ctrl, "c.tar.xz")),
                ("data.tar.xz", &tarball(&data, "d.tar.xz")),
            ]),
        )
        .unwrap();
        let cache = Cache::at(dir.path().join("cache")).unwrap();
        let k = DebianKernel::from_deb(&cache, &deb).unwrap();
        assert_eq!(k.package.name, "linux-image-9.9.9-1-test");
        assert_eq!(k.package.version, "9.9.9-1");
        assert_eq!(k.release, "9.9.9-1-test");
        assert_eq!(fs::read(&k.bzimage).unwrap(), b"bz");

        let notdeb = dir.path().join("x.deb");
        fs::write(&notdeb, ar(&[("data.tar.xz", b"")])).unwrap();
        assert!(matches!(
            open_deb(&cache, &notdeb),
            Err(ImageError::BadDeb { .. })
        ));
    }
}
