//! `agentvm vhost-user net --socket PATH [--net MODE …]`: agentvm's
//! user-mode network, with its egress policy, served as a vhost-user-net
//! backend, so a QEMU or cloud-hypervisor guest gets the same filtered
//! network an agentvm guest has. It serves one frontend and exits when that
//! frontend disconnects.
//!
//! ```text
//! agentvm vhost-user net --socket /tmp/vu.sock --net filtered --allow github.com &
//! qemu-system-x86_64 … -object memory-backend-memfd,id=mem,size=1G,share=on \
//!   -numa node,memdev=mem -chardev socket,id=vu,path=/tmp/vu.sock \
//!   -netdev vhost-user,id=net0,chardev=vu -device virtio-net-pci,netdev=net0
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use agentvm_devices::vhost_user::net::VhostUserNet;
use agentvm_devices::virtio::net::DEFAULT_MTU;
use agentvm_net::addr::GUEST_MAC;
use agentvm_net::{NetStack, StackConfig};
use agentvm_vmm::seccomp::{self, ThreadKind};
use agentvm_vmm::SeccompLevel;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::net_args::NetArgs;

/// Arguments of `agentvm vhost-user`.
#[derive(Args, Debug)]
pub struct VhostUserArgs {
    #[command(subcommand)]
    device: Device,
}

/// The devices agentvm serves over vhost-user.
#[derive(Subcommand, Debug)]
enum Device {
    /// virtio-net behind agentvm's user-mode network and egress policy.
    Net(NetBackendArgs),
}

/// Arguments of `agentvm vhost-user net`.
#[derive(Args, Debug)]
struct NetBackendArgs {
    /// The Unix socket to listen on for the frontend (created; an existing
    /// socket file is replaced).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    #[command(flatten)]
    net: NetArgs,
    /// What the backend's seccomp filter does with a system call it never
    /// makes: `kill` ends it naming the call, `log` lets it through and
    /// the kernel logs it, `off` runs without a filter.
    #[arg(long, value_name = "LEVEL", default_value = "kill")]
    seccomp: SeccompLevel,
}

/// Serves the device until the frontend disconnects.
pub fn run(args: VhostUserArgs) -> anyhow::Result<ExitCode> {
    // It parses guest frames too: the same hygiene as a VMM.
    crate::boot::harden_vmm_process()?;
    let Device::Net(args) = args.device;
    for warning in args.net.warnings() {
        eprintln!("agentvm: {warning}");
    }
    let Some(policy) = args.net.policy()? else {
        bail!("a vhost-user network needs a mode: add --net filtered (or --net open)");
    };
    let stack = NetStack::new(StackConfig {
        policy,
        audit: args.net.audit()?,
        resolvers: Vec::new(),
        mtu: usize::from(DEFAULT_MTU),
        memory_budget: 0,
        intercept: None,
    })
    .context("cannot start the network stack")?;
    let backend = VhostUserNet::new(stack, GUEST_MAC, DEFAULT_MTU)
        .context("cannot set up the vhost-user backend")?;
    if args.socket.exists() {
        std::fs::remove_file(&args.socket)
            .with_context(|| format!("cannot replace {}", args.socket.display()))?;
    }
    eprintln!(
        "agentvm: serving vhost-user-net on {}",
        args.socket.display()
    );
    // Every thread the backend starts from here on inherits the filter.
    seccomp::install(args.seccomp, ThreadKind::VhostUserBackend)
        .context("cannot confine the vhost-user backend")?;
    backend
        .serve(&args.socket)
        .with_context(|| format!("vhost-user-net on {}", args.socket.display()))?;
    let _ = std::fs::remove_file(&args.socket);
    Ok(ExitCode::SUCCESS)
}
