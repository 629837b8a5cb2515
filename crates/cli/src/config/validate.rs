//! Checks one parsed file's values and resolves its paths, into a
//! [`Fragment`]. Every error names the file, line, column and key path.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use agentvm_net::policy::{normalize_name, parse_host_pin};
use agentvm_vmm::config::MAX_VCPUS;
use toml::Spanned;

use super::env::{is_var_name, EnvEntry, EnvValue};
use super::load::{ConfigError, Source};
use super::merge::Fragment;
use super::schema::{self, ConfigFile, SpannedList};
use super::{
    normalize, Forward, Mount, NetworkMode, Origin, MAX_HOTPLUG_SLOTS, MIN_MEMORY_MIB,
    MIN_NET_MEMORY_MIB,
};

/// The longest VM name.
pub const MAX_NAME: usize = 63;

/// What relative and `~` paths are resolved against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The workspace (absolute): mount sources are relative to it.
    pub workspace: &'a Path,
    /// `$HOME`, for `~`.
    pub home: Option<&'a Path>,
    /// The workspace's agent home, where built-in plugins keep their state.
    pub agent_home: Option<&'a Path>,
    /// The home of the guest's user, where plugins mount that state.
    pub guest_home: &'a Path,
}

type Result<T> = std::result::Result<T, ConfigError>;

/// Checks the `name` key.
pub fn name(name: &Spanned<String>, src: &Source) -> Result<String> {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.len() <= MAX_NAME
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if !ok {
        return Err(src.error(
            name.span(),
            format!(
                "`name` {n:?} is not a VM name: use 1 to {MAX_NAME} lowercase letters, digits \
                 and '-', not starting or ending with '-' (e.g. {:?})",
                super::sanitize_name(n)
            ),
        ));
    }
    Ok(n.clone())
}

/// Checks everything but `name` and `plugins` (which only the workspace's
/// own file may set, and which [`super::resolve`] handles).
pub fn fragment(file: &ConfigFile, src: &Source, ctx: &Context<'_>) -> Result<Fragment> {
    let mut out = Fragment::default();
    let origin = |span: std::ops::Range<usize>| Origin::File {
        file: src.shown.clone(),
        line: src.line(span.start),
    };
    if let Some(r) = &file.resources {
        out.persistent_root = r.persistent_root;
        if let Some(v) = &r.vcpus {
            let n = *v.get_ref();
            let vcpus = u8::try_from(n)
                .ok()
                .filter(|&n| (1..=MAX_VCPUS).contains(&n));
            out.vcpus = Some(vcpus.ok_or_else(|| {
                src.error(
                    v.span(),
                    format!("`resources.vcpus` must be between 1 and {MAX_VCPUS}, not {n}"),
                )
            })?);
        }
        for (key, value, min, max, unit, slot) in [
            (
                "log_max_mib",
                &r.log_max_mib,
                1,
                1 << 20,
                " (MiB)",
                &mut out.log_max_mib,
            ),
            (
                "net_memory_mib",
                &r.net_memory_mib,
                MIN_NET_MEMORY_MIB,
                1 << 20,
                " (MiB)",
                &mut out.net_memory_mib,
            ),
            (
                "hotplug_slots",
                &r.hotplug_slots,
                0,
                u64::from(MAX_HOTPLUG_SLOTS),
                "",
                &mut out.hotplug_slots,
            ),
        ] {
            if let Some(v) = value {
                let n = *v.get_ref();
                *slot = Some(
                    u64::try_from(n)
                        .ok()
                        .filter(|n| (min..=max).contains(n))
                        .ok_or_else(|| {
                            src.error(
                                v.span(),
                                format!(
                                    "`resources.{key}` must be between {min} and {max}{unit}, \
                                     not {n}"
                                ),
                            )
                        })?,
                );
            }
        }
        if let Some(m) = &r.memory_mib {
            let n = *m.get_ref();
            out.memory_mib = Some(
                u64::try_from(n)
                    .ok()
                    .filter(|&n| n >= MIN_MEMORY_MIB)
                    .ok_or_else(|| {
                        src.error(
                            m.span(),
                            format!(
                                "`resources.memory_mib` must be at least {MIN_MEMORY_MIB} \
                                 (MiB), not {n}"
                            ),
                        )
                    })?,
            );
        }
    }
    for (i, m) in file.mounts.iter().flatten().enumerate() {
        out.mounts.push(mount(m, i, src, ctx)?);
    }
    for (i, f) in file.files.iter().flatten().enumerate() {
        if i >= super::MAX_FILES {
            return Err(src.error(
                f.span(),
                format!("`files`: at most {} files can be copied", super::MAX_FILES),
            ));
        }
        let copied = copied_file(f, i, src, ctx)?;
        if let Some(j) = out.files.iter().position(|o| o.target == copied.target) {
            return Err(src.error(
                f.get_ref().target.span(),
                format!(
                    "`files[{i}].target` {:?} is already the target of `files[{j}]`",
                    copied.target
                ),
            ));
        }
        out.files.push(copied);
    }
    if let Some(n) = &file.network {
        network(n, src, &mut out)?;
    }
    for (key, value) in file.env.iter().flatten() {
        if !is_var_name(key.get_ref()) {
            return Err(src.error(
                key.span(),
                format!(
                    "`env.{}` is not an environment variable name (letters, digits and _, \
                     not starting with a digit)",
                    super::load::toml_key(key.get_ref())
                ),
            ));
        }
        let parsed = EnvValue::parse(value.get_ref())
            .map_err(|why| src.error(value.span(), format!("`env.{}`: {why}", key.get_ref())))?;
        out.env.insert(
            key.get_ref().clone(),
            EnvEntry {
                value: parsed,
                origin: origin(key.span()),
            },
        );
    }
    if let Some(table) = &file.secrets {
        out.secrets = super::secrets::validate(table, file.env.as_ref(), src)?;
    }
    if let Some(p) = file.network.as_ref().and_then(|n| n.upstream_ca.as_ref()) {
        out.upstream_ca = Some(upstream_ca(p, src, ctx)?);
    }
    out.scripts = commands(file.scripts.as_ref(), "scripts", src)?;
    out.packages = names(file.packages.as_ref(), "packages", src, debian_package)?;
    out.npm = names(file.npm.as_ref(), "npm", src, npm_package)?;
    if let Some(h) = &file.hooks {
        out.hooks.pre_up = commands(h.pre_up.as_ref(), "hooks.pre_up", src)?;
        out.hooks.post_up = commands(h.post_up.as_ref(), "hooks.post_up", src)?;
        out.hooks.pre_down = commands(h.pre_down.as_ref(), "hooks.pre_down", src)?;
        out.hooks.post_down = commands(h.post_down.as_ref(), "hooks.post_down", src)?;
    }
    // Boot files are relative to the file that names them.
    let file_relative = |p: &Option<Spanned<String>>, key: &str| -> Result<Option<PathBuf>> {
        p.as_ref()
            .map(|p| host_path(p, key, src.dir(), src, ctx))
            .transpose()
    };
    out.kernel = file_relative(&file.kernel, "kernel")?;
    out.initrd = file_relative(&file.initrd, "initrd")?;
    out.image = file_relative(&file.image, "image")?;
    Ok(out)
}

fn mount(m: &Spanned<schema::Mount>, i: usize, src: &Source, ctx: &Context<'_>) -> Result<Mount> {
    let inner = m.get_ref();
    let source = host_path(
        &inner.source,
        &format!("mounts[{i}].source"),
        ctx.workspace,
        src,
        ctx,
    )?;
    let t = inner.target.get_ref();
    if !t.starts_with('/') {
        return Err(src.error(
            inner.target.span(),
            format!("`mounts[{i}].target` {t:?} must be an absolute path in the guest"),
        ));
    }
    let target = normalize(Path::new(t));
    if target == Path::new("/") {
        return Err(src.error(
            inner.target.span(),
            format!("`mounts[{i}].target` cannot be the guest's root directory"),
        ));
    }
    Ok(Mount {
        source,
        target,
        read_only: inner.read_only,
        create: inner.create,
        origin: Origin::File {
            file: src.shown.clone(),
            line: src.line(m.span().start),
        },
        seed: None,
    })
}

/// One `[[files]]` entry: a host path (as for mount sources), a guest
/// target that is absolute or `~/…` without `.` or `..` components (the
/// guest agent checks it again), and an octal mode without setuid, setgid
/// or sticky bits. The source is read at `up`, not here.
fn copied_file(
    f: &Spanned<schema::File>,
    i: usize,
    src: &Source,
    ctx: &Context<'_>,
) -> Result<super::CopiedFile> {
    let inner = f.get_ref();
    let source = host_path(
        &inner.source,
        &format!("files[{i}].source"),
        ctx.workspace,
        src,
        ctx,
    )?;
    let t = inner.target.get_ref();
    agentvm_protocol::frame::check_target(t.as_bytes()).map_err(|why| {
        src.error(
            inner.target.span(),
            format!(
                "`files[{i}].target` {t:?}: {why}; write an absolute guest path or ~/… (in the \
                 guest user's home), without . or .. components"
            ),
        )
    })?;
    let mode = inner
        .mode
        .as_ref()
        .map(|m| {
            parse_mode(m.get_ref())
                .map_err(|why| src.error(m.span(), format!("`files[{i}].mode`: {why}")))
        })
        .transpose()?;
    Ok(super::CopiedFile {
        source,
        target: t.clone(),
        mode,
        origin: Origin::File {
            file: src.shown.clone(),
            line: src.line(f.span().start),
        },
    })
}

/// An octal permission mode (`"0644"`, `"644"`, `"0o644"`): at most 0o777.
pub fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = (!digits.is_empty() && digits.len() <= 6)
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .ok_or_else(|| format!("{s:?} is not an octal mode such as \"0644\""))?;
    if mode & !0o777 != 0 {
        return Err(format!(
            "{s:?} has setuid, setgid or sticky bits, which copied files never get; use at \
             most \"0777\""
        ));
    }
    Ok(mode)
}

/// Checks `agent_home`: a host directory (`~` and relative paths as for
/// mount sources), never the workspace or a directory holding it, which
/// would put the agent's state where the workspace's own files are.
pub fn agent_home(
    p: &Spanned<String>,
    workspace: &Path,
    home: Option<&Path>,
    src: &Source,
) -> Result<PathBuf> {
    let s = p.get_ref();
    if s.is_empty() {
        return Err(src.error(p.span(), "`agent_home` is empty"));
    }
    let path = expand_home(s, workspace, home)
        .map_err(|why| src.error(p.span(), format!("`agent_home`: {why}")))?;
    if workspace.starts_with(&path) {
        return Err(src.error(
            p.span(),
            format!(
                "`agent_home` {} holds the workspace; give the agents a directory of their own",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// Checks `git_hooks`: `guard` or `allow`.
pub fn git_hooks(g: &Spanned<String>, src: &Source) -> Result<super::GitHooks> {
    match g.get_ref().as_str() {
        "guard" => Ok(super::GitHooks::Guard),
        "allow" => Ok(super::GitHooks::Allow),
        other => Err(src.error(
            g.span(),
            format!(
                "`git_hooks` must be \"guard\" (undo hooks and executable git settings the \
                 guest writes) or \"allow\", not {other:?}"
            ),
        )),
    }
}

/// Checks `seccomp`: `kill`, `log` or `off`.
pub fn seccomp(s: &Spanned<String>, src: &Source) -> Result<agentvm_vmm::SeccompLevel> {
    s.get_ref().parse().map_err(|_| {
        src.error(
            s.span(),
            format!(
                "`seccomp` must be \"kill\" (an unexpected system call ends the VM), \"log\" \
                 (it is logged and allowed) or \"off\", not {:?}",
                s.get_ref()
            ),
        )
    })
}

/// Reads `network.upstream_ca` (relative to the workspace): a PEM file with
/// at least one certificate, at most [`super::MAX_UPSTREAM_CA_BYTES`].
fn upstream_ca(p: &Spanned<String>, src: &Source, ctx: &Context<'_>) -> Result<super::UpstreamCa> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let key = "network.upstream_ca";
    let path = host_path(p, key, ctx.workspace, src, ctx)?;
    let mut pem = String::new();
    // Opened without blocking and checked to be a regular file before a
    // byte is read: the workspace is the guest's to write, and a FIFO or a
    // device there must not hang `up` (or `config`) before it shows what
    // needs approval.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&path)
        .and_then(|f| {
            if !f.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            f.take(super::MAX_UPSTREAM_CA_BYTES + 1)
                .read_to_string(&mut pem)
        })
        .map_err(|e| {
            src.error(
                p.span(),
                format!("`{key}`: cannot read {}: {e}", path.display()),
            )
        })?;
    if pem.len() as u64 > super::MAX_UPSTREAM_CA_BYTES {
        return Err(src.error(
            p.span(),
            format!("`{key}`: {} is larger than 1 MiB", path.display()),
        ));
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(src.error(
            p.span(),
            format!(
                "`{key}`: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(super::UpstreamCa { path, pem })
}

/// Checks `[ssh]`: fingerprints in OpenSSH's `SHA256:` form, host names
/// as `ssh` takes them, and neither without `agent = true`.
pub fn ssh(s: &Spanned<super::schema::Ssh>, src: &Source) -> Result<super::SshConfig> {
    let table = s.get_ref();
    let agent = table.agent.unwrap_or(false);
    let mut keys = Vec::new();
    for key in table.keys.iter().flatten() {
        if !is_fingerprint(key.get_ref()) {
            return Err(src.error(
                key.span(),
                format!(
                    "{:?} is not a key fingerprint: use the `SHA256:…` form `ssh-add -l` prints",
                    key.get_ref()
                ),
            ));
        }
        keys.push(key.get_ref().clone());
    }
    let mut hosts = Vec::new();
    for host in table.hosts.iter().flatten() {
        if !is_ssh_host(host.get_ref()) {
            return Err(src.error(
                host.span(),
                format!(
                    "{:?} is not a host name as known_hosts lists it (`github.com`, \
                     `[git.example.com]:2222`)",
                    host.get_ref()
                ),
            ));
        }
        hosts.push(host.get_ref().clone());
    }
    if !agent && (!keys.is_empty() || !hosts.is_empty()) {
        return Err(src.error(
            s.span(),
            "`[ssh]` lists keys or hosts but does not forward the agent: add `agent = true`",
        ));
    }
    keys.sort();
    keys.dedup();
    hosts.sort();
    hosts.dedup();
    Ok(super::SshConfig { agent, keys, hosts })
}

/// `SHA256:` and 43 characters of base64 (a SHA-256 digest, unpadded).
fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    })
}

/// A host name, address, or `[name]:port`, as known_hosts spells them
/// (never starting with `-`: it is passed to `ssh-keygen -F`).
fn is_ssh_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
}

/// A host path: `~` is `$HOME`, relative paths are relative to `base`.
fn host_path(
    p: &Spanned<String>,
    key: &str,
    base: &Path,
    src: &Source,
    ctx: &Context<'_>,
) -> Result<PathBuf> {
    let s = p.get_ref();
    if s.is_empty() {
        return Err(src.error(p.span(), format!("`{key}` is empty")));
    }
    expand_home(s, base, ctx.home).map_err(|why| src.error(p.span(), format!("`{key}`: {why}")))
}

/// `~` and `~/…` under `home`, other relative paths under `base`.
pub fn expand_home(
    s: &str,
    base: &Path,
    home: Option<&Path>,
) -> std::result::Result<PathBuf, String> {
    let path = if s == "~" || s.starts_with("~/") {
        let home = home.ok_or_else(|| format!("{s:?} starts with ~, but HOME is not set"))?;
        home.join(s.trim_start_matches('~').trim_start_matches('/'))
    } else if s.starts_with('~') {
        return Err(format!(
            "{s:?}: only ~ (your home) is understood, not ~user; write the absolute path"
        ));
    } else {
        base.join(s)
    };
    Ok(normalize(&path))
}

fn network(n: &schema::Network, src: &Source, out: &mut Fragment) -> Result<()> {
    if let Some(mode) = &n.mode {
        out.mode = Some(NetworkMode::parse(mode.get_ref()).ok_or_else(|| {
            let all: Vec<&str> = NetworkMode::ALL.iter().map(|m| m.as_str()).collect();
            src.error(
                mode.span(),
                format!(
                    "`network.mode` {:?} is not a mode (expected one of {})",
                    mode.get_ref(),
                    all.join(", ")
                ),
            )
        })?);
    }
    for (i, d) in n.domains.iter().flatten().enumerate() {
        let domain = check_domain(d.get_ref())
            .map_err(|why| src.error(d.span(), format!("`network.domains[{i}]`: {why}")))?;
        if !out.domains.contains(&domain) {
            out.domains.push(domain);
        }
    }
    if let Some(ports) = &n.ports {
        let mut list = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let port = port(*p.get_ref()).ok_or_else(|| {
                src.error(
                    p.span(),
                    format!(
                        "`network.ports[{i}]`: {} is not a port (1 to 65535)",
                        p.get_ref()
                    ),
                )
            })?;
            if !list.contains(&port) {
                list.push(port);
            }
        }
        out.ports = Some(list);
    }
    for (name, addr) in n.hosts.iter().flatten() {
        let key = format!("network.hosts.{}", super::load::toml_key(name.get_ref()));
        let (name, ip) = host_pin(name, addr, &key, src)?;
        match out.hosts.get(&name) {
            Some(&other) if other != ip => {
                return Err(src.error(
                    addr.span(),
                    format!("`{key}`: {name} is already pinned to {other}"),
                ))
            }
            _ => {
                out.hosts.insert(name, ip);
            }
        }
    }
    for (i, f) in n.forwards.iter().flatten().enumerate() {
        let key = format!("network.forwards[{i}]");
        let fwd = parse_forward(f.get_ref())
            .map_err(|why| src.error(f.span(), format!("`{key}`: {why}")))?;
        match out.forwards.iter().find(|o| o.host == fwd.host) {
            Some(o) if o.guest == fwd.guest => {}
            Some(o) => {
                return Err(src.error(
                    f.span(),
                    format!(
                        "`{key}`: host port {} is already forwarded to guest port {}",
                        fwd.host, o.guest
                    ),
                ))
            }
            None => out.forwards.push(fwd),
        }
    }
    Ok(())
}

/// One `network.hosts` entry: the name (lowercased) and its IPv4 address,
/// by the network stack's own rules ([`parse_host_pin`]).
fn host_pin(
    name: &Spanned<String>,
    addr: &Spanned<String>,
    key: &str,
    src: &Source,
) -> Result<(String, Ipv4Addr)> {
    let n = name.get_ref();
    let all_digits = |l: &str| l.split('.').all(|x| x.bytes().all(|b| b.is_ascii_digit()));
    let lower = normalize_name(n)
        .ok()
        .filter(|l| !all_digits(l))
        .ok_or_else(|| {
            src.error(
                name.span(),
                format!(
                    "`{key}`: {n:?} is not a host name (a pin answers exactly this name, \
                     e.g. \"api.test\")"
                ),
            )
        })?;
    let a = addr.get_ref();
    if a.parse::<Ipv4Addr>().is_err() {
        return Err(src.error(
            addr.span(),
            format!("`{key}`: {a:?} is not an IPv4 address (e.g. \"127.0.0.1\")"),
        ));
    }
    parse_host_pin(&format!("{lower}={a}"))
        .map_err(|e| src.error(addr.span(), format!("`{key}`: {e}")))
}

fn port(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// `"HOST:GUEST"`, both ports 1 to 65535.
pub fn parse_forward(s: &str) -> std::result::Result<Forward, String> {
    let usage = "expected \"HOST:GUEST\", e.g. \"8080:80\" (host port 8080 to guest port 80)";
    let Some((h, g)) = s.split_once(':') else {
        return Err(format!("{s:?} is not a forward: {usage}"));
    };
    let parse = |p: &str| {
        p.parse::<i64>()
            .ok()
            .and_then(port)
            .ok_or_else(|| format!("{p:?} in {s:?} is not a port (1 to 65535): {usage}"))
    };
    Ok(Forward {
        host: parse(h)?,
        guest: parse(g)?,
    })
}

/// A host name for the allowlist, lowercased.
pub fn check_domain(d: &str) -> std::result::Result<String, String> {
    let lower = d.trim_end_matches('.').to_ascii_lowercase();
    if lower.contains("://") || lower.contains('/') {
        return Err(format!(
            "{d:?} is not a host name: write the name only, e.g. \"github.com\""
        ));
    }
    if let Some(rest) = lower.strip_prefix("*.") {
        return Err(format!(
            "{d:?}: a name covers its subdomains already; write {rest:?}"
        ));
    }
    if lower.contains(':') {
        return Err(format!(
            "{d:?}: write the name only; allowed ports go in `network.ports`"
        ));
    }
    let labels: Vec<&str> = lower.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    };
    if lower.is_empty() || lower.len() > 253 || !labels.iter().all(label_ok) {
        return Err(format!("{d:?} is not a host name"));
    }
    if labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Err(format!(
            "{d:?} is an IP address; the filter allows names (use mode = \"open\" to reach \
             addresses directly)"
        ));
    }
    Ok(lower)
}

/// A list of shell commands; none may be empty.
/// A list of package names, each checked by `check` (which says what is
/// wrong), duplicates dropped.
fn names(
    list: Option<&SpannedList>,
    key: &str,
    src: &Source,
    check: fn(&str) -> std::result::Result<(), &'static str>,
) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (i, p) in list.into_iter().flatten().enumerate() {
        check(p.get_ref())
            .map_err(|why| src.error(p.span(), format!("`{key}[{i}]` {:?} {why}", p.get_ref())))?;
        if !out.contains(p.get_ref()) {
            out.push(p.get_ref().clone());
        }
    }
    Ok(out)
}

/// A Debian package name (Debian policy 5.6.1), optionally `=VERSION`:
/// never an option to apt.
pub fn debian_package(p: &str) -> std::result::Result<(), &'static str> {
    let (name, version) = p.split_once('=').unwrap_or((p, ""));
    let name_ok = name.len() >= 2
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let version_ok = version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c));
    if name_ok && version_ok && !(p.contains('=') && version.is_empty()) {
        Ok(())
    } else {
        Err("is not a Debian package name (lowercase letters, digits, + - ., then =VERSION if pinned)")
    }
}

/// An npm package: `name` or `@scope/name`, optionally `@VERSION`: never
/// an option, a path, a URL or a git reference.
pub fn npm_package(p: &str) -> std::result::Result<(), &'static str> {
    let unversioned = match p.strip_prefix('@') {
        Some(scoped) => match scoped.split_once('@') {
            Some((name, _)) => format!("@{name}"),
            None => p.to_string(),
        },
        None => p.split('@').next().unwrap_or("").to_string(),
    };
    let version = &p[unversioned.len()..];
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 214
            && !s.starts_with(['.', '_', '-'])
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._~".contains(c))
    };
    let name_ok = match unversioned.strip_prefix('@') {
        Some(scoped) => scoped
            .split_once('/')
            .is_some_and(|(scope, name)| part_ok(scope) && part_ok(name)),
        None => part_ok(&unversioned),
    };
    let version_ok = version.is_empty()
        || (version.len() > 1
            && version[1..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-+^~<>=*x ".contains(c)));
    if name_ok && version_ok {
        Ok(())
    } else {
        Err("is not an npm package name (name or @scope/name, then @VERSION if pinned; no paths, URLs or git references)")
    }
}

fn commands(list: Option<&SpannedList>, key: &str, src: &Source) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (i, c) in list.into_iter().flatten().enumerate() {
        if c.get_ref().trim().is_empty() {
            return Err(src.error(c.span(), format!("`{key}[{i}]` is an empty command")));
        }
        if !out.contains(c.get_ref()) {
            out.push(c.get_ref().clone());
        }
    }
    Ok(out)
}
