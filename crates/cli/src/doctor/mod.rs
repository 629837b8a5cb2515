//! `agentvm doctor`: can this host run agentvm VMs, and is the workspace
//! (the current directory, or `--dir`) ready to start one?
//!
//! The host's KVM and tools are checked here directly; the other checks
//! (configuration, image, apt, virtiofsd, memory) are decisions in
//! [`checks`] over data the probes below read. A failed check makes doctor
//! exit 1; a warning does not.

pub mod checks;
#[cfg(test)]
mod tests;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentvm_devices::virtio::fs::Search;
use agentvm_image::stamp::{self, Stamp};
use clap::Args;

use crate::config::ResolvedConfig;
use crate::kvm_host::KvmKind;
use checks::{AptFacts, ConfigState, ImageFacts, StampState, Status};

/// Arguments of `agentvm doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The workspace whose configuration, image and memory to check
    /// [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut ok = host_checks();
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let (state, cfg) = probe_config(&dir);
    let read_only = cfg
        .as_ref()
        .is_some_and(|c| c.mounts.iter().any(|m| m.read_only));
    let mut found = vec![checks::config(&state)];
    found.push(checks::image(&probe_image(cfg.as_ref())));
    found.push(checks::apt(&probe_apt()));
    found.push(checks::virtiofsd(&probe_virtiofsd(), read_only));
    if let Some(c) = &cfg {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        found.push(checks::memory(
            meminfo.as_deref(),
            c.memory_mib,
            c.net_memory_mib,
        ));
    }
    for c in &found {
        println!("{}", c.line());
    }
    ok &= !found.iter().any(|c| c.status == Status::Fail);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The workspace's configuration and how it stands, through the same
/// loading and approval code `up` uses.
fn probe_config(dir: &Path) -> (ConfigState, Option<ResolvedConfig>) {
    let shown = |p: &Path| crate::escape::line(&p.display().to_string()).into_owned();
    let cfg = match crate::config::load(dir) {
        Ok(c) => c,
        Err(e) => {
            return (
                ConfigState::Invalid(crate::escape::line(&format!("{e:#}")).into_owned()),
                None,
            )
        }
    };
    let Some(file) = cfg.file.as_deref().map(shown) else {
        let state = match crate::trust::check_shares(&cfg) {
            Ok(()) => ConfigState::NoFile {
                workspace: shown(&cfg.workspace),
            },
            Err(e) => ConfigState::Exposed(crate::escape::line(&format!("{e:#}")).into_owned()),
        };
        return (state, Some(cfg));
    };
    let state = match crate::trust::standing(&cfg) {
        Ok(crate::trust::Standing::Approved) => match crate::trust::check_shares(&cfg) {
            Ok(()) => ConfigState::Approved { file },
            Err(e) => ConfigState::Exposed(crate::escape::line(&format!("{e:#}")).into_owned()),
        },
        Ok(crate::trust::Standing::New(_)) => ConfigState::New { file },
        Ok(crate::trust::Standing::Changed { .. }) => ConfigState::Changed { file },
        Err(e) => ConfigState::Unknown(crate::escape::line(&format!("{e:#}")).into_owned()),
    };
    (state, Some(cfg))
}

/// The image `up` would boot: the workspace's `image`, else the default.
fn probe_image(cfg: Option<&ResolvedConfig>) -> ImageFacts {
    let default = agentvm_image::default_image_dir();
    let dir = cfg
        .and_then(|c| c.image.clone())
        .or_else(|| default.clone())
        .unwrap_or_else(|| PathBuf::from("(no HOME: no default image directory)"));
    let missing = [
        agentvm_image::files::VMLINUX,
        agentvm_image::files::INITRD,
        agentvm_image::files::CMDLINE,
    ]
    .into_iter()
    .filter(|f| !dir.join(f).is_file())
    .collect();
    let stamp = match std::fs::read_to_string(dir.join(stamp::FILE)) {
        Ok(text) => Stamp::parse(&text).map_or(StampState::Garbled, StampState::Present),
        Err(_) => StampState::Absent,
    };
    let now = SystemTime::now();
    let age = match &stamp {
        StampState::Present(s) => now
            .duration_since(UNIX_EPOCH + Duration::from_secs(s.built_unix))
            .ok(),
        _ => std::fs::metadata(dir.join(agentvm_image::files::VMLINUX))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok()),
    };
    let rootfs =
        agentvm_image::rootfs::Manifest::read(&dir.join(agentvm_image::rootfs::files::MANIFEST))
            .ok()
            .map(|m| {
                let agents: Vec<String> =
                    m.agents.iter().map(|(c, v)| format!("{c} {v}")).collect();
                crate::escape::line(&format!(
                    "Debian {}, node {}{}{}",
                    m.suite,
                    m.node,
                    if agents.is_empty() { "" } else { ", " },
                    agents.join(", ")
                ))
                .into_owned()
            });
    ImageFacts {
        default_dir: Some(&dir) == default.as_ref(),
        dir: crate::escape::line(&dir.display().to_string()).into_owned(),
        missing,
        stamp,
        age,
        layout: stamp::layout().to_string(),
        agent: Some(stamp::agent_digest_of(crate::guest_agent::EMBEDDED)),
        rootfs,
    }
}

fn probe_apt() -> AptFacts {
    AptFacts {
        apt_get: agentvm_image::which("apt-get").is_some(),
        apt_cache: agentvm_image::which("apt-cache").is_some(),
        os_release: std::fs::read_to_string("/etc/os-release").ok(),
    }
}

/// The virtiofsd the virtio-fs device would run, found where it looks (so
/// the answer is the same), and its `--version`.
fn probe_virtiofsd() -> Result<(String, String), String> {
    Search::from_env(None)
        .find()
        .map(|v| {
            (
                crate::escape::line(&v.path.display().to_string()).into_owned(),
                v.version,
            )
        })
        .map_err(|e| lower_first(&e.to_string()))
}

/// `/dev/kvm`, the kind of KVM, and the root file system tools; prints
/// what it finds, returns whether all is well.
fn host_checks() -> bool {
    let mut ok = true;
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        ok = false;
        println!("/dev/kvm: missing — enable VT-x/AMD-V and load kvm_intel or kvm_amd (or use a host with nested virtualization)");
    } else {
        match OpenOptions::new().read(true).write(true).open(kvm) {
            Ok(_) => println!("/dev/kvm: ok"),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                ok = false;
                println!("/dev/kvm: permission denied — add your user to the kvm group (`sudo usermod -aG kvm $USER`, then log in again)");
            }
            Err(e) => {
                ok = false;
                println!("/dev/kvm: cannot open ({e})");
            }
        }
    }
    let kind = KvmKind::detect();
    println!("kvm: {}", kind.name());
    println!("  guest kernel: {}", kind.guest_kernel_note());
    if kind == KvmKind::Pvm {
        // Tiny and PVM-enabled guests run, but not what agentvm is for.
        ok = false;
        println!(
            "default image: cannot boot here (its stock kernel, Debian's or agentvm's own, needs hardware KVM); \
             use a host with VT-x/AMD-V, boot a PVM guest kernel with `agentvm boot --kernel`, \
             or watch the default image boot inside the nested rig: `cargo demo`"
        );
    }
    // The agents' computer: the root file system is built with these.
    let missing: Vec<&str> = ["mmdebstrap", "mkfs.erofs", "mke2fs", "mount", "curl"]
        .into_iter()
        .filter(|t| agentvm_image::which(t).is_none())
        .collect();
    if missing.is_empty() {
        println!("root file system tools: mmdebstrap, mkfs.erofs, mke2fs, mount, curl: ok");
    } else {
        ok = false;
        println!(
            "root file system tools: {} missing — the guest's Debian userland with the agents \
             is built with them: {}",
            missing.join(", "),
            agentvm_image::rootfs::install_hint(
                "mmdebstrap uidmap erofs-utils e2fsprogs mount curl"
            )
        );
    }
    ok
}

/// `Cannot find …` → `cannot find …`, to follow a dash.
fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
