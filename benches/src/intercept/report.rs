//! Percentiles of one run, and the report over all runs.

use std::time::Duration;

use crate::{Flow, Sizes, BOUND, PLAIN, UPSTREAM};

/// The p50 and p99 of `times` (nearest rank), in microseconds.
pub fn percentiles(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let at = |q: f64| {
        let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len().max(1));
        times
            .get(rank - 1)
            .map_or(f64::NAN, |t| t.as_secs_f64() * 1e6)
    };
    (at(0.50), at(0.99))
}

/// One bulk transfer.
#[derive(Clone, Copy, Default)]
pub struct Bulk {
    /// Seconds.
    pub wall: f64,
    /// Seconds of CPU of the process.
    pub cpu: f64,
}

/// One repetition's figures for one flow (times in µs).
#[derive(Clone, Copy, Default)]
pub struct Sample {
    /// Request latency.
    pub p50: f64,
    /// Request latency.
    pub p99: f64,
    /// Connect to first response.
    pub handshake_p50: f64,
    /// Connect to first response.
    pub handshake_p99: f64,
    /// The download.
    pub down: Bulk,
    /// The upload.
    pub up: Bulk,
}

impl Sample {
    /// One line for the run.
    pub fn brief(&self, bulk: u64) -> String {
        let mib = bulk as f64 / f64::from(1 << 20);
        format!(
            "request p50 {:.0} µs p99 {:.0} µs  handshake p50 {:.2} ms  \
             down {:.0} MiB/s  up {:.0} MiB/s",
            self.p50,
            self.p99,
            self.handshake_p50 / 1e3,
            mib / self.down.wall,
            mib / self.up.wall
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Prints the table: medians, added, ratio, best runs.
pub fn report(samples: &[Vec<Sample>; 2], sizes: Sizes, runs: usize, unclean: u64, checked: &str) {
    let mib = sizes.bulk as f64 / f64::from(1 << 20);
    let gib = mib / 1024.0;
    /// A row: its name, whether it is a rate (best = highest, no
    /// difference), its value.
    type Metric = (&'static str, bool, Box<dyn Fn(&Sample) -> f64>);
    let metrics: Vec<Metric> = vec![
        ("request p50 µs", false, Box::new(|s| s.p50)),
        ("request p99 µs", false, Box::new(|s| s.p99)),
        (
            "handshake+request p50 ms",
            false,
            Box::new(|s| s.handshake_p50 / 1e3),
        ),
        (
            "handshake+request p99 ms",
            false,
            Box::new(|s| s.handshake_p99 / 1e3),
        ),
        ("download MiB/s", true, Box::new(move |s| mib / s.down.wall)),
        (
            "  CPU s/GiB (process)",
            false,
            Box::new(move |s| s.down.cpu / gib),
        ),
        ("upload MiB/s", true, Box::new(move |s| mib / s.up.wall)),
        (
            "  CPU s/GiB (process)",
            false,
            Box::new(move |s| s.up.cpu / gib),
        ),
    ];
    println!(
        "bench-intercept: {BOUND} (secret bound: intercepted, placeholder substituted) vs \
         {PLAIN} (nothing bound: spliced, TLS end to end), one upstream on {UPSTREAM}; \
         per run and flow {} keep-alive requests, {} fresh connections, {mib:.0} MiB each way; \
         {runs} runs",
        sizes.requests, sizes.handshakes
    );
    println!(
        "  {:<26} {:>11} {:>9} {:>9} {:>7}   {:>16} {:>10}",
        "median", "intercepted", "plain", "added", "ratio", "best intercepted", "best plain"
    );
    for (name, rate, f) in &metrics {
        let i: Vec<f64> = samples[Flow::Intercepted as usize].iter().map(f).collect();
        let p: Vec<f64> = samples[Flow::Plain as usize].iter().map(f).collect();
        let best = |v: &[f64]| {
            if *rate {
                v.iter().copied().fold(f64::NAN, f64::max)
            } else {
                v.iter().copied().fold(f64::NAN, f64::min)
            }
        };
        let (mi, mp) = (median(i.clone()), median(p.clone()));
        let added = if *rate {
            "-".to_owned()
        } else {
            format!("{:+.2}", mi - mp)
        };
        let ratio = if mp > 0.0 && mi.is_finite() {
            format!("{:.2}x", mi / mp)
        } else {
            "-".to_owned()
        };
        println!(
            "  {name:<26} {mi:>11.2} {mp:>9.2} {added:>9} {ratio:>7}   {:>16.2} {:>10.2}",
            best(&i),
            best(&p)
        );
    }
    if unclean > 0 {
        println!("  ({unclean} connections did not close in time and were aborted)");
    }
    println!("  {checked}");
}
