//! What `agentvm mount` leaves in the VM's state directory: the live
//! mounts (`live-mounts.json`, so that `status` lists them and `unmount`
//! and `down` find their daemons) and the audit log of every mount and
//! unmount (`mounts-audit.jsonl`, one JSON object per line).
//!
//! Everything here is written by the user's own commands into the private
//! state directory; the guest never writes it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::lifecycle::StateDir;

/// The file listing the live mounts.
const RECORDS: &str = "live-mounts.json";
/// The audit log of mounts and unmounts.
const AUDIT: &str = "mounts-audit.jsonl";
/// Prefix of the tags live mounts get (`live0`, `live1`, …); the shares'
/// are `agentvm<N>` and the root's `agentvm-root…`, so they never meet.
const TAG_PREFIX: &str = "live";

/// One live mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveMount {
    /// The virtio-fs tag.
    pub tag: String,
    /// The host directory (canonical).
    pub host_dir: PathBuf,
    /// Where the guest mounted it.
    pub guest_path: PathBuf,
    /// Read-only in the guest (virtiofsd `--readonly`).
    pub read_only: bool,
    /// virtiofsd's pid.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22), so a reused pid is
    /// never taken for it.
    pub start_time: u64,
    /// The hot-plug slot's MMIO base in the guest.
    pub base: u64,
}

/// Held while a command changes the live mounts: two `mount`s at once
/// would otherwise pick the same tag and slot.
pub struct Lock(#[allow(dead_code, reason = "held for its Drop")] nix::fcntl::Flock<fs::File>);

/// Waits for, and takes, the live mounts' lock of `state`.
pub fn lock(state: &StateDir) -> anyhow::Result<Lock> {
    let path = state.dir.join(format!("{RECORDS}.lock"));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map(Lock)
        .map_err(|(_, e)| anyhow::Error::new(e).context(format!("cannot lock {}", path.display())))
}

/// The live mounts file of `state`.
fn records_path(state: &StateDir) -> PathBuf {
    state.dir.join(RECORDS)
}

/// The audit log of `state`.
pub fn audit_path(state: &StateDir) -> PathBuf {
    state.dir.join(AUDIT)
}

/// virtiofsd's log for live mount `tag`.
pub fn daemon_log(state: &StateDir, tag: &str) -> PathBuf {
    state.dir.join(format!("virtiofsd-{tag}.log"))
}

/// The live mounts recorded for `state` (none when there is no file).
pub fn load(state: &StateDir) -> anyhow::Result<Vec<LiveMount>> {
    let path = records_path(state);
    match fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    }
}

/// Replaces the recorded live mounts (atomically: a new file renamed over
/// the old one).
pub fn save(state: &StateDir, mounts: &[LiveMount]) -> anyhow::Result<()> {
    let path = records_path(state);
    let tmp = state.dir.join(format!("{RECORDS}.tmp"));
    let text = serde_json::to_vec_pretty(mounts).context("cannot encode the live mounts")?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// The first `live<N>` tag no recorded mount uses.
pub fn free_tag(mounts: &[LiveMount]) -> String {
    (0..)
        .map(|n| format!("{TAG_PREFIX}{n}"))
        .find(|t| mounts.iter().all(|m| &m.tag != t))
        .unwrap_or_else(|| TAG_PREFIX.to_owned())
}

/// `path` as a guest mount point: absolute, no `.` or `..`, not `/`, at
/// most 4 KiB, with the trailing slash dropped.
pub fn guest_path(path: &Path) -> anyhow::Result<PathBuf> {
    let text = path.as_os_str().as_encoded_bytes();
    let plain = path.is_absolute()
        && text.len() <= 4096
        && !text.split(|&b| b == b'/').any(|s| s == b"." || s == b"..")
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        bail!(
            "the guest path must be absolute, without `.` or `..`: {}",
            path.display()
        );
    }
    let clean: PathBuf = path.components().collect();
    if clean == Path::new("/") {
        bail!("cannot mount over the guest's root");
    }
    Ok(clean)
}

/// Fails when `target` is already a share's or a live mount's mount point.
pub fn check_free(target: &Path, shares: &[PathBuf], mounts: &[LiveMount]) -> anyhow::Result<()> {
    if shares.iter().any(|s| s == target) {
        bail!(
            "{} is a share of the workspace's configuration; choose another guest path",
            target.display()
        );
    }
    if let Some(m) = mounts.iter().find(|m| m.guest_path == target) {
        bail!(
            "{} is already a live mount (of {}); `agentvm unmount {}` first",
            target.display(),
            m.host_dir.display(),
            target.display()
        );
    }
    Ok(())
}

/// The start time of process `pid` (clock ticks since boot), from
/// `/proc/<pid>/stat`; `None` when there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/<pid>/stat` line (the command name, field 2, is in
/// parentheses and may hold spaces and parentheses itself).
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after) = stat.rsplit_once(')')?;
    // `after` starts with field 3.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `mount`'s daemon is still the process with its pid.
pub fn is_its_daemon(mount: &LiveMount) -> bool {
    start_time(mount.pid) == Some(mount.start_time)
}

/// What the audit log records.
#[derive(Debug, Serialize)]
pub struct AuditLine<'a> {
    /// Seconds since the epoch.
    pub time: u64,
    /// `mount` or `unmount`.
    pub event: &'a str,
    /// The live mount.
    pub tag: &'a str,
    /// The host directory.
    pub host_dir: &'a Path,
    /// The guest path.
    pub guest_path: &'a Path,
    /// Read-only.
    pub read_only: bool,
    /// What happened besides (the guest's refusal, a killed daemon), or
    /// empty.
    pub note: String,
}

/// Appends one line about `mount` to the audit log.
pub fn audit(state: &StateDir, event: &str, mount: &LiveMount, note: String) -> anyhow::Result<()> {
    let line = AuditLine {
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        event,
        tag: &mount.tag,
        host_dir: &mount.host_dir,
        guest_path: &mount.guest_path,
        read_only: mount.read_only,
        note,
    };
    let mut text = serde_json::to_vec(&line).context("cannot encode the audit line")?;
    text.push(b'\n');
    let path = audit_path(state);
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&text))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(tag: &str, guest: &str) -> LiveMount {
        LiveMount {
            tag: tag.into(),
            host_dir: "/srv/data".into(),
            guest_path: guest.into(),
            read_only: false,
            pid: 1,
            start_time: 1,
            base: 0xc000_5000,
        }
    }

    #[test]
    fn tags_are_the_first_free_ones() {
        assert_eq!(free_tag(&[]), "live0");
        let used = [mount("live0", "/a"), mount("live2", "/b")];
        assert_eq!(free_tag(&used), "live1");
    }

    #[test]
    fn guest_paths_are_plain_and_free() {
        assert_eq!(
            guest_path(Path::new("/mnt/live/")).unwrap(),
            Path::new("/mnt/live")
        );
        for bad in ["mnt", "/", "/mnt/../etc", "/mnt/./x", "//"] {
            assert!(guest_path(Path::new(bad)).is_err(), "{bad}");
        }
        let shares = [PathBuf::from("/work")];
        let mounts = [mount("live0", "/mnt/live")];
        assert!(check_free(Path::new("/work"), &shares, &mounts).is_err());
        assert!(check_free(Path::new("/mnt/live"), &shares, &mounts).is_err());
        check_free(Path::new("/mnt/other"), &shares, &mounts).unwrap();
    }

    #[test]
    fn records_round_trip_and_damage_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir {
            dir: tmp.path().into(),
        };
        assert!(load(&state).unwrap().is_empty());
        let mounts = vec![mount("live0", "/mnt/a"), mount("live1", "/mnt/b")];
        save(&state, &mounts).unwrap();
        assert_eq!(load(&state).unwrap(), mounts);
        fs::write(records_path(&state), b"{not json").unwrap();
        let err = load(&state).unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    }

    #[test]
    fn audit_lines_are_json_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir {
            dir: tmp.path().into(),
        };
        audit(&state, "mount", &mount("live0", "/mnt/a"), String::new()).unwrap();
        audit(&state, "unmount", &mount("live0", "/mnt/a"), "lazy".into()).unwrap();
        let text = fs::read_to_string(audit_path(&state)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "mount");
        assert_eq!(lines[1]["event"], "unmount");
        assert_eq!(lines[1]["guest_path"], "/mnt/a");
        assert_eq!(lines[1]["note"], "lazy");
    }

    #[test]
    fn start_times_parse_despite_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 1";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("42 (x) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
        // Our own process has one.
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn one_command_at_a_time_changes_the_mounts() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir {
            dir: tmp.path().into(),
        };
        let held = lock(&state).unwrap();
        let path = tmp.path().join(format!("{RECORDS}.lock"));
        let other = fs::File::open(&path).unwrap();
        let refused = nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock);
        assert!(refused.is_err(), "a second lock while the first is held");
        drop(held);
        let other = fs::File::open(&path).unwrap();
        assert!(
            nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
        );
    }
}
