//! Reading a log the VMM caps and rotates (`console.log`,
//! `net-audit.jsonl`): the previous file (`NAME.1`) first when there is
//! one, then the live file, as one stream. A reader that reaches the end
//! of a file the VMM has since rotated away goes on in the new live file,
//! so `logs -f` and `net log -f` follow across rotations; a live file that
//! shrank (a new `up` started it over) is read again from its start.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agentvm_net::rotating::RotatingFile;

/// The two files of a rotated log, read in order.
pub struct RotatedLog {
    path: PathBuf,
    file: File,
}

impl RotatedLog {
    /// Opens the log at `path` (its rotated file first, if any); the live
    /// file's error when neither exists.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = match File::open(RotatingFile::rotated_path(path)) {
            Ok(f) => f,
            Err(_) => File::open(path)?,
        };
        Ok(RotatedLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Whether the open file is the one at `path` now.
    fn is_live(&self) -> bool {
        match (self.file.metadata(), std::fs::metadata(&self.path)) {
            (Ok(open), Ok(now)) => (open.dev(), open.ino()) == (now.dev(), now.ino()),
            // Nothing there (the VM's directory went): keep what we have.
            _ => true,
        }
    }
}

impl Read for RotatedLog {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // At most: the rest of a rotated file, then the live one.
        for _ in 0..3 {
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if self.is_live() {
                let pos = self.file.stream_position()?;
                if std::fs::metadata(&self.path).is_ok_and(|m| m.len() < pos) {
                    self.file.seek(SeekFrom::Start(0))?;
                    continue;
                }
                return Ok(0);
            }
            match File::open(&self.path) {
                Ok(live) => self.file = live,
                Err(_) => return Ok(0),
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn read_all(log: &mut RotatedLog) -> String {
        let mut s = String::new();
        log.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn reads_the_rotated_file_then_the_live_one_and_follows_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut writer = RotatingFile::open(&path, 10).unwrap();
        writer.write_all(b"0123456789abc").unwrap();
        let mut log = RotatedLog::open(&path).unwrap();
        assert_eq!(read_all(&mut log), "0123456789abc");
        // Rotated while the reader waits at the end: it goes on in the new
        // file, nothing lost or repeated.
        writer.write_all(b"defghijklmnop").unwrap();
        assert_eq!(read_all(&mut log), "defghijklmnop");
        assert_eq!(read_all(&mut log), "");
    }

    #[test]
    fn a_live_file_started_over_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net-audit.jsonl");
        std::fs::write(&path, "old old old\n").unwrap();
        let mut log = RotatedLog::open(&path).unwrap();
        assert_eq!(read_all(&mut log), "old old old\n");
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap()
            .write_all(b"new\n")
            .unwrap();
        assert_eq!(read_all(&mut log), "new\n");
    }

    #[test]
    fn no_log_at_all_is_the_live_files_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = RotatedLog::open(&dir.path().join("none.log"))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
