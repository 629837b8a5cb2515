//! The guest's side of `agentvm up --timings`: when PID 1 reached each step
//! of its start, and when the kernel unpacked the initramfs and ran us, in
//! microseconds of uptime (`CLOCK_BOOTTIME`, which starts with the kernel).
//!
//! Written once, when the agent is ready, to [`FILE`] as lines
//! `NAME MICROSECONDS`; the host reads it with an ordinary command. The
//! kernel's steps come from `/dev/kmsg`, whose records carry their time
//! whatever `quiet` hides from the console.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Where the milestones are written.
pub const FILE: &str = "/run/agentvm/boot-times";

/// Kernel log messages that mark a step: (milestone, message prefix); the
/// first of a milestone's messages to appear marks it.
const KERNEL_STEPS: &[(&str, &str)] = &[
    // With CONFIG_BLK_DEV_RAM (Debian's kernel) …
    (
        "initramfs_start",
        "Trying to unpack rootfs image as initramfs",
    ),
    // … and without (agentvm's own).
    ("initramfs_start", "Unpacking initramfs"),
    ("initramfs_end", "Freeing initrd memory"),
    ("kernel_runs_init", "Run /init as init process"),
];

/// The most kernel log records read (the boot's are among the first).
const MAX_RECORDS: usize = 8192;

/// Milestones in the order they were reached.
#[derive(Debug, Default)]
pub struct BootTimes {
    marks: Vec<(&'static str, Duration)>,
}

impl BootTimes {
    /// Starts with the agent's own start.
    pub fn start() -> Self {
        let mut t = BootTimes::default();
        t.mark("agent_start");
        t
    }

    /// Notes that `step` is done now.
    pub fn mark(&mut self, step: &'static str) {
        if let Some(now) = uptime() {
            self.marks.push((step, now));
        }
    }

    /// The file's text: the kernel's steps, then ours.
    pub fn render(&self, kernel: &[(&'static str, Duration)]) -> String {
        kernel
            .iter()
            .chain(&self.marks)
            .map(|(name, at)| format!("{name} {}\n", at.as_micros()))
            .collect()
    }

    /// Writes [`FILE`] (best effort: timings are never worth failing a boot).
    pub fn write(&self) {
        let text = self.render(&kernel_steps(&read_kmsg()));
        let path = std::path::Path::new(FILE);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, text) {
            crate::log!("cannot write {FILE}: {e}");
        }
    }
}

fn uptime() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .ok()
        .map(Duration::from)
}

/// The records in the kernel's log buffer so far (without waiting for more).
fn read_kmsg() -> String {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg");
    let Ok(mut file) = file else {
        return String::new();
    };
    let mut out = String::new();
    // One record per read; EAGAIN at the end, EPIPE when a record was
    // overwritten before we got to it (skip it).
    let mut buf = vec![0u8; 8192];
    for _ in 0..MAX_RECORDS {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    out
}

/// The first time each of [`KERNEL_STEPS`] appears in `kmsg` (records
/// `PRIO,SEQ,MICROSECONDS,FLAGS;MESSAGE`).
pub fn kernel_steps(kmsg: &str) -> Vec<(&'static str, Duration)> {
    let mut found: Vec<(&'static str, Duration)> = Vec::new();
    for line in kmsg.lines() {
        let Some((head, message)) = line.split_once(';') else {
            continue;
        };
        let Some(micros) = head.split(',').nth(2).and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        for &(name, prefix) in KERNEL_STEPS {
            if message.starts_with(prefix) && !found.iter().any(|(n, _)| *n == name) {
                found.push((name, Duration::from_micros(micros)));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_steps_are_found_once_each_and_garbage_is_skipped() {
        let kmsg = "6,0,0,-;Linux version 6.1.0\n\
                    garbage without a separator\n\
                    6,1,notanumber,-;Trying to unpack rootfs image as initramfs...\n\
                    6,2,120500,-;Trying to unpack rootfs image as initramfs...\n\
                    6,3,180250,-;Freeing initrd memory: 1234K\n\
                    6,4,999999,-;Freeing initrd memory: again\n\
                    6,5,200000,-;Run /init as init process\n\
                     SUBSYSTEM=continuation line\n";
        assert_eq!(
            kernel_steps(kmsg),
            vec![
                ("initramfs_start", Duration::from_micros(120_500)),
                ("initramfs_end", Duration::from_micros(180_250)),
                ("kernel_runs_init", Duration::from_micros(200_000)),
            ]
        );
        assert!(kernel_steps("").is_empty());
        // A kernel without ramdisk support says it another way.
        let ours = "6,0,100,-;Unpacking initramfs...\n6,1,150,-;Freeing initrd memory: 9K\n";
        assert_eq!(
            kernel_steps(ours),
            vec![
                ("initramfs_start", Duration::from_micros(100)),
                ("initramfs_end", Duration::from_micros(150)),
            ]
        );
    }

    #[test]
    fn the_file_lists_kernel_steps_then_ours_in_microseconds() {
        let ours = BootTimes {
            marks: vec![
                ("agent_start", Duration::from_millis(210)),
                ("ready", Duration::from_millis(350)),
            ],
        };
        let text = ours.render(&[("kernel_runs_init", Duration::from_micros(200_001))]);
        assert_eq!(
            text,
            "kernel_runs_init 200001\nagent_start 210000\nready 350000\n"
        );
    }

    #[test]
    fn marks_follow_the_clock() {
        let mut t = BootTimes::start();
        t.mark("later");
        assert_eq!(t.marks.len(), 2);
        assert!(t.marks[0].1 <= t.marks[1].1);
        assert_eq!(t.marks[0].0, "agent_start");
    }
}
