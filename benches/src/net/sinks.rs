//! The sinks: host TCP servers on 127.0.0.1, threads of the benchmark.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

pub struct Sinks {
    pub upload_port: u16,
    pub download_port: u16,
    pub close_port: u16,
    pub hold_port: u16,
    /// Bytes each upload connection read, at its EOF.
    pub uploaded: Mutex<mpsc::Receiver<u64>>,
    /// What each download connection writes.
    pub download_len: Arc<AtomicU64>,
    /// Connections the hold sink keeps open.
    pub held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Sinks {
    pub fn start() -> anyhow::Result<Self> {
        let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
        let (up, down, close, hold) = (bind()?, bind()?, bind()?, bind()?);
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
        let (upload_port, download_port, close_port, hold_port) =
            (port(&up)?, port(&down)?, port(&close)?, port(&hold)?);
        // A large fixed receive buffer (window) from the first byte, so a
        // peer that does not buffer guest data itself rarely finds the
        // socket full while the sink thread waits for a CPU.
        set_rcvbuf(&up, 8 << 20)?;
        let (tx, uploaded) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = vec![0; 1 << 20];
            for conn in up.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut n = 0u64;
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                if tx.send(n).is_err() {
                    return;
                }
            }
        });
        let download_len = Arc::new(AtomicU64::new(0));
        let len = download_len.clone();
        thread::spawn(move || {
            let buf = vec![0xa5_u8; 1 << 20];
            for conn in down.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut left = len.load(Ordering::SeqCst);
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    left -= n as u64;
                }
            }
        });
        thread::spawn(move || {
            for conn in close.incoming() {
                drop(conn);
            }
        });
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let keep = held.clone();
        thread::spawn(move || {
            for conn in hold.incoming().flatten() {
                match keep.lock() {
                    Ok(mut v) => v.push(conn),
                    Err(_) => return,
                }
            }
        });
        Ok(Sinks {
            upload_port,
            download_port,
            close_port,
            hold_port,
            uploaded: Mutex::new(uploaded),
            download_len,
            held,
        })
    }

    pub fn ports(&self) -> [u16; 4] {
        [
            self.upload_port,
            self.download_port,
            self.close_port,
            self.hold_port,
        ]
    }

    pub fn release_held(&self) {
        if let Ok(mut v) = self.held.lock() {
            v.clear();
        }
    }
}

fn set_rcvbuf(listener: &TcpListener, bytes: i32) -> anyhow::Result<()> {
    // SAFETY: a valid socket and a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    anyhow::ensure!(rc == 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    Ok(())
}
