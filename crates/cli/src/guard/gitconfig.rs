//! A reader and editor for git's config syntax: finds every entry with its
//! byte range, so an entry can be cut out without touching the rest of the
//! file, and appends entries in a form git reads back unchanged.
//!
//! The reader follows git's own parser (`config.c`) character by character:
//! a file it accepts yields the same full names (`section.subsection.key`)
//! and values git derives. Where the two could differ it rejects the file,
//! and the caller then treats the whole file as replaced. Nothing here panics
//! on any input: every byte index stays within the text it was taken from.

use std::fmt;

/// Config keys that make git run a program, or read config, hooks or a work
/// tree from somewhere else. `s.k` is key `k` of section `s` without a
/// subsection; `s.*.k` the key in any subsection; a bare `s` every key of the
/// section, with or without a subsection. Lowercase, as git lowercases
/// section and key names (a named subsection is compared as written).
const EXECUTABLE_KEYS: &[&str] = &[
    // Run by `git status` and most other commands.
    "core.fsmonitor",
    "core.hookspath",
    "core.pager",
    "pager",
    "core.editor",
    "sequence.editor",
    "core.askpass",
    "interactive.difffilter",
    // Redirect git to other config, hooks or a work tree.
    "include.path",
    "includeif.*.path",
    "core.worktree",
    // Every alias: even one without `!` can pass `-c core.fsmonitor=...`.
    "alias",
    // Diff, merge and checkout drivers.
    "diff.external",
    "diff.*.textconv",
    "diff.*.command",
    "filter.*.clean",
    "filter.*.smudge",
    "filter.*.process",
    "merge.*.driver",
    "difftool.*.cmd",
    "difftool.*.path",
    "mergetool.*.cmd",
    "mergetool.*.path",
    // Transport, credentials and signing.
    "core.sshcommand",
    "ssh.variant",
    "core.gitproxy",
    "core.alternaterefscommand",
    "credential.helper",
    "credential.*.helper",
    "remote.*.uploadpack",
    "remote.*.receivepack",
    "uploadpack.packobjectshook",
    // `protocol.ext.allow=always` lets a remote URL `ext::sh -c ...` run.
    "protocol.allow",
    "protocol.*.allow",
    "gpg.program",
    "gpg.*.program",
    "gpg.ssh.defaultkeycommand",
    "submodule.*.update",
    // Config-based hooks (git 2.50 and later).
    "hook",
    // Commands of porcelain and helper programs.
    "trailer.*.command",
    "trailer.*.cmd",
    "man.*.cmd",
    "man.*.path",
    "browser.*.cmd",
    "browser.*.path",
    "web.browser",
    "guitool.*.cmd",
    "instaweb",
    "imap.tunnel",
    "sendemail",
];

/// A config file git would refuse to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The 1-based line git would name.
    pub line: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad config line {}", self.line)
    }
}

impl std::error::Error for ParseError {}

/// One `key = value` (or bare `key`) of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The section name, lowercase.
    pub section: String,
    /// The subsection exactly as git sees it (lowercased when written in
    /// the deprecated `[section.subsection]` form).
    pub subsection: Option<Vec<u8>>,
    /// The key name, lowercase.
    pub key: String,
    /// The value after unquoting and unescaping; `None` for a bare key
    /// (boolean true).
    pub value: Option<Vec<u8>>,
    /// Where the entry starts: its key, or the start of its line when only
    /// whitespace precedes the key.
    start: usize,
    /// Whether text other than whitespace (a section header) precedes the
    /// key on its line, so removing the entry must leave a line break.
    shares_line: bool,
    /// Just past the line break that ends the entry (or the end of the text).
    end: usize,
}

impl Entry {
    /// A new entry, for [`append`] (tests build entries this way).
    #[cfg(test)]
    pub fn new(section: &str, subsection: Option<&[u8]>, key: &str, value: Option<&[u8]>) -> Self {
        Entry {
            section: section.to_ascii_lowercase(),
            subsection: subsection.map(<[u8]>::to_vec),
            key: key.to_ascii_lowercase(),
            value: value.map(<[u8]>::to_vec),
            start: 0,
            shares_line: false,
            end: 0,
        }
    }

    /// The full name as `git config --list` prints it.
    pub fn name(&self) -> String {
        match &self.subsection {
            Some(sub) => format!(
                "{}.{}.{}",
                self.section,
                String::from_utf8_lossy(sub),
                self.key
            ),
            None => format!("{}.{}", self.section, self.key),
        }
    }

    /// The value for people to read (`None` for a bare key).
    pub fn value_lossy(&self) -> Option<String> {
        self.value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Whether both set the same key (same name; the subsection compared
    /// case-sensitively).
    pub fn same_key(&self, other: &Entry) -> bool {
        self.section == other.section
            && self.subsection == other.subsection
            && self.key == other.key
    }

    /// Whether both set the same key to the same value.
    pub fn same_setting(&self, other: &Entry) -> bool {
        self.same_key(other) && self.value == other.value
    }

    /// Whether git runs a program or looks elsewhere because of this key
    /// (see [`EXECUTABLE_KEYS`]).
    pub fn is_executable(&self) -> bool {
        EXECUTABLE_KEYS.iter().any(|rule| {
            let mut parts = rule.split('.');
            let (section, middle, last) = (parts.next(), parts.next(), parts.next());
            if section != Some(self.section.as_str()) {
                return false;
            }
            match (middle, last) {
                (None, _) => true,
                (Some(key), None) => self.subsection.is_none() && key == self.key,
                (Some("*"), Some(key)) => self.subsection.is_some() && key == self.key,
                (Some(sub), Some(key)) => {
                    self.subsection.as_deref() == Some(sub.as_bytes()) && key == self.key
                }
            }
        })
    }
}

/// The UTF-8 byte order mark git skips at the start of a file.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Every entry of `text`, in order, or where git would stop reading it.
pub fn parse(text: &[u8]) -> Result<Vec<Entry>, ParseError> {
    let mut reader = Reader {
        text,
        pos: 0,
        eof: false,
        line: 1,
    };
    if text.first() == Some(&BOM[0]) {
        // git tolerates a whole byte order mark only.
        if !text.starts_with(BOM) {
            return Err(reader.error());
        }
        reader.pos = BOM.len();
    }
    // The section part of the names that follow: `None` before any header.
    let mut base: Option<Vec<u8>> = None;
    let mut entries = Vec::new();
    let mut comment = false;
    loop {
        let c = reader.next();
        if c == b'\n' {
            if reader.eof {
                return Ok(entries);
            }
            comment = false;
            continue;
        }
        if comment || is_space(c) {
            continue;
        }
        if c == b'#' || c == b';' {
            comment = true;
            continue;
        }
        if c == b'[' {
            base = Some(reader.section_header()?);
            continue;
        }
        if !c.is_ascii_alphabetic() {
            return Err(reader.error());
        }
        // `c` was a real byte (not a folded CR LF), so it sits at pos - 1.
        let key_start = reader.pos - 1;
        entries.push(reader.entry(c, key_start, base.as_deref())?);
    }
}

/// `text` without `entries` (which must come from `parse(text)`): each loses
/// its key, value and continuation lines, and its whole line when nothing
/// else is on it.
pub fn remove(text: &[u8], entries: &[&Entry]) -> Vec<u8> {
    let mut cuts: Vec<&Entry> = entries.to_vec();
    cuts.sort_by_key(|e| e.start);
    let mut out = Vec::with_capacity(text.len());
    let mut pos = 0;
    for entry in cuts {
        let (start, end) = (entry.start.min(text.len()), entry.end.min(text.len()));
        if start < pos || end < start {
            continue; // Not from this text: overlapping ranges cannot occur.
        }
        out.extend_from_slice(&text[pos..start]);
        if entry.shares_line {
            out.push(b'\n');
        }
        pos = end;
    }
    out.extend_from_slice(&text[pos..]);
    out
}

/// Appends `entry` under a section header of its own at the end of `text`.
pub fn append(text: &mut Vec<u8>, entry: &Entry) {
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    // A backslash before the final line break would continue the last value
    // into the header appended here: an empty line ends that value first.
    if text.ends_with(b"\\\n") || text.ends_with(b"\\\r\n") {
        text.push(b'\n');
    }
    text.push(b'[');
    text.extend_from_slice(entry.section.as_bytes());
    if let Some(sub) = &entry.subsection {
        text.extend_from_slice(b" \"");
        for &b in sub {
            if b == b'"' || b == b'\\' {
                text.push(b'\\');
            }
            text.push(b);
        }
        text.push(b'"');
    }
    text.extend_from_slice(b"]\n\t");
    text.extend_from_slice(entry.key.as_bytes());
    if let Some(value) = &entry.value {
        text.extend_from_slice(b" = \"");
        for &b in value {
            match b {
                b'"' => text.extend_from_slice(b"\\\""),
                b'\\' => text.extend_from_slice(b"\\\\"),
                b'\n' => text.extend_from_slice(b"\\n"),
                b'\t' => text.extend_from_slice(b"\\t"),
                0x08 => text.extend_from_slice(b"\\b"),
                _ => text.push(b),
            }
        }
        text.push(b'"');
    }
    text.push(b'\n');
}

/// git's `isspace`: space, tab, line feed, carriage return.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// A character of a section or key name.
fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

/// git's `config_source`: a cursor that folds CR LF into LF and returns LF
/// at the end of the text (setting `eof`).
struct Reader<'a> {
    text: &'a [u8],
    pos: usize,
    eof: bool,
    line: usize,
}

impl Reader<'_> {
    fn next(&mut self) -> u8 {
        let Some(&c) = self.text.get(self.pos) else {
            self.eof = true;
            return b'\n';
        };
        self.pos += 1;
        if c == b'\r' && self.text.get(self.pos) == Some(&b'\n') {
            self.pos += 1;
            self.line += 1;
            return b'\n';
        }
        if c == b'\n' {
            self.line += 1;
        }
        c
    }

    fn error(&self) -> ParseError {
        ParseError { line: self.line }
    }

    /// After `[`: the section name, lowercase, with `.subsection` when
    /// there is one.
    fn section_header(&mut self) -> Result<Vec<u8>, ParseError> {
        let mut name = Vec::new();
        loop {
            let c = self.next();
            if self.eof {
                return Err(self.error());
            }
            if c == b']' {
                return Ok(name);
            }
            if is_space(c) {
                return self.subsection(name, c);
            }
            if !is_key_char(c) && c != b'.' {
                return Err(self.error());
            }
            name.push(c.to_ascii_lowercase());
        }
    }

    /// `[section "subsection"]` after the space that follows the section.
    fn subsection(&mut self, mut name: Vec<u8>, mut c: u8) -> Result<Vec<u8>, ParseError> {
        while is_space(c) {
            if c == b'\n' {
                return Err(self.error());
            }
            c = self.next();
        }
        if c != b'"' {
            return Err(self.error());
        }
        name.push(b'.');
        loop {
            let mut c = self.next();
            if self.eof || c == b'\n' {
                return Err(self.error());
            }
            if c == b'"' {
                break;
            }
            if c == b'\\' {
                c = self.next();
                if c == b'\n' {
                    return Err(self.error());
                }
            }
            name.push(c);
        }
        if self.next() != b']' {
            return Err(self.error());
        }
        Ok(name)
    }

    /// A key whose first character `first` was at `key_start`, with its
    /// value.
    fn entry(
        &mut self,
        first: u8,
        key_start: usize,
        base: Option<&[u8]>,
    ) -> Result<Entry, ParseError> {
        let mut key = vec![first.to_ascii_lowercase()];
        let mut c;
        loop {
            c = self.next();
            if self.eof || !is_key_char(c) {
                break;
            }
            key.push(c.to_ascii_lowercase());
        }
        while c == b' ' || c == b'\t' {
            c = self.next();
        }
        let value = if c == b'\n' {
            None
        } else if c == b'=' {
            Some(self.value()?)
        } else {
            return Err(self.error());
        };

        // The full name as git builds it, split as git's lookups do: the
        // section up to the first dot, the key after the last one.
        let mut full = match base {
            Some(base) => [base, b"."].concat(),
            None => Vec::new(),
        };
        full.extend_from_slice(&key);
        let (section, subsection, key) = match (
            full.iter().position(|&b| b == b'.'),
            full.iter().rposition(|&b| b == b'.'),
        ) {
            (Some(first), Some(last)) if first < last => (
                &full[..first],
                Some(full[first + 1..last].to_vec()),
                &full[last + 1..],
            ),
            (Some(dot), _) => (&full[..dot], None, &full[dot + 1..]),
            _ => (&b""[..], None, &full[..]),
        };

        let line_start = self.text[..key_start]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| nl + 1);
        let shares_line = !self.text[line_start..key_start]
            .iter()
            .all(|&b| is_space(b));
        Ok(Entry {
            section: String::from_utf8_lossy(section).into_owned(),
            subsection,
            key: String::from_utf8_lossy(key).into_owned(),
            value,
            start: if shares_line { key_start } else { line_start },
            shares_line,
            end: self.pos,
        })
    }

    /// After `=`: the value up to the end of its (continued) line.
    fn value(&mut self) -> Result<Vec<u8>, ParseError> {
        let mut value = Vec::new();
        let (mut quote, mut comment) = (false, false);
        // Where the run of unquoted whitespace at the end of `value` starts.
        let mut trim: Option<usize> = None;
        loop {
            let c = self.next();
            if c == b'\n' {
                if quote {
                    return Err(self.error());
                }
                if let Some(trim) = trim {
                    value.truncate(trim);
                }
                return Ok(value);
            }
            if comment {
                continue;
            }
            if is_space(c) && !quote {
                // Leading and trailing whitespace goes; whitespace inside
                // stays as it is (git 2.40 and later; older versions made
                // each character a space: comparing raw is the stricter).
                if !value.is_empty() {
                    trim.get_or_insert(value.len());
                    value.push(c);
                }
                continue;
            }
            if !quote && (c == b';' || c == b'#') {
                comment = true;
                continue;
            }
            trim = None;
            match c {
                b'\\' => match self.next() {
                    b'\n' => {} // A continuation line.
                    b't' => value.push(b'\t'),
                    b'b' => value.push(0x08),
                    b'n' => value.push(b'\n'),
                    c @ (b'"' | b'\\') => value.push(c),
                    _ => return Err(self.error()),
                },
                b'"' => quote = !quote,
                _ => value.push(c),
            }
        }
    }
}
