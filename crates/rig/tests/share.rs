//! T3 for virtio-fs: agentvm boots the default image with two shares (one
//! read-only) served by virtiofsd (carried into L1 with its libraries);
//! through `agentvm attach` the guest reads what the host wrote, writes
//! what the host then reads, walks a tree of many files without running
//! out of descriptors, is refused writes on the read-only share, and gets
//! I/O errors — not a hang — once virtiofsd is killed.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::{error_chain, Boot, Rig, Scenario, Tier};

/// Files in the shared tree: far more than virtiofsd's descriptor limit,
/// so holding one per inode would fail (the EMFILE of other sandboxes).
const FILES: usize = 200_000;

/// Before agentvm starts: the shared directories and their files.
const SETUP: &str = r#"rm -rf /tmp/rig-share
mkdir -p /tmp/rig-share/work/tree /tmp/rig-share/ro
echo from-host > /tmp/rig-share/work/host.txt
echo never-read > /tmp/rig-share/work/unread.txt
echo read-only > /tmp/rig-share/ro/file.txt
(cd /tmp/rig-share/work/tree && seq 1 FILES | xargs touch)"#;

/// Once the agent is ready.
const SCRIPT: &str = r#"A="$AGENTVM attach --uds $UDS"
W=/tmp/rig-share/work
R=/tmp/rig-share/ro
up() { cut -d' ' -f1 /proc/uptime; }
one_line() { head -c 300 "$1" | tr '\n' ' '; }
echo "RIG-EXEC host_read=$($A -- cat $W/host.txt)"
$A -- sh -c "echo from-guest > $W/guest.txt"; echo "RIG-EXEC guest_write_rc=$?"
echo "RIG-EXEC guest_file=$(cat $W/guest.txt)"
echo "RIG-EXEC t_find=$(up)"
echo "RIG-EXEC find_count=$($A -- sh -c "find $W/tree -type f | wc -l" 2>/tmp/find.err)"
echo "RIG-EXEC find_err=$(one_line /tmp/find.err)"
echo "RIG-EXEC t_found=$(up)"
echo "RIG-EXEC ro_read=$($A -- cat $R/file.txt)"
$A -- sh -c "echo x > $R/new.txt" 2>/tmp/ro.err; echo "RIG-EXEC ro_write_rc=$?"
echo "RIG-EXEC ro_err=$(one_line /tmp/ro.err)"
echo "RIG-EXEC ro_exists=$([ -e $R/new.txt ] && echo yes || echo no)"
killed=0
for p in /proc/[0-9]*; do
  if tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q 'virtiofs-work.sock'; then
    kill -9 ${p#/proc/} && killed=$((killed+1))
  fi
done
echo "RIG-EXEC killed=$killed"
sleep 1
timeout 60 $A -- cat $W/unread.txt >/dev/null 2>/tmp/dead.err; echo "RIG-EXEC dead_rc=$?"
echo "RIG-EXEC dead_err=$(one_line /tmp/dead.err)"
$A --poweroff; echo "RIG-EXEC poweroff_rc=$?"
"#;

#[test]
fn the_guest_shares_directories_with_the_host_through_virtiofsd() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let mut boot = Boot::agent("share", SCRIPT)
        .setup(&SETUP.replace("FILES", &FILES.to_string()))
        .args(&[
            "--share",
            "/tmp/rig-share/work:work",
            "--share",
            "/tmp/rig-share/ro:rodata:ro",
        ]);
    // The walk over the tree takes about 4 minutes under nested TCG.
    boot.timeout = Duration::from_secs(1200);
    let r = rig
        .run(&Scenario::new("share", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("share").expect("boot ran");
    let ctx = || r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    let t = |k: &str| b.exec_marker(k).and_then(|v| v.parse::<f64>().ok());
    eprintln!(
        "scenario share ({:?}): {:.1} s in all; find over {FILES} files {:.2} s",
        r.tier,
        r.elapsed.as_secs_f64(),
        t("t_found").unwrap_or(0.0) - t("t_find").unwrap_or(0.0)
    );
    assert!(
        b.first_line.is_some(),
        "the agent never got ready; {}",
        ctx()
    );
    assert_eq!(m("host_read"), "from-host", "{}", ctx());
    assert_eq!(m("guest_write_rc"), "0", "{}", ctx());
    assert_eq!(
        m("guest_file"),
        "from-guest",
        "the guest's file on the host; {}",
        ctx()
    );
    assert_eq!(
        m("find_count").trim(),
        FILES.to_string(),
        "find: {}; {}",
        m("find_err"),
        ctx()
    );
    assert_eq!(m("ro_read"), "read-only", "{}", ctx());
    assert_ne!(m("ro_write_rc"), "0", "{}", ctx());
    assert!(m("ro_err").contains("Read-only file system"), "{}", ctx());
    assert_eq!(m("ro_exists"), "no", "{}", ctx());
    assert_ne!(
        m("killed"),
        "0",
        "no virtiofsd of the share found to kill; {}",
        ctx()
    );
    let dead = m("dead_rc");
    assert!(
        !["0", "124", "143", "<missing>"].contains(&dead),
        "after virtiofsd died the guest's read returned {dead} (124/143: it hung); {}",
        ctx()
    );
    assert!(
        m("dead_err").contains("Input/output error"),
        "expected EIO, got {}; {}",
        m("dead_err"),
        ctx()
    );
    assert_eq!(m("poweroff_rc"), "0", "{}", ctx());
    assert_eq!(b.exit_code(), Some(0), "{}", ctx());
    if r.tier == Tier::Nested {
        assert!(
            r.l1_marker("done").is_some(),
            "L1 never finished; {}",
            ctx()
        );
    }
}
