#![allow(clippy::unwrap_used)]
use agentvm_rig::{peers, tools::Tools, Boot, GuestMode, KernelFormat, Rig, Scenario};

#[test]
fn exp() {
    let rig = Rig::open_for_test().unwrap().unwrap();
    let k = peers::own_kernel(&mut |l: &str| eprintln!("{l}")).unwrap();
    let disk = peers::disk(rig.cache(), Some(&k), &Tools::new()).unwrap();
    let mut b = Boot::agentvm("own-verbose", KernelFormat::Vmlinux)
        .mode(GuestMode::Bench)
        .memory_mib(256)
        .own_kernel()
        .setup("mkdir -p /disk && mount -t ext4 -o ro /dev/vda /disk");
    b.verbose = true;
    b.timeout = std::time::Duration::from_secs(60);
    let r = rig
        .run(&Scenario::new("exp", vec![b]).with_disk(disk))
        .unwrap();
    for b in &r.boots {
        eprintln!(
            "EXP {} exit {} first {:?} exit_after {:?}",
            b.name,
            b.exit.to_marker(),
            b.first_line,
            b.exit_after
        );
    }
    eprintln!("log {}", r.log_path.display());
}
