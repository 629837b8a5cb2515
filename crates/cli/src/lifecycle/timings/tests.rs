#![allow(clippy::unwrap_used)]

use super::*;

fn up_stamps(marks: &[(&'static str, u64)]) -> UpStamps {
    UpStamps {
        marks: marks.to_vec(),
    }
}

fn guest(lines: &[(&str, u64)]) -> Vec<(String, u64)> {
    lines.iter().map(|(n, t)| (n.to_string(), *t)).collect()
}

#[test]
fn the_guest_file_is_parsed_strictly() {
    let text = "agent_start 210000\n\
                ready 350000\r\n\
                bad-name 5\n\
                \u{1b}[31mred 7\n\
                modules_loaded notanumber\n\
                no_value\n\
                toolong_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1\n\
                network_started 18446744073709551615\n";
    assert_eq!(
        parse_guest(text),
        guest(&[
            ("agent_start", 210_000),
            ("ready", 350_000),
            ("network_started", u64::MAX)
        ])
    );
    let flood = "x 1\n".repeat(10_000);
    assert_eq!(parse_guest(&flood).len(), MAX_GUEST_LINES);
}

#[test]
fn host_and_guest_steps_line_up_at_the_ready_line() {
    let up = up_stamps(&[
        ("start", 1_000_000),
        ("configuration", 1_010_000),
        ("image", 1_012_000),
        ("prepared", 1_013_000),
        ("spawned", 1_015_000),
        ("ready", 2_000_500),
        ("configured", 2_010_000),
    ]);
    let vmm = VmmStamps {
        started_us: 1_014_000,
        build_us: 1_020_000,
        devices_us: 30_000,
        memory_us: 5_000,
        boot_image_us: 10_000,
        vcpus_us: 1_000,
        running_us: 1_070_000,
        ready_us: 2_000_000,
    };
    // The guest's clock: ready at 900 ms of uptime = host 2.000 s, so its
    // zero is host 1.100 s.
    let g = guest(&[
        ("initramfs_start", 100_000),
        ("initramfs_end", 300_000),
        ("kernel_runs_init", 400_000),
        ("agent_start", 410_000),
        ("modules_loaded", 600_000),
        ("ready", 900_000),
    ]);
    let rows = report(&up, Some(&vmm), &g);
    let row = |name: &str| rows.iter().find(|r| r.step == name).unwrap().clone();
    assert_eq!(row("configuration, approval, state").took_ms, 10.0);
    assert_eq!(row("starting the VMM process").at_ms, 14.0);
    assert_eq!(row("VMM: devices and virtiofsd").took_ms, 30.0);
    assert_eq!(row("VMM: vCPUs").at_ms, 66.0);
    assert_eq!(row("VMM: starting the vCPUs").at_ms, 70.0);
    assert_eq!(row("kernel: entry (clock starts)").at_ms, 100.0);
    assert_eq!(row("kernel: initramfs unpacked").took_ms, 200.0);
    assert_eq!(row("kernel: initramfs unpacked").at_ms, 400.0);
    assert_eq!(row("agent: kernel modules").took_ms, 190.0);
    assert_eq!(row("ready line seen by the VMM").at_ms, 1000.0);
    assert_eq!(row("ready seen by `up`").took_ms, 0.5);
    assert_eq!(rows.last().unwrap().at_ms, 1010.0);
    // The steps add up to the whole.
    let sum: f64 = rows.iter().map(|r| r.took_ms).sum();
    assert!((sum - 1010.0).abs() < 1e-6, "{sum}");
    assert!(render(&rows).ends_with(&format!("{:<52} {:>9} {:>9.1}\n", "total", "", 1010.0)));
}

#[test]
fn a_lying_guest_cannot_move_time_backwards() {
    let up = up_stamps(&[("start", 0), ("spawned", 5_000), ("ready", 50_000)]);
    let vmm = VmmStamps {
        started_us: 4_000,
        build_us: 6_000,
        running_us: 10_000,
        ready_us: 49_000,
        ..VmmStamps::default()
    };
    // Steps out of order and beyond the ready line.
    let g = guest(&[
        ("agent_start", 9_000_000),
        ("modules_loaded", 1),
        ("ready", 2),
    ]);
    let rows = report(&up, Some(&vmm), &g);
    let mut at = 0.0;
    for r in &rows {
        assert!(r.took_ms >= 0.0 && r.at_ms >= at, "{rows:?}");
        at = r.at_ms;
    }
    assert_eq!(rows.last().unwrap().at_ms, 50.0);
}

#[test]
fn without_the_vmm_or_the_guest_their_rows_are_left_out() {
    let up = up_stamps(&[("start", 0), ("spawned", 5_000), ("ready", 50_000)]);
    let rows = report(&up, None, &[]);
    let steps: Vec<&str> = rows.iter().map(|r| r.step.as_str()).collect();
    assert_eq!(steps, ["starting the VMM process", "ready seen by `up`"]);
}
