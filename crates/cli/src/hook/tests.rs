use super::*;

/// A tree: `ws/` (a workspace, with `src/deep`), `plain/` (no file),
/// `home/` (with its own `.agentvm/config.toml`).
fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for d in [
        "ws/.agentvm",
        "ws/src/deep",
        "plain",
        "home/.agentvm",
        "home/proj",
    ] {
        std::fs::create_dir_all(t.path().join(d)).unwrap();
    }
    std::fs::write(t.path().join("ws/.agentvm/config.toml"), "").unwrap();
    std::fs::write(t.path().join("home/.agentvm/config.toml"), "").unwrap();
    t
}

fn approved(_: &Path) -> anyhow::Result<Standing> {
    Ok(Standing::Approved)
}

#[test]
fn an_approved_workspace_is_entered_from_any_of_its_directories_once() {
    let t = tree();
    let ws = std::fs::canonicalize(t.path().join("ws")).unwrap();
    for dir in ["ws", "ws/src", "ws/src/deep", "ws/src/../src/deep"] {
        assert_eq!(
            decide(&t.path().join(dir), None, None, &approved),
            Verdict::Enter(ws.clone()),
            "{dir}"
        );
        // Coming from the same workspace (or back to the prompt after its
        // shell): nothing.
        assert_eq!(
            decide(&t.path().join(dir), Some(&ws), None, &approved),
            Verdict::Same(ws.clone()),
            "{dir}"
        );
    }
    // From another workspace: entered.
    assert_eq!(
        decide(
            &t.path().join("ws"),
            Some(Path::new("/elsewhere")),
            None,
            &approved
        ),
        Verdict::Enter(ws)
    );
}

#[test]
fn directories_without_a_configuration_file_and_the_home_are_never_entered() {
    let t = tree();
    let home = t.path().join("home");
    for dir in ["plain", "home", "home/proj", "no/such/dir"] {
        assert_eq!(
            decide(&t.path().join(dir), None, Some(&home), &approved),
            Verdict::Outside,
            "{dir}"
        );
    }
}

#[test]
fn a_configuration_that_does_not_load_is_refused_with_its_reason_escaped() {
    let t = tree();
    let broken = |_: &Path| -> anyhow::Result<Standing> {
        anyhow::bail!("config.toml:1:1: bad \x1b[2J key")
    };
    match decide(&t.path().join("ws/src"), None, None, &broken) {
        Verdict::Refused(ws, why) => {
            assert!(ws.ends_with("ws"));
            assert!(why.contains("does not load"), "{why}");
            assert!(why.contains("\\x1b[2J"), "{why}");
            assert!(!why.contains('\x1b'), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_shell_has_a_hook_that_uses_the_check_and_the_opt_out() {
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let s = shell.script();
        assert!(s.contains("__hook-check --previous"), "{shell:?}");
        assert!(s.contains("AGENTVM_HOOK"), "{shell:?}");
        assert!(s.contains("command agentvm shell"), "{shell:?}");
    }
}
