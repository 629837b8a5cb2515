//! The VMM's control socket: one JSON object per line each way.
//!
//! Requests: `{"op":"status"}`, `{"op":"stop"}`, `{"op":"stats"}`,
//! `{"op":"balloon","target_mib":N}`, `{"op":"reclaim"}`, and the network
//! policy ones:
//!
//! | request | does | reply (besides `"ok"`) |
//! |---|---|---|
//! | `{"op":"net"}` | reads the policy in force | `"policy"` |
//! | `{"op":"net_allow","domains":[D…]}` | adds names to the allowlist | `"policy"`, `"changed"`: the names that were not on it |
//! | `{"op":"net_deny","domains":[D…]}` | takes names off it (exact entries) | `"policy"`, `"changed"`: the names that were on it |
//! | `{"op":"net_policy","policy":P}` | replaces the whole policy | `"policy"` |
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
//! configuration file is not touched). A VM without a network device (mode `off` at
//! start) answers every `net*` request with an error.
//!
//! Every reply has `"ok"`; a failed one has `"error"` too. A request line
//! longer than [`MAX_REQUEST`] or not valid JSON gets an error reply and
//! the connection goes on (an over-long line is skipped to its end).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Longest request line accepted, bytes (a whole policy fits easily).
pub const MAX_REQUEST: usize = 64 << 10;
/// Longest reply line a client accepts, bytes.
const MAX_REPLY: u64 = 1 << 20;
/// How long a client waits for a reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Uptime, memory, pid, readiness.
    Status,
    /// Power the guest off (through its agent), else stop the VM.
    Stop {
        /// How long the guest gets to power off, ms.
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
        policy: agentvm_net::Policy,
    },
}

/// What the VMM answers a request with (`Err` becomes an error reply).
pub trait Handler: Send + Sync {
    /// Answers `request`.
    fn handle(&self, request: Request) -> Result<Value, String>;
}

/// Sends `request` to the control socket at `path` and returns the reply
/// (an error when it says `"ok": false`).
pub fn request(path: &Path, request: &Request) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to the VMM at {}", path.display()))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .context("cannot set a timeout on the control socket")?;
    let mut line = serde_json::to_vec(request).context("cannot encode the request")?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .context("cannot send to the VMM's control socket")?;
    let mut reply = Vec::new();
    BufReader::new(stream.take(MAX_REPLY))
        .read_until(b'\n', &mut reply)
        .context("no reply from the VMM's control socket")?;
    let value: Value = serde_json::from_slice(&reply)
        .map_err(|e| anyhow!("the VMM sent a reply that is not JSON ({e})"))?;
    if value.get("ok") != Some(&Value::Bool(true)) {
        let why = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        bail!("the VMM refused: {why}");
    }
    Ok(value)
}

/// Serves one connection until the peer closes it.
pub fn serve_connection(stream: UnixStream, handler: &dyn Handler) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = match (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply = if n > MAX_REQUEST && !line.ends_with(b"\n") {
            if skip_line(&mut reader).is_err() {
                return;
            }
            error(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            answer(&line, handler)
        };
        let mut out = reply.to_string().into_bytes();
        out.push(b'\n');
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

/// The reply to one request line.
fn answer(line: &[u8], handler: &dyn Handler) -> Value {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return error("empty request".into());
    }
    match serde_json::from_slice::<Request>(trimmed) {
        Ok(request) => match handler.handle(request) {
            Ok(Value::Object(mut fields)) => {
                fields.insert("ok".into(), Value::Bool(true));
                Value::Object(fields)
            }
            Ok(other) => json!({ "ok": true, "value": other }),
            Err(why) => error(why),
        },
        Err(e) => error(format!("bad request: {e}")),
    }
}

fn error(why: String) -> Value {
    json!({ "ok": false, "error": why })
}

/// Reads and drops the rest of an over-long line.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Handler for Echo {
        fn handle(&self, request: Request) -> Result<Value, String> {
            match request {
                Request::Balloon { target_mib } => Ok(json!({ "target_mib": target_mib })),
                Request::Reclaim => Err("no agent".into()),
                other => Ok(json!({ "op": format!("{other:?}") })),
            }
        }
    }

    #[test]
    fn requests_parse_and_bad_lines_get_error_replies() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve_connection(b, &Echo));
        let mut w = a.try_clone().unwrap();
        let mut r = BufReader::new(a);
        let mut ask = |line: &[u8]| {
            w.write_all(line).unwrap();
            let mut reply = String::new();
            r.read_line(&mut reply).unwrap();
            serde_json::from_str::<Value>(&reply).unwrap()
        };
        assert_eq!(ask(b"{\"op\":\"status\"}\n")["ok"], true);
        assert_eq!(
            ask(b"{\"op\":\"balloon\",\"target_mib\":64}\n")["target_mib"],
            64
        );
        let bad = ask(b"{not json\n");
        assert_eq!(bad["ok"], false);
        assert!(bad["error"].as_str().unwrap().contains("bad request"));
        assert_eq!(ask(b"{\"op\":\"fly\"}\n")["ok"], false);
        assert_eq!(ask(b"{\"op\":\"reclaim\"}\n")["error"], "no agent");
        let mut long = vec![b'x'; MAX_REQUEST * 3];
        long.push(b'\n');
        let too_long = ask(&long);
        assert!(too_long["error"].as_str().unwrap().contains("longer"));
        assert_eq!(ask(b"{\"op\":\"stop\"}\n")["ok"], true, "still serving");
        drop(w);
        drop(r);
        server.join().unwrap();
    }

    /// The VMM's network side behind a real socket, driven by [`request`].
    struct Net(crate::lifecycle::net::NetControl);

    impl Handler for Net {
        fn handle(&self, request: Request) -> Result<Value, String> {
            self.0.answer(&request)
        }
    }

    #[test]
    fn net_requests_round_trip() {
        use agentvm_net::{Mode, NetStack, Policy, StackConfig};
        let stack = NetStack::new(StackConfig {
            policy: Policy::new(Mode::Filtered),
            ..StackConfig::default()
        })
        .unwrap();
        let handler = Net(crate::lifecycle::net::NetControl::new(Some(stack.handle())));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for conn in listener.incoming().take(6) {
                serve_connection(conn.unwrap(), &handler);
            }
        });
        let allow = Request::NetAllow {
            domains: vec!["x.test".into(), "Y.test".into()],
        };
        // Every request encodes to one line with a snake_case op and back.
        let line = serde_json::to_string(&allow).unwrap();
        assert_eq!(line, r#"{"op":"net_allow","domains":["x.test","Y.test"]}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), allow);
        let reply = request(&path, &allow).unwrap();
        assert_eq!(reply["changed"], json!(["x.test", "y.test"]));
        assert_eq!(stack.handle().policy().domains, ["x.test", "y.test"]);

        let deny = Request::NetDeny {
            domains: vec!["x.test".into()],
        };
        assert_eq!(request(&path, &deny).unwrap()["changed"], json!(["x.test"]));
        let reply = request(&path, &Request::Net).unwrap();
        assert_eq!(reply["policy"]["domains"], json!(["y.test"]));
        assert_eq!(reply["policy"]["ports"], json!([80, 443]));

        let mut open = Policy::new(Mode::Open);
        open.forwards.push("8080:80".parse().unwrap());
        let replace = Request::NetPolicy {
            policy: open.clone(),
        };
        let line = serde_json::to_string(&replace).unwrap();
        assert!(
            line.starts_with(r#"{"op":"net_policy","policy":{"mode":"open""#),
            "{line}"
        );
        assert!(
            line.contains(r#""forwards":[{"host":"127.0.0.1:8080","guest_port":80}]"#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), replace);
        let reply = request(&path, &replace).unwrap();
        assert_eq!(
            serde_json::from_value::<Policy>(reply["policy"].clone()).unwrap(),
            open
        );
        assert_eq!(stack.handle().policy(), open);

        let err = request(
            &path,
            &Request::NetAllow {
                domains: vec!["no spaces".into()],
            },
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("the VMM refused: `no spaces` is not a domain name"),
            "{err:#}"
        );
        // Unknown fields are refused, not ignored.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"op\":\"net_allow\",\"domain\":\"x.test\"}\n")
            .unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["ok"], false);
        assert!(
            reply["error"].as_str().unwrap().contains("domain"),
            "{reply}"
        );
        server.join().unwrap();
    }
}
