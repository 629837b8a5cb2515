//! Placeholders: what the guest holds instead of a secret's value.
//!
//! A placeholder is drawn from the OS's random number generator for each
//! VM and secret, and shaped like the value it stands for, so that an
//! agent's own checks of its key's format pass: a known prefix is kept
//! (`sk-ant-api03-`, `sk-proj-`, `sk-`, `AIza`, `ghp_`, `github_pat_`, …),
//! and the rest has the value's length and characters of the same classes
//! (lowercase, uppercase, digits, and the punctuation among `-_.+/=~` the
//! value uses). The random part carries at least [`MIN_BITS`] bits, so it
//! is longer than the value's rest when that is short or its alphabet
//! small: a placeholder is never guessable, and it tells nothing of the
//! value but its shape.
//!
//! [`generate_all`] makes the placeholders of one VM: none equal to,
//! containing or contained in a value or another placeholder (the network
//! stack replaces placeholders by search, so one must never be found
//! inside another).

/// Prefixes kept from a value, longest first: the formats agents check.
const KNOWN_PREFIXES: &[&str] = &[
    // Anthropic: API keys and OAuth tokens.
    "sk-ant-api03-",
    "sk-ant-oat01-",
    "sk-ant-",
    // OpenAI: project, service account, admin, legacy keys.
    "sk-proj-",
    "sk-svcacct-",
    "sk-admin-",
    "sk-",
    // Google API keys (Gemini).
    "AIza",
    // GitHub: fine-grained, classic, OAuth, user-to-server, server, refresh.
    "github_pat_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    // GitLab, Slack.
    "glpat-",
    "xoxb-",
    "xoxp-",
];

/// Punctuation a placeholder may use, when the value does.
const PUNCTUATION: &str = "-_.+/=~";

/// The least entropy of a placeholder's random part, bits.
pub const MIN_BITS: f64 = 128.0;

/// How many times a clash (a placeholder inside a value or another
/// placeholder) is redrawn before giving up; with [`MIN_BITS`] of
/// randomness a single clash is already astronomically unlikely.
const MAX_DRAWS: usize = 16;

/// Why no placeholder could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlaceholderError {
    /// The OS's random number generator failed.
    #[error("the system's random number generator failed: {0}")]
    Random(getrandom::Error),
    /// Every draw clashed (only with a broken random number generator).
    #[error("cannot draw a placeholder unlike the values and the other placeholders")]
    Clash,
}

/// The known prefix `value` starts with, if any.
pub fn known_prefix(value: &str) -> Option<&'static str> {
    KNOWN_PREFIXES
        .iter()
        .copied()
        .find(|p| value.starts_with(p))
}

/// The characters a placeholder for `rest` (a value without its known
/// prefix) is drawn from: the classes `rest` uses; letters and digits when
/// it uses none of them.
fn alphabet(rest: &str) -> Vec<u8> {
    let mut out = classes(rest);
    // Never the value's first character: then the placeholder's random part
    // can never hold the value, however short it is.
    if let Some(first) = rest.bytes().next() {
        if out.len() > 2 {
            out.retain(|&c| c != first);
        }
    }
    out
}

/// The character classes of `rest`, as a list of characters.
fn classes(rest: &str) -> Vec<u8> {
    let has = |f: fn(&char) -> bool| rest.chars().any(|c| f(&c));
    let mut out = Vec::new();
    let lower = has(char::is_ascii_lowercase);
    let upper = has(char::is_ascii_uppercase);
    let digit = has(char::is_ascii_digit);
    let none = !(lower || upper || digit);
    if lower || none {
        out.extend(b'a'..=b'z');
    }
    if upper || none {
        out.extend(b'A'..=b'Z');
    }
    if digit || none {
        out.extend(b'0'..=b'9');
    }
    out.extend(PUNCTUATION.bytes().filter(|&p| rest.contains(p as char)));
    out
}

/// One placeholder for `value`, from `random` (a source of random bytes).
pub fn generate(
    value: &str,
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), PlaceholderError>,
) -> Result<String, PlaceholderError> {
    let prefix = known_prefix(value).unwrap_or("");
    let rest = &value[prefix.len()..];
    let alphabet = alphabet(rest);
    let bits_each = (alphabet.len() as f64).log2();
    let needed = (MIN_BITS / bits_each).ceil() as usize;
    let len = rest.chars().count().max(needed);
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    // Rejection sampling: only bytes below the largest multiple of the
    // alphabet's size, so every character is equally likely.
    let n = alphabet.len();
    let limit = 256 - 256 % n;
    let mut buf = [0u8; 64];
    while out.len() < prefix.len() + len {
        random(&mut buf)?;
        for &b in buf.iter().filter(|&&b| usize::from(b) < limit) {
            if out.len() == prefix.len() + len {
                break;
            }
            out.push(char::from(alphabet[usize::from(b) % n]));
        }
    }
    Ok(out)
}

/// The OS's random number generator, for [`generate`].
pub fn os_random(buf: &mut [u8]) -> Result<(), PlaceholderError> {
    getrandom::fill(buf).map_err(PlaceholderError::Random)
}

/// Values shorter than this may turn up inside another secret's
/// placeholder by chance, as in any random text, which tells nothing; a
/// placeholder never holds its own value, whatever its length (its
/// alphabet lacks the value's first character).
const MIN_TELLING: usize = 8;

/// One placeholder per value, in order: each unlike every value and every
/// other placeholder (none equal to, inside, or around another; see
/// [`MIN_TELLING`] for short values).
pub fn generate_all(
    values: &[&str],
    random: &mut dyn FnMut(&mut [u8]) -> Result<(), PlaceholderError>,
) -> Result<Vec<String>, PlaceholderError> {
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        let mut draws = 0;
        let placeholder = loop {
            if draws == MAX_DRAWS {
                return Err(PlaceholderError::Clash);
            }
            draws += 1;
            let p = generate(value, random)?;
            let clashes = |other: &str, min: usize| {
                p == other
                    || other.contains(p.as_str())
                    || (other.len() >= min.max(1) && p.contains(other))
            };
            let own = |v: &&str| v == value;
            if !values
                .iter()
                .any(|v| clashes(v, if own(v) { 1 } else { MIN_TELLING }))
                && !out.iter().any(|o| clashes(o, 1))
            {
                break p;
            }
        };
        out.push(placeholder);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(s: &str) -> Vec<u8> {
        let mut classes = classes(s);
        classes.sort_unstable();
        classes
    }

    #[test]
    fn known_formats_keep_their_prefix_length_and_alphabet() {
        let cases = [
            // An Anthropic key: 93 base64url characters, then "AA".
            format!("sk-ant-api03-{}-_AA", "aZ09".repeat(23)),
            format!("sk-ant-oat01-{}", "Ab1_".repeat(20)),
            format!("sk-proj-{}", "Ab9-_x".repeat(26)),
            format!("sk-{}", "AbcD1234".repeat(6)),
            format!("AIza{}", "SyA-_09zZ".repeat(4)),
            format!("ghp_{}", "aB3".repeat(12)),
            format!("github_pat_{}", "11ABCDEFG_abc".repeat(7)),
        ];
        for value in &cases {
            let p = generate_all(&[value], &mut os_random).unwrap().remove(0);
            let prefix = known_prefix(value).unwrap();
            assert!(p.starts_with(prefix), "{p} for {value}");
            assert_eq!(p.len(), value.len(), "{p} for {value}");
            let (rest, vrest) = (&p[prefix.len()..], &value[prefix.len()..]);
            assert!(
                rest.bytes().all(|b| alphabet(vrest).contains(&b)),
                "{p} for {value}"
            );
            assert_ne!(&p, value);
            assert!(!p.contains(vrest) && !value.contains(rest));
        }
        // The longest prefix wins.
        assert_eq!(known_prefix("sk-ant-api03-x"), Some("sk-ant-api03-"));
        assert_eq!(known_prefix("sk-proj-x"), Some("sk-proj-"));
        assert_eq!(known_prefix("gh_x"), None);
    }

    #[test]
    fn unknown_formats_keep_length_and_character_classes() {
        for value in [
            "0123456789abcdef0123456789abcdef01234567", // hex
            "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ",     // upper only
            "tok.en+with/slash=",
        ] {
            let p = generate(value, &mut os_random).unwrap();
            assert!(p.len() >= value.len());
            assert!(
                p.bytes().all(|b| shape(value).contains(&b)),
                "{p} for {value}"
            );
        }
        // A short value gets a longer placeholder: never fewer than 128
        // random bits.
        let p = generate("1234", &mut os_random).unwrap();
        assert!(p.bytes().all(|b| b.is_ascii_digit()));
        assert!(p.len() >= 39, "{p}");
        // A value of other characters gets letters and digits.
        let p = generate("ünïcødé spaces", &mut os_random).unwrap();
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()), "{p}");
    }

    #[test]
    fn placeholders_are_unique_and_unlike_every_value() {
        // A placeholder never holds its own value, even a one-letter one.
        for _ in 0..500 {
            let p = generate("x", &mut os_random).unwrap();
            assert!(!p.contains('x'), "{p}");
        }
        let values = ["sk-ant-api03-abc", "sk-ant-api03-abc", "x", "12345678"];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let ps = generate_all(&values, &mut os_random).unwrap();
            assert_eq!(ps.len(), 4);
            for (i, p) in ps.iter().enumerate() {
                for v in values {
                    let telling = v == values[i] || v.len() >= MIN_TELLING;
                    assert!(!v.contains(p.as_str()), "{p} / {v}");
                    assert!(!(telling && p.contains(v)), "{p} / {v}");
                }
                for (j, q) in ps.iter().enumerate() {
                    assert!(i == j || !p.contains(q.as_str()), "{p} / {q}");
                }
                assert!(seen.insert(p.clone()), "{p} drawn twice");
            }
        }
    }

    #[test]
    fn a_clash_is_redrawn_and_a_broken_generator_gives_up() {
        // A generator that repeats itself: every draw is the same string.
        let mut stuck = |buf: &mut [u8]| {
            buf.fill(7);
            Ok(())
        };
        let err = generate_all(&["abc", "abd"], &mut stuck).unwrap_err();
        assert!(matches!(err, PlaceholderError::Clash), "{err}");
        // A value that happens to equal the first draw: the next is used.
        let first = generate("abc", &mut stuck).unwrap();
        let mut n = 0u8;
        let mut counting = |buf: &mut [u8]| {
            n = n.wrapping_add(1);
            buf.fill(if n == 1 { 7 } else { n });
            Ok(())
        };
        let ps = generate_all(&[&first], &mut counting).unwrap();
        assert_ne!(ps[0], first);
    }
}
