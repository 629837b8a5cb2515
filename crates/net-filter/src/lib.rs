//! agentvm-net: the user-mode network stack behind agentvm's virtio-net
//! device, and the egress policy it enforces.
//!
//! The stack is frame-in / frame-out and knows nothing of virtio: the
//! device hands it the Ethernet frames the guest sends
//! ([`NetStack::push_frame`]) and takes the frames for the guest
//! ([`NetStack::pop_frame`]). Behind it, every guest TCP connection is
//! terminated in the stack (smoltcp) and spliced to a non-blocking host
//! socket, every UDP flow gets a host socket of its own, and the stack's
//! DNS server answers only what the [`Policy`] allows. Host sockets are
//! watched by one epoll instance whose fd (`NetStack::as_raw_fd`) the
//! device's event loop waits on, next to a timer for
//! [`NetStack::poll_delay`].
//!
//! The guest sees slirp's network: it is 10.0.2.15/24 (by DHCP), the
//! gateway is 10.0.2.2, the DNS server 10.0.2.3 ([`addr`]).
//!
//! | file | what it does |
//! |------|--------------|
//! | `addr.rs` | the network's addresses, always-blocked host ranges |
//! | `policy.rs` | modes, allowed names and ports, host pins, forwards |
//! | `audit.rs` | one JSON line per decision |
//! | `rotating.rs` | size-capped log files rotated once (the audit log, the CLI's console log) |
//! | `stack/` | [`NetStack`]: the poll loop (`mod.rs`), what each guest frame is (`classify.rs`) |
//! | `judge.rs` | the policy's verdict on a flow's destination and on the name its first bytes ask for |
//! | `peek/` | the TLS server name and HTTP `Host` of a flow's first bytes, held until judged |
//! | `phy.rs` | the frame queues smoltcp sends and receives through (guest frames routed to their socket, frame buffers reused) |
//! | `frames.rs` | frames the stack builds itself (UDP, ICMP, RST) |
//! | `dhcp.rs` | the DHCP server |
//! | `dns/` | the DNS server with the allowlist and the handed-out table, over UDP and TCP (`tcp.rs`), asking upstream again over TCP for truncated answers (`upstream_tcp.rs`) |
//! | `tcp.rs` | guest TCP connections spliced to host sockets |
//! | `budget.rs` | the memory budget every flow and queue is charged to |
//! | `buffers.rs` | the TCP sockets with their buffers (each mapped on its own), each in a socket set of its own so smoltcp runs only for those with work |
//! | `caps.rs` | a cap's counter and its one warning per episode |
//! | `udp.rs` | guest UDP flows on host sockets |
//! | `forward.rs` | host→guest port forwards |
//! | `secrets.rs` | secrets the guest holds only a placeholder of |
//! | `intercepted.rs` | an intercepted flow's two sockets as its pipes |
//! | `intercept/` | TLS interception of flows to hosts a secret is bound to, placeholder substitution |
#![deny(missing_docs)]

pub mod addr;
pub mod audit;
mod budget;
mod buffers;
mod caps;
mod dhcp;

pub mod dns;
mod forward;
mod frames;
pub mod intercept;
mod intercepted;
mod judge;
pub mod peek;
mod phy;
pub mod policy;
pub mod rotating;
pub mod secrets;
mod stack;
mod tcp;
#[cfg(feature = "testing")]
pub mod testing;
mod udp;

pub use audit::{Audit, AuditEvent, Proto, Verdict};
pub use budget::DEFAULT_BUDGET;
pub use policy::{Forward, Mode, Policy, PolicyError};
pub use stack::{NetError, NetHandle, NetStack, StackConfig, StackStats, DEFAULT_MTU};
pub use tcp::MAX_FLOWS as MAX_TCP_FLOWS;
