//! The audit log: one JSON line per policy decision (a name resolved or
//! refused, a flow allowed or denied) and per secret substituted into, or
//! request refused on, an intercepted flow ([`crate::intercept`]: the
//! secret's name, never its value), to a file or a callback. The file is
//! capped and rotated ([`RotatingFile`]): a guest that floods the stack with
//! denied connections cannot fill the disk.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tracing::warn;

use crate::rotating::{RotatingFile, DEFAULT_MAX_BYTES};

/// What a decision was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// A DNS query to the stack's resolver.
    Dns,
    /// A TCP connection from the guest.
    Tcp,
    /// A UDP flow from the guest.
    Udp,
    /// A host→guest port forward.
    Forward,
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let through.
    Allow,
    /// Refused (NXDOMAIN, RST, ICMP unreachable).
    Deny,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC time, milliseconds.
    pub time: String,
    /// What kind of traffic.
    pub proto: Proto,
    /// The DNS name involved (the query, or the name an address was handed
    /// out for).
    pub name: Option<String>,
    /// The destination address.
    pub ip: Option<IpAddr>,
    /// The destination port.
    pub port: Option<u16>,
    /// Allowed or denied.
    pub verdict: Verdict,
    /// Why, in a few words.
    pub reason: String,
    /// The secret substituted, or whose placeholder was refused (its name;
    /// intercepted requests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The request's method (intercepted requests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request's path without query (intercepted requests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl AuditEvent {
    /// An event stamped now.
    pub fn now(proto: Proto, verdict: Verdict, reason: impl Into<String>) -> Self {
        AuditEvent {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            proto,
            name: None,
            ip: None,
            port: None,
            verdict,
            reason: reason.into(),
            secret: None,
            method: None,
            path: None,
        }
    }

    /// With the DNS name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// With the destination address and port.
    pub fn dest(mut self, ip: impl Into<IpAddr>, port: u16) -> Self {
        self.ip = Some(ip.into());
        self.port = Some(port);
        self
    }

    /// The event as one JSON line (with its newline).
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode an audit event: {e}\"}}"));
        line.push('\n');
        line
    }
}

type Callback = Arc<dyn Fn(&AuditEvent) + Send + Sync>;

/// Where audit events go. Cloning shares the destination.
#[derive(Clone, Default)]
pub enum Audit {
    /// Nowhere (events are still logged at trace level).
    #[default]
    None,
    /// Appended to a file, one line per event, written as it happens.
    File(Arc<Mutex<RotatingFile>>),
    /// Handed to a function.
    Callback(Callback),
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Audit::None => "Audit::None",
            Audit::File(_) => "Audit::File",
            Audit::Callback(_) => "Audit::Callback",
        })
    }
}

impl Audit {
    /// Appends to `path` (created if missing), rotated at
    /// [`DEFAULT_MAX_BYTES`].
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        Self::to_file_capped(path, DEFAULT_MAX_BYTES)
    }

    /// Appends to `path` (created if missing); when it would pass
    /// `max_bytes` it becomes `path.1` and a new file starts.
    pub fn to_file_capped(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let file = RotatingFile::open(path, max_bytes)?;
        Ok(Audit::File(Arc::new(Mutex::new(file))))
    }

    /// Calls `f` for every event.
    pub fn callback(f: impl Fn(&AuditEvent) + Send + Sync + 'static) -> Self {
        Audit::Callback(Arc::new(f))
    }

    /// Records `event`. A failed write is logged, never fatal.
    pub fn record(&self, event: AuditEvent) {
        tracing::trace!(?event, "net audit");
        match self {
            Audit::None => {}
            Audit::File(file) => {
                let line = event.to_line();
                let result = match file.lock() {
                    Ok(mut f) => f.write_record(line.as_bytes()),
                    Err(poisoned) => poisoned.into_inner().write_record(line.as_bytes()),
                };
                if let Err(e) = result {
                    warn!("net: cannot write the audit log: {e}");
                }
            }
            Audit::Callback(f) => f(&event),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn events_are_one_json_line_each_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::to_file(&path).unwrap();
        audit.record(
            AuditEvent::now(Proto::Tcp, Verdict::Deny, "port not allowed")
                .name("a.test")
                .dest(Ipv4Addr::new(1, 2, 3, 4), 22),
        );
        audit
            .clone()
            .record(AuditEvent::now(Proto::Dns, Verdict::Allow, "allowlisted").name("b.test"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["proto"], "tcp");
        assert_eq!(lines[0]["verdict"], "deny");
        assert_eq!(lines[0]["ip"], "1.2.3.4");
        assert_eq!(lines[0]["port"], 22);
        assert_eq!(lines[0]["name"], "a.test");
        assert_eq!(lines[0]["reason"], "port not allowed");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["name"], "b.test");
        assert_eq!(lines[1]["ip"], serde_json::Value::Null);
    }

    #[test]
    fn callbacks_see_every_event() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let audit = Audit::callback(move |e| s.lock().unwrap().push(e.verdict));
        audit.record(AuditEvent::now(Proto::Udp, Verdict::Allow, "x"));
        audit.record(AuditEvent::now(Proto::Udp, Verdict::Deny, "y"));
        assert_eq!(*seen.lock().unwrap(), [Verdict::Allow, Verdict::Deny]);
    }
}
