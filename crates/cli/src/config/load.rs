//! Reading a configuration file and turning TOML and serde errors into
//! `file:line:column: message` with the dotted key path, e.g.
//! ``.agentvm/config.toml:7:1: unknown key `network.mdoe` (expected one of
//! mode, domains, ports, hosts, forwards)``.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::schema::ConfigFile;

/// A configuration file's text and how to name it in messages.
#[derive(Debug, Clone)]
pub struct Source {
    /// Absolute path.
    pub path: PathBuf,
    /// The path as messages show it: relative to the current directory
    /// when the file is below it.
    pub shown: String,
    /// The file's contents.
    pub text: String,
}

impl Source {
    /// Reads `path` (absolute).
    pub fn read(path: &Path) -> anyhow::Result<Source> {
        let shown = shown_path(path);
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
        Ok(Source::new(path, text))
    }

    /// A source whose text is already in memory (`init` checks what it is
    /// about to write).
    pub fn new(path: &Path, text: String) -> Source {
        Source {
            path: path.to_path_buf(),
            shown: shown_path(path),
            text,
        }
    }

    /// The directory relative paths in this file are taken from.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// An error at a byte span of this file.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(&self.text, span.start);
        ConfigError {
            file: self.shown.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// The 1-based line of a byte offset.
    pub fn line(&self, offset: usize) -> usize {
        line_column(&self.text, offset).0
    }

    /// Parses the file into the schema.
    pub fn parse(&self) -> Result<ConfigFile, ConfigError> {
        let table = DeTable::parse(&self.text)
            .map_err(|e| self.error(e.span().unwrap_or(0..0), syntax_message(e.message())))?;
        let tree = table.clone();
        ConfigFile::deserialize(toml::de::Deserializer::from(table)).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let path = key_path(tree.get_ref(), &span);
            self.error(span, schema_message(e.message(), &path))
        })
    }
}

/// A mistake in a configuration file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as [`Source::shown`] names it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// `path` relative to the current directory when it is below it.
fn shown_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    let rel = cwd
        .as_deref()
        .and_then(|c| path.strip_prefix(c).ok())
        .filter(|r| !r.as_os_str().is_empty());
    rel.unwrap_or(path).display().to_string()
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Renders a key path the way a user writes it: `network.ports[1]`,
/// `env."MY VAR"`.
fn render_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&toml_key(k));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
pub fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// The key path of the node an error's span points at: the deepest key or
/// value whose span is exactly the error's (table spans are their headers,
/// so containment alone cannot find keys under `[table]`), else the deepest
/// value that contains it.
fn key_path(root: &DeTable<'_>, span: &Range<usize>) -> Vec<Step> {
    let mut exact = Vec::new();
    let mut containing = Vec::new();
    let mut path = Vec::new();
    walk_table(root, span, &mut path, &mut exact, &mut containing);
    if exact.is_empty() {
        containing
    } else {
        exact
    }
}

fn walk_table(
    table: &DeTable<'_>,
    span: &Range<usize>,
    path: &mut Vec<Step>,
    exact: &mut Vec<Step>,
    containing: &mut Vec<Step>,
) {
    for (key, value) in table.iter() {
        path.push(Step::Key(key.get_ref().to_string()));
        if &key.span() == span && path.len() > exact.len() {
            exact.clone_from(path);
        }
        walk_value(value.get_ref(), value.span(), span, path, exact, containing);
        path.pop();
    }
}

fn walk_value(
    value: &DeValue<'_>,
    value_span: Range<usize>,
    span: &Range<usize>,
    path: &mut Vec<Step>,
    exact: &mut Vec<Step>,
    containing: &mut Vec<Step>,
) {
    if &value_span == span && path.len() > exact.len() {
        exact.clone_from(path);
    }
    if value_span.start <= span.start && span.end <= value_span.end && path.len() > containing.len()
    {
        containing.clone_from(path);
    }
    match value {
        DeValue::Table(t) => walk_table(t, span, path, exact, containing),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Step::Index(i));
                walk_value(item.get_ref(), item.span(), span, path, exact, containing);
                path.pop();
            }
        }
        _ => {}
    }
}

/// A TOML syntax error's message, made a sentence.
fn syntax_message(message: &str) -> String {
    format!("invalid TOML: {message}")
}

/// Rewrites serde's messages ("unknown field `mdoe`, expected one of
/// `mode`, …"; "invalid type: integer `3`, expected a string") in the
/// words of a configuration file, with the key path.
fn schema_message(message: &str, path: &[Step]) -> String {
    let shown = render_path(path);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (_, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.trim_start_matches(", ");
        let names = backticked(expected);
        let hint = match names.len() {
            0 => "this table has no keys".to_string(),
            1 => format!("expected {}", names[0]),
            _ => format!("expected one of {}", names.join(", ")),
        };
        return format!("unknown key `{shown}` ({hint})");
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return format!("`{shown}` needs a `{field}` key");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let expected = expected_words(expected);
            if found.starts_with("integer ") && expected == "an integer" {
                return format!("`{shown}`: {} is out of range", found_words(found));
            }
            return format!("`{shown}` must be {expected}, not {}", found_words(found));
        }
    }
    if shown.is_empty() {
        message.to_string()
    } else {
        format!("`{shown}`: {message}")
    }
}

/// The names between backticks in serde's "expected" lists.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// serde's expected type in a configuration file's words.
fn expected_words(expected: &str) -> &str {
    match expected {
        "i64" | "u64" | "u32" | "u16" | "u8" | "usize" => "an integer",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e => e,
    }
}

/// serde's description of what was found ("integer `3`", "string \"x\"",
/// "map"), in a configuration file's words.
fn found_words(found: &str) -> String {
    match found {
        "map" => "a table".to_string(),
        "sequence" => "an array".to_string(),
        f => match f.split_once(" `") {
            Some((kind, rest)) => {
                let value = rest.split('`').next().unwrap_or(rest);
                format!("{kind} {value}")
            }
            None => f.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\n# é\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        let b = text.find("= 2").unwrap();
        assert_eq!(line_column(text, b), (3, 4));
        assert_eq!(line_column(text, text.len()), (4, 1));
    }

    #[test]
    fn keys_are_quoted_only_when_they_must_be() {
        assert_eq!(toml_key("ANTHROPIC_API_KEY"), "ANTHROPIC_API_KEY");
        assert_eq!(toml_key("my var"), "\"my var\"");
        assert_eq!(
            render_path(&[
                Step::Key("network".into()),
                Step::Key("ports".into()),
                Step::Index(1)
            ]),
            "network.ports[1]"
        );
    }

    #[test]
    fn serde_messages_become_configuration_words() {
        let path = [Step::Key("resources".into()), Step::Key("vcpus".into())];
        assert_eq!(
            schema_message("invalid type: string \"four\", expected i64", &path),
            "`resources.vcpus` must be an integer, not string \"four\""
        );
        assert_eq!(
            schema_message("invalid type: integer `3`, expected a string", &path),
            "`resources.vcpus` must be a string, not integer 3"
        );
        assert_eq!(
            schema_message("unknown field `x`, there are no fields", &path),
            "unknown key `resources.vcpus` (this table has no keys)"
        );
        assert_eq!(
            schema_message("unknown field `x`, expected `mode` or `ports`", &path),
            "unknown key `resources.vcpus` (expected one of mode, ports)"
        );
        assert_eq!(
            schema_message("something else", &path),
            "`resources.vcpus`: something else"
        );
    }
}
