//! Legacy PC devices: the COM1 serial port, the i8042 controller's reset
//! line, the hardware-reduced ACPI power-management registers and the
//! pvpanic port.

pub mod acpi_pm;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

pub use acpi_pm::{AcpiPm, PowerCallback, PowerRequest};
pub use i8042::{ResetCallback, I8042};
pub use pvpanic::{PanicCallback, PvPanic};
pub use serial::{Serial, COM1_BASE, COM1_IRQ, COM1_LEN};
