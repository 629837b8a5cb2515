//! The pvpanic device: the guest kernel writes to it when it panics, so the
//! VMM can end the VM with a failure instead of watching it reboot.
//!
//! ISA flavour at port 0x505, described to the guest in the DSDT as ACPI
//! device `QEMU0001` (Linux's pvpanic-mmio driver binds to that). Reads
//! return the events the device supports; a write with the PANICKED bit set
//! reports a panic.

use std::sync::Arc;

use crate::bus::BusDevice;

/// I/O port of the device.
pub const PVPANIC_PORT: u64 = 0x505;
/// Ports decoded.
pub const PVPANIC_LEN: u64 = 1;
/// Event bit: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: a crash kernel was loaded (reported, not acted on).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// Called with the event bits the guest wrote.
pub type PanicCallback = Arc<dyn Fn(u8) + Send + Sync>;

/// The pvpanic device.
pub struct PvPanic {
    on_event: PanicCallback,
}

impl PvPanic {
    /// A pvpanic device that calls `on_event` for every non-zero write.
    pub fn new(on_event: PanicCallback) -> Self {
        PvPanic { on_event }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, [events]) = (offset, data) {
            if *events != 0 {
                (self.on_event)(*events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn reports_capabilities_and_forwards_events() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = PvPanic::new(Arc::new(move |e| s.lock().unwrap().push(e)));
        let mut caps = [0u8];
        dev.read(0, &mut caps);
        assert_eq!(caps[0], 0b11);
        dev.write(0, &[0]);
        dev.write(0, &[1, 1]);
        assert!(seen.lock().unwrap().is_empty());
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(*seen.lock().unwrap(), vec![PVPANIC_PANICKED]);
    }
}
