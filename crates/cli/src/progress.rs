//! How the CLI shows the long steps of image builds (downloads, mmdebstrap
//! runs, writing the image): the library reports
//! [`agentvm_image::progress::Event`]s, and a [`Reporter`] draws them on
//! standard error, as a spinner or bar per step on a terminal and as plain
//! lines otherwise (not a terminal, `CI` set to anything but `false`/`0`,
//! or `TERM=dumb`), so that logs stay readable.
//!
//! A step that began and never ended failed: when the reporter is dropped
//! with one open, it says so with the time it ran (the error that follows
//! quotes the end of the program's output). Everything shown passes
//! through [`crate::escape`]: subprocess output holds text from package
//! scripts.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use agentvm_image::progress::{Event, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spinners and bars that redraw in place.
    Bars,
    /// One plain line per event worth a line.
    Lines,
}

impl Mode {
    /// The mode for standard error in this environment.
    pub fn detect() -> Mode {
        let ci = std::env::var("CI").ok();
        let term = std::env::var("TERM").ok();
        Mode::choose(
            std::io::stderr().is_terminal(),
            ci.as_deref(),
            term.as_deref(),
        )
    }

    /// Bars only on a terminal that is not dumb, outside CI.
    pub fn choose(terminal: bool, ci: Option<&str>, term: Option<&str>) -> Mode {
        let in_ci = ci.is_some_and(|v| !matches!(v.trim(), "" | "0" | "false"));
        if terminal && !in_ci && term != Some("dumb") {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// The step being shown.
struct Step {
    what: String,
    start: Instant,
    bytes: Option<u64>,
}

/// The plain-line form of each event, shared by both modes (the bars
/// print the same lines when a step ends).
pub struct Lines;

impl Lines {
    /// A step began.
    pub fn start(what: &str) -> String {
        format!("agentvm: {}", crate::escape::line(what))
    }

    /// A line of the step's program.
    pub fn output(line: &str) -> String {
        format!("  {}", crate::escape::line(line))
    }

    /// A step ended after `took`, having downloaded `bytes` if known.
    pub fn done(what: &str, took: Duration, bytes: Option<u64>) -> String {
        let size = bytes.map_or_else(String::new, |b| format!(", {}", megabytes(b)));
        format!(
            "agentvm: {}: done in {:.1} s{size}",
            crate::escape::line(what),
            took.as_secs_f64()
        )
    }

    /// A step found in the cache.
    pub fn cached(what: &str) -> String {
        format!("agentvm: {}: cached", crate::escape::line(what))
    }

    /// A step that never ended.
    pub fn failed(what: &str, took: Duration) -> String {
        format!(
            "agentvm: {}: failed after {:.1} s",
            crate::escape::line(what),
            took.as_secs_f64()
        )
    }
}

/// `12.3 MB`.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Draws events on a writer as plain lines.
pub struct LineReporter<W: Write> {
    out: W,
    step: Option<Step>,
}

impl<W: Write> LineReporter<W> {
    /// Lines on `out`.
    pub fn new(out: W) -> Self {
        LineReporter { out, step: None }
    }

    fn line(&mut self, line: &str) {
        // Progress is best effort: a closed standard error ends nothing.
        let _ = writeln!(self.out, "{line}");
    }
}

impl<W: Write> Progress for LineReporter<W> {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(what) => {
                self.line(&Lines::start(what));
                self.step = Some(Step {
                    what: what.to_string(),
                    start: Instant::now(),
                    bytes: None,
                });
            }
            Event::Output(line) => self.line(&Lines::output(line)),
            // A line per poll would flood a log: the total is in the
            // step's last line.
            Event::Bytes { done, .. } => {
                if let Some(s) = &mut self.step {
                    s.bytes = Some(done);
                }
            }
            Event::Done(took) => {
                if let Some(s) = self.step.take() {
                    self.line(&Lines::done(&s.what, took, s.bytes));
                }
            }
            Event::Cached(what) => self.line(&Lines::cached(what)),
        }
    }
}

impl<W: Write> Drop for LineReporter<W> {
    fn drop(&mut self) {
        if let Some(s) = self.step.take() {
            self.line(&Lines::failed(&s.what, s.start.elapsed()));
        }
    }
}

/// How often a spinner turns.
const TICK: Duration = Duration::from_millis(120);
/// Longest program line shown beside a spinner, in characters.
const OUTPUT_WIDTH: usize = 60;

/// Draws events on standard error as a spinner (or, for a download of
/// known size, a bar) per step.
pub struct BarReporter {
    bar: Option<ProgressBar>,
    step: Option<Step>,
}

impl BarReporter {
    /// Bars on standard error.
    pub fn new() -> Self {
        BarReporter {
            bar: None,
            step: None,
        }
    }

    /// Prints `line` above the bar, which keeps drawing below it.
    fn line(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Default for BarReporter {
    fn default() -> Self {
        Self::new()
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bytes_style(total: bool) -> ProgressStyle {
    let template = if total {
        "{spinner} {prefix} [{elapsed}] [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
    } else {
        "{spinner} {prefix} [{elapsed}] {bytes} {bytes_per_sec}"
    };
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress for BarReporter {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(what) => {
                self.clear();
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                bar.set_style(spinner_style());
                bar.set_prefix(crate::escape::line(what).into_owned());
                bar.enable_steady_tick(TICK);
                self.bar = Some(bar);
                self.step = Some(Step {
                    what: what.to_string(),
                    start: Instant::now(),
                    bytes: None,
                });
            }
            Event::Output(line) => {
                if let Some(b) = &self.bar {
                    let shown: String = line.trim().chars().take(OUTPUT_WIDTH).collect();
                    b.set_message(crate::escape::line(&shown).into_owned());
                }
            }
            Event::Bytes { done, total } => {
                if let (Some(b), Some(s)) = (&self.bar, &mut self.step) {
                    if s.bytes.is_none() {
                        b.set_style(bytes_style(total.is_some()));
                    }
                    if let Some(t) = total {
                        b.set_length(t);
                    }
                    b.set_position(done);
                    s.bytes = Some(done);
                }
            }
            Event::Done(took) => {
                self.clear();
                if let Some(s) = self.step.take() {
                    self.line(&Lines::done(&s.what, took, s.bytes));
                }
            }
            Event::Cached(what) => self.line(&Lines::cached(what)),
        }
    }
}

impl Drop for BarReporter {
    fn drop(&mut self) {
        self.clear();
        if let Some(s) = self.step.take() {
            self.line(&Lines::failed(&s.what, s.start.elapsed()));
        }
    }
}

/// The reporter for this environment ([`Mode::detect`]).
pub fn reporter() -> Box<dyn Progress> {
    match Mode::detect() {
        Mode::Bars => Box::new(BarReporter::new()),
        Mode::Lines => Box::new(LineReporter::new(std::io::stderr())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bars_only_on_a_real_terminal_outside_ci() {
        assert_eq!(Mode::choose(true, None, Some("xterm-256color")), Mode::Bars);
        assert_eq!(Mode::choose(true, None, None), Mode::Bars);
        assert_eq!(Mode::choose(false, None, Some("xterm")), Mode::Lines);
        assert_eq!(Mode::choose(true, Some("true"), Some("xterm")), Mode::Lines);
        assert_eq!(Mode::choose(true, Some("1"), Some("xterm")), Mode::Lines);
        assert_eq!(Mode::choose(true, None, Some("dumb")), Mode::Lines);
        // CI=false (or empty) is not CI.
        assert_eq!(Mode::choose(true, Some("false"), Some("xterm")), Mode::Bars);
        assert_eq!(Mode::choose(true, Some(""), Some("xterm")), Mode::Bars);
    }

    fn lines(events: &[Event<'_>]) -> Vec<String> {
        let mut buf = Vec::new();
        {
            let mut r = LineReporter::new(&mut buf);
            for e in events {
                r.event(*e);
            }
        }
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn plain_lines_for_a_download_and_a_cached_step() {
        let got = lines(&[
            Event::Cached("busybox-static 1:1.35.0-4"),
            Event::Start("downloading linux-image-6.1.0-41-cloud-amd64 6.1.158-1"),
            Event::Bytes {
                done: 1_000_000,
                total: Some(40_000_000),
            },
            Event::Bytes {
                done: 40_000_000,
                total: Some(40_000_000),
            },
            Event::Done(Duration::from_millis(2_345)),
        ]);
        assert_eq!(
            got,
            [
                "agentvm: busybox-static 1:1.35.0-4: cached",
                "agentvm: downloading linux-image-6.1.0-41-cloud-amd64 6.1.158-1",
                "agentvm: downloading linux-image-6.1.0-41-cloud-amd64 6.1.158-1: done in 2.3 s, 40.0 MB",
            ]
        );
    }

    #[test]
    fn plain_lines_show_program_output_escaped() {
        let got = lines(&[
            Event::Start("rootfs: building the base layer 0123"),
            Event::Output("Get:1 http://deb.debian.org/debian bookworm InRelease"),
            // A package script's output must not drive the terminal.
            Event::Output("evil\x1b]0;title\x07\rline"),
            Event::Done(Duration::from_secs(61)),
        ]);
        assert_eq!(
            got,
            [
                "agentvm: rootfs: building the base layer 0123",
                "  Get:1 http://deb.debian.org/debian bookworm InRelease",
                &Lines::output("evil\x1b]0;title\x07\rline"),
                "agentvm: rootfs: building the base layer 0123: done in 61.0 s",
            ]
        );
        assert!(!got.concat().contains('\x1b'), "{got:?}");
        assert!(!got.concat().contains('\r'), "{got:?}");
    }

    #[test]
    fn a_step_that_never_ends_is_reported_failed() {
        let got = lines(&[Event::Start("downloading npm 11.21.3")]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], "agentvm: downloading npm 11.21.3");
        assert!(
            got[1].starts_with("agentvm: downloading npm 11.21.3: failed after "),
            "{got:?}"
        );
        assert!(got[1].ends_with(" s"), "{got:?}");
    }

    #[test]
    fn a_done_without_a_step_prints_nothing() {
        assert!(lines(&[Event::Done(Duration::from_secs(1))]).is_empty());
        assert!(lines(&[Event::Bytes {
            done: 1,
            total: None
        }])
        .is_empty());
    }
}
