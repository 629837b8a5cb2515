//! The relay against a real `ssh-agent` and OpenSSH's own clients
//! (`ssh-add`, `ssh-keygen -Y sign`), with the relay thread under the
//! `kill` seccomp level: a call outside its list ends the test process.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::wire::{msg, put_string, put_u32};
use super::*;

/// An `ssh-agent` of the test's own, with two keys, `a` and `b`.
struct Agent {
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-?")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The agent, or `None` (with a note) where OpenSSH's client tools are
/// missing and CI is not set; CI installs them (scripts/setup).
fn agent() -> Option<Agent> {
    if !have("ssh-agent") || !have("ssh-keygen") || !have("ssh-add") {
        assert!(
            std::env::var_os("CI").is_none(),
            "ssh-agent, ssh-add and ssh-keygen are needed (apt-get install openssh-client)"
        );
        eprintln!("skipped: no ssh-agent/ssh-add/ssh-keygen (apt-get install openssh-client)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent { dir, child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    for name in ["a", "b"] {
        let key = agent.path(name);
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key),
        );
        run_ok(agent.tool("ssh-add", &agent.socket()).arg(&key));
        // Only the agent holds the private key from here on.
        std::fs::remove_file(&key).unwrap();
    }
    Some(agent)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Agent {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("agent.sock")
    }

    /// An OpenSSH tool talking to the agent at `sock`.
    fn tool(&self, tool: &str, sock: &Path) -> Command {
        let mut cmd = Command::new(tool);
        cmd.env_clear()
            .env("SSH_AUTH_SOCK", sock)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null());
        cmd
    }

    /// The fingerprint of key `name`, as `ssh-keygen -l` prints it.
    fn fingerprint(&self, name: &str) -> String {
        let out = run_ok(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.path(&format!("{name}.pub"))),
        );
        out.split_whitespace().nth(1).unwrap().to_owned()
    }

    /// `ssh-add -l` straight from the agent.
    fn listed(&self) -> String {
        run_ok(self.tool("ssh-add", &self.socket()).arg("-l"))
    }

    /// A relay to this agent under `policy`, confined at the kill level.
    fn relay(&self, policy: Policy) -> PathBuf {
        let listen = socket_path(&self.path("vsock.sock"));
        let relay = Relay::bind(&listen, self.socket(), policy).unwrap();
        relay.start(SeccompLevel::Kill).unwrap();
        listen
    }
}

fn only(agent: &Agent, name: &str) -> Policy {
    let digest = wire::parse_fingerprint(&agent.fingerprint(name)).unwrap();
    Policy {
        keys: Some(vec![digest]),
        host_keys: None,
    }
}

/// One request, one answer, on `conn`.
fn ask(conn: &mut UnixStream, body: &[u8]) -> Vec<u8> {
    conn.write_all(&wire::frame(body)).unwrap();
    wire::read_message(conn).unwrap().expect("an answer")
}

#[test]
fn identities_are_filtered_and_signing_works_through_the_relay() {
    let Some(agent) = agent() else { return };
    let relay = agent.relay(only(&agent, "a"));
    let mode = std::fs::metadata(&relay).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let listed = run_ok(agent.tool("ssh-add", &relay).arg("-l"));
    assert!(listed.contains(&agent.fingerprint("a")), "{listed}");
    assert!(!listed.contains(&agent.fingerprint("b")), "{listed}");
    assert_eq!(listed.lines().count(), 1, "{listed}");

    // A signature by the allowed key, made by the host's agent, verifies.
    let file = agent.path("payload");
    std::fs::write(&file, b"push me").unwrap();
    let mut sign = agent.tool("ssh-keygen", &relay);
    sign.args(["-Y", "sign", "-n", "file", "-f"])
        .arg(agent.path("a.pub"))
        .arg(&file);
    run_ok(&mut sign);
    let signers = agent.path("allowed_signers");
    let public = std::fs::read_to_string(agent.path("a.pub")).unwrap();
    std::fs::write(&signers, format!("a {public}")).unwrap();
    let verify = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "file", "-I", "a", "-f"])
        .arg(&signers)
        .arg("-s")
        .arg(agent.path("payload.sig"))
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The other key is not used, though the agent holds it.
    let mut refused = agent.tool("ssh-keygen", &relay);
    refused
        .args(["-Y", "sign", "-n", "file", "-f"])
        .arg(agent.path("b.pub"))
        .arg(&file);
    assert!(!refused.output().unwrap().status.success());
}

#[test]
fn the_guest_cannot_add_remove_or_lock_keys() {
    let Some(agent) = agent() else { return };
    let before = agent.listed();
    let relay = agent.relay(Policy::default());

    // OpenSSH's own client, through the relay.
    for args in [&["-D"][..], &["-d"][..]] {
        let mut cmd = agent.tool("ssh-add", &relay);
        cmd.args(args);
        if args == ["-d"] {
            cmd.arg(agent.path("a.pub"));
        }
        assert!(!cmd.output().unwrap().status.success(), "{args:?}");
    }
    let extra = agent.path("c");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "c", "-f"])
            .arg(&extra),
    );
    assert!(!agent
        .tool("ssh-add", &relay)
        .arg(&extra)
        .output()
        .unwrap()
        .status
        .success());

    // And raw requests: each answered with failure, the connection stays up.
    let mut conn = UnixStream::connect(&relay).unwrap();
    let mut lock = vec![msg::LOCK];
    put_string(&mut lock, b"passphrase");
    let mut remove = vec![msg::REMOVE_IDENTITY];
    put_string(&mut remove, b"anything");
    let mut ext = vec![msg::EXTENSION];
    put_string(&mut ext, b"query");
    for body in [
        lock,
        remove,
        ext,
        vec![msg::REMOVE_ALL_IDENTITIES],
        vec![msg::UNLOCK, 0, 0, 0, 0],
        vec![msg::ADD_SMARTCARD_KEY, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        assert_eq!(ask(&mut conn, &body), [msg::FAILURE], "{body:?}");
    }
    let listed = ask(&mut conn, &[msg::REQUEST_IDENTITIES]);
    assert_eq!(listed[0], msg::IDENTITIES_ANSWER);
    assert_eq!(&listed[1..5], &2u32.to_be_bytes());

    // The host's agent is as it was: both keys, unlocked.
    assert_eq!(agent.listed(), before);
    assert_eq!(before.lines().count(), 2, "{before}");
}

#[test]
fn bad_frames_end_the_connection_and_others_go_on() {
    let Some(agent) = agent() else { return };
    let relay = agent.relay(Policy::default());
    // A length over the limit: the connection is closed, nothing is read
    // or allocated for it.
    let mut huge = UnixStream::connect(&relay).unwrap();
    huge.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(huge.read_to_end(&mut rest).unwrap(), 0);
    // A frame cut short by the guest's end.
    let mut short = UnixStream::connect(&relay).unwrap();
    short.write_all(&[0, 0, 0, 9, msg::SIGN_REQUEST]).unwrap();
    short.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(short.read_to_end(&mut rest).unwrap(), 0);
    // A malformed but whole request is only refused.
    let mut conn = UnixStream::connect(&relay).unwrap();
    let mut sign = vec![msg::SIGN_REQUEST];
    put_u32(&mut sign, 1000);
    assert_eq!(ask(&mut conn, &sign), [msg::FAILURE]);
    assert_eq!(
        ask(&mut conn, &[msg::REQUEST_IDENTITIES])[0],
        msg::IDENTITIES_ANSWER
    );
}

#[test]
fn connections_beyond_the_cap_are_closed() {
    let Some(agent) = agent() else { return };
    let relay = agent.relay(Policy::default());
    let mut held: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&relay).unwrap())
        .collect();
    // Each held connection is served (so counted) before the next test.
    for conn in &mut held {
        assert_eq!(
            ask(conn, &[msg::REQUEST_IDENTITIES])[0],
            msg::IDENTITIES_ANSWER
        );
    }
    let mut over = UnixStream::connect(&relay).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Closed already (the write may fail) or at once: no answer either way.
    let _ = over.write_all(&wire::frame(&[msg::REQUEST_IDENTITIES]));
    let mut rest = Vec::new();
    assert!(over.read_to_end(&mut rest).map_or(true, |n| n == 0));
    // Once one ends, a new one is served again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = UnixStream::connect(&relay).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        if again
            .write_all(&wire::frame(&[msg::REQUEST_IDENTITIES]))
            .is_ok()
        {
            if let Ok(Some(answer)) = wire::read_message(&mut again) {
                assert_eq!(answer[0], msg::IDENTITIES_ANSWER);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_host_agent_that_is_gone_ends_each_guest_connection_and_nothing_else() {
    // `up` saw SSH_AUTH_SOCK, but the agent behind it has gone (or never
    // was): each guest connection is closed unanswered, the relay (and the
    // VMM, under the kill level) goes on, and an agent that comes back
    // is used.
    let Some(agent) = agent() else { return };
    let gone = agent.path("gone.sock");
    let listen = socket_path(&agent.path("vsock2.sock"));
    let relay = Relay::bind(&listen, gone.clone(), Policy::default()).unwrap();
    relay.start(SeccompLevel::Kill).unwrap();
    for _ in 0..3 {
        let mut conn = UnixStream::connect(&listen).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = conn.write_all(&wire::frame(&[msg::REQUEST_IDENTITIES]));
        let mut rest = Vec::new();
        assert!(conn.read_to_end(&mut rest).map_or(true, |n| n == 0));
    }
    std::os::unix::fs::symlink(agent.socket(), &gone).unwrap();
    let mut conn = UnixStream::connect(&listen).unwrap();
    assert_eq!(
        ask(&mut conn, &[msg::REQUEST_IDENTITIES])[0],
        msg::IDENTITIES_ANSWER
    );
}
