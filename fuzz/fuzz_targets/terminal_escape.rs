//! Guest-controlled text on the user's terminal (console, DNS names in the
//! audit log, VM names): whatever the bytes, what the CLI's escaping
//! (`crates/cli/src/escape.rs`, compiled in as it is) prints holds no
//! control character or bidirectional override, and a JSON line keeps its
//! meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../../crates/cli/src/escape.rs"]
mod escape;

/// What must not reach a terminal as it is.
fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fuzz_target!(|data: &[u8]| {
    let shown = escape::bytes(data);
    assert!(!shown
        .chars()
        .any(|c| is_control(c) && c != '\n' && c != '\t'));
    let text = String::from_utf8_lossy(data);
    assert!(!escape::line(&text).chars().any(is_control));
    let record = json!({ "name": text });
    let line = record.to_string();
    let safe = escape::json_line(&line);
    assert!(!safe.chars().any(is_control));
    let back: Value = serde_json::from_str(&safe).expect("still JSON");
    assert_eq!(back, record);
});
