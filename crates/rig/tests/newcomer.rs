//! T3 for the newcomer's lifecycle, in L1 of the nested rig (or on the
//! host in the direct tier), one workspace from `init` to `destroy`:
//! - `cd ws && agentvm shell`, with no `up` before it, starts the VM
//!   (through tmux, on a real pseudo-terminal) and opens a shell in it;
//! - `[[files]]` copied a host file into the guest's home at start, and
//!   a change in the guest does not flow back;
//! - a changed `[resources]` (vCPUs and memory): `up` on the running VM
//!   says what differs and keeps it; `up --restart` applies it;
//! - `destroy` refuses a running VM without `--force`, then removes every
//!   place agentvm kept for the workspace: nothing named by the
//!   workspace's id is left anywhere in L1, no VMM or virtiofsd runs, and
//!   a second `destroy` finds nothing.
//!
//! The script prints each command with its output (`RIG-EXEC` markers),
//! which is the newcomer's transcript.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::{error_chain, Boot, Markers, Rig, Scenario, Tier};

/// Once the rig's own VM is up (it only carries this script).
const SCRIPT: &str = r##"one_line() { head -c 1500 "$1" | tr '\n' '|'; }
S=${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/agentvm}
S=${S:-/tmp/agentvm-$(id -u)}
# Dotfiles as stow leaves them: ~/.gitconfig a link into ~/dotfiles.
mkdir -p ~/dotfiles && printf '[user]\n\tname = Rig Newcomer\n' > ~/dotfiles/gitconfig
chmod 640 ~/dotfiles/gitconfig && ln -sfn ~/dotfiles/gitconfig ~/.gitconfig
printf 'registry=http://registry.test/\n' > /tmp/npmrc
W=/tmp/ws
rm -rf $W && mkdir -p $W && cd $W
$AGENTVM init >/tmp/init.out 2>&1; echo "RIG-EXEC init_rc=$?"
sed -i "s|^# image = .*|image = \"/l2\"|; s|^# memory_mib = .*|memory_mib = 512|; s|^# vcpus = .*|vcpus = 1|" .agentvm/config.toml
cat >> .agentvm/config.toml <<'EOF'

[[files]]
source = "~/.gitconfig"
target = "~/.gitconfig"

[[files]]
source = "/tmp/npmrc"
target = "/etc/npmrc"
mode = "0600"
EOF
$AGENTVM trust >/tmp/trust.out 2>&1; echo "RIG-EXEC trust_rc=$?"
echo "RIG-EXEC trust=$(one_line /tmp/trust.out)"

# `agentvm shell` with no VM running: it starts one, then opens the shell.
T="tmux -L rig-$$"
pane() { $T capture-pane -p -S -200 -t t 2>/dev/null; }
rm -f /tmp/shell.rc
$T new-session -d -s t -x 160 -y 50 "cd /tmp/ws && $AGENTVM shell; echo \$? > /tmp/shell.rc"
echo "RIG-EXEC tmux_rc=$?"
# The guest shell's prompt ends the pane's last line once the VM is up.
i=0
while [ $i -lt 600 ] && ! pane | grep -v '^ *$' | tail -n 1 | grep -q '[$#] *$'; do
  sleep 0.5; i=$((i+1))
done
$T send-keys -t t 'echo auto-$((6*7)) $(nproc) $(sed -n "s/^MemTotal: *\([0-9]*\) kB/\1/p" /proc/meminfo); pwd' Enter
i=0; while [ $i -lt 100 ] && ! pane | grep -q '^auto-42'; do sleep 0.3; i=$((i+1)); done
echo "RIG-EXEC shell_pane=$(pane | grep -v '^ *$' | tr '\n' '|' | tail -c 1500)"
$T send-keys -t t 'exit' Enter
i=0; while [ $i -lt 50 ] && $T has-session -t t 2>/dev/null; do sleep 0.2; i=$((i+1)); done
if $T has-session -t t 2>/dev/null; then echo "RIG-EXEC shell_session=alive"; else echo "RIG-EXEC shell_session=gone"; fi
echo "RIG-EXEC shell_rc=$(cat /tmp/shell.rc 2>&1)"
$T kill-server 2>/dev/null
$AGENTVM status >/tmp/status.out 2>&1; echo "RIG-EXEC status_rc=$?"
echo "RIG-EXEC status=$(one_line /tmp/status.out)"
d=$(dirname "$(grep -l '"workspace": "/tmp/ws"' $S/*/config.json)")
id=$(basename "$d")
echo "RIG-EXEC id=$id"

# [[files]]: in the guest's home, and one way only.
$AGENTVM run 'cat ~/.gitconfig; stat -c "%u:%g %a %F" ~/.gitconfig /etc/npmrc; cat /etc/npmrc' >/tmp/files.out 2>&1; echo "RIG-EXEC files_rc=$?"
echo "RIG-EXEC files=$(one_line /tmp/files.out)"
$AGENTVM run 'echo "changed-in-guest" >> ~/.gitconfig' >/dev/null 2>&1
echo "RIG-EXEC host_file=$(one_line ~/dotfiles/gitconfig)"
echo "RIG-EXEC files_status=$($AGENTVM status 2>&1 | grep 'copied in' | tr '\n' '|')"

# A changed [resources]: `up` says so and keeps the VM; --restart applies it.
sed -i "s|^memory_mib = 512|memory_mib = 384|; s|^vcpus = 1|vcpus = 2|" .agentvm/config.toml
printf '\temail = newcomer@example.test\n' >> ~/dotfiles/gitconfig
$AGENTVM trust >/dev/null 2>&1
res='echo $(nproc) $(sed -n "s/^MemTotal: *\([0-9]*\) kB/\1/p" /proc/meminfo)'
echo "RIG-EXEC res_before=$($AGENTVM run "$res" 2>&1)"
$AGENTVM up >/tmp/up.out 2>&1; echo "RIG-EXEC up_rc=$?"
echo "RIG-EXEC up_out=$(one_line /tmp/up.out)"
echo "RIG-EXEC res_kept=$($AGENTVM run "$res" 2>&1)"
$AGENTVM up --restart >/tmp/restart.out 2>&1; echo "RIG-EXEC restart_rc=$?"
echo "RIG-EXEC restart_out=$(one_line /tmp/restart.out)"
echo "RIG-EXEC res_after=$($AGENTVM run "$res" 2>&1)"
$AGENTVM up >/tmp/up2.out 2>&1; echo "RIG-EXEC up2_rc=$?"
echo "RIG-EXEC up2_out=$(one_line /tmp/up2.out)"
echo "RIG-EXEC files_after_restart=$($AGENTVM run 'cat ~/.gitconfig' 2>&1 | tr '\n' '|')"

# destroy: not while running without --force; then everything goes.
list() {
  find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -name "*$id*" -print 2>/dev/null | grep -v '^/tmp/ws'
}
echo "RIG-EXEC places_before=$(list | wc -l)"
$AGENTVM destroy --yes >/tmp/destroy1.out 2>&1; echo "RIG-EXEC destroy_running_rc=$?"
echo "RIG-EXEC destroy_running=$(one_line /tmp/destroy1.out)"
$AGENTVM destroy --yes --force >/tmp/destroy.out 2>&1; echo "RIG-EXEC destroy_rc=$?"
echo "RIG-EXEC destroy_out=$(one_line /tmp/destroy.out)"
echo "RIG-EXEC places_after=$(list | tr '\n' ' ')"
n=0
for p in /proc/[0-9]*; do
  tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '__vmm\|virtiofsd' && n=$((n+1))
done
echo "RIG-EXEC leftover=$n"
$AGENTVM destroy --yes >/tmp/destroy2.out 2>&1; echo "RIG-EXEC destroy2_rc=$?"
echo "RIG-EXEC destroy2_out=$(one_line /tmp/destroy2.out)"
echo "RIG-EXEC workspace_kept=$(ls -A /tmp/ws | tr '\n' ' ')"
$AGENTVM attach --uds $UDS --poweroff
"##;

#[test]
fn shell_starts_the_vm_files_arrive_restart_applies_resources_and_destroy_leaves_nothing() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let mut boot = Boot::agent("newcomer", SCRIPT)
        .memory_mib(256)
        .with_virtiofsd()
        .with_tmux();
    boot.timeout = Duration::from_secs(900);
    let r = rig
        .run(&Scenario::new("newcomer", vec![boot]))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("newcomer").expect("boot ran");
    let t = Markers::new(&r, b);
    eprintln!(
        "scenario newcomer ({:?}): {:.1} s (L1 ready after {:.1} s)",
        r.tier,
        r.elapsed.as_secs_f64(),
        r.l1_ready.unwrap_or_default().as_secs_f64(),
    );
    assert_eq!(t.m("init_rc"), "0", "{}", t.ctx);
    assert_eq!(t.m("trust_rc"), "0", "{}; {}", t.m("trust"), t.ctx);
    check_shell(&t);
    check_files(&t);
    check_restart(&t);
    check_destroy(&t);
    assert_eq!(b.exit_code(), Some(0), "{}", t.ctx);
    if r.tier == Tier::Nested {
        assert!(
            r.l1_marker("done").is_some(),
            "L1 never finished; {}",
            t.ctx
        );
    }
}

/// `agentvm shell` started the VM (1 vCPU, 512 MiB as configured), ran
/// the typed command in the workspace, ended on `exit`; the VM stays up.
fn check_shell(t: &Markers<'_>) {
    assert_eq!(t.m("tmux_rc"), "0", "{}", t.ctx);
    let pane = t.m("shell_pane");
    let line = pane
        .split('|')
        .find(|l| l.starts_with("auto-42 "))
        .unwrap_or_else(|| panic!("no auto-42 in the pane: {pane}; {}", t.ctx));
    let (cpus, mem) = resources(line.trim_start_matches("auto-42 "));
    assert_eq!(cpus, 1, "{pane}; {}", t.ctx);
    assert!(
        (400_000..=524_288).contains(&mem),
        "MemTotal {mem} kB; {}",
        t.ctx
    );
    assert!(
        pane.contains("|/tmp/ws|"),
        "the shell opens in the workspace: {pane}; {}",
        t.ctx
    );
    assert_eq!(t.m("shell_session"), "gone", "`exit`: {pane}; {}", t.ctx);
    assert_eq!(t.m("shell_rc"), "0", "{}", t.ctx);
    assert_eq!(t.m("status_rc"), "0", "{}", t.ctx);
    assert!(
        t.m("status").contains("/tmp/ws"),
        "the VM the shell started runs on: {}; {}",
        t.m("status"),
        t.ctx
    );
    let id = t.m("id");
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "workspace id {id}; {}",
        t.ctx
    );
}

/// The host file arrived in the guest user's home; the guest's change
/// did not come back.
fn check_files(t: &Markers<'_>) {
    assert_eq!(t.m("files_rc"), "0", "{}; {}", t.m("files"), t.ctx);
    assert_eq!(
        t.m("files"),
        "[user]|\tname = Rig Newcomer|0:0 640 regular file|0:0 600 regular file|\
         registry=http://registry.test/|",
        "content, owner, the source's mode and the configured one; {}",
        t.ctx
    );
    assert!(
        t.m("files_status").contains("~/.gitconfig") && t.m("files_status").contains("/etc/npmrc"),
        "status lists the copied files: {}; {}",
        t.m("files_status"),
        t.ctx
    );
    assert!(
        t.m("shell_pane").contains("copied 2 files into the guest"),
        "the auto-start says what it copied: {}; {}",
        t.m("shell_pane"),
        t.ctx
    );
    assert_eq!(
        t.m("host_file"),
        "[user]|\tname = Rig Newcomer|",
        "a change in the guest flowed back; {}",
        t.ctx
    );
}

/// `up` on the running VM named the change and kept the VM as it was;
/// `up --restart` brought it up with 2 vCPUs and 384 MiB; the next `up`
/// finds nothing to change.
fn check_restart(t: &Markers<'_>) {
    let (cpus, mem) = resources(t.m("res_before"));
    assert_eq!(cpus, 1, "{}", t.ctx);
    assert_eq!(t.m("up_rc"), "0", "{}; {}", t.m("up_out"), t.ctx);
    let up = t.m("up_out");
    assert!(
        up.contains("vcpus")
            && up.contains("memory")
            && up.contains("~/.gitconfig changed")
            && up.contains("--restart"),
        "up should list the changed resources and file and suggest --restart: {up}; {}",
        t.ctx
    );
    assert_eq!(
        resources(t.m("res_kept")),
        (cpus, mem),
        "up without --restart changed the VM; {}",
        t.ctx
    );
    assert_eq!(t.m("restart_rc"), "0", "{}; {}", t.m("restart_out"), t.ctx);
    let (cpus2, mem2) = resources(t.m("res_after"));
    assert_eq!(cpus2, 2, "{}", t.ctx);
    assert!(
        (280_000..=393_216).contains(&mem2) && mem2 < mem,
        "MemTotal {mem2} kB after the restart, {mem} before; {}",
        t.ctx
    );
    assert_eq!(t.m("up2_rc"), "0", "{}", t.ctx);
    assert!(
        !t.m("up2_out").contains("--restart"),
        "nothing differs after the restart: {}; {}",
        t.m("up2_out"),
        t.ctx
    );
    assert!(
        t.m("files_after_restart")
            == "[user]|\tname = Rig Newcomer|\temail = newcomer@example.test|",
        "[[files]] again after the restart, as the host has it now: {}; {}",
        t.m("files_after_restart"),
        t.ctx
    );
    assert!(
        !t.m("files_after_restart").contains("changed-in-guest"),
        "{}",
        t.ctx
    );
}

/// `destroy` refused the running VM, then removed every place and said
/// so; nothing of the workspace's id is left, the workspace itself is.
fn check_destroy(t: &Markers<'_>) {
    let before: u32 = t.m("places_before").trim().parse().unwrap_or(0);
    // The state directory and the approval at least.
    assert!(before >= 2, "nothing to destroy? {}", t.ctx);
    assert_ne!(
        t.m("destroy_running_rc"),
        "0",
        "destroy removed a running VM without --force: {}; {}",
        t.m("destroy_running"),
        t.ctx
    );
    assert!(
        t.m("destroy_running").contains("--force"),
        "{}; {}",
        t.m("destroy_running"),
        t.ctx
    );
    assert_eq!(t.m("destroy_rc"), "0", "{}; {}", t.m("destroy_out"), t.ctx);
    assert_eq!(
        t.m("places_after").trim(),
        "",
        "left behind by destroy; {}",
        t.ctx
    );
    assert_eq!(
        t.m("leftover"),
        "0",
        "a VMM or virtiofsd outlived destroy; {}",
        t.ctx
    );
    assert_eq!(t.m("destroy2_rc"), "0", "{}", t.ctx);
    assert!(
        t.m("destroy2_out").to_lowercase().contains("nothing"),
        "{}; {}",
        t.m("destroy2_out"),
        t.ctx
    );
    assert_eq!(t.m("workspace_kept").trim(), ".agentvm", "{}", t.ctx);
}

/// "CPUS MEMTOTAL_KB" as the guest printed it.
fn resources(s: &str) -> (u32, u64) {
    let mut it = s.split_whitespace();
    let cpus = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mem = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (cpus, mem)
}
