//! Progress of the long steps of a build (downloads, mmdebstrap runs,
//! writing the image), as events for the caller to show: the library
//! draws nothing itself. Steps do not nest: each [`Event::Start`] is
//! followed by [`Event::Output`] and [`Event::Bytes`] of that step and then
//! by its [`Event::Done`], unless the step fails (the error says so).
//!
//! Any `FnMut(&str)` is a [`Progress`] that gets each event as one plain
//! line ([`Event`]'s `Display`), for callers that only log.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::ImageError;

/// Something a build reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A step began; says what it does ("downloading linux-image-… 6.1.0").
    Start(&'a str),
    /// A line the step's program printed (mmdebstrap, and apt and npm
    /// inside it): many, long, and text from package scripts.
    Output(&'a str),
    /// How much of the step's download has arrived, and its size when
    /// known.
    Bytes {
        /// Bytes so far.
        done: u64,
        /// The whole download, if known.
        total: Option<u64>,
    },
    /// The step that began last ended successfully after this long.
    Done(Duration),
    /// A step that had nothing to do: its result was in the cache.
    Cached(&'a str),
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Start(what) => write!(f, "{what}"),
            Event::Output(line) => write!(f, "  {line}"),
            Event::Bytes {
                done,
                total: Some(total),
            } => write!(f, "  {done} of {total} bytes"),
            Event::Bytes { done, total: None } => write!(f, "  {done} bytes"),
            Event::Done(took) => write!(f, "  done in {:.1} s", took.as_secs_f64()),
            Event::Cached(what) => write!(f, "{what} (cached)"),
        }
    }
}

/// Receives a build's [`Event`]s.
pub trait Progress {
    /// One event.
    fn event(&mut self, event: Event<'_>);
}

/// A closure taking lines gets every event as a plain line.
impl<F: FnMut(&str)> Progress for F {
    fn event(&mut self, event: Event<'_>) {
        self(&event.to_string())
    }
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {
    fn event(&mut self, _: Event<'_>) {}
}

/// How often a download's size is looked at.
const POLL: Duration = Duration::from_millis(200);
/// Most bytes of a download program's error output kept for the error.
const STDERR_LIMIT: u64 = 64 * 1024;
/// Lines of that output the error quotes.
const STDERR_LINES: usize = 15;

/// Runs `cmd` (a download into the directory `watch`) as the step `what`,
/// reporting the bytes of the files in `watch` while it runs; fails with
/// the end of its error output.
pub(crate) fn download(
    cmd: &mut Command,
    program: &str,
    what: &str,
    watch: &Path,
    total: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<(), ImageError> {
    let spawn = |source| ImageError::Spawn {
        program: program.to_string(),
        source,
    };
    progress.event(Event::Start(what));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    // Read the error output on its own thread, so that a chatty program
    // never blocks on a full pipe while this one polls.
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut s) = stderr {
            let _ = (&mut s).take(STDERR_LIMIT).read_to_end(&mut kept);
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        }
        kept
    });
    let mut last = None;
    let status = loop {
        let exited = child.try_wait().map_err(spawn)?;
        let done = crate::rootfs::dir_bytes(watch);
        if last != Some(done) {
            progress.event(Event::Bytes { done, total });
            last = Some(done);
        }
        match exited {
            Some(status) => break status,
            None => std::thread::sleep(POLL),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(&stderr);
        let tail: Vec<&str> = text.lines().rev().take(STDERR_LINES).collect();
        return Err(ImageError::CommandFailed {
            program: program.to_string(),
            status: status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    progress.event(Event::Done(start.elapsed()));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn closures_get_plain_lines() {
        let mut lines = Vec::new();
        let mut p = |l: &str| lines.push(l.to_string());
        p.event(Event::Start("downloading x 1.0"));
        p.event(Event::Output("Get:1 http://deb.debian.org"));
        p.event(Event::Bytes {
            done: 10,
            total: Some(20),
        });
        p.event(Event::Bytes {
            done: 10,
            total: None,
        });
        p.event(Event::Done(Duration::from_millis(1500)));
        p.event(Event::Cached("x 1.0"));
        assert_eq!(
            lines,
            [
                "downloading x 1.0",
                "  Get:1 http://deb.debian.org",
                "  10 of 20 bytes",
                "  10 bytes",
                "  done in 1.5 s",
                "x 1.0 (cached)"
            ]
        );
    }

    /// Collects events as owned strings.
    #[derive(Default)]
    struct Log(Vec<String>);
    impl Progress for Log {
        fn event(&mut self, e: Event<'_>) {
            self.0.push(match e {
                Event::Done(_) => "done".into(),
                other => other.to_string(),
            });
        }
    }

    #[test]
    fn a_download_reports_its_bytes_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::default();
        download(
            Command::new("sh")
                .args(["-c", "printf 12345 > f"])
                .current_dir(dir.path()),
            "sh",
            "downloading f",
            dir.path(),
            Some(5),
            &mut log,
        )
        .unwrap();
        assert_eq!(log.0.first().map(String::as_str), Some("downloading f"));
        assert_eq!(log.0.last().map(String::as_str), Some("done"));
        // The last size seen is the whole file.
        assert!(log.0.contains(&"  5 of 5 bytes".to_string()), "{:?}", log.0);
    }

    #[test]
    fn a_failed_download_quotes_its_errors_and_does_not_finish() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::default();
        let err = download(
            Command::new("sh").args(["-c", "echo 'curl: (22) 404' >&2; exit 22"]),
            "curl",
            "downloading f",
            dir.path(),
            None,
            &mut log,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("curl"), "{err}");
        assert!(!log.0.contains(&"done".to_string()), "{:?}", log.0);
        let ImageError::CommandFailed { stderr, .. } = download(
            Command::new("sh").args(["-c", "echo 'curl: (22) 404' >&2; exit 22"]),
            "curl",
            "downloading f",
            dir.path(),
            None,
            &mut Quiet,
        )
        .unwrap_err() else {
            panic!("not a command failure");
        };
        assert_eq!(stderr, "curl: (22) 404");
    }
}
