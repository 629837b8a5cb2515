//! The workspace configuration loader: any text as
//! `.agentvm/config.toml`, resolved (plugins merged, values checked,
//! paths made absolute) and rendered as `agentvm config` shows it. The
//! CLI's `config` module and its `paths` helper are compiled in as they
//! are (the CLI has no library target).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use agentvm_net::policy::normalize_name;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/cli/src/config/mod.rs"]
mod config;
#[allow(dead_code)]
#[path = "../../crates/cli/src/paths.rs"]
mod paths;

use config::load::Source;
use config::{config_path, render::render, resolve, Host};

/// A workspace with a plugin file beside it, and a home, made once.
struct Ws {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    host: Host,
}

fn workspace() -> &'static Ws {
    static WS: OnceLock<Ws> = OnceLock::new();
    WS.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().join("ws");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(dir.join(".agentvm")).expect("the workspace");
        std::fs::create_dir_all(home.join("cache")).expect("the home");
        std::fs::write(
            dir.join(".agentvm/extra.toml"),
            "[network]\ndomains = [\"plugin.test\"]\n[env]\nA = \"b\"\n",
        )
        .expect("a plugin file");
        let host = Host {
            home: Some(home),
            cpus: 4,
            memory_mib: 8192,
            data_dir: Some(tmp.path().join("data")),
            guest_user: None,
        };
        Ws {
            _tmp: tmp,
            dir,
            host,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ws = workspace();
    let src = Source::new(&config_path(&ws.dir), text.to_string());
    if let Ok(cfg) = resolve(&ws.dir, Some(&src), &ws.host) {
        let shown = render(&cfg, &|_| None);
        assert!(!shown.is_empty());
        // Every name that reaches the network stack is one it accepts as is.
        let policy = cfg.network.policy();
        for name in policy.domains.iter().chain(policy.hosts.keys()) {
            assert_eq!(normalize_name(name).as_deref(), Ok(name.as_str()));
        }
        // Every copied file is one the guest agent's frame accepts.
        for f in &cfg.files {
            let copy = agentvm_protocol::frame::FileCopy {
                target: f.target.as_bytes().to_vec(),
                mode: f.mode.unwrap_or(0o644),
                content: Vec::new(),
            };
            assert_eq!(agentvm_protocol::frame::check_file(&copy), Ok(()));
        }
    }
});
