//! T3 for agentvm's own guest kernel (`guest/kernel/build.sh`, built into
//! the kernel cache when missing: minutes): booted by agentvm with the
//! default image's initramfs (the guest agent as PID 1; everything it
//! needs is built in, so it loads no module), it serves exec over vsock,
//! finds its devices through ACPI, gets its address by DHCP from the
//! filtered network and resolves only the allowed name, mounts a virtio-fs
//! share read-write, inflates the balloon and reports free pages, on two
//! vCPUs (cores of one package, their TSC trusted as synchronised). A
//! second boot turns ACPI off: the devices then come from
//! `virtio_mmio.device=` on the command line, and the guest ends with a
//! reset (there is no power-off without ACPI).
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::tools::Tools;
use agentvm_rig::{error_chain, peers, Boot, Markers, Rig, Scenario, Tier};

/// L1 before agentvm starts: the disk with the kernel, a web server on
/// L1's loopback, the share's directory.
const SETUP: &str = r#"mkdir -p /disk && mount -t ext4 -o ro /dev/vda /disk
ip link set lo up
rm -rf /tmp/own-www /tmp/own-share
mkdir -p /tmp/own-www /tmp/own-share
echo allowed-ok > /tmp/own-www/index.html
echo from-l1 > /tmp/own-share/host.txt
busybox httpd -p 127.0.0.1:8080 -h /tmp/own-www"#;

/// Once the agent is ready.
const SCRIPT: &str = r#"A="$AGENTVM attach --uds $UDS"
one_line() { head -c 300 "$1" | tr '\n' ' '; }
echo "RIG-EXEC uname=$($A -- uname -r)"
echo "RIG-EXEC nproc=$($A -- nproc)"
# One package of two cores, not two packages: Linux believes an AMD
# machine's packages keep separate TSCs and would mark the TSC unstable.
echo "RIG-EXEC packages=$($A -- sh -c 'cat /sys/devices/system/cpu/cpu[0-9]*/topology/physical_package_id' | tr '\n' ' ')"
echo "RIG-EXEC cores=$($A -- sh -c 'cat /sys/devices/system/cpu/cpu[0-9]*/topology/core_id' | tr '\n' ' ')"
echo "RIG-EXEC tsc_unsynchronized=$($A -- sh -c 'dmesg | grep -c "TSCs unsynchronized"')"
# No module support at all: /proc/modules does not even exist.
echo "RIG-EXEC modules=$($A -- sh -c 'cat /proc/modules 2>/dev/null | wc -l')"
echo "RIG-EXEC acpi=$($A -- sh -c 'ls /sys/firmware/acpi/tables 2>/dev/null | grep -c DSDT')"
echo "RIG-EXEC virtio=$($A -- sh -c 'ls /sys/bus/virtio/devices | wc -l')"
$A -- sh -c 'exit 7'; echo "RIG-EXEC exit7_rc=$?"
$A -- sh -c 'for i in $(seq 1 100); do ip -4 addr show dev eth0 | grep -q 10.0.2.15 && break; sleep 0.1; done; ip -4 addr show dev eth0 | grep inet' >/tmp/ip.out 2>&1
echo "RIG-EXEC ip=$(one_line /tmp/ip.out)"
$A -- nslookup denied.test >/dev/null 2>&1; echo "RIG-EXEC ns_denied_rc=$?"
resolve='nslookup allowed.test | sed -n "s/^Address: *\([0-9.]*\)$/\1/p" | tail -n 1'
echo "RIG-EXEC get_allowed=$($A -- sh -c "timeout 10 wget -q -O - http://\$($resolve):8080/" 2>&1 | tr '\n' ' ')"
$A -- sh -c 'mkdir -p /mnt/own && mount -t virtiofs own /mnt/own && cat /mnt/own/host.txt && echo from-guest > /mnt/own/guest.txt' >/tmp/share.out 2>&1
echo "RIG-EXEC share_rc=$? share=$(one_line /tmp/share.out)"
echo "RIG-EXEC host_sees=$(cat /tmp/own-share/guest.txt 2>&1)"
i=0
while [ $i -lt 30 ]; do
  inflated=$($A -- awk '/^balloon_inflate /{print $2}' /proc/vmstat)
  [ "${inflated:-0}" -ge 4096 ] && break
  sleep 1; i=$((i+1))
done
echo "RIG-EXEC balloon_inflated=$inflated"
echo "RIG-EXEC reporting=$($A -- sh -c 'cat /sys/bus/virtio/drivers/virtio_balloon/*/features 2>/dev/null | cut -c6')"
$A --poweroff; echo "RIG-EXEC poweroff_rc=$?"
"#;

/// The second boot: devices from the command line.
const NO_ACPI_SCRIPT: &str = r#"A="$AGENTVM attach --uds $UDS"
echo "RIG-EXEC uname=$($A -- uname -r)"
echo "RIG-EXEC acpi=$($A -- sh -c 'ls /sys/firmware/acpi/tables 2>/dev/null | grep -c DSDT')"
echo "RIG-EXEC cmdline_devices=$($A -- sh -c 'tr " " "\n" < /proc/cmdline | grep -c virtio_mmio.device=')"
# Without ACPI there is no power-off, only a halt: the guest resets instead
# (reboot=k), on which agentvm exits.
$A -- reboot -f >/dev/null 2>&1
echo "RIG-EXEC reboot_sent=1"
"#;

#[test]
fn the_own_kernel_runs_the_agent_with_every_device() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let mut progress = |line: &str| eprintln!("own_kernel: {line}");
    let image = rig
        .own_image(&mut progress)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let nested = rig.tier() == Tier::Nested;
    let mut full = Boot::agent("own", SCRIPT)
        .own_kernel()
        .with_virtiofsd()
        .vcpus(2)
        .args(&[
            "--net",
            "filtered",
            "--host",
            "allowed.test=127.0.0.1",
            "--port",
            "8080",
            "--share",
            "/tmp/own-share:own",
            "--balloon",
            "16",
        ]);
    full.setup = Some(if nested {
        SETUP.to_string()
    } else {
        SETUP.lines().skip(1).collect::<Vec<_>>().join("\n")
    });
    full.timeout = Duration::from_secs(600);
    let mut no_acpi = Boot::agent("own-noacpi", NO_ACPI_SCRIPT).own_kernel();
    no_acpi.extra_cmdline = "acpi=off".into();
    no_acpi.timeout = Duration::from_secs(150);
    let mut scenario = Scenario::new("own-kernel", vec![full, no_acpi]);
    if nested {
        let disk = peers::disk(rig.cache(), Some(&image), &Tools::new())
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        scenario = scenario.with_disk(disk);
    }
    let r = rig
        .run(&scenario)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    eprintln!(
        "scenario own-kernel ({:?}): {:.1} s; log {}",
        r.tier,
        r.elapsed.as_secs_f64(),
        r.log_path.display()
    );

    let b = r.boot("own").expect("boot ran");
    let m = Markers::new(&r, b);
    eprintln!(
        "  own: agent ready after {:?}, VMM exit after {:?}",
        b.first_line, b.exit_after
    );
    assert!(
        m.m("uname").starts_with("6.12."),
        "uname -r: {}; {}",
        m.m("uname"),
        m.ctx
    );
    assert_eq!(m.m("nproc"), "2", "{}", m.ctx);
    assert_eq!(m.m("packages").trim(), "0 0", "{}", m.ctx);
    assert_eq!(m.m("cores").trim(), "0 1", "{}", m.ctx);
    assert_eq!(m.m("tsc_unsynchronized"), "0", "{}", m.ctx);
    assert_eq!(
        m.m("modules"),
        "0",
        "the own kernel needs no module; {}",
        m.ctx
    );
    assert_eq!(m.m("acpi"), "1", "devices through ACPI (a DSDT); {}", m.ctx);
    // net, vsock, rng, fs, balloon.
    assert!(
        m.m("virtio").parse::<u32>().unwrap_or(0) >= 5,
        "virtio devices: {}",
        m.m("virtio")
    );
    assert_eq!(m.m("exit7_rc"), "7", "{}", m.ctx);
    assert!(m.m("ip").contains("10.0.2.15/24"), "DHCP: {}", m.m("ip"));
    assert_ne!(
        m.m("ns_denied_rc"),
        "0",
        "a name the policy does not allow resolved"
    );
    assert_eq!(m.m("get_allowed").trim(), "allowed-ok", "{}", m.ctx);
    assert_eq!(
        m.m("share_rc").split(' ').next(),
        Some("0"),
        "share: {}",
        m.m("share_rc")
    );
    assert!(m.m("share_rc").contains("from-l1"), "{}", m.m("share_rc"));
    assert_eq!(m.m("host_sees"), "from-guest", "{}", m.ctx);
    assert!(
        m.m("balloon_inflated").parse::<u64>().unwrap_or(0) >= 4096,
        "--balloon 16: {} pages inflated; {}",
        m.m("balloon_inflated"),
        m.ctx
    );
    assert_eq!(
        m.m("reporting"),
        "1",
        "free page reporting negotiated; {}",
        m.ctx
    );
    assert_eq!(m.m("poweroff_rc"), "0", "{}", m.ctx);
    assert_eq!(b.exit_code(), Some(0), "{}", m.ctx);

    let b = r.boot("own-noacpi").expect("boot ran");
    let m = Markers::new(&r, b);
    assert!(
        m.m("uname").starts_with("6.12."),
        "uname -r: {}; {}",
        m.m("uname"),
        m.ctx
    );
    assert_eq!(m.m("acpi"), "0", "acpi=off; {}", m.ctx);
    assert!(
        m.m("cmdline_devices").parse::<u32>().unwrap_or(0) >= 2,
        "virtio_mmio.device= entries: {}",
        m.m("cmdline_devices")
    );
    assert_eq!(m.m("reboot_sent"), "1", "{}", m.ctx);
    assert_eq!(
        b.exit_code(),
        Some(0),
        "agentvm exits 0 on the guest's reset; {}",
        m.ctx
    );
}
