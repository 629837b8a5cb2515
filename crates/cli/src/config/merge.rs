//! Layering configuration fragments: the defaults, then each plugin in the
//! order the file lists them, then the workspace's own file.
//!
//! Rules, applying a later layer onto what is there:
//! - scalars (`resources.*`, `network.mode`, `network.upstream_ca`,
//!   `kernel`, `initrd`, `image`):
//!   the later layer's value wins, so the user's beats every plugin's;
//! - tables of values (`[env]`, `[secrets]`, `network.hosts`): merged key
//!   by key, the later layer winning a key both set (so the user can re-pin
//!   a name a plugin pinned); `[env]` and `[secrets]` share their keys (the
//!   guest's variables): a later layer's `[env] NAME` replaces an earlier
//!   secret `NAME`, and a later secret an earlier `[env]` entry;
//! - lists (`network.domains`, `network.ports`, `scripts`, `packages`,
//!   `npm`, `hooks.*`):
//!   concatenated in layer order, duplicates dropped (the first occurrence
//!   keeps its place); so the plugins' scripts run before the user's;
//! - `mounts` and `files` are keyed by guest target and `network.forwards` by host port:
//!   a later layer's entry replaces an earlier one with the same key, in
//!   its place (the user can remount the workspace read-only by mounting
//!   the same target);
//! - `network.ports` defaults to 80 and 443 only when no layer lists ports.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::env::EnvEntry;
use super::load::Source;
use super::secrets::SecretEntry;
use super::{Forward, Hooks, Host, Mount, Network, NetworkMode, Origin, ResolvedConfig};

/// One layer's settings, checked, with absolute paths; `None` and empty
/// lists mean "not set here".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// `resources.vcpus`.
    pub vcpus: Option<u8>,
    /// `resources.memory_mib`.
    pub memory_mib: Option<u64>,
    /// `resources.persistent_root`.
    pub persistent_root: Option<bool>,
    /// `resources.log_max_mib`.
    pub log_max_mib: Option<u64>,
    /// `resources.net_memory_mib`.
    pub net_memory_mib: Option<u64>,
    /// `resources.hotplug_slots`.
    pub hotplug_slots: Option<u64>,
    /// `[[mounts]]`.
    pub mounts: Vec<Mount>,
    /// `[[files]]`.
    pub files: Vec<super::CopiedFile>,
    /// `network.mode`.
    pub mode: Option<NetworkMode>,
    /// `network.domains`.
    pub domains: Vec<String>,
    /// `network.ports`: `Some` when the layer lists ports.
    pub ports: Option<Vec<u16>>,
    /// `network.hosts`: names (lowercase) pinned to addresses.
    pub hosts: BTreeMap<String, Ipv4Addr>,
    /// `network.forwards`.
    pub forwards: Vec<Forward>,
    /// `network.upstream_ca`, read.
    pub upstream_ca: Option<super::UpstreamCa>,
    /// `[env]`.
    pub env: BTreeMap<String, EnvEntry>,
    /// `[secrets]`.
    pub secrets: BTreeMap<String, SecretEntry>,
    /// `scripts`.
    pub scripts: Vec<String>,
    /// `packages`.
    pub packages: Vec<String>,
    /// `npm`.
    pub npm: Vec<String>,
    /// `[hooks]`.
    pub hooks: Hooks,
    /// `kernel`.
    pub kernel: Option<PathBuf>,
    /// `initrd`.
    pub initrd: Option<PathBuf>,
    /// `image`.
    pub image: Option<PathBuf>,
}

impl Fragment {
    /// The bottom layer: the workspace mounted read-write at its own path.
    pub fn defaults(workspace: &Path) -> Fragment {
        Fragment {
            mounts: vec![Mount {
                source: workspace.to_path_buf(),
                target: workspace.to_path_buf(),
                read_only: false,
                create: false,
                origin: Origin::Default,
                seed: None,
            }],
            ..Fragment::default()
        }
    }

    /// Applies `later` on top of this layer.
    pub fn apply(&mut self, later: Fragment) {
        over(&mut self.vcpus, later.vcpus);
        over(&mut self.memory_mib, later.memory_mib);
        over(&mut self.persistent_root, later.persistent_root);
        over(&mut self.log_max_mib, later.log_max_mib);
        over(&mut self.net_memory_mib, later.net_memory_mib);
        over(&mut self.hotplug_slots, later.hotplug_slots);
        over(&mut self.mode, later.mode);
        over(&mut self.kernel, later.kernel);
        over(&mut self.initrd, later.initrd);
        over(&mut self.image, later.image);
        over(&mut self.upstream_ca, later.upstream_ca);
        keyed(&mut self.mounts, later.mounts, |m| m.target.clone());
        keyed(&mut self.files, later.files, |f| f.target.clone());
        keyed(&mut self.forwards, later.forwards, |f| f.host);
        concat(&mut self.domains, later.domains);
        match (&mut self.ports, later.ports) {
            (Some(mine), Some(theirs)) => concat(mine, theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        self.hosts.extend(later.hosts);
        // One name, one kind: the later layer's env entry or secret.
        for name in later.env.keys() {
            self.secrets.remove(name);
        }
        for name in later.secrets.keys() {
            self.env.remove(name);
        }
        self.env.extend(later.env);
        self.secrets.extend(later.secrets);
        concat(&mut self.scripts, later.scripts);
        concat(&mut self.packages, later.packages);
        concat(&mut self.npm, later.npm);
        concat(&mut self.hooks.pre_up, later.hooks.pre_up);
        concat(&mut self.hooks.post_up, later.hooks.post_up);
        concat(&mut self.hooks.pre_down, later.hooks.pre_down);
        concat(&mut self.hooks.post_down, later.hooks.post_down);
    }

    /// The merged layers with the remaining defaults filled in.
    pub fn resolve(
        self,
        workspace: &Path,
        source: Option<&Source>,
        name: String,
        plugins: Vec<String>,
        host: &Host,
    ) -> ResolvedConfig {
        ResolvedConfig {
            workspace: workspace.to_path_buf(),
            file: source.map(|s| s.path.clone()),
            name,
            plugins,
            vcpus: self.vcpus.unwrap_or_else(|| host.default_vcpus()),
            memory_mib: self.memory_mib.unwrap_or_else(|| host.default_memory_mib()),
            persistent_root: self.persistent_root.unwrap_or(false),
            log_max_mib: self.log_max_mib.unwrap_or(super::DEFAULT_LOG_MAX_MIB),
            net_memory_mib: self.net_memory_mib.unwrap_or(super::DEFAULT_NET_MEMORY_MIB),
            hotplug_slots: self
                .hotplug_slots
                .and_then(|n| u8::try_from(n).ok())
                .unwrap_or(super::DEFAULT_HOTPLUG_SLOTS),
            mounts: self.mounts,
            files: self.files,
            network: Network {
                mode: self.mode.unwrap_or(NetworkMode::Filtered),
                domains: self.domains,
                ports: self.ports.unwrap_or_else(|| super::DEFAULT_PORTS.to_vec()),
                hosts: self.hosts,
                forwards: self.forwards,
                upstream_ca: self.upstream_ca,
            },
            env: self.env,
            secrets: self.secrets,
            scripts: self.scripts,
            packages: self.packages,
            npm: self.npm,
            hooks: self.hooks,
            kernel: self.kernel,
            initrd: self.initrd,
            image: self.image,
            id: crate::paths::workspace_id(workspace),
            agent_home: None,
            git_hooks: super::GitHooks::default(),
            seccomp: agentvm_vmm::SeccompLevel::default(),
            ssh: super::SshConfig::default(),
            plugin_files: Vec::new(),
            guest_user: None,
        }
    }
}

/// A scalar: the later layer's, when it sets one.
fn over<T>(mine: &mut Option<T>, later: Option<T>) {
    if later.is_some() {
        *mine = later;
    }
}

/// A list: appended, duplicates dropped, the first occurrence kept.
fn concat<T: PartialEq>(mine: &mut Vec<T>, later: Vec<T>) {
    for item in later {
        if !mine.contains(&item) {
            mine.push(item);
        }
    }
}

/// A list keyed by `key`: a later entry replaces an earlier one with the
/// same key in its place; new keys are appended.
fn keyed<T, K: PartialEq>(mine: &mut Vec<T>, later: Vec<T>, key: impl Fn(&T) -> K) {
    for item in later {
        let k = key(&item);
        match mine.iter_mut().find(|m| key(m) == k) {
            Some(slot) => *slot = item,
            None => mine.push(item),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(source: &str, target: &str, origin: Origin) -> Mount {
        Mount {
            source: source.into(),
            target: target.into(),
            read_only: false,
            create: false,
            origin,
            seed: None,
        }
    }

    #[test]
    fn lists_concatenate_without_duplicates_in_layer_order() {
        let mut base = Fragment {
            domains: vec!["a.com".into(), "b.com".into()],
            scripts: vec!["one".into()],
            ..Fragment::default()
        };
        base.apply(Fragment {
            domains: vec!["b.com".into(), "c.com".into(), "a.com".into()],
            scripts: vec!["two".into(), "one".into()],
            ..Fragment::default()
        });
        assert_eq!(base.domains, ["a.com", "b.com", "c.com"]);
        assert_eq!(base.scripts, ["one", "two"]);
    }

    #[test]
    fn scalars_and_keys_go_to_the_later_layer() {
        let mut base = Fragment {
            vcpus: Some(2),
            memory_mib: Some(1024),
            mode: Some(NetworkMode::Open),
            ..Fragment::default()
        };
        base.apply(Fragment {
            vcpus: Some(4),
            mode: None,
            ..Fragment::default()
        });
        assert_eq!(base.vcpus, Some(4));
        assert_eq!(base.memory_mib, Some(1024));
        assert_eq!(base.mode, Some(NetworkMode::Open));
    }

    #[test]
    fn mounts_and_forwards_are_replaced_in_place_by_key() {
        let mut base = Fragment {
            mounts: vec![
                mount("/w", "/w", Origin::Default),
                mount(
                    "/h/.claude",
                    "/root/.claude",
                    Origin::BuiltIn("claude-code"),
                ),
            ],
            forwards: vec![Forward {
                host: 8080,
                guest: 80,
            }],
            ..Fragment::default()
        };
        let user = Origin::File {
            file: "c".into(),
            line: 1,
        };
        base.apply(Fragment {
            mounts: vec![
                mount("/data", "/data", user.clone()),
                mount("/w", "/w", user.clone()),
            ],
            forwards: vec![
                Forward {
                    host: 9000,
                    guest: 90,
                },
                Forward {
                    host: 8080,
                    guest: 81,
                },
            ],
            ..Fragment::default()
        });
        let targets: Vec<_> = base.mounts.iter().map(|m| m.target.clone()).collect();
        assert_eq!(
            targets,
            [
                Path::new("/w"),
                Path::new("/root/.claude"),
                Path::new("/data")
            ]
        );
        assert_eq!(base.mounts[0].origin, user);
        assert_eq!(
            base.forwards,
            [
                Forward {
                    host: 8080,
                    guest: 81
                },
                Forward {
                    host: 9000,
                    guest: 90
                }
            ]
        );
    }

    #[test]
    fn ports_default_only_when_no_layer_lists_any() {
        let host = Host {
            home: None,
            cpus: 2,
            memory_mib: 1000,
            data_dir: None,
            guest_user: None,
        };
        let resolve = |f: Fragment| f.resolve(Path::new("/w"), None, "w".into(), vec![], &host);
        assert_eq!(resolve(Fragment::default()).network.ports, [80, 443]);
        let mut f = Fragment {
            ports: Some(vec![22]),
            ..Fragment::default()
        };
        f.apply(Fragment {
            ports: Some(vec![443, 22]),
            ..Fragment::default()
        });
        assert_eq!(resolve(f).network.ports, [22, 443]);
    }
}
