//! Parses what the guests print (see [`crate::programs`] for the format).
//!
//! ```
//! use agentvm_testguest::Report;
//!
//! let out = "probe=boot64\nrsi=0x0000000000007000\ncmdline=console=ttyS0\n\
//!            e820_addr=0x0000000000000000\ne820_size=0x000000000009fc00\ne820_type=0x0000000000000001\n\
//!            notified\nprobe_end=boot64\n";
//! let r = Report::parse(out);
//! assert!(r.is_complete());
//! assert_eq!(r.value("rsi"), Some(0x7000));
//! assert_eq!(r.text("cmdline"), Some("console=ttyS0"));
//! assert_eq!(r.memory_map()[0].size, 0x9fc00);
//! assert!(r.has_line("notified"));
//! ```

/// One memory map entry as printed by a probe (`e820_*` or `memmap_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type (1 = RAM, 2 = reserved, 3 = ACPI, …).
    pub kind: u32,
}

/// The lines a guest printed, with lookups by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    lines: Vec<String>,
}

impl Report {
    /// Splits serial output into lines (a trailing `\r` is dropped, so a
    /// console that adds one does not matter).
    pub fn parse(output: &str) -> Self {
        let lines = output
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        Self { lines }
    }

    /// All lines, in order.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Every value printed as `key=<text>`, in order.
    pub fn texts<'s, 'k>(&'s self, key: &'k str) -> impl Iterator<Item = &'s str> + use<'s, 'k> {
        self.lines
            .iter()
            .filter_map(move |l| l.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }

    /// The first value printed as `key=<text>`.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.texts(key).next()
    }

    /// Every `key=0x…` value, in order (values that do not parse are skipped).
    pub fn values(&self, key: &str) -> Vec<u64> {
        self.texts(key).filter_map(parse_hex).collect()
    }

    /// The first `key=0x…` value.
    pub fn value(&self, key: &str) -> Option<u64> {
        self.text(key).and_then(parse_hex)
    }

    /// Whether `line` was printed as a whole line.
    pub fn has_line(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    /// The probe's name from its first `probe=` line.
    pub fn probe(&self) -> Option<&str> {
        self.text("probe")
    }

    /// Whether the probe printed its closing `probe_end=<name>` line.
    pub fn is_complete(&self) -> bool {
        self.probe()
            .is_some_and(|p| self.texts("probe_end").any(|e| e == p))
    }

    /// The memory map: the boot probe's `e820_*` lines, else the PVH probe's
    /// `memmap_*` lines.
    pub fn memory_map(&self) -> Vec<MemoryMapEntry> {
        let prefix = if self.text("e820_addr").is_some() {
            "e820"
        } else {
            "memmap"
        };
        let addrs = self.values(&format!("{prefix}_addr"));
        let sizes = self.values(&format!("{prefix}_size"));
        let kinds = self.values(&format!("{prefix}_type"));
        addrs
            .into_iter()
            .zip(sizes)
            .zip(kinds)
            .map(|((addr, size), kind)| MemoryMapEntry {
                addr,
                size,
                kind: kind as u32,
            })
            .collect()
    }
}

/// Parses `0x…` hex.
fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_repeat_in_order_and_bad_values_are_skipped() {
        let r = Report::parse("a=0x1\r\na=0x2\na=zz\nb=text=with=equals\nflag\n");
        assert_eq!(r.values("a"), vec![1, 2]);
        assert_eq!(r.value("a"), Some(1));
        assert_eq!(r.text("b"), Some("text=with=equals"));
        assert!(r.has_line("flag"));
        assert!(!r.has_line("fla"));
        assert_eq!(r.value("missing"), None);
    }

    #[test]
    fn completeness_needs_the_matching_end_line() {
        assert!(!Report::parse("probe=pvh32\nebx=0x0\n").is_complete());
        assert!(!Report::parse("probe=pvh32\nprobe_end=boot64\n").is_complete());
        assert!(Report::parse("probe=pvh32\nprobe_end=pvh32\n").is_complete());
        assert!(!Report::parse("").is_complete());
    }

    #[test]
    fn memory_map_reads_pvh_lines() {
        let r = Report::parse("memmap_addr=0x100000\nmemmap_size=0x200\nmemmap_type=0x1\n");
        assert_eq!(
            r.memory_map(),
            vec![MemoryMapEntry {
                addr: 0x100000,
                size: 0x200,
                kind: 1
            }]
        );
    }
}
