//! The VMM's control socket: the typed protocol between the CLI and
//! `agentvm __vmm` ([`protocol`]), the VMM's side ([`server`]) and the
//! CLI's ([`client`]). The socket is owner-only, like every socket agentvm
//! creates.
//!
//! One JSON object per line each way. Every line carries the protocol's
//! [`protocol::VERSION`] beside its body: a request names its `"op"`, a reply its
//! `"reply"` (the op it answers, or `"error"`):
//!
//! ```text
//! → {"version":1,"op":"net_allow","domains":["github.com"]}
//! ← {"version":1,"reply":"net_allow","policy":{…},"changed":["github.com"]}
//! → {"version":1,"op":"fly"}
//! ← {"version":1,"reply":"error","kind":"bad_request","error":"bad request: unknown variant `fly`, …"}
//! ```
//!
//! | op | request fields | reply fields |
//! |---|---|---|
//! | `status` | | `uptime_ms`, `memory_mib`, `rss_kib`, `vcpus`, `pid`, `network_mode`, `ready`, `limits` |
//! | `stop` | `grace_ms` (optional) | none: the VMM powers the guest off, then stops, after replying |
//! | `stats` | | `uptime_ms`, `memory_mib`, `rss_kib`, `vcpus`, `pio_exits`, `mmio_exits`, `balloon` |
//! | `balloon` | `target_mib` | `target_mib` |
//! | `reclaim` | | none |
//! | `net` | | `policy`: the policy in force |
//! | `net_allow` | `domains` | `policy`, `changed`: the names that were not on the allowlist |
//! | `net_deny` | `domains` | `policy`, `changed`: the names that were on it (exact entries) |
//! | `net_policy` | `policy` | `policy`: the whole new policy |
//! | `attach_fs` | `tag`, `pid` | `slot`, `base`, `tag`: the hot-plug slot now holding the virtio-fs device |
//! | `detach_fs` | `tag` | `slot`, `base`, `tag`: the slot just emptied |
//!
//! A policy is `{"mode":"off"|"filtered"|"open","domains":[…],"ports":[…],
//! "hosts":{NAME:IPV4…},"forwards":[{"host":"ADDR:PORT","guest_port":N}…]}`
//! (`agentvm_net::Policy`); names are normalized (lower case, no trailing
//! dot) and checked, and a bad one fails the whole request. Allow and deny
//! edit the policy in the VMM, one request at a time, so two clients never
//! undo each other's change as a read-then-replace would; `net_policy` is
//! for tools that own the whole policy. Every change applies to the
//! running guest at once (flows the new policy denies are closed, forward
//! listeners open and close with it) and lasts until the VM stops (the
//! configuration file is not touched). A VM without a network device
//! (mode `off` at start) answers every `net*` request with an error.
//!
//! **Versions.** `version` is the one field every version of the protocol
//! keeps, so that both ends can tell a peer of another version from a
//! broken one. The VMM answers a request of another version (or of none:
//! the untyped protocol before versions, counted as 0) with an error of
//! kind `version` and does nothing else; the client turns a reply of
//! another version into [`client::VersionMismatch`], which tells the user
//! to restart the VM (a VMM outlives an upgrade of the `agentvm` that
//! started it).
//!
//! **Errors.** A reply `"error"` has a `kind` ([`protocol::ErrorKind`]) and the
//! message under `"error"` (where the unversioned clients looked for it,
//! so they show it too). A line that is not a request of this protocol,
//! longer than [`protocol::MAX_REQUEST`], or past the [`server::MAX_REQUESTS`] of a
//! connection gets an error reply; only the last closes the connection
//! (an over-long line is skipped to its end). Nothing a client sends
//! makes the VMM panic.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{Client, VersionMismatch};
pub use protocol::{
    BalloonStats, BalloonStatus, Limits, NetLimits, PolicyChange, Reply, Request, SlotReply,
    StatsReply, StatusReply, VmmStamps,
};
pub use server::{serve_connection, Handler};

#[cfg(test)]
mod tests;
