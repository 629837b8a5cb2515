//! `agentvm-guest`: the agentvm guest agent.
//!
//! As PID 1 of the guest initramfs (`agentvm-guest` with no arguments, or
//! `agentvm-guest init [--listen ADDR]`) it sets the guest up — see [`init`] for the files it
//! reads and [`cmdline`] for the kernel command line — then serves the exec
//! protocol ([`agentvm_protocol`]) on vsock port 1024 and prints
//! `agentvm-guest: ready` on the console.
//!
//! `agentvm-guest serve --listen ADDR [--root DIR] [--user NAME]` serves the
//! same protocol as an ordinary process (a child subreaper), for tests on the
//! host: ADDR is `unix:PATH`, `vsock:PORT` or `fd:N` (an inherited listening
//! socket); DIR is where `etc/passwd` and `etc/group` are read (default `/`);
//! NAME is the user requests without one run as (default: the agent's own,
//! as PID 1 `agentvm.user` sets it). It prints the same
//! ready line on stdout. A `Poweroff` request (or SIGTERM/SIGINT/SIGHUP) ends
//! it with status 0 after killing the sessions' process groups.
//!
//! Threads: one per session, one that owns signals and reaping (see
//! [`reaper`]), the accept loop on the main thread.

mod accounts;
mod boot_times;
mod cmdline;
mod dhcp;
mod files;
mod identity;
mod init;
mod live_mount;
mod loopdev;
mod net;
mod reaper;
mod root;
mod server;
mod session;
mod spawn;
mod ssh_agent;
mod trust;
mod user;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

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
       agentvm-guest serve --listen ADDR [--root DIR] [--user NAME]
                                                (ADDR: unix:PATH, vsock:PORT or fd:N)";

/// State shared by all sessions.
pub struct Agent {
    reaper: Reaper,
    /// Where `etc/passwd` is looked up.
    root: PathBuf,
    /// Environment from the host's `Configure` (secrets: memory only).
    env: RwLock<EnvList>,
    /// Environment the agent's own set-up adds (`SSH_AUTH_SOCK`), before
    /// the host's; set once, before serving.
    boot_env: OnceLock<EnvList>,
    /// Who runs requests that name no user (set once, before serving).
    default_user: OnceLock<String>,
    /// The root whose trust store a `Configure` CA goes to: `/` as PID 1,
    /// `serve --root DIR`'s directory, else none (a test agent on the host
    /// never touches the host's own store).
    trust_root: Option<PathBuf>,
    pid1: bool,
}

impl Agent {
    fn new(pid1: bool) -> Agent {
        Agent {
            reaper: Reaper::default(),
            root: PathBuf::from("/"),
            env: RwLock::new(Vec::new()),
            boot_env: OnceLock::new(),
            default_user: OnceLock::new(),
            trust_root: pid1.then(|| PathBuf::from("/")),
            pid1,
        }
    }

    /// The user requests without one run as; `None`: the agent's own.
    pub fn default_user(&self) -> Option<&str> {
        self.default_user.get().map(String::as_str)
    }

    /// The environment every command gets: the agent's own, then the
    /// host's `Configure` (which may override it).
    pub fn env(&self) -> EnvList {
        let configured = self.env.read().unwrap_or_else(PoisonError::into_inner);
        let mut env = self.boot_env.get().cloned().unwrap_or_default();
        env.extend(configured.iter().cloned());
        env
    }

    /// Replaces the configured environment.
    pub fn set_env(&self, env: EnvList) {
        *self.env.write().unwrap_or_else(PoisonError::into_inner) = env;
    }

    /// Carries out a `Configure`: installs the CA, if any, in the trust
    /// store, then replaces the configured environment with the CA's
    /// variables followed by `env` (so the host's `[env]` can still
    /// override them). On failure the environment is left as it was.
    pub fn configure(&self, env: EnvList, ca: Option<&[u8]>) -> Result<(), String> {
        let mut all = match ca {
            None => Vec::new(),
            Some(pem) => {
                let root = self
                    .trust_root
                    .as_deref()
                    .ok_or("this agent has no trust store to add a CA to (serve without --root)")?;
                trust::install(root, pem).map_err(|e| session::error_chain(&e))?
            }
        };
        all.extend(env);
        self.set_env(all);
        Ok(())
    }

    /// Carries out a `File`: writes it for the default user (root when
    /// there is none) under the trust root (`/` as PID 1), never on a test
    /// agent's host.
    pub fn put_file(&self, copy: &agentvm_protocol::frame::FileCopy) -> Result<(), String> {
        let root = self
            .trust_root
            .as_deref()
            .ok_or("this agent has no root to write files into (serve without --root)")?;
        let spec = self
            .default_user()
            .map_or_else(|| nix::unistd::getuid().as_raw().to_string(), str::to_owned);
        let user = user::lookup_in(root, &spec)
            .ok_or_else(|| format!("the default user {spec:?} is not in the guest's passwd"))?;
        let owner = files::Owner {
            uid: user.uid,
            gid: user.gid,
            home: user.home,
        };
        let at = files::write(root, &owner, copy).map_err(|e| session::error_chain(&e))?;
        log!("wrote {} for {}", at.display(), user.name);
        Ok(())
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
        ["serve", rest @ ..] => match ServeArgs::parse(rest) {
            Ok(a) => run_serve(a),
            Err(e) => {
                log!("{e}");
                eprintln!("{USAGE}");
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

/// `serve`'s options.
struct ServeArgs {
    listen: Listen,
    root: Option<PathBuf>,
    user: Option<String>,
}

impl ServeArgs {
    fn parse(args: &[&str]) -> Result<ServeArgs, String> {
        let (mut listen, mut root, mut user) = (None, None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match *flag {
                "--listen" => listen = Some(value.parse::<Listen>().map_err(|e| e.to_string())?),
                "--root" => root = Some(PathBuf::from(value)),
                "--user" => user = Some((*value).to_owned()),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(ServeArgs {
            listen: listen.ok_or("serve needs --listen")?,
            root,
            user,
        })
    }
}

fn run_serve(args: ServeArgs) -> ExitCode {
    let set = block_signals();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log!("cannot become a child subreaper: {e}");
    }
    let mut agent = Agent::new(false);
    if let Some(root) = args.root {
        agent.trust_root = Some(root.clone());
        agent.root = root;
    }
    if let Some(user) = args.user {
        let _ = agent.default_user.set(user);
    }
    let agent = Arc::new(agent);
    start_signal_thread(&agent, set);
    let at = &args.listen;
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
    let mut times = boot_times::BootTimes::start();
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
    times.mark("modules_loaded");
    let switched = cfg.rootfs.as_ref().is_some_and(|rootfs| {
        match root::setup(rootfs, &cfg.upper, &root::Layout::guest(), &init::VirtioFs) {
            Ok(notes) => {
                for n in notes {
                    log!("{n}");
                }
                true
            }
            Err(e) => {
                let msg = session::error_chain(&e);
                log!("{msg}; staying on the initramfs root");
                false
            }
        }
    });
    times.mark("root_ready");
    init::set_hostname(&cfg.hostname);
    net::configure(&cfg);
    times.mark("network_started");
    // The user (and so their home) before the shares: plugins mount agent
    // homes inside it, and a home made by those mounts would be root's.
    let account = cfg
        .user
        .as_ref()
        .and_then(|spec| match accounts::ensure(Path::new("/"), spec) {
            Ok((account, notes)) => {
                for n in notes {
                    log!("{n}");
                }
                Some(account)
            }
            Err(e) => {
                log!(
                    "cannot set up user {}: {e}; commands run as root",
                    spec.name
                );
                None
            }
        });
    init::mount_shares(&cfg);
    // The overlay (6.1) and virtio-fs lack O_TMPFILE: /var/tmp gets a tmpfs
    // like /tmp, and the host may name more directories (agentvm.tmpfs).
    let mut tmpfs = cfg.tmpfs.clone();
    if switched {
        tmpfs.insert(0, "/var/tmp".to_owned());
    }
    let owner = account.as_ref().map(|a| (a.home.as_str(), a.uid, a.gid));
    init::mount_tmpfs(&tmpfs, owner);
    times.mark("shares_mounted");
    if let Some(port) = cfg.ssh_agent {
        let owner = account.as_ref().map(|a| (a.uid, a.gid));
        let connect = std::sync::Arc::new(ssh_agent::vsock_to_host(port));
        match ssh_agent::start(Path::new(ssh_agent::SOCKET), owner, connect) {
            Ok(()) => {
                let sock = (
                    b"SSH_AUTH_SOCK".to_vec(),
                    ssh_agent::SOCKET.as_bytes().to_vec(),
                );
                let _ = agent.boot_env.set(vec![sock]);
            }
            Err(e) => log!("cannot serve the host's ssh-agent: {e}"),
        }
    }
    if let Some(a) = account {
        let _ = agent.default_user.set(a.name);
    }
    times.mark("user_and_ssh_agent");
    init::run_startup(&agent.reaper);
    times.mark("startup_scripts");
    let at = listen.unwrap_or(Listen::Vsock(cfg.port));
    let listener = match Listener::bind(&at) {
        Ok(l) => l,
        Err(e) => {
            log!("cannot listen on {at:?}: {e} (is vsock loaded?)");
            init::power_off();
        }
    };
    times.mark("ready");
    times.write();
    announce_ready();
    if let Err(e) = listener.serve(&agent) {
        log!("accept failed: {e}");
    }
    init::power_off()
}
