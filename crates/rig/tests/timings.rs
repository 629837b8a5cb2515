//! T3 for `agentvm up --timings`: a workspace VM started in L1 (its
//! workspace shared through virtiofsd) prints where the start's time went,
//! with rows from `up`, the VMM, the kernel and the guest agent that add up
//! to the whole. Twice with the default image (Debian's kernel and its
//! modules), so the second start shows the figures with warm caches; then
//! twice with the image `agentvm image build --kernel-build` makes
//! (agentvm's own kernel, built when its cache lacks it: minutes), which
//! loads no modules. The scenario prints all four tables.
#![allow(clippy::unwrap_used)] // a panicking test is a failing test

use std::time::Duration;

use agentvm_rig::scenario::BootPaths;
use agentvm_rig::tools::Tools;
use agentvm_rig::{error_chain, peers, Boot, Markers, Rig, Scenario, Tier};

/// L1 before agentvm starts: the disk with the own-kernel image.
const SETUP: &str = "mkdir -p /disk && mount -t ext4 -o ro /dev/vda /disk";

const SCRIPT: &str = r##"W=/tmp/tws
rm -rf $W && mkdir -p $W && cd $W
$AGENTVM init >/dev/null 2>&1
sed -i "s|^# image = .*|image = \"/l2\"|; s|^# memory_mib = .*|memory_mib = 512|; s|^# vcpus = .*|vcpus = 1|" .agentvm/config.toml
$AGENTVM trust >/dev/null 2>&1; echo "RIG-EXEC trust_rc=$?"
for i in 1 2 own1 own2; do
  if [ $i = own1 ]; then
    sed -i "s|^image = .*|image = \"OWN_IMAGE\"|" .agentvm/config.toml
    $AGENTVM trust >/dev/null 2>&1; echo "RIG-EXEC trust_own_rc=$?"
  fi
  $AGENTVM up --timings >/tmp/up$i.out 2>&1; echo "RIG-EXEC up${i}_rc=$?"
  echo "RIG-EXEC up${i}=$(tr '\n' '|' < /tmp/up$i.out)"
  $AGENTVM run true; echo "RIG-EXEC run${i}_rc=$?"
  echo "RIG-EXEC kernel${i}=$($AGENTVM run -- uname -r)"
  echo "RIG-EXEC modules${i}=$($AGENTVM run -- cat /proc/modules | wc -l)"
  $AGENTVM down >/dev/null 2>&1; echo "RIG-EXEC down${i}_rc=$?"
done
$AGENTVM attach --uds $UDS --poweroff
"##;

/// The rows of a printed table: `(step, took ms, at ms)`; `total` has no
/// time of its own.
fn rows(out: &str) -> Vec<(String, f64, f64)> {
    out.split('|')
        .skip_while(|l| !l.starts_with("step "))
        .skip(1)
        .filter_map(|l| {
            let toks: Vec<&str> = l.split_whitespace().collect();
            let at: f64 = toks.last()?.parse().ok()?;
            if toks == ["total", toks[1]] {
                return Some(("total".to_string(), 0.0, at));
            }
            let took: f64 = toks.get(toks.len().checked_sub(2)?)?.parse().ok()?;
            Some((toks[..toks.len() - 2].join(" "), took, at))
        })
        .collect()
}

#[test]
fn up_timings_break_a_start_down_from_the_command_to_ready() {
    let Some(rig) = Rig::open_for_test().unwrap_or_else(|e| panic!("{}", error_chain(&e))) else {
        return;
    };
    let mut progress = |line: &str| eprintln!("timings: {line}");
    let own = rig
        .own_image(&mut progress)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let nested = rig.tier() == Tier::Nested;
    let own_dir = if nested {
        BootPaths::in_l1().own_image_dir
    } else {
        own.dir.clone()
    };
    let script = SCRIPT.replace("OWN_IMAGE", &own_dir.to_string_lossy());
    let mut boot = Boot::agent("timings", &script).with_virtiofsd();
    boot.timeout = Duration::from_secs(900);
    let mut scenario = Scenario::new("timings", vec![]);
    if nested {
        boot = boot.setup(SETUP);
        let disk = peers::disk(rig.cache(), Some(&own), &Tools::new())
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        scenario = scenario.with_disk(disk);
    }
    scenario.boots.push(boot);
    let r = rig
        .run(&scenario)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let b = r.boot("timings").expect("boot ran");
    let t = Markers::new(&r, b);
    assert_eq!(b.exit_code(), Some(0), "the rig's VM powers off; {}", t.ctx);
    assert_eq!(t.m("trust_own_rc"), "0", "{}", t.ctx);
    for i in ["1", "2", "own1", "own2"] {
        let own = i.starts_with("own");
        let out = t.m(&format!("up{i}"));
        eprintln!("up #{i}:\n{}", out.replace('|', "\n"));
        assert_eq!(t.m(&format!("up{i}_rc")), "0", "{}", t.ctx);
        assert_eq!(t.m(&format!("run{i}_rc")), "0", "{}", t.ctx);
        assert_eq!(t.m(&format!("down{i}_rc")), "0", "{}", t.ctx);
        // Debian's kernel with its modules, or ours with none.
        let kernel = t.m(&format!("kernel{i}"));
        let modules: u32 = t.m(&format!("modules{i}")).parse().unwrap_or(u32::MAX);
        if own {
            assert!(kernel.starts_with("6.12."), "{kernel}; {}", t.ctx);
            assert_eq!(modules, 0, "{}", t.ctx);
        } else {
            assert!(kernel.ends_with("-cloud-amd64"), "{kernel}; {}", t.ctx);
            assert!(modules > 5, "{modules} modules; {}", t.ctx);
        }
        let rows = rows(out);
        let step = |name: &str| {
            rows.iter()
                .find(|r| r.0 == name)
                .unwrap_or_else(|| panic!("no row {name:?} in {rows:?}; {}", t.ctx))
        };
        for name in [
            "configuration, approval, state",
            "starting the VMM process",
            "VMM: devices and virtiofsd",
            "VMM: kernel and initrd loaded",
            "kernel: entry (clock starts)",
            "kernel: initramfs unpacked",
            "agent: kernel modules",
            "agent: shares and tmpfs",
            "ready line seen by the VMM",
            "ready seen by `up`",
        ] {
            step(name);
        }
        // The rows follow one another and add up to the total.
        let total = rows.iter().find(|r| r.0 == "total").map(|r| r.2).unwrap();
        let sum: f64 = rows.iter().filter(|r| r.0 != "total").map(|r| r.1).sum();
        assert!(
            (sum - total).abs() < 1.0,
            "rows add to {sum}, total {total}; {}",
            t.ctx
        );
        // The kernel and the agent take real time; a misaligned clock would
        // put them at zero.
        assert!(step("kernel: initramfs unpacked").1 > 0.0, "{rows:?}");
        if !own {
            assert!(step("agent: kernel modules").1 > 0.0, "{rows:?}");
        }
    }
}
