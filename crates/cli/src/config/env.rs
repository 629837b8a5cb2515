//! `[env]` values: literal text with `${HOST_VAR}` references to the host's
//! environment, expanded when the VM starts (`agentvm up`), never when the
//! file is read, and never shown by `agentvm config`.
//!
//! Syntax: `${NAME}` is the host variable NAME (letters, digits, `_`, not
//! starting with a digit); `$$` is a literal `$`; any other `$` is literal.
//!
//! A reference to a host variable that is not set never fails `up`: the
//! entry is left out of the guest's environment (not set to an empty
//! string, which an agent would take for an empty API key), and `up` warns
//! about each entry the user's own file wrote. Plugins pass through
//! credentials a user may or may not have (`ANTHROPIC_API_KEY` when logging
//! in with OAuth instead), so a missing one is normal for them.

use std::collections::BTreeMap;
use std::fmt;

use super::Origin;

/// One piece of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text taken as it is.
    Literal(String),
    /// A host variable's value.
    Host(String),
}

/// A parsed `[env]` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue {
    /// The value as written.
    pub template: String,
    /// Its pieces, in order.
    pub parts: Vec<Part>,
}

impl EnvValue {
    /// Parses a value as written in a file.
    pub fn parse(template: &str) -> Result<EnvValue, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(i) = rest.find('$') {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(after) = after.strip_prefix('$') {
                literal.push('$');
                rest = after;
            } else if let Some(inner) = after.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    return Err(format!(
                        "unclosed `${{` in {template:?}: write ${{NAME}}, or $$ for a literal $"
                    ));
                };
                let name = &inner[..end];
                if !is_var_name(name) {
                    return Err(format!(
                        "`${{{name}}}` in {template:?} is not a host variable name \
                         (letters, digits and _, not starting with a digit)"
                    ));
                }
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Host(name.to_string()));
                rest = &inner[end + 1..];
            } else {
                literal.push('$');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(EnvValue {
            template: template.to_string(),
            parts,
        })
    }

    /// The host variable `name`, passed through as it is.
    pub fn host(name: &str) -> EnvValue {
        EnvValue {
            template: format!("${{{name}}}"),
            parts: vec![Part::Host(name.to_string())],
        }
    }

    /// A literal value.
    pub fn literal(text: &str) -> EnvValue {
        EnvValue {
            template: text.replace('$', "$$"),
            parts: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Literal(text.to_string())]
            },
        }
    }

    /// The host variables this value refers to, in order.
    pub fn host_vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Host(v) => Some(v.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The value with host variables filled in by `lookup`, or the first
    /// variable `lookup` does not know.
    pub fn expand(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Host(v) => out.push_str(&lookup(v).ok_or_else(|| v.clone())?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

/// Whether `name` can be a host variable's name.
pub fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An `[env]` entry and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvEntry {
    /// The value, unexpanded.
    pub value: EnvValue,
    /// The file and line, or the plugin, that set it.
    pub origin: Origin,
}

/// The guest environment for one `up`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvedEnv {
    /// Variables to set in the guest, sorted by name.
    pub vars: Vec<(String, String)>,
    /// Entries left out because a host variable they refer to is not set.
    pub left_out: Vec<LeftOut>,
}

/// An `[env]` entry that `up` leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// The guest variable.
    pub key: String,
    /// The host variable that is not set.
    pub host_var: String,
    /// Where the entry was set.
    pub origin: Origin,
}

impl LeftOut {
    /// Whether `up` should warn: the user wrote this entry (plugins pass
    /// through optional credentials, missing ones are normal).
    pub fn worth_a_warning(&self) -> bool {
        !matches!(self.origin, Origin::BuiltIn(_))
    }
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: env.{} is left out of the guest: host variable {} is not set",
            self.origin, self.key, self.host_var
        )
    }
}

/// Expands every entry with `lookup` (`std::env::var` at `up`).
pub fn resolve(
    env: &BTreeMap<String, EnvEntry>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> ResolvedEnv {
    let mut out = ResolvedEnv::default();
    for (key, entry) in env {
        match entry.value.expand(lookup) {
            Ok(v) => out.vars.push((key.clone(), v)),
            Err(host_var) => out.left_out.push(LeftOut {
                key: key.clone(),
                host_var,
                origin: entry.origin.clone(),
            }),
        }
    }
    out
}

/// The host environment, for [`resolve`] and [`redacted`].
pub fn host_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// What `agentvm config` shows beside a value instead of the host's
/// secrets: `<set>`/`<unset>` for each variable, `None` for a literal.
pub fn redacted(value: &EnvValue, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let vars: Vec<&str> = value.host_vars().collect();
    let state = |v: &str| {
        if lookup(v).is_some() {
            "<set>"
        } else {
            "<unset>"
        }
    };
    match vars.as_slice() {
        [] => None,
        [one] => Some(state(one).to_string()),
        many => Some(
            many.iter()
                .map(|v| format!("{v} {}", state(v)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn values_parse_into_literals_and_host_variables() {
        let cases: &[(&str, Vec<Part>)] = &[
            ("plain", vec![Part::Literal("plain".into())]),
            ("", vec![]),
            ("${TOKEN}", vec![Part::Host("TOKEN".into())]),
            (
                "Bearer ${TOKEN}!",
                vec![
                    Part::Literal("Bearer ".into()),
                    Part::Host("TOKEN".into()),
                    Part::Literal("!".into()),
                ],
            ),
            ("$$5 and $HOME", vec![Part::Literal("$5 and $HOME".into())]),
            (
                "${A}${_b2}",
                vec![Part::Host("A".into()), Part::Host("_b2".into())],
            ),
            ("$${NOT}", vec![Part::Literal("${NOT}".into())]),
            ("end$", vec![Part::Literal("end$".into())]),
        ];
        for (text, parts) in cases {
            assert_eq!(&EnvValue::parse(text).unwrap().parts, parts, "{text}");
        }
    }

    #[test]
    fn bad_references_are_refused() {
        for (text, why) in [
            ("${TOKEN", "unclosed"),
            ("${}", "not a host variable name"),
            ("${1X}", "not a host variable name"),
            ("${A-B}", "not a host variable name"),
        ] {
            let err = EnvValue::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn literal_and_host_constructors_round_trip() {
        let lit = EnvValue::literal("a$b");
        assert_eq!(lit, EnvValue::parse(&lit.template).unwrap());
        let host = EnvValue::host("OPENAI_API_KEY");
        assert_eq!(host, EnvValue::parse("${OPENAI_API_KEY}").unwrap());
    }

    #[test]
    fn unset_host_variables_leave_the_entry_out() {
        let entry = |v: &str, origin: Origin| EnvEntry {
            value: EnvValue::parse(v).unwrap(),
            origin,
        };
        let file = Origin::File {
            file: "c.toml".into(),
            line: 3,
        };
        let env = BTreeMap::from([
            ("A".to_string(), entry("Bearer ${TOKEN}", file.clone())),
            (
                "B".to_string(),
                entry("${MISSING}", Origin::BuiltIn("codex")),
            ),
            ("C".to_string(), entry("x${MISSING2}", file.clone())),
            ("D".to_string(), entry("${EMPTY}", file.clone())),
            ("E".to_string(), entry("lit", file.clone())),
        ]);
        let r = resolve(&env, &lookup);
        assert_eq!(
            r.vars,
            vec![
                ("A".into(), "Bearer s3cret".into()),
                ("D".into(), String::new()),
                ("E".into(), "lit".into())
            ]
        );
        assert_eq!(r.left_out.len(), 2);
        assert!(!r.left_out[0].worth_a_warning());
        assert!(r.left_out[1].worth_a_warning());
        assert_eq!(
            r.left_out[1].to_string(),
            "c.toml:3: env.C is left out of the guest: host variable MISSING2 is not set"
        );
    }

    #[test]
    fn redaction_names_states_never_values() {
        let show = |v: &str| redacted(&EnvValue::parse(v).unwrap(), &lookup);
        assert_eq!(show("${TOKEN}").as_deref(), Some("<set>"));
        assert_eq!(show("${NOPE}").as_deref(), Some("<unset>"));
        assert_eq!(
            show("${TOKEN}:${NOPE}").as_deref(),
            Some("TOKEN <set>, NOPE <unset>")
        );
        assert_eq!(show("literal"), None);
    }
}
