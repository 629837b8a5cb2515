//! The VM of `agentvm boot` and `agentvm __vmm`: built by agentvm-vmm
//! from the [`VmConfig`] each makes of its options, with the library's
//! errors told in the CLI's words (the options they are about, what to do).

use std::path::Path;

use agentvm_devices::virtio::vsock::VsockError;
use agentvm_vmm::config::{ConfigError, VmConfig};
use agentvm_vmm::{BuildError, Vm, VmBuilder};

use crate::kvm_host::{explain, KvmKind};

/// Builds the VM `config` describes (shares with their virtiofsd started,
/// Landlock applied last).
pub fn build_vm(config: VmConfig) -> anyhow::Result<Vm> {
    if KvmKind::detect() == KvmKind::Pvm {
        tracing::warn!(
            "this host's KVM is PVM: {}",
            KvmKind::Pvm.guest_kernel_note()
        );
    }
    let uds = config.vsock.as_ref().map(|v| v.uds.clone());
    let vm = VmBuilder::from_config(config)
        .build()
        .map_err(|e| in_cli_words(e, uds.as_deref()))?;
    let t = vm.setup_times();
    tracing::debug!(
        "set up in {:.1} ms: devices {:.1}, VM and RAM {:.1}, kernel and initrd {:.1}, vCPUs {:.1}",
        (t.devices + t.memory + t.boot_image + t.vcpus).as_secs_f64() * 1e3,
        t.devices.as_secs_f64() * 1e3,
        t.memory.as_secs_f64() * 1e3,
        t.boot_image.as_secs_f64() * 1e3,
        t.vcpus.as_secs_f64() * 1e3
    );
    Ok(vm)
}

/// `e` as the CLI says it; `uds` is the `--vsock` socket.
fn in_cli_words(e: BuildError, uds: Option<&Path>) -> anyhow::Error {
    match e {
        BuildError::Config(e) => config_error(e),
        BuildError::Share { tag, dir, source } => {
            crate::share::start_error(&tag, &dir, *source).context("cannot set up the shares")
        }
        BuildError::Vsock(e) => vsock_error(e, uds.unwrap_or(Path::new(""))),
        BuildError::Net(e) => anyhow::Error::new(e).context("cannot start the network stack"),
        BuildError::BalloonTarget(e) => {
            anyhow::Error::new(e).context("cannot set the balloon's target")
        }
        e => match explain(&e) {
            Some(msg) => anyhow::anyhow!(msg),
            None => anyhow::Error::new(e).context("cannot create the VM"),
        },
    }
}

/// A refused configuration, named by the option that set it.
fn config_error(e: ConfigError) -> anyhow::Error {
    match e {
        ConfigError::BalloonTarget {
            target_mib,
            memory_mib,
        } => anyhow::anyhow!(
            "--balloon {target_mib} MiB would take all of the guest's {memory_mib} MiB; \
             give less than --memory"
        ),
        ConfigError::InvalidCid(_) => anyhow::anyhow!("--cid: {e}"),
        ConfigError::DuplicateTag(tag) => {
            anyhow::anyhow!("--share: the tag {tag} is used twice; give each share its own")
        }
        ConfigError::TargetNotUtf8(path) => {
            anyhow::anyhow!("--share {}: the path is not UTF-8", path.display())
        }
        ConfigError::TargetCharacters(target) => anyhow::anyhow!(
            "--share {target}: the guest cannot mount a path with `\"` or `:` in it"
        ),
        e => anyhow::Error::new(BuildError::Config(e)).context("cannot create the VM"),
    }
}

/// The vsock socket `uds` could not be set up.
fn vsock_error(e: VsockError, uds: &Path) -> anyhow::Error {
    let shown = uds.display();
    match &e {
        VsockError::InvalidCid(_) => anyhow::anyhow!("--cid: {e}"),
        VsockError::InUse(_) => anyhow::anyhow!(
            "--vsock: {shown} is in use (another VM or program listens there); \
             stop it or choose another path"
        ),
        VsockError::NotASocket(_) => anyhow::anyhow!(
            "--vsock: {shown} exists and is not a socket; remove it or choose another path"
        ),
        VsockError::Bind { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::anyhow!(
                "--vsock: cannot create {shown}: its directory does not exist; create it first"
            )
        }
        VsockError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            anyhow::anyhow!(
                "--vsock: cannot create {shown}: permission denied; choose a path you can write"
            )
        }
        VsockError::Bind { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput => {
            anyhow::anyhow!(
                "--vsock: {shown} is too long for a Unix socket (at most 107 bytes); \
                 use a shorter path"
            )
        }
        _ => anyhow::Error::new(e).context("--vsock: cannot set up the vsock device"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(e: ConfigError) -> String {
        format!("{:#}", config_error(e))
    }

    #[test]
    fn refused_configurations_name_the_option() {
        assert_eq!(
            words(ConfigError::BalloonTarget {
                target_mib: 128,
                memory_mib: 128
            }),
            "--balloon 128 MiB would take all of the guest's 128 MiB; give less than --memory"
        );
        assert_eq!(
            words(ConfigError::InvalidCid(2)),
            "--cid: Guest CID 2 is reserved or too large (use 3 to 4294967294)"
        );
        assert_eq!(
            words(ConfigError::DuplicateTag("same".into())),
            "--share: the tag same is used twice; give each share its own"
        );
        assert_eq!(
            words(ConfigError::TargetCharacters("/a:b".into())),
            "--share /a:b: the guest cannot mount a path with `\"` or `:` in it"
        );
        assert_eq!(
            words(ConfigError::Vcpus(0)),
            "cannot create the VM: Invalid VM configuration: \
             0 vCPUs requested; between 1 and 254 are supported"
        );
    }

    #[test]
    fn vsock_errors_say_what_to_do() {
        let uds = Path::new("/run/x.sock");
        let e = vsock_error(VsockError::InUse(uds.to_owned()), uds);
        assert_eq!(
            e.to_string(),
            "--vsock: /run/x.sock is in use (another VM or program listens there); \
             stop it or choose another path"
        );
        let e = vsock_error(
            VsockError::Bind {
                path: uds.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            },
            uds,
        );
        assert!(
            e.to_string().contains("its directory does not exist"),
            "{e}"
        );
    }
}
