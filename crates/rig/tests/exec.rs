//! T3 for the guest agent: agentvm boots the default guest image (no
//! `--kernel`: `--image DIR` with its vmlinux, initrd.img and cmdline) with
//! a vsock device, the agent as PID 1; from L1 (or the host, in the direct
//! tier) `agentvm attach` runs commands in it. One L1 boot does it all.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use agentvm_rig::{error_chain, Boot, BootResult, Rig, Scenario, ScenarioResult, Tier};

/// Concurrent sessions.
const SESSIONS: usize = 16;

/// Guest memory: room for the fill below.
const GUEST_MIB: u32 = 1024;

/// MiB the balloon takes at boot (`agentvm boot --balloon`).
const BALLOON_MIB: u64 = 64;

/// MiB the guest writes to its tmpfs and frees again: free page reporting
/// must hand most of it back to agentvm's host.
const FILL_MIB: u64 = 512;

/// KiB of it that must come back (three quarters; 98 % did when measured).
const WANT_KIB: u64 = (FILL_MIB << 10) * 3 / 4;

/// Runs in L1 once the agent printed its ready line. Every step prints
/// markers; `t_*` are L1 uptimes for the step timings.
const SCRIPT: &str = r#"A="$AGENTVM attach --uds $UDS"
up() { cut -d' ' -f1 /proc/uptime; }
one_line() { head -c 300 "$1" | tr '\n' ' '; }
echo "RIG-EXEC t_start=$(up)"
out=$($A --wait 30 -- uname -r 2>/tmp/uname.err); rc=$?
echo "RIG-EXEC uname_rc=$rc"
echo "RIG-EXEC uname=$out"
echo "RIG-EXEC uname_err=$(one_line /tmp/uname.err)"
echo "RIG-EXEC t_uname=$(up)"
$A -- sh -c 'exit 7'; echo "RIG-EXEC exit7_rc=$?"
$A -- sh -c 'echo to-out; echo to-err >&2' >/tmp/split.out 2>/tmp/split.err
echo "RIG-EXEC split_rc=$?"
echo "RIG-EXEC split_out=$(one_line /tmp/split.out)"
echo "RIG-EXEC split_err=$(one_line /tmp/split.err)"
$A -- sh -c 'kill -9 $$'; echo "RIG-EXEC signal_rc=$?"
echo "RIG-EXEC t_small=$(up)"
head -c 1048576 /dev/urandom > /tmp/in.bin
echo "RIG-EXEC cat_want=$(sha256sum < /tmp/in.bin | cut -d' ' -f1)"
echo "RIG-EXEC t_cat_start=$(up)"
$A -- cat < /tmp/in.bin > /tmp/out.bin 2>/tmp/cat.err; echo "RIG-EXEC cat_rc=$?"
echo "RIG-EXEC t_cat=$(up)"
echo "RIG-EXEC cat_got=$(sha256sum < /tmp/out.bin | cut -d' ' -f1)"
echo "RIG-EXEC cat_bytes=$(wc -c < /tmp/out.bin)"
echo "RIG-EXEC cat_err=$(one_line /tmp/cat.err)"
i=1
while [ $i -le SESSIONS ]; do
  ( $A -- sh -c "sleep 1; echo session-$i" >/tmp/c$i.out 2>/tmp/c$i.err; echo $? >/tmp/c$i.rc ) &
  i=$((i+1))
done
wait
ok=0
i=1
while [ $i -le SESSIONS ]; do
  if [ "$(cat /tmp/c$i.rc)" = 0 ] && [ "$(cat /tmp/c$i.out)" = "session-$i" ]; then
    ok=$((ok+1))
  else
    echo "RIG-EXEC concurrent_fail=$i rc=$(cat /tmp/c$i.rc) out=$(one_line /tmp/c$i.out) err=$(one_line /tmp/c$i.err)"
  fi
  i=$((i+1))
done
echo "RIG-EXEC concurrent_ok=$ok"
echo "RIG-EXEC t_concurrent=$(up)"
# The balloon inflates once its driver is up: poll the guest's counter.
i=0
while [ $i -lt 30 ]; do
  inflated=$($A -- awk '/^balloon_inflate /{print $2}' /proc/vmstat)
  [ "${inflated:-0}" -ge BALLOON_PAGES ] && break
  sleep 1; i=$((i+1))
done
echo "RIG-EXEC balloon_inflated=$inflated"
echo "RIG-EXEC meminfo=$($A -- awk '/^Mem(Total|Available):/{printf "%s %s ", $1, $2}' /proc/meminfo)"
P=$(pidof agentvm)
# Guest RAM is private (anonymous) memory without shares, a memfd with them.
shm() { awk '/^Rss(Anon|Shmem):/ {s += $2} END {print s}' /proc/$P/status; }
echo "RIG-EXEC vmm_pids=$P"
echo "RIG-EXEC shm_before=$(shm)"
$A -- sh -c 'mkdir -p /fill && mount -t tmpfs -o size=FILL_MOUNT_MIBm fill /fill && head -c FILL_BYTES /dev/zero > /fill/x'; echo "RIG-EXEC fill_rc=$?"
F=$(shm)
echo "RIG-EXEC shm_filled=$F"
$A -- sh -c 'rm /fill/x && umount /fill'; echo "RIG-EXEC rm_rc=$?"
# The guest reports free pages in 2-4 MiB blocks after a delay of ~2 s.
i=0
while [ $i -lt 60 ] && [ $((F - $(shm))) -lt WANT_KIB ]; do sleep 1; i=$((i+1)); done
echo "RIG-EXEC shm_after=$(shm)"
echo "RIG-EXEC t_balloon=$(up)"
$A --poweroff 2>/tmp/poweroff.err; echo "RIG-EXEC poweroff_rc=$?"
echo "RIG-EXEC poweroff_err=$(one_line /tmp/poweroff.err)"
echo "RIG-EXEC t_poweroff=$(up)"
"#;

fn seconds(b: &BootResult, from: &str, to: &str) -> String {
    let t = |k: &str| b.exec_marker(k).and_then(|v| v.parse::<f64>().ok());
    match (t(from), t(to)) {
        (Some(a), Some(z)) => format!("{:.2} s", z - a),
        _ => "?".into(),
    }
}

#[test]
fn attach_runs_commands_in_the_default_image() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let release = rig
        .l2_image()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
        .kernel()
        .release
        .clone();
    let script = SCRIPT
        .replace("SESSIONS", &SESSIONS.to_string())
        .replace("FILL_BYTES", &(FILL_MIB << 20).to_string())
        .replace("FILL_MOUNT_MIB", &(FILL_MIB + 16).to_string())
        .replace("WANT_KIB", &WANT_KIB.to_string())
        .replace("BALLOON_PAGES", &(BALLOON_MIB * 256).to_string());
    let mut boot = Boot::agent("exec", &script)
        .vcpus(2)
        .memory_mib(GUEST_MIB)
        .args(&["--balloon", &BALLOON_MIB.to_string()]);
    // Filling and freeing 512 MiB takes a minute or two under nested TCG.
    boot.timeout = std::time::Duration::from_secs(900);
    let r: ScenarioResult = rig
        .run(&Scenario::new("exec", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("exec").expect("boot ran");
    let ctx = || r.context(b);
    eprintln!(
        "scenario exec ({:?}): {:.1} s in all, L1 ready after {:?}; agent ready {:?} after \
         agentvm started, VMM exit after {:?}",
        r.tier,
        r.elapsed.as_secs_f64(),
        r.l1_ready,
        b.first_line,
        b.exit_after
    );
    eprintln!(
        "  uname {}, small commands {}, 1 MiB cat {}, {SESSIONS} sessions {}, poweroff {}",
        seconds(b, "t_start", "t_uname"),
        seconds(b, "t_uname", "t_small"),
        seconds(b, "t_cat_start", "t_cat"),
        seconds(b, "t_cat", "t_concurrent"),
        seconds(b, "t_balloon", "t_poweroff"),
    );

    assert!(
        b.first_line.is_some(),
        "the agent never printed `agentvm-guest: ready`; {}",
        ctx()
    );
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    assert_eq!(m("uname_rc"), "0", "uname: {}; {}", m("uname_err"), ctx());
    assert_eq!(m("uname"), release, "uname -r is the L2 kernel; {}", ctx());
    assert_eq!(m("exit7_rc"), "7", "exit code propagated; {}", ctx());
    assert_eq!(m("split_rc"), "0", "{}", ctx());
    assert_eq!(m("split_out").trim(), "to-out", "stdout; {}", ctx());
    assert_eq!(m("split_err").trim(), "to-err", "stderr apart; {}", ctx());
    assert_eq!(m("signal_rc"), "137", "SIGKILL → 128+9; {}", ctx());
    assert_eq!(m("cat_rc"), "0", "cat: {}; {}", m("cat_err"), ctx());
    assert_eq!(m("cat_bytes").trim(), "1048576", "{}", ctx());
    assert_eq!(m("cat_want").len(), 64, "{}", ctx());
    assert_eq!(
        m("cat_got"),
        m("cat_want"),
        "1 MiB through cat, byte-exact; {}",
        ctx()
    );
    let failed: Vec<&str> = b
        .exec
        .iter()
        .filter(|(k, _)| k == "concurrent_fail")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        m("concurrent_ok"),
        SESSIONS.to_string(),
        "concurrent sessions failed: {failed:?}; {}",
        ctx()
    );
    let kib = |k: &str| m(k).trim().parse::<u64>().ok();
    eprintln!(
        "  balloon: agentvm RssAnon + RssShmem {:?} KiB before, {:?} after filling {FILL_MIB} MiB, {:?} after freeing it",
        kib("shm_before"),
        kib("shm_filled"),
        kib("shm_after")
    );
    eprintln!(
        "  balloon: {} pages inflated; {}",
        m("balloon_inflated"),
        m("meminfo")
    );
    assert!(
        m("balloon_inflated").trim().parse::<u64>().unwrap_or(0) >= BALLOON_MIB * 256,
        "--balloon {BALLOON_MIB}: the guest's balloon_inflate counter is {}; {}",
        m("balloon_inflated"),
        ctx()
    );
    assert_eq!(m("fill_rc"), "0", "{}", ctx());
    assert_eq!(m("rm_rc"), "0", "{}", ctx());
    let (filled, after) = (
        kib("shm_filled").unwrap_or_else(|| {
            panic!("no RssAnon or RssShmem (pids {}); {}", m("vmm_pids"), ctx())
        }),
        kib("shm_after").unwrap(),
    );
    assert!(
        filled >= kib("shm_before").unwrap() + (FILL_MIB << 10) * 9 / 10,
        "filling the guest's tmpfs did not show in agentvm's memory; {}",
        ctx()
    );
    let returned = filled.saturating_sub(after);
    assert!(
        returned >= WANT_KIB,
        "free page reporting returned only {returned} KiB of {FILL_MIB} MiB; {}",
        ctx()
    );
    assert_eq!(
        m("poweroff_rc"),
        "0",
        "attach --poweroff: {}; {}",
        m("poweroff_err"),
        ctx()
    );
    assert!(
        b.exec_marker("t_poweroff").is_some(),
        "the script did not finish; {}",
        ctx()
    );
    assert_eq!(
        b.exit_code(),
        Some(0),
        "poweroff through the agent ends agentvm with 0; {}",
        ctx()
    );
    if r.tier == Tier::Nested {
        assert!(
            r.l1_marker("done").is_some(),
            "L1 never finished; {}",
            ctx()
        );
    }
}
