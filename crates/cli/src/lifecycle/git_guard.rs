//! The git guard in the lifecycle: which repositories `up` records (into
//! the VM's state directory, outside every share), and the check after
//! every `run`/`shell` and at `down` that undoes and reports what the guest
//! added to what git runs on the host ([`crate::guard`]).
//!
//! The check after a command runs while the guest still runs, so a guest
//! process left in the background can write again afterwards; the check at
//! `down`, with the VM stopped, is the one that cannot race.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Snapshot, StateDir};
use crate::config::{GitHooks, Origin, ResolvedConfig};
use crate::escape;

/// The repositories of `cfg` to guard: the workspace (a repository now, or
/// one the guest may create), and every other read-write mount the user
/// configured that is a repository. Agent homes are not: nothing on the
/// host runs git there.
pub fn repos(cfg: &ResolvedConfig) -> Vec<PathBuf> {
    if cfg.git_hooks == GitHooks::Allow {
        return Vec::new();
    }
    let mut out = vec![cfg.workspace.clone()];
    for m in &cfg.mounts {
        let user_mount = !matches!(m.origin, Origin::BuiltIn(_));
        if !m.read_only && user_mount && !out.contains(&m.source) && m.source.join(".git").exists()
        {
            out.push(m.source.clone());
        }
    }
    out
}

/// Where the record of the `i`th guarded repository lives.
fn store(state: &StateDir, i: usize) -> PathBuf {
    state.dir.join("git").join(i.to_string())
}

/// Records each of `repos`; before the guest can write anything.
pub fn record(state: &StateDir, repos: &[PathBuf]) -> anyhow::Result<()> {
    for (i, repo) in repos.iter().enumerate() {
        crate::guard::record(repo, &store(state, i)).with_context(|| {
            format!(
                "cannot record the git hooks and settings of {} (the guest could leave some \
                 for this host to run); fix that, or set `git_hooks = \"allow\"`",
                repo.display()
            )
        })?;
    }
    Ok(())
}

/// Undoes what the guest changed in the repositories `snap` guards, and
/// says so on stderr. Returns whether anything was undone.
pub fn undo(state: &StateDir, snap: &Snapshot) -> bool {
    let mut undone = false;
    for (i, repo) in snap.guarded.iter().enumerate() {
        match crate::guard::undo_changes(repo, &store(state, i)) {
            Ok(report) if report.is_empty() => {}
            Ok(report) => {
                undone = true;
                eprint!("{}", describe(repo, &report));
            }
            Err(e) => eprintln!(
                "agentvm: warning: cannot check the git hooks and settings of {}: {e}; \
                 review .git/hooks and .git/config before running git there",
                escape::line(&repo.display().to_string())
            ),
        }
    }
    undone
}

/// The lines `undo` prints for one repository.
fn describe(repo: &Path, report: &crate::guard::Report) -> String {
    let mut out = format!(
        "agentvm: the guest changed what git would run on this host in {}; undone:\n",
        escape::line(&repo.display().to_string())
    );
    for f in &report.findings {
        out.push_str(&format!("  {}\n", escape::line(&f.to_string())));
    }
    if let Some(q) = &report.quarantine {
        out.push_str(&format!(
            "  (the guest's versions are kept in {}; `git_hooks = \"allow\"` in the \
             configuration leaves them in place)\n",
            escape::line(&q.display().to_string())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::git::Finding;

    #[test]
    fn reports_name_each_change_and_the_quarantine() {
        let report = crate::guard::Report {
            repo: "/w".into(),
            findings: vec![Finding::HookAdded("post-checkout".into())],
            quarantine: Some("/w/.git/agentvm-quarantine/1".into()),
        };
        let text = describe(Path::new("/w\x1b[2K"), &report);
        assert!(
            text.contains("in /w\\x1b[2K; undone:\n  hook post-checkout added\n"),
            "{text}"
        );
        assert!(text.contains("/w/.git/agentvm-quarantine/1"), "{text}");
    }
}
