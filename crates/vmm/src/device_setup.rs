//! The virtio devices a [`VmConfig`] asks for, created: the network stack
//! started, each share's virtiofsd started, the vsock socket bound. All of
//! it happens before KVM is opened, so a bad share or socket path fails
//! before anything of the VM exists. Every share's daemon is started
//! before the first is waited for, so they start side by side, and beside
//! the network stack's set-up.

use std::path::PathBuf;

use agentvm_devices::virtio::balloon::{Balloon, BalloonHandle};
use agentvm_devices::virtio::fs::VirtioFs;
use agentvm_devices::virtio::net::Net;
use agentvm_devices::virtio::rng::Rng;
use agentvm_devices::virtio::vsock::Vsock;
use agentvm_devices::virtio::VirtioDevice;
use agentvm_net::{NetHandle, NetStack};

use crate::builder::BuildError;
use crate::config::VmConfig;
use crate::hygiene;

/// What [`create`] made.
pub(crate) struct ConfiguredDevices {
    /// The devices in slot order: shares, rng, vsock, then `extra`, the
    /// balloon, the network.
    pub devices: Vec<Box<dyn VirtioDevice>>,
    /// The balloon's handle, when there is one.
    pub balloon: Option<BalloonHandle>,
    /// The network stack's handle, when there is one.
    pub net: Option<NetHandle>,
    /// The virtiofsd binaries the shares run (Landlock keeps them
    /// executable, for daemons restarted after a device reset).
    pub virtiofsd: Vec<PathBuf>,
}

/// Creates the devices of `config`, with the embedder's `extra` devices
/// after the configured ones and before the balloon and network.
pub(crate) fn create(
    config: &VmConfig,
    extra: Vec<Box<dyn VirtioDevice>>,
) -> Result<ConfiguredDevices, BuildError> {
    let share_error = |share: &crate::config::ShareConfig, source| BuildError::Share {
        tag: share.tag.clone(),
        dir: share.host_dir.clone(),
        source: Box::new(source),
    };
    let mut starting = Vec::new();
    if let Some(state_dir) = &config.state_dir {
        for share in &config.shares {
            let spawned = VirtioFs::spawn(share.fs_config(state_dir, &config.virtiofsd))
                .map_err(|e| share_error(share, e))?;
            starting.push((share, spawned));
        }
    }
    let stack = match &config.net {
        Some(net) => {
            hygiene::raise_fd_limit();
            let stack = NetStack::new(net.clone()).map_err(BuildError::Net)?;
            tracing::debug!("network: {}", net.policy.mode.as_str());
            Some(stack)
        }
        None => None,
    };
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut virtiofsd = Vec::new();
    for (share, spawned) in starting {
        let fs = spawned.connect().map_err(|e| share_error(share, e))?;
        if let Some(bin) = fs.virtiofsd() {
            if !virtiofsd.contains(&bin.path) {
                virtiofsd.push(bin.path.clone());
            }
        }
        devices.push(Box::new(fs));
    }
    if config.rng {
        devices.push(Box::new(Rng::new()));
    }
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(vsock.cid, &vsock.uds)
            .map_err(BuildError::Vsock)?
            .with_counters(vsock.counters.clone());
        devices.push(Box::new(device));
    }
    devices.extend(extra);
    let mut balloon = None;
    if let Some(settings) = &config.balloon {
        let device = Balloon::new().map_err(BuildError::Balloon)?;
        let handle = device.handle();
        if let Some(mib) = settings.target_mib {
            // Kept by the device until the guest's driver starts.
            handle
                .set_target_mib(mib)
                .map_err(BuildError::BalloonTarget)?;
        }
        balloon = Some(handle);
        devices.push(Box::new(device));
    }
    let net = stack.as_ref().map(NetStack::handle);
    if let Some(stack) = stack {
        devices.push(Box::new(Net::new(stack, agentvm_net::addr::GUEST_MAC)));
    }
    Ok(ConfiguredDevices {
        devices,
        balloon,
        net,
        virtiofsd,
    })
}
