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

use std::ffi::OsString;
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

/// The command line, parsed. For the commands that start a VM (`boot`,
/// `__vmm`) only that subcommand's options are built, not the whole
/// command tree, whose building is most of clap's work and comes before
/// the VM can start. What does not parse that way (help, a mistake) goes
/// through the whole tree, so the user sees what every other command
/// gives.
fn parse_cli() -> Cli {
    vm_command(std::env::args_os()).unwrap_or_else(Cli::parse)
}

/// `args` as a VM-starting command, if they are one and parse alone.
fn vm_command(args: impl IntoIterator<Item = OsString>) -> Option<Cli> {
    // The subcommand's name stands where the program's would.
    let args: Vec<OsString> = args.into_iter().skip(1).collect();
    let command = match args.first()?.to_str()? {
        "boot" => Command::Boot(Box::new(parse_alone("boot", &args)?)),
        lifecycle::VMM_SUBCOMMAND => Command::Vmm(parse_alone(lifecycle::VMM_SUBCOMMAND, &args)?),
        _ => return None,
    };
    Some(Cli { command })
}

/// `args` as subcommand `name`'s options, built without the rest of the tree.
fn parse_alone<A: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    args: &[OsString],
) -> Option<A> {
    let matches = A::augment_args(clap::Command::new(name))
        .try_get_matches_from(args)
        .ok()?;
    A::from_arg_matches(&matches).ok()
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
    let cli = parse_cli();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// A VM command's arguments, as text.
    fn shown(cli: Cli) -> String {
        match cli.command {
            Command::Boot(a) => format!("boot {a:?}"),
            Command::Vmm(a) => format!("__vmm {a:?}"),
            _ => "another command".into(),
        }
    }

    /// What the whole tree makes of `args`, as text.
    fn full(args: &[&str]) -> String {
        match Cli::try_parse_from(args) {
            Ok(cli) => shown(cli),
            Err(e) => panic!("{args:?} does not parse: {e}"),
        }
    }

    #[test]
    fn the_whole_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn vm_commands_parse_alone_as_the_whole_tree_parses_them() {
        for args in [
            &[
                "agentvm",
                "boot",
                "--kernel",
                "/k",
                "--initrd",
                "/i",
                "--memory",
                "256",
                "--vcpus",
                "2",
                "--cmdline",
                "console=ttyS0 quiet",
                "--net",
                "filtered",
                "--allow",
                "example.com",
                "--share",
                "/w:/workspace:ro",
                "--no-rng",
            ][..],
            &["agentvm", "boot"],
            &["agentvm", "__vmm", "--state", "/run/x"],
        ] {
            let alone = vm_command(os(args)).expect("parses alone");
            assert_eq!(shown(alone), full(args), "{args:?}");
        }
    }

    #[test]
    fn help_mistakes_and_other_commands_go_to_the_whole_tree() {
        for args in [
            &["agentvm"][..],
            &["agentvm", "boot", "--help"],
            &["agentvm", "boot", "-h"],
            &["agentvm", "boot", "--version"],
            &["agentvm", "boot", "--memory", "lots"],
            &["agentvm", "boot", "--kernel", "/k", "--image", "/d"],
            &["agentvm", "boot", "--no-such-option"],
            &["agentvm", "__vmm"],
            &["agentvm", "--version"],
            &["agentvm", "up"],
            &["agentvm", "status"],
            &["agentvm", "bo"],
        ] {
            assert!(vm_command(os(args)).is_none(), "{args:?}");
        }
    }
}
