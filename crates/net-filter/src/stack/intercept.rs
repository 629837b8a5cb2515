//! The stack's side of TLS interception ([`crate::intercept`]): taking a
//! held flow over when its server name is a bound host, and recording what
//! intercepted flows did.

use tracing::{debug, warn};

use super::NetStack;
use crate::intercept::{FlowError, HttpError, HttpEvent};
use crate::intercepted::Report;
use crate::judge::Decision;
use crate::peek::Protocol;
use crate::tcp::FlowKey;
use crate::{AuditEvent, Proto, Verdict};

impl NetStack {
    /// Takes an allowed flow over for interception if it is TLS to port
    /// 443 for `name` (the ClientHello's server name, judged handed out
    /// for the flow's address or pinned to it) and a secret is bound to
    /// exactly that name. False when the flow was refused instead (the
    /// budget, the leaf certificate), recorded.
    pub(super) fn start_interception(
        &mut self,
        key: &FlowKey,
        protocol: Protocol,
        name: Option<&str>,
    ) -> bool {
        let (Some(interceptor), Some(name)) = (self.intercept.as_mut(), name) else {
            return true;
        };
        if protocol != Protocol::Tls || key.remote.port() != 443 || !interceptor.binds(name) {
            return true;
        }
        let started = interceptor
            .start(name)
            .map_err(|e| {
                warn!("net: cannot intercept {name}: {e}");
                "cannot intercept the connection"
            })
            .and_then(|flow| {
                self.tcp
                    .intercept(key, flow, name.to_string())
                    .map_err(|_| "network memory budget exhausted")
            });
        match started {
            Ok(()) => true,
            Err(reason) => {
                self.tcp.refuse(key);
                let refused = Decision {
                    allow: false,
                    name: Some(name.to_string()),
                    reason,
                };
                self.record(Proto::Tcp, &refused, key.remote);
                false
            }
        }
    }

    /// Records what intercepted flows did: each substitution, each
    /// refused request or failed upstream.
    pub(super) fn record_intercepted(&mut self) {
        for report in self.tcp.take_reports() {
            let event = match report {
                Report::Substituted {
                    host,
                    remote,
                    event,
                } => {
                    let HttpEvent::Substituted {
                        secret,
                        method,
                        path,
                    } = event;
                    let mut e = AuditEvent::now(Proto::Tcp, Verdict::Allow, "secret substituted")
                        .name(host)
                        .dest(*remote.ip(), remote.port());
                    e.secret = Some(secret);
                    e.method = Some(method);
                    e.path = Some(path);
                    e
                }
                Report::Failed {
                    host,
                    remote,
                    error,
                } => {
                    debug!("net: intercepted flow to {host} failed: {error:?}");
                    let mut e = AuditEvent::now(Proto::Tcp, Verdict::Deny, error.reason())
                        .name(host)
                        .dest(*remote.ip(), remote.port());
                    if let FlowError::Http(HttpError::Unbound {
                        secret,
                        method,
                        path,
                    }) = error
                    {
                        e.secret = Some(secret);
                        e.method = Some(method);
                        e.path = Some(path);
                    }
                    e
                }
            };
            self.audit.record(event);
        }
    }
}
