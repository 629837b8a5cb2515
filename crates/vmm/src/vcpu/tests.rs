use std::collections::VecDeque;
use std::sync::Mutex;

use agentvm_devices::bus::BusDevice;

use super::*;

/// A scripted exit source: each entry is one exit.
enum Scripted {
    In(u16, usize),
    Out(u16, Vec<u8>),
    MmioIn(u64, usize),
    MmioOut(u64, Vec<u8>),
    Event(u32),
    Hlt,
    Shutdown,
    Interrupted,
    Failed,
}

struct Script {
    exits: VecDeque<Scripted>,
    buf: Vec<u8>,
    /// Whether `buf` holds what the loop answered to a read exit.
    answered: bool,
    reads: Vec<Vec<u8>>,
    cleared: usize,
}

impl Script {
    fn new(exits: Vec<Scripted>) -> Self {
        Script {
            exits: exits.into(),
            buf: Vec::new(),
            answered: false,
            reads: Vec::new(),
            cleared: 0,
        }
    }
}

impl ExitSource for Script {
    fn next_exit(&mut self) -> Exit<'_> {
        if std::mem::take(&mut self.answered) {
            self.reads.push(std::mem::take(&mut self.buf));
        }
        match self.exits.pop_front() {
            Some(Scripted::In(port, n)) => {
                self.buf = vec![0; n];
                self.answered = true;
                Exit::IoIn(port, &mut self.buf)
            }
            Some(Scripted::Out(port, data)) => {
                self.buf = data;
                Exit::IoOut(port, &self.buf)
            }
            Some(Scripted::MmioIn(addr, n)) => {
                self.buf = vec![0; n];
                self.answered = true;
                Exit::MmioRead(addr, &mut self.buf)
            }
            Some(Scripted::MmioOut(addr, data)) => {
                self.buf = data;
                Exit::MmioWrite(addr, &self.buf)
            }
            Some(Scripted::Event(e)) => Exit::SystemEvent(e),
            Some(Scripted::Hlt) => Exit::Hlt,
            Some(Scripted::Shutdown) => Exit::Shutdown,
            Some(Scripted::Interrupted) => Exit::Interrupted,
            Some(Scripted::Failed) | None => Exit::Failed("script ended".into()),
        }
    }

    fn clear_stop_request(&mut self) {
        self.cleared += 1;
    }
}

#[derive(Default)]
struct Log(Vec<(u64, Vec<u8>)>);

impl BusDevice for Log {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0x40 + offset as u8);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.push((offset, data.to_vec()));
    }
}

fn buses() -> (Buses, Arc<Mutex<Log>>, Arc<Mutex<Log>>) {
    let p = Arc::new(Mutex::new(Log::default()));
    let m = Arc::new(Mutex::new(Log::default()));
    let mut pio = Bus::new();
    pio.insert(0x3f8, 8, p.clone()).unwrap();
    let mut mmio = Bus::new();
    mmio.insert(0xc000_0000, 0x1000, m.clone()).unwrap();
    (Buses { pio, mmio }, p, m)
}

#[test]
fn accesses_reach_devices_and_unclaimed_reads_are_all_ones() {
    let (buses, pio, mmio) = buses();
    let latch = ExitLatch::default();
    let counters = VcpuCounters::default();
    let mut s = Script::new(vec![
        Scripted::Out(0x3f8, b"A".to_vec()),
        Scripted::In(0x3fd, 1),
        Scripted::In(0x1234, 2),
        Scripted::MmioOut(0xc000_0050, vec![1, 0, 0, 0]),
        Scripted::MmioIn(0xc000_0000, 4),
        Scripted::MmioIn(0xd000_0000, 4),
        Scripted::Interrupted,
        Scripted::Event(KVM_SYSTEM_EVENT_RESET),
    ]);
    let end = run_loop(&mut s, &buses, &latch, &counters);
    assert_eq!(end, LoopEnd::Exit(ExitStatus::Reset));
    assert_eq!(pio.lock().unwrap().0, vec![(0, b"A".to_vec())]);
    assert_eq!(mmio.lock().unwrap().0, vec![(0x50, vec![1, 0, 0, 0])]);
    assert_eq!(
        s.reads,
        vec![vec![0x45], vec![0xff, 0xff], vec![0x40; 4], vec![0xff; 4]],
        "COM1 offset 5, an unclaimed port, the MMIO device, unclaimed MMIO"
    );
    assert_eq!(s.cleared, 1, "a spurious interruption resumes the vCPU");
    assert_eq!(counters.pio.load(Ordering::Relaxed), 3);
    assert_eq!(counters.mmio.load(Ordering::Relaxed), 3);
}

#[test]
fn exits_map_to_vm_statuses() {
    let (buses, _, _) = buses();
    let counters = VcpuCounters::default();
    let cases = [
        (Scripted::Shutdown, ExitStatus::TripleFault),
        (Scripted::Hlt, ExitStatus::Halted),
        (
            Scripted::Event(KVM_SYSTEM_EVENT_SHUTDOWN),
            ExitStatus::PowerOff,
        ),
        (
            Scripted::Event(KVM_SYSTEM_EVENT_CRASH),
            ExitStatus::Crashed("guest crash event".into()),
        ),
        (Scripted::Failed, ExitStatus::Crashed("script ended".into())),
    ];
    for (exit, want) in cases {
        let latch = ExitLatch::default();
        let mut s = Script::new(vec![exit]);
        assert_eq!(
            run_loop(&mut s, &buses, &latch, &counters),
            LoopEnd::Exit(want)
        );
    }
}

#[test]
fn a_stop_request_ends_the_loop_before_the_next_entry() {
    let (buses, pio, _) = buses();
    let latch = ExitLatch::default();
    latch.request(ExitStatus::Stopped);
    let mut s = Script::new(vec![Scripted::Out(0x3f8, b"X".to_vec())]);
    assert_eq!(
        run_loop(&mut s, &buses, &latch, &VcpuCounters::default()),
        LoopEnd::Stopped
    );
    assert!(pio.lock().unwrap().0.is_empty());
    // The first exit request wins.
    latch.request(ExitStatus::PowerOff);
    assert_eq!(latch.status(), Some(ExitStatus::Stopped));
}
