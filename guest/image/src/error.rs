//! The crate's error type, and running the external tools it relies on
//! (apt, tar, cargo) with their failures turned into it.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::kernel::KernelError;

/// Why an image (or a piece of one) could not be built.
#[derive(Debug, Error)]
pub enum ImageError {
    /// A file system operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("Cannot run {program} (is it installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A program exited with a failure.
    #[error("{program} failed ({status}): {stderr}")]
    CommandFailed {
        /// What was run.
        program: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// This host has no apt, so packages cannot be downloaded.
    #[error("No apt-get on this host to download {0}")]
    NoApt(String),
    /// apt does not know a package.
    #[error("Debian package {0} not found (is apt configured, and `apt-get update` done?)")]
    PackageNotFound(String),
    /// A `.deb` file is not a Debian package archive.
    #[error("{} is not a Debian package: {why}", path.display())]
    BadDeb {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The kernel package has an unexpected layout.
    #[error("Kernel package {0} has no single boot/vmlinuz-* and lib/modules/* release")]
    KernelLayout(PathBuf),
    /// The kernel image could not be taken apart.
    #[error("Cannot read the kernel {}", path.display())]
    Kernel {
        /// The bzImage (or compressed module).
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: KernelError,
    },
    /// A `.ko` file is not an ELF with a `.modinfo` section.
    #[error("Module {} has no .modinfo section", .0.display())]
    BadModule(PathBuf),
    /// A module the image cannot work without is missing.
    #[error("Required kernel module {0} is neither in the package nor built in")]
    MissingModule(String),
    /// Modules were asked of a kernel that has none (agentvm's own kernel
    /// builds everything in).
    #[error("Kernel {0} has no modules: it is agentvm's own kernel, with everything built in")]
    NoModules(String),
    /// A binary that must run without shared libraries needs some.
    #[error("{} is dynamically linked; the guest needs a static binary", .0.display())]
    NotStatic(PathBuf),
    /// The root file system cannot be built.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    /// The cached facts file is unreadable.
    #[error("Cached kernel facts {} are corrupt", .0.display())]
    BadFacts(PathBuf),
}

impl ImageError {
    /// An [`ImageError::Io`] for `path`.
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        ImageError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Runs a command, returning its standard output; a failure carries the
/// last lines of its standard error.
pub fn run(cmd: &mut Command, program: &str) -> Result<Vec<u8>, ImageError> {
    let out = cmd.output().map_err(|source| ImageError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(ImageError::CommandFailed {
            program: program.to_string(),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(out.stdout)
}

/// Whether `program` is an executable file in a `$PATH` directory.
pub fn on_path(program: &str) -> bool {
    which(program).is_some()
}

/// Full path of `program` on `$PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
