//! The guest kernel's config fragment (`guest/kernel/microvm.config`):
//! its syntax, and that it sets every option in
//! `guest/kernel/required-options.txt`.
//!
//! `kernel_build_keeps_every_fragment_option` also builds the kernel with
//! `guest/kernel/build.sh` ([`OwnKernel`], cached in
//! `$AGENTVM_KERNEL_CACHE`, else `~/.cache/agentvm/kernel/<key>/`; minutes
//! when the cache lacks it) and checks the resulting `.config` against the
//! fragment, and that both the vmlinux and the bzImage are there.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agentvm_image::{kernel, own_kernel, Cache, OwnKernel};

/// A config option's setting as a fragment or `.config` states it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    /// `CONFIG_X=value` (`y`, a number or a quoted string).
    Value(String),
    /// `# CONFIG_X is not set`.
    NotSet,
}

fn kernel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel")
}

fn fragment_path() -> PathBuf {
    kernel_dir().join("microvm.config")
}

/// A Kconfig symbol: letters, digits and `_`, not starting lower-case
/// (`64BIT`; a few drivers' names have lower-case letters inside:
/// `CRYPTO_DEV_QAT_DH895xCC`).
fn is_name(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| !b.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses a fragment or `.config`: option lines in order, or the first
/// syntax error (with its line number). Other `#` lines are comments.
fn parse_config(text: &str) -> Result<Vec<(String, Setting)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let unset = comment
                .strip_prefix(" CONFIG_")
                .and_then(|r| r.strip_suffix(" is not set"));
            match unset {
                Some(name) if is_name(name) => out.push((name.to_string(), Setting::NotSet)),
                Some(_) => return Err(format!("line {n}: bad option name: {line}")),
                // A comment that mentions an option must not look like one.
                None if comment.trim_start().starts_with("CONFIG_") => {
                    return Err(format!("line {n}: commented-out option: {line}"))
                }
                None => {}
            }
            continue;
        }
        let Some((name, value)) = line.strip_prefix("CONFIG_").and_then(|r| r.split_once('='))
        else {
            return Err(format!("line {n}: expected CONFIG_X=value: {line}"));
        };
        let valid_value = value == "y"
            || value == "m"
            || value.parse::<i64>().is_ok()
            || value.starts_with("0x")
            || (value.len() >= 2 && value.starts_with('"') && value.ends_with('"'));
        if !is_name(name) || !valid_value {
            return Err(format!("line {n}: bad option: {line}"));
        }
        out.push((name.to_string(), Setting::Value(value.to_string())));
    }
    Ok(out)
}

/// The fragment as a map, after checking it has no duplicates.
fn fragment() -> BTreeMap<String, Setting> {
    let text = std::fs::read_to_string(fragment_path()).unwrap();
    let lines = parse_config(&text).unwrap_or_else(|e| panic!("microvm.config: {e}"));
    let mut map = BTreeMap::new();
    for (name, setting) in lines {
        if let Some(old) = map.insert(name.clone(), setting) {
            panic!("microvm.config: CONFIG_{name} appears twice (first {old:?})");
        }
    }
    map
}

/// `required-options.txt`: (name, must be `y` rather than not set).
fn required() -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(kernel_dir().join("required-options.txt")).unwrap();
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| match l.strip_prefix('!') {
            Some(name) => (name.to_string(), false),
            None => (l.to_string(), true),
        })
        .inspect(|(name, _)| assert!(is_name(name), "required-options.txt: bad name {name}"))
        .collect()
}

#[test]
fn fragment_parses_without_duplicates_or_modules() {
    let frag = fragment();
    assert!(frag.len() > 50, "suspiciously short fragment");
    let modules: Vec<_> = frag
        .iter()
        .filter(|(_, s)| **s == Setting::Value("m".into()))
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        modules.is_empty(),
        "=m in a kernel without modules: {modules:?}"
    );
    assert_eq!(frag.get("MODULES"), Some(&Setting::NotSet));
}

#[test]
fn fragment_sets_every_required_option() {
    let frag = fragment();
    let mut wrong = Vec::new();
    for (name, on) in required() {
        let want = if on {
            Setting::Value("y".into())
        } else {
            Setting::NotSet
        };
        if frag.get(&name) != Some(&want) {
            wrong.push(format!(
                "CONFIG_{name}: want {want:?}, have {:?}",
                frag.get(&name)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "microvm.config misses:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn parser_rejects_bad_lines() {
    assert!(parse_config("CONFIG_A=y\n# CONFIG_B is not set\n# note\n").is_ok());
    for bad in [
        "CONFIG_A",
        "A=y",
        "CONFIG_a=y",
        "CONFIG_A-B=y",
        "CONFIG_A=yes",
        "#CONFIG_A=y",
        "# CONFIG_a is not set",
    ] {
        assert!(parse_config(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn kernel_build_keeps_every_fragment_option() {
    // Builds the kernel when the cache lacks it (minutes): CI does, so
    // the scenarios that boot it never skip.
    let cache = Cache::from_env(own_kernel::CACHE_ENV, own_kernel::CACHE_DIR).unwrap();
    let mut progress = |line: &str| eprintln!("{line}");
    let built = OwnKernel::build(&cache, &OwnKernel::source(), &mut progress)
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = built.dir;

    let config = std::fs::read_to_string(dir.join("config")).unwrap();
    let built: BTreeMap<String, Setting> = parse_config(&config)
        .unwrap_or_else(|e| panic!("built .config: {e}"))
        .into_iter()
        .collect();
    let mut dropped = Vec::new();
    for (name, want) in fragment() {
        let have = built.get(&name);
        let ok = match &want {
            Setting::Value(_) => have == Some(&want),
            // Options whose dependencies are off do not appear at all.
            Setting::NotSet => have.is_none_or(|h| *h == Setting::NotSet),
        };
        if !ok {
            dropped.push(format!("CONFIG_{name}: want {want:?}, built {have:?}"));
        }
    }
    assert!(
        dropped.is_empty(),
        "the built kernel lost fragment options:\n{}",
        dropped.join("\n")
    );

    let vmlinux = std::fs::read(dir.join("vmlinux")).unwrap();
    assert!(
        vmlinux.starts_with(b"\x7fELF"),
        "vmlinux is not an ELF file"
    );
    assert!(
        kernel::pvh_entry(&vmlinux).is_some(),
        "vmlinux has no PVH entry note (CONFIG_PVH)"
    );
    let bzimage = std::fs::read(dir.join("bzImage")).unwrap();
    assert_eq!(
        &bzimage[0x202..0x206],
        b"HdrS",
        "bzImage lacks the boot protocol header"
    );
}
