//! The CLI's side of the control socket: a typed call per request.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use agentvm_net::Policy;
use anyhow::{anyhow, bail, Context};

use super::protocol::{decode, encode, DecodeError, MAX_REPLY, VERSION};
use super::protocol::{PolicyChange, Reply, Request, SlotReply, StatsReply, StatusReply};

/// How long a client waits for the VMM to take a request or to reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The VMM speaks another version of the control protocol: it was started
/// by another `agentvm` (it outlives upgrades). Callers tell it from other
/// errors with `anyhow::Error::is`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionMismatch {
    /// The VMM's version (0: from before versions).
    pub vmm: u32,
}

impl fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the running VM was started by a different agentvm version (control protocol {}, \
             this is {VERSION}); run `agentvm down` and `agentvm up`",
            self.vmm
        )
    }
}

impl std::error::Error for VersionMismatch {}

/// A connection to a VMM's control socket. Each call sends one request
/// and waits for its reply; a reply of the wrong kind is an error.
pub struct Client {
    stream: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> anyhow::Result<Client> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("cannot connect to the VMM at {}", path.display()))?;
        Client::over(stream)
    }

    /// A client on a connected `stream`.
    pub fn over(stream: UnixStream) -> anyhow::Result<Client> {
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .context("cannot set a timeout on the control socket")?;
        Ok(Client {
            stream: BufReader::new(stream),
        })
    }

    /// The VM's uptime, memory, pid, readiness and limits.
    pub fn status(&mut self) -> anyhow::Result<StatusReply> {
        match self.call(&Request::Status)? {
            Reply::Status(status) => Ok(status),
            _ => Err(wrong_reply(&Request::Status)),
        }
    }

    /// Asks the VMM to power the guest off within `grace`, then stop; it
    /// does so after replying.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        let request = Request::Stop {
            grace_ms: Some(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)),
        };
        match self.call(&request)? {
            Reply::Stop => Ok(()),
            _ => Err(wrong_reply(&request)),
        }
    }

    /// The network policy in force.
    pub fn net(&mut self) -> anyhow::Result<Policy> {
        match self.call(&Request::Net)? {
            Reply::Net { policy } => Ok(policy),
            _ => Err(wrong_reply(&Request::Net)),
        }
    }

    /// Adds `domains` to the allowlist.
    pub fn net_allow(&mut self, domains: Vec<String>) -> anyhow::Result<PolicyChange> {
        let request = Request::NetAllow { domains };
        match self.call(&request)? {
            Reply::NetAllow(change) => Ok(change),
            _ => Err(wrong_reply(&request)),
        }
    }

    /// Takes `domains` off the allowlist.
    pub fn net_deny(&mut self, domains: Vec<String>) -> anyhow::Result<PolicyChange> {
        let request = Request::NetDeny { domains };
        match self.call(&request)? {
            Reply::NetDeny(change) => Ok(change),
            _ => Err(wrong_reply(&request)),
        }
    }

    /// Sends `request` and reads its reply (an error reply is an error).
    fn call(&mut self, request: &Request) -> anyhow::Result<Reply> {
        let line = encode(request).context("cannot encode the request")?;
        self.stream
            .get_mut()
            .write_all(&line)
            .context("cannot send to the VMM's control socket")?;
        let mut reply = Vec::new();
        (&mut self.stream)
            .take(MAX_REPLY as u64)
            .read_until(b'\n', &mut reply)
            .context("no reply from the VMM's control socket")?;
        match decode::<Reply>(&reply) {
            Ok(Reply::Error { message, .. }) => bail!("the VMM refused: {message}"),
            Ok(reply) => Ok(reply),
            Err(DecodeError::OtherVersion(vmm)) => Err(VersionMismatch { vmm }.into()),
            Err(DecodeError::NotJson(e)) => bail!("the VMM sent a reply that is not JSON ({e})"),
            Err(DecodeError::Invalid(e)) => {
                bail!("the VMM sent a reply this agentvm cannot read ({e})")
            }
        }
    }
}

/// The requests no command sends (people and tools do, and the tests), so
/// that the client covers the whole protocol.
#[allow(dead_code, reason = "no command sends these requests")]
impl Client {
    /// The VM's counters and the balloon's report.
    pub fn stats(&mut self) -> anyhow::Result<StatsReply> {
        match self.call(&Request::Stats)? {
            Reply::Stats(stats) => Ok(stats),
            _ => Err(wrong_reply(&Request::Stats)),
        }
    }

    /// Sets the balloon's target, MiB; returns the target set.
    pub fn balloon(&mut self, target_mib: u64) -> anyhow::Result<u64> {
        let request = Request::Balloon { target_mib };
        match self.call(&request)? {
            Reply::Balloon { target_mib } => Ok(target_mib),
            _ => Err(wrong_reply(&request)),
        }
    }

    /// Asks the guest to drop its caches.
    pub fn reclaim(&mut self) -> anyhow::Result<()> {
        match self.call(&Request::Reclaim)? {
            Reply::Reclaim => Ok(()),
            _ => Err(wrong_reply(&Request::Reclaim)),
        }
    }

    /// Fills a hot-plug slot with a virtio-fs device for `tag`, attached
    /// to the daemon `pid` listening in the state directory.
    pub fn attach_fs(&mut self, tag: &str, pid: u32) -> anyhow::Result<SlotReply> {
        let request = Request::AttachFs {
            tag: tag.to_owned(),
            pid,
        };
        match self.call(&request)? {
            Reply::AttachFs(slot) => Ok(slot),
            _ => Err(wrong_reply(&request)),
        }
    }

    /// Empties the slot of live mount `tag`.
    pub fn detach_fs(&mut self, tag: &str) -> anyhow::Result<SlotReply> {
        let request = Request::DetachFs {
            tag: tag.to_owned(),
        };
        match self.call(&request)? {
            Reply::DetachFs(slot) => Ok(slot),
            _ => Err(wrong_reply(&request)),
        }
    }

    /// Replaces the network policy; returns the one now in force.
    pub fn net_policy(&mut self, policy: Policy) -> anyhow::Result<Policy> {
        let request = Request::NetPolicy { policy };
        match self.call(&request)? {
            Reply::NetPolicy { policy } => Ok(policy),
            _ => Err(wrong_reply(&request)),
        }
    }
}

/// Whether a VMM answers on the control socket at `path`: one of this
/// protocol version, or of another (`down` stops that one by force).
pub fn answers(path: &Path) -> bool {
    match Client::connect(path).and_then(|mut c| c.status()) {
        Ok(_) => true,
        Err(e) => e.is::<VersionMismatch>(),
    }
}

fn wrong_reply(request: &Request) -> anyhow::Error {
    anyhow!(
        "the VMM answered a `{}` request with another reply",
        request.op()
    )
}
