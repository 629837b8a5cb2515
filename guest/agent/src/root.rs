//! The guest's real root: a read-only image below, a writable layer above,
//! joined by overlayfs; then the agent (PID 1) switches root to it.
//!
//! With `agentvm.rootfs=TAG:FILE` (see [`crate::cmdline`]), after the API
//! file systems are mounted and every kernel module is loaded from the
//! initramfs:
//!
//! 1. virtio-fs `TAG` is mounted read-only at `/run/agentvm/image`;
//! 2. `image/FILE` is attached to a read-only loop device and mounted at
//!    `/run/agentvm/lower` (erofs; squashfs and ext4 are tried too). When
//!    `FILE` is a directory, that tree is the lower layer itself;
//! 3. the writable layer is mounted at `/run/agentvm/rw` (a tmpfs, or the
//!    persistent ext4 image described below), with `upper/` and `work/`;
//! 4. the overlay is mounted at `/newroot`, not under `/run`: `/run` itself
//!    moves into the new root (step 5), so the layers stay reachable at
//!    `/run/agentvm/*` afterwards, and a mount cannot move beneath itself;
//! 5. `/dev`, `/proc`, `/sys`, `/run` and `/tmp` are moved into the new
//!    root, then `chdir(newroot)`, `mount --move newroot /`, `chroot(".")`,
//!    `chdir("/")`: the agent stays PID 1, running from memory. Nothing
//!    after this reads the initramfs (modules were loaded before; the
//!    shares, startup scripts and accounts belong to the new root).
//!
//! Any failure unmounts what was mounted and leaves the initramfs as the
//! root, with a console line saying why: a broken image costs the real
//! userland, never the VM.
//!
//! # Why the persistent layer is an ext4 image, not the share itself
//!
//! overlayfs (Linux 6.1, Debian 12's kernel) accepts a remote upper layer
//! since 5.7, but virtio-fs served by a virtiofsd that runs as the host
//! user cannot hold a Debian root's changes: `chown` to root or any other
//! uid fails (EPERM) on the host, so copy-up of every root-owned file fails
//! and `dpkg` cannot set owners; overlayfs's own `trusted.overlay.*`
//! xattrs need `CAP_SYS_ADMIN` on the host (`userxattr` needs virtiofsd's
//! `--xattr`, and then still no `chown`); FUSE has no `O_TMPFILE` in 6.1.
//! An ext4 file on the share, loop-mounted in the guest, has none of these
//! gaps: owners, modes, xattrs, whiteouts and `O_TMPFILE` are ext4's, and
//! the host sees one sparse file owned by its user. The host creates it
//! (`mke2fs -q -t ext4 -O ^metadata_csum FILE 32G`; `^metadata_csum` so
//! the kernel needs no crc32c module); if it is missing or will not mount,
//! the guest falls back to a tmpfs layer and says so on the console.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::cmdline::{RootFs, Upper};
use crate::loopdev;

/// Why the root could not be switched.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A directory could not be created.
    #[error("cannot create {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    /// A virtio-fs share would not mount.
    #[error("cannot mount virtio-fs {tag} on {target}")]
    Share {
        /// The tag.
        tag: String,
        /// Where.
        target: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The image or upper file is not on its share.
    #[error("{0} is missing")]
    Missing(PathBuf, #[source] std::io::Error),
    /// No loop device for the image.
    #[error("cannot attach {0} to a loop device")]
    Loop(PathBuf, #[source] std::io::Error),
    /// A file system would not mount.
    #[error("cannot mount {what} on {target}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The overlay has no `etc` and `usr`: not a root file system.
    #[error("{0} does not look like a root file system (no etc/ or usr/)")]
    NotARoot(PathBuf),
    /// A mount could not be moved into the new root.
    #[error("cannot move {from} to {to}")]
    Move {
        /// The mount point.
        from: PathBuf,
        /// The new place.
        to: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The final `mount --move newroot /` or `chroot` failed.
    #[error("cannot make {0} the root")]
    Switch(PathBuf, #[source] nix::Error),
}

/// Mounts virtio-fs shares (the guest), or stand-ins for them (tests).
pub trait ShareMounter {
    /// Mounts share `tag` on `target`.
    fn mount_share(&self, tag: &str, target: &Path, read_only: bool) -> nix::Result<()>;
}

/// Where things go. [`Layout::guest`] is the real one; tests point it into a
/// temporary directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The layers' mount points: `image/`, `lower/`, `upper-share/`, `rw/`.
    /// Must lie inside one of the `carry` mounts so it stays reachable.
    pub state: PathBuf,
    /// Where the overlay is assembled before it becomes `/`.
    pub newroot: PathBuf,
    /// Mounts moved into the new root: `(mount point, path in the new root)`.
    pub carry: Vec<(PathBuf, PathBuf)>,
}

impl Layout {
    /// The guest's layout: layers under `/run/agentvm`, overlay at
    /// `/newroot`, the API file systems, `/run` and `/tmp` carried over.
    pub fn guest() -> Layout {
        let carry = ["/dev", "/proc", "/sys", "/run", "/tmp"]
            .iter()
            .map(|p| (PathBuf::from(p), PathBuf::from(&p[1..])))
            .collect();
        Layout {
            state: PathBuf::from("/run/agentvm"),
            newroot: PathBuf::from("/newroot"),
            carry,
        }
    }

    fn image(&self) -> PathBuf {
        self.state.join("image")
    }
    fn lower(&self) -> PathBuf {
        self.state.join("lower")
    }
    fn upper_share(&self) -> PathBuf {
        self.state.join("upper-share")
    }
    fn rw(&self) -> PathBuf {
        self.state.join("rw")
    }
}

/// What [`assemble`] built.
#[derive(Debug, Default)]
pub struct Assembled {
    /// Every mount point mounted, in order (unmounted in reverse on failure).
    mounted: Vec<PathBuf>,
    /// Things worth a console line that did not stop the set-up.
    pub notes: Vec<String>,
}

impl Assembled {
    /// Unmounts everything (lazily, in reverse order).
    pub fn undo(&mut self) {
        while let Some(p) = self.mounted.pop() {
            let _ = umount2(&p, MntFlags::MNT_DETACH);
        }
    }

    fn mount(
        &mut self,
        source: &Path,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RootError> {
        mount(Some(source), target, Some(fstype), flags, data).map_err(|source| {
            RootError::Mount {
                what: fstype.to_owned(),
                target: target.to_owned(),
                source,
            }
        })?;
        self.mounted.push(target.to_owned());
        Ok(())
    }
}

/// Sets up the new root and switches to it; on failure everything is
/// undone and the old root stays. Returns notes for the console.
pub fn setup(
    rootfs: &RootFs,
    upper: &Upper,
    layout: &Layout,
    shares: &dyn ShareMounter,
) -> Result<Vec<String>, RootError> {
    let mut built = Assembled::default();
    let result = assemble(rootfs, upper, layout, shares, &mut built).and_then(|()| switch(layout));
    match result {
        Ok(()) => Ok(built.notes),
        Err(e) => {
            built.undo();
            Err(e)
        }
    }
}

fn mkdir(path: &Path) -> Result<(), RootError> {
    std::fs::create_dir_all(path).map_err(|e| RootError::Dir(path.to_owned(), e))
}

/// Steps 1–4: the layers and the overlay at `layout.newroot`.
pub fn assemble(
    rootfs: &RootFs,
    upper: &Upper,
    layout: &Layout,
    shares: &dyn ShareMounter,
    built: &mut Assembled,
) -> Result<(), RootError> {
    for dir in [
        layout.image(),
        layout.lower(),
        layout.rw(),
        layout.newroot.clone(),
    ] {
        mkdir(&dir)?;
    }
    let image = layout.image();
    shares
        .mount_share(&rootfs.tag, &image, true)
        .map_err(|source| RootError::Share {
            tag: rootfs.tag.clone(),
            target: image.clone(),
            source,
        })?;
    built.mounted.push(image.clone());
    let file = image.join(&rootfs.file);
    let meta = std::fs::metadata(&file).map_err(|e| RootError::Missing(file.clone(), e))?;
    let lower = if meta.is_dir() {
        file
    } else {
        mount_image(&file, &layout.lower(), true, built)?;
        layout.lower()
    };

    let rw = layout.rw();
    match upper {
        Upper::Tmpfs => mount_tmpfs_rw(&rw, built)?,
        Upper::Image { tag, file } => {
            if let Err(e) = mount_upper_image(tag, file, layout, shares, built) {
                built.notes.push(format!(
                    "persistent layer unavailable ({}); changes to / will not survive power-off",
                    crate::session::error_chain(&e)
                ));
                mount_tmpfs_rw(&rw, built)?;
            }
        }
    }
    let (up, work) = (rw.join("upper"), rw.join("work"));
    mkdir(&up)?;
    mkdir(&work)?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        up.display(),
        work.display()
    );
    built.mount(
        Path::new("overlay"),
        &layout.newroot,
        "overlay",
        MsFlags::empty(),
        Some(&options),
    )?;
    if !layout.newroot.join("etc").is_dir() || !layout.newroot.join("usr").is_dir() {
        return Err(RootError::NotARoot(layout.newroot.clone()));
    }
    Ok(())
}

fn mount_tmpfs_rw(rw: &Path, built: &mut Assembled) -> Result<(), RootError> {
    built.mount(
        Path::new("tmpfs"),
        rw,
        "tmpfs",
        MsFlags::empty(),
        Some("mode=0755"),
    )
}

/// The persistent layer: share `tag`, then its ext4 image `file` on `rw`.
fn mount_upper_image(
    tag: &str,
    file: &str,
    layout: &Layout,
    shares: &dyn ShareMounter,
    built: &mut Assembled,
) -> Result<(), RootError> {
    let share = layout.upper_share();
    mkdir(&share)?;
    shares
        .mount_share(tag, &share, false)
        .map_err(|source| RootError::Share {
            tag: tag.to_owned(),
            target: share.clone(),
            source,
        })?;
    built.mounted.push(share.clone());
    let path = share.join(file);
    if let Err(e) = std::fs::metadata(&path) {
        return Err(RootError::Missing(path, e));
    }
    mount_image(&path, &layout.rw(), false, built)
}

/// Attaches `file` to a loop device and mounts it on `target`, trying the
/// file systems an image may hold.
fn mount_image(
    file: &Path,
    target: &Path,
    read_only: bool,
    built: &mut Assembled,
) -> Result<(), RootError> {
    let dev = loopdev::attach(file, read_only).map_err(|e| RootError::Loop(file.to_owned(), e))?;
    let types: &[&str] = if read_only {
        &["erofs", "squashfs", "ext4"]
    } else {
        &["ext4"]
    };
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let mut last = None;
    for fstype in types {
        match built.mount(&dev.path, target, fstype, flags, None) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    // `dev` drops here: with no mount holding it, the kernel detaches it.
    Err(last.unwrap_or(RootError::Loop(
        file.to_owned(),
        std::io::ErrorKind::Unsupported.into(),
    )))
}

/// Step 5: carries the mounts into the new root and makes it `/`. On
/// failure the carried mounts are moved back.
pub fn switch(layout: &Layout) -> Result<(), RootError> {
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let back = |moved: &mut Vec<(PathBuf, PathBuf)>| {
        while let Some((from, to)) = moved.pop() {
            let _ = move_mount(&to, &from);
        }
    };
    for (from, rel) in &layout.carry {
        let to = layout.newroot.join(rel);
        let res = mkdir(&to).and_then(|()| {
            move_mount(from, &to).map_err(|source| RootError::Move {
                from: from.clone(),
                to: to.clone(),
                source,
            })
        });
        if let Err(e) = res {
            back(&mut moved);
            return Err(e);
        }
        moved.push((from.clone(), to));
    }
    let switched = nix::unistd::chdir(&layout.newroot)
        .and_then(|()| move_mount(Path::new("."), Path::new("/")));
    if let Err(e) = switched {
        let _ = nix::unistd::chdir("/");
        back(&mut moved);
        return Err(RootError::Switch(layout.newroot.clone(), e));
    }
    // From here there is no way back: the old root is covered. chroot into
    // the directory we stand in cannot fail for lack of it.
    nix::unistd::chroot(".").map_err(|e| RootError::Switch(layout.newroot.clone(), e))?;
    nix::unistd::chdir("/").map_err(|e| RootError::Switch(layout.newroot.clone(), e))
}

fn move_mount(from: &Path, to: &Path) -> nix::Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
