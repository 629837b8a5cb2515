//! The guard against a hostile guest's `.git/`: each happy case next to the
//! attacks on it.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::git::{record, undo_changes, Finding, Report};
use super::gitconfig::{self, Entry};

const CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\
                      \tbare = false\n\tpager = less -R\n\
                      [remote \"origin\"]\n\turl = https://example.com/r.git\n";
const PRE_COMMIT: &str = "#!/bin/sh\nexec make lint\n";

/// A work tree with a `.git` holding `CONFIG`, an executable `pre-commit`,
/// a disabled (mode 0644) `commit-msg` and a sample; and a store beside it.
struct Fixture {
    _dir: TempDir,
    repo: PathBuf,
    store: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        Self::with_config(CONFIG)
    }

    fn with_config(config: &str) -> Self {
        let fixture = Self::bare();
        fs::create_dir_all(fixture.git("hooks")).unwrap();
        fixture.write("config", config, 0o644);
        fixture.write("hooks/pre-commit", PRE_COMMIT, 0o755);
        fixture.write("hooks/commit-msg", "#!/bin/sh\nexit 1\n", 0o644);
        fixture.write("hooks/pre-push.sample", "#!/bin/sh\n", 0o755);
        fixture
    }

    /// A work tree without `.git`.
    fn bare() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("work");
        fs::create_dir(&repo).unwrap();
        let store = dir.path().join("state/git");
        Fixture {
            _dir: dir,
            repo,
            store,
        }
    }

    /// A path in `.git`.
    fn git(&self, rel: &str) -> PathBuf {
        self.repo.join(".git").join(rel)
    }

    fn write(&self, rel: &str, text: &str, mode: u32) {
        let path = self.git(rel);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.git(rel)).unwrap()
    }

    fn record(&self) {
        record(&self.repo, &self.store).unwrap();
    }

    fn undo(&self) -> Report {
        undo_changes(&self.repo, &self.store).unwrap()
    }

    /// Where the first quarantine goes.
    fn quarantine(&self) -> PathBuf {
        self.git("agentvm-quarantine/1")
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn added(key: &str, value: &str) -> Finding {
    Finding::KeyAdded {
        file: "config".into(),
        key: key.into(),
        value: Some(value.into()),
    }
}

/// The config with `line` inserted after `after`.
fn config_with(after: &str, line: &str) -> String {
    CONFIG.replacen(after, &format!("{after}{line}"), 1)
}

#[test]
fn nothing_changed_nothing_undone() {
    let f = Fixture::new();
    f.record();
    assert_eq!(mode(&f.store), 0o700);
    let report = f.undo();
    assert!(report.is_empty(), "{report:?}");
    assert_eq!(report.quarantine, None);
    assert_eq!(report.repo, f.repo);
    assert_eq!(f.read("config"), CONFIG);
    assert_eq!(f.read("hooks/pre-commit"), PRE_COMMIT);
    assert!(!f.git("agentvm-quarantine").exists());
}

#[test]
fn harmless_changes_stay() {
    let f = Fixture::new();
    f.record();
    // A new remote, user name and sample hook; a deleted hook.
    let config = format!(
        "{CONFIG}[remote \"fork\"]\n\turl = git@example.com:f.git\n[user]\n\tname = Guest\n"
    );
    f.write("config", &config, 0o644);
    f.write("hooks/post-merge.sample", "#!/bin/sh\nevil\n", 0o755);
    fs::remove_file(f.git("hooks/pre-commit")).unwrap();
    assert!(f.undo().is_empty());
    assert_eq!(f.read("config"), config);
    assert!(!f.git("hooks/pre-commit").exists());
}

#[test]
fn added_hook_is_quarantined() {
    let f = Fixture::new();
    f.record();
    f.write("hooks/post-checkout", "#!/bin/sh\nevil\n", 0o755);
    f.write("hooks/post-merge.sample", "#!/bin/sh\nevil\n", 0o755);
    let report = f.undo();
    assert_eq!(
        report.findings,
        [Finding::HookAdded("post-checkout".into())]
    );
    assert_eq!(report.findings[0].to_string(), "hook post-checkout added");
    assert_eq!(report.quarantine, Some(f.quarantine()));
    assert!(!f.git("hooks/post-checkout").exists());
    let kept = f.quarantine().join("hooks/post-checkout");
    assert_eq!(fs::read_to_string(kept).unwrap(), "#!/bin/sh\nevil\n");
    // The sample stays: git never runs it.
    assert!(f.git("hooks/post-merge.sample").exists());
}

#[test]
fn changed_hook_is_put_back() {
    let f = Fixture::new();
    f.record();
    f.write("hooks/pre-commit", "#!/bin/sh\nevil\n", 0o755);
    let report = f.undo();
    let changed = Finding::HookChanged {
        name: "pre-commit".into(),
        restored: true,
    };
    assert_eq!(report.findings, [changed]);
    assert_eq!(f.read("hooks/pre-commit"), PRE_COMMIT);
    assert_eq!(mode(&f.git("hooks/pre-commit")), 0o755);
    let kept = f.quarantine().join("hooks/pre-commit");
    assert_eq!(fs::read_to_string(kept).unwrap(), "#!/bin/sh\nevil\n");
}

#[test]
fn enabled_hook_is_disabled_again() {
    let f = Fixture::new();
    f.record();
    fs::set_permissions(f.git("hooks/commit-msg"), fs::Permissions::from_mode(0o755)).unwrap();
    let report = f.undo();
    assert_eq!(report.findings.len(), 1, "{report:?}");
    assert_eq!(mode(&f.git("hooks/commit-msg")), 0o644);
}

#[test]
fn symlink_hooks() {
    let f = Fixture::new();
    symlink("../../tools/hook", f.git("hooks/prepare-commit-msg")).unwrap();
    f.record();
    assert!(f.undo().is_empty());

    // Retargeted, and a new one: the first put back, the second removed.
    fs::remove_file(f.git("hooks/prepare-commit-msg")).unwrap();
    symlink("/tmp/evil", f.git("hooks/prepare-commit-msg")).unwrap();
    symlink("/tmp/evil", f.git("hooks/post-checkout")).unwrap();
    let report = f.undo();
    assert_eq!(
        report.findings,
        [
            Finding::HookAdded("post-checkout".into()),
            Finding::HookChanged {
                name: "prepare-commit-msg".into(),
                restored: true
            }
        ]
    );
    let link = fs::read_link(f.git("hooks/prepare-commit-msg")).unwrap();
    assert_eq!(link, Path::new("../../tools/hook"));
    assert!(fs::symlink_metadata(f.git("hooks/post-checkout")).is_err());
    let kept = fs::read_link(f.quarantine().join("hooks/post-checkout")).unwrap();
    assert_eq!(kept, Path::new("/tmp/evil"));
}

#[test]
fn hooks_dir_replaced_by_a_symlink() {
    let f = Fixture::new();
    f.record();
    let evil = f.repo.join("evil-hooks");
    fs::create_dir(&evil).unwrap();
    fs::write(evil.join("post-checkout"), "evil").unwrap();
    fs::rename(f.git("hooks"), f.repo.join("old-hooks")).unwrap();
    symlink(&evil, f.git("hooks")).unwrap();
    let report = f.undo();
    assert_eq!(report.findings, [Finding::HooksDirReplaced]);
    let hooks = fs::symlink_metadata(f.git("hooks")).unwrap();
    assert!(hooks.is_dir());
    assert_eq!(f.read("hooks/pre-commit"), PRE_COMMIT);
    assert_eq!(mode(&f.git("hooks/commit-msg")), 0o644);
    assert!(!f.git("hooks/post-checkout").exists());
    assert!(fs::read_link(f.quarantine().join("hooks")).is_ok());
    // The link's target is left alone.
    assert!(evil.join("post-checkout").exists());
}

#[test]
fn hooks_dir_replaced_by_a_file() {
    let f = Fixture::new();
    f.record();
    fs::remove_dir_all(f.git("hooks")).unwrap();
    f.write("hooks", "junk", 0o644);
    assert_eq!(f.undo().findings, [Finding::HooksDirReplaced]);
    assert_eq!(f.read("hooks/pre-commit"), PRE_COMMIT);
}

#[test]
fn read_only_hooks_dir_does_not_stop_the_undo() {
    let f = Fixture::new();
    f.record();
    f.write("hooks/post-checkout", "evil", 0o755);
    fs::set_permissions(f.git("hooks"), fs::Permissions::from_mode(0o555)).unwrap();
    assert_eq!(
        f.undo().findings,
        [Finding::HookAdded("post-checkout".into())]
    );
    assert!(!f.git("hooks/post-checkout").exists());
}

#[test]
fn added_fsmonitor_is_removed_other_lines_kept() {
    let f = Fixture::new();
    f.record();
    let guest = format!(
        "{}[remote \"fork\"]\n\turl = git@example.com:f.git\n",
        config_with("bare = false\n", "\tfsmonitor = evil\n")
    );
    f.write("config", &guest, 0o600);
    let report = f.undo();
    assert_eq!(report.findings, [added("core.fsmonitor", "evil")]);
    assert_eq!(
        report.findings[0].to_string(),
        "core.fsmonitor = \"evil\" added"
    );
    let expected = format!("{CONFIG}[remote \"fork\"]\n\turl = git@example.com:f.git\n");
    assert_eq!(f.read("config"), expected);
    assert_eq!(mode(&f.git("config")), 0o644);
    assert_eq!(
        fs::read_to_string(f.quarantine().join("config")).unwrap(),
        guest
    );
}

#[test]
fn changed_pager_is_put_back() {
    let f = Fixture::new();
    f.record();
    f.write("config", &CONFIG.replace("less -R", "evil"), 0o644);
    let report = f.undo();
    let changed = Finding::KeyChanged {
        file: "config".into(),
        key: "core.pager".into(),
        old: Some("less -R".into()),
        new: Some("evil".into()),
    };
    assert_eq!(report.findings, [changed]);
    let config = f.read("config");
    assert!(!config.contains("evil"), "{config}");
    let entries = gitconfig::parse(config.as_bytes()).unwrap();
    let pager: Vec<_> = entries
        .iter()
        .filter(|e| e.name() == "core.pager")
        .collect();
    assert_eq!(pager.len(), 1);
    assert_eq!(pager[0].value.as_deref(), Some(&b"less -R"[..]));
}

#[test]
fn removed_executable_key_is_put_back() {
    let f = Fixture::new();
    f.record();
    f.write("config", &CONFIG.replace("\tpager = less -R\n", ""), 0o644);
    let report = f.undo();
    let restored = Finding::KeyRestored {
        file: "config".into(),
        key: "core.pager".into(),
        value: Some("less -R".into()),
    };
    assert_eq!(report.findings, [restored]);
    assert!(f
        .read("config")
        .ends_with("[core]\n\tpager = \"less -R\"\n"));
}

#[test]
fn alias_filter_and_include_are_removed() {
    let f = Fixture::new();
    f.record();
    let guest = format!(
        "{CONFIG}[alias]\n\tst = !sh -c evil\n[user]\n\tname = Guest\n\
         [filter \"x\"]\n\tsmudge = evil1\n\tclean = evil2\n\trequired = true\n\
         [includeIf \"gitdir:/\"]\n\tpath = /tmp/evil\n"
    );
    f.write("config", &guest, 0o644);
    let report = f.undo();
    assert_eq!(
        report.findings,
        [
            added("alias.st", "!sh -c evil"),
            added("filter.x.smudge", "evil1"),
            added("filter.x.clean", "evil2"),
            added("includeif.gitdir:/.path", "/tmp/evil"),
        ]
    );
    let expected = format!(
        "{CONFIG}[alias]\n[user]\n\tname = Guest\n[filter \"x\"]\n\trequired = true\n\
         [includeIf \"gitdir:/\"]\n"
    );
    assert_eq!(f.read("config"), expected);
}

#[test]
fn names_are_case_insensitive_subsections_are_not() {
    let f = Fixture::with_config("[diff \"X\"]\n\ttextconv = cat\n");
    f.record();
    let guest = "[diff \"X\"]\n\ttextconv = cat\n[diff \"x\"]\n\ttextconv = evil\n\
                 [Core]\n\tFSMonitor = evil\n";
    f.write("config", guest, 0o644);
    let report = f.undo();
    assert_eq!(
        report.findings,
        [
            added("diff.x.textconv", "evil"),
            added("core.fsmonitor", "evil")
        ]
    );
    assert_eq!(
        f.read("config"),
        "[diff \"X\"]\n\ttextconv = cat\n[diff \"x\"]\n[Core]\n"
    );
}

#[test]
fn continuation_lines_go_with_their_key() {
    let f = Fixture::new();
    f.record();
    let guest = config_with("bare = false\n", "\tfsmonitor = a \\\n  b\n");
    f.write("config", &guest, 0o644);
    assert_eq!(f.undo().findings, [added("core.fsmonitor", "a   b")]);
    assert_eq!(f.read("config"), CONFIG);
}

#[test]
fn deprecated_and_dotted_section_names() {
    let f = Fixture::new();
    f.record();
    // `[core.x] fsmonitor` is core.x.fsmonitor, which git never runs.
    let guest = format!(
        "{CONFIG}[filter.x]\n\tsmudge = evil\n[diff.y \"Z\"]\n\ttextconv = evil\n\
         [core.x]\n\tfsmonitor = harmless\n"
    );
    f.write("config", &guest, 0o644);
    let report = f.undo();
    assert_eq!(
        report.findings,
        [
            added("filter.x.smudge", "evil"),
            added("diff.y.Z.textconv", "evil")
        ]
    );
    let expected =
        format!("{CONFIG}[filter.x]\n[diff.y \"Z\"]\n[core.x]\n\tfsmonitor = harmless\n");
    assert_eq!(f.read("config"), expected);
}

#[test]
fn key_on_the_header_line() {
    let f = Fixture::new();
    f.record();
    f.write(
        "config",
        &format!("{CONFIG}[core] fsmonitor = evil\n"),
        0o644,
    );
    assert_eq!(f.undo().findings, [added("core.fsmonitor", "evil")]);
    assert_eq!(f.read("config"), format!("{CONFIG}[core] \n"));
}

#[test]
fn config_worktree_is_guarded() {
    let f = Fixture::new();
    f.record();
    f.write(
        "config.worktree",
        "[core]\n\thooksPath = /tmp/h\n\tsparseCheckout = true\n",
        0o644,
    );
    let report = f.undo();
    let finding = Finding::KeyAdded {
        file: "config.worktree".into(),
        key: "core.hookspath".into(),
        value: Some("/tmp/h".into()),
    };
    assert_eq!(report.findings, [finding]);
    assert_eq!(
        report.findings[0].to_string(),
        "core.hookspath = \"/tmp/h\" added in config.worktree"
    );
    assert_eq!(
        f.read("config.worktree"),
        "[core]\n\tsparseCheckout = true\n"
    );
}

#[test]
fn unparsable_config_is_replaced_whole() {
    let f = Fixture::new();
    f.record();
    f.write("config", "[core\n\tfsmonitor = evil\n", 0o644);
    let report = f.undo();
    let replaced = Finding::ConfigReplaced {
        file: "config".into(),
        why: "git cannot parse it".into(),
    };
    assert_eq!(report.findings, [replaced]);
    assert_eq!(f.read("config"), CONFIG);
    let kept = fs::read_to_string(f.quarantine().join("config")).unwrap();
    assert_eq!(kept, "[core\n\tfsmonitor = evil\n");
}

#[test]
fn oversized_config_is_replaced_whole() {
    let f = Fixture::new();
    f.record();
    let huge = format!("{CONFIG}{}", "# padding padding padding\n".repeat(200_000));
    f.write("config", &huge, 0o644);
    let report = f.undo();
    assert!(
        matches!(&report.findings[..], [Finding::ConfigReplaced { why, .. }] if why.contains("too large")),
        "{report:?}"
    );
    assert_eq!(f.read("config"), CONFIG);
}

#[test]
fn config_replaced_by_a_symlink() {
    let f = Fixture::new();
    f.record();
    let evil = f.repo.join("evil-config");
    fs::write(&evil, "[core]\n\tfsmonitor = evil\n").unwrap();
    fs::remove_file(f.git("config")).unwrap();
    symlink(&evil, f.git("config")).unwrap();
    let report = f.undo();
    assert!(
        matches!(&report.findings[..], [Finding::ConfigReplaced { .. }]),
        "{report:?}"
    );
    assert!(fs::symlink_metadata(f.git("config")).unwrap().is_file());
    assert_eq!(f.read("config"), CONFIG);
    assert!(fs::read_link(f.quarantine().join("config")).is_ok());
}

#[test]
fn git_init_in_the_guest_counts_as_added() {
    let f = Fixture::bare();
    f.record();
    assert!(f.undo().is_empty());

    fs::create_dir_all(f.git("hooks")).unwrap();
    f.write(
        "config",
        "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = evil\n",
        0o644,
    );
    f.write("hooks/post-checkout", "evil", 0o755);
    f.write("hooks/update.sample", "", 0o755);
    let report = f.undo();
    assert_eq!(
        report.findings,
        [
            Finding::HookAdded("post-checkout".into()),
            added("core.fsmonitor", "evil")
        ]
    );
    assert_eq!(f.read("config"), "[core]\n\trepositoryformatversion = 0\n");
    assert!(f.git("hooks/update.sample").exists());
}

#[test]
fn dot_git_file_leading_outside_is_not_followed() {
    let f = Fixture::bare();
    let outside = f.repo.parent().unwrap().join("elsewhere");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("config"), "[core]\n\tfsmonitor = theirs\n").unwrap();
    let dot_git = format!("gitdir: {}\n", outside.display());
    fs::write(f.repo.join(".git"), &dot_git).unwrap();
    f.record();
    fs::write(outside.join("config"), "[core]\n\tfsmonitor = changed\n").unwrap();
    assert!(f.undo().is_empty());
    let config = fs::read_to_string(outside.join("config")).unwrap();
    assert_eq!(config, "[core]\n\tfsmonitor = changed\n");

    // The guest points it elsewhere: moved aside, the recorded one back.
    fs::write(f.repo.join(".git"), "gitdir: /tmp\n").unwrap();
    let report = f.undo();
    assert!(
        matches!(&report.findings[..], [Finding::GitDirReplaced(_)]),
        "{report:?}"
    );
    assert_eq!(fs::read_to_string(f.repo.join(".git")).unwrap(), dot_git);
    let kept = f.repo.join(".agentvm-quarantine/1/dot-git");
    assert_eq!(fs::read_to_string(kept).unwrap(), "gitdir: /tmp\n");
}

#[test]
fn git_dir_replaced_by_a_file_leading_outside() {
    let f = Fixture::new();
    f.record();
    fs::remove_dir_all(f.repo.join(".git")).unwrap();
    fs::write(f.repo.join(".git"), "gitdir: ../../evil\n").unwrap();
    let report = f.undo();
    assert!(
        matches!(&report.findings[..], [Finding::GitDirReplaced(_)]),
        "{report:?}"
    );
    assert!(fs::symlink_metadata(f.repo.join(".git")).is_err());
    assert_eq!(
        report.quarantine,
        Some(f.repo.canonicalize().unwrap().join(".agentvm-quarantine/1"))
    );
}

#[test]
fn git_dir_replaced_by_a_symlink() {
    let f = Fixture::new();
    f.record();
    fs::rename(f.repo.join(".git"), f.repo.join("real-git")).unwrap();
    symlink(f.repo.join("real-git"), f.repo.join(".git")).unwrap();
    let report = f.undo();
    assert!(
        matches!(&report.findings[..], [Finding::GitDirReplaced(_)]),
        "{report:?}"
    );
    assert!(fs::symlink_metadata(f.repo.join(".git")).is_err());
}

#[test]
fn dot_git_file_inside_the_repo_is_followed() {
    let f = Fixture::bare();
    let gitdir = f.repo.join("sub/gitdir");
    fs::create_dir_all(gitdir.join("hooks")).unwrap();
    fs::write(gitdir.join("config"), CONFIG).unwrap();
    fs::write(f.repo.join(".git"), "gitdir: sub/gitdir\n").unwrap();
    f.record();
    assert!(f.undo().is_empty());
    fs::write(gitdir.join("hooks/post-checkout"), "evil").unwrap();
    let report = f.undo();
    assert_eq!(
        report.findings,
        [Finding::HookAdded("post-checkout".into())]
    );
    assert!(!gitdir.join("hooks/post-checkout").exists());
    let quarantine = gitdir.canonicalize().unwrap().join("agentvm-quarantine/1");
    assert_eq!(report.quarantine, Some(quarantine));
}

#[test]
fn added_commondir_is_quarantined() {
    let f = Fixture::new();
    f.record();
    f.write("commondir", "../evil-common\n", 0o644);
    let report = f.undo();
    assert_eq!(
        report.findings,
        [Finding::RedirectChanged("commondir".into())]
    );
    assert!(!f.git("commondir").exists());
}

#[test]
fn planted_quarantine_symlink_is_not_followed() {
    let f = Fixture::new();
    f.record();
    let trap = f.repo.parent().unwrap().join("trap");
    fs::create_dir(&trap).unwrap();
    symlink(&trap, f.git("agentvm-quarantine")).unwrap();
    f.write("hooks/post-checkout", "evil", 0o755);
    let report = f.undo();
    assert_eq!(
        report.findings,
        [Finding::HookAdded("post-checkout".into())]
    );
    assert_eq!(fs::read_dir(&trap).unwrap().count(), 0);
    assert!(fs::symlink_metadata(f.git("agentvm-quarantine"))
        .unwrap()
        .is_dir());
}

#[test]
fn each_undo_gets_its_own_quarantine() {
    let f = Fixture::new();
    f.record();
    f.write("hooks/post-checkout", "evil", 0o755);
    assert_eq!(f.undo().quarantine, Some(f.quarantine()));
    f.write("hooks/post-checkout", "evil", 0o755);
    assert_eq!(f.undo().quarantine, Some(f.git("agentvm-quarantine/2")));
}

#[test]
fn a_failing_part_does_not_stop_the_others() {
    let f = Fixture::new();
    f.record();
    f.write("hooks/pre-commit", "evil", 0o755);
    f.write(
        "config",
        &format!("{CONFIG}[core]\n\tfsmonitor = evil\n"),
        0o644,
    );
    // The recorded copies of the hooks are lost.
    fs::remove_dir_all(f.store.join("hooks")).unwrap();
    let report = f.undo();
    assert!(
        matches!(&report.findings[0], Finding::NotUndone { what, .. } if what == "hooks"),
        "{report:?}"
    );
    assert_eq!(report.findings[1..], [added("core.fsmonitor", "evil")]);
    assert!(report.findings[0]
        .to_string()
        .starts_with("hooks not checked or not undone: "));
    assert_eq!(f.read("config"), format!("{CONFIG}[core]\n"));
}

#[test]
fn undo_without_record_fails() {
    let f = Fixture::new();
    assert!(undo_changes(&f.repo, &f.store).is_err());
}

/// git itself reads the rewritten file, when it is installed.
#[test]
fn git_parses_the_rewritten_config() {
    let f = Fixture::new();
    f.record();
    let guest = format!(
        "{}[core] fsmonitor = evil\n[alias]\n\tx = !evil\n",
        CONFIG.replace("less -R", "evil \\\n more")
    );
    f.write("config", &guest, 0o644);
    assert_eq!(f.undo().findings.len(), 3);
    let Ok(out) = std::process::Command::new("git")
        .args(["config", "-f"])
        .arg(f.git("config"))
        .arg("--list")
        .output()
    else {
        return; // No git here.
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(!list.contains("evil"), "{list}");
    assert!(list.contains("core.pager=less -R\n"), "{list}");
    assert!(
        list.contains("remote.origin.url=https://example.com/r.git\n"),
        "{list}"
    );
}

// The config reader and editor.

fn values(text: &str) -> Vec<(String, Option<String>)> {
    let entries = gitconfig::parse(text.as_bytes()).unwrap();
    entries
        .iter()
        .map(|e| (e.name(), e.value_lossy()))
        .collect()
}

fn pair(name: &str, value: Option<&str>) -> (String, Option<String>) {
    (name.into(), value.map(Into::into))
}

#[test]
fn values_are_read_as_git_reads_them() {
    let text = "\u{feff}[s]\n a = \"x  y\" # c\n b = x \t y  ; c\n c\n\
                d = \"q\\\"b\\\\c\\t\"\n e = x\\\n y\r\n f =\n g = a\"; #\"b";
    assert_eq!(
        values(text),
        [
            pair("s.a", Some("x  y")),
            pair("s.b", Some("x \t y")),
            pair("s.c", None),
            pair("s.d", Some("q\"b\\c\t")),
            pair("s.e", Some("x y")),
            pair("s.f", Some("")),
            pair("s.g", Some("a; #b")),
        ]
    );
}

/// The reader agrees with git itself, when it is installed.
#[test]
fn reader_agrees_with_git() {
    let text = "[s]\n a = x \\\n\n b = x \\t \n c = x\\\n \n d = x \" \" \n\
                e = x  \" \"  y ; c\n f = \"\" x\n[S \"Sub.x\"] G\n[t.U]\r\nh = \"a\\\\\"\n\
                [core] fsmonitor = \"a\\nb\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    fs::write(&path, text).unwrap();
    let Ok(out) = std::process::Command::new("git")
        .args(["config", "-z", "--list", "-f"])
        .arg(&path)
        .output()
    else {
        return; // No git here.
    };
    assert!(out.status.success());
    let theirs: Vec<(String, Option<String>)> = String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(|item| match item.split_once('\n') {
            Some((key, value)) => pair(key, Some(value)),
            None => pair(item, None),
        })
        .collect();
    assert_eq!(values(text), theirs);
}

#[test]
fn what_git_refuses_is_refused() {
    for text in [
        "[s]\na = \"open\n",
        "[s]\na = \\q\n",
        "[s]\na ; comment\n",
        "[s\n",
        "[s \"x\" ]\n",
        "[s \"x\n\"]\n",
        "[s]\n1a = x\n",
        "\u{00ef}[s]\n",
        "[s_x]\n",
    ] {
        assert!(gitconfig::parse(text.as_bytes()).is_err(), "{text:?}");
    }
    // git's line number, for the message.
    let error = gitconfig::parse(b"[s]\n\na = \"x\n").unwrap_err();
    assert_eq!(error.to_string(), "bad config line 4");
}

#[test]
fn removal_keeps_crlf_and_the_rest() {
    let text = b"[core]\r\n\tfsmonitor = x\r\n\tbare = true\r\n";
    let entries = gitconfig::parse(text).unwrap();
    let cut: Vec<&Entry> = entries.iter().filter(|e| e.is_executable()).collect();
    assert_eq!(
        gitconfig::remove(text, &cut),
        b"[core]\r\n\tbare = true\r\n"
    );
}

#[test]
fn appended_entries_read_back_unchanged() {
    // After a value that continues past the end of the file.
    let mut text = b"[user]\n\tname = x \\".to_vec();
    let entry = Entry::new(
        "diff",
        Some(b"a\"b\\C d"),
        "textconv",
        Some(b" lead \"q\"\\\n\tz\x08"),
    );
    gitconfig::append(&mut text, &entry);
    gitconfig::append(&mut text, &Entry::new("alias", None, "x", None));
    let entries = gitconfig::parse(&text).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].value.as_deref(), Some(&b"x "[..]));
    assert!(entries[1].same_setting(&entry));
    assert_eq!(entries[2].name(), "alias.x");
    assert_eq!(entries[2].value, None);
}

#[test]
fn executable_key_table() {
    let cases = [
        ("[core]\nfsmonitor = x", true),
        ("[core \"x\"]\nfsmonitor = x", false),
        ("[core]\nautocrlf = x", false),
        ("[gpg \"ssh\"]\ndefaultKeyCommand = x", true),
        ("[gpg \"x\"]\ndefaultKeyCommand = x", false),
        ("[gpg \"x\"]\nprogram = x", true),
        ("[alias]\nst = status", true),
        ("[credential]\nhelper = x", true),
        ("[credential \"https://h\"]\nhelper = x", true),
        ("[credential \"https://h\"]\nusername = x", false),
        ("[remote \"o\"]\nurl = x", false),
        ("[remote \"o\"]\nuploadpack = x", true),
        ("[user]\nname = x", false),
        ("fsmonitor = x", false),
    ];
    for (text, executable) in cases {
        let entries = gitconfig::parse(text.as_bytes()).unwrap();
        assert_eq!(entries[0].is_executable(), executable, "{text}");
    }
}
