//! T3, the test the product lives for: Claude Code, preinstalled in the
//! guest image's root file system, runs in the VM, talks to a stand-in for
//! the Anthropic Messages API and edits the workspace.
//!
//! The test builds the root file system (Debian 12, Node, Claude Code:
//! `agentvm_image::rootfs`, cached by content) and carries it into L1 on a
//! read-only virtio-blk disk made without root (`mke2fs -d`) with the rig's
//! kernel and initramfs beside it, so `image = "/disk"` is a self-contained
//! image directory. In L1 `rig-mock-llm` serves the Messages API on
//! 127.0.0.1:8080; the workspace pins `mock.test` there and points
//! `ANTHROPIC_BASE_URL` at it. Then: `up` (the guest boots into the root
//! file system: overlay over the erofs, shared read-only over virtio-fs),
//! `claude --version`, node/git/python, a `git commit` the host sees, and
//! `agentvm agent -p …`: Claude Code sends its request, the mock answers
//! with a `Write` tool call, Claude Code writes the file into the workspace,
//! sends the result back and gets the final text; the file is on the host,
//! and `agent` exits 0. Last, `sudo apt-get install` of a package the guest
//! builds itself (no network) is gone after `down`/`up`, and kept with
//! `persistent_root = true`.
//!
//! A second VM boots the same root file system on agentvm's own kernel
//! (the image `agentvm image build --kernel-build` makes, on the disk
//! too; its loop device, erofs, overlay and ext4 are built in): `up`,
//! Claude Code's version and the tools, with a persistent root.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_image::rootfs::{Rootfs, RootfsRecipe};
use agentvm_rig::image::disk_image;
use agentvm_rig::{error_chain, Boot, Rig, Scenario, Tier};

/// What the mock makes Claude Code write.
const CONTENT: &str = "written by claude in the VM";

/// In L1 before the rig's own VM: the disk, loopback, the mock API.
const SETUP: &str = r#"ip link set lo up
mkdir -p /disk && mount -t ext4 -o ro /dev/vda /disk
rm -rf /tmp/ws && mkdir -p /tmp/ws
/bin/rig-mock-llm --listen 127.0.0.1:8080 --write /tmp/ws/hello.txt --content 'CONTENT' --log /tmp/mock.log &"#;

/// Once the rig's own VM is up (it only carries this script).
const SCRIPT: &str = r##"one_line() { head -c 1500 "$1" | tr '\n' '|'; }
up() { cut -d' ' -f1 /proc/uptime; }
echo "RIG-EXEC disk=$(ls /disk | tr '\n' ' ')"
W=/tmp/ws; cd $W
$AGENTVM init --plugin claude-code >/tmp/init.out 2>&1; echo "RIG-EXEC init_rc=$?"
cat > .agentvm/config.toml <<'CONFIG'
name = "agent-e2e"
plugins = ["claude-code"]
image = "/disk"
[resources]
vcpus = 1
memory_mib = 1536
[network]
ports = [8080]
hosts = { "mock.test" = "127.0.0.1" }
[env]
ANTHROPIC_BASE_URL = "http://mock.test:8080"
ANTHROPIC_API_KEY = "sk-ant-api03-mock"
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1"
DISABLE_AUTOUPDATER = "1"
CONFIG
$AGENTVM trust >/tmp/trust.out 2>&1; echo "RIG-EXEC trust_rc=$?"
t0=$(up)
$AGENTVM up --timeout 900 >/tmp/up.out 2>&1; echo "RIG-EXEC up_rc=$?"
echo "RIG-EXEC up_out=$(one_line /tmp/up.out)"
t_up=$(up)
$AGENTVM run 'claude --version' >/tmp/version.out 2>&1; echo "RIG-EXEC version_rc=$?"
echo "RIG-EXEC version=$(one_line /tmp/version.out)"
t_version=$(up)
$AGENTVM run 'node --version; git --version; python3 -c "print(6*7)"; id -un; test -w / && echo root-writable' >/tmp/tools.out 2>&1
echo "RIG-EXEC tools_rc=$?"
echo "RIG-EXEC tools=$(one_line /tmp/tools.out)"
$AGENTVM run 'git init -q && git -c user.email=a@b.c -c user.name=t commit -q --allow-empty -m first-commit && git log --format=%s' >/tmp/git.out 2>&1
echo "RIG-EXEC git_rc=$?"
echo "RIG-EXEC git=$(one_line /tmp/git.out)"
echo "RIG-EXEC host_head=$(cat .git/HEAD 2>&1)"
echo "RIG-EXEC host_objects=$(find .git/objects -type f 2>/dev/null | wc -l)"
t_tools=$(up)
$AGENTVM agent -p "Create hello.txt in the workspace" >/tmp/agent.out 2>&1; echo "RIG-EXEC agent_rc=$?"
t_agent=$(up)
echo "RIG-EXEC agent_out=$(one_line /tmp/agent.out)"
echo "RIG-EXEC hello=$(cat $W/hello.txt 2>&1)"
echo "RIG-EXEC hello_uid=$(stat -c %u $W/hello.txt 2>&1)"
echo "RIG-EXEC mock=$(one_line /tmp/mock.log)"
$AGENTVM logs >/tmp/console.txt 2>&1
echo "RIG-EXEC console=$(tail -c 1500 /tmp/console.txt | tr '\n' '|')"

# `sudo apt-get install` of a local package (no network): gone after
# down/up by default, kept with persistent_root.
install_marker() {
  $AGENTVM run 'set -e; mkdir -p /tmp/p/DEBIAN
printf "Package: rig-marker\nVersion: 1.0\nArchitecture: all\nMaintainer: rig <rig@test>\nDescription: rig marker\n" > /tmp/p/DEBIAN/control
dpkg-deb -b /tmp/p /tmp/rig-marker.deb >/dev/null
sudo apt-get install -y -q /tmp/rig-marker.deb >/dev/null 2>&1
dpkg -s rig-marker | grep "^Status"' 2>&1 | tr '\n' ' '
}
marker() { $AGENTVM run 'dpkg -s rig-marker 2>&1 | grep -c "^Status: install ok installed"'; }
echo "RIG-EXEC install1=$(install_marker)"
$AGENTVM down >/tmp/down.out 2>&1; echo "RIG-EXEC down_rc=$?"
$AGENTVM up --timeout 900 >/tmp/up2.out 2>&1; echo "RIG-EXEC up2_rc=$?"
echo "RIG-EXEC after_plain=$(marker)"
$AGENTVM down >/dev/null 2>&1
sed -i 's/^memory_mib = 1536$/memory_mib = 1536\npersistent_root = true/' .agentvm/config.toml
$AGENTVM trust >/tmp/trust2.out 2>&1; echo "RIG-EXEC trust2_rc=$?"
$AGENTVM up --timeout 900 >/tmp/up3.out 2>&1; echo "RIG-EXEC up3_rc=$?"
echo "RIG-EXEC up3=$(one_line /tmp/up3.out)"
echo "RIG-EXEC install2=$(install_marker)"
$AGENTVM down >/dev/null 2>&1
$AGENTVM up --timeout 900 >/tmp/up4.out 2>&1; echo "RIG-EXEC up4_rc=$?"
echo "RIG-EXEC after_persistent=$(marker)"
$AGENTVM down >/tmp/down2.out 2>&1; echo "RIG-EXEC down2_rc=$?"
echo "RIG-EXEC times=$t0 $t_up $t_version $t_tools $t_agent"
$AGENTVM attach --uds $UDS --poweroff
"##;

/// In L1 before the second VM: an image directory with our kernel and the
/// same root file system (bound in, as a symbolic link would point
/// nowhere inside the guest, which reads it over virtio-fs).
const OWN_SETUP: &str = r#"rm -rf /tmp/own-img && mkdir -p /tmp/own-img
for f in vmlinux bzImage initrd.img cmdline; do ln -s /disk/own-kernel/$f /tmp/own-img/$f; done
touch /tmp/own-img/rootfs.erofs && mount --bind /disk/rootfs.erofs /tmp/own-img/rootfs.erofs
rm -rf /tmp/ws-own && mkdir -p /tmp/ws-own"#;

/// The second VM: the root file system on our kernel.
const OWN_SCRIPT: &str = r##"one_line() { head -c 1500 "$1" | tr '\n' '|'; }
cd /tmp/ws-own
$AGENTVM init --plugin claude-code >/tmp/init-own.out 2>&1; echo "RIG-EXEC init_rc=$?"
cat > .agentvm/config.toml <<'CONFIG'
name = "agent-own"
plugins = ["claude-code"]
image = "/tmp/own-img"
[resources]
vcpus = 1
memory_mib = 1536
persistent_root = true
CONFIG
$AGENTVM trust >/tmp/trust-own.out 2>&1; echo "RIG-EXEC trust_rc=$?"
$AGENTVM up --timeout 900 >/tmp/up-own.out 2>&1; echo "RIG-EXEC up_rc=$?"
echo "RIG-EXEC up_out=$(one_line /tmp/up-own.out)"
echo "RIG-EXEC kernel=$($AGENTVM run 'uname -r' 2>&1)"
$AGENTVM run 'claude --version' >/tmp/version-own.out 2>&1; echo "RIG-EXEC version_rc=$?"
echo "RIG-EXEC version=$(one_line /tmp/version-own.out)"
$AGENTVM run 'node --version; git --version; python3 -c "print(6*7)"; findmnt -n -o FSTYPE /' >/tmp/tools-own.out 2>&1
echo "RIG-EXEC tools_rc=$?"
echo "RIG-EXEC tools=$(one_line /tmp/tools-own.out)"
$AGENTVM down >/tmp/down-own.out 2>&1; echo "RIG-EXEC down_rc=$?"
$AGENTVM attach --uds $UDS --poweroff
"##;

#[test]
fn claude_code_runs_in_the_vm_and_edits_the_workspace() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    if rig.tier() != Tier::Nested {
        // The disk is how the root file system reaches L1; on a host whose
        // KVM boots Linux itself the image directory would be used in place.
        eprintln!("skipped: the agent scenario carries its image on an L1 disk (nested tier)");
        return;
    }
    if agentvm_image::which("mmdebstrap").is_none() && !agentvm_rig::required() {
        eprintln!("skipped: mmdebstrap not found (apt-get install mmdebstrap uidmap erofs-utils)");
        return;
    }
    let l2 = rig
        .l2_image()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let own = rig
        .own_image(&mut |line: &str| eprintln!("own kernel: {line}"))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let disk = {
        // The rig holds the cache's lock for as long as it is open.
        let cache = rig.cache();
        let recipe = RootfsRecipe::new(vec![], vec!["@anthropic-ai/claude-code".into()]);
        let t = std::time::Instant::now();
        let fs = Rootfs::build(cache, &recipe, &mut |line: &str| {
            eprintln!("rootfs: {line}")
        })
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        eprintln!(
            "root file system: {:.0} MB erofs ({:.0} MB tree), {:.1} s ({:?})",
            fs.manifest.erofs_bytes as f64 / 1e6,
            fs.manifest.tree_bytes as f64 / 1e6,
            t.elapsed().as_secs_f64(),
            fs.timings
        );
        let key = format!(
            "disk-agent-{}-{}-{}",
            fs.dir.file_name().unwrap().to_string_lossy(),
            l2.key,
            own.key
        );
        let files = [
            ("vmlinux", l2.dir.join("vmlinux")),
            ("initrd.img", l2.dir.join("initrd.img")),
            ("cmdline", l2.dir.join("cmdline")),
            ("rootfs.erofs", fs.erofs.clone()),
            ("own-kernel/vmlinux", own.vmlinux.clone()),
            ("own-kernel/bzImage", own.bzimage.clone()),
            ("own-kernel/initrd.img", own.initrd.clone()),
            ("own-kernel/cmdline", own.dir.join("cmdline")),
        ];
        let files: Vec<(&str, &std::path::Path)> =
            files.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let disk =
            disk_image(cache, &key, &files).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        cache.prune("disk-agent-", 1);
        disk
    };
    let mut boot = Boot::agent("agent", SCRIPT)
        .memory_mib(256)
        .with_virtiofsd()
        .setup(&SETUP.replace("CONTENT", CONTENT));
    boot.timeout = Duration::from_secs(2400);
    let mut own_boot = Boot::agent("agent-own", OWN_SCRIPT)
        .memory_mib(256)
        .with_virtiofsd()
        .setup(OWN_SETUP);
    own_boot.timeout = Duration::from_secs(1200);
    let r = rig
        .run(&Scenario::new("agent", vec![boot, own_boot]).with_disk(disk))
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("agent").expect("boot ran");
    let ctx = r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!(
        "scenario agent: {:.1} s; L1 uptimes start/up/version/tools/agent: {}; up: {}",
        r.elapsed.as_secs_f64(),
        m("times"),
        m("up_out")
    );
    for k in ["init_rc", "trust_rc", "up_rc"] {
        assert_eq!(m(k), "0", "{k}: {}; {ctx}", m("up_out"));
    }
    assert_eq!(m("version_rc"), "0", "{}; {ctx}", m("version"));
    assert!(
        m("version").contains("Claude Code"),
        "{}; {ctx}",
        m("version")
    );
    assert_eq!(m("tools_rc"), "0", "{}; {ctx}", m("tools"));
    let tools = m("tools");
    assert!(
        tools.starts_with("v2") && tools.contains("git version") && tools.contains("|42|"),
        "{tools}; {ctx}"
    );
    assert_eq!(m("git_rc"), "0", "{}; {ctx}", m("git"));
    assert!(m("git").contains("first-commit"), "{ctx}");
    assert!(m("host_head").starts_with("ref: refs/heads/"), "{ctx}");
    assert_ne!(m("host_objects"), "0", "the host sees the commit; {ctx}");
    assert_eq!(
        m("agent_rc"),
        "0",
        "{}; mock: {}; {ctx}",
        m("agent_out"),
        m("mock")
    );
    assert_eq!(
        m("hello"),
        CONTENT,
        "{}; mock: {}; {ctx}",
        m("agent_out"),
        m("mock")
    );
    // Run as root in L1, the guest's user is root: the owner is L1's user.
    assert_eq!(m("hello_uid"), "0", "{ctx}");
    assert!(m("mock").contains("tool_use Write"), "{}; {ctx}", m("mock"));
    assert!(
        m("mock").contains("Done: the file is written."),
        "{}; {ctx}",
        m("mock")
    );
    assert!(
        m("agent_out").contains("Done: the file is written."),
        "{}; {ctx}",
        m("agent_out")
    );
    assert_eq!(m("down_rc"), "0", "{ctx}");
    // The root's writable layer: memory by default, the host with
    // persistent_root.
    assert!(
        m("install1").contains("install ok installed"),
        "{}; {ctx}",
        m("install1")
    );
    assert_eq!(m("up2_rc"), "0", "{ctx}");
    assert_eq!(
        m("after_plain"),
        "0",
        "an install survived without persistent_root; {ctx}"
    );
    assert_eq!(m("trust2_rc"), "0", "{ctx}");
    assert_eq!(m("up3_rc"), "0", "{}; {ctx}", m("up3"));
    assert!(
        m("install2").contains("install ok installed"),
        "{}; {ctx}",
        m("install2")
    );
    assert_eq!(m("up4_rc"), "0", "{ctx}");
    assert_eq!(
        m("after_persistent"),
        "1",
        "the install did not survive down/up; {ctx}"
    );
    assert_eq!(m("down2_rc"), "0", "{ctx}");
    assert_eq!(b.exit_code(), Some(0), "{ctx}");
    own_kernel_runs_the_root_file_system(&r);
}

/// The second VM's checks: the root file system on our kernel.
fn own_kernel_runs_the_root_file_system(r: &agentvm_rig::ScenarioResult) {
    let b = r.boot("agent-own").expect("boot ran");
    let ctx = r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!("own kernel: up: {}; tools: {}", m("up_out"), m("tools"));
    for k in [
        "init_rc",
        "trust_rc",
        "up_rc",
        "version_rc",
        "tools_rc",
        "down_rc",
    ] {
        assert_eq!(m(k), "0", "{k}: {}; {ctx}", m("up_out"));
    }
    assert!(m("kernel").starts_with("6.12."), "{}; {ctx}", m("kernel"));
    assert!(
        m("version").contains("Claude Code"),
        "{}; {ctx}",
        m("version")
    );
    let tools = m("tools");
    assert!(
        tools.starts_with("v2") && tools.contains("git version") && tools.contains("|42|"),
        "{tools}; {ctx}"
    );
    assert!(
        tools.contains("overlay"),
        "the root is the overlay: {tools}; {ctx}"
    );
    assert_eq!(b.exit_code(), Some(0), "{ctx}");
}
