//! Host programs carried into L1 on a scenario's disk: dynamic binaries
//! of this host (an ssh server, ssh-agent, git) with the libraries they
//! load, and the shell lines that make them callable by name in L1.
//!
//! L1's initramfs holds only what every scenario needs; a scenario that
//! plays "the user's machine" (an ssh-agent with a key, a git server)
//! brings its own programs on its read-only disk instead of growing the
//! shared L1 image. On the disk each program is `tools/bin/NAME` and its
//! libraries are in `tools/lib`; in L1, `/usr/bin/NAME` is a two-line
//! wrapper that runs it with that library path.

use std::path::{Path, PathBuf};

use agentvm_image::archive::shared_libraries;
use agentvm_image::ImageError;

/// Where a scenario's disk is mounted in L1 (the scripts mount it there).
const DISK_DIR: &str = crate::image::l1_paths::DISK_DIR;

/// Programs for a disk: `(name in L1, host binary)`.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    programs: Vec<(String, PathBuf)>,
}

impl Tools {
    /// No programs yet.
    pub fn new() -> Self {
        Tools::default()
    }

    /// Adds the host binary `path`, called `name` in L1 (a program that
    /// looks at its own name, such as `git-upload-pack`, gets that name).
    pub fn program(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.programs.push((name.to_string(), path.into()));
        self
    }

    /// The first of `candidates` that is a file on this host, added as
    /// `name`; `None` (nothing added) when there is none.
    pub fn find(self, name: &str, candidates: &[&str]) -> Option<Self> {
        let found = candidates.iter().map(Path::new).find(|p| p.is_file())?;
        Some(self.program(name, found))
    }

    /// The disk's files: `(path on the disk, host file)` for every program
    /// and every library any of them loads (each library once).
    pub fn disk_files(&self) -> Result<Vec<(String, PathBuf)>, ImageError> {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for (name, path) in &self.programs {
            files.push((format!("tools/bin/{name}"), path.clone()));
            for lib in shared_libraries(path)? {
                let Some(file) = lib.file_name() else {
                    continue;
                };
                let dst = format!("tools/lib/{}", file.to_string_lossy());
                if !files.iter().any(|(d, _)| *d == dst) {
                    files.push((dst, lib));
                }
            }
        }
        Ok(files)
    }

    /// Shell lines for L1, run after the disk is mounted: a wrapper per
    /// program in `/usr/bin` (on the `PATH` an ssh server gives its
    /// sessions too), and the loader at its usual path if L1 lacks it.
    pub fn l1_setup(&self) -> String {
        let mut s = format!(
            "mkdir -p /usr/bin /lib64\n\
             [ -e /lib64/ld-linux-x86-64.so.2 ] || \
             ln -s {DISK_DIR}/tools/lib/ld-linux-x86-64.so.2 /lib64/\n"
        );
        for (name, _) in &self.programs {
            s.push_str(&format!(
                "printf '#!/bin/sh\\nLD_LIBRARY_PATH={DISK_DIR}/tools/lib exec \
                 {DISK_DIR}/tools/bin/{name} \"$@\"\\n' > /usr/bin/{name}\n\
                 chmod 755 /usr/bin/{name}\n"
            ));
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_brings_its_libraries_once_and_gets_a_wrapper() {
        let sh = Path::new("/bin/sh");
        let tools = Tools::new().program("a", sh).program("b", sh);
        let files = tools.disk_files().unwrap();
        assert!(files.contains(&("tools/bin/a".into(), sh.to_path_buf())));
        assert!(files.contains(&("tools/bin/b".into(), sh.to_path_buf())));
        let libc: Vec<_> = files
            .iter()
            .filter(|(d, _)| d.starts_with("tools/lib/libc.so"))
            .collect();
        assert_eq!(libc.len(), 1, "{files:?}");
        let setup = tools.l1_setup();
        assert!(
            setup.contains("LD_LIBRARY_PATH=/disk/tools/lib exec /disk/tools/bin/b \"$@\""),
            "{setup}"
        );
        assert!(setup.contains("> /usr/bin/a\n"), "{setup}");
    }

    #[test]
    fn find_takes_the_first_candidate_that_exists() {
        assert!(Tools::new().find("x", &["/nonexistent/x"]).is_none());
        let t = Tools::new()
            .find("sh", &["/nonexistent/sh", "/bin/sh"])
            .unwrap();
        assert_eq!(t.programs, vec![("sh".into(), PathBuf::from("/bin/sh"))]);
    }
}
