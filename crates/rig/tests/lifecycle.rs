//! T3 for the lifecycle: in L1 (or on the host in the direct tier), two
//! workspaces get `agentvm init` and `agentvm up` (the default image, the
//! workspace shared through virtiofsd at the same path); `agentvm run`
//! writes through the share and propagates exit codes, `status` lists both
//! VMs, `down` leaves no VMM behind. The boot the rig starts itself only
//! carries the script.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::{error_chain, Boot, Rig, Scenario, Tier};

const SCRIPT: &str = r#"one_line() { head -c 400 "$1" | tr '\n' ' '; }
for ws in ws1 ws2; do
  W=/tmp/$ws
  rm -rf $W && mkdir -p $W && cd $W
  $AGENTVM init >/tmp/$ws.init 2>&1; echo "RIG-EXEC ${ws}_init_rc=$?"
  sed -i 's|^# image = .*|image = "/l2"|; s|^# memory_mib = .*|memory_mib = 512|' .agentvm/config.toml
  $AGENTVM up >/tmp/$ws.up 2>&1; echo "RIG-EXEC ${ws}_up_rc=$?"
  echo "RIG-EXEC ${ws}_up_out=$(one_line /tmp/$ws.up)"
done
cd /tmp/ws1
$AGENTVM run "echo hi > /tmp/ws1/x" 2>/tmp/run.err; echo "RIG-EXEC run_rc=$?"
echo "RIG-EXEC run_err=$(one_line /tmp/run.err)"
echo "RIG-EXEC x=$(cat /tmp/ws1/x 2>&1)"
$AGENTVM run "exit 3"; echo "RIG-EXEC exit3_rc=$?"
cd /tmp/ws2
echo "RIG-EXEC ws2_hostname=$($AGENTVM run hostname 2>&1)"
$AGENTVM status >/tmp/status.out 2>&1
echo "RIG-EXEC status=$(one_line /tmp/status.out)"
for ws in ws1 ws2; do
  cd /tmp/$ws && $AGENTVM down >/tmp/$ws.down 2>&1; echo "RIG-EXEC ${ws}_down_rc=$?"
done
n=0
for p in /proc/[0-9]*; do
  tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '__vmm\|virtiofsd' && n=$((n+1))
done
echo "RIG-EXEC leftover=$n"
$AGENTVM attach --uds $UDS --poweroff
"#;

#[test]
fn up_run_status_down_in_two_workspaces() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let mut boot = Boot::agent("lifecycle", SCRIPT)
        .memory_mib(256)
        .with_virtiofsd();
    boot.timeout = Duration::from_secs(900);
    let r = rig
        .run(&Scenario::new("lifecycle", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("lifecycle").expect("boot ran");
    let ctx = || r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!(
        "scenario lifecycle ({:?}): {:.1} s; up: {} / {}",
        r.tier,
        r.elapsed.as_secs_f64(),
        m("ws1_up_out"),
        m("ws2_up_out")
    );
    for ws in ["ws1", "ws2"] {
        assert_eq!(m(&format!("{ws}_init_rc")), "0", "{}", ctx());
        assert_eq!(
            m(&format!("{ws}_up_rc")),
            "0",
            "up: {}; {}",
            m(&format!("{ws}_up_out")),
            ctx()
        );
    }
    assert_eq!(m("run_rc"), "0", "run: {}; {}", m("run_err"), ctx());
    assert_eq!(
        m("x"),
        "hi",
        "written in the guest through the share; {}",
        ctx()
    );
    assert_eq!(m("exit3_rc"), "3", "{}", ctx());
    assert!(
        m("status").contains("ws1") && m("status").contains("ws2"),
        "{}",
        ctx()
    );
    for ws in ["ws1", "ws2"] {
        assert_eq!(m(&format!("{ws}_down_rc")), "0", "{}", ctx());
    }
    assert_eq!(
        m("leftover"),
        "0",
        "a VMM or virtiofsd outlived down; {}",
        ctx()
    );
    assert_eq!(b.exit_code(), Some(0), "{}", ctx());
    if r.tier == Tier::Nested {
        assert!(
            r.l1_marker("done").is_some(),
            "L1 never finished; {}",
            ctx()
        );
    }
}
