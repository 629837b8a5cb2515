//! What an approval covers: every part of a resolved configuration that
//! runs something on the host or widens what the guest can reach, as plain
//! data with a stable digest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{GitHooks, PluginFile, ResolvedConfig, SshConfig};

/// The approved content of one workspace's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The workspace (canonical).
    pub workspace: PathBuf,
    /// The VM's display name.
    pub name: String,
    /// Plugins as the file lists them.
    pub plugins: Vec<String>,
    /// Plugin files and digests of their text.
    pub plugin_files: Vec<PluginFile>,
    /// Host commands: `(when, command)`.
    pub hooks: Vec<(String, String)>,
    /// Shares.
    pub mounts: Vec<MountView>,
    /// Host files copied into the guest (`[[files]]`): which, where, with
    /// which mode; not their content (the user's own files, which change
    /// without the workspace asking). Left out when empty, so approvals
    /// from before it stay valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileView>,
    /// `[env]` as written (`${HOST_VAR}` references unexpanded).
    pub env: BTreeMap<String, String>,
    /// `[secrets]`: where each value comes from (a `${HOST_VAR}` template
    /// or a host command) and the hosts it is sent to; never a value. Left
    /// out of the JSON (and the digest) when empty, so approvals from
    /// before secrets existed stay valid.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretView>,
    /// `network.mode`.
    pub network_mode: String,
    /// `network.domains`.
    pub domains: Vec<String>,
    /// `network.ports`.
    pub ports: Vec<u16>,
    /// `network.hosts`.
    pub hosts: BTreeMap<String, String>,
    /// `network.forwards`, `HOST:GUEST`.
    pub forwards: Vec<String>,
    /// `network.upstream_ca`: the file and the SHA-256 of the text the VM
    /// would use (left out when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<PluginFile>,
    /// Guest commands run at `up`.
    pub scripts: Vec<String>,
    /// Debian packages in the image (their scripts run at image build).
    pub packages: Vec<String>,
    /// npm packages in the image (their install scripts run at build).
    pub npm: Vec<String>,
    /// Boot files: `kernel`, `initrd`, `image`.
    pub kernel: Option<PathBuf>,
    /// See [`View::kernel`].
    pub initrd: Option<PathBuf>,
    /// See [`View::kernel`].
    pub image: Option<PathBuf>,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory limit, MiB.
    pub memory_mib: u64,
    /// Whether the root's changes persist on the host.
    pub persistent_root: bool,
    /// Where the agents' state lives on the host.
    pub agent_home: Option<PathBuf>,
    /// Whether git hooks the guest writes are undone.
    pub git_hooks: GitHooks,
    /// The VMM's seccomp level. Left out of the JSON (and the digest) at
    /// its default, so approvals from before the setting stay valid;
    /// `log` and `off` loosen the VMM's confinement and need approval.
    #[serde(
        default,
        with = "crate::config::seccomp_level",
        skip_serializing_if = "crate::config::seccomp_level::is_default"
    )]
    pub seccomp: agentvm_vmm::SeccompLevel,
    /// `[ssh]`: whether the guest may use the host's ssh-agent, and with
    /// which keys, for which hosts. Left out at its default (off), so
    /// approvals from before it stay valid.
    #[serde(default, skip_serializing_if = "SshConfig::is_default")]
    pub ssh: SshConfig,
}

/// One secret in a [`View`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    /// `value ${HOST_VAR}` or `command …`.
    pub source: String,
    /// Names the real value is sent to.
    pub hosts: Vec<String>,
}

/// One copied file in a [`View`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileView {
    /// Host file.
    pub source: PathBuf,
    /// Guest path (`~/…` or absolute).
    pub target: String,
    /// Octal mode, or `None` for the source's.
    pub mode: Option<u32>,
}

/// One share in a [`View`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountView {
    /// Host directory.
    pub source: PathBuf,
    /// Guest path.
    pub target: PathBuf,
    /// Read-only in the guest.
    pub read_only: bool,
    /// Created by `up` when missing.
    pub create: bool,
}

impl View {
    /// The view of `cfg`.
    pub fn of(cfg: &ResolvedConfig) -> View {
        let h = &cfg.hooks;
        let hooks = [
            ("pre_up", &h.pre_up),
            ("post_up", &h.post_up),
            ("pre_down", &h.pre_down),
            ("post_down", &h.post_down),
        ]
        .into_iter()
        .flat_map(|(when, list)| list.iter().map(move |c| (when.to_string(), c.clone())))
        .collect();
        View {
            workspace: cfg.workspace.clone(),
            name: cfg.name.clone(),
            plugins: cfg.plugins.clone(),
            plugin_files: cfg.plugin_files.clone(),
            hooks,
            mounts: cfg
                .mounts
                .iter()
                .map(|m| MountView {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                    create: m.create,
                })
                .collect(),
            files: cfg
                .files
                .iter()
                .map(|f| FileView {
                    source: f.source.clone(),
                    target: f.target.clone(),
                    mode: f.mode,
                })
                .collect(),
            env: cfg
                .env
                .iter()
                .map(|(k, e)| (k.clone(), e.value.template.clone()))
                .collect(),
            secrets: cfg
                .secrets
                .iter()
                .map(|(k, s)| {
                    let view = SecretView {
                        source: s.source.to_string(),
                        hosts: s.hosts.clone(),
                    };
                    (k.clone(), view)
                })
                .collect(),
            upstream_ca: cfg.network.upstream_ca.as_ref().map(|ca| PluginFile {
                path: ca.path.clone(),
                sha256: crate::paths::hex(&Sha256::digest(ca.pem.as_bytes())),
            }),
            network_mode: cfg.network.mode.as_str().to_string(),
            domains: cfg.network.domains.clone(),
            ports: cfg.network.ports.clone(),
            hosts: cfg
                .network
                .hosts
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            forwards: cfg.network.forwards.iter().map(|f| f.to_string()).collect(),
            scripts: cfg.scripts.clone(),
            packages: cfg.packages.clone(),
            npm: cfg.npm.clone(),
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            image: cfg.image.clone(),
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            persistent_root: cfg.persistent_root,
            agent_home: cfg.agent_home.clone(),
            git_hooks: cfg.git_hooks,
            seccomp: cfg.seccomp,
            ssh: cfg.ssh.clone(),
        }
    }

    /// SHA-256 (hex) of the view's canonical JSON: fields in declaration
    /// order, maps sorted.
    pub fn digest(&self) -> String {
        // Serializing plain data with string keys cannot fail; an empty
        // digest input would still differ from any approved one.
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::paths::hex(&Sha256::digest(json))
    }
}
