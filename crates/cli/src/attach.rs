//! `agentvm attach`: run a command in a running VM through its guest agent.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use agentvm_protocol::client::{self, connect_vsock, terminal, ClientError};
use agentvm_protocol::{ErrorCode, Start, WinSize, EXEC_PORT};
use anyhow::{anyhow, bail};
use clap::Args;

/// Arguments of `agentvm attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The VM's vsock Unix socket (the UDS given to `agentvm boot --vsock`).
    #[arg(long)]
    uds: PathBuf,
    /// Guest vsock port the agent serves exec on.
    #[arg(long, default_value_t = EXEC_PORT)]
    port: u32,
    /// Run on a pseudo-terminal, with the local terminal in raw mode (for
    /// shells and other interactive programs).
    #[arg(long, short = 't')]
    tty: bool,
    /// Working directory in the guest (default: the user's home).
    #[arg(long)]
    cwd: Option<String>,
    /// Run as this guest user (name or uid).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Set an environment variable for the command (KEY=VALUE; repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Wait up to SECS for the VM's socket and its guest agent (for a VM
    /// that is still booting); give up early if the VM goes away.
    #[arg(long, value_name = "SECS")]
    wait: Option<f64>,
    /// Instead of running a command, ask the guest agent to power the guest
    /// off (the VM then exits 0).
    #[arg(long, conflicts_with_all = ["tty", "cwd", "user", "env"])]
    poweroff: bool,
    /// The command and its arguments, after `--`.
    #[arg(
        last = true,
        required_unless_present = "poweroff",
        conflicts_with = "poweroff",
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

/// Runs the command; the exit code is the command's (128 + n if killed by
/// signal n).
pub fn run(args: AttachArgs) -> anyhow::Result<ExitCode> {
    let mut env = Vec::new();
    for e in &args.env {
        let Some((k, v)) = e.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            bail!("--env {e:?}: expected KEY=VALUE");
        };
        env.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    let agent = Agent {
        uds: &args.uds,
        port: args.port,
        wait: args.wait,
    };
    if args.poweroff {
        agent.poweroff()?;
        return Ok(ExitCode::SUCCESS);
    }
    let start = Start {
        argv: args
            .command
            .iter()
            .cloned()
            .map(OsString::into_vec)
            .collect(),
        env,
        cwd: args.cwd.clone().map(String::into_bytes),
        user: args.user.clone(),
        // The real size comes from the local terminal when there is one.
        tty: args.tty.then_some(WinSize { rows: 24, cols: 80 }),
    };
    agent.exec(start)
}

/// A VM's guest agent, as `attach`, `run` and `shell` reach it.
pub struct Agent<'a> {
    /// The VM's vsock Unix socket.
    pub uds: &'a Path,
    /// The guest port the agent serves exec on.
    pub port: u32,
    /// How long to wait for a VM that is still booting, seconds.
    pub wait: Option<f64>,
}

impl Agent<'_> {
    /// Runs `start` with the local terminal (or stdio) attached; the exit
    /// code is the command's (128 + n if killed by signal n).
    pub fn exec(&self, start: Start) -> anyhow::Result<ExitCode> {
        let code = self.exec_code(start)?;
        Ok(ExitCode::from((code & 0xff) as u8))
    }

    /// [`Agent::exec`], returning the command's exit code as a shell
    /// reports it.
    pub fn exec_code(&self, start: Start) -> anyhow::Result<i32> {
        let Some(program) = start.argv.first() else {
            bail!("no command given: put it after `--`");
        };
        let program = String::from_utf8_lossy(program).into_owned();
        let stream = self.connect(&program)?;
        let status = terminal::run_terminal(stream, start)
            .map_err(|e| explain(e, self.uds, self.port, &program))?;
        tracing::debug!("{program} ended: {status:?}");
        Ok(status.shell_code())
    }

    /// Asks the agent to power the guest off.
    pub fn poweroff(&self) -> anyhow::Result<()> {
        let stream = self.connect("poweroff")?;
        client::poweroff(stream).map_err(|e| explain(e, self.uds, self.port, "poweroff"))
    }

    /// Connects to the agent, waiting for it if `wait` says so.
    pub fn connect(&self, program: &str) -> anyhow::Result<UnixStream> {
        let (uds, port) = (self.uds, self.port);
        match self.wait {
            None => connect_vsock(uds, port).map_err(|e| explain(e, uds, port, program)),
            Some(secs) => connect_waiting(uds, port, secs, program),
        }
    }
}

/// Connects, retrying while the VM's socket has not appeared yet or its
/// guest agent does not answer, for at most `secs` seconds (see
/// [`Agent::connect`]).
fn connect_waiting(uds: &Path, port: u32, secs: f64, program: &str) -> anyhow::Result<UnixStream> {
    let limit = Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow!("--wait {secs}: expected a number of seconds"))?;
    client::Agent::new(uds)
        .port(port)
        .ready_timeout(limit)
        .connect()
        .map_err(|e| match e {
            ClientError::VmStopped(_) => anyhow!(
                "the VM at {} stopped before its guest agent answered; see its console output",
                uds.display()
            ),
            e => explain(e, uds, port, program).context(format!("gave up after waiting {secs} s")),
        })
}

/// Turns a client error into a message that says what to do.
fn explain(e: ClientError, uds: &Path, port: u32, program: &str) -> anyhow::Error {
    let uds = uds.display();
    match e {
        ClientError::Connect { source, .. } => anyhow!(
            "cannot connect to {uds}: {source}; is the VM running with --vsock {uds}?"
        ),
        ClientError::Handshake(why) => anyhow!(
            "the VM at {uds} did not connect us to guest port {port} ({why}); \
             has the guest finished booting (its console prints `agentvm-guest: ready`)?"
        ),
        ClientError::Remote {
            code: ErrorCode::SpawnFailed,
            message,
        } => anyhow!("cannot run {program} in the guest: {message}"),
        ClientError::Remote {
            code: ErrorCode::UnsupportedVersion,
            message,
        } => anyhow!("the guest agent is a different version: {message}; rebuild the guest image"),
        ClientError::UnsupportedVersion(v) => anyhow!(
            "the guest agent speaks protocol version {v}, this agentvm another; rebuild the guest image"
        ),
        ClientError::ClosedBeforeExit | ClientError::Read(_) => {
            anyhow::Error::new(e).context(format!(
                "lost the connection to the guest agent before {program} finished \
                 (did the VM stop?)"
            ))
        }
        other => anyhow::Error::new(other).context(format!("running {program} in the guest")),
    }
}
