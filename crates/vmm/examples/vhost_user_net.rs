//! agentvm's filtered network on its own, as a vhost-user-net backend: a
//! QEMU or cloud-hypervisor guest that connects to SOCKET gets DHCP, DNS
//! and egress limited to the names pinned on the command line and PORT.
//!
//! ```text
//! cargo run -p agentvm-vmm --example vhost_user_net -- /tmp/vu.sock 443 api.test=192.0.2.7
//! qemu-system-x86_64 … -chardev socket,id=vu,path=/tmp/vu.sock \
//!   -netdev vhost-user,id=n0,chardev=vu -device virtio-net-pci,netdev=n0
//! ```
use std::error::Error;
use std::path::PathBuf;

use agentvm_devices::vhost_user::net::VhostUserNet;
use agentvm_devices::virtio::net::DEFAULT_MTU;
use agentvm_net::{addr::GUEST_MAC, policy, Audit, Mode, NetStack, Policy, StackConfig};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: vhost_user_net SOCKET PORT [NAME=IPV4]...";
    let socket = PathBuf::from(args.next().ok_or(usage)?);
    let mut policy = Policy::new(Mode::Filtered);
    policy.ports = vec![args.next().ok_or(usage)?.parse()?];
    for pin in args {
        let (name, ip) = policy::parse_host_pin(&pin)?;
        policy.pin(&name, ip)?;
    }
    let stack = NetStack::new(StackConfig {
        policy,
        // Every decision, one JSON line each, on stderr.
        audit: Audit::callback(|event| eprint!("{}", event.to_line())),
        resolvers: Vec::new(),
        mtu: usize::from(DEFAULT_MTU),
        memory_budget: 0,
        intercept: None,
    })?;
    let backend = VhostUserNet::new(stack, GUEST_MAC, DEFAULT_MTU)?;
    eprintln!("serving vhost-user-net on {}", socket.display());
    backend.serve(&socket)?; // until the frontend disconnects
    Ok(())
}
