//! Every place agentvm keeps something for one workspace, in one list.
//!
//! A feature that adds a per-workspace location on the host adds it to
//! [`of_workspace`] (and its path function to [`crate::paths`]), so that
//! `agentvm destroy` removes it. Today they are, keyed by the workspace id
//! ([`crate::paths::workspace_id`]):
//! - the VM's state directory in the state root (console log, network
//!   audit, sockets, configuration snapshot, and the git guard's records
//!   in `git/`);
//! - the agent home agentvm made, `$XDG_DATA_HOME/agentvm/homes/<id>` (the
//!   built-in plugins' state: agent logins, histories);
//! - the persistent root layer, `$XDG_DATA_HOME/agentvm/roots/<id>`;
//! - the workspace CA (the secrets' interception key),
//!   `$XDG_DATA_HOME/agentvm/ca/<id>`, and the unfinished copies a crash
//!   may leave beside it (`.<id>.<pid>.tmp`);
//! - the approval, `$XDG_CONFIG_HOME/agentvm/approved/<id>.json`, and its
//!   unfinished copies (`.<id>.<pid>.tmp`).
//!
//! Not listed, on purpose: the workspace and everything in it (its
//! `.agentvm/config.toml` is the user's file; agentvm writes nothing else
//! there); an `agent_home` the configuration names (a directory the user
//! chose, and the configuration is a file the guest can write: it must not
//! decide what the host deletes); the guest image and its cached root file
//! system layers, which are keyed by content and shared by every
//! workspace (`agentvm image prune` removes unused ones).

use std::path::{Path, PathBuf};

/// agentvm's own directories, where the per-workspace places are.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The state root ([`crate::paths::state_root`]).
    pub state_root: PathBuf,
    /// The configuration directory ([`crate::paths::config_dir`]).
    pub config_dir: Option<PathBuf>,
    /// The data directory ([`crate::paths::data_dir`]).
    pub data_dir: Option<PathBuf>,
}

impl Roots {
    /// This user's.
    pub fn detect() -> Roots {
        Roots {
            state_root: crate::paths::state_root(),
            config_dir: crate::paths::config_dir(),
            data_dir: crate::paths::data_dir(),
        }
    }
}

/// One place, as `destroy` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// What it is, for the user.
    pub what: &'static str,
    /// Where it is (it may not exist).
    pub path: PathBuf,
}

/// What the state directory is called in the list.
pub const STATE: &str = "VM state and git guard records";

/// Every place agentvm may keep something for the workspace `id`, whether
/// or not it exists: the state directory first.
pub fn of_workspace(roots: &Roots, id: &str) -> Vec<Place> {
    let place = |what, path| Place { what, path };
    let mut out = vec![place(STATE, roots.state_root.join(id))];
    if let Some(data) = &roots.data_dir {
        out.push(place("agent home", crate::paths::agent_home(data, id)));
        out.push(place(
            "persistent root layer",
            crate::paths::persistent_root(data, id),
        ));
        let ca = crate::secrets::ca::dir(data, id);
        out.extend(unfinished(&ca, id, "unfinished workspace CA"));
        out.push(place("workspace CA (secrets)", ca));
    }
    if let Some(config) = &roots.config_dir {
        let approval = crate::paths::approval(config, id);
        out.extend(unfinished(&approval, id, "unfinished approval"));
        out.push(place("approval of the configuration", approval));
    }
    out
}

/// The unfinished copies of `path` a crash may leave beside it: entries of
/// its directory called `.<id>.<anything>.tmp`.
fn unfinished(path: &Path, id: &str, what: &'static str) -> Vec<Place> {
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let prefix = format!(".{id}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Place> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".tmp")
        })
        .map(|e| Place {
            what,
            path: e.path(),
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_place_is_keyed_by_the_workspace_id_under_agentvms_own_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots {
            state_root: tmp.path().join("run"),
            config_dir: Some(tmp.path().join("config")),
            data_dir: Some(tmp.path().join("data")),
        };
        std::fs::create_dir_all(tmp.path().join("config/approved")).unwrap();
        std::fs::write(tmp.path().join("config/approved/.abc.77.tmp"), "").unwrap();
        std::fs::write(tmp.path().join("config/approved/.abcd.77.tmp"), "").unwrap();
        std::fs::write(tmp.path().join("config/approved/abcd.json"), "").unwrap();
        let places = of_workspace(&roots, "abc");
        let paths: Vec<String> = places
            .iter()
            .map(|p| {
                p.path
                    .strip_prefix(tmp.path())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            paths,
            [
                "run/abc",
                "data/homes/abc",
                "data/roots/abc",
                "data/ca/abc",
                "config/approved/.abc.77.tmp",
                "config/approved/abc.json",
            ]
        );
        assert_eq!(places[0].what, STATE);
        // Without data or configuration directory, only the state.
        let bare = Roots {
            state_root: tmp.path().join("run"),
            config_dir: None,
            data_dir: None,
        };
        assert_eq!(of_workspace(&bare, "abc").len(), 1);
    }
}
