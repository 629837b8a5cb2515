//! Log files a guest can make grow — the audit log here, the console log
//! the CLI writes — capped in size: when the next write would pass the
//! cap, the file becomes `NAME.1` (replacing the one before) and a fresh
//! file takes its place. A guest printing forever or a flood of audited
//! denials then never takes more than twice the cap of disk, and the
//! newest output is always in the two files.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The cap when the configuration names none.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// An append-only file of at most `max` bytes, rotated once.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    len: u64,
    max: u64,
    rotations: u64,
}

impl RotatingFile {
    /// Appends to `path` (created if missing), rotating it before it
    /// passes `max` bytes (at least 1).
    pub fn open(path: &Path, max: u64) -> io::Result<Self> {
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            len,
            max: max.max(1),
            rotations: 0,
        })
    }

    /// Where the previous file goes: `NAME.1`.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = OsString::from(path.as_os_str());
        name.push(".1");
        PathBuf::from(name)
    }

    /// How many times the file was rotated since it was opened.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    /// Writes `record` whole into one file: the file is rotated first when
    /// the record would not fit (a record larger than the cap is cut).
    pub fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        if self.len > 0 && self.len + record.len() as u64 > self.max {
            self.rotate()?;
        }
        let fits = usize::try_from(self.max - self.len.min(self.max)).unwrap_or(usize::MAX);
        let record = &record[..record.len().min(fits)];
        self.file.write_all(record)?;
        self.len += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
        self.file = open_append(&self.path)?;
        self.len = 0;
        self.rotations += 1;
        Ok(())
    }
}

impl Write for RotatingFile {
    /// Writes what fits before the cap, rotating first when the file is
    /// full (so a stream is split at the cap, never lost).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.len >= self.max {
            self.rotate()?;
        }
        let room = usize::try_from(self.max - self.len).unwrap_or(usize::MAX);
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    File::options().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_split_at_the_cap_into_two_files_and_nothing_recent_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = RotatingFile::open(&path, 100).unwrap();
        let text: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        f.write_all(&text).unwrap();
        let live = std::fs::read(&path).unwrap();
        let old = std::fs::read(RotatingFile::rotated_path(&path)).unwrap();
        assert_eq!(live.len(), 100);
        assert_eq!(old.len(), 100);
        assert_eq!([old, live].concat(), &text[800..]);
        assert_eq!(f.rotations(), 9);
    }

    #[test]
    fn records_stay_whole_and_an_existing_file_counts_towards_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"0123456789\n").unwrap();
        let mut f = RotatingFile::open(&path, 30).unwrap();
        f.write_record(b"first record\n").unwrap();
        assert_eq!(f.rotations(), 0);
        f.write_record(b"second record\n").unwrap();
        assert_eq!(f.rotations(), 1);
        assert_eq!(
            std::fs::read_to_string(RotatingFile::rotated_path(&path)).unwrap(),
            "0123456789\nfirst record\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second record\n");
        // Larger than the cap: cut, never past it.
        f.write_record(&[b'x'; 100]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 30);
    }
}
