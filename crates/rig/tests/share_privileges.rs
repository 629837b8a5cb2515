//! T3: a guest with root cannot leave setuid/setgid files, device nodes or
//! file capabilities in a share on the host, although agentvm (and so
//! virtiofsd) runs as root in L1 — the case where such a file would be a
//! way to root on the host. The seccomp filter our spawn puts on
//! virtiofsd refuses the modes and node types; extended attributes are
//! not served at all.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::{error_chain, Boot, Rig, Scenario};

/// Before agentvm starts: the shared directory.
const SETUP: &str = "rm -rf /tmp/rig-priv && mkdir -p /tmp/rig-priv";

/// Once the agent is ready: the guest tries, the host (L1) looks.
const SCRIPT: &str = r#"A="$AGENTVM attach --uds $UDS"
S=/tmp/rig-priv
one_line() { head -c 300 "$1" | tr '\n' ' '; }
$A -- sh -c "id -u; cp /bin/busybox $S/tool && chmod 755 $S/tool" >/tmp/p.id 2>&1; echo "RIG-EXEC copy_rc=$?"
echo "RIG-EXEC guest_uid=$(head -n 1 /tmp/p.id)"
$A -- chmod u+s $S/tool 2>/tmp/p.err; echo "RIG-EXEC suid_rc=$?"
echo "RIG-EXEC suid_err=$(one_line /tmp/p.err)"
$A -- chmod g+s $S/tool 2>/dev/null; echo "RIG-EXEC sgid_rc=$?"
$A -- chmod 700 $S/tool; echo "RIG-EXEC chmod_rc=$?"
$A -- mknod $S/mem c 1 1 2>/tmp/p.err; echo "RIG-EXEC mknod_c_rc=$?"
echo "RIG-EXEC mknod_err=$(one_line /tmp/p.err)"
$A -- mknod $S/disk b 7 0 2>/dev/null; echo "RIG-EXEC mknod_b_rc=$?"
$A -- mknod $S/fifo p; echo "RIG-EXEC mknod_p_rc=$?"
$A -- setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 $S/tool 2>/tmp/p.err; echo "RIG-EXEC setcap_rc=$?"
echo "RIG-EXEC setcap_err=$(one_line /tmp/p.err)"
echo "RIG-EXEC host_modes=$(cd $S && stat -c '%n:%a:%F' * | sort | tr '\n' ' ')"
echo "RIG-EXEC host_xattrs=$(getfattr -d -m - $S/tool 2>&1 | grep -c capability)"
$A --poweroff; echo "RIG-EXEC poweroff_rc=$?"
"#;

#[test]
fn a_root_guest_leaves_no_setuid_file_device_node_or_capability_in_a_share() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let mut boot = Boot::agent("privileges", SCRIPT)
        .setup(SETUP)
        .args(&["--share", "/tmp/rig-priv:priv"]);
    boot.timeout = Duration::from_secs(600);
    let r = rig
        .run(&Scenario::new("privileges", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("privileges").expect("boot ran");
    let ctx = || r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!(
        "scenario privileges ({:?}): {:.1} s; host sees {}",
        r.tier,
        r.elapsed.as_secs_f64(),
        m("host_modes")
    );
    assert!(
        b.first_line.is_some(),
        "the agent never got ready; {}",
        ctx()
    );
    assert_eq!(m("copy_rc"), "0", "{}", ctx());
    assert_eq!(m("guest_uid"), "0", "the guest must try as root; {}", ctx());
    for key in [
        "suid_rc",
        "sgid_rc",
        "mknod_c_rc",
        "mknod_b_rc",
        "setcap_rc",
    ] {
        assert_ne!(m(key), "0", "{key}: the guest succeeded; {}", ctx());
        assert_ne!(m(key), "<missing>", "{key}; {}", ctx());
    }
    assert!(m("suid_err").contains("not permitted"), "{}", ctx());
    // The guest really tried: its tool exists, the refusal came from the share.
    assert!(!m("setcap_err").contains("not found"), "{}", ctx());
    // What stays allowed still works: the filter is not a blanket refusal.
    assert_eq!(m("chmod_rc"), "0", "{}", ctx());
    assert_eq!(m("mknod_p_rc"), "0", "{}", ctx());
    let modes = m("host_modes");
    assert!(modes.contains("tool:700:regular"), "{modes}; {}", ctx());
    assert!(modes.contains("fifo:"), "{modes}; {}", ctx());
    assert!(
        !modes.contains("mem:") && !modes.contains("disk:"),
        "{modes}; {}",
        ctx()
    );
    assert_ne!(m("host_xattrs"), "1", "{}", ctx());
    assert_eq!(m("poweroff_rc"), "0", "{}", ctx());
    assert_eq!(b.exit_code(), Some(0), "{}", ctx());
}
