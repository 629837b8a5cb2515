//! Reading secrets at `up`, and what the guest gets of them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::env::EnvValue;

fn entry(source: SecretSource, origin: Origin) -> SecretEntry {
    SecretEntry {
        source,
        hosts: vec!["api.test".into()],
        origin,
    }
}

fn file() -> Origin {
    Origin::File {
        file: "c.toml".into(),
        line: 4,
    }
}

fn lookup(name: &str) -> Option<String> {
    match name {
        "KEY" => Some("sk-ant-api03-realvalue-hunter2-AA".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

#[test]
fn values_come_from_the_host_and_the_guest_gets_placeholders() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = BTreeMap::from([
        (
            "ANTHROPIC_API_KEY".to_string(),
            entry(SecretSource::Value(EnvValue::host("KEY")), file()),
        ),
        (
            "GH_TOKEN".to_string(),
            entry(
                SecretSource::Command("printf '  ghp_fromcommand123\\n\\n'".into()),
                file(),
            ),
        ),
        (
            "MISSING".to_string(),
            entry(SecretSource::Value(EnvValue::host("NOPE")), file()),
        ),
        (
            "PLUGIN_KEY".to_string(),
            entry(
                SecretSource::Value(EnvValue::host("NOPE")),
                Origin::BuiltIn("codex"),
            ),
        ),
        (
            "EMPTY".to_string(),
            entry(SecretSource::Value(EnvValue::host("EMPTY")), file()),
        ),
        (
            "FAILS".to_string(),
            entry(SecretSource::Command("exit 3".into()), file()),
        ),
    ]);
    let r = resolve(&secrets, &lookup, dir.path()).unwrap();
    let names: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ANTHROPIC_API_KEY", "GH_TOKEN"]);
    let key = &r.secrets[0];
    assert_eq!(key.value.expose(), "sk-ant-api03-realvalue-hunter2-AA");
    assert!(key.placeholder.starts_with("sk-ant-api03-"));
    assert_eq!(key.hosts, ["api.test"]);
    // The command's output, trimmed.
    assert_eq!(r.secrets[1].value.expose(), "ghp_fromcommand123");
    assert!(r.secrets[1].placeholder.starts_with("ghp_"));
    // Left out: the user's missing, empty and failing ones are said; the
    // plugin's missing one is not.
    assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
    assert!(r
        .warnings
        .iter()
        .any(|w| w == "c.toml:4: secret EMPTY is left out of the guest: its value is empty"));
    assert!(r.warnings.iter().any(|w| w.contains("secret FAILS")
        && w.contains("its command `exit 3` failed (exit status: 3)")));
    assert!(r.warnings.iter().any(|w| w.contains("host variable NOPE")));
    assert!(!r.warnings.iter().any(|w| w.contains("PLUGIN_KEY")));

    // The guest's environment: [env] as it is, secrets as placeholders.
    let env = vec![("PLAIN".to_string(), "1".to_string())];
    let guest = guest_env(&env, &r.secrets);
    let names: Vec<&str> = guest.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["ANTHROPIC_API_KEY", "GH_TOKEN", "PLAIN"]);
    for (k, v) in &guest {
        for s in &r.secrets {
            assert!(!v.contains(s.value.expose()), "{k}={v} holds a value");
        }
    }
    assert_eq!(guest[0].1, key.placeholder);
    // The VMM gets the values; nothing the guest gets holds the CA's key.
    let ca = ca::Ca {
        cert_pem: "CERT".into(),
        key_pem: agentvm_net::secrets::SecretValue::new("KEY"),
    };
    let h = handoff(&ca, &r.secrets, vec![]).unwrap();
    assert_eq!(h.secrets[0].value, "sk-ant-api03-realvalue-hunter2-AA");
    assert_eq!(h.secrets[0].placeholder, key.placeholder);
}

#[test]
fn a_command_runs_in_the_workspace_and_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "from-the-workspace\n").unwrap();
    assert_eq!(
        run_command("cat token", dir.path()).as_deref(),
        Ok("from-the-workspace")
    );
    let slow = run_command_within("sleep 5", dir.path(), Duration::from_millis(200));
    assert_eq!(slow.unwrap_err(), "ran over 0.2 s");
    let big = run_command(
        &format!("head -c {} /dev/zero | tr '\\0' a", MAX_VALUE + 1),
        dir.path(),
    );
    assert!(big.unwrap_err().contains("more than"));
    let binary = run_command("printf '\\377'", dir.path());
    assert!(binary.unwrap_err().contains("not UTF-8"));
    assert!(run_command("true", Path::new("/nonexistent/dir")).is_err());
}

#[test]
fn a_value_the_network_stack_would_refuse_is_left_out_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = BTreeMap::from([
        (
            "SPLIT".to_string(),
            entry(
                SecretSource::Command("printf 'sk-one\\r\\nX-Evil: 1'".into()),
                file(),
            ),
        ),
        (
            "GOOD".to_string(),
            entry(SecretSource::Value(EnvValue::host("KEY")), file()),
        ),
    ]);
    let r = resolve(&secrets, &lookup, dir.path()).unwrap();
    let names: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["GOOD"]);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    let w = &r.warnings[0];
    assert!(
        w.starts_with("c.toml:4: secret SPLIT: its value must be")
            && w.ends_with("left out of the guest"),
        "{w}"
    );
    assert!(!w.contains("sk-one"), "{w}");
    // Handing off a secret the stack would refuse stops there, too.
    let mut bad = r.secrets.clone();
    bad[0].value = SecretValue::new("a\nb");
    let ca = ca::Ca {
        cert_pem: "CERT".into(),
        key_pem: SecretValue::new("KEY"),
    };
    let e = handoff(&ca, &bad, vec![]).unwrap_err().to_string();
    assert!(e.contains("secret GOOD: its value must be"), "{e}");
}
