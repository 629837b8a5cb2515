//! Kernel modules from the Debian package: which of the wanted ones exist,
//! which are built in, and the order to `insmod` them in. The package ships
//! no `modules.dep` (depmod makes it at install time), so dependencies come
//! from each module's own `.modinfo` `depends=` field. Compressed modules
//! (`.ko.xz`, `.ko.zst`, `.ko.gz`, as newer Debian kernels ship them) are
//! read decompressed, and go into images decompressed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::elf::Elf64;
use crate::error::ImageError;
use crate::kernel::{self, Compression};

/// Module names compare with `-` and `_` as the same character.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// One loadable module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalised name (`virtio_rng`).
    pub name: String,
    /// Its `.ko` (or `.ko.xz`, `.ko.zst`, `.ko.gz`) file.
    pub path: PathBuf,
}

impl Module {
    /// The module's ELF bytes (decompressed when the file is compressed).
    pub fn read(&self) -> Result<Vec<u8>, ImageError> {
        read_module(&self.path)
    }
}

/// Reads a module file, decompressing it if needed.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let data = fs::read(path).map_err(|e| ImageError::io("Cannot read", path, e))?;
    if data.starts_with(b"\x7fELF") {
        return Ok(data);
    }
    match Compression::detect(&data) {
        Some(c) => kernel::decompress(c, &data).map_err(|source| ImageError::Kernel {
            path: path.to_path_buf(),
            source,
        }),
        None => Err(ImageError::BadModule(path.to_path_buf())),
    }
}

/// The module name of a file name (`virtio-rng.ko.xz` → `virtio_rng`).
fn module_name(file: &str) -> Option<String> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .map(normalize)
}

/// The outcome of resolving a list of wanted modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulePlan {
    /// Modules to load, every dependency before its users.
    pub load_order: Vec<Module>,
    /// Wanted (or depended-on) names that are built into the kernel.
    pub builtin: Vec<String>,
    /// Wanted names that are neither a module nor built in.
    pub missing: Vec<String>,
}

/// The modules of one kernel release (`lib/modules/<release>`).
pub struct ModuleTree {
    by_name: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Indexes every `.ko` under `dir` and reads `modules.builtin`.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        let mut by_name = BTreeMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let entries = fs::read_dir(&d).map_err(|e| ImageError::io("Cannot list", &d, e))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| ImageError::io("Cannot list", &d, e))?
                    .path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(module_name)
                {
                    by_name.insert(name, path);
                }
            }
        }
        let builtin_file = dir.join("modules.builtin");
        let builtin = fs::read_to_string(&builtin_file)
            .map_err(|e| ImageError::io("Cannot read", &builtin_file, e))?
            .lines()
            .filter_map(|l| module_name(l.rsplit('/').next()?))
            .collect();
        Ok(ModuleTree { by_name, builtin })
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// The `depends=` list of a module file.
    fn depends(path: &Path) -> Result<Vec<String>, ImageError> {
        let data = read_module(path)?;
        let bad = || ImageError::BadModule(path.to_path_buf());
        let info = Elf64::parse(&data)
            .and_then(|e| e.section(".modinfo"))
            .ok_or_else(bad)?;
        Ok(info
            .split(|&b| b == 0)
            .filter_map(|kv| kv.strip_prefix(b"depends="))
            .flat_map(|v| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(normalize)
                    .collect::<Vec<_>>()
            })
            .filter(|d| !d.is_empty())
            .collect())
    }

    /// Resolves `wanted` and their dependencies into a load order.
    pub fn plan(&self, wanted: &[&str]) -> Result<ModulePlan, ImageError> {
        let mut plan = ModulePlan::default();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(&normalize(w), &mut done, &mut Vec::new(), &mut plan)?;
        }
        Ok(plan)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        plan: &mut ModulePlan,
    ) -> Result<(), ImageError> {
        if done.contains(name) || path.iter().any(|p| p == name) {
            return Ok(());
        }
        let Some(file) = self.by_name.get(name) else {
            if self.builtin.contains(name) {
                plan.builtin.push(name.to_string());
            } else {
                plan.missing.push(name.to_string());
            }
            done.insert(name.to_string());
            return Ok(());
        };
        path.push(name.to_string());
        for dep in Self::depends(file)? {
            self.visit(&dep, done, path, plan)?;
        }
        path.pop();
        done.insert(name.to_string());
        plan.load_order.push(Module {
            name: name.to_string(),
            path: file.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A relocatable ELF64 with a `.modinfo` section holding `info`.
    fn fake_module(info: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let info_off = f.len();
        f.extend_from_slice(info);
        let str_off = f.len();
        f.extend_from_slice(shstrtab);
        f.resize(f.len().next_multiple_of(8), 0);
        let shoff = f.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, str_off, shstrtab.len());
        sh(11, info_off, info.len());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    #[test]
    fn orders_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers");
        fs::create_dir_all(&k).unwrap();
        let write = |name: &str, deps: &str| {
            let info = format!("license=GPL\0depends={deps}\0name={name}\0");
            fs::write(k.join(format!("{name}.ko")), fake_module(info.as_bytes())).unwrap();
        };
        write("virtio_ring", "");
        write("virtio", "virtio_ring");
        write("virtio-rng", "virtio,virtio_ring,rng_core");
        write("virtio_mmio", "virtio,virtio_ring");
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/char/hw_random/rng-core.ko\n",
        )
        .unwrap();
        let tree = ModuleTree::open(dir.path()).unwrap();
        assert!(tree.is_builtin("rng-core"));
        let plan = tree.plan(&["virtio_mmio", "virtio-rng", "nosuch"]).unwrap();
        let names: Vec<_> = plan.load_order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["virtio_ring", "virtio", "virtio_mmio", "virtio_rng"]
        );
        assert_eq!(plan.builtin, ["rng_core"]);
        assert_eq!(plan.missing, ["nosuch"]);
    }

    /// A `.ko.xz` module (as Debian 13 ships them) is found, its
    /// dependencies read through xz, and [`Module::read`] gives the ELF.
    #[test]
    fn reads_xz_compressed_modules() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/fs");
        fs::create_dir_all(&k).unwrap();
        let elf = fake_module(b"depends=netfs\0name=fuse\0");
        let child = Command::new("xz")
            .args(["-c", "--check=crc32"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipped: no xz tool");
            return;
        };
        child.stdin.take().unwrap().write_all(&elf).unwrap();
        let xz = child.wait_with_output().unwrap().stdout;
        fs::write(k.join("fuse.ko.xz"), xz).unwrap();
        fs::write(k.join("netfs.ko"), fake_module(b"name=netfs\0")).unwrap();
        fs::write(dir.path().join("modules.builtin"), "").unwrap();
        let plan = ModuleTree::open(dir.path())
            .unwrap()
            .plan(&["fuse"])
            .unwrap();
        let names: Vec<_> = plan.load_order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["netfs", "fuse"]);
        assert_eq!(plan.load_order[1].read().unwrap(), elf);
        assert_eq!(
            module_name("virtio-rng.ko.zst").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(module_name("README"), None);
    }
}
