//! T3 of issue 15: secrets that never enter the guest, on the full guest
//! image (Debian root file system with curl, git, ssh and Node).
//!
//! L1 plays the user's machine. It serves HTTPS for `api.secret.test` on
//! its loopback (`rig-tls-echo`, with its own test CA that the workspace
//! names as `[network] upstream_ca`) and git over ssh for `git.test`
//! (dropbear on 127.0.0.1:2222, a bare repository); it runs an ssh-agent
//! holding two keys whose private halves are then deleted, so they exist
//! only in that agent. The workspace binds the secret `RIG_TOKEN` (a fresh
//! random `sk-ant-api03-…` value in L1's environment) to `api.secret.test`
//! and forwards the agent, restricted to one of the two keys and to
//! `[git.test]:2222`. Then, in the guest: the variable holds a placeholder;
//! curl (system trust store) and Node's fetch (`NODE_EXTRA_CA_CERTS`) send
//! it and the server logs the real value; the guest's environment, every
//! process's `/proc/*/environ` and the console (all copied out to L1 and
//! searched there, so the value never enters the guest) hold no trace of
//! it; `agentvm net log` names the secret, method and path but neither the
//! value nor the query; `ssh-add -l` lists only the allowed key; `git
//! ls-remote` over ssh authenticates with it and lists the repository's
//! branch; git's identity and the server's host key came from L1's
//! configuration.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_image::rootfs::{Rootfs, RootfsRecipe};
use agentvm_image::KeyHasher;
use agentvm_rig::image::disk_image;
use agentvm_rig::tools::Tools;
use agentvm_rig::{error_chain, Boot, Rig, Scenario, Tier};

/// In L1 before the rig's own VM: the disk, loopback, the host programs.
const SETUP: &str = "ip link set lo up
mkdir -p /disk && mount -t ext4 -o ro /dev/vda /disk
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
chmod 700 /root
TOOLS";

/// Once the rig's own VM is up.
const SCRIPT: &str = r##"one_line() { head -c 1500 "$1" | tr '\n' '|'; }
# L1's own services: HTTPS with a test CA, ssh with git, an ssh-agent.
/disk/rig-tls-echo --listen 127.0.0.1:443 --name api.secret.test --ca-out /tmp/upstream-ca.pem --log /tmp/tls.log 2>/tmp/tls.err &
ssh-agent -a /tmp/agent.sock >/dev/null; echo "RIG-EXEC ssh_agent_rc=$?"
export SSH_AUTH_SOCK=/tmp/agent.sock
ssh-keygen -q -t ed25519 -N '' -C allowed -f /tmp/allowed && ssh-keygen -q -t ed25519 -N '' -C other -f /tmp/other
ssh-add -q /tmp/allowed /tmp/other; echo "RIG-EXEC ssh_add_rc=$?"
ALLOWED=$(ssh-keygen -lf /tmp/allowed.pub | cut -d' ' -f2)
OTHER=$(ssh-keygen -lf /tmp/other.pub | cut -d' ' -f2)
echo "RIG-EXEC fingerprints=$ALLOWED $OTHER"
mkdir -p -m 700 /root/.ssh && cp /tmp/allowed.pub /tmp/other.pub /root/.ssh/ && cat /tmp/allowed.pub /tmp/other.pub > /root/.ssh/authorized_keys
rm -f /tmp/allowed /tmp/other
dropbearkey -t ed25519 -f /tmp/host_key >/dev/null 2>&1
mkdir -p /etc/ssh && echo "[git.test]:2222 $(dropbearkey -y -f /tmp/host_key | grep '^ssh-ed25519' | cut -d' ' -f1,2)" > /etc/ssh/ssh_known_hosts
echo "RIG-EXEC known_hosts=$(one_line /etc/ssh/ssh_known_hosts)"
dropbear -F -E -s -P /tmp/dropbear.pid -r /tmp/host_key -p 127.0.0.1:2222 2>/tmp/dropbear.log &
git init -q --bare /srv/repo.git
TREE=$(git -C /srv/repo.git mktree </dev/null)
COMMIT=$(git -C /srv/repo.git -c user.name=rig -c user.email=rig@test commit-tree -m served "$TREE")
git -C /srv/repo.git update-ref refs/heads/main "$COMMIT"; echo "RIG-EXEC commit=$COMMIT"
git config --global user.name 'Rig User'; git config --global user.email rig-user@example.test
for i in $(seq 50); do [ -s /tmp/upstream-ca.pem ] && break; sleep 0.2; done
echo "RIG-EXEC tls_up=$(test -s /tmp/upstream-ca.pem && echo yes)"
REAL_SUFFIX=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export RIG_REAL_TOKEN="sk-ant-api03-$REAL_SUFFIX"

W=/tmp/ws; rm -rf $W; mkdir -p $W/.agentvm; cd $W
cat > .agentvm/config.toml <<CONFIG
name = "secrets-e2e"
image = "/disk"
[resources]
vcpus = 1
memory_mib = 1024
[network]
ports = [443, 2222]
hosts = { "api.secret.test" = "127.0.0.1", "git.test" = "127.0.0.1" }
upstream_ca = "/tmp/upstream-ca.pem"
[secrets]
RIG_TOKEN = { value = "\${RIG_REAL_TOKEN}", hosts = ["api.secret.test"] }
[ssh]
agent = true
keys = ["$ALLOWED"]
hosts = ["[git.test]:2222"]
CONFIG
$AGENTVM trust >/tmp/trust.out 2>&1; echo "RIG-EXEC trust_rc=$?"
echo "RIG-EXEC trust=$(one_line /tmp/trust.out)"
$AGENTVM up --timeout 900 >/tmp/up.out 2>&1; echo "RIG-EXEC up_rc=$?"
echo "RIG-EXEC up_out=$(one_line /tmp/up.out)"

# The placeholder, sent by curl and by Node.
$AGENTVM run 'echo "$RIG_TOKEN"' >/tmp/placeholder.out 2>&1; echo "RIG-EXEC placeholder_rc=$?"
PLACEHOLDER=$(cat /tmp/placeholder.out)
echo "RIG-EXEC placeholder=$PLACEHOLDER"
$AGENTVM run 'curl -sS --max-time 120 -H "Authorization: Bearer $RIG_TOKEN" "https://api.secret.test/v1/check?q=query-text"' >/tmp/curl.out 2>&1
echo "RIG-EXEC curl_rc=$?"
echo "RIG-EXEC curl=$(one_line /tmp/curl.out)"
$AGENTVM run 'node -e "fetch(\"https://api.secret.test/node\", {headers: {\"x-api-key\": process.env.RIG_TOKEN}}).then(r => r.text()).then(t => console.log(t.trim()), e => { console.error(String(e.cause || e)); process.exit(1) })"' >/tmp/node.out 2>&1
echo "RIG-EXEC node_rc=$?"
echo "RIG-EXEC node=$(one_line /tmp/node.out)"
echo "RIG-EXEC server=$(one_line /tmp/tls.log) $(one_line /tmp/tls.err)"
echo "RIG-EXEC server_real=$(grep -c "$REAL_SUFFIX" /tmp/tls.log)"
echo "RIG-EXEC server_placeholder=$(grep -cF "$PLACEHOLDER" /tmp/tls.log)"

# Everything the guest holds that could carry the value, searched in L1.
$AGENTVM run 'env; for f in /proc/[0-9]*/environ; do tr "\0" "\n" < "$f"; echo; done' >/tmp/guest-env.txt 2>&1
echo "RIG-EXEC env_rc=$?"
echo "RIG-EXEC env_lines=$(wc -l < /tmp/guest-env.txt)"
echo "RIG-EXEC env_placeholder=$(grep -cF "$PLACEHOLDER" /tmp/guest-env.txt)"
echo "RIG-EXEC env_real=$(grep -c "$REAL_SUFFIX" /tmp/guest-env.txt)"
$AGENTVM logs >/tmp/console.txt 2>&1
echo "RIG-EXEC console_bytes=$(wc -c < /tmp/console.txt)"
echo "RIG-EXEC console_real=$(grep -c "$REAL_SUFFIX" /tmp/console.txt)"
$AGENTVM net log >/tmp/netlog.txt 2>&1; echo "RIG-EXEC netlog_rc=$?"
echo "RIG-EXEC netlog=$(grep 'api.secret.test' /tmp/netlog.txt | head -c 1200 | tr '\n' '|')"
echo "RIG-EXEC netlog_real=$(grep -c "$REAL_SUFFIX" /tmp/netlog.txt)"
echo "RIG-EXEC netlog_query=$(grep -c 'query-text' /tmp/netlog.txt)"

# The forwarded agent: the allowed key only, used by git over ssh.
$AGENTVM run 'ssh-add -l' >/tmp/ssh-add.out 2>&1; echo "RIG-EXEC guest_ssh_add_rc=$?"
echo "RIG-EXEC guest_keys=$(one_line /tmp/ssh-add.out)"
echo "RIG-EXEC after_ssh_add=$($AGENTVM status 2>&1 | head -c 300 | tr '\n' '|') $(tail -c 1500 /tmp/agentvm-0/*/console.log | tr '\n' '|')"
$AGENTVM run 'ls -A ~/.ssh 2>/dev/null | tr "\n" " "' >/tmp/guest-ssh.out 2>&1
echo "RIG-EXEC guest_ssh_dir=$(one_line /tmp/guest-ssh.out)"
$AGENTVM run 'cat ~/.ssh/known_hosts /etc/ssh/ssh_known_hosts 2>/dev/null' >/tmp/guest-known.out 2>&1
echo "RIG-EXEC guest_known=$(grep -c "^\[git.test\]:2222 $(cut -d' ' -f2,3 /etc/ssh/ssh_known_hosts)" /tmp/guest-known.out)"
$AGENTVM run 'git ls-remote ssh://root@git.test:2222/srv/repo.git' >/tmp/ls-remote.out 2>&1
echo "RIG-EXEC ls_remote_rc=$?"
echo "RIG-EXEC ls_remote=$(one_line /tmp/ls-remote.out)"
$AGENTVM run 'cd / && git config user.name && git config user.email' >/tmp/identity.out 2>&1
echo "RIG-EXEC identity=$(one_line /tmp/identity.out)"
echo "RIG-EXEC dropbear=$(grep -c 'auth succeeded' /tmp/dropbear.log) $(tail -c 600 /tmp/dropbear.log | tr '\n' '|')"

$AGENTVM down >/tmp/down.out 2>&1; echo "RIG-EXEC down_rc=$?"
kill $(cat /tmp/dropbear.pid) 2>/dev/null
ssh-agent -k >/dev/null 2>&1
$AGENTVM attach --uds $UDS --poweroff
"##;

#[test]
fn a_secret_reaches_its_server_and_never_the_guest_and_git_uses_the_hosts_agent() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    if rig.tier() != Tier::Nested {
        eprintln!("skipped: the secrets scenario carries its image on an L1 disk (nested tier)");
        return;
    }
    if agentvm_image::which("mmdebstrap").is_none() && !agentvm_rig::required() {
        eprintln!("skipped: mmdebstrap not found (apt-get install mmdebstrap uidmap erofs-utils)");
        return;
    }
    // L1 plays the user's machine with this host's own programs.
    let tools = Tools::new()
        .find("dropbear", &["/usr/sbin/dropbear"])
        .and_then(|t| t.find("dropbearkey", &["/usr/bin/dropbearkey"]))
        .and_then(|t| t.find("ssh-agent", &["/usr/bin/ssh-agent"]))
        .and_then(|t| t.find("ssh-add", &["/usr/bin/ssh-add"]))
        .and_then(|t| t.find("ssh-keygen", &["/usr/bin/ssh-keygen"]))
        .and_then(|t| t.find("git", &["/usr/bin/git"]))
        .and_then(|t| t.find("git-upload-pack", &["/usr/bin/git"]));
    let Some(tools) = tools else {
        assert!(
            !agentvm_rig::required(),
            "dropbear, openssh-client and git are needed (scripts/setup --tests installs them)"
        );
        eprintln!("skipped: dropbear, openssh-client or git missing (apt-get install dropbear-bin openssh-client git)");
        return;
    };
    let bins = agentvm_rig::binaries::build().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let l2 = rig
        .l2_image()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let disk = {
        let cache = rig.cache();
        // The agent scenario's recipe: one cached root file system for both.
        let recipe = RootfsRecipe::new(vec![], vec!["@anthropic-ai/claude-code".into()]);
        let fs = Rootfs::build(cache, &recipe, &mut |line: &str| {
            eprintln!("rootfs: {line}")
        })
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let mut files: Vec<(String, std::path::PathBuf)> = vec![
            ("vmlinux".into(), l2.dir.join("vmlinux")),
            ("initrd.img".into(), l2.dir.join("initrd.img")),
            ("cmdline".into(), l2.dir.join("cmdline")),
            ("rootfs.erofs".into(), fs.erofs.clone()),
            ("rig-tls-echo".into(), bins.tls_echo.clone()),
        ];
        files.extend(
            tools
                .disk_files()
                .unwrap_or_else(|e| panic!("{}", error_chain(&e))),
        );
        let mut key = KeyHasher::default();
        key.add(fs.dir.file_name().unwrap().as_encoded_bytes())
            .add(l2.key.as_bytes());
        for (name, path) in &files[4..] {
            key.add(name.as_bytes());
            key.add_file(path)
                .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        }
        let files: Vec<(&str, &std::path::Path)> = files
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_path()))
            .collect();
        let disk = disk_image(cache, &format!("disk-secrets-{}", key.hex()), &files)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        cache.prune("disk-secrets-", 1);
        disk
    };
    let mut boot = Boot::agent("secrets", SCRIPT)
        .memory_mib(256)
        .with_virtiofsd()
        .setup(&SETUP.replace("TOOLS", &tools.l1_setup()));
    boot.timeout = Duration::from_secs(2400);
    let r = rig
        .run(&Scenario::new("secrets", vec![boot]).with_disk(disk))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("secrets").expect("boot ran");
    let ctx = r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!(
        "scenario secrets: {:.1} s; placeholder {}; server: {}; net log: {}; guest keys: {}; \
         ls-remote: {}",
        r.elapsed.as_secs_f64(),
        m("placeholder"),
        m("server"),
        m("netlog"),
        m("guest_keys"),
        m("ls_remote")
    );
    for k in ["ssh_agent_rc", "ssh_add_rc", "trust_rc"] {
        assert_eq!(m(k), "0", "{k}; {ctx}");
    }
    assert_eq!(m("tls_up"), "yes", "{}; {ctx}", m("server"));
    assert_eq!(m("up_rc"), "0", "{}; {ctx}", m("up_out"));

    // The guest holds a placeholder shaped like the real key.
    assert_eq!(m("placeholder_rc"), "0", "{ctx}");
    let placeholder = m("placeholder");
    assert!(
        placeholder.starts_with("sk-ant-api03-") && placeholder.len() > 40,
        "{placeholder}; {ctx}"
    );
    // curl and Node sent it; the server got the real value, never the
    // placeholder.
    assert_eq!(m("curl_rc"), "0", "{}; {ctx}", m("curl"));
    assert_eq!(m("curl"), "ok /v1/check?q=query-text|", "{ctx}");
    assert_eq!(m("node_rc"), "0", "{}; {ctx}", m("node"));
    assert_eq!(m("node"), "ok /node|", "{ctx}");
    assert_eq!(m("server_real"), "2", "{}; {ctx}", m("server"));
    assert_eq!(m("server_placeholder"), "0", "{}; {ctx}", m("server"));
    let server = m("server");
    assert!(
        server.contains("Authorization: Bearer sk-ant-api03-")
            && server.contains("x-api-key: sk-ant-api03-"),
        "{server}; {ctx}"
    );

    // Nowhere in the guest: its environment, every process's, the console.
    assert_eq!(m("env_rc"), "0", "{ctx}");
    assert_ne!(m("env_lines"), "0", "{ctx}");
    assert_ne!(
        m("env_placeholder"),
        "0",
        "the scan saw the variable; {ctx}"
    );
    assert_eq!(m("env_real"), "0", "{ctx}");
    assert_ne!(m("console_bytes"), "0", "{ctx}");
    assert_eq!(m("console_real"), "0", "{ctx}");

    // Audited by name, method and path; no value, no query.
    assert_eq!(m("netlog_rc"), "0", "{ctx}");
    let netlog = m("netlog");
    assert!(
        netlog.contains("RIG_TOKEN")
            && netlog.contains("GET /v1/check")
            && netlog.contains("GET /node"),
        "{netlog}; {ctx}"
    );
    assert_eq!(m("netlog_real"), "0", "{netlog}; {ctx}");
    assert_eq!(m("netlog_query"), "0", "{netlog}; {ctx}");

    // The forwarded agent offers the allowed key only, and git over ssh
    // authenticates with it.
    let (allowed, other) = m("fingerprints").split_once(' ').unwrap();
    assert!(allowed.starts_with("SHA256:"), "{ctx}");
    // On failure: the VM's status and the VMM's log (a VMM that died on a
    // guest vsock connection says why there).
    assert_eq!(
        m("guest_ssh_add_rc"),
        "0",
        "{}; after: {}; {ctx}",
        m("guest_keys"),
        m("after_ssh_add")
    );
    let keys = m("guest_keys");
    assert!(
        keys.contains(allowed) && !keys.contains(other),
        "{keys}; {ctx}"
    );
    assert_eq!(
        m("ls_remote_rc"),
        "0",
        "{}; dropbear: {}; {ctx}",
        m("ls_remote"),
        m("dropbear")
    );
    assert_eq!(
        m("ls_remote"),
        format!("{}\trefs/heads/main|", m("commit")),
        "{ctx}"
    );
    assert!(m("dropbear").starts_with('1'), "{}; {ctx}", m("dropbear"));
    // No private key in the guest; the host key and identity came from L1.
    let ssh_dir = m("guest_ssh_dir");
    assert!(!ssh_dir.contains("id_"), "{ssh_dir}; {ctx}");
    assert_ne!(m("guest_known"), "0", "{}; {ctx}", m("known_hosts"));
    assert_eq!(m("identity"), "Rig User|rig-user@example.test|", "{ctx}");
    assert_eq!(m("down_rc"), "0", "{ctx}");
    assert_eq!(b.exit_code(), Some(0), "{ctx}");
}
