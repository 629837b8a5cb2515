//! Running mmdebstrap with its output streamed to the caller's progress,
//! choosing its mode, and reading what the agents layer's hooks wrote.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use super::manifest::{self, Manifest};
use super::mmdebstrap::{out, Mode, SUITE};
use super::node::{npm_name, AGENT_COMMANDS, NPM};
use super::{require_tool, LayerKeys, RootfsError, RootfsRecipe};
use crate::error::{run, ImageError};
use crate::progress::{Event, Progress};

/// Lines of output kept for the error when mmdebstrap fails.
const TAIL_LINES: usize = 25;

/// `mmdebstrap --version` (`mmdebstrap 1.3.5`).
pub fn mmdebstrap_version() -> Result<String, ImageError> {
    let out = run(Command::new("mmdebstrap").arg("--version"), "mmdebstrap")?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// `--mode=root` as root; otherwise `--mode=unshare`, after checking what
/// it needs (newuidmap/newgidmap, a subordinate id range, user namespaces)
/// so that a missing piece is named instead of failing deep in mmdebstrap.
pub fn detect_mode() -> Result<Mode, ImageError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(Mode::Root);
    }
    require_tool("newuidmap")?;
    require_tool("newgidmap")?;
    // SAFETY: as above.
    let uid = unsafe { libc::getuid() };
    let user = user_name(uid).unwrap_or_else(|| uid.to_string());
    for kind in ["subuid", "subgid"] {
        let text = fs::read_to_string(format!("/etc/{kind}")).unwrap_or_default();
        if !has_subordinate_range(&text, &user, uid) {
            return Err(RootfsError::NoSubordinateIds { user, kind }.into());
        }
    }
    let probe = Command::new("unshare")
        .args(["--user", "true"])
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(o) if o.status.success() => Ok(Mode::Unshare),
        Ok(o) => Err(RootfsError::NoUserNamespaces(
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        )
        .into()),
        Err(e) => Err(RootfsError::NoUserNamespaces(format!("cannot run unshare: {e}")).into()),
    }
}

/// Whether `/etc/subuid`-style `text` gives `user` (by name or uid) a range
/// of at least 65536 ids (a Debian tree uses ids up to 65534).
pub fn has_subordinate_range(text: &str, user: &str, uid: u32) -> bool {
    let uid = uid.to_string();
    text.lines().any(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        f.len() == 3
            && (f[0] == user || f[0] == uid)
            && f[2].parse::<u64>().is_ok_and(|n| n >= 65536)
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
}

/// Runs mmdebstrap with `args`, every output line (its own and the hooks')
/// passed to `progress`; a failure carries the last lines.
pub fn mmdebstrap(args: &[String], progress: &mut dyn Progress) -> Result<(), ImageError> {
    let spawn = |source| ImageError::Spawn {
        program: "mmdebstrap".into(),
        source,
    };
    let (reader, writer) = std::io::pipe().map_err(spawn)?;
    let writer2 = writer.try_clone().map_err(spawn)?;
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let mut child = cmd.spawn().map_err(spawn)?;
    // The pipe's write ends now live only in the child.
    drop(cmd);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        progress.event(Event::Output(&line));
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().map_err(spawn)?;
    if !status.success() {
        return Err(ImageError::CommandFailed {
            program: "mmdebstrap".into(),
            status: status.to_string(),
            stderr: Vec::from(tail).join("\n"),
        });
    }
    Ok(())
}

/// The manifest from what the agents layer's hooks wrote into `dir`;
/// fails when a known agent did not answer `--version`.
pub fn collect_manifest(
    dir: &Path,
    keys: &LayerKeys,
    mmdebstrap: &str,
    recipe: &RootfsRecipe,
) -> Result<Manifest, ImageError> {
    let read = |name: &str| {
        let p = dir.join(name);
        fs::read_to_string(&p).map_err(|e| ImageError::io("Cannot read", &p, e))
    };
    let agents = manifest::parse_tab_lines(&read(out::AGENT_VERSIONS)?);
    for spec in &recipe.npm {
        if let Some((_, cmd)) = AGENT_COMMANDS.iter().find(|(p, _)| *p == npm_name(spec)) {
            if !agents.contains_key(*cmd) {
                return Err(RootfsError::AgentBroken(cmd.to_string()).into());
            }
        }
    }
    let erofs = dir.join(out::EROFS);
    let erofs_bytes = fs::metadata(&erofs)
        .map_err(|e| ImageError::io("Cannot read", &erofs, e))?
        .len();
    Ok(Manifest {
        format: manifest::FORMAT,
        suite: SUITE.to_string(),
        keys: keys.clone(),
        mmdebstrap: mmdebstrap.to_string(),
        node: read(out::NODE_VERSION)?.trim().to_string(),
        npm_version: NPM.version.to_string(),
        packages: recipe.packages.clone(),
        npm_requested: recipe.npm.clone(),
        npm: manifest::parse_npm_ls(&read(out::NPM_LS)?),
        agents,
        debian: manifest::parse_tab_lines(&read(out::DPKG)?),
        erofs_bytes,
        tree_bytes: read(out::TREE_BYTES)?.trim().parse().unwrap_or(0),
    })
}
