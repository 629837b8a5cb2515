//! T3 for agentvm-vmm's embedding example (`crates/vmm/examples/
//! boot_and_exec.rs`), run in L1 as a library user runs it: built static
//! like agentvm, carried on the scenario's disk, it boots the rig's L2 image
//! with a shared directory and a filtered network, runs a command through
//! the guest agent and powers the guest off. (The rig's own VM only carries
//! the script.) The vhost-user example runs in `vhost_user.rs`.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_image::KeyHasher;
use agentvm_rig::image::{disk_image, l1_paths};
use agentvm_rig::{binaries, error_chain, Boot, Rig, Scenario, Tier};

/// What the example runs in its guest: wait for the DHCP lease, show it,
/// read the host's file and answer in the share, try a name the policy
/// does not allow.
const COMMAND: &str = "for i in $(seq 1 100); do ip -4 addr show dev eth0 | grep -q 10.0.2.15 \
&& break; sleep 0.1; done; ip -4 addr show dev eth0 | grep -o 'inet [0-9.]*'; \
cat /tmp/ex-shared/greeting; echo from-the-guest > /tmp/ex-shared/reply; \
nslookup denied.test >/dev/null 2>&1; echo denied_rc=$?";

/// Once the rig's VM is up: the example, then what it left in the share.
const SCRIPT: &str = r#"one_line() { head -c 800 "$1" | tr '\n' '|'; }
MOUNT
rm -rf /tmp/ex-shared && mkdir -p /tmp/ex-shared && echo from-the-host > /tmp/ex-shared/greeting
EXAMPLE IMAGE /tmp/ex-shared "$COMMAND" >/tmp/ex.out 2>/tmp/ex.err; echo "RIG-EXEC example_rc=$?"
echo "RIG-EXEC result=$(sed -n '/^--- /,$p' /tmp/ex.out | tr '\n' '|')"
echo "RIG-EXEC stderr=$(one_line /tmp/ex.err)"
echo "RIG-EXEC reply=$(cat /tmp/ex-shared/reply)"
$AGENTVM attach --uds $UDS --poweroff
"#;

#[test]
fn the_embedding_example_boots_the_image_and_runs_a_command() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let bins = binaries::build().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let example = bins.example("boot_and_exec");
    let (mount, example_path, image, disk) = match rig.tier() {
        Tier::Nested => {
            let mut key = KeyHasher::default();
            key.add_file(&example).unwrap();
            let name = format!("disk-example-{}", key.hex());
            let disk = disk_image(rig.cache(), &name, &[("boot_and_exec", &example)])
                .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
            rig.cache().prune("disk-example-", 1);
            (
                "mkdir -p /disk && mount -t ext4 -o ro /dev/vda /disk",
                format!("{}/boot_and_exec", l1_paths::DISK_DIR),
                l1_paths::L2_DIR.to_string(),
                Some(disk),
            )
        }
        Tier::Direct => {
            let l2 = rig
                .l2_image()
                .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
            (
                ":",
                example.display().to_string(),
                l2.dir.display().to_string(),
                None,
            )
        }
    };
    let script = format!(
        "COMMAND={}\n{SCRIPT}",
        agentvm_rig::scenario::shell_quote(COMMAND)
    )
    .replace("MOUNT", mount)
    .replace("EXAMPLE", &example_path)
    .replace("IMAGE", &image);
    let mut boot = Boot::agent("example", &script)
        .memory_mib(256)
        .with_virtiofsd();
    boot.timeout = Duration::from_secs(900);
    let mut scenario = Scenario::new("example", vec![boot]);
    if let Some(disk) = disk {
        scenario = scenario.with_disk(disk);
    }
    let r = rig
        .run(&scenario)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("example").expect("boot ran");
    let ctx = r.context(b);
    let m = |k: &str| b.exec_marker(k).unwrap_or("<missing>");
    eprintln!(
        "scenario example ({:?}): {:.1} s; result: {}",
        r.tier,
        r.elapsed.as_secs_f64(),
        m("result")
    );
    assert_eq!(m("example_rc"), "0", "stderr: {}; {ctx}", m("stderr"));
    let result = m("result");
    assert!(
        result.starts_with("--- Code(0), VM PowerOff:"),
        "{result}; {ctx}"
    );
    for want in ["inet 10.0.2.15", "from-the-host", "denied_rc=1"] {
        assert!(result.contains(want), "{want} missing: {result}; {ctx}");
    }
    assert_eq!(m("reply"), "from-the-guest", "{ctx}");
}
