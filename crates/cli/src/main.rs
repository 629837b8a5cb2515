//! `agentvm`: run AI coding agents in KVM microVMs.

mod attach;
mod boot;
mod build;
mod config;
mod config_cmd;
mod destroy;
mod doctor;
mod escape;
mod guard;
mod guest_agent;
mod hook;
mod image;
mod init;
mod kvm_host;
mod lifecycle;
mod net_args;
mod paths;
mod progress;
mod secrets;
mod share;
mod ssh_agent;
mod trust;
mod vhost_user;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `--version`: with the sha256 of the guest agent built in, the one
/// `agentvm image build` puts in images.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nguest agent: built in, sha256 ",
    env!("AGENTVM_EMBEDDED_AGENT_SHA256")
);

/// Run AI coding agents in isolated KVM microVMs.
#[derive(Parser)]
#[command(name = "agentvm", version, long_version = LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a running VM through its guest agent (vsock).
    Attach(attach::AttachArgs),
    /// Boot a kernel in the foreground; the guest console goes to stdout.
    Boot(Box<boot::BootArgs>),
    /// Print the workspace's configuration, plugins merged and defaults
    /// filled in (host secrets are never shown).
    Config(config_cmd::ConfigArgs),
    /// Check that this host can run agentvm VMs and that the workspace is
    /// ready (configuration approved, image current, memory), and say how
    /// to fix what is not.
    Doctor(doctor::DoctorArgs),
    /// Print the shell hook that opens `agentvm shell` on `cd` into a
    /// workspace whose configuration you approved (`eval "$(agentvm hook
    /// bash)"` in ~/.bashrc; AGENTVM_HOOK=off turns it off).
    Hook(hook::HookArgs),
    /// Whether the shell hook enters DIR (internal).
    #[command(name = "__hook-check", hide = true)]
    HookCheck(hook::CheckArgs),
    /// Build the guest image `agentvm boot` uses by default.
    Image(image::ImageArgs),
    /// Write a commented .agentvm/config.toml in the current directory.
    Init(init::InitArgs),
    /// Approve the workspace's configuration (hooks, mounts, env, network,
    /// plugins) after showing it; `up` runs only an approved one.
    Trust(trust::TrustArgs),
    /// Start the workspace's VM in the background; wait until it is ready.
    Up(lifecycle::up::UpArgs),
    /// Stop the workspace's VM and remove its state.
    Down(lifecycle::down::DownArgs),
    /// Remove everything agentvm keeps for the workspace (VM state, agent
    /// home, approval, persistent root, workspace CA), after asking.
    Destroy(destroy::DestroyArgs),
    /// List every VM: name, pid, uptime, memory in use, network, state.
    #[command(visible_alias = "ps")]
    Status,
    /// Print the VM's console (`-f` follows it).
    Logs(lifecycle::status::LogsArgs),
    /// Run a shell command in the workspace's VM (`sh -c CMD`, in the
    /// workspace); exits with the command's code.
    Run(lifecycle::exec::RunArgs),
    /// Open a login shell in the workspace's VM.
    Shell(lifecycle::exec::ShellArgs),
    /// Run the workspace's coding agent in its VM (starting the VM if
    /// needed), without permission prompts: the VM is the sandbox.
    Agent(lifecycle::agent::AgentArgs),
    /// Share a host directory with the running VM at GUEST_PATH, now (a
    /// live mount, gone at `down`).
    Mount(lifecycle::mount::MountArgs),
    /// Undo a live mount: the guest loses it and its virtiofsd ends.
    Unmount(lifecycle::mount::UnmountArgs),
    /// The running VM's network: allow or deny a domain, show the policy,
    /// print the audit log.
    Net(lifecycle::net::NetArgs),
    /// Serve a device to another VMM over vhost-user (e.g. `net`: agentvm's
    /// filtered network for a QEMU guest).
    VhostUser(vhost_user::VhostUserArgs),
    /// The background VMM process `up` starts (internal).
    #[command(name = "__vmm", hide = true)]
    Vmm(lifecycle::vmm::VmmArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(args) => attach::run(args),
        Command::Boot(args) => boot::run(*args),
        Command::Config(args) => config_cmd::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Hook(args) => hook::run(args),
        Command::HookCheck(args) => hook::check(args),
        Command::Image(args) => image::run(args),
        Command::Init(args) => init::run(args),
        Command::Trust(args) => trust::run(args),
        Command::Up(args) => lifecycle::up::run(args),
        Command::Down(args) => lifecycle::down::run(args),
        Command::Destroy(args) => destroy::run(args),
        Command::Status => lifecycle::status::run(),
        Command::Logs(args) => lifecycle::status::logs(args),
        Command::Run(args) => lifecycle::exec::run(args),
        Command::Shell(args) => lifecycle::exec::shell(args),
        Command::Agent(args) => lifecycle::agent::run(args),
        Command::Mount(args) => lifecycle::mount::mount(args),
        Command::Unmount(args) => lifecycle::mount::unmount(args),
        Command::Net(args) => lifecycle::net::run(args),
        Command::VhostUser(args) => vhost_user::run(args),
        Command::Vmm(args) => lifecycle::vmm::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Errors quote files and output the guest may have written.
            eprintln!("agentvm: error: {}", escape::text(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
