//! The trust boundary's guard on the host side of a shared workspace.
//!
//! The guest is hostile and writes the shared workspace, `.git/` included.
//! Git runs hooks and programs named in `.git/config` on the host, at the
//! user's next `git status`. [`git::record`] notes a repository's hooks and
//! config when the VM starts; [`git::undo_changes`] later undoes every hook
//! and executable config key the guest added or changed, keeping the guest's
//! versions in a quarantine directory for the user to read.
//!
//! Not guarded: the git dirs of submodules (`.git/modules/*`) and of nested
//! repositories, linked work trees' `config.worktree`, a `commondir` that was
//! already there at `record`, and files that recorded `include.path` keys
//! name.

pub mod git;
pub mod gitconfig;
mod node;

#[cfg(test)]
mod tests;

pub use git::{record, undo_changes, Report};
