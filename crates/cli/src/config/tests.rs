//! Parsing, defaults, plugin merging and every error path, table-driven.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::env::{EnvValue, Part};
use super::load::ConfigError;
use super::*;

/// A workspace in a temporary directory, with a home beside it.
struct Ws {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    home: PathBuf,
    data: PathBuf,
}

impl Ws {
    fn new() -> Ws {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("My Project_2");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(dir.join(CONFIG_DIR)).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        Ws {
            data: tmp.path().join("data"),
            _tmp: tmp,
            dir,
            home,
        }
    }

    fn host(&self) -> Host {
        Host {
            home: Some(self.home.clone()),
            cpus: 6,
            memory_mib: 16000,
            data_dir: Some(self.data.clone()),
            guest_user: None,
        }
    }

    /// Writes `rel` (relative to the workspace).
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Resolves `text` as the workspace's configuration file.
    fn load(&self, text: &str) -> anyhow::Result<ResolvedConfig> {
        let src = Source::new(&config_path(&self.dir), text.to_string());
        resolve(&self.dir, Some(&src), &self.host())
    }

    fn ok(&self, text: &str) -> ResolvedConfig {
        self.load(text)
            .unwrap_or_else(|e| panic!("{text}\n=> {e:#}"))
    }

    fn err(&self, text: &str) -> ConfigError {
        let e = self.load(text).expect_err(text);
        e.downcast_ref::<ConfigError>()
            .unwrap_or_else(|| panic!("{text}: not located: {e:#}"))
            .clone()
    }

    fn defaults(&self) -> ResolvedConfig {
        resolve(&self.dir, None, &self.host()).unwrap()
    }
}

#[test]
fn no_file_means_every_default() {
    let ws = Ws::new();
    let c = ws.defaults();
    assert_eq!(c.name, "my-project-2");
    assert_eq!(c.workspace, ws.dir);
    assert_eq!(c.file, None);
    assert!(c.plugins.is_empty());
    assert_eq!(c.vcpus, 6);
    assert_eq!(c.memory_mib, 8000);
    assert_eq!((c.log_max_mib, c.net_memory_mib), (16, 64));
    assert_eq!(c.hotplug_slots, DEFAULT_HOTPLUG_SLOTS);
    assert_eq!(
        c.mounts,
        [Mount {
            source: ws.dir.clone(),
            target: ws.dir.clone(),
            read_only: false,
            create: false,
            origin: Origin::Default,
            seed: None,
        }]
    );
    assert_eq!(
        c.network,
        Network {
            mode: NetworkMode::Filtered,
            domains: vec![],
            ports: vec![80, 443],
            hosts: BTreeMap::new(),
            forwards: vec![],
            upstream_ca: None,
        }
    );
    assert!(c.env.is_empty() && c.secrets.is_empty() && c.scripts.is_empty());
    assert_eq!(c.hooks, Hooks::default());
    assert_eq!((c.kernel, c.initrd, c.image), (None, None, None));
    // An empty file is the same, but for knowing its path.
    let empty = ws.ok("");
    assert_eq!(
        empty,
        ResolvedConfig {
            file: Some(config_path(&ws.dir)),
            ..ws.defaults()
        }
    );
}

#[test]
fn log_and_network_memory_caps_are_read() {
    let ws = Ws::new();
    let c = ws.ok("[resources]\nlog_max_mib = 4\nnet_memory_mib = 128\nhotplug_slots = 0\n");
    assert_eq!((c.log_max_mib, c.net_memory_mib), (4, 128));
    assert_eq!(c.hotplug_slots, 0);
}

#[test]
fn memory_and_cpu_defaults_follow_the_host() {
    let cases = [
        // (cpus, host MiB, vcpus, memory_mib)
        (1, 2048, 1, 4096),
        (4, 8192, 4, 4096),
        (16, 65536, 16, 32768),
        (255, 1 << 20, 254, 1 << 19),
        (512, 1 << 20, 254, 1 << 19),
    ];
    for (cpus, memory_mib, vcpus, mem) in cases {
        let host = Host {
            home: None,
            cpus,
            memory_mib,
            data_dir: None,
            guest_user: None,
        };
        assert_eq!(host.default_vcpus(), vcpus, "{cpus}");
        assert_eq!(host.default_memory_mib(), mem, "{memory_mib}");
    }
    let h = Host::detect();
    assert!(h.cpus >= 1 && h.memory_mib > 0, "{h:?}");
}

#[test]
fn names_are_sanitized_from_the_directory() {
    for (dir, name) in [
        ("agentvm", "agentvm"),
        ("My Project_2", "my-project-2"),
        ("--a..b--", "a-b"),
        ("Émile", "mile"),
        ("日本", "workspace"),
        ("", "workspace"),
        (&"x".repeat(70), &"x".repeat(63)),
        (&format!("{}-y", "x".repeat(62)), &"x".repeat(62)),
    ] {
        assert_eq!(sanitize_name(dir), name, "{dir:?}");
    }
    assert_eq!(default_name(Path::new("/")), "workspace");
}

#[test]
fn every_key_is_read() {
    let ws = Ws::new();
    let text = r#"
name = "dev-vm"
kernel = "vmlinux"
initrd = "../boot/initrd.img"
image = "~/images/mine"
scripts = ["make setup", "make setup", "echo $HOME"]

[resources]
vcpus = 3
memory_mib = 2048

[[mounts]]
source = "../data"
target = "/data/"
read_only = true

[[mounts]]
source = "~/cache"
target = "/root/.cache"
create = true

[network]
mode = "open"
domains = ["GitHub.com.", "crates.io", "github.com"]
ports = [443, 22, 443]
forwards = ["8080:80", "2222:22", "8080:80"]
hosts = { "API.Test." = "127.0.0.1", "db.test" = "10.1.2.3", "api.test" = "127.0.0.1" }

[env]
RUST_LOG = "debug"
TOKEN = "${GH_TOKEN}"
"_X1" = "a$$b"

[hooks]
pre_up = ["make image"]
post_up = ["echo up"]
pre_down = ["echo bye"]
post_down = ["rm -f /tmp/x", "echo done"]
"#;
    let c = ws.ok(text);
    let cfg_dir = ws.dir.join(CONFIG_DIR);
    assert_eq!(c.name, "dev-vm");
    assert_eq!(c.kernel, Some(cfg_dir.join("vmlinux")));
    assert_eq!(c.initrd, Some(ws.dir.join("boot/initrd.img")));
    assert_eq!(c.image, Some(ws.home.join("images/mine")));
    assert_eq!(c.scripts, ["make setup", "echo $HOME"]);
    assert_eq!((c.vcpus, c.memory_mib), (3, 2048));
    let mounts: Vec<_> = c
        .mounts
        .iter()
        .map(|m| (m.source.clone(), m.target.clone(), m.read_only, m.create))
        .collect();
    let parent = ws.dir.parent().unwrap();
    assert_eq!(
        mounts,
        [
            (ws.dir.clone(), ws.dir.clone(), false, false),
            (parent.join("data"), "/data".into(), true, false),
            (ws.home.join("cache"), "/root/.cache".into(), false, true),
        ]
    );
    let shown = config_path(&ws.dir).display().to_string();
    assert_eq!(
        c.mounts[1].origin,
        Origin::File {
            file: shown.clone(),
            line: 12
        }
    );
    assert_eq!(c.network.mode, NetworkMode::Open);
    assert_eq!(c.network.domains, ["github.com", "crates.io"]);
    assert_eq!(c.network.ports, [443, 22]);
    assert_eq!(
        c.network.hosts,
        BTreeMap::from([
            ("api.test".to_string(), Ipv4Addr::LOCALHOST),
            ("db.test".to_string(), Ipv4Addr::new(10, 1, 2, 3)),
        ])
    );
    assert_eq!(
        c.network.forwards,
        [
            Forward {
                host: 8080,
                guest: 80
            },
            Forward {
                host: 2222,
                guest: 22
            }
        ]
    );
    let env: Vec<_> = c
        .env
        .iter()
        .map(|(k, e)| (k.as_str(), e.value.parts.clone()))
        .collect();
    assert_eq!(
        env,
        [
            ("RUST_LOG", vec![Part::Literal("debug".into())]),
            ("TOKEN", vec![Part::Host("GH_TOKEN".into())]),
            ("_X1", vec![Part::Literal("a$b".into())]),
        ]
    );
    assert_eq!(
        c.env["TOKEN"].origin,
        Origin::File {
            file: shown,
            line: 31
        }
    );
    assert_eq!(c.hooks.pre_up, ["make image"]);
    assert_eq!(c.hooks.post_up, ["echo up"]);
    assert_eq!(c.hooks.pre_down, ["echo bye"]);
    assert_eq!(c.hooks.post_down, ["rm -f /tmp/x", "echo done"]);
}

#[test]
fn the_init_template_resolves_to_the_defaults() {
    let ws = Ws::new();
    let name = default_name(&ws.dir);
    let text = template::init_text(&name, &ws.dir, &[]);
    let c = ws.ok(&text);
    assert_eq!(
        c,
        ResolvedConfig {
            file: Some(config_path(&ws.dir)),
            ..ws.defaults()
        }
    );
    // Every key is explained in it.
    for key in [
        "name =",
        "plugins =",
        "kernel =",
        "initrd =",
        "image =",
        "scripts =",
        "vcpus =",
        "memory_mib =",
        "mode =",
        "domains =",
        "ports = [80, 443]",
        "hosts = { \"api.test\" = \"127.0.0.1\" }",
        "forwards =",
        "[env]",
        "pre_up =",
        "post_up =",
        "pre_down =",
        "post_down =",
        "[[mounts]]",
        "source =",
        "target =",
        "read_only =",
        "create =",
        "[[files]]",
        "target = \"~/.gitconfig\"",
        "mode = \"0644\"",
    ] {
        assert!(text.contains(key), "{key} missing from\n{text}");
    }
    assert!(text.contains(&ws.dir.display().to_string()));
    for b in plugins::BUILT_INS {
        assert!(text.contains(b.name), "{}", b.name);
    }
    // With plugins, it is the same as listing them by hand.
    let with = template::init_text(&name, &ws.dir, &["codex".into(), "gemini".into()]);
    let by_hand = ws.ok("plugins = [\"codex\", \"gemini\"]");
    assert_eq!(ws.ok(&with), by_hand);
}

#[test]
fn built_in_plugins_bring_domains_credentials_state_and_install() {
    let ws = Ws::new();
    let c = ws.ok("plugins = [\"claude-code\"]");
    assert_eq!(c.plugins, ["claude-code"]);
    for d in ["api.anthropic.com", "claude.ai"] {
        assert!(c.network.domains.iter().any(|x| x == d), "{d}");
    }
    // The agent comes with the image: the guest needs no npm registry.
    assert!(!c.network.domains.iter().any(|x| x == "registry.npmjs.org"));
    // The API keys are secrets bound to the API; the guest sees
    // placeholders. The OAuth token Claude Code checks itself is plain env.
    let key = &c.secrets["ANTHROPIC_API_KEY"];
    assert_eq!(
        key.source,
        SecretSource::Value(EnvValue::host("ANTHROPIC_API_KEY"))
    );
    assert_eq!(key.hosts, ["api.anthropic.com"]);
    assert_eq!(key.origin, Origin::BuiltIn("claude-code"));
    assert!(!c.env.contains_key("ANTHROPIC_API_KEY"));
    assert_eq!(
        c.env["CLAUDE_CODE_OAUTH_TOKEN"].value,
        EnvValue::host("CLAUDE_CODE_OAUTH_TOKEN")
    );
    // The workspace's own agent home, never the host's ~/.claude.
    let state = &c.mounts[1];
    let agent_home = ws
        .data
        .join("homes")
        .join(crate::paths::workspace_id(&ws.dir));
    assert_eq!(c.agent_home.as_deref(), Some(agent_home.as_path()));
    assert_eq!(state.source, agent_home.join(".claude"));
    assert_ne!(state.source, ws.home.join(".claude"));
    assert_eq!(state.target, Path::new("/root/.claude"));
    assert!(state.create && !state.read_only);
    assert_eq!(
        state.seed,
        Some(Seed {
            from: ws.home.join(".claude"),
            files: vec![".credentials.json"],
        })
    );
    // Installed into the image at build time; `up` runs no npm.
    assert_eq!(c.npm, ["@anthropic-ai/claude-code"]);
    assert!(c.scripts.is_empty());
    let c = ws.ok("plugins = [\"opencode\"]");
    let targets: Vec<_> = c.mounts.iter().skip(1).map(|m| m.target.clone()).collect();
    assert_eq!(
        targets,
        [
            Path::new("/root/.config/opencode"),
            Path::new("/root/.local/share/opencode")
        ]
    );
}

#[test]
fn every_built_in_is_valid() {
    let ws = Ws::new();
    for b in plugins::BUILT_INS {
        let f = b
            .fragment(Some(&ws.data), Some(&ws.home), Path::new("/root"))
            .unwrap();
        for d in &f.domains {
            assert_eq!(
                validate::check_domain(d).as_deref(),
                Ok(d.as_str()),
                "{}",
                b.name
            );
        }
        assert_eq!(f.npm, [b.npm_package]);
        assert!(f.scripts.is_empty());
        for k in f.env.keys() {
            assert!(env::is_var_name(k), "{k}");
        }
        assert!(!f.mounts.is_empty() && f.mounts.iter().all(|m| m.create));
        assert!(ws.ok(&format!("plugins = [{:?}]", b.name)).plugins == [b.name]);
        assert!(f.mounts.iter().all(|m| m.source.starts_with(&ws.data)));
        let no_home = b
            .fragment(None, Some(&ws.home), Path::new("/root"))
            .unwrap_err();
        assert!(
            no_home.contains("HOME nor XDG_DATA_HOME is set"),
            "{no_home}"
        );
    }
}

#[test]
fn plugins_merge_under_the_users_file() {
    let ws = Ws::new();
    let c = ws.ok(r#"
plugins = ["codex", "opencode", "codex"]
scripts = ["echo mine"]
[resources]
vcpus = 2
[network]
domains = ["github.com", "api.openai.com"]
[env]
OPENAI_API_KEY = "${MY_OPENAI_KEY}"
EXTRA = "1"
[[mounts]]
source = "/elsewhere/codex"
target = "/root/.codex"
"#);
    assert_eq!(c.plugins, ["codex", "opencode"]);
    // Lists: plugins first in listed order, duplicates dropped.
    assert_eq!(
        c.network.domains,
        [
            "api.openai.com",
            "auth.openai.com",
            "chatgpt.com",
            "opencode.ai",
            "models.dev",
            "api.anthropic.com",
            "github.com",
        ]
    );
    assert_eq!(c.npm, ["@openai/codex", "opencode-ai"]);
    assert_eq!(c.scripts, ["echo mine"]);
    // Tables: merged key by key, the user's key wins.
    assert_eq!(
        c.env["OPENAI_API_KEY"].value,
        EnvValue::host("MY_OPENAI_KEY")
    );
    assert!(matches!(
        c.env["OPENAI_API_KEY"].origin,
        Origin::File { line: 9, .. }
    ));
    assert!(!c.secrets.contains_key("OPENAI_API_KEY"));
    assert_eq!(
        c.secrets["ANTHROPIC_API_KEY"].origin,
        Origin::BuiltIn("opencode")
    );
    assert!(c.env.contains_key("EXTRA"));
    // Scalars: the user's.
    assert_eq!(c.vcpus, 2);
    // Mounts keyed by target: the user's replaces the plugin's, in place.
    assert_eq!(c.mounts[1].target, Path::new("/root/.codex"));
    assert_eq!(c.mounts[1].source, Path::new("/elsewhere/codex"));
    assert!(!c.mounts[1].create);
    assert_eq!(c.mounts.len(), 4);
}

#[test]
fn plugin_files_are_found_relative_to_the_config_file() {
    let ws = Ws::new();
    ws.write(
        ".agentvm/tools.toml",
        "scripts = [\"echo tools\"]\nkernel = \"k\"\n[network]\nmode = \"off\"\ndomains = [\"a.example\"]\n[[mounts]]\nsource = \"cache\"\ntarget = \"/cache\"\n",
    );
    ws.write(
        "shared/more.toml",
        "[network]\nmode = \"open\"\nports = [8443]\n[env]\nA = \"from plugin\"\n",
    );
    let c = ws.ok("plugins = [\"./tools.toml\", \"../shared/more.toml\"]\n[env]\nB = \"mine\"\n");
    assert_eq!(c.plugins, ["./tools.toml", "../shared/more.toml"]);
    assert_eq!(c.scripts, ["echo tools"]);
    // A later plugin's scalar beats an earlier one's.
    assert_eq!(c.network.mode, NetworkMode::Open);
    assert_eq!(c.network.ports, [8443]);
    assert_eq!(c.network.domains, ["a.example"]);
    // Boot files relative to the plugin file, mounts to the workspace.
    assert_eq!(c.kernel, Some(ws.dir.join(".agentvm/k")));
    assert_eq!(c.mounts[1].source, ws.dir.join("cache"));
    let plugin_file = ws.dir.join(".agentvm/tools.toml").display().to_string();
    assert_eq!(
        c.mounts[1].origin,
        Origin::File {
            file: plugin_file,
            line: 6
        }
    );
    assert_eq!(c.env["A"].value.template, "from plugin");
    assert_eq!(c.env["B"].value.template, "mine");
    // ~ is the home directory.
    std::fs::write(ws.home.join("p.toml"), "scripts = [\"echo home\"]").unwrap();
    assert_eq!(ws.ok("plugins = [\"~/p.toml\"]").scripts, ["echo home"]);
}

#[test]
fn host_pins_merge_name_by_name_the_users_file_winning() {
    let ws = Ws::new();
    ws.write(
        ".agentvm/a.toml",
        "[network.hosts]\n\"api.test\" = \"127.0.0.1\"\n\"db.test\" = \"127.0.0.2\"\n",
    );
    ws.write(
        ".agentvm/b.toml",
        "[network]\nhosts = { \"db.test\" = \"127.0.0.3\", \"cache.test\" = \"10.9.9.9\" }\n",
    );
    let pins = |text: &str| {
        ws.ok(text)
            .network
            .hosts
            .into_iter()
            .map(|(n, ip)| format!("{n}={ip}"))
            .collect::<Vec<_>>()
    };
    // A later plugin re-pins a name an earlier one pinned.
    assert_eq!(
        pins("plugins = [\"./a.toml\", \"./b.toml\"]"),
        [
            "api.test=127.0.0.1",
            "cache.test=10.9.9.9",
            "db.test=127.0.0.3"
        ]
    );
    // The user's file beats every plugin, whatever case it writes.
    assert_eq!(
        pins("plugins = [\"./a.toml\", \"./b.toml\"]\n[network]\nhosts = { \"DB.test\" = \"192.0.2.1\" }\n"),
        ["api.test=127.0.0.1", "cache.test=10.9.9.9", "db.test=192.0.2.1"]
    );
    // A bad pin in a plugin file is reported in that file.
    ws.write(
        ".agentvm/bad.toml",
        "[network]\nhosts = { x = \"127.9.0.1\" }\n",
    );
    let e = ws.err("plugins = [\"./bad.toml\"]");
    assert!(e.file.ends_with(".agentvm/bad.toml"), "{e}");
    assert_eq!((e.line, e.column), (2, 15));
    assert!(
        e.message
            .starts_with("`network.hosts.x`: cannot pin x to 127.9.0.1: 127.9.0.1 is a loopback"),
        "{e}"
    );
}

#[test]
fn plugin_files_cannot_name_the_vm_or_include_plugins() {
    let ws = Ws::new();
    ws.write(".agentvm/nested.toml", "# nested\nplugins = [\"codex\"]\n");
    ws.write(".agentvm/named.toml", "name = \"x\"\n");
    ws.write(".agentvm/empty.toml", "plugins = []\n");
    let e = ws.err("plugins = [\"./nested.toml\"]");
    assert!(e.file.ends_with(".agentvm/nested.toml"), "{e}");
    assert_eq!((e.line, e.column), (2, 12));
    assert!(
        e.message
            .contains("a plugin cannot include other plugins; list them in"),
        "{e}"
    );
    let e = ws.err("plugins = [\"./named.toml\"]");
    assert_eq!((e.line, e.column), (1, 8));
    assert!(e.message.contains("a plugin cannot set `name`"), "{e}");
    ws.ok("plugins = [\"./empty.toml\"]");
}

/// Each case: the file, its error's line and column, and part of the message.
const ERRORS: &[(&str, usize, usize, &str)] = &[
    // Syntax.
    ("a = ", 1, 5, "invalid TOML: string values must be quoted"),
    ("[network]\nmode = \"off\"\nmode = \"open\"\n", 3, 1, "invalid TOML: duplicate key"),
    // Unknown keys, top level and nested, in every kind of table.
    ("nmae = \"x\"", 1, 1, "unknown key `nmae` (expected one of name, plugins, resources, mounts, files, network, env, secrets, scripts, packages, npm, hooks, kernel, initrd, image, agent_home, git_hooks, seccomp, ssh)"),
    ("\n\n[network]\nmode = \"off\"\n\nmdoe = \"open\"\n", 6, 1, "unknown key `network.mdoe` (expected one of mode, domains, ports, hosts, forwards, upstream_ca)"),
    ("network.mdoe = 1", 1, 9, "unknown key `network.mdoe`"),
    ("[resources]\ncpus = 2", 2, 1, "unknown key `resources.cpus` (expected one of vcpus, memory_mib, persistent_root, log_max_mib, net_memory_mib, hotplug_slots)"),
    ("[hooks]\npost-up = []", 2, 1, "unknown key `hooks.post-up` (expected one of pre_up, post_up, pre_down, post_down)"),
    ("[[mounts]]\nsource = \"a\"\ntarget = \"/a\"\n\n[[mounts]]\nsource = \"b\"\ntarget = \"/b\"\nreadonly = true\n", 8, 1, "unknown key `mounts[1].readonly` (expected one of source, target, read_only, create)"),
    ("mounts = [{ source = \"a\", target = \"/a\", ro = true }]", 1, 42, "unknown key `mounts[0].ro`"),
    // Wrong types.
    ("name = 3", 1, 8, "`name` must be a string, not integer 3"),
    ("plugins = \"codex\"", 1, 11, "`plugins` must be an array, not string \"codex\""),
    ("plugins = [\"codex\", 3]", 1, 21, "`plugins[1]` must be a string, not integer 3"),
    ("[resources]\nvcpus = \"four\"", 2, 9, "`resources.vcpus` must be an integer, not string \"four\""),
    ("[resources]\nmemory_mib = 1.5", 2, 14, "`resources.memory_mib` must be an integer, not floating point 1.5"),
    ("network = 3", 1, 11, "`network` must be a table, not integer 3"),
    ("[network]\nports = [99999999999999999999]", 2, 10, "`network.ports[0]`: integer 99999999999999999999 is out of range"),
    ("[network]\nports = [80, \"443\"]", 2, 14, "`network.ports[1]` must be an integer, not string \"443\""),
    ("[env]\nA = 1", 2, 5, "`env.A` must be a string, not integer 1"),
    ("[[mounts]]\nsource = \"a\"\ntarget = \"/a\"\nread_only = \"yes\"", 4, 13, "`mounts[0].read_only` must be true or false"),
    ("[[mounts]]\nsource = \"a\"\n", 1, 1, "`mounts[0]` needs a `target` key"),
    ("[hooks]\npre_up = \"make\"", 2, 10, "`hooks.pre_up` must be an array"),
    // Bad values.
    ("name = \"My VM\"", 1, 8, "`name` \"My VM\" is not a VM name: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-' (e.g. \"my-vm\")"),
    ("name = \"-x\"", 1, 8, "is not a VM name"),
    ("[resources]\nvcpus = 0", 2, 9, "`resources.vcpus` must be between 1 and 254, not 0"),
    ("[resources]\nvcpus = 255", 2, 9, "must be between 1 and 254, not 255"),
    ("[resources]\nvcpus = 256", 2, 9, "must be between 1 and 254, not 256"),
    ("[resources]\nmemory_mib = 64", 2, 14, "`resources.memory_mib` must be at least 128 (MiB), not 64"),
    ("[resources]\nlog_max_mib = 0", 2, 15, "`resources.log_max_mib` must be between 1 and 1048576 (MiB), not 0"),
    ("[resources]\nnet_memory_mib = 2", 2, 18, "`resources.net_memory_mib` must be between 4 and 1048576 (MiB), not 2"),
    ("[resources]\nhotplug_slots = 9", 2, 17, "`resources.hotplug_slots` must be between 0 and 8, not 9"),
    ("[resources]\nhotplug_slots = -1", 2, 17, "`resources.hotplug_slots` must be between 0 and 8, not -1"),
    ("[resources]\nmemory_mib = -1", 2, 14, "must be at least 128 (MiB), not -1"),
    ("[network]\nmode = \"closed\"", 2, 8, "`network.mode` \"closed\" is not a mode (expected one of off, filtered, open)"),
    ("[network]\nports = [80, 0]", 2, 14, "`network.ports[1]`: 0 is not a port (1 to 65535)"),
    ("[network]\nports = [70000]", 2, 10, "`network.ports[0]`: 70000 is not a port (1 to 65535)"),
    ("[network]\nports = [-443]", 2, 10, "-443 is not a port"),
    ("[network]\nforwards = [\"8080\"]", 2, 13, "`network.forwards[0]`: \"8080\" is not a forward: expected \"HOST:GUEST\", e.g. \"8080:80\""),
    ("[network]\nforwards = [\"a:80\"]", 2, 13, "\"a\" in \"a:80\" is not a port (1 to 65535)"),
    ("[network]\nforwards = [\"0:80\"]", 2, 13, "\"0\" in \"0:80\" is not a port"),
    ("[network]\nforwards = [\"8080:99999\"]", 2, 13, "\"99999\" in \"8080:99999\" is not a port"),
    ("[network]\nforwards = [\"8080:80\", \"8080:81\"]", 2, 24, "`network.forwards[1]`: host port 8080 is already forwarded to guest port 80"),
    ("[network]\ndomains = [\"https://github.com\"]", 2, 12, "`network.domains[0]`: \"https://github.com\" is not a host name: write the name only"),
    ("[network]\ndomains = [\"*.github.com\"]", 2, 12, "a name covers its subdomains already; write \"github.com\""),
    ("[network]\ndomains = [\"github.com:22\"]", 2, 12, "allowed ports go in `network.ports`"),
    ("[network]\ndomains = [\"1.1.1.1\"]", 2, 12, "is an IP address"),
    ("[network]\ndomains = [\"a..b\"]", 2, 12, "\"a..b\" is not a host name"),
    ("[network]\nhosts = [\"a.test=127.0.0.1\"]", 2, 9, "`network.hosts` must be a table, not an array"),
    ("[network]\nhosts = { \"a.test\" = 1 }", 2, 22, "`network.hosts.\"a.test\"` must be a string, not integer 1"),
    ("[network]\nhosts = { \"a b\" = \"127.0.0.1\" }", 2, 11, "`network.hosts.\"a b\"`: \"a b\" is not a host name (a pin answers exactly this name, e.g. \"api.test\")"),
    ("[network]\nhosts = { \"*.a.test\" = \"127.0.0.1\" }", 2, 11, "\"*.a.test\" is not a host name"),
    ("[network]\nhosts = { \"1.2.3.4\" = \"127.0.0.1\" }", 2, 11, "\"1.2.3.4\" is not a host name"),
    ("[network]\nhosts = { \"\" = \"127.0.0.1\" }", 2, 11, "`network.hosts.\"\"`: \"\" is not a host name"),
    ("[network.hosts]\n\"a..b\" = \"127.0.0.1\"", 2, 1, "`network.hosts.\"a..b\"`: \"a..b\" is not a host name"),
    ("[network]\nhosts = { \"api.test\" = \"::1\" }", 2, 24, "`network.hosts.\"api.test\"`: \"::1\" is not an IPv4 address (e.g. \"127.0.0.1\")"),
    ("[network]\nhosts = { x = \"localhost\" }", 2, 15, "`network.hosts.x`: \"localhost\" is not an IPv4 address"),
    ("[network]\nhosts = { x = \"1.2.3\" }", 2, 15, "\"1.2.3\" is not an IPv4 address"),
    ("[network]\nhosts = { x = \" 127.0.0.1\" }", 2, 15, "\" 127.0.0.1\" is not an IPv4 address"),
    ("[network]\nhosts = { x = \"127.1.0.1\" }", 2, 15, "`network.hosts.x`: cannot pin x to 127.1.0.1: 127.1.0.1 is a loopback address outside 127.0.0.0/16; the guest reaches the host's loopback only there"),
    ("[network]\nhosts = { x = \"0.0.0.0\" }", 2, 15, "`network.hosts.x`: cannot pin x to 0.0.0.0: 0.0.0.0 is no host's address"),
    ("[network]\nhosts = { x = \"255.255.255.255\" }", 2, 15, "`network.hosts.x`: cannot pin x to 255.255.255.255: 255.255.255.255 is the broadcast address"),
    ("[network]\nhosts = { x = \"224.0.0.251\" }", 2, 15, "is a multicast address"),
    ("[network]\nhosts = { x = \"198.18.0.1\" }", 2, 15, "pin the 127.0.B.C address instead"),
    ("[network.hosts]\n\"API.test\" = \"127.0.0.1\"\n\"api.test\" = \"127.0.0.2\"\n", 3, 14, "`network.hosts.\"api.test\"`: api.test is already pinned to 127.0.0.1"),
    ("[env]\n\"1A\" = \"x\"", 2, 1, "`env.1A` is not an environment variable name"),
    ("[env]\nA = \"${HOME\"", 2, 5, "`env.A`: unclosed `${`"),
    ("[env]\nA = \"${A B}\"", 2, 5, "is not a host variable name"),
    ("[[mounts]]\nsource = \"a\"\ntarget = \"data\"", 3, 10, "`mounts[0].target` \"data\" must be an absolute path in the guest"),
    ("[[mounts]]\nsource = \"a\"\ntarget = \"/tmp/..\"", 3, 10, "`mounts[0].target` cannot be the guest's root directory"),
    ("[[mounts]]\nsource = \"\"\ntarget = \"/a\"", 2, 10, "`mounts[0].source` is empty"),
    ("[[mounts]]\nsource = \"~bob/x\"\ntarget = \"/a\"", 2, 10, "only ~ (your home) is understood"),
    ("scripts = [\"ok\", \"  \"]", 1, 18, "`scripts[1]` is an empty command"),
    ("[hooks]\npost_down = [\"\"]", 2, 14, "`hooks.post_down[0]` is an empty command"),
    ("kernel = \"\"", 1, 10, "`kernel` is empty"),
    // Secrets.
    ("[secrets]\nK = \"${K}\"", 2, 5, "`secrets.K` must be a table"),
    ("[secrets]\n\"1K\" = { value = \"${K}\", hosts = [\"a.test\"] }", 2, 1, "`secrets.1K` is not an environment variable name"),
    ("[secrets]\nK = { hosts = [\"a.test\"] }", 2, 5, "`secrets.K` needs `value = \"${HOST_VAR}\"` or `command = \"…\"`"),
    ("[secrets]\nK = { value = \"${K}\", command = \"gh auth token\", hosts = [\"a.test\"] }", 2, 33, "`secrets.K` has both `value` and `command`; give one of them"),
    ("[secrets]\nK = { command = \" \", hosts = [\"a.test\"] }", 2, 17, "`secrets.K.command` is empty"),
    ("[secrets]\nK = { value = \"${K\", hosts = [\"a.test\"] }", 2, 15, "`secrets.K.value`: unclosed `${`"),
    ("[secrets]\nK = { value = \"${K}\" }", 2, 5, "`secrets.K` needs `hosts = [\"…\"]`"),
    ("[secrets]\nK = { value = \"${K}\", hosts = [] }", 2, 5, "`secrets.K` needs `hosts = [\"…\"]`"),
    ("[secrets]\nK = { value = \"${K}\", hosts = [\"https://a.test/\"] }", 2, 32, "`secrets.K.hosts[0]`: \"https://a.test/\" is not a host name"),
    ("[secrets]\nK = { value = \"${K}\", hosts = [\"a.test\", \"*.a.test\"] }", 2, 42, "`secrets.K.hosts[1]`: \"*.a.test\": a name covers its subdomains already"),
    ("[secrets]\nK = { value = \"${K}\", hosts = [\"a.test\"], header = \"x\" }", 2, 43, "unknown key `secrets.K.header`"),
    ("[env]\nK = \"x\"\n[secrets]\nK = { value = \"${K}\", hosts = [\"a.test\"] }", 4, 1, "`secrets.K`: K is also in [env]; a variable is one or the other"),
    ("[network]\ndomains = [\"b.test\"]\n[secrets]\nK = { value = \"${K}\", hosts = [\"a.test\"] }", 4, 1, "`secrets.K.hosts`: a.test is not an allowed name; add it (or a domain above it) to `network.domains`, or pin it in `network.hosts`"),
    ("[network]\ndomains = [\"a.test\"]\n[secrets]\nK = { value = \"${K}\", hosts = [\"a.test\", \"evila.test\"] }", 4, 1, "evila.test is not an allowed name"),
    ("[network]\nupstream_ca = \"missing.pem\"", 2, 15, "`network.upstream_ca`: cannot read "),
    // Plugins.
    ("plugins = [\"codex\", \"claud-code\"]", 1, 21, "unknown plugin \"claud-code\" (built-in plugins: claude-code, codex, gemini, opencode; a plugin file is given by its path"),
    ("\nplugins = [\"./missing.toml\"]", 2, 12, "plugin file \"./missing.toml\" not found: "),
];

#[test]
fn every_mistake_is_reported_at_its_line_with_its_key() {
    let ws = Ws::new();
    let shown = config_path(&ws.dir).display().to_string();
    let mut failures = Vec::new();
    for &(text, line, column, message) in ERRORS {
        let e = ws.err(text);
        if e.file != shown || (e.line, e.column) != (line, column) || !e.message.contains(message) {
            failures.push(format!(
                "{text:?}\n  want {line}:{column}: {message}\n  got  {}:{}: {}",
                e.line, e.column, e.message
            ));
        }
        assert!(e
            .to_string()
            .starts_with(&format!("{shown}:{}:{}: ", e.line, e.column)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn unreadable_files_are_named() {
    let ws = Ws::new();
    let bad = ws.write(".agentvm/config.toml", "");
    std::fs::write(&bad, b"name = \"\xff\"\n").unwrap();
    let e = Source::read(&bad).unwrap_err();
    assert!(
        format!("{e:#}").starts_with(&format!("cannot read {}: ", bad.display())),
        "{e:#}"
    );
    std::fs::create_dir_all(ws.dir.join(".agentvm/dir.toml")).unwrap();
    let e = ws.err("plugins = [\"./dir.toml\"]");
    assert_eq!((e.line, e.column), (1, 12));
    assert!(
        e.message
            .contains("plugin file \"./dir.toml\" cannot be read ("),
        "{e}"
    );
    ws.write(".agentvm/binary.toml", "");
    std::fs::write(ws.dir.join(".agentvm/binary.toml"), b"\xff\xfe").unwrap();
    let e = ws.err("plugins = [\"./binary.toml\"]");
    assert!(e.message.contains("cannot be read ("), "{e}");
}

#[test]
fn errors_in_a_plugin_file_point_into_it() {
    let ws = Ws::new();
    ws.write(
        ".agentvm/p.toml",
        "[network]\nports = [1]\nforwards = [\"x\"]\n",
    );
    let e = ws.err("plugins = [\"./p.toml\"]");
    assert!(e.file.ends_with(".agentvm/p.toml"), "{e}");
    assert_eq!((e.line, e.column), (3, 13));
    assert!(e.message.contains("`network.forwards[0]`"), "{e}");
}

#[test]
fn missing_home_is_said_where_it_matters() {
    let ws = Ws::new();
    let src = Source::new(&config_path(&ws.dir), "plugins = [\"gemini\"]".into());
    let host = Host {
        home: None,
        data_dir: None,
        guest_user: None,
        ..ws.host()
    };
    let e = resolve(&ws.dir, Some(&src), &host).unwrap_err();
    let e = e.downcast_ref::<ConfigError>().unwrap();
    assert_eq!((e.line, e.column), (1, 12));
    assert!(
        e.message.starts_with(
            "plugin gemini keeps its state in an agent home, but neither HOME nor XDG_DATA_HOME"
        ),
        "{}",
        e.message
    );
    // `agent_home` is enough.
    let src = Source::new(
        &config_path(&ws.dir),
        "plugins = [\"gemini\"]\nagent_home = \"/srv/agents\"".into(),
    );
    let c = resolve(&ws.dir, Some(&src), &host).unwrap();
    assert_eq!(c.mounts[1].source, Path::new("/srv/agents/.gemini"));
    assert_eq!(c.mounts[1].seed, None);
    let src = Source::new(&config_path(&ws.dir), "image = \"~/img\"".into());
    let e = resolve(&ws.dir, Some(&src), &host).unwrap_err();
    assert!(
        e.to_string()
            .contains("`image`: \"~/img\" starts with ~, but HOME is not set"),
        "{e}"
    );
}

#[test]
fn the_workspace_is_the_nearest_directory_with_a_file() {
    let ws = Ws::new();
    let sub = ws.dir.join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    assert_eq!(
        find_workspace(&sub, None),
        Workspace {
            dir: sub.clone(),
            config: None
        }
    );
    let file = ws.write(".agentvm/config.toml", "name = \"x\"");
    assert_eq!(
        find_workspace(&sub, None),
        Workspace {
            dir: ws.dir.clone(),
            config: Some(file.clone())
        }
    );
    // The home directory's own .agentvm is skipped, unless started there.
    assert_eq!(find_workspace(&sub, Some(&ws.dir)).config, None);
    assert_eq!(find_workspace(&ws.dir, Some(&ws.dir)).config, Some(file));
    let c = load(&sub).unwrap();
    assert_eq!((c.name.as_str(), c.workspace), ("x", ws.dir.clone()));
}

#[test]
fn the_rendered_configuration_loads_back_to_itself() {
    let ws = Ws::new();
    ws.write(".agentvm/p.toml", "[hooks]\npre_up = [\"echo plugin\"]\n");
    ws.write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let c = ws.ok(r#"
name = "rt"
plugins = ["claude-code", "./p.toml"]
kernel = "/k"
scripts = ["echo \"quoted\" \\ back"]
[resources]
memory_mib = 1024
[network]
mode = "filtered"
forwards = ["8080:80"]
hosts = { "api.test" = "127.0.0.1", x = "192.0.2.1" }
upstream_ca = "ca.pem"
[env]
WITH_UNDERSCORE = "x"
GREETING = "hello $$USER ${USER}"
[secrets]
GH_TOKEN = { command = "gh auth token | tr -d '\"'", hosts = ["api.test"] }
OTHER = { value = "Bearer ${TOKEN}", hosts = ["x", "api.anthropic.com"] }
[hooks]
post_down = ["echo bye"]
[[mounts]]
source = "ro"
target = "/ro"
read_only = true
"#);
    let text = render::render(&c, &|_| None);
    let again = ws.ok(&text);
    let strip = |c: &ResolvedConfig| {
        let mut c = c.clone();
        c.plugins.clear();
        c.plugin_files.clear();
        for m in &mut c.mounts {
            m.origin = Origin::Default;
            m.seed = None;
        }
        for e in c.env.values_mut() {
            e.origin = Origin::Default;
        }
        for s in c.secrets.values_mut() {
            s.origin = Origin::Default;
        }
        c
    };
    assert_eq!(c.secrets.len(), 4, "the plugin's two and the file's");
    assert!(c.network.upstream_ca.is_some());
    assert_eq!(strip(&again), strip(&c), "{text}");
}

#[test]
fn rendering_never_shows_host_values() {
    let ws = Ws::new();
    let c = ws
        .ok("plugins = [\"claude-code\"]\n[env]\nLIT = \"plain\"\nPAIR = \"${SECRET}:${NOPE}\"\n");
    let lookup =
        |v: &str| (v == "ANTHROPIC_API_KEY" || v == "SECRET").then(|| "sk-hunter2".to_string());
    let text = render::render(&c, &lookup);
    assert!(!text.contains("hunter2"), "{text}");
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("{key} missing from\n{text}"))
            .to_string()
    };
    assert_eq!(
        line("ANTHROPIC_API_KEY"),
        "ANTHROPIC_API_KEY = { value = \"${ANTHROPIC_API_KEY}\", hosts = [\"api.anthropic.com\"] }  \
         # <set>; from plugin claude-code"
    );
    assert!(line("CLAUDE_CODE_OAUTH_TOKEN").ends_with("# <unset>; from plugin claude-code"));
    assert!(line("PAIR").contains("# SECRET <set>, NOPE <unset>; from "));
    assert!(line("LIT").starts_with("LIT = \"plain\"  # from "));
    assert!(text.contains("# plugins merged in: claude-code"));
    assert!(text.contains("[[mounts]]  # default: the workspace, read-write at its own path"));
}

#[test]
fn secrets_merge_like_env_and_share_its_names() {
    let ws = Ws::new();
    ws.write(
        ".agentvm/p.toml",
        "[network]\ndomains = [\"corp.test\"]\n\
         [secrets]\nTOKEN = { command = \"corp-login\", hosts = [\"api.corp.test\"] }\n\
         SHARED = { value = \"${A}\", hosts = [\"corp.test\"] }\n",
    );
    let c = ws.ok(
        "plugins = [\"codex\", \"./p.toml\"]\n\
         [network]\nhosts = { \"pinned.test\" = \"127.0.0.1\" }\n\
         [env]\nOPENAI_API_KEY = \"${MY_OPENAI}\"\n\
         [secrets]\nSHARED = { value = \"${B}\", hosts = [\"pinned.test\", \"API.Corp.Test.\"] }\n",
    );
    // A plugin file's secret, as it wrote it.
    assert_eq!(
        c.secrets["TOKEN"].source,
        SecretSource::Command("corp-login".into())
    );
    assert_eq!(c.secrets["TOKEN"].hosts, ["api.corp.test"]);
    // The user's file wins a name both set, hosts and all (lowercased).
    assert_eq!(
        c.secrets["SHARED"].source,
        SecretSource::Value(EnvValue::host("B"))
    );
    assert_eq!(c.secrets["SHARED"].hosts, ["pinned.test", "api.corp.test"]);
    assert!(matches!(
        c.secrets["SHARED"].origin,
        Origin::File { line: 7, .. }
    ));
    // The user's [env] entry replaces the plugin's secret of that name.
    assert!(!c.secrets.contains_key("OPENAI_API_KEY"));
    assert_eq!(c.env["OPENAI_API_KEY"].value, EnvValue::host("MY_OPENAI"));
    // And a secret replaces a plugin's [env] entry.
    let c = ws.ok(
        "plugins = [\"gemini\"]\n[network]\ndomains = [\"cloud.test\"]\n\
         [secrets]\nGOOGLE_CLOUD_PROJECT = { value = \"${P}\", hosts = [\"cloud.test\"] }\n",
    );
    assert!(!c.env.contains_key("GOOGLE_CLOUD_PROJECT"));
    assert!(c.secrets.contains_key("GOOGLE_CLOUD_PROJECT"));
    assert!(c.secrets.contains_key("GEMINI_API_KEY"));
    // In `open` and `off` mode no allowlist applies to a secret's hosts.
    for mode in ["open", "off"] {
        let c = ws.ok(&format!(
            "[network]\nmode = \"{mode}\"\n[secrets]\nK = {{ value = \"${{K}}\", hosts = [\"any.test\"] }}\n"
        ));
        assert_eq!(c.secrets["K"].hosts, ["any.test"]);
    }
}

#[test]
fn upstream_ca_is_read_from_the_workspace_when_resolved() {
    let ws = Ws::new();
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let path = ws.write("certs/test-ca.pem", pem);
    let c = ws.ok("[network]\nupstream_ca = \"certs/test-ca.pem\"\n");
    let ca = c.network.upstream_ca.unwrap();
    assert_eq!((ca.path, ca.pem.as_str()), (path.clone(), pem));
    std::fs::write(&path, "not a certificate").unwrap();
    let e = ws.err("[network]\nupstream_ca = \"certs/test-ca.pem\"\n");
    assert!(e.message.contains("holds no PEM certificate"), "{e}");
    // A FIFO (or a device) the guest left there is refused, not waited on.
    let fifo = ws.dir.join("certs/fifo.pem");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = ws.err("[network]\nupstream_ca = \"certs/fifo.pem\"\n");
    assert!(e.message.contains("not a regular file"), "{e}");
    let e = ws.err("[network]\nupstream_ca = \"/dev/zero\"\n");
    assert!(e.message.contains("not a regular file"), "{e}");
    std::fs::write(&path, "x".repeat((MAX_UPSTREAM_CA_BYTES + 1) as usize)).unwrap();
    let e = ws.err("[network]\nupstream_ca = \"certs/test-ca.pem\"\n");
    assert!(e.message.contains("larger than 1 MiB"), "{e}");
}

#[test]
fn mount_sources_are_created_only_when_asked() {
    let ws = Ws::new();
    let m = |source: PathBuf, create: bool| Mount {
        source,
        target: "/t".into(),
        read_only: false,
        create,
        origin: Origin::File {
            file: "c.toml".into(),
            line: 4,
        },
        seed: None,
    };
    let missing = ws.dir.join("a/b");
    let e = m(missing.clone(), false).prepare_source().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "c.toml:4: mount source {} does not exist; create it, or add `create = true` to the mount",
            missing.display()
        )
    );
    m(missing.clone(), true).prepare_source().unwrap();
    assert!(missing.is_dir());
    let file = ws.write("f", "");
    let e = m(file, true).prepare_source().unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
}

#[test]
fn paths_are_normalized_lexically() {
    for (p, want) in [
        ("/a/./b/../c", "/a/c"),
        ("/a/b/", "/a/b"),
        ("/..", "/"),
        ("/a/../..", "/"),
    ] {
        assert_eq!(normalize(Path::new(p)), Path::new(want), "{p}");
    }
}

#[test]
fn the_network_table_becomes_the_stacks_policy() {
    use agentvm_net::{Mode, Policy};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let ws = Ws::new();
    let fwd = |host, guest_port| agentvm_net::Forward {
        host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, host),
        guest_port,
    };
    #[rustfmt::skip]
    let cases: &[(&str, Policy)] = &[
        // No [network]: filtered, nothing allowed, the default ports.
        ("", Policy { mode: Mode::Filtered, ..Policy::default() }),
        ("[network]\nmode = \"off\"\n", Policy::new(Mode::Off)),
        ("[network]\nmode = \"open\"\nports = [22]\n",
         Policy { mode: Mode::Open, ports: vec![22], ..Policy::default() }),
        ("[network]\ndomains = [\"GitHub.com.\", \"crates.io\"]\nports = [443, 22, 443]\n",
         Policy {
             mode: Mode::Filtered,
             domains: vec!["github.com".into(), "crates.io".into()],
             ports: vec![443, 22],
             ..Policy::default()
         }),
        ("[network]\nforwards = [\"8080:80\", \"2222:22\"]\n",
         Policy {
             mode: Mode::Filtered,
             forwards: vec![fwd(8080, 80), fwd(2222, 22)],
             ..Policy::default()
         }),
        // Pins: the name lowercased, the address as written (the stack
        // hands the guest 198.18.0.1 for the host's 127.0.0.1).
        ("[network]\nports = [8080]\nhosts = { \"One.Test\" = \"127.0.0.1\", \"db.test\" = \"192.0.2.7\" }\n",
         Policy {
             mode: Mode::Filtered,
             ports: vec![8080],
             hosts: BTreeMap::from([
                 ("one.test".into(), Ipv4Addr::LOCALHOST),
                 ("db.test".into(), Ipv4Addr::new(192, 0, 2, 7)),
             ]),
             ..Policy::default()
         }),
    ];
    for (text, want) in cases {
        assert_eq!(&ws.ok(text).network.policy(), want, "{text}");
    }
    let p = ws
        .ok("[network]\nhosts = { \"one.test\" = \"127.0.0.1\" }\n")
        .network
        .policy();
    assert!(p.allows_name("one.test") && !p.allows_name("two.test"));
    assert!(!p.allows_name("sub.one.test"), "a pin is exact");
    assert_eq!(p.pinned("one.test"), Some(Ipv4Addr::new(198, 18, 0, 1)));
    // The configuration accepts a pin exactly when the stack does.
    for (name, ip) in [
        ("a.test", "127.0.0.1"),
        ("A_B.test.", "127.0.255.254"),
        ("x", "10.0.0.1"),
        ("x", "127.1.0.1"),
        ("x", "127.255.0.1"),
        ("x", "0.0.0.0"),
        ("x", "255.255.255.255"),
        ("x", "239.1.2.3"),
        ("x", "10.0.2.2"),
        ("a..b", "127.0.0.1"),
        ("x", "::1"),
    ] {
        let text = format!("[network.hosts]\n{name:?} = {ip:?}\n");
        let stack = agentvm_net::policy::parse_host_pin(&format!("{name}={ip}"));
        match (ws.load(&text), stack) {
            (Ok(c), Ok((n, a))) => assert_eq!(c.network.hosts, BTreeMap::from([(n, a)])),
            (Err(_), Err(_)) => {}
            (mine, stack) => panic!("{text}: config {mine:?}, stack {stack:?}"),
        }
    }
    // Plugins' domains come first, the user's after them.
    let c = ws.ok("plugins = [\"claude-code\"]\n[network]\ndomains = [\"mine.test\"]\n");
    let p = c.network.policy();
    assert_eq!(p.mode, Mode::Filtered);
    assert_eq!(p.domains.last().map(String::as_str), Some("mine.test"));
    assert!(p.domains.len() > 1, "{:?}", p.domains);
    assert!(p.allows_name("api.anthropic.com"), "{:?}", p.domains);
    // Every domain the configuration accepts, the policy accepts as is.
    for d in &p.domains {
        assert_eq!(&agentvm_net::policy::normalize_name(d).unwrap(), d);
    }
}

#[test]
fn agent_homes_are_per_workspace_and_seeded_with_credentials_only() {
    let ws = Ws::new();
    let host_claude = ws.home.join(".claude");
    std::fs::create_dir_all(&host_claude).unwrap();
    std::fs::write(host_claude.join(".credentials.json"), "{\"token\":1}").unwrap();
    std::fs::write(host_claude.join("settings.json"), "{\"hooks\":{}}").unwrap();
    let c = ws.ok("plugins = [\"claude-code\"]");
    let m = &c.mounts[1];
    m.prepare_source().unwrap();
    assert_eq!(
        std::fs::read_to_string(m.source.join(".credentials.json")).unwrap(),
        "{\"token\":1}"
    );
    assert!(!m.source.join("settings.json").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m.source.join(".credentials.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Seeded once: what the guest wrote is never overwritten, and the
    // host's own directory is never written.
    std::fs::write(m.source.join(".credentials.json"), "guest").unwrap();
    m.prepare_source().unwrap();
    assert_eq!(
        std::fs::read_to_string(m.source.join(".credentials.json")).unwrap(),
        "guest"
    );
    assert_eq!(
        std::fs::read_to_string(host_claude.join(".credentials.json")).unwrap(),
        "{\"token\":1}"
    );
    // A symlink in the host's directory is not followed.
    let other = Ws::new();
    let link_dir = other.home.join(".claude");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", link_dir.join(".credentials.json")).unwrap();
    let c = other.ok("plugins = [\"claude-code\"]");
    c.mounts[1].prepare_source().unwrap();
    assert!(!c.mounts[1].source.join(".credentials.json").exists());
}

#[test]
fn agent_home_and_git_hooks_keys() {
    let ws = Ws::new();
    let c = ws.ok("agent_home = \"~/agents\"\ngit_hooks = \"allow\"\nplugins = [\"codex\"]");
    assert_eq!(
        c.agent_home.as_deref(),
        Some(ws.home.join("agents").as_path())
    );
    assert_eq!(c.mounts[1].source, ws.home.join("agents/.codex"));
    assert_eq!(c.git_hooks, GitHooks::Allow);
    assert_eq!(ws.ok("").git_hooks, GitHooks::Guard);
    let e = ws.err("git_hooks = \"sometimes\"");
    assert!(e.message.contains("`git_hooks` must be \"guard\""), "{e}");
    let e = ws.err("agent_home = \".\"");
    assert!(e.message.contains("holds the workspace"), "{e}");
    ws.write(".agentvm/p.toml", "git_hooks = \"allow\"\n");
    let e = ws.err("plugins = [\"./p.toml\"]");
    assert!(e.message.contains("a plugin cannot set `git_hooks`"), "{e}");
}

#[test]
fn the_seccomp_key_takes_a_level_and_only_in_the_workspace() {
    let ws = Ws::new();
    assert_eq!(ws.ok("").seccomp, agentvm_vmm::SeccompLevel::Kill);
    for level in ["kill", "log", "off"] {
        let c = ws.ok(&format!("seccomp = \"{level}\""));
        assert_eq!(c.seccomp.as_str(), level);
    }
    let e = ws.err("seccomp = \"strict\"");
    assert!(e.message.contains("`seccomp` must be \"kill\""), "{e}");
    assert_eq!((e.line, e.column), (1, 11), "{e}");
    ws.write(".agentvm/p.toml", "seccomp = \"off\"\n");
    let e = ws.err("plugins = [\"./p.toml\"]");
    assert!(e.message.contains("a plugin cannot set `seccomp`"), "{e}");
}

#[test]
fn the_ssh_table_forwards_the_agent_only_from_the_workspace() {
    let ws = Ws::new();
    assert_eq!(ws.ok("").ssh, crate::config::SshConfig::default());
    let key = "SHA256:vJEOMYi0KD/7DnFpBKm8W86L+2eE5J+s0tkOeF1rh1w";
    let c = ws.ok(&format!(
        "[ssh]\nagent = true\nkeys = [\"{key}\", \"{key}\"]\nhosts = [\"github.com\", \"[git.example.com]:2222\"]"
    ));
    assert!(c.ssh.agent);
    assert_eq!(c.ssh.keys, [key]);
    assert_eq!(c.ssh.hosts, ["[git.example.com]:2222", "github.com"]);
    assert!(ws.ok("[ssh]\nagent = true").ssh.keys.is_empty());
    for (text, message, line, column) in [
        (
            "[ssh]\nagent = true\nkeys = [\"MD5:aa:bb\"]",
            "is not a key fingerprint",
            3,
            9,
        ),
        (
            "[ssh]\nagent = true\nkeys = [\"SHA256:short\"]",
            "is not a key fingerprint",
            3,
            9,
        ),
        (
            "[ssh]\nagent = true\nhosts = [\"-oProxyCommand=x\"]",
            "is not a host name",
            3,
            10,
        ),
        (
            "[ssh]\nagent = true\nhosts = [\"a b\"]",
            "is not a host name",
            3,
            10,
        ),
        (
            "[ssh]\nkeys = []\nhosts = [\"github.com\"]",
            "add `agent = true`",
            1,
            1,
        ),
        ("[ssh]\nagnet = true", "unknown key `ssh.agnet`", 2, 1),
    ] {
        let e = ws.err(text);
        assert!(e.message.contains(message), "{text}: {e}");
        assert_eq!((e.line, e.column), (line, column), "{text}: {e}");
    }
    // A plugin (a file the user did not write) cannot hand out the keys.
    ws.write(".agentvm/p.toml", "[ssh]\nagent = true\n");
    let e = ws.err("plugins = [\"./p.toml\"]");
    assert!(e.message.contains("a plugin cannot set `[ssh]`"), "{e}");
}

#[test]
fn package_lists_merge_and_refuse_what_is_not_a_name() {
    let ws = Ws::new();
    ws.write(
        ".agentvm/p.toml",
        "packages = [\"jq\", \"make\"]\nnpm = [\"typescript@5.6\"]\n",
    );
    let c = ws.ok("plugins = [\"codex\", \"./p.toml\"]\npackages = [\"make\", \"g++\", \"vim=2:9.0.1378-2\"]\nnpm = [\"@scope/x\"]");
    assert_eq!(c.packages, ["jq", "make", "g++", "vim=2:9.0.1378-2"]);
    assert_eq!(c.npm, ["@openai/codex", "typescript@5.6", "@scope/x"]);
    for bad in [
        "-o",
        "--allow-unauthenticated",
        "Jq",
        "a b",
        "x",
        "jq=",
        "../x",
    ] {
        let e = ws.err(&format!("packages = [{bad:?}]"));
        assert!(
            e.message.contains("is not a Debian package name"),
            "{bad}: {e}"
        );
    }
    for bad in [
        "--ignore-scripts",
        "./local",
        "git+https://x/y",
        "https://x/y.tgz",
        "@scope",
        "a b",
        "x@1;rm",
        "file:../x",
        "",
    ] {
        let e = ws.err(&format!("npm = [{bad:?}]"));
        assert!(
            e.message.contains("is not an npm package name"),
            "{bad}: {e}"
        );
    }
    for good in [
        "typescript",
        "@anthropic-ai/claude-code@2.1.3",
        "left-pad@^1.3.0",
        "x@latest",
    ] {
        ws.ok(&format!("npm = [{good:?}]"));
    }
}

#[test]
fn agent_state_is_mounted_in_the_guest_users_home() {
    let ws = Ws::new();
    let host = Host {
        guest_user: Some(crate::paths::GuestUser {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
        }),
        ..ws.host()
    };
    let src = Source::new(&config_path(&ws.dir), "plugins = [\"claude-code\"]".into());
    let c = resolve(&ws.dir, Some(&src), &host).unwrap();
    assert_eq!(c.mounts[1].target, Path::new("/home/alice/.claude"));
    assert_eq!(
        c.env["CLAUDE_CONFIG_DIR"].value,
        EnvValue::literal("/home/alice/.claude")
    );
    // Run as root, the guest's commands are root's.
    let c = ws.ok("plugins = [\"claude-code\"]");
    assert_eq!(c.mounts[1].target, Path::new("/root/.claude"));
}

#[test]
fn files_are_read_with_targets_and_modes_checked() {
    let ws = Ws::new();
    let c = ws.ok(
        "[[files]]\nsource = \"~/.gitconfig\"\ntarget = \"~/.gitconfig\"\n\n\
         [[files]]\nsource = \"/etc/npmrc\"\ntarget = \"/etc/npmrc\"\nmode = \"0600\"\n",
    );
    assert_eq!(
        c.files,
        [
            CopiedFile {
                source: ws.home.join(".gitconfig"),
                target: "~/.gitconfig".into(),
                mode: None,
                origin: Origin::File {
                    file: config_path(&ws.dir).display().to_string(),
                    line: 1,
                },
            },
            CopiedFile {
                source: "/etc/npmrc".into(),
                target: "/etc/npmrc".into(),
                mode: Some(0o600),
                origin: Origin::File {
                    file: config_path(&ws.dir).display().to_string(),
                    line: 5,
                },
            },
        ]
    );
    // The rendered configuration parses back to the same files.
    let text = render::render(&c, &|_| None);
    assert!(text.contains("[[files]]"), "{text}");
    let again = ws.ok(&text);
    assert_eq!(again.files.len(), 2);
    assert_eq!(again.files[1].mode, Some(0o600));

    let malicious = [
        ("relative/x", "neither absolute nor under ~/"),
        ("~/../../etc/shadow", ". or .."),
        ("/etc/../etc/sudoers", ". or .."),
        ("~", "neither absolute nor under ~/"),
        ("~root/.bashrc", "neither absolute nor under ~/"),
        ("/", "names no file"),
        ("/etc/", "empty component"),
    ];
    for (target, why) in malicious {
        let text = format!("[[files]]\nsource = \"~/x\"\ntarget = {target:?}\n");
        let e = ws.err(&text);
        assert_eq!((e.line, e.column), (3, 10), "{target}: {e}");
        assert!(
            e.message.contains("`files[0].target`") && e.message.contains(why),
            "{e}"
        );
    }
    for (mode, why) in [
        ("4755", "setuid"),
        ("02644", "setuid"),
        ("0o1777", "setuid"),
        ("rw-r--r--", "not an octal mode"),
        ("0999", "not an octal mode"),
        ("", "not an octal mode"),
    ] {
        let text = format!("[[files]]\nsource = \"~/x\"\ntarget = \"/x\"\nmode = {mode:?}\n");
        let e = ws.err(&text);
        assert!(
            e.message.contains("`files[0].mode`") && e.message.contains(why),
            "{mode}: {e}"
        );
    }
    let twice = "[[files]]\nsource = \"~/a\"\ntarget = \"/x\"\n[[files]]\nsource = \"~/b\"\ntarget = \"/x\"\n";
    assert!(ws
        .err(twice)
        .message
        .contains("already the target of `files[0]`"));
    let unknown = "[[files]]\nsource = \"~/a\"\ntarget = \"/x\"\nowner = \"root\"\n";
    assert!(ws.err(unknown).message.contains("owner"));
    let many: String = (0..=MAX_FILES)
        .map(|i| format!("[[files]]\nsource = \"~/a\"\ntarget = \"/f{i}\"\n"))
        .collect();
    assert!(ws.err(&many).message.contains("at most 64 files"));
}
