//! Boots agentvm's guest image (a directory as `agentvm image build` writes
//! it) with a shared directory (needs virtiofsd) and a filtered network, runs
//! a shell command in it through the guest agent, powers off.
use std::error::Error;
use std::path::PathBuf;

use agentvm_net::{Mode, Policy, StackConfig};
use agentvm_protocol::client::{Agent, Command};
use agentvm_vmm::config::{ShareConfig, VsockConfig};
use agentvm_vmm::VmBuilder;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, shared, command] = &args[..] else {
        return Err("usage: boot_and_exec IMAGE_DIR SHARED_DIR COMMAND".into());
    };
    let (image, state) = (PathBuf::from(image), tempfile::tempdir()?);
    let mut policy = Policy::new(Mode::Filtered);
    policy.allow("example.com")?; // and the names below it; nothing else
    let vm = VmBuilder::new(image.join("vmlinux"))
        .initrd(image.join("initrd.img"))
        .cmdline(std::fs::read_to_string(image.join("cmdline"))?.trim())
        .state_dir(state.path()) // virtiofsd's sockets
        .share(ShareConfig::new(shared, "shared")) // at the same path
        .net(StackConfig {
            policy,
            ..StackConfig::default()
        })
        .vsock(VsockConfig::new(state.path().join("vsock.sock")))
        .build()?;
    let running = vm.start()?; // the console goes to stdout
    let agent = Agent::new(running.handle().agent_socket().ok_or("no vsock")?);
    let out = agent.output(&Command::shell(command))?;
    agent.poweroff()?;
    println!("--- {:?}, VM {:?}:", out.status, running.wait());
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
