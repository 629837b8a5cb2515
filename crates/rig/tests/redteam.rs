//! T3 red team for the trust boundary: a guest with root, driven through
//! `agentvm run`, tries every way out through files the host trusts, and
//! the next `down`/`up` on the host must not run, share, open or show any
//! of it.
//!
//! In L1 (or on the host in the direct tier) one workspace, a git
//! repository, gets `agentvm init --plugin claude-code` and `agentvm up`.
//! The host user has a `~/.claude` of their own. Then the guest:
//! (a) adds a `pre_up` hook that touches a marker on the host, a mount of
//!     the host's home, and `network.mode = "open"` to the workspace's
//!     configuration;
//! (b) writes a hook into its `~/.claude/settings.json`;
//! (c) adds `.git/hooks/post-checkout` and `core.fsmonitor`;
//! (d) asks DNS for a name with an OSC 52 escape sequence in it.
//! What the user sees: `run` reports the git changes it undid (the hook and
//! key gone from the host's repository, the guest's versions quarantined);
//! `net log` shows the name escaped; after `down`, `up` refuses with a
//! summary of the changes and runs no hook; the host's own
//! `~/.claude/settings.json` is untouched (the guest wrote its per-workspace
//! agent home); `trust` refuses to approve a read-write share of the home
//! (it holds the approvals); once the user drops the mount and approves the
//! rest, `up` runs the hook — the approval is what gates it.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::{error_chain, Boot, Rig, Scenario, Tier};

/// Runs in the guest (busybox sh, root, in the workspace): the attack.
const ATTACK: &str = r#"set -e
c=.agentvm/config.toml
awk '{print} /^\[hooks\]$/{print "pre_up = [\"touch /tmp/rt-marker\"]"} /^\[network\]$/{print "mode = \"open\""}' $c > $c.new
mv $c.new $c
printf '\n[[mounts]]\nsource = "~"\ntarget = "/hosthome"\n' >> $c
mkdir -p /root/.claude
printf '{"hooks":{"SessionStart":[{"hooks":[{"type":"command","command":"touch /tmp/rt-claude-hook"}]}]}}\n' > /root/.claude/settings.json
printf '#!/bin/sh\ntouch /tmp/rt-git-hook\n' > .git/hooks/post-checkout
chmod +x .git/hooks/post-checkout
printf '\tfsmonitor = touch /tmp/rt-fsmonitor\n' >> .git/config
nslookup "$(printf 'evil\033]52;c;cHduZWQ=\007x.test')" 10.0.2.3 >/dev/null 2>&1 || true
echo attacked
"#;

/// Runs in L1 once the rig's own VM is up (it only carries this script).
const SCRIPT: &str = r##"one_line() { head -c 1500 "$1" | tr '\n' '|'; }
esc=$(printf '\033')
W=/tmp/rt
rm -rf $W /tmp/rt-* $HOME/.claude $HOME/.config/agentvm $HOME/.local/share/agentvm
mkdir -p $W && cd $W
# The host user's own Claude Code directory.
mkdir -p $HOME/.claude
echo '{"theme":"dark"}' > $HOME/.claude/settings.json
echo '{"token":"host-login"}' > $HOME/.claude/.credentials.json
# The workspace is a git repository (written by hand: L1 has no git).
mkdir -p .git/hooks .git/objects .git/refs
printf '[core]\n\trepositoryformatversion = 0\n\tbare = false\n' > .git/config
echo 'ref: refs/heads/main' > .git/HEAD
$AGENTVM init --plugin claude-code >/tmp/rt.init 2>&1; echo "RIG-EXEC init_rc=$?"
sed -i 's|^# image = .*|image = "/l2"|; s|^# memory_mib = .*|memory_mib = 512|' .agentvm/config.toml
$AGENTVM trust >/tmp/rt.trust1 2>&1; echo "RIG-EXEC trust1_rc=$?"
$AGENTVM up >/tmp/rt.up1 2>&1; echo "RIG-EXEC up1_rc=$?"
echo "RIG-EXEC up1=$(one_line /tmp/rt.up1)"
AH=$(ls -d $HOME/.local/share/agentvm/homes/*/.claude 2>/dev/null | head -n 1)
echo "RIG-EXEC agent_home=$AH"
echo "RIG-EXEC seeded=$(ls -A $AH 2>&1 | tr '\n' ' ')"

cat > attack.sh <<'ATTACK'
ATTACK_TEXT
ATTACK
$AGENTVM run 'sh ./attack.sh' >/tmp/rt.attack 2>/tmp/rt.attack.err; echo "RIG-EXEC attack_rc=$?"
echo "RIG-EXEC attack=$(one_line /tmp/rt.attack)"
echo "RIG-EXEC attack_err=$(one_line /tmp/rt.attack.err)"
echo "RIG-EXEC hook_left=$(ls .git/hooks | tr '\n' ' ')"
echo "RIG-EXEC git_config=$(one_line .git/config)"
echo "RIG-EXEC quarantine=$(find .git/agentvm-quarantine -type f 2>/dev/null | sort | tr '\n' ' ')"
$AGENTVM net log >/tmp/rt.netlog 2>&1; echo "RIG-EXEC netlog_rc=$?"
echo "RIG-EXEC netlog_evil=$(grep -c 'evil' /tmp/rt.netlog)"
echo "RIG-EXEC netlog_raw_esc=$(grep -c "$esc" /tmp/rt.netlog)"
echo "RIG-EXEC netlog_line=$(grep 'evil' /tmp/rt.netlog | head -n 1)"
$AGENTVM logs >/tmp/rt.logs 2>&1
echo "RIG-EXEC logs_raw_esc=$(grep -c "$esc" /tmp/rt.logs)"
$AGENTVM down >/tmp/rt.down1 2>&1; echo "RIG-EXEC down1_rc=$?"

$AGENTVM up >/tmp/rt.up2 2>&1; echo "RIG-EXEC up2_rc=$?"
echo "RIG-EXEC up2=$(one_line /tmp/rt.up2)"
echo "RIG-EXEC up2_raw_esc=$(grep -c "$esc" /tmp/rt.up2)"
echo "RIG-EXEC marker_after_up2=$(ls /tmp/rt-marker 2>&1)"
echo "RIG-EXEC host_settings=$(cat $HOME/.claude/settings.json)"
echo "RIG-EXEC agent_home_settings=$(cat $AH/settings.json 2>&1)"
echo "RIG-EXEC fired=$(ls /tmp/rt-git-hook /tmp/rt-fsmonitor /tmp/rt-claude-hook 2>/dev/null | wc -l)"

$AGENTVM trust >/tmp/rt.trust2 2>&1; echo "RIG-EXEC trust2_rc=$?"
echo "RIG-EXEC trust2=$(one_line /tmp/rt.trust2)"
# The user reviews: keeps the hook and the open network, drops the mount.
sed -i '/^\[\[mounts\]\]$/,$d' .agentvm/config.toml
$AGENTVM trust >/tmp/rt.trust3 2>&1; echo "RIG-EXEC trust3_rc=$?"
echo "RIG-EXEC trust3=$(one_line /tmp/rt.trust3)"
$AGENTVM up >/tmp/rt.up3 2>&1; echo "RIG-EXEC up3_rc=$?"
echo "RIG-EXEC up3=$(one_line /tmp/rt.up3)"
echo "RIG-EXEC marker_after_up3=$(ls /tmp/rt-marker 2>&1)"
$AGENTVM down >/tmp/rt.down2 2>&1; echo "RIG-EXEC down2_rc=$?"

# `up` tells the truth: a failing script fails it, with the script's output,
# and leaves the VM running for inspection.
printf 'scripts = ["echo boom-$((6*7)); exit 3"]\n' > /tmp/rt.scriptline
sed -i '1r /tmp/rt.scriptline' .agentvm/config.toml
$AGENTVM trust >/tmp/rt.trust4 2>&1; echo "RIG-EXEC trust4_rc=$?"
$AGENTVM up >/tmp/rt.up4 2>&1; echo "RIG-EXEC up4_rc=$?"
echo "RIG-EXEC up4=$(one_line /tmp/rt.up4)"
echo "RIG-EXEC up4_running=$($AGENTVM status 2>&1 | grep -c ' running ')"
$AGENTVM down >/tmp/rt.down4 2>&1; echo "RIG-EXEC down4_rc=$?"
n=0
for p in /proc/[0-9]*; do
  tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '__vmm\|virtiofsd' && n=$((n+1))
done
echo "RIG-EXEC leftover=$n"
$AGENTVM attach --uds $UDS --poweroff
"##;

#[test]
fn a_hostile_guest_cannot_reach_the_host_through_trusted_files() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let script = SCRIPT.replace("ATTACK_TEXT\n", ATTACK);
    let mut boot = Boot::agent("redteam", &script)
        .memory_mib(256)
        .with_virtiofsd();
    boot.timeout = Duration::from_secs(900);
    let r = rig
        .run(&Scenario::new("redteam", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("redteam").expect("boot ran");
    let ctx = r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!(
        "scenario redteam ({:?}): {:.1} s; up2: {}",
        r.tier,
        r.elapsed.as_secs_f64(),
        m("up2")
    );
    for k in ["init_rc", "trust1_rc", "up1_rc"] {
        assert_eq!(m(k), "0", "{k}: {}; {ctx}", m("up1"));
    }
    // The agent home is the workspace's own, seeded with the login only.
    assert!(
        m("agent_home").contains("/.local/share/agentvm/homes/"),
        "{ctx}"
    );
    assert_eq!(m("seeded").trim(), ".credentials.json", "{ctx}");

    assert_eq!(m("attack_rc"), "0", "{}; {ctx}", m("attack_err"));
    assert!(m("attack").contains("attacked"), "{ctx}");
    // (c) undone right after the command, and said.
    let said = m("attack_err");
    assert!(
        said.contains("post-checkout") && said.contains("core.fsmonitor"),
        "{said}; {ctx}"
    );
    assert!(
        !m("hook_left").contains("post-checkout"),
        "{}; {ctx}",
        m("hook_left")
    );
    assert!(
        !m("git_config").contains("fsmonitor"),
        "{}; {ctx}",
        m("git_config")
    );
    assert!(
        m("git_config").contains("repositoryformatversion = 0"),
        "{ctx}"
    );
    assert!(
        m("quarantine").contains("post-checkout"),
        "{}; {ctx}",
        m("quarantine")
    );
    // (d) the name arrives, escaped; no raw escape reaches the terminal.
    assert_eq!(m("netlog_rc"), "0", "{ctx}");
    assert_ne!(m("netlog_evil"), "0", "the query was not logged; {ctx}");
    assert_eq!(m("netlog_raw_esc"), "0", "{}; {ctx}", m("netlog_line"));
    assert_eq!(m("logs_raw_esc"), "0", "{ctx}");
    assert_eq!(m("down1_rc"), "0", "{ctx}");

    // (a) refused, summarised, nothing run.
    assert_ne!(m("up2_rc"), "0", "{ctx}");
    let up2 = m("up2");
    for want in [
        "changed since you approved it",
        "+ pre_up: touch /tmp/rt-marker",
        "+ /root -> /hosthome (read-write)",
        "+ mode open",
        "agentvm trust",
    ] {
        assert!(up2.contains(want), "`{want}` not in: {up2}; {ctx}");
    }
    assert_eq!(m("up2_raw_esc"), "0", "{ctx}");
    assert!(
        m("marker_after_up2").contains("No such file"),
        "a hook ran: {ctx}"
    );
    // (b) the host's own settings untouched; the guest wrote its own home.
    assert_eq!(m("host_settings"), r#"{"theme":"dark"}"#, "{ctx}");
    assert!(m("agent_home_settings").contains("rt-claude-hook"), "{ctx}");
    assert_eq!(m("fired"), "0", "a planted hook ran on the host; {ctx}");

    // The home share is refused even by `trust`: it holds the approvals.
    assert_ne!(m("trust2_rc"), "0", "{ctx}");
    assert!(
        m("trust2").contains("keeps your approvals"),
        "{}; {ctx}",
        m("trust2")
    );
    // Reviewed and approved: now the hook runs.
    assert_eq!(m("trust3_rc"), "0", "{}; {ctx}", m("trust3"));
    assert_eq!(m("up3_rc"), "0", "{}; {ctx}", m("up3"));
    assert_eq!(m("marker_after_up3"), "/tmp/rt-marker", "{ctx}");
    assert_eq!(m("down2_rc"), "0", "{ctx}");
    assert_eq!(m("trust4_rc"), "0", "{ctx}");
    assert_ne!(m("up4_rc"), "0", "a failed script must fail up; {ctx}");
    assert!(
        m("up4").contains("exited with 3") && m("up4").contains("boom-42"),
        "{}; {ctx}",
        m("up4")
    );
    assert_eq!(m("up4_running"), "1", "left running for inspection; {ctx}");
    assert_eq!(m("down4_rc"), "0", "{ctx}");
    assert_eq!(m("leftover"), "0", "{ctx}");
    assert_eq!(b.exit_code(), Some(0), "{ctx}");
    if r.tier == Tier::Nested {
        assert!(r.l1_marker("done").is_some(), "L1 never finished; {ctx}");
    }
}
