//! The hardware-reduced ACPI power-management registers: the FADT's sleep
//! control and sleep status registers, and its reset register.
//!
//! Linux powers off by writing `SLP_TYP(S5) << 2 | SLP_EN` to the sleep
//! control register (SLP_TYP comes from the DSDT's `_S5_` package) and
//! reboots by writing the FADT reset value to the reset register.

use std::sync::Arc;

use crate::bus::BusDevice;

/// Port of the sleep control register (one byte).
pub const ACPI_PM_BASE: u64 = 0x600;
/// Ports decoded: control (+0), status (+1), reset (+2).
pub const ACPI_PM_LEN: u64 = 3;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;
/// Value the guest writes to the reset register (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = 0x06;
/// Sleep type the DSDT's `_S5_` object gives for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
const WAK_STS: u8 = 1 << 7;

/// What the guest asked the platform to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    /// Soft-off (S5).
    PowerOff,
    /// Reset through the ACPI reset register.
    Reset,
}

/// Called when the guest asks to power off or reset.
pub type PowerCallback = Arc<dyn Fn(PowerRequest) + Send + Sync>;

/// The ACPI power-management register block.
pub struct AcpiPm {
    on_request: PowerCallback,
}

impl AcpiPm {
    /// Registers that call `on_request` for S5 entry and reset.
    pub fn new(on_request: PowerCallback) -> Self {
        AcpiPm { on_request }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Sleep status reads "woken" so a guest that polls WAK_STS after a
        // sleep request it did not get does not spin forever.
        let value = if offset == SLEEP_STATUS_OFFSET {
            WAK_STS
        } else {
            0
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    (self.on_request)(PowerRequest::PowerOff);
                } else {
                    tracing::debug!("guest asked for unsupported sleep type {sleep_type}");
                }
            }
            RESET_OFFSET if *value == RESET_VALUE => (self.on_request)(PowerRequest::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn s5_and_reset_are_reported_and_nothing_else_is() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut pm = AcpiPm::new(Arc::new(move |r| s.lock().unwrap().push(r)));
        pm.write(SLEEP_CONTROL_OFFSET, &[3 << 2 | SLP_EN]); // S3: ignored
        pm.write(SLEEP_CONTROL_OFFSET, &[5 << 2]); // no SLP_EN
        pm.write(SLEEP_CONTROL_OFFSET, &[5 << 2 | SLP_EN, 0]); // wide
        pm.write(RESET_OFFSET, &[0x01]);
        assert!(seen.lock().unwrap().is_empty());
        pm.write(SLEEP_CONTROL_OFFSET, &[5 << 2 | SLP_EN]);
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![PowerRequest::PowerOff, PowerRequest::Reset]
        );
        let mut status = [0u8];
        pm.read(SLEEP_STATUS_OFFSET, &mut status);
        assert_eq!(status[0], WAK_STS);
    }
}
