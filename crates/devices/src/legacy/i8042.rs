//! The i8042 keyboard controller, reduced to what guests use it for: the
//! CPU reset command (0xfe to port 0x64).

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;

/// First port of the i8042 (data port 0x60; command port is 0x64).
pub const I8042_BASE: u64 = 0x60;
/// Ports decoded, 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

/// Called when the guest asks for a CPU reset.
pub type ResetCallback = Arc<dyn Fn() + Send + Sync>;

/// Runs the reset callback.
pub struct ResetTrigger(ResetCallback);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)();
        Ok(())
    }
}

/// The i8042 as a bus device.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 that calls `on_reset` when the guest writes the reset command.
    pub fn new(on_reset: ResetCallback) -> Self {
        I8042 {
            inner: I8042Device::new(ResetTrigger(on_reset)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status port: report "no data, input buffer empty" so drivers that
        // poll before sending the reset command do not spin.
        let value = u8::try_from(offset).map_or(0, |o| self.inner.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            let Ok(()) = self.inner.write(off, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn only_the_reset_command_on_the_command_port_resets() {
        let count = Arc::new(AtomicU32::new(0));
        let c = count.clone();
        let mut dev = I8042::new(Arc::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        dev.write(0, &[0xfe]); // data port
        dev.write(4, &[0xfd]); // other command
        dev.write(4, &[0xfe, 0xfe]); // wide write
        assert_eq!(count.load(Ordering::SeqCst), 0);
        dev.write(4, &[0xfe]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
