//! The control protocol's messages and their framing: one JSON object per
//! line, `{"version":N, …body}`. Both ends encode and decode through
//! [`encode`] and [`decode`], so the version check cannot be forgotten.

use agentvm_net::{Mode, Policy};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// The protocol version this `agentvm` speaks. Raise it with any change
/// to a message that an older peer would read differently. 0 is the
/// untyped protocol from before versions (its lines carry none).
pub const VERSION: u32 = 1;
/// Longest request line the VMM accepts, bytes (a whole policy fits easily).
pub const MAX_REQUEST: usize = 64 << 10;
/// Longest reply line a client accepts, bytes.
pub const MAX_REPLY: usize = 1 << 20;

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Uptime, memory, pid, readiness, limits.
    Status,
    /// Power the guest off (through its agent), else stop the VM.
    Stop {
        /// How long the guest gets to power off, ms (absent: the VMM's
        /// default).
        #[serde(default)]
        grace_ms: Option<u64>,
    },
    /// VM counters and, when the guest answers, balloon statistics.
    Stats,
    /// Set the balloon's target.
    Balloon {
        /// Memory taken from the guest, MiB.
        target_mib: u64,
    },
    /// Ask the guest to drop its caches (free page reporting returns them).
    Reclaim,
    /// The network policy in force.
    Net,
    /// Add names to the network allowlist.
    NetAllow {
        /// The names (each covers the names below it).
        domains: Vec<String>,
    },
    /// Take names off the network allowlist.
    NetDeny {
        /// The names, as listed.
        domains: Vec<String>,
    },
    /// Replace the network policy.
    NetPolicy {
        /// The new policy.
        policy: Policy,
    },
    /// Put a virtio-fs device into a free hot-plug slot, connected to the
    /// virtiofsd the CLI started on `virtiofs-<tag>.sock` in the state
    /// directory (`agentvm mount`).
    AttachFs {
        /// The virtio-fs tag (letters, digits, `._-`).
        tag: String,
        /// The daemon's pid (shown only).
        pid: u32,
    },
    /// Empty the slot of live mount `tag` (`agentvm unmount`).
    DetachFs {
        /// The virtio-fs tag.
        tag: String,
    },
}

impl Request {
    /// The request's `op`, as on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Stop { .. } => "stop",
            Request::Stats => "stats",
            Request::Balloon { .. } => "balloon",
            Request::Reclaim => "reclaim",
            Request::Net => "net",
            Request::NetAllow { .. } => "net_allow",
            Request::NetDeny { .. } => "net_deny",
            Request::NetPolicy { .. } => "net_policy",
            Request::AttachFs { .. } => "attach_fs",
            Request::DetachFs { .. } => "detach_fs",
        }
    }
}

/// A control reply: one variant per request, named as its op, or an error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Answers [`Request::Status`].
    Status(StatusReply),
    /// Answers [`Request::Stop`]: the VM is stopping.
    Stop,
    /// Answers [`Request::Stats`].
    Stats(StatsReply),
    /// Answers [`Request::Balloon`].
    Balloon {
        /// The target now set, MiB.
        target_mib: u64,
    },
    /// Answers [`Request::Reclaim`]: the guest dropped its caches.
    Reclaim,
    /// Answers [`Request::Net`].
    Net {
        /// The policy in force.
        policy: Policy,
    },
    /// Answers [`Request::NetAllow`].
    NetAllow(PolicyChange),
    /// Answers [`Request::NetDeny`].
    NetDeny(PolicyChange),
    /// Answers [`Request::NetPolicy`].
    NetPolicy {
        /// The policy now in force (names normalized).
        policy: Policy,
    },
    /// Answers [`Request::AttachFs`].
    AttachFs(SlotReply),
    /// Answers [`Request::DetachFs`].
    DetachFs(SlotReply),
    /// The request was not served.
    Error {
        /// Why, as a kind a program can act on.
        kind: ErrorKind,
        /// Why, in words. Named `error` on the wire: the clients from
        /// before versions print that field, so they show this message.
        #[serde(rename = "error")]
        message: String,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Why a request was not served.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is no request of this protocol: empty, not JSON, too
    /// long, an unknown op or field.
    BadRequest,
    /// The request is of another protocol version (or of none).
    Version,
    /// The connection sent more requests than one connection may; the VMM
    /// closes it.
    TooManyRequests,
    /// The VMM could not do what was asked (the message says why).
    Failed,
}

/// The VM as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReply {
    /// Time since the VMM started serving, ms.
    pub uptime_ms: u64,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// The VMM's resident memory, KiB (0 when unknown).
    pub rss_kib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The VMM's process id.
    pub pid: u32,
    /// The network mode in force (`off` without a network device).
    pub network_mode: Mode,
    /// Whether the guest agent has said it serves.
    pub ready: bool,
    /// The VM's caps and how often each was hit.
    pub limits: Limits,
    /// When the VMM reached each step of the start (`up --timings`); absent
    /// from a VMM older than it.
    #[serde(default)]
    pub boot: Option<VmmStamps>,
}

/// When the VMM reached each step of a start, host monotonic microseconds
/// (`up --timings`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmmStamps {
    /// The VMM process's `main` began.
    pub started_us: u64,
    /// The build began (the configuration read, the console open).
    pub build_us: u64,
    /// Devices (the shares' virtiofsd among them), microseconds taken.
    pub devices_us: u64,
    /// VM, guest RAM and interrupt controller.
    pub memory_us: u64,
    /// Kernel, initrd and boot tables.
    pub boot_image_us: u64,
    /// vCPUs.
    pub vcpus_us: u64,
    /// The vCPUs were started.
    pub running_us: u64,
    /// The ready line passed the console (0: not yet).
    pub ready_us: u64,
}

/// The VM's caps and how often each was hit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Guest vsock connections refused at the cap.
    pub vsock_refused: u64,
    /// The cap on open vsock connections.
    pub vsock_connections_max: u64,
    /// The network stack's; `None` without a network device.
    pub net: Option<NetLimits>,
}

/// The network stack's caps and how often each was hit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetLimits {
    /// Memory the stack's connection buffers use now, KiB.
    pub net_memory_used_kib: u64,
    /// The most they used, KiB.
    pub net_memory_peak_kib: u64,
    /// The stack's memory budget, KiB.
    pub net_memory_limit_kib: u64,
    /// Open TCP flows.
    pub tcp_flows: u64,
    /// The cap on open TCP flows.
    pub tcp_flows_max: u64,
    /// TCP connections refused at the flow cap.
    pub tcp_refused_cap: u64,
    /// TCP connections refused by the memory budget.
    pub tcp_refused_memory: u64,
    /// Open UDP flows.
    pub udp_flows: u64,
    /// UDP flows dropped to make room for new ones.
    pub udp_evicted: u64,
    /// DNS queries refused with too many upstream.
    pub dns_busy: u64,
}

/// The hot-plug slot a live mount is (or was) in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlotReply {
    /// The slot's index among the hot-plug slots.
    pub slot: usize,
    /// Guest-physical base of its virtio-mmio window (the guest finds
    /// the device by it).
    pub base: u64,
    /// The virtio-fs tag.
    pub tag: String,
}

/// The VM's counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsReply {
    /// Time since the vCPUs started, ms.
    pub uptime_ms: u64,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// The VMM's resident memory, KiB (0 when unknown).
    pub rss_kib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Port-I/O exits so far, all vCPUs.
    pub pio_exits: u64,
    /// MMIO exits so far, all vCPUs.
    pub mmio_exits: u64,
    /// The balloon's report, or why there is none.
    pub balloon: BalloonStatus,
}

/// The balloon's part of [`StatsReply`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalloonStatus {
    /// The guest answered.
    Report(BalloonStats),
    /// No report (no balloon driver, no answer in time): why.
    Unavailable(String),
}

/// The balloon's counters and the guest's statistics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BalloonStats {
    /// The target the host set, 4 KiB pages.
    pub target_pages: u32,
    /// Pages the guest says the balloon holds.
    pub actual_pages: u32,
    /// Pages the device holds.
    pub held_pages: u64,
    /// Bytes the guest reported free.
    pub reported_bytes: u64,
    /// The guest's statistics, as the device decoded them.
    pub guest_stats: String,
}

/// What `net_allow` or `net_deny` did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyChange {
    /// The policy now in force.
    pub policy: Policy,
    /// The names the request added (allow) or took off (deny), normalized.
    pub changed: Vec<String>,
}

/// A message on the wire: its version and its body's fields side by side.
#[derive(Serialize, Deserialize)]
struct Message<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

/// The version of a line, read before its body: the one field every
/// version keeps.
#[derive(Deserialize)]
struct Version {
    version: Option<u32>,
}

/// Why a line is no message of this protocol.
#[derive(Debug)]
pub enum DecodeError {
    /// Not JSON.
    NotJson(serde_json::Error),
    /// A message of protocol version `.0` (0: from before versions).
    OtherVersion(u32),
    /// JSON of this version, but no message of this protocol.
    Invalid(serde_json::Error),
}

/// `body` as one line of this version, `\n` included.
pub fn encode<T: Serialize>(body: &T) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&Message {
        version: VERSION,
        body,
    })?;
    line.push(b'\n');
    Ok(line)
}

/// The body of `line` (one JSON object; surrounding white space is fine),
/// when it is of this version.
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice::<IgnoredAny>(line).map_err(DecodeError::NotJson)?;
    if !line.trim_ascii_start().starts_with(b"{") {
        return Err(DecodeError::Invalid(serde::de::Error::custom(
            "a message is a JSON object",
        )));
    }
    let version = serde_json::from_slice::<Version>(line)
        .map_err(DecodeError::Invalid)?
        .version
        .unwrap_or(0);
    if version != VERSION {
        return Err(DecodeError::OtherVersion(version));
    }
    serde_json::from_slice::<Message<T>>(line)
        .map(|m| m.body)
        .map_err(DecodeError::Invalid)
}
