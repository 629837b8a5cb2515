//! Record a repository's hooks and config at `up`; at the end, undo what
//! the guest added or changed there that git would run on the host.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::gitconfig;
use super::node::{
    ensure_writable, lstat, observe, read_capped, restore, unchanged, write_atomic, Node,
    Quarantine, MAX_COPY_BYTES,
};

/// Hooks larger than this are recorded by their inode stamp only, so a
/// changed one is removed rather than put back.
const MAX_HOOK_BYTES: u64 = 1 << 20;
/// Hooks copied into the store at most; the others are recorded by stamp.
const MAX_STORED_HOOKS: usize = 256;
/// More entries than this in `hooks/` and the directory counts as replaced
/// (bounds the work a guest can cause).
const MAX_HOOK_ENTRIES: usize = 4096;
/// A config file larger than this is replaced whole by the recorded one.
const MAX_CONFIG_BYTES: u64 = MAX_COPY_BYTES;
/// The `.git` file (`gitdir: PATH`) is read up to this size.
const MAX_DOT_GIT_BYTES: u64 = 4096;
/// The config files git reads from the git dir.
const CONFIG_FILES: [&str; 2] = ["config", "config.worktree"];
/// Makes git take config and hooks from another directory.
const COMMONDIR: &str = "commondir";
/// Where undone files go, inside the git dir (`.agentvm-quarantine` in the
/// work tree when the git dir itself was replaced).
const QUARANTINE: &str = "agentvm-quarantine";
const MANIFEST: &str = "manifest.json";
const MANIFEST_VERSION: u32 = 1;

/// What [`undo_changes`] undid in one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The working tree it looked at.
    pub repo: PathBuf,
    /// Each change undone.
    pub findings: Vec<Finding>,
    /// Where the guest's versions are kept, when anything was undone.
    pub quarantine: Option<PathBuf>,
}

impl Report {
    /// Whether nothing had to be undone.
    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }
}

/// One change the guest made that git would act on, and that was undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A hook that was not there: moved to the quarantine.
    HookAdded(String),
    /// A hook whose type, mode or content changed: moved to the quarantine,
    /// the recorded one put back unless it was too large to keep.
    HookChanged {
        /// The hook's file name.
        name: String,
        /// Whether the recorded version is back.
        restored: bool,
    },
    /// `hooks` stopped being a directory (or filled up): quarantined whole,
    /// a real directory with the recorded hooks made.
    HooksDirReplaced,
    /// An executable config key that was not there: its lines removed.
    KeyAdded {
        /// `config` or `config.worktree`.
        file: String,
        /// The full key name.
        key: String,
        /// Its value (`None` for a bare key).
        value: Option<String>,
    },
    /// An executable config key with another value: the recorded one back.
    KeyChanged {
        /// `config` or `config.worktree`.
        file: String,
        /// The full key name.
        key: String,
        /// The recorded value.
        old: Option<String>,
        /// The guest's value.
        new: Option<String>,
    },
    /// A recorded executable config key the guest removed: put back.
    KeyRestored {
        /// `config` or `config.worktree`.
        file: String,
        /// The full key name.
        key: String,
        /// The recorded value.
        value: Option<String>,
    },
    /// A config file git cannot parse, too large, or not a regular file:
    /// quarantined whole and the recorded one put back (if there was one).
    ConfigReplaced {
        /// `config` or `config.worktree`.
        file: String,
        /// Why the file could not be edited.
        why: String,
    },
    /// A file that redirects git elsewhere (`commondir`) added or changed:
    /// quarantined, the recorded one put back.
    RedirectChanged(String),
    /// `.git` changed into something that points outside the work tree or
    /// cannot be read: moved to `<repo>/.agentvm-quarantine/<n>/dot-git`
    /// and the recorded `.git` file put back when it was one.
    GitDirReplaced(String),
    /// A part that could not be checked or undone (an I/O error): it may
    /// still hold what the guest put there.
    NotUndone {
        /// What: `hooks`, `config`, ...
        what: String,
        /// The error.
        error: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and values come from the guest: escape control characters.
        let value = |v: &Option<String>| match v {
            Some(v) => format!(" = {v:?}"),
            None => String::new(),
        };
        let place = |file: &str| match file {
            "config" => String::new(),
            file => format!(" in {file}"),
        };
        match self {
            Finding::HookAdded(name) => write!(f, "hook {} added", name.escape_debug()),
            Finding::HookChanged { name, restored } => {
                write!(f, "hook {} changed", name.escape_debug())?;
                if !*restored {
                    write!(f, " (the recorded one was not kept: removed)")?;
                }
                Ok(())
            }
            Finding::HooksDirReplaced => write!(f, "hooks directory replaced"),
            Finding::KeyAdded {
                file,
                key,
                value: v,
            } => {
                write!(f, "{}{} added{}", key.escape_debug(), value(v), place(file))
            }
            Finding::KeyChanged {
                file,
                key,
                old,
                new,
            } => write!(
                f,
                "{} changed from{} to{}{}",
                key.escape_debug(),
                value(old),
                value(new),
                place(file)
            ),
            Finding::KeyRestored {
                file,
                key,
                value: v,
            } => {
                write!(
                    f,
                    "{}{} removed (put back){}",
                    key.escape_debug(),
                    value(v),
                    place(file)
                )
            }
            Finding::ConfigReplaced { file, why } => write!(f, "{file} replaced whole: {why}"),
            Finding::RedirectChanged(file) => write!(f, "{file} added or changed"),
            Finding::GitDirReplaced(why) => write!(f, ".git replaced: {why}"),
            Finding::NotUndone { what, error } => {
                write!(f, "{what} not checked or not undone: {error}")
            }
        }
    }
}

/// What `store/manifest.json` holds.
#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u32,
    /// `<repo>/.git` itself.
    dot_git: Node,
    /// The git dir's guarded files, when `.git` led to one inside the repo.
    gitdir: Option<GitDirRecord>,
}

#[derive(Serialize, Deserialize, Default)]
struct GitDirRecord {
    hooks_dir: Node,
    hooks: Vec<NamedNode>,
    /// The config files and `commondir`.
    files: Vec<NamedNode>,
}

impl GitDirRecord {
    fn hook(&self, name: &OsStr) -> &Node {
        find(&self.hooks, name.as_bytes())
    }

    fn file(&self, name: &str) -> &Node {
        find(&self.files, name.as_bytes())
    }
}

fn find<'a>(nodes: &'a [NamedNode], name: &[u8]) -> &'a Node {
    nodes
        .iter()
        .find(|n| n.name == name)
        .map_or(&Node::Missing, |n| &n.node)
}

#[derive(Serialize, Deserialize)]
struct NamedNode {
    /// The file name's bytes.
    name: Vec<u8>,
    node: Node,
}

/// Where `<repo>/.git` leads.
enum Located {
    Missing,
    /// A git dir inside the work tree to guard.
    GitDir(PathBuf),
    /// A `.git` this module cannot guard, and why.
    Unguarded(String),
}

/// Records the hooks and config of the repository in `repo` into `store`, a
/// private directory outside every share (made mode 0700), for
/// [`undo_changes`] to compare with. A `.git` that is a symlink, or a
/// `gitdir:` file leading outside `repo`, is recorded as it is: only a change
/// of it is undone later, never the directory it points to.
pub fn record(repo: &Path, store: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(store)?;
    fs::set_permissions(store, Permissions::from_mode(0o700))?;
    // A record that fails half-way must not leave the previous one behind.
    for result in [
        fs::remove_file(store.join(MANIFEST)),
        fs::remove_dir_all(store.join("hooks")),
    ] {
        match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let repo = repo.canonicalize()?;
    let dot_git = observe(
        &repo.join(".git"),
        Some((store, "dot-git")),
        MAX_DOT_GIT_BYTES,
    )?;
    let gitdir = match locate(&repo)? {
        Located::GitDir(gitdir) => Some(record_gitdir(&gitdir, store)?),
        Located::Missing | Located::Unguarded(_) => None,
    };
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        dot_git,
        gitdir,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    write_atomic(&store.join(MANIFEST), &json, 0o600)
}

fn record_gitdir(gitdir: &Path, store: &Path) -> io::Result<GitDirRecord> {
    let hooks_path = gitdir.join("hooks");
    let hooks_dir = observe(&hooks_path, None, 0)?;
    let mut hooks = Vec::new();
    if hooks_dir == Node::Dir {
        DirBuilder::new().mode(0o700).create(store.join("hooks"))?;
        for (i, name) in list_hooks(&hooks_path)?.into_iter().enumerate() {
            let copy = format!("hooks/{i}");
            let keep = (i < MAX_STORED_HOOKS).then_some((store, copy.as_str()));
            let node = observe(&hooks_path.join(&name), keep, MAX_HOOK_BYTES)?;
            hooks.push(NamedNode {
                name: name.into_vec(),
                node,
            });
        }
    }
    let mut files = Vec::new();
    for name in CONFIG_FILES.into_iter().chain([COMMONDIR]) {
        let node = observe(&gitdir.join(name), Some((store, name)), MAX_CONFIG_BYTES)?;
        files.push(NamedNode {
            name: name.as_bytes().to_vec(),
            node,
        });
    }
    Ok(GitDirRecord {
        hooks_dir,
        hooks,
        files,
    })
}

/// Compares the repository in `repo` with what [`record`] stored in `store`
/// and undoes every added or changed hook, executable config key (see
/// `gitconfig::EXECUTABLE_KEYS`) and `commondir`, keeping the guest's
/// versions under `<gitdir>/agentvm-quarantine/<n>/`. Hooks the guest
/// deleted stay deleted (git runs nothing for them); recorded executable
/// keys it deleted are put back. A git dir that appeared since `record`
/// (the guest ran `git init`) has everything executable in it undone.
///
/// A part that fails (say, a directory the host user cannot write) is
/// reported as [`Finding::NotUndone`] and the others are still undone; an
/// `Err` means nothing was checked (no usable record in `store`, or `repo`
/// is gone). Run it while the guest cannot write to the work tree: it checks
/// and then acts on paths the guest could otherwise swap in between.
pub fn undo_changes(repo: &Path, store: &Path) -> io::Result<Report> {
    let json = read_capped(&store.join(MANIFEST), MAX_CONFIG_BYTES)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "manifest too large"))?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if manifest.version != MANIFEST_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unknown manifest version",
        ));
    }
    let mut report = Report {
        repo: repo.to_path_buf(),
        findings: Vec::new(),
        quarantine: None,
    };
    let repo = repo.canonicalize()?;
    match locate(&repo)? {
        Located::Missing => {}
        Located::Unguarded(why) => {
            let dot_git = repo.join(".git");
            let mut quarantine = Quarantine::new(&repo, ".agentvm-quarantine");
            let result = (|| {
                if !unchanged(&dot_git, &manifest.dot_git, store)? {
                    quarantine.take(&dot_git, Path::new("dot-git"))?;
                    restore(&dot_git, &manifest.dot_git, store)?;
                    report.findings.push(Finding::GitDirReplaced(why));
                }
                Ok(())
            })();
            note_failure(&mut report.findings, ".git", result);
            report.quarantine = quarantine.dir;
        }
        Located::GitDir(gitdir) => {
            let empty = GitDirRecord::default();
            let recorded = manifest.gitdir.as_ref().unwrap_or(&empty);
            let mut quarantine = Quarantine::new(&gitdir, QUARANTINE);
            let findings = &mut report.findings;
            // Each part is undone even when another fails.
            let result = match lstat(&gitdir) {
                Ok(Some(meta)) => ensure_writable(&gitdir, &meta),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            note_failure(findings, "the git directory", result);
            let result = undo_hooks(&gitdir, recorded, store, &mut quarantine, findings);
            note_failure(findings, "hooks", result);
            for name in CONFIG_FILES {
                let node = recorded.file(name);
                let result = undo_config(&gitdir, name, node, store, &mut quarantine, findings);
                note_failure(findings, name, result);
            }
            let path = gitdir.join(COMMONDIR);
            let node = recorded.file(COMMONDIR);
            let result = (|| {
                if !unchanged(&path, node, store)? {
                    quarantine.take(&path, Path::new(COMMONDIR))?;
                    restore(&path, node, store)?;
                    findings.push(Finding::RedirectChanged(COMMONDIR.to_string()));
                }
                Ok(())
            })();
            note_failure(findings, COMMONDIR, result);
            report.quarantine = quarantine.dir;
        }
    }
    Ok(report)
}

/// Reports a part that could not be checked or undone.
fn note_failure(findings: &mut Vec<Finding>, what: &str, result: io::Result<()>) {
    if let Err(e) = result {
        findings.push(Finding::NotUndone {
            what: what.to_string(),
            error: e.to_string(),
        });
    }
}

fn undo_hooks(
    gitdir: &Path,
    recorded: &GitDirRecord,
    store: &Path,
    quarantine: &mut Quarantine,
    findings: &mut Vec<Finding>,
) -> io::Result<()> {
    let hooks_path = gitdir.join("hooks");
    let Some(meta) = lstat(&hooks_path)? else {
        return Ok(()); // Deleted: git runs nothing.
    };
    if meta.is_dir() {
        ensure_writable(&hooks_path, &meta)?;
        // An unreadable directory counts as replaced.
        let names =
            list_hooks(&hooks_path).unwrap_or_else(|_| vec![OsString::new(); MAX_HOOK_ENTRIES + 1]);
        if names.len() <= MAX_HOOK_ENTRIES {
            for name in names {
                let path = hooks_path.join(&name);
                let node = recorded.hook(&name);
                if unchanged(&path, node, store)? {
                    continue;
                }
                quarantine.take(&path, &Path::new("hooks").join(&name))?;
                let restored = restore(&path, node, store)?;
                let name = name.to_string_lossy().into_owned();
                findings.push(match node {
                    Node::Missing => Finding::HookAdded(name),
                    _ => Finding::HookChanged { name, restored },
                });
            }
            return Ok(());
        }
    } else if unchanged(&hooks_path, &recorded.hooks_dir, store)? {
        return Ok(()); // The user's own symlink, untouched.
    }
    quarantine.take(&hooks_path, Path::new("hooks"))?;
    if recorded.hooks_dir == Node::Dir {
        DirBuilder::new().mode(0o755).create(&hooks_path)?;
        for hook in &recorded.hooks {
            restore(
                &hooks_path.join(OsStr::from_bytes(&hook.name)),
                &hook.node,
                store,
            )?;
        }
    } else {
        restore(&hooks_path, &recorded.hooks_dir, store)?;
    }
    findings.push(Finding::HooksDirReplaced);
    Ok(())
}

fn undo_config(
    gitdir: &Path,
    name: &str,
    node: &Node,
    store: &Path,
    quarantine: &mut Quarantine,
    findings: &mut Vec<Finding>,
) -> io::Result<()> {
    let path = gitdir.join(name);
    let recorded = match node {
        Node::File {
            stored: Some(copy), ..
        } => Some(read_capped(&store.join(copy), MAX_CONFIG_BYTES)?.unwrap_or_default()),
        _ => None,
    };
    // `None`: too large, unreadable or not a regular file.
    let current = match lstat(&path)? {
        None => Some(Vec::new()),
        Some(meta) if meta.is_file() => read_capped(&path, MAX_CONFIG_BYTES).ok().flatten(),
        Some(_) => None,
    };
    let why = match &current {
        Some(text) if Some(text) == recorded.as_ref() => return Ok(()),
        Some(text) if text.is_empty() && *node == Node::Missing => return Ok(()),
        None if unchanged(&path, node, store)? => return Ok(()),
        None => "too large, unreadable or not a regular file",
        Some(text) => {
            let baseline = recorded.as_deref().unwrap_or_default();
            if let Some((edited, undone)) = edit_config(text, baseline, name) {
                if edited != *text {
                    if !text.is_empty() {
                        quarantine.keep(Path::new(name), text)?;
                    }
                    let mode = match node {
                        Node::File { mode, .. } => *mode,
                        _ => 0o644,
                    };
                    write_atomic(&path, &edited, mode)?;
                }
                findings.extend(undone);
                return Ok(());
            }
            if gitconfig::parse(text).is_err() {
                "git cannot parse it"
            } else {
                "the recorded file does not parse"
            }
        }
    };
    if lstat(&path)?.is_some() {
        quarantine.take(&path, Path::new(name))?;
    }
    restore(&path, node, store)?;
    findings.push(Finding::ConfigReplaced {
        file: name.to_string(),
        why: why.to_string(),
    });
    Ok(())
}

/// `text` with the executable entries of `baseline` and no others, or
/// `None` when either does not parse.
fn edit_config(text: &[u8], baseline: &[u8], file: &str) -> Option<(Vec<u8>, Vec<Finding>)> {
    let wanted = executable(gitconfig::parse(baseline).ok()?);
    let current = executable(gitconfig::parse(text).ok()?);

    // Pair each current entry with an identical recorded one; the rest go.
    let mut missing: Vec<&gitconfig::Entry> = wanted.iter().collect();
    let mut extra = Vec::new();
    for entry in &current {
        match missing.iter().position(|w| w.same_setting(entry)) {
            Some(i) => {
                missing.remove(i);
            }
            None => extra.push(entry),
        }
    }
    let mut edited = gitconfig::remove(text, &extra);
    let mut findings = Vec::new();
    let mut changed = vec![false; missing.len()];
    for entry in &extra {
        let file = file.to_string();
        let (key, new) = (entry.name(), entry.value_lossy());
        let old = missing
            .iter()
            .zip(changed.iter_mut())
            .find(|(w, done)| !**done && w.same_key(entry));
        findings.push(match old {
            Some((old, done)) => {
                *done = true;
                let old = old.value_lossy();
                Finding::KeyChanged {
                    file,
                    key,
                    old,
                    new,
                }
            }
            None => Finding::KeyAdded {
                file,
                key,
                value: new,
            },
        });
    }
    for (entry, changed) in missing.iter().zip(changed) {
        gitconfig::append(&mut edited, entry);
        if !changed {
            findings.push(Finding::KeyRestored {
                file: file.to_string(),
                key: entry.name(),
                value: entry.value_lossy(),
            });
        }
    }

    // What git will read now must be exactly what was recorded.
    let result = executable(gitconfig::parse(&edited).ok()?);
    let same = result.len() == wanted.len() && {
        let mut left: Vec<&gitconfig::Entry> = wanted.iter().collect();
        result
            .iter()
            .all(|e| match left.iter().position(|w| w.same_setting(e)) {
                Some(i) => {
                    left.remove(i);
                    true
                }
                None => false,
            })
    };
    same.then_some((edited, findings))
}

fn executable(entries: Vec<gitconfig::Entry>) -> Vec<gitconfig::Entry> {
    entries.into_iter().filter(|e| e.is_executable()).collect()
}

/// Where `<repo>/.git` leads: git reads `repo/.git` as a directory, or as a
/// file `gitdir: PATH` (relative to `repo`), which is followed only to a
/// directory inside `repo`.
fn locate(repo: &Path) -> io::Result<Located> {
    let dot_git = repo.join(".git");
    let Some(meta) = lstat(&dot_git)? else {
        return Ok(Located::Missing);
    };
    if meta.is_dir() {
        return Ok(Located::GitDir(dot_git));
    }
    if !meta.is_file() {
        return Ok(Located::Unguarded(
            "`.git` is not a file or directory".into(),
        ));
    }
    let Some(text) = read_capped(&dot_git, MAX_DOT_GIT_BYTES)? else {
        return Ok(Located::Unguarded("`.git` is too large".into()));
    };
    let Some(target) = text.strip_prefix(b"gitdir: ") else {
        return Ok(Located::Unguarded("`.git` has no `gitdir:` line".into()));
    };
    let end = target
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    let target = repo.join(OsStr::from_bytes(&target[..end]));
    match target.canonicalize() {
        Ok(gitdir) if gitdir.starts_with(repo) && gitdir.is_dir() => Ok(Located::GitDir(gitdir)),
        _ => Ok(Located::Unguarded(format!(
            "`.git` leads to {}, outside the work tree",
            target.display()
        ))),
    }
}

/// The entries of `hooks` git could run (every name not ending in
/// `.sample`), sorted; stops counting past `MAX_HOOK_ENTRIES`.
fn list_hooks(hooks: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(hooks)? {
        let name = entry?.file_name();
        if !name.as_bytes().ends_with(b".sample") {
            names.push(name);
            if names.len() > MAX_HOOK_ENTRIES {
                break;
            }
        }
    }
    names.sort();
    Ok(names)
}
