//! T3 for live mounts: in L1 (or on the host in the direct tier) a
//! workspace VM is started with `agentvm up` (default image, four empty
//! hot-plug slots); on the running VM `agentvm mount /tmp/hostdir
//! /mnt/live` makes a host directory appear in the guest (a new virtio-fs
//! device in a slot the guest kernel probes again), the guest reads what
//! the host wrote and the host what the guest wrote, a `--ro` mount
//! refuses writes, `status` lists the mounts, a second mount at the same
//! path is refused, and `agentvm unmount` takes the directory away: the
//! guest path is empty, no virtiofsd of it is left, and the audit log has
//! a line for each. A freed slot takes a new mount, and `down` ends it.
//!
//! Every command and its output is printed as a transcript (`$ …` lines)
//! for the record.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::{error_chain, Boot, Rig, Scenario, Tier};

/// Once the rig's own VM is up (it only carries this script).
const SCRIPT: &str = r##"one_line() { head -c 1500 "$1" | tr '\n' '|'; }
S=${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/agentvm}
S=${S:-/tmp/agentvm-$(id -u)}
daemons() { n=0; for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q "virtiofsd.*virtiofs-$1" && n=$((n+1)); done; echo $n; }
# run KEY CMD...: the command, its status and its output as markers.
run() {
  key=$1; shift
  echo "RIG-EXEC cmd_$key=$*"
  "$@" >/tmp/c.out 2>&1; echo "RIG-EXEC rc_$key=$?"
  echo "RIG-EXEC out_$key=$(one_line /tmp/c.out)"
}
W=/tmp/mws
rm -rf $W && mkdir -p $W && cd $W
$AGENTVM init >/tmp/m.init 2>&1; echo "RIG-EXEC init_rc=$?"
sed -i "s|^# image = .*|image = \"/l2\"|; s|^# memory_mib = .*|memory_mib = 512|" .agentvm/config.toml
$AGENTVM trust >/tmp/m.trust 2>&1; echo "RIG-EXEC trust_rc=$?"
$AGENTVM up >/tmp/m.up 2>&1; echo "RIG-EXEC up_rc=$?"
echo "RIG-EXEC up_out=$(one_line /tmp/m.up)"
rm -rf /tmp/hostdir /tmp/rodir && mkdir -p /tmp/hostdir /tmp/rodir
echo from-host > /tmp/hostdir/host.txt
echo ro-data > /tmp/rodir/ro.txt

run mount $AGENTVM mount /tmp/hostdir /mnt/live
run read $AGENTVM run "cat /mnt/live/host.txt"
run write $AGENTVM run "echo from-guest > /mnt/live/guest.txt"
echo "RIG-EXEC host_sees=$(cat /tmp/hostdir/guest.txt 2>&1)"
run mount_ro $AGENTVM mount --ro /tmp/rodir /mnt/ro
run ro_read $AGENTVM run "cat /mnt/ro/ro.txt"
run ro_write $AGENTVM run "echo x > /mnt/ro/new.txt"
echo "RIG-EXEC ro_exists=$([ -e /tmp/rodir/new.txt ] && echo yes || echo no)"
run dup $AGENTVM mount /tmp/hostdir /mnt/live
run missing $AGENTVM mount /tmp/no-such-dir /mnt/none
run status $AGENTVM status
echo "RIG-EXEC daemons_mounted=$(daemons live)"
run unmount $AGENTVM unmount /mnt/live
run after $AGENTVM run "ls -A /mnt/live; grep -c ' /mnt/live ' /proc/mounts"
echo "RIG-EXEC daemons_live0=$(daemons live0)"
run unmount_ro $AGENTVM unmount /mnt/ro
echo "RIG-EXEC daemons_after=$(daemons live)"
run again $AGENTVM mount /tmp/hostdir /mnt/again
run again_read $AGENTVM run "cat /mnt/again/guest.txt"
echo "RIG-EXEC audit=$(one_line $S/*/mounts-audit.jsonl)"
run status_after $AGENTVM status
run down $AGENTVM down
n=0
for p in /proc/[0-9]*; do
  tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '__vmm\|virtiofsd' && n=$((n+1))
done
echo "RIG-EXEC leftover=$n"
echo "RIG-EXEC console=$(tail -c 1500 $S/*/console.log 2>/dev/null | tr '\n' '|')"
$AGENTVM attach --uds $UDS --poweroff
"##;

/// The steps printed as a transcript, in order.
const STEPS: &[&str] = &[
    "mount",
    "read",
    "write",
    "mount_ro",
    "ro_read",
    "ro_write",
    "dup",
    "missing",
    "status",
    "unmount",
    "after",
    "unmount_ro",
    "again",
    "again_read",
    "status_after",
    "down",
];

#[test]
fn live_mounts_come_and_go_on_a_running_vm() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let mut boot = Boot::agent("mounts", SCRIPT)
        .memory_mib(256)
        .with_virtiofsd();
    boot.timeout = Duration::from_secs(900);
    let r = rig
        .run(&Scenario::new("mounts", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("mounts").expect("boot ran");
    let ctx = r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>").to_owned();
    eprintln!(
        "scenario mounts ({:?}): {:.1} s; up: {}",
        r.tier,
        r.elapsed.as_secs_f64(),
        m("up_out")
    );
    eprintln!("--- transcript ---");
    for step in STEPS {
        eprintln!(
            "$ {}",
            m(&format!("cmd_{step}")).replace("/bin/agentvm ", "agentvm ")
        );
        for line in m(&format!("out_{step}"))
            .split('|')
            .filter(|l| !l.is_empty())
        {
            eprintln!("{line}");
        }
        eprintln!("[exit {}]", m(&format!("rc_{step}")));
    }
    eprintln!("host: cat /tmp/hostdir/guest.txt -> {}", m("host_sees"));
    eprintln!(
        "virtiofsd of live mounts: {} while mounted, {} of live0 after its unmount, {} after both",
        m("daemons_mounted"),
        m("daemons_live0"),
        m("daemons_after")
    );
    eprintln!("audit log: {}", m("audit"));
    eprintln!("--- end of transcript ---");

    assert_eq!(m("init_rc"), "0", "{ctx}");
    assert_eq!(m("trust_rc"), "0", "{ctx}");
    assert_eq!(m("up_rc"), "0", "up: {}; {ctx}", m("up_out"));
    assert_eq!(
        m("rc_mount"),
        "0",
        "mount: {}; console: {}; {ctx}",
        m("out_mount"),
        m("console")
    );
    assert_eq!(m("out_read"), "from-host|", "{ctx}");
    assert_eq!(m("rc_write"), "0", "{}; {ctx}", m("out_write"));
    assert_eq!(m("host_sees"), "from-guest", "{ctx}");
    assert_eq!(m("rc_mount_ro"), "0", "{}; {ctx}", m("out_mount_ro"));
    assert_eq!(m("out_ro_read"), "ro-data|", "{ctx}");
    assert_ne!(m("rc_ro_write"), "0", "{ctx}");
    assert!(m("out_ro_write").contains("Read-only file system"), "{ctx}");
    assert_eq!(m("ro_exists"), "no", "{ctx}");
    assert_ne!(m("rc_dup"), "0", "a second mount at /mnt/live; {ctx}");
    assert!(m("out_dup").contains("already a live mount"), "{ctx}");
    assert_ne!(m("rc_missing"), "0", "{ctx}");
    assert!(
        m("out_status").contains("/tmp/hostdir -> /mnt/live")
            && m("out_status").contains("/tmp/rodir -> /mnt/ro (ro)"),
        "status: {}; {ctx}",
        m("out_status")
    );
    // Two daemons (with `--sandbox namespace` each is two processes).
    let running: u32 = m("daemons_mounted").parse().unwrap_or(0);
    assert!(
        running >= 2,
        "virtiofsd processes while mounted: {running}; {ctx}"
    );
    assert_eq!(m("rc_unmount"), "0", "{}; {ctx}", m("out_unmount"));
    // Nothing listed, and no mount left at the path.
    assert_eq!(
        m("out_after"),
        "0|",
        "after unmount: {}; {ctx}",
        m("out_after")
    );
    assert_eq!(m("daemons_live0"), "0", "{ctx}");
    assert_eq!(m("rc_unmount_ro"), "0", "{}; {ctx}", m("out_unmount_ro"));
    assert_eq!(m("daemons_after"), "0", "{ctx}");
    assert_eq!(
        m("rc_again"),
        "0",
        "a freed slot takes a new mount: {}; {ctx}",
        m("out_again")
    );
    assert_eq!(m("out_again_read"), "from-guest|", "{ctx}");
    let audit = m("audit");
    assert_eq!(
        audit.matches(r#""event":"mount""#).count(),
        3,
        "{audit}; {ctx}"
    );
    assert_eq!(
        audit.matches(r#""event":"unmount""#).count(),
        2,
        "{audit}; {ctx}"
    );
    assert!(!m("out_status_after").contains("/mnt/live"), "{ctx}");
    assert_eq!(m("rc_down"), "0", "{ctx}");
    assert_eq!(
        m("leftover"),
        "0",
        "a VMM or virtiofsd outlived down; {ctx}"
    );
    assert_eq!(b.exit_code(), Some(0), "{ctx}");
    if r.tier == Tier::Nested {
        assert!(r.l1_marker("done").is_some(), "L1 never finished; {ctx}");
    }
}
