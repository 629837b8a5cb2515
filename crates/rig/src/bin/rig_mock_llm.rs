//! `rig-mock-llm --listen ADDR --write PATH --content TEXT --log FILE`: the
//! stand-in Messages API ([`agentvm_rig::mock_llm`]) over HTTP/1.1, one
//! thread per connection, each request logged (method, path, model, what
//! it answered) as one line of FILE. Runs in L1, static.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use agentvm_rig::mock_llm::{decide, events, message, Reply, Script};

/// The largest request body read.
const MAX_BODY: usize = 16 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1].clone())
            .unwrap_or_else(|| {
                eprintln!("rig-mock-llm: {name} is required");
                std::process::exit(2)
            })
    };
    let script = Script {
        path: arg("--write"),
        content: arg("--content"),
    };
    let log = match std::fs::File::create(arg("--log")) {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!("rig-mock-llm: cannot create the log: {e}");
            std::process::exit(1)
        }
    };
    let listener = match TcpListener::bind(arg("--listen")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rig-mock-llm: cannot listen: {e}");
            std::process::exit(1)
        }
    };
    for conn in listener.incoming().flatten() {
        let (script, log) = (script.clone(), log.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve(conn, &script, &log) {
                note(&log, &format!("connection error: {e}"));
            }
        });
    }
}

fn note(log: &Mutex<std::fs::File>, line: &str) {
    if let Ok(mut f) = log.lock() {
        let _ = writeln!(f, "{line}");
    }
}

/// Serves requests on one connection until the client closes it.
fn serve(conn: TcpStream, script: &Script, log: &Mutex<std::fs::File>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0).min(MAX_BODY);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut b = vec![0; length];
            reader.read_exact(&mut b)?;
            b
        };
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let model = request["model"]
            .as_str()
            .unwrap_or("claude-mock")
            .to_string();
        if method != "POST" || !path.starts_with("/v1/messages") {
            note(log, &format!("{method} {path} -> 404"));
            let body = r#"{"type":"error","error":{"type":"not_found_error","message":"mock"}}"#;
            write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            continue;
        }
        if path.starts_with("/v1/messages/count_tokens") {
            note(log, &format!("{method} {path} model={model} -> count"));
            let body = r#"{"input_tokens":12}"#;
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            continue;
        }
        let reply = decide(&request, script);
        let what = match &reply {
            Reply::ToolUse { name, .. } => format!("tool_use {name}"),
            Reply::Text(t) => format!("text {t:?}"),
        };
        let stream = request["stream"].as_bool().unwrap_or(false);
        note(
            log,
            &format!("{method} {path} model={model} stream={stream} -> {what}"),
        );
        if stream {
            let body = events(&reply, &model);
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
        } else {
            let body = message(&reply, &model).to_string();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
        }
        out.flush()?;
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let n =
            usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if n == 0 || body.len() + n > MAX_BODY {
            let mut end = String::new();
            reader.read_line(&mut end)?;
            return Ok(body);
        }
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk)?;
        chunk.truncate(n);
        body.extend_from_slice(&chunk);
    }
}
