//! `agentvm-guest`: the agentvm guest agent.
//!
//! As PID 1 of the guest initramfs (`agentvm-guest` with no arguments, or
//! `agentvm-guest init [--listen ADDR]`) it sets the guest up — see [`init`] for the files it
//! reads and [`cmdline`] for the kernel command line — then serves the exec
//! protocol ([`agentvm_protocol`]) on vsock port 1024 and prints
//! `agentvm-guest: ready` on the console.
//!
//! `agentvm-guest serve --listen ADDR` serves the same protocol as an ordinary
//! process (a child subreaper), for tests on the host: ADDR is `unix:PATH`,
//! `vsock:PORT` or `fd:N` (an inherited listening socket). It prints the same
//! ready line on stdout. A `Poweroff` request (or SIGTERM/SIGINT/SIGHUP) ends
//! it with status 0 after killing the sessions' process groups.
//!
//! Threads: one per session, one that owns signals and reaping (see
//! [`reaper`]), the accept loop on the main thread.

mod accounts;
mod cmdline;
mod dhcp;
mod init;
mod loopdev;
mod net;
mod reaper;
mod root;
mod server;
mod session;
mod spawn;
mod user;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, PoisonError, RwLock};

use agentvm_protocol::frame::EnvList;
use nix::sys::signal::{SigSet, Signal};

use crate::reaper::Reaper;
use crate::server::{Listen, Listener};

/// Logs one line on stderr (the console when PID 1).
macro_rules! log {
    ($($t:tt)*) => { eprintln!("agentvm-guest: {}", format_args!($($t)*)) };
}
pub(crate) use log;

/// The line printed on stdout once exec is served.
const READY: &str = "agentvm-guest: ready";

const USAGE: &str = "usage: agentvm-guest [init [--listen ADDR]]   (as PID 1 of the guest)
       agentvm-guest serve --listen ADDR        (ADDR: unix:PATH, vsock:PORT or fd:N)";

/// State shared by all sessions.
pub struct Agent {
    reaper: Reaper,
    /// Where `etc/passwd` is looked up.
    root: PathBuf,
    /// Environment from the host's `Configure` (secrets: memory only).
    env: RwLock<EnvList>,
    pid1: bool,
}

impl Agent {
    fn new(pid1: bool) -> Agent {
        Agent {
            reaper: Reaper::default(),
            root: PathBuf::from("/"),
            env: RwLock::new(Vec::new()),
            pid1,
        }
    }

    /// The configured environment.
    pub fn env(&self) -> EnvList {
        self.env
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the configured environment.
    pub fn set_env(&self, env: EnvList) {
        *self.env.write().unwrap_or_else(PoisonError::into_inner) = env;
    }

    /// Powers off (PID 1) or ends `serve`.
    pub fn shutdown(&self) -> ! {
        if self.pid1 {
            init::power_off();
        }
        self.reaper.signal_all(Signal::SIGKILL);
        std::process::exit(0)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid1 = std::process::id() == 1;
    match args.as_slice() {
        [] if pid1 => run_init(None),
        ["init"] => run_init(None),
        ["init", "--listen", addr] => match addr.parse::<Listen>() {
            Ok(at) => run_init(Some(at)),
            Err(e) => {
                log!("{e}");
                ExitCode::from(2)
            }
        },
        ["serve", "--listen", addr] => match addr.parse::<Listen>() {
            Ok(at) => run_serve(&at),
            Err(e) => {
                log!("{e}");
                ExitCode::from(2)
            }
        },
        ["--version"] => {
            println!("agentvm-guest {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Blocks the signals the signal thread handles, in this thread and so in
/// every thread spawned after it (children get an empty mask from std).
fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
    ] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        log!("cannot block signals: {e}");
    }
    set
}

/// Reaps on SIGCHLD; powers off / exits on the others (PID 1 ignores SIGHUP).
fn start_signal_thread(agent: &Arc<Agent>, set: SigSet) {
    let agent = Arc::clone(agent);
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => agent.reaper.reap(),
                Ok(Signal::SIGHUP) if agent.pid1 => {}
                Ok(_) => agent.shutdown(),
                Err(_) => {}
            }
        });
    if let Err(e) = spawned {
        log!("cannot start the signal thread: {e}");
    }
}

fn announce_ready() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
}

fn run_serve(at: &Listen) -> ExitCode {
    let set = block_signals();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log!("cannot become a child subreaper: {e}");
    }
    let agent = Arc::new(Agent::new(false));
    start_signal_thread(&agent, set);
    let listener = match Listener::bind(at) {
        Ok(l) => l,
        Err(e) => {
            log!("cannot listen on {at:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    announce_ready();
    match listener.serve(&agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("accept failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// PID 1. `listen` replaces vsock (tests run init in a PID namespace).
fn run_init(listen: Option<Listen>) -> ExitCode {
    let set = block_signals();
    init::mount_basics();
    init::ensure_console();
    let agent = Arc::new(Agent::new(true));
    start_signal_thread(&agent, set);
    // Ctrl-Alt-Del becomes SIGINT to us: a clean poweroff.
    let _ = nix::sys::reboot::set_cad_enabled(false);
    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (cfg, warnings) = cmdline::parse(&text);
    for w in warnings {
        log!("{w}");
    }
    init::load_modules();
    init::set_hostname(&cfg.hostname);
    net::configure(&cfg);
    init::mount_shares(&cfg);
    init::run_startup(&agent.reaper);
    let at = listen.unwrap_or(Listen::Vsock(cfg.port));
    let listener = match Listener::bind(&at) {
        Ok(l) => l,
        Err(e) => {
            log!("cannot listen on {at:?}: {e} (is vsock loaded?)");
            init::power_off();
        }
    };
    announce_ready();
    if let Err(e) = listener.serve(&agent) {
        log!("accept failed: {e}");
    }
    init::power_off()
}
