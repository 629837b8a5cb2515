//! `agentvm init` and `agentvm config` from the user's side: the file init
//! writes, what config prints, and one-line errors at the file's line.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A workspace directory and a home directory in a temporary directory.
struct Dirs {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    home: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("My Proj");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    Dirs {
        _tmp: tmp,
        ws,
        home,
    }
}

/// Runs agentvm in `cwd` with HOME at `home`, no agent credentials in the
/// environment but those in `env`.
fn agentvm(cwd: &Path, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvm"));
    cmd.args(args)
        .current_dir(cwd)
        .env("AGENTVM_LOG", "error")
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME");
    for var in [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "OPENAI_API_KEY",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{o:?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "expected failure, got {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one error line expected in {err:?}");
    assert!(lines[0].starts_with("agentvm: error: "), "{err}");
    lines[0].to_string()
}

/// `agentvm config`'s output without its header comments.
fn body(out: &str) -> String {
    out.lines()
        .skip_while(|l| l.starts_with('#') || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn config_file(ws: &Path) -> PathBuf {
    ws.join(".agentvm/config.toml")
}

#[test]
fn init_writes_a_commented_file_that_loads_as_the_defaults() {
    let d = dirs();
    let defaults = stdout(&agentvm(&d.ws, &d.home, &["config"], &[]));
    assert!(
        defaults.contains("# no .agentvm/config.toml: defaults (`agentvm init` writes one)"),
        "{defaults}"
    );
    let o = agentvm(&d.ws, &d.home, &["init"], &[]);
    assert_eq!(
        stdout(&o),
        "wrote .agentvm/config.toml and approved it; `agentvm config` shows the result\n"
    );
    let text = std::fs::read_to_string(config_file(&d.ws)).unwrap();
    assert!(text.contains("\nname = \"my-proj\"\n"), "{text}");
    assert!(text.contains("\nplugins = []\n"), "{text}");
    assert!(text.contains(&d.ws.display().to_string()), "{text}");
    let commented = text.lines().filter(|l| l.starts_with('#')).count();
    assert!(commented > 40, "{commented} comment lines");
    let loaded = stdout(&agentvm(&d.ws, &d.home, &["config"], &[]));
    assert!(
        loaded.contains(&format!("# file: {}", config_file(&d.ws).display())),
        "{loaded}"
    );
    assert_eq!(body(&loaded), body(&defaults));
    assert!(
        body(&loaded).starts_with("name = \"my-proj\"\n"),
        "{loaded}"
    );
    for line in [
        "mode = \"filtered\"",
        "ports = [80, 443]",
        "hosts = {}",
        &format!("source = \"{}\"", d.ws.display()),
        &format!("target = \"{}\"", d.ws.display()),
        "read_only = false",
    ] {
        assert!(loaded.contains(line), "{line} missing from {loaded}");
    }
}

#[test]
fn init_refuses_to_overwrite_unless_forced() {
    let d = dirs();
    let file = config_file(&d.ws);
    stdout(&agentvm(&d.ws, &d.home, &["init"], &[]));
    std::fs::write(&file, "name = \"mine\"\n").unwrap();
    let line = one_line_error(&agentvm(
        &d.ws,
        &d.home,
        &["init", "--plugin", "codex"],
        &[],
    ));
    assert_eq!(
        line,
        "agentvm: error: .agentvm/config.toml already exists; edit it, or pass --force to \
         overwrite it"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "name = \"mine\"\n");
    stdout(&agentvm(
        &d.ws,
        &d.home,
        &["init", "--force", "--plugin", "codex"],
        &[],
    ));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\nplugins = [\"codex\"]\n"), "{text}");
}

#[test]
fn init_prefills_plugins() {
    let d = dirs();
    let o = agentvm(
        &d.ws,
        &d.home,
        &[
            "init",
            "--plugin",
            "claude-code",
            "--plugin",
            "gemini",
            "--plugin",
            "claude-code",
        ],
        &[],
    );
    stdout(&o);
    let text = std::fs::read_to_string(config_file(&d.ws)).unwrap();
    assert!(
        text.contains("\nplugins = [\"claude-code\", \"gemini\"]\n"),
        "{text}"
    );
    let out = stdout(&agentvm(&d.ws, &d.home, &["config"], &[]));
    assert!(
        out.contains("# plugins merged in: claude-code, gemini"),
        "{out}"
    );
    assert!(
        out.contains("\"generativelanguage.googleapis.com\","),
        "{out}"
    );
    // The workspace's own agent home, not the host's ~/.gemini.
    let homes = d.home.join(".local/share/agentvm/homes");
    assert!(
        out.lines().any(
            |l| l.starts_with(&format!("source = \"{}/", homes.display()))
                && l.ends_with("/.gemini\"")
        ),
        "{out}"
    );
}

#[test]
fn init_takes_plugin_files_relative_to_the_current_directory() {
    let d = dirs();
    std::fs::create_dir_all(d.ws.join("tools")).unwrap();
    std::fs::write(
        d.ws.join("tools/net.toml"),
        "[network]\ndomains = [\"crates.io\"]\n",
    )
    .unwrap();
    stdout(&agentvm(
        &d.ws,
        &d.home,
        &["init", "--plugin", "tools/net.toml"],
        &[],
    ));
    let text = std::fs::read_to_string(config_file(&d.ws)).unwrap();
    assert!(
        text.contains("\nplugins = [\"../tools/net.toml\"]\n"),
        "{text}"
    );
    let out = stdout(&agentvm(&d.ws, &d.home, &["config"], &[]));
    assert!(out.contains("domains = [\"crates.io\"]"), "{out}");
}

#[test]
fn init_refuses_unknown_plugins_and_bad_plugin_files() {
    let d = dirs();
    let line = one_line_error(&agentvm(
        &d.ws,
        &d.home,
        &["init", "--plugin", "claude"],
        &[],
    ));
    assert_eq!(
        line,
        "agentvm: error: --plugin: unknown plugin \"claude\" (built-in plugins: claude-code, \
         codex, gemini, opencode; a plugin file is given by its path, e.g. \"./my-plugin.toml\")"
    );
    let line = one_line_error(&agentvm(
        &d.ws,
        &d.home,
        &["init", "--plugin", "./nope.toml"],
        &[],
    ));
    assert!(
        line.contains("--plugin ./nope.toml: no such file"),
        "{line}"
    );
    std::fs::write(d.ws.join("bad.toml"), "\n[network]\nmode = \"on\"\n").unwrap();
    let line = one_line_error(&agentvm(
        &d.ws,
        &d.home,
        &["init", "--plugin", "bad.toml"],
        &[],
    ));
    assert!(
        line.ends_with(
            "bad.toml:3:8: `network.mode` \"on\" is not a mode (expected one of off, filtered, open)"
        ),
        "{line}"
    );
    assert!(!config_file(&d.ws).exists());
}

#[test]
fn config_merges_plugins_and_never_prints_secrets() {
    let d = dirs();
    std::fs::create_dir_all(d.ws.join(".agentvm")).unwrap();
    std::fs::write(
        config_file(&d.ws),
        "plugins = [\"claude-code\"]\n\n[resources]\nvcpus = 1\nmemory_mib = 512\n\n\
         [network]\ndomains = [\"github.com\"]\nforwards = [\"8080:80\"]\n\n\
         [network.hosts]\n\"API.test\" = \"127.0.0.1\"\n\n\
         [env]\nGH = \"token ${GH_TOKEN}\"\n",
    )
    .unwrap();
    let secret = "sk-ant-do-not-print";
    let out = stdout(&agentvm(
        &d.ws,
        &d.home,
        &["config"],
        &[("ANTHROPIC_API_KEY", secret), ("GH_TOKEN", secret)],
    ));
    assert!(!out.contains(secret), "{out}");
    for line in [
        "ANTHROPIC_API_KEY = { value = \"${ANTHROPIC_API_KEY}\", hosts = [\"api.anthropic.com\"] }  # <set>; from plugin claude-code",
        "CLAUDE_CODE_OAUTH_TOKEN = \"${CLAUDE_CODE_OAUTH_TOKEN}\"  # <unset>; from plugin claude-code",
        "GH = \"token ${GH_TOKEN}\"  # <set>; from .agentvm/config.toml:15",
        "vcpus = 1",
        "memory_mib = 512",
        "forwards = [\"8080:80\"]",
        "hosts = { \"api.test\" = \"127.0.0.1\" }",
        "  \"api.anthropic.com\",",
        "  \"github.com\",",
        "[[mounts]]  # from plugin claude-code",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} missing from\n{out}");
    }
    let without = stdout(&agentvm(&d.ws, &d.home, &["config"], &[]));
    assert!(without.contains(
        "ANTHROPIC_API_KEY = { value = \"${ANTHROPIC_API_KEY}\", hosts = [\"api.anthropic.com\"] }  # <unset>"
    ));
}

#[test]
fn an_unapproved_secret_command_never_runs() {
    let d = dirs();
    std::fs::create_dir_all(d.ws.join(".agentvm")).unwrap();
    let marker = d.home.join("secret-command-ran");
    let command = format!("touch '{}' && echo tok", marker.display());
    std::fs::write(
        config_file(&d.ws),
        format!(
            "[network]\ndomains = [\"api.test\"]\n[secrets]\n\
             TOKEN = {{ command = \"{command}\", hosts = [\"api.test\"] }}\n"
        ),
    )
    .unwrap();
    let runtime = d.home.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let env = [("XDG_RUNTIME_DIR", runtime.to_str().unwrap())];
    // `config` shows it without running it.
    let out = stdout(&agentvm(&d.ws, &d.home, &["config"], &env));
    assert!(out.contains("TOKEN = { command = "), "{out}");
    assert!(!marker.exists(), "`config` ran a secret's command");
    // `up` refuses before anything of the file takes effect, and says
    // what the command is.
    let o = agentvm(&d.ws, &d.home, &["up"], &env);
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not approved yet"), "{err}");
    assert!(
        err.contains(&format!("TOKEN = command {command} -> api.test")),
        "{err}"
    );
    assert!(!marker.exists(), "an unapproved secret command ran");
    // `run` and `shell` start the VM the same way.
    let o = agentvm(&d.ws, &d.home, &["run", "true"], &env);
    assert!(!o.status.success(), "{o:?}");
    assert!(!marker.exists(), "an unapproved secret command ran");
}

#[test]
fn config_finds_the_workspace_from_a_subdirectory() {
    let d = dirs();
    stdout(&agentvm(&d.ws, &d.home, &["init"], &[]));
    let sub = d.ws.join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    let here = stdout(&agentvm(&sub, &d.home, &["config"], &[]));
    let there = stdout(&agentvm(
        &d.home,
        &d.home,
        &["config", "--dir", sub.to_str().unwrap()],
        &[],
    ));
    assert_eq!(here, there);
    assert!(
        here.starts_with(&format!("# agentvm configuration of {}\n", d.ws.display())),
        "{here}"
    );
    let line = one_line_error(&agentvm(
        &d.ws,
        &d.home,
        &["config", "--dir", "/nonexistent/dir"],
        &[],
    ));
    assert!(
        line.starts_with("agentvm: error: cannot use the directory /nonexistent/dir: "),
        "{line}"
    );
}

#[test]
fn config_reports_mistakes_at_their_line() {
    let d = dirs();
    std::fs::create_dir_all(d.ws.join(".agentvm")).unwrap();
    let cases = [
        (
            "name = \"x\"\n\n[network]\nmode = \"open\"\nmdoe = \"off\"\n",
            ".agentvm/config.toml:5:1: unknown key `network.mdoe` (expected one of mode, \
             domains, ports, hosts, forwards, upstream_ca)",
        ),
        (
            "[resources]\nvcpus = \"2\"\n",
            ".agentvm/config.toml:2:9: `resources.vcpus` must be an integer, not string \"2\"",
        ),
        (
            "[network]\nports = [443, 0]\n",
            ".agentvm/config.toml:2:15: `network.ports[1]`: 0 is not a port (1 to 65535)",
        ),
        (
            "[network]\nhosts = { \"api.test\" = \"127.2.0.1\" }\n",
            ".agentvm/config.toml:2:24: `network.hosts.\"api.test\"`: cannot pin api.test to \
             127.2.0.1: 127.2.0.1 is a loopback address outside 127.0.0.0/16",
        ),
        (
            "plugins = [\"./mine.toml\"]\n",
            ".agentvm/config.toml:1:12: plugin file \"./mine.toml\" not found: ",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(config_file(&d.ws), text).unwrap();
        let line = one_line_error(&agentvm(&d.ws, &d.home, &["config"], &[]));
        assert!(
            line.starts_with(&format!("agentvm: error: {want}")),
            "{text:?}: {line}"
        );
    }
}
