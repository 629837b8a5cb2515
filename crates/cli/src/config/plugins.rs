//! Plugins: configuration fragments merged into the workspace's file.
//!
//! A `plugins` entry is a built-in plugin's name, or the path of a plugin
//! file (it has a `/` or ends in `.toml`), relative to the configuration
//! file that lists it; `~/` is the home directory. A plugin file has the
//! configuration file's schema without `name` and `plugins`: plugins do not
//! include other plugins, the workspace's file lists them all.
//!
//! The built-ins set up one coding agent each: the domains it needs in
//! `filtered` mode (its API and login), the npm package the guest image
//! installs for it, its API keys bound as `[secrets]` to the API hosts (the
//! guest sees placeholders; the network stack sends the real key only
//! there), other credentials passed through from the host's environment, its
//! state directories mounted read-write into the guest's home from the
//! workspace's own agent home on the host (created at `up` when missing, so
//! a login inside the guest persists).
//!
//! The agent home is never the host's own `~/.claude` (or `~/.codex`, …):
//! the guest writes there, and the host's agent would run the hooks, MCP
//! servers and plugins it found. A new agent home starts with a copy of the
//! host's credentials file only, so the user need not log in again; nothing
//! on the host that executes ever reads it back. Sharing the host's real
//! directory takes a `[[mounts]]` entry the user writes and approves.

use std::path::Path;

use toml::Spanned;

use super::env::{EnvEntry, EnvValue};
use super::load::{ConfigError, Source};
use super::merge::Fragment;
use super::secrets::{SecretEntry, SecretSource};
use super::validate::{self, expand_home, Context};
use super::{Mount, Origin, PluginFile, Seed};
use sha2::Digest;

/// A built-in plugin.
#[derive(Debug)]
pub struct BuiltIn {
    /// The name a `plugins` list uses.
    pub name: &'static str,
    /// One line about it, for `init`'s comments.
    pub about: &'static str,
    /// The npm package the guest image installs for it (at build time;
    /// `up` never runs npm).
    pub npm_package: &'static str,
    /// The command it provides.
    pub command: &'static str,
    /// Its flags for running without asking before each action: the VM is
    /// the sandbox (`agentvm agent` passes them).
    pub unattended: &'static [&'static str],
    /// Names it must reach (each covers its subdomains).
    pub domains: &'static [&'static str],
    /// Host variables passed through to the guest under the same name
    /// (their values enter the guest: only what the agent must read itself).
    pub pass_env: &'static [&'static str],
    /// Host variables bound as secrets under the same name: the guest gets a
    /// placeholder, and the real value goes only to these hosts.
    pub secrets: &'static [(&'static str, &'static [&'static str])],
    /// Guest variables set to fixed values (`~/` is the guest's home).
    pub set_env: &'static [(&'static str, &'static str)],
    /// State directories: each a path under the agent home on the host,
    /// mounted at the same path under the guest's home.
    pub state_dirs: &'static [StateDir],
}

/// One directory an agent keeps its state in.
#[derive(Debug)]
pub struct StateDir {
    /// The path under a home directory (e.g. `.claude`).
    pub path: &'static str,
    /// The files in the host's own directory a new agent home copies: the
    /// agent's credentials, nothing it would execute.
    pub credentials: &'static [&'static str],
}

/// The credential Claude Code validates inside the guest before sending
/// it: passed through as plain `[env]`, so its value enters the guest.
pub const OAUTH_IN_GUEST: &str = "CLAUDE_CODE_OAUTH_TOKEN";

/// The built-in plugins: what each agent needs, in one place.
pub const BUILT_INS: &[BuiltIn] = &[
    BuiltIn {
        name: "claude-code",
        about: "Anthropic's Claude Code (`claude`)",
        npm_package: "@anthropic-ai/claude-code",
        command: "claude",
        unattended: &["--dangerously-skip-permissions"],
        domains: &[
            "api.anthropic.com",
            "console.anthropic.com",
            "statsig.anthropic.com",
            "claude.ai",
            "sentry.io",
        ],
        // Claude Code checks an OAuth token itself before it sends it, so a
        // placeholder would not do: this one enters the guest (`up` warns).
        pass_env: &[OAUTH_IN_GUEST],
        secrets: &[
            ("ANTHROPIC_API_KEY", &["api.anthropic.com"]),
            ("ANTHROPIC_AUTH_TOKEN", &["api.anthropic.com"]),
        ],
        // Claude Code keeps its settings file beside (not in) ~/.claude
        // unless told otherwise; a directory can be mounted, a file cannot.
        set_env: &[("CLAUDE_CONFIG_DIR", "~/.claude")],
        state_dirs: &[StateDir {
            path: ".claude",
            credentials: &[".credentials.json"],
        }],
    },
    BuiltIn {
        name: "codex",
        about: "OpenAI's Codex CLI (`codex`)",
        npm_package: "@openai/codex",
        command: "codex",
        unattended: &["--dangerously-bypass-approvals-and-sandbox"],
        domains: &["api.openai.com", "auth.openai.com", "chatgpt.com"],
        pass_env: &[],
        secrets: &[("OPENAI_API_KEY", &["api.openai.com"])],
        set_env: &[],
        state_dirs: &[StateDir {
            path: ".codex",
            credentials: &["auth.json"],
        }],
    },
    BuiltIn {
        name: "gemini",
        about: "Google's Gemini CLI (`gemini`)",
        npm_package: "@google/gemini-cli",
        command: "gemini",
        unattended: &["--yolo"],
        domains: &[
            "generativelanguage.googleapis.com",
            "cloudcode-pa.googleapis.com",
            "oauth2.googleapis.com",
            "www.googleapis.com",
            "accounts.google.com",
        ],
        pass_env: &["GOOGLE_CLOUD_PROJECT"],
        secrets: &[
            ("GEMINI_API_KEY", &["generativelanguage.googleapis.com"]),
            ("GOOGLE_API_KEY", &["generativelanguage.googleapis.com"]),
        ],
        set_env: &[],
        state_dirs: &[StateDir {
            path: ".gemini",
            credentials: &["oauth_creds.json", "google_accounts.json"],
        }],
    },
    BuiltIn {
        name: "opencode",
        about: "opencode (`opencode`), with Anthropic and OpenAI models",
        npm_package: "opencode-ai",
        command: "opencode",
        // opencode asks for nothing unless its own configuration says so.
        unattended: &[],
        domains: &[
            "opencode.ai",
            "models.dev",
            "api.anthropic.com",
            "api.openai.com",
        ],
        pass_env: &[],
        secrets: &[
            ("ANTHROPIC_API_KEY", &["api.anthropic.com"]),
            ("OPENAI_API_KEY", &["api.openai.com"]),
        ],
        set_env: &[],
        state_dirs: &[
            StateDir {
                path: ".config/opencode",
                credentials: &[],
            },
            StateDir {
                path: ".local/share/opencode",
                credentials: &["auth.json"],
            },
        ],
    },
];

/// The built-in plugin called `name`.
pub fn built_in(name: &str) -> Option<&'static BuiltIn> {
    BUILT_INS.iter().find(|b| b.name == name)
}

/// The built-ins' names, for messages: `claude-code, codex, …`.
pub fn built_in_names() -> String {
    BUILT_INS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a `plugins` entry names a file rather than a built-in.
pub fn is_file(entry: &str) -> bool {
    entry.contains('/') || entry.ends_with(".toml")
}

/// The message for a plugin name that is neither a built-in nor a file.
pub fn unknown_message(name: &str) -> String {
    format!(
        "unknown plugin {name:?} (built-in plugins: {}; a plugin file is given by its path, \
         e.g. \"./my-plugin.toml\")",
        built_in_names()
    )
}

impl BuiltIn {
    /// This plugin as a layer; `agent_home` is the workspace's agent home
    /// on the host, `home` the host's home directory (where a new agent
    /// home's credentials are copied from).
    pub fn fragment(
        &self,
        agent_home: Option<&Path>,
        home: Option<&Path>,
        guest_home: &Path,
    ) -> Result<Fragment, String> {
        let origin = Origin::BuiltIn(self.name);
        let mut mounts = Vec::new();
        for dir in self.state_dirs {
            let Some(agent_home) = agent_home else {
                return Err(format!(
                    "plugin {} keeps its state in an agent home, but neither HOME nor \
                     XDG_DATA_HOME is set; set one, or `agent_home` in the configuration",
                    self.name
                ));
            };
            mounts.push(Mount {
                source: agent_home.join(dir.path),
                target: guest_home.join(dir.path),
                read_only: false,
                create: true,
                origin: origin.clone(),
                seed: home.map(|h| Seed {
                    from: h.join(dir.path),
                    files: dir.credentials.to_vec(),
                }),
            });
        }
        let entry = |value| EnvEntry {
            value,
            origin: origin.clone(),
        };
        let mut env: std::collections::BTreeMap<String, EnvEntry> = self
            .pass_env
            .iter()
            .map(|v| ((*v).to_string(), entry(EnvValue::host(v))))
            .collect();
        for (k, v) in self.set_env {
            let value = match v.strip_prefix("~/") {
                Some(rest) => guest_home.join(rest).to_string_lossy().into_owned(),
                None => (*v).to_string(),
            };
            env.insert((*k).to_string(), entry(EnvValue::literal(&value)));
        }
        let secrets = self
            .secrets
            .iter()
            .map(|(name, hosts)| {
                let entry = SecretEntry {
                    source: SecretSource::Value(EnvValue::host(name)),
                    hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
                    origin: origin.clone(),
                };
                ((*name).to_string(), entry)
            })
            .collect();
        Ok(Fragment {
            mounts,
            domains: self.domains.iter().map(|d| (*d).to_string()).collect(),
            env,
            secrets,
            npm: vec![self.npm_package.to_string()],
            ..Fragment::default()
        })
    }
}

/// The layer for one `plugins` entry of `src`.
pub fn load(
    entry: &Spanned<String>,
    src: &Source,
    ctx: &Context<'_>,
) -> Result<(Fragment, Option<PluginFile>), ConfigError> {
    let name = entry.get_ref();
    if !is_file(name) {
        let b = built_in(name).ok_or_else(|| src.error(entry.span(), unknown_message(name)))?;
        return b
            .fragment(ctx.agent_home, ctx.home, ctx.guest_home)
            .map(|f| (f, None))
            .map_err(|why| src.error(entry.span(), why));
    }
    let path = expand_home(name, src.dir(), ctx.home)
        .map_err(|why| src.error(entry.span(), format!("plugin {why}")))?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "not found".to_string(),
            _ => format!("cannot be read ({e})"),
        };
        src.error(
            entry.span(),
            format!(
                "plugin file {name:?} {why}: {} (plugin paths are relative to {})",
                path.display(),
                src.shown
            ),
        )
    })?;
    let plugin = Source::new(&path, text);
    let file = plugin.parse()?;
    if let Some(n) = &file.name {
        return Err(plugin.error(
            n.span(),
            "a plugin cannot set `name`; the workspace's configuration names the VM",
        ));
    }
    for (key, value) in [
        ("agent_home", &file.agent_home),
        ("git_hooks", &file.git_hooks),
        ("seccomp", &file.seccomp),
    ] {
        if let Some(v) = value {
            return Err(plugin.error(
                v.span(),
                format!(
                    "a plugin cannot set `{key}`; set it in {} instead",
                    src.shown
                ),
            ));
        }
    }
    if let Some(ssh) = &file.ssh {
        return Err(plugin.error(
            ssh.span(),
            format!(
                "a plugin cannot set `[ssh]` (it hands the guest your ssh keys); set it in {} \
                 instead",
                src.shown
            ),
        ));
    }
    if let Some(first) = file.plugins.as_ref().and_then(|l| l.first()) {
        return Err(plugin.error(
            first.span(),
            format!(
                "a plugin cannot include other plugins; list them in {} instead",
                src.shown
            ),
        ));
    }
    let digest = crate::paths::hex(&sha2::Sha256::digest(plugin.text.as_bytes()));
    let fragment = validate::fragment(&file, &plugin, ctx)?;
    Ok((
        fragment,
        Some(PluginFile {
            path,
            sha256: digest,
        }),
    ))
}
