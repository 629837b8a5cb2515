//! T0: the agent (`serve` on a Unix socket) against the protocol client, no VM.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use agentvm_protocol::client::{self, ClientError, Event, Session};
use agentvm_protocol::frame::kind;
use agentvm_protocol::io::FrameReader;
use agentvm_protocol::{ErrorCode, ExitStatus, Frame, Start, WinSize, MAX_PAYLOAD};
use common::{pattern, start, Agent};

#[test]
fn exit_codes() {
    let agent = Agent::start();
    assert_eq!(agent.run(&["true"], b"").0, ExitStatus::Code(0));
    assert_eq!(agent.run(&["false"], b"").0, ExitStatus::Code(1));
    assert_eq!(
        agent.run(&["sh", "-c", "exit 7"], b"").0,
        ExitStatus::Code(7)
    );
    assert_eq!(
        agent.run(&["sh", "-c", "exit 255"], b"").0,
        ExitStatus::Code(255)
    );
}

#[test]
fn commands_start_with_default_signal_handling() {
    let agent = Agent::start();
    let (_, out, _) = agent.run(&["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"], b"");
    let text = String::from_utf8(out).unwrap();
    let mask = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split('\t').nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{text}");
    // Standard signals (1–31) at their defaults; glibc's real-time ones
    // are outside the agent's reach and the test harness's business.
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{text}");
}

#[test]
fn killed_by_signal_reports_the_signal() {
    let agent = Agent::start();
    let t = Instant::now();
    let (status, _, _) = agent.run(&["sh", "-c", "kill -TERM $$; sleep 30"], b"");
    assert_eq!(status, ExitStatus::Signal(15));
    assert_eq!(status.shell_code(), 143);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn signal_frame_reaches_the_process_group() {
    let agent = Agent::start();
    let conn = agent.connect();
    // The shell's child `sleep` is in the same group: both get SIGINT.
    let mut s = Session::start(
        conn.try_clone().unwrap(),
        conn,
        start(&["sh", "-c", "echo up; sleep 30; echo not-reached"]),
    )
    .unwrap();
    assert_eq!(s.next_event().unwrap(), Event::Stdout(b"up\n".to_vec()));
    common::wait_for_child(s.pid().unwrap(), "sleep");
    let t = Instant::now();
    s.control().signal(2).unwrap();
    assert_eq!(s.next_event().unwrap(), Event::Exit(ExitStatus::Signal(2)));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn stdin_streams_through_cat() {
    let agent = Agent::start();
    let input = pattern(3 << 20, 7);
    let (status, out, err) = agent.run(&["cat"], &input);
    assert_eq!(status, ExitStatus::Code(0));
    assert!(
        out == input,
        "cat echoed {} of {} bytes",
        out.len(),
        input.len()
    );
    assert!(err.is_empty());
}

#[test]
fn stdin_is_interactive() {
    let agent = Agent::start();
    let conn = agent.connect();
    let mut s = Session::start(conn.try_clone().unwrap(), conn, start(&["cat"])).unwrap();
    let c = s.control();
    for line in ["one\n", "two\n", "three\n"] {
        c.stdin(line.as_bytes()).unwrap();
        assert_eq!(
            s.next_event().unwrap(),
            Event::Stdout(line.as_bytes().to_vec())
        );
    }
    c.stdin_eof().unwrap();
    assert_eq!(s.next_event().unwrap(), Event::Exit(ExitStatus::Code(0)));
}

/// Compares output against `chunk` repeated, without storing it all.
struct Expect {
    chunk: Vec<u8>,
    pos: usize,
    mismatch: Option<usize>,
}

impl Write for Expect {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        for (i, byte) in b.iter().enumerate() {
            if self.mismatch.is_none() && *byte != self.chunk[(self.pos + i) % self.chunk.len()] {
                self.mismatch = Some(self.pos + i);
            }
        }
        self.pos += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn hundred_megabytes_of_stdout_byte_exact() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let chunk = pattern(1 << 20, 0x1234_5678);
    let file = dir.path().join("chunk");
    std::fs::write(&file, &chunk).unwrap();
    let script = format!("for i in $(seq 100); do cat {}; done", file.display());
    let expect = std::sync::Arc::new(std::sync::Mutex::new(Expect {
        chunk,
        pos: 0,
        mismatch: None,
    }));
    struct Sink(std::sync::Arc<std::sync::Mutex<Expect>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let err = common::Shared::default();
    let t = Instant::now();
    let status = client::run_unix(
        agent.connect(),
        start(&["sh", "-c", &script]),
        client::Stdio {
            stdin: None,
            stdout: Box::new(Sink(expect.clone())),
            stderr: Box::new(err.clone()),
        },
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let e = expect.lock().unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(e.pos, 100 << 20);
    assert_eq!(e.mismatch, None);
    assert!(err.take().is_empty());
    eprintln!("100 MiB in {secs:.2} s ({:.0} MiB/s)", 100.0 / secs);
}

#[test]
fn stderr_is_kept_separate() {
    let agent = Agent::start();
    let (status, out, err) = agent.run(
        &[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3",
        ],
        b"",
    );
    assert_eq!(status, ExitStatus::Code(3));
    assert_eq!(out, b"out1\nout2\n");
    assert_eq!(err, b"err1\nerr2\n");
    // Large on both at once.
    let (status, out, err) = agent.run(
        &[
            "sh",
            "-c",
            "head -c 3000000 /dev/zero & head -c 2000000 /dev/zero | tr '\\0' x >&2; wait",
        ],
        b"",
    );
    assert_eq!(status, ExitStatus::Code(0));
    assert!(out.len() == 3_000_000 && out.iter().all(|b| *b == 0));
    assert!(err.len() == 2_000_000 && err.iter().all(|b| *b == b'x'));
}

#[test]
fn sixty_four_concurrent_sessions() {
    let agent = std::sync::Arc::new(Agent::start());
    let t = Instant::now();
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let agent = agent.clone();
            std::thread::spawn(move || {
                let n = i.to_string();
                agent.run(
                    &["sh", "-c", "sleep 0.5; echo session-$1; exit $1", "sh", &n],
                    b"",
                )
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (status, out, _) = t.join().unwrap();
        assert_eq!(status, ExitStatus::Code(i as i32));
        assert_eq!(out, format!("session-{i}\n").into_bytes());
    }
    // 64 × 0.5 s one after the other would take 32 s.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Reads PTY output until it contains `needle`.
fn read_until<R: Read, W: Write>(s: &mut Session<R, W>, acc: &mut Vec<u8>, needle: &str) {
    while !String::from_utf8_lossy(acc).contains(needle) {
        match s.next_event().unwrap() {
            Event::Stdout(d) => acc.extend_from_slice(&d),
            other => panic!(
                "{other:?} before {needle:?}; got {:?}",
                String::from_utf8_lossy(acc)
            ),
        }
    }
}

#[test]
fn pty_size_follows_resize() {
    let agent = Agent::start();
    let conn = agent.connect();
    let req = Start {
        tty: Some(WinSize { rows: 24, cols: 80 }),
        ..start(&["sh", "-c", "tty; stty size; read x; stty size; exit 4"])
    };
    let mut s = Session::start(conn.try_clone().unwrap(), conn, req).unwrap();
    let mut acc = Vec::new();
    read_until(&mut s, &mut acc, "24 80");
    assert!(String::from_utf8_lossy(&acc).contains("/dev/pts/"));
    s.control()
        .resize(WinSize {
            rows: 50,
            cols: 132,
        })
        .unwrap();
    s.control().stdin(b"\n").unwrap();
    acc.clear();
    read_until(&mut s, &mut acc, "50 132");
    loop {
        match s.next_event().unwrap() {
            Event::Exit(st) => {
                assert_eq!(st, ExitStatus::Code(4));
                break;
            }
            Event::Stdout(_) => {}
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn pty_ctrl_c_interrupts_foreground() {
    let agent = Agent::start();
    let conn = agent.connect();
    let req = Start {
        tty: Some(WinSize { rows: 24, cols: 80 }),
        ..start(&["sh", "-c", "echo go; sleep 30"])
    };
    let mut s = Session::start(conn.try_clone().unwrap(), conn, req).unwrap();
    let mut acc = Vec::new();
    read_until(&mut s, &mut acc, "go");
    common::wait_for_child(s.pid().unwrap(), "sleep");
    s.control().stdin(b"\x03").unwrap();
    loop {
        match s.next_event().unwrap() {
            Event::Exit(st) => {
                assert_eq!(st, ExitStatus::Signal(2));
                break;
            }
            Event::Stdout(_) => {}
            e => panic!("{e:?}"),
        }
    }
}

/// Sends raw bytes as a whole connection and returns every frame received.
fn raw_exchange(agent: &Agent, bytes: &[u8]) -> Vec<Frame> {
    let mut conn = agent.connect();
    conn.write_all(bytes).unwrap();
    let mut r = FrameReader::new(conn);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = r.read_frame() {
        frames.push(f);
    }
    frames
}

fn error_code(frames: &[Frame]) -> ErrorCode {
    match frames.last() {
        Some(Frame::Error { code, .. }) => *code,
        other => panic!("expected an Error frame, got {other:?}"),
    }
}

#[test]
fn malformed_and_oversized_frames_get_an_error_and_the_agent_keeps_serving() {
    let agent = Agent::start();
    let hello = Frame::hello().encode().unwrap();

    // Unknown type as the first frame.
    assert_eq!(
        error_code(&raw_exchange(&agent, &[0, 0, 0, 0, 0x7e])),
        ErrorCode::Malformed
    );
    // A header announcing more than 1 MiB: refused before any payload.
    let mut big = hello.clone();
    big.extend_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
    big.push(kind::START);
    assert_eq!(error_code(&raw_exchange(&agent, &big)), ErrorCode::TooLarge);
    // A Start whose fields run past the payload.
    let mut bad = hello.clone();
    bad.extend_from_slice(&[
        9,
        0,
        0,
        0,
        kind::START,
        0,
        0,
        0,
        0,
        0,
        0xff,
        0xff,
        0xff,
        0x7f,
    ]);
    assert_eq!(
        error_code(&raw_exchange(&agent, &bad)),
        ErrorCode::Malformed
    );
    // Wrong version.
    let v99 = Frame::Hello { version: 99 }.encode().unwrap();
    assert_eq!(
        error_code(&raw_exchange(&agent, &v99)),
        ErrorCode::UnsupportedVersion
    );
    // No Hello first.
    let stdin = Frame::Stdin(b"x".to_vec()).encode().unwrap();
    assert_eq!(
        error_code(&raw_exchange(&agent, &stdin)),
        ErrorCode::UnexpectedFrame
    );
    // Truncated mid-frame, then closed.
    let mut cut = hello.clone();
    cut.extend_from_slice(&[20, 0, 0, 0, kind::START, 1]);
    let mut conn = agent.connect();
    conn.write_all(&cut).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert_eq!(rest[4], kind::ERROR);

    // Garbage in the middle of a running session: error, and the command dies.
    let mut conn = agent.connect();
    let mut s = Session::start(
        conn.try_clone().unwrap(),
        conn.try_clone().unwrap(),
        start(&["sleep", "30"]),
    )
    .unwrap();
    let c = s.control();
    c.stdin(b"x").unwrap();
    conn.write_all(&[0xff, 0xff, 0xff, 0xff, kind::STDIN])
        .unwrap();
    match s.next_event() {
        Err(ClientError::Remote { code, .. }) => assert_eq!(code, ErrorCode::TooLarge),
        other => panic!("{other:?}"),
    }
    let pid = s.pid().unwrap() as i32;
    wait_gone(pid);

    // And the agent still serves.
    assert_eq!(agent.run(&["sh", "-c", "echo alive"], b"").1, b"alive\n");
}

fn wait_gone(pid: i32) {
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "pid {pid} still exists"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn disconnect_kills_the_command() {
    let agent = Agent::start();
    let conn = agent.connect();
    let mut s = Session::start(
        conn.try_clone().unwrap(),
        conn.try_clone().unwrap(),
        start(&["sh", "-c", "echo up; sleep 300"]),
    )
    .unwrap();
    assert_eq!(s.next_event().unwrap(), Event::Stdout(b"up\n".to_vec()));
    let pid = s.pid().unwrap() as i32;
    drop(s);
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    wait_gone(pid);
}

#[test]
fn spawn_failures_are_reported() {
    let agent = Agent::start();
    match agent.run_start(start(&["/nonexistent/program"]), b"") {
        Err(ClientError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::SpawnFailed);
            assert!(message.contains("/nonexistent/program"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let req = Start {
        cwd: Some(b"/nonexistent-dir".to_vec()),
        ..start(&["true"])
    };
    assert!(matches!(
        agent.run_start(req, b""),
        Err(ClientError::Remote {
            code: ErrorCode::SpawnFailed,
            ..
        })
    ));
    let req = Start {
        user: Some("no-such-user-here".into()),
        ..start(&["true"])
    };
    assert!(matches!(
        agent.run_start(req, b""),
        Err(ClientError::Remote {
            code: ErrorCode::SpawnFailed,
            ..
        })
    ));
}

#[test]
fn env_cwd_and_configured_secrets() {
    let agent = Agent::start();
    client::configure(
        agent.connect(),
        vec![
            (b"API_KEY".to_vec(), b"s3cret".to_vec()),
            (b"FOO".to_vec(), b"from-config".to_vec()),
        ],
    )
    .unwrap();
    let req = Start {
        env: vec![(b"FOO".to_vec(), b"from-start".to_vec())],
        cwd: Some(b"/tmp".to_vec()),
        ..start(&[
            "sh",
            "-c",
            "echo $API_KEY $FOO $(pwd); echo ${PATH:+has-path}",
        ])
    };
    let (status, out, _) = agent.run_start(req, b"").unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out, b"s3cret from-start /tmp\nhas-path\n");
}

#[test]
fn a_configured_ca_is_trusted_by_every_later_command() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap().to_owned();
    std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
    std::fs::write(
        root.path().join("etc/ssl/certs/ca-certificates.crt"),
        "-----BEGIN CERTIFICATE-----\nPUBLIC\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let agent = Agent::start_with(&["--root", &r]);
    let pem = b"-----BEGIN CERTIFICATE-----\nWORKSPACECA\n-----END CERTIFICATE-----\n";
    client::configure_with_ca(
        agent.connect(),
        vec![(
            b"ANTHROPIC_API_KEY".to_vec(),
            b"sk-ant-placeholder".to_vec(),
        )],
        pem.to_vec(),
    )
    .unwrap();
    let script = "echo $ANTHROPIC_API_KEY; echo $SSL_CERT_FILE $REQUESTS_CA_BUNDLE; \
                  echo $GIT_SSL_CAINFO $NODE_EXTRA_CA_CERTS";
    let (status, out, _) = agent.run_start(start(&["sh", "-c", script]), b"").unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "sk-ant-placeholder\n\
         /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n\
         /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/agentvm-ca.pem\n"
    );
    let bundle =
        std::fs::read_to_string(root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        bundle.contains("PUBLIC") && bundle.contains("WORKSPACECA"),
        "{bundle}"
    );
    // Something that is not a certificate is refused, and the environment
    // stays as it was.
    let refused = client::configure_with_ca(
        agent.connect(),
        vec![(b"ANTHROPIC_API_KEY".to_vec(), b"other".to_vec())],
        b"-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n".to_vec(),
    );
    assert!(
        matches!(
            refused,
            Err(ClientError::Remote {
                code: ErrorCode::Internal,
                ..
            })
        ),
        "{refused:?}"
    );
    let (_, out, _) = agent
        .run_start(start(&["sh", "-c", "echo $ANTHROPIC_API_KEY"]), b"")
        .unwrap();
    assert_eq!(out, b"sk-ant-placeholder\n");
    // An agent serving on the host without --root has no store to touch.
    let plain = Agent::start();
    let refused = client::configure_with_ca(plain.connect(), vec![], pem.to_vec());
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn runs_as_another_user() {
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let agent = Agent::start();
    let req = Start {
        user: Some("65534".into()),
        ..start(&["sh", "-c", "id -u; id -g"])
    };
    let (status, out, _) = agent.run_start(req, b"").unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("65534\n"), "{text}");
}

/// Zombie children of `pid`.
fn zombies_of(pid: u32) -> Vec<String> {
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(after) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = after.1.split(' ').collect();
        if f.len() > 1 && f[0] == "Z" && f[1] == pid.to_string() {
            z.push(stat);
        }
    }
    z
}

#[test]
fn orphans_are_reaped() {
    let agent = Agent::start();
    // The background shells outlive their parent and are re-parented to the
    // agent (a child subreaper); their output is redirected so the session
    // itself ends at once.
    let (status, _, _) = agent.run(
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do (sleep 0.2 &) ; done >/dev/null 2>&1; exit 0",
        ],
        b"",
    );
    assert_eq!(status, ExitStatus::Code(0));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(zombies_of(agent.child.id()), Vec::<String>::new());
    // Sessions still get their own statuses after all that reaping.
    assert_eq!(
        agent.run(&["sh", "-c", "exit 9"], b"").0,
        ExitStatus::Code(9)
    );
}

#[test]
fn poweroff_ends_serve() {
    let mut agent = Agent::start();
    client::poweroff(agent.connect()).unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vsock_handshake_then_session() {
    // A stand-in for the VMM's hybrid vsock: answers CONNECT, then splices
    // the connection to the agent's socket.
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let listener = std::os::unix::net::UnixListener::bind(&uds).unwrap();
    let target = agent.socket.clone();
    std::thread::spawn(move || {
        let (mut host, _) = listener.accept().unwrap();
        let mut line = [0u8; 13];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"CONNECT 1024\n");
        host.write_all(b"OK 1073741824\n").unwrap();
        let guest = std::os::unix::net::UnixStream::connect(target).unwrap();
        let mut host_r = host.try_clone().unwrap();
        let mut guest_w = guest.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut host_r, &mut guest_w);
        });
        let mut guest_r = guest;
        let _ = std::io::copy(&mut guest_r, &mut host);
    });
    let stream = client::connect_vsock(&uds, 1024).unwrap();
    let out = common::Shared::default();
    let status = client::run_unix(
        stream,
        start(&["uname", "-s"]),
        client::Stdio {
            stdin: None,
            stdout: Box::new(out.clone()),
            stderr: Box::new(std::io::sink()),
        },
    )
    .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out.take(), b"Linux\n");
}

#[test]
fn the_hosts_identity_lands_under_the_agents_root() {
    let root = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(&["--root", root.path().to_str().unwrap()]);
    client::identity(
        agent.connect(),
        agentvm_protocol::frame::Identity {
            known_hosts: b"github.com ssh-ed25519 AAAA\n".to_vec(),
            git_name: Some(b"Host User".to_vec()),
            git_email: Some(b"user@example.com".to_vec()),
        },
    )
    .unwrap();
    let hosts = std::fs::read_to_string(root.path().join("etc/ssh/ssh_known_hosts")).unwrap();
    assert!(hosts.contains("\ngithub.com ssh-ed25519 AAAA\n"), "{hosts}");
    let git = std::fs::read_to_string(root.path().join("etc/gitconfig")).unwrap();
    assert!(
        git.contains("\tname = \"Host User\"\n\temail = \"user@example.com\"\n"),
        "{git}"
    );
}

#[test]
fn a_host_file_lands_in_the_default_users_home_under_the_agents_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = tempfile::tempdir().unwrap();
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::create_dir_all(root.path().join("home/z")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        format!("z:x:{uid}:{gid}::/home/z:/bin/sh\n"),
    )
    .unwrap();
    let r = root.path().to_str().unwrap().to_owned();
    let agent = Agent::start_with(&["--root", &r, "--user", "z"]);
    let copy = |target: &str, content: &[u8]| agentvm_protocol::frame::FileCopy {
        target: target.as_bytes().to_vec(),
        mode: 0o600,
        content: content.to_vec(),
    };
    client::put_file(
        agent.connect(),
        copy("~/.config/gh/hosts.yml", b"github.com:\n"),
    )
    .unwrap();
    let file = root.path().join("home/z/.config/gh/hosts.yml");
    assert_eq!(std::fs::read(&file).unwrap(), b"github.com:\n");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    // A link the guest planted on the way is refused, and said so.
    std::os::unix::fs::symlink("/etc", root.path().join("home/z/.ssh")).unwrap();
    let refused = client::put_file(agent.connect(), copy("~/.ssh/config", b"x"));
    assert!(
        matches!(refused, Err(ClientError::Remote { ref message, .. }) if message.contains("link")),
        "{refused:?}"
    );
    // An agent on the host without --root writes nothing anywhere.
    let plain = Agent::start();
    assert!(client::put_file(plain.connect(), copy("/tmp/agentvm-never", b"x")).is_err());
    assert!(!std::path::Path::new("/tmp/agentvm-never").exists());
}
