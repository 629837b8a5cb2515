//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.
//! Archives are left uncompressed: the kernel copies them as they are, which
//! under TCG is much faster than inflating them.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a newc archive entry by entry; [`CpioWriter::finish`] adds the
/// trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(size)
            .map_err(|_| io::Error::other(format!("{name}: too large for cpio")))?;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.header(name, S_IFDIR | 0o755, 0, (0, 0))
    }

    /// A regular file with `data`; `mode` holds the permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.header(name, S_IFREG | (mode & 0o7777), data.len(), (0, 0))?;
        self.put(data)?;
        self.pad4()
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.header(name, S_IFLNK | 0o777, target.len(), (0, 0))?;
        self.put(target.as_bytes())?;
        self.pad4()
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(name, S_IFCHR | (mode & 0o7777), 0, (major, minor))
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin").unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let a = w.finish().unwrap();
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 4, 0);
        // First entry: name "bin" (leading slash dropped), namesize 4.
        assert_eq!(&a[94..102], b"00000004");
        assert_eq!(&a[110..113], b"bin");
        // Second header starts after 110 + 4 bytes of name, padded to 4 -> 116.
        assert_eq!(&a[116..122], b"070701");
        let init = 116 + 110;
        assert_eq!(&a[init..init + 5], b"init\0");
        // mode 0100755
        assert_eq!(&a[116 + 14..116 + 22], b"000081ed");
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("#!/bin/sh\n"));
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("busybox"));
    }

    /// The archive unpacks with the real cpio tool when it is installed.
    #[test]
    fn cpio_tool_reads_it() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc").unwrap();
        w.file("etc/hello", 0o644, b"hello world").unwrap();
        w.symlink("link", "etc/hello").unwrap();
        let a = w.finish().unwrap();
        let child = Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipped: no cpio tool");
            return;
        };
        child.stdin.take().unwrap().write_all(&a).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(dir.path().join("etc/hello")).unwrap(),
            b"hello world"
        );
        assert_eq!(
            std::fs::read(dir.path().join("link")).unwrap(),
            b"hello world"
        );
    }
}
