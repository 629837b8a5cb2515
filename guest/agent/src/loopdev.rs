//! Attaching a file to a loop block device, with the kernel's raw ioctls.
//!
//! `LOOP_CONFIGURE` (Linux 5.8) sets the backing file and its flags in one
//! call; older kernels get `LOOP_SET_FD` then `LOOP_SET_STATUS64`. Devices
//! are attached with `LO_FLAGS_AUTOCLEAR`: the kernel detaches them when
//! their last user (the mount) goes away, so nothing needs tearing down by
//! hand and a failed mount leaves no device behind once ours is closed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

/// `/dev/loop-control`: hands out free loop device numbers.
const LOOP_CONTROL: &str = "/dev/loop-control";

// The loop ioctls predate the _IOC encoding: "bad" numbers in nix's terms.
nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (`<linux/loop.h>`).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (`<linux/loop.h>`).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device bound to a file. Dropping it closes our descriptor; the
/// kernel detaches the device once nothing (no mount) uses it.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    _dev: File,
}

/// Binds `file` to a free loop device, read-only or read-write.
pub fn attach(file: &Path, read_only: bool) -> std::io::Result<LoopDevice> {
    let backing = File::options().read(true).write(!read_only).open(file)?;
    let control = File::options().read(true).write(true).open(LOOP_CONTROL)?;
    let mut last = Errno::EBUSY;
    // Another process may grab the device between GET_FREE and binding it.
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number;
        // `control` is an open /dev/loop-control.
        let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = open_device(&path, read_only)?;
        match bind(&dev, &backing, file, read_only) {
            Ok(()) => return Ok(LoopDevice { path, _dev: dev }),
            Err(Errno::EBUSY) => last = Errno::EBUSY,
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.into())
}

/// Opens `/dev/loopN`; devtmpfs may take a moment to create the node.
fn open_device(path: &Path, read_only: bool) -> std::io::Result<File> {
    let mut tries = 0;
    loop {
        match File::options().read(true).write(!read_only).open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn bind(dev: &File, backing: &File, name: &Path, read_only: bool) -> Result<(), Errno> {
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 },
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    // For /sys/block/loopN/loop/backing_file's fallback and losetup -l.
    let bytes = name.as_os_str().as_encoded_bytes();
    let n = bytes.len().min(info.lo_file_name.len() - 1);
    info.lo_file_name[..n].copy_from_slice(&bytes[..n]);
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config`
    // is (repr(C), the kernel's layout), alive for the call; `dev` is an
    // open loop device.
    match unsafe { loop_configure(dev.as_raw_fd(), &config) } {
        Ok(_) => return Ok(()),
        // Before 5.8: the two-step form.
        Err(Errno::EINVAL) | Err(Errno::ENOTTY) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: LOOP_SET_FD takes the backing descriptor as its argument.
    unsafe { loop_set_fd(dev.as_raw_fd(), backing.as_raw_fd()) }?;
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` from the
    // pointer, which points at the live `config.info`.
    if let Err(e) = unsafe { loop_set_status64(dev.as_raw_fd(), &config.info) } {
        // SAFETY: LOOP_CLR_FD takes no argument; undoes LOOP_SET_FD above.
        let _ = unsafe { loop_clr_fd(dev.as_raw_fd()) };
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        // sizeof(struct loop_info64) == 232, sizeof(struct loop_config) == 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
