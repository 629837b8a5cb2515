//! `rig-tls-echo --listen ADDR --name NAME --ca-out FILE --log FILE`: an
//! HTTPS server for the secrets scenario, standing in for an API the real
//! credential belongs to. At start it makes its own test CA (written to
//! `--ca-out`, for the workspace's `[network] upstream_ca`) and a
//! certificate for NAME; then, one thread per connection, it logs each
//! request's line and headers as one line of the log (`|` between them)
//! and answers `200` with `ok <path>`. Runs in L1, static.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use agentvm_net::intercept::ca::Minter;
use agentvm_net::intercept::Ca;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// The longest request head read (line and headers).
const MAX_HEAD: usize = 64 << 10;

fn main() {
    if let Err(e) = run() {
        eprintln!("rig-tls-echo: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1].clone())
            .ok_or(format!("{name} is required"))
    };
    let name = arg("--name")?;
    let ca = Ca::generate("rig upstream test CA").map_err(|e| format!("CA: {e}"))?;
    let (cert, key) = Minter::new(&ca.cert_pem, &ca.key_pem)
        .and_then(|m| m.leaf(&name))
        .map_err(|e| format!("certificate for {name}: {e}"))?;
    #[allow(deprecated)] // the ring provider, as agentvm-net uses
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(vec![cert], key))
        .map_err(|e| format!("TLS: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let log = std::fs::File::create(arg("--log")?).map_err(|e| format!("log: {e}"))?;
    let log = Arc::new(Mutex::new(log));
    let listener = TcpListener::bind(arg("--listen")?).map_err(|e| format!("listen: {e}"))?;
    // The CA last: a script that waits for the file finds the server up.
    let ca_out = arg("--ca-out")?;
    std::fs::write(&ca_out, &ca.cert_pem).map_err(|e| format!("{ca_out}: {e}"))?;
    for conn in listener.incoming().flatten() {
        let (config, log) = (config.clone(), log.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve(conn, config, &log) {
                note(&log, &format!("connection error: {e}"));
            }
        });
    }
    Ok(())
}

fn note(log: &Mutex<std::fs::File>, line: &str) {
    if let Ok(mut f) = log.lock() {
        let _ = writeln!(f, "{line}");
    }
}

/// Serves one request (bodies are not expected) and closes.
fn serve(
    conn: TcpStream,
    config: Arc<ServerConfig>,
    log: &Mutex<std::fs::File>,
) -> Result<(), String> {
    let tls = ServerConnection::new(config).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(StreamOwned::new(tls, conn));
    let mut head = Vec::new();
    let mut path = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("closed before the request ended".into());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        let line = line.trim_end().to_string();
        if head.is_empty() {
            path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        }
        head.push(line);
        if head.iter().map(String::len).sum::<usize>() > MAX_HEAD {
            return Err("request head too long".into());
        }
    }
    note(log, &format!("REQUEST {}", head.join(" | ")));
    let body = format!("ok {path}\n");
    let out = reader.get_mut();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .and_then(|()| out.flush())
    .map_err(|e| e.to_string())?;
    out.conn.send_close_notify();
    let _ = out.flush();
    Ok(())
}
