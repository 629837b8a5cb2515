//! Guest-controlled text on the user's terminal, made harmless.
//!
//! The console, DNS names in the audit log, a VM's name and anything else a
//! guest (or a hostile workspace file) wrote may hold terminal control
//! sequences: OSC 52 writes the user's clipboard, cursor moves erase or
//! forge lines, bidirectional overrides make text read differently than it
//! runs. Before such text is printed, every control character is replaced
//! by a visible escape (`\x1b`, `\u{202e}`), so what reaches the terminal
//! is plain text. `agentvm logs --raw` is the one way to get the bytes.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls,
/// DEL, and the Unicode bidirectional formatting characters.
fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    let _ = match u32::from(c) {
        n @ 0..=0xff => write!(out, "\\x{n:02x}"),
        n => write!(out, "\\u{{{n:x}}}"),
    };
}

/// `text` for a terminal, keeping its line structure: newlines and tabs
/// stay, a carriage return before a newline goes (serial consoles end
/// lines in CR LF), every other control character is escaped.
pub fn text(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| is_control(c) && c != '\n' && c != '\t')
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' if chars.peek() == Some(&'\n') => {}
            c if is_control(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` as one line of a table or message: newlines and tabs escaped
/// too, so one value can never look like two.
pub fn line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_control(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Bytes that should be text (invalid UTF-8 shown as U+FFFD), for a
/// terminal as [`text`] does.
pub fn bytes(bytes: &[u8]) -> String {
    text(&String::from_utf8_lossy(bytes)).into_owned()
}

/// A JSON line for a terminal: serde escapes C0 controls itself, but not
/// DEL, C1 controls or bidi characters; those become `\u` escapes, which
/// keeps the line valid JSON with the same meaning.
pub fn json_line(line: &str) -> Cow<'_, str> {
    if !line.chars().any(|c| is_control(c) && c != '\n') {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if is_control(c) && c != '\n' {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each dangerous input becomes, in both modes.
    const TABLE: &[(&str, &str, &str)] = &[
        // (input, text(), line())
        ("plain", "plain", "plain"),
        ("a\nb\tc", "a\nb\tc", "a\\x0ab\\x09c"),
        ("line\r\n", "line\n", "line\\x0d\\x0a"),
        ("over\rwrite", "over\\x0dwrite", "over\\x0dwrite"),
        // OSC 52: set the clipboard.
        (
            "\x1b]52;c;ZXZpbA==\x07",
            "\\x1b]52;c;ZXZpbA==\\x07",
            "\\x1b]52;c;ZXZpbA==\\x07",
        ),
        // Cursor up and erase line: forge the line above.
        ("\x1b[1A\x1b[2K", "\\x1b[1A\\x1b[2K", "\\x1b[1A\\x1b[2K"),
        // C1 CSI and DEL.
        ("\u{9b}31m\x7f", "\\x9b31m\\x7f", "\\x9b31m\\x7f"),
        // Right-to-left override.
        ("a\u{202e}b", "a\\u{202e}b", "a\\u{202e}b"),
        ("héllo ✓", "héllo ✓", "héllo ✓"),
    ];

    #[test]
    fn control_characters_are_escaped() {
        for (input, as_text, as_line) in TABLE {
            assert_eq!(text(input), *as_text, "text({input:?})");
            assert_eq!(line(input), *as_line, "line({input:?})");
            assert!(!text(input).contains('\x1b'));
            assert!(!line(input).chars().any(|c| c.is_control()));
        }
    }

    #[test]
    fn clean_text_is_not_copied() {
        assert!(matches!(text("ok\n"), Cow::Borrowed(_)));
        assert!(matches!(line("ok"), Cow::Borrowed(_)));
    }

    #[test]
    fn invalid_utf8_becomes_a_replacement_character() {
        assert_eq!(bytes(b"a\xffb\x1b"), "a\u{fffd}b\\x1b");
    }

    #[test]
    fn json_lines_stay_json() {
        let raw = serde_json::json!({"name": "a\u{9b}b\u{202e}c\x1b"}).to_string();
        let shown = json_line(&raw);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back["name"], "a\u{9b}b\u{202e}c\x1b");
    }
}
