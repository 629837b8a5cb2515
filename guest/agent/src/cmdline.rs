//! `agentvm.*` settings from the kernel command line.
//!
//! | parameter | meaning |
//! |---|---|
//! | `agentvm.ip=ADDR/PREFIX` | static IPv4 address of `eth0` (`dhcp`, the default: ask by DHCP; `off`: leave unconfigured) |
//! | `agentvm.gw=ADDR` | default gateway (static mode) |
//! | `agentvm.dns=ADDR[,ADDR…]` | name servers for `/etc/resolv.conf` (static mode; may repeat) |
//! | `agentvm.hostname=NAME` | host name (default `agentvm`) |
//! | `agentvm.share=TAG:/mount/point[:ro\|:rw]` | mount virtio-fs `TAG` (may repeat; default `rw`) |
//! | `agentvm.port=N` | vsock port for exec (default 1024) |
//! | `agentvm.rootfs=TAG:FILE` | switch to a read-only root: mount virtio-fs `TAG` read-only at `/run/agentvm/image`, loop-mount its erofs image `FILE` (or use `FILE` itself when it is a directory) as the lower layer of an overlay, and make that overlay `/`. Absent: the initramfs stays the root |
//! | `agentvm.upper=tmpfs` | the overlay's writable layer is a tmpfs (the default; gone at power-off) |
//! | `agentvm.upper=TAG[:FILE]` | the writable layer persists: an ext4 image `FILE` (default `upper.ext4`) on virtio-fs `TAG`, loop-mounted read-write (see `root.rs` for why not the share itself) |
//! | `agentvm.user=NAME:UID:GID` | the user commands run as when a request names none: created in the root's `/etc/passwd` if missing, with home `/home/NAME` and passwordless sudo. UID 0 is refused (root needs no set-up: leave the key out) |
//! | `agentvm.ssh_agent=PORT` | serve the host's ssh-agent: listen on `/run/agentvm/ssh-agent.sock` (the default user's alone), relay each connection to vsock port `PORT` of the host (see [`crate::ssh_agent`]), and give commands `SSH_AUTH_SOCK` |
//! | `agentvm.tmpfs=/dir` | mount a tmpfs on `/dir` (may repeat): for directories where programs need `O_TMPFILE`, which virtio-fs and the 6.1 overlay lack |
//!
//! `TAG`s and `FILE`s are plain names: `FILE` is relative to the share, and
//! may contain `/` but no `..`, empty, or `.` components.
//!
//! Parameters with a dot are not passed to init by the kernel, so the agent
//! reads them from `/proc/cmdline`.

use std::net::Ipv4Addr;

/// How `eth0` gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpMode {
    /// Ask a DHCP server (in the background; exec does not wait for it).
    Dhcp,
    /// Fixed address and prefix length.
    Static(Ipv4Addr, u8),
    /// Bring the link up without an address.
    Off,
}

/// A virtio-fs share to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The virtio-fs tag.
    pub tag: String,
    /// Absolute mount point (created if missing).
    pub mount_point: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// Everything the command line configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `eth0` address.
    pub ip: IpMode,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// Host name.
    pub hostname: String,
    /// virtio-fs shares, in order.
    pub shares: Vec<Share>,
    /// vsock port for exec.
    pub port: u32,
    /// The read-only root file system to switch to.
    pub rootfs: Option<RootFs>,
    /// The writable layer above it.
    pub upper: Upper,
    /// The default user for commands.
    pub user: Option<UserSpec>,
    /// Extra tmpfs mount points (absolute).
    pub tmpfs: Vec<String>,
    /// The host vsock port of the forwarded ssh-agent.
    pub ssh_agent: Option<u32>,
}

/// `agentvm.rootfs=TAG:FILE`: where the root file system image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFs {
    /// The virtio-fs tag of the image directory.
    pub tag: String,
    /// The erofs image (or a directory tree), relative to the share.
    pub file: String,
}

/// `agentvm.upper=…`: the overlay's writable layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Upper {
    /// A tmpfs (nothing survives power-off).
    #[default]
    Tmpfs,
    /// An ext4 image on a virtio-fs share, loop-mounted.
    Image {
        /// The virtio-fs tag of the share holding the image.
        tag: String,
        /// The image, relative to the share.
        file: String,
    },
}

/// The image [`Upper::Image`] uses when the key names no file.
pub const DEFAULT_UPPER_FILE: &str = "upper.ext4";

/// `agentvm.user=NAME:UID:GID`: the default user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// Login name (validated by [`valid_user_name`]).
    pub name: String,
    /// User id (never 0, never `u32::MAX`).
    pub uid: u32,
    /// Primary group id (never `u32::MAX`).
    pub gid: u32,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            ip: IpMode::Dhcp,
            gateway: None,
            dns: Vec::new(),
            hostname: "agentvm".into(),
            shares: Vec::new(),
            port: agentvm_protocol::EXEC_PORT,
            rootfs: None,
            upper: Upper::Tmpfs,
            user: None,
            tmpfs: Vec::new(),
            ssh_agent: None,
        }
    }
}

/// Parses a command line; returns the settings and one warning per
/// `agentvm.*` parameter that was ignored.
pub fn parse(cmdline: &str) -> (BootConfig, Vec<String>) {
    let mut cfg = BootConfig::default();
    let mut warnings = Vec::new();
    for word in split(cmdline) {
        let Some(rest) = word.strip_prefix("agentvm.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let ok = match key {
            "ip" => parse_ip(value).map(|ip| cfg.ip = ip).is_some(),
            "gw" => value.parse().map(|gw| cfg.gateway = Some(gw)).is_ok(),
            "dns" => {
                let addrs: Result<Vec<Ipv4Addr>, _> = value.split(',').map(str::parse).collect();
                addrs.map(|a| cfg.dns.extend(a)).is_ok()
            }
            "hostname" => {
                let valid = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if valid {
                    cfg.hostname = value.to_owned();
                }
                valid
            }
            "share" => parse_share(value).map(|s| cfg.shares.push(s)).is_some(),
            "port" => value.parse().map(|p| cfg.port = p).is_ok(),
            "ssh_agent" => value.parse().map(|p| cfg.ssh_agent = Some(p)).is_ok(),
            "rootfs" => parse_rootfs(value).map(|r| cfg.rootfs = Some(r)).is_some(),
            "upper" => parse_upper(value).map(|u| cfg.upper = u).is_some(),
            "user" => parse_user(value).map(|u| cfg.user = Some(u)).is_some(),
            "tmpfs" => {
                let ok = valid_mount_point(value);
                if ok {
                    cfg.tmpfs.push(value.to_owned());
                }
                ok
            }
            _ => false,
        };
        if !ok {
            warnings.push(format!("ignoring {word}"));
        }
    }
    (cfg, warnings)
}

fn parse_ip(v: &str) -> Option<IpMode> {
    match v {
        "dhcp" => Some(IpMode::Dhcp),
        "off" => Some(IpMode::Off),
        _ => {
            let (addr, prefix) = v.split_once('/').unwrap_or((v, "24"));
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
            Some(IpMode::Static(addr.parse().ok()?, prefix))
        }
    }
}

fn parse_share(v: &str) -> Option<Share> {
    let mut parts = v.split(':');
    let tag = parts.next().filter(|t| !t.is_empty())?;
    let mount_point = parts.next().filter(|m| m.starts_with('/'))?;
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Share {
        tag: tag.to_owned(),
        mount_point: mount_point.to_owned(),
        read_only,
    })
}

/// A virtio-fs tag: 1–36 bytes (the device's limit), printable, no `:`.
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 36 && tag.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// A path relative to a share that cannot leave it: no `..`, `.` or empty
/// components, no leading `/`, no control characters, and no `:` or `,`
/// (they separate the key's fields and mount options).
pub fn valid_relative_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && !path
            .bytes()
            .any(|b| b.is_ascii_control() || b == b':' || b == b',')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// An absolute mount point without `..` components or control characters.
fn valid_mount_point(path: &str) -> bool {
    path.len() > 1
        && path.starts_with('/')
        && !path.bytes().any(|b| b.is_ascii_control())
        && path.split('/').all(|c| c != "..")
}

/// A login name the accounts files, `sudoers` and a home directory path can
/// all hold: 1–32 bytes of `[A-Za-z0-9._-]`, not starting with `-` or `.`,
/// not all digits (it would read as a uid).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['-', '.'])
        && !name.bytes().all(|b| b.is_ascii_digit())
}

fn parse_rootfs(v: &str) -> Option<RootFs> {
    let (tag, file) = v.split_once(':')?;
    (valid_tag(tag) && valid_relative_path(file)).then(|| RootFs {
        tag: tag.to_owned(),
        file: file.to_owned(),
    })
}

fn parse_upper(v: &str) -> Option<Upper> {
    if v == "tmpfs" {
        return Some(Upper::Tmpfs);
    }
    let (tag, file) = v.split_once(':').unwrap_or((v, DEFAULT_UPPER_FILE));
    (valid_tag(tag) && valid_relative_path(file)).then(|| Upper::Image {
        tag: tag.to_owned(),
        file: file.to_owned(),
    })
}

/// `NAME:UID:GID`. uid 0 is refused: "the user" exists to not be root, and
/// root needs no account set-up. `u32::MAX` is `(uid_t)-1`, "no change" to
/// `setresuid`/`chown`, so it is refused for both ids.
fn parse_user(v: &str) -> Option<UserSpec> {
    let mut parts = v.split(':');
    let name = parts.next().filter(|n| valid_user_name(n))?;
    let uid: u32 = parts.next()?.parse().ok()?;
    let gid: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || uid == 0 || uid == u32::MAX || gid == u32::MAX {
        return None;
    }
    Some(UserSpec {
        name: name.to_owned(),
        uid,
        gid,
    })
}

/// Splits on whitespace; double quotes group words (the kernel's rule).
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let (cfg, warnings) = parse(
            "console=ttyS0 quiet agentvm.ip=10.0.2.15/24 agentvm.gw=10.0.2.2 \
             agentvm.dns=10.0.2.3,1.1.1.1 agentvm.hostname=box-1 \
             agentvm.share=work:/workspace agentvm.share=\"cache:/var/cache x:ro\" \
             agentvm.share=ro:/ro:ro agentvm.share=x:/y:bogus agentvm.port=2000\n",
        );
        assert_eq!(cfg.ip, IpMode::Static(Ipv4Addr::new(10, 0, 2, 15), 24));
        assert_eq!(cfg.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            cfg.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(cfg.hostname, "box-1");
        assert_eq!(cfg.port, 2000);
        assert_eq!(
            cfg.shares,
            [
                Share {
                    tag: "work".into(),
                    mount_point: "/workspace".into(),
                    read_only: false
                },
                Share {
                    tag: "cache".into(),
                    mount_point: "/var/cache x".into(),
                    read_only: true
                },
                Share {
                    tag: "ro".into(),
                    mount_point: "/ro".into(),
                    read_only: true
                },
            ]
        );
        assert_eq!(warnings, ["ignoring agentvm.share=x:/y:bogus"]);
    }

    #[test]
    fn defaults_and_bad_values() {
        let (cfg, w) =
            parse("agentvm.ip=1.2.3.4/33 agentvm.share=t:rel agentvm.bogus agentvm.hostname=a_b");
        assert_eq!(cfg, BootConfig::default());
        assert_eq!(w.len(), 4);
        assert_eq!(parse("agentvm.ip=off").0.ip, IpMode::Off);
        assert_eq!(
            parse("agentvm.ip=192.168.1.9").0.ip,
            IpMode::Static(Ipv4Addr::new(192, 168, 1, 9), 24)
        );
    }

    #[test]
    fn the_ssh_agent_key_takes_a_port() {
        assert_eq!(BootConfig::default().ssh_agent, None);
        assert_eq!(parse("agentvm.ssh_agent=1025").0.ssh_agent, Some(1025));
        for bad in [
            "agentvm.ssh_agent",
            "agentvm.ssh_agent=x",
            "agentvm.ssh_agent=-1",
        ] {
            let (cfg, w) = parse(bad);
            assert_eq!(cfg.ssh_agent, None, "{bad}");
            assert_eq!(w, [format!("ignoring {bad}")]);
        }
    }

    #[test]
    fn root_keys() {
        let (cfg, w) = parse(
            "agentvm.rootfs=image:rootfs.erofs agentvm.upper=state \
             agentvm.user=dev:1000:1001 agentvm.tmpfs=/home/dev/.cache/x",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            cfg.rootfs,
            Some(RootFs {
                tag: "image".into(),
                file: "rootfs.erofs".into()
            })
        );
        assert_eq!(
            cfg.upper,
            Upper::Image {
                tag: "state".into(),
                file: DEFAULT_UPPER_FILE.into()
            }
        );
        assert_eq!(
            cfg.user,
            Some(UserSpec {
                name: "dev".into(),
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(cfg.tmpfs, ["/home/dev/.cache/x"]);
        let (cfg, w) = parse("agentvm.upper=s:layers/up.img agentvm.rootfs=i:sub/tree");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            cfg.upper,
            Upper::Image {
                tag: "s".into(),
                file: "layers/up.img".into()
            }
        );
        assert_eq!(cfg.rootfs.map(|r| r.file), Some("sub/tree".into()));
        assert_eq!(parse("agentvm.upper=tmpfs").0.upper, Upper::Tmpfs);
        assert_eq!(parse("").0.upper, Upper::Tmpfs);
        // A later valid key wins; the user name may carry dots and dashes.
        let cfg = parse("agentvm.user=a:1:1 agentvm.user=john.doe-2:4000000000:0").0;
        assert_eq!(
            cfg.user,
            Some(UserSpec {
                name: "john.doe-2".into(),
                uid: 4_000_000_000,
                gid: 0
            })
        );
    }

    #[test]
    fn root_keys_refuse_malicious_values() {
        for bad in [
            "agentvm.rootfs=image",
            "agentvm.rootfs=:rootfs.erofs",
            "agentvm.rootfs=image:",
            "agentvm.rootfs=image:/etc/shadow",
            "agentvm.rootfs=image:../../etc",
            "agentvm.rootfs=image:a/./b",
            "agentvm.rootfs=image:a//b",
            "agentvm.rootfs=a-tag-that-is-far-too-long-for-virtio-fs:x",
            "agentvm.upper=",
            "agentvm.upper=s:../up.img",
            "agentvm.upper=s:up:img",
            "agentvm.user=root:0:0",
            "agentvm.user=dev:0:1000",
            "agentvm.user=dev:1000",
            "agentvm.user=dev:1000:1000:x",
            "agentvm.user=dev:4294967295:1000",
            "agentvm.user=dev:1000:4294967295",
            "agentvm.user=dev:4294967296:1000",
            "agentvm.user=dev:-1:1000",
            "agentvm.user=dev:99999999999999999999:1",
            "agentvm.user=:1000:1000",
            "agentvm.user=a/b:1000:1000",
            "agentvm.user=../x:1000:1000",
            "agentvm.user=-rf:1000:1000",
            "agentvm.user=.hidden:1000:1000",
            "agentvm.user=1000:1000:1000",
            "agentvm.user=\"a b:1000:1000\"",
            "agentvm.user=ALL,x:1000:1000",
            "agentvm.user=a\u{7}b:1000:1000",
            "agentvm.user=émile:1000:1000",
            "agentvm.user=abcdefghijklmnopqrstuvwxyz0123456:1000:1000",
            "agentvm.tmpfs=relative",
            "agentvm.tmpfs=/",
            "agentvm.tmpfs=/a/../etc",
        ] {
            let (cfg, w) = parse(bad);
            assert_eq!(cfg, BootConfig::default(), "{bad}");
            assert_eq!(w.len(), 1, "{bad}");
        }
        // A newline ends the word: the name is cut there and stays valid.
        let (cfg, _) = parse("agentvm.user=dev\n:1000:1000");
        assert_eq!(cfg.user, None);
    }
}
