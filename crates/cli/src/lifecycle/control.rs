//! The VMM's control socket: one JSON object per line each way.
//!
//! Requests: `{"op":"status"}`, `{"op":"stop"}`, `{"op":"stats"}`,
//! `{"op":"balloon","target_mib":N}`, `{"op":"reclaim"}`. Every reply has
//! `"ok"`; a failed one has `"error"` too. A request line longer than
//! [`MAX_REQUEST`] or not valid JSON gets an error reply and the
//! connection goes on (an over-long line is skipped to its end).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Longest request line accepted, bytes.
pub const MAX_REQUEST: usize = 4096;
/// Longest reply line a client accepts, bytes.
const MAX_REPLY: u64 = 1 << 20;
/// How long a client waits for a reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
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
}
