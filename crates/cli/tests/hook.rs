//! `agentvm hook` and `agentvm __hook-check` end to end: the check's
//! answers with real approvals, each shell's hook text parsed by that shell
//! (where installed), and an interactive bash that sources the hook, with a
//! fake `agentvm` on PATH that logs what it is asked and hands the check to
//! the real binary, walked in and out of workspaces.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A test's directories: `config/`, `data/`, `run/`, `home/`, and
/// workspaces.
struct World {
    root: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let root = tempfile::Builder::new().prefix("avm").tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("home")).unwrap();
        World { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        std::fs::canonicalize(self.root.path()).unwrap().join(rel)
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("HOME", self.path("home"))
            .env("AGENTVM_LOG", "error")
            .env_remove("AGENTVM_HOOK")
            .stdin(Stdio::null());
    }

    fn agentvm(&self, args: &[&str], dir: &Path) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvm"));
        cmd.args(args).current_dir(dir);
        self.env(&mut cmd);
        cmd.output().unwrap()
    }

    /// A workspace `rel` with a configuration, approved when `approve`.
    fn workspace(&self, rel: &str, approve: bool) -> PathBuf {
        let ws = self.path(rel);
        std::fs::create_dir_all(ws.join(".agentvm")).unwrap();
        std::fs::create_dir_all(ws.join("src/deep")).unwrap();
        std::fs::write(ws.join(".agentvm/config.toml"), "[resources]\nvcpus = 1\n").unwrap();
        if approve {
            let o = self.agentvm(&["trust"], &ws);
            assert!(o.status.success(), "{o:?}");
        }
        ws
    }

    /// `__hook-check` of `dir` after `previous`: (entered, stdout, stderr).
    fn check(&self, dir: &Path, previous: &str) -> (bool, String, String) {
        let o = self.agentvm(
            &[
                "__hook-check",
                "--previous",
                previous,
                "--",
                dir.to_str().unwrap(),
            ],
            self.root.path(),
        );
        let out = String::from_utf8_lossy(&o.stdout).trim_end().to_string();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.success(), out, err)
    }
}

#[test]
fn the_check_enters_only_approved_unchanged_workspaces_once() {
    let w = World::new();
    let ws = w.workspace("ws", true);
    let wss = ws.to_str().unwrap();
    // Approved: entered, from the workspace or any directory in it.
    for dir in [ws.clone(), ws.join("src"), ws.join("src/deep")] {
        assert_eq!(w.check(&dir, ""), (true, wss.to_string(), String::new()));
        // Not again from the same workspace.
        assert_eq!(w.check(&dir, wss), (false, wss.to_string(), String::new()));
    }
    // Not a workspace: nothing at all.
    std::fs::create_dir_all(w.path("plain")).unwrap();
    assert_eq!(
        w.check(&w.path("plain"), wss),
        (false, String::new(), String::new())
    );
    assert_eq!(
        w.check(&w.path("nowhere"), ""),
        (false, String::new(), String::new())
    );

    // Never approved: one line naming `agentvm trust`, no entry.
    let new = w.workspace("new", false);
    let (enter, out, err) = w.check(&new.join("src"), wss);
    assert!(!enter);
    assert_eq!(out, new.to_str().unwrap());
    assert!(
        err.contains("not approved") && err.contains("`agentvm trust`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Once: not again while the shell stays in it.
    assert_eq!(w.check(&new, &out), (false, out.clone(), String::new()));

    // Changed since approved: the same, saying so.
    std::fs::write(ws.join(".agentvm/config.toml"), "[resources]\nvcpus = 2\n").unwrap();
    let (enter, _, err) = w.check(&ws, "");
    assert!(!enter);
    assert!(err.contains("changed since you approved it"), "{err}");
    assert!(err.contains("`agentvm trust`"), "{err}");
    // Approving it again opens it again.
    assert!(w.agentvm(&["trust"], &ws).status.success());
    assert!(w.check(&ws, "").0);

    // A configuration with an error: not entered, one line.
    let broken = w.workspace("broken", false);
    std::fs::write(broken.join(".agentvm/config.toml"), "no_such_key = 1\n").unwrap();
    let (enter, _, err) = w.check(&broken, "");
    assert!(!enter);
    assert!(err.contains("does not load"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // The opt-out.
    let o = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvm"));
        cmd.args(["__hook-check", "--", wss]);
        w.env(&mut cmd);
        cmd.env("AGENTVM_HOOK", "off").output().unwrap()
    };
    assert!(!o.status.success());
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
}

/// Whether `shell` runs at all.
fn installed(shell: &str) -> bool {
    Command::new(shell)
        .args(["-c", "exit 0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn each_shells_hook_parses_in_that_shell() {
    let w = World::new();
    for (shell, check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
        let o = w.agentvm(&["hook", shell], w.root.path());
        assert!(o.status.success(), "{o:?}");
        let file = w.path(&format!("hook.{shell}"));
        std::fs::write(&file, &o.stdout).unwrap();
        if !installed(shell) {
            assert_ne!(shell, "bash", "bash must be installed");
            assert!(
                std::env::var_os("CI").is_none(),
                "{shell} is needed in CI (scripts/setup --tests installs it)"
            );
            eprintln!("note: {shell} is not installed; its hook was not parsed");
            continue;
        }
        let o = Command::new(shell).arg(check).arg(&file).output().unwrap();
        assert!(o.status.success(), "{shell}: {o:?}");
    }
    let bad = w.agentvm(&["hook", "tcsh"], w.root.path());
    assert!(!bad.status.success());
}

/// Runs `lines` in `shell` as an interactive shell would, a prompt after
/// each line (bash and zsh read them interactively, so their prompt hooks
/// run; fish without a terminal fires no prompt events, so each line is
/// followed by `emit fish_prompt`, which is what its prompt does), with
/// `path` as PATH; returns its stderr.
fn interactive(w: &World, shell: &str, path: &str, lines: &[String]) -> String {
    let script = w.path(&format!("script.{shell}"));
    let text: String = lines
        .iter()
        .map(|l| match shell {
            "fish" => format!("{l}\nemit fish_prompt\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&script, text).unwrap();
    let mut cmd = Command::new(shell);
    match shell {
        "bash" => cmd.args(["--norc", "--noprofile", "-i"]),
        "zsh" => cmd.args(["-f", "-i"]),
        _ => cmd.args(["--no-config"]).arg(&script),
    };
    w.env(&mut cmd);
    let o = cmd
        .env("PATH", path)
        .env("LOG", w.path("log"))
        .stdin(std::fs::File::open(&script).unwrap())
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Walks `shell` with the hook in and out of workspaces; checks when
/// `agentvm shell` ran.
fn walk(shell: &str) {
    if !installed(shell) {
        assert_ne!(shell, "bash", "bash must be installed");
        assert!(
            std::env::var_os("CI").is_none(),
            "{shell} is needed in CI (scripts/setup --tests installs it)"
        );
        eprintln!("note: {shell} is not installed; its hook was not run");
        return;
    }
    let w = World::new();
    let ws = w.workspace("ws", true);
    let other = w.workspace("other", true);
    let new = w.workspace("new", false);
    let out = w.path("out");
    std::fs::create_dir_all(&out).unwrap();
    // The fake: logs `shell` and where, hands everything else to agentvm.
    let bin = w.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("agentvm");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$1\" in shell) echo \"shell $PWD\" >> \"$LOG\"; exit 0;; esac\n\
             exec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_agentvm")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let cd = |p: &Path| format!("cd '{}'", p.display());
    let (install, off) = match shell {
        "fish" => (
            "agentvm hook fish | source".to_string(),
            "set -gx AGENTVM_HOOK off",
        ),
        _ => (
            format!("eval \"$(agentvm hook {shell})\""),
            "AGENTVM_HOOK=off",
        ),
    };
    let err = interactive(
        &w,
        shell,
        &path,
        &[
            install.clone(),
            // Installed twice: still one hook.
            install,
            cd(&ws),                  // enters
            "true".into(),            // back at the prompt after that shell: nothing
            cd(&ws.join("src")),      // same workspace: nothing
            cd(&out),                 // outside: nothing
            cd(&ws.join("src/deep")), // back in: enters
            cd(&new),                 // not approved: one line, nothing
            "true".into(),
            cd(&other), // another approved workspace: enters
            off.into(),
            cd(&out),
            cd(&ws), // turned off: nothing
        ],
    );
    let log = std::fs::read_to_string(w.path("log")).unwrap_or_default();
    let shells: Vec<&str> = log.lines().collect();
    let expect = [
        format!("shell {}", ws.display()),
        format!("shell {}", ws.join("src/deep").display()),
        format!("shell {}", other.display()),
    ];
    assert_eq!(shells, expect, "{shell}: stderr: {err}");
    assert_eq!(
        err.matches("is not approved").count(),
        1,
        "{shell}: one line for the unapproved workspace: {err}"
    );
    assert!(err.contains("`agentvm trust`"), "{err}");
}

#[test]
fn bash_opens_the_shell_on_cd_into_an_approved_workspace_and_not_on_return_to_the_prompt() {
    walk("bash");
}

#[test]
fn zsh_opens_the_shell_on_cd_into_an_approved_workspace_and_not_on_return_to_the_prompt() {
    walk("zsh");
}

#[test]
fn fish_opens_the_shell_on_cd_into_an_approved_workspace_and_not_on_return_to_the_prompt() {
    walk("fish");
}

#[test]
fn without_agentvm_on_path_the_hook_runs_nothing_and_says_nothing() {
    let w = World::new();
    let ws = w.workspace("ws", true);
    let hook = w.agentvm(&["hook", "bash"], w.root.path());
    let file = w.path("hook.bash");
    std::fs::write(&file, &hook.stdout).unwrap();
    // A PATH with a shell's tools but no agentvm.
    let err = interactive(
        &w,
        "bash",
        "/usr/bin:/bin",
        &[
            format!(". '{}'", file.display()),
            format!("cd '{}'", ws.display()),
            "cd /".into(),
            format!("cd '{}'", ws.display()),
        ],
    );
    assert!(!w.path("log").exists());
    assert!(!err.contains("agentvm"), "{err}");
    assert!(!err.contains("not found"), "{err}");
}
