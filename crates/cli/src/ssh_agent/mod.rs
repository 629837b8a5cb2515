//! Forwarding the host's ssh-agent to the guest (`[ssh] agent = true`,
//! `agentvm boot --ssh-agent`), so `git push` over ssh works in the VM
//! while the private keys stay in the host's agent.
//!
//! The path of a connection:
//!
//! ```text
//! guest: ssh ── $SSH_AUTH_SOCK (/run/agentvm/ssh-agent.sock, the guest agent)
//!        ── vsock to host port 1025 (agentvm_protocol::SSH_AGENT_PORT)
//! VMM:   <vsock uds>_1025 (owner-only) ── this relay ── filter ── the host's $SSH_AUTH_SOCK
//! ```
//!
//! The guest agent only splices bytes; everything that matters happens
//! here, on the host: each guest connection gets its own connection to
//! the host's agent and its own [`filter::Session`], which lets through
//! listing keys (only the allowed ones), signing with an allowed key and
//! OpenSSH's `session-bind`, and answers everything else — adding,
//! removing, locking keys — with `SSH_AGENT_FAILURE` itself. Messages are
//! read whole, at most [`wire::MAX_MESSAGE`] bytes, before they are
//! judged; a longer or malformed frame ends the connection.
//!
//! The relay runs in the VMM process (`__vmm`), started after the VM is
//! built (so under its Landlock rules; connecting to a Unix socket is not
//! a file access Landlock restricts) on a thread confined to the
//! `ssh-agent relay` seccomp list, with at most [`MAX_CONNECTIONS`] guest
//! connections at a time. The host agent's socket path is captured by
//! `up` (the VMM's environment is scrubbed) and kept in the private state
//! directory's snapshot.

pub mod filter;
pub mod host;
pub mod wire;

use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentvm_vmm::seccomp::{self, SeccompLevel, ThreadKind};

use filter::{Policy, Session, Step};

pub use agentvm_protocol::SSH_AGENT_PORT;

/// Guest connections served at once; more are closed at once (an `ssh`
/// holds one while it runs, so this is many concurrent `git push`es).
pub const MAX_CONNECTIONS: usize = 8;

/// How long the host's agent may take to answer (a hardware key waiting
/// for a touch, `ssh-add -c` asking for confirmation).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the VMM listens for the guest's connections: the vsock device
/// connects guest connections to host port P to `<uds>_P`.
pub fn socket_path(vsock: &Path) -> PathBuf {
    let mut path = vsock.as_os_str().to_owned();
    path.push(format!("_{SSH_AGENT_PORT}"));
    PathBuf::from(path)
}

/// The relay, bound and not yet serving.
#[derive(Debug)]
pub struct Relay {
    listener: UnixListener,
    upstream: PathBuf,
    policy: Arc<Policy>,
}

impl Relay {
    /// Listens (owner-only) on `listen` for guest connections, to be
    /// relayed to the agent socket `upstream` under `policy`.
    pub fn bind(listen: &Path, upstream: PathBuf, policy: Policy) -> io::Result<Relay> {
        let _ = std::fs::remove_file(listen);
        let listener = agentvm_devices::socket::bind_owner_only(listen)?;
        Ok(Relay {
            listener,
            upstream,
            policy: Arc::new(policy),
        })
    }

    /// Serves on a thread of its own, confined to the relay's seccomp list
    /// at `level` (its connection threads inherit the filter).
    pub fn start(self, level: SeccompLevel) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ssh-agent".into())
            .spawn(move || {
                if let Err(e) = seccomp::install(level, ThreadKind::SshAgent) {
                    eprintln!("agentvm: {e}; the guest gets no ssh-agent");
                    return;
                }
                self.serve();
            })
    }

    /// Accepts guest connections until the listener fails.
    fn serve(self) {
        let active = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            let guest = match conn {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("agentvm: the ssh-agent relay stopped: {e}");
                    return;
                }
            };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(
                    "ssh-agent: {MAX_CONNECTIONS} guest connections open; one more refused"
                );
                continue;
            }
            let (upstream, policy, slot) =
                (self.upstream.clone(), self.policy.clone(), active.clone());
            let spawned = std::thread::Builder::new()
                .name("ssh-agent-conn".into())
                .spawn(move || {
                    if let Err(e) = relay_connection(guest, &upstream, &policy) {
                        tracing::debug!("ssh-agent: guest connection ended: {e}");
                    }
                    slot.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                active.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("ssh-agent: cannot start a connection thread: {e}");
            }
        }
    }
}

/// Relays one guest connection to a new connection to the agent at
/// `upstream`, filtered by `policy`, until either side ends it.
pub fn relay_connection(mut guest: UnixStream, upstream: &Path, policy: &Policy) -> io::Result<()> {
    let mut agent = UnixStream::connect(upstream)?;
    agent.set_read_timeout(Some(AGENT_TIMEOUT))?;
    let mut session = Session::new(policy);
    while let Some(request) = wire::read_message(&mut guest)? {
        let answer = match session.request(&request) {
            Step::Forward(body) => {
                agent.write_all(&wire::frame(&body))?;
                let reply = wire::read_message(&mut agent)?
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                session.reply(&reply)
            }
            Step::Refuse(why) => {
                tracing::debug!("ssh-agent: guest request refused: {why}");
                wire::bare(wire::msg::FAILURE)
            }
        };
        guest.write_all(&wire::frame(&answer))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
