//! ACPI tables: how a stock guest kernel finds its vCPUs, the interrupt
//! controller, the virtio-mmio devices and the power-off / reset registers.
//!
//! ```text
//! RSDP_START  RSDP (rev 2) ──> XSDT ──> FADT ──X_DSDT──> DSDT
//!                                  └──> MADT
//! ```
//!
//! The RSDP sits at [`RSDP_START`], where a guest scanning the BIOS area
//! finds it too; the other tables follow it, 16-byte aligned, and must end
//! below [`BIOS_END`] (the e820 map reserves the whole area).
//!
//! # The platform the tables describe, and why
//!
//! - **Hardware-reduced ACPI** (FADT `HW_REDUCED_ACPI`, FADT 6.5): no PM1
//!   event/control blocks, no GPEs, no SCI, no PM timer, no FACS; Linux then
//!   also leaves the 8259 PIC and the PIT alone (it uses the LAPIC timer
//!   and kvm-clock). Power-off writes `SLP_TYP(5) | SLP_EN` to the sleep
//!   control register (I/O 0x600; the sleep type comes from the DSDT's
//!   `_S5_`) and reset writes 0x06 to the reset register (I/O 0x602,
//!   `RESET_REG_SUP`), both served by [`agentvm_devices::legacy::acpi_pm`].
//!   The sleep status register (0x601) must be described too, or Linux
//!   does not offer S5.
//! - FADT `PWR_BUTTON` and `SLP_BUTTON` are set: there are no fixed-feature
//!   buttons, so Linux creates no phantom power/sleep button input devices.
//! - FADT `IAPC_BOOT_ARCH`: `VGA Not Present` (there is none), `MSI Not
//!   Supported` (there is no PCI; revisit if PCI devices arrive) and `CMOS
//!   RTC Not Present` (nothing decodes ports 0x70/0x71; the wall clock comes
//!   from kvm-clock), so Linux registers no rtc_cmos device. `8042` is
//!   deliberately *clear*, and the DSDT has no `PNP0303`: the i8042 is only a
//!   reset line whose status port reads 0 forever, and Linux's i8042 driver
//!   would spend half a second or more timing out on it. Without the flag (FADT revision ≥ 2) Linux
//!   leaves the controller alone. Reset through it still works: Linux's
//!   `reboot=k` path writes 0xfe to port 0x64 directly, without the driver,
//!   and the default `reboot=a` path uses the ACPI reset register first.
//!   `LEGACY_DEVICES` is clear too (no PnP BIOS to probe).
//! - MADT: one enabled Processor Local APIC per vCPU (UID = APIC ID =
//!   index), one IOAPIC (ID = number of vCPUs, as in the MP table; GSI base
//!   0; KVM's has 24 inputs), a Local APIC NMI entry for LINT1 of every CPU, and
//!   `PCAT_COMPAT` set because KVM's in-kernel irqchip does include the two
//!   8259s (an OS that uses the IOAPIC must mask them; Linux on a
//!   hardware-reduced platform ignores them anyway). No Interrupt Source
//!   Overrides: agentvm keeps KVM's default GSI routing, where ISA IRQ *n*
//!   (IRQ 0 included) arrives on IOAPIC pin *n*, which is what ACPI assumes
//!   without overrides; the usual "IRQ 0 → GSI 2" would point the timer at
//!   the wrong pin.
//! - DSDT: `\_S5_` for soft-off; in `\_SB_` COM1 (`PNP0501`), the pvpanic
//!   port (`QEMU0001`, Linux's pvpanic driver binds to it), and one
//!   `LNRO0005` device per virtio-mmio window with its memory range and an
//!   edge-triggered, active-high, exclusive interrupt (KVM irqfds deliver
//!   edges). These are exactly the platform devices agentvm creates; the
//!   ACPI PM registers need no DSDT object.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use agentvm_devices::legacy::acpi_pm::{
    ACPI_PM_BASE, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET,
};
use agentvm_devices::legacy::pvpanic::{PVPANIC_LEN, PVPANIC_PORT};
use agentvm_devices::legacy::{COM1_BASE, COM1_IRQ, COM1_LEN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{APIC_START, BIOS_END, IOAPIC_START, IRQ_MAX, RSDP_START};
use super::mptable::MAX_CPUS;

/// OEM ID in the RSDP and every table header.
pub const OEM_ID: [u8; 6] = *b"AGNTVM";
/// OEM table ID in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"AGENTVM ";
const OEM_REVISION: u32 = 1;
/// FADT "Hypervisor Vendor Identity".
const HYPERVISOR_ID: [u8; 8] = *b"AGENTVM\0";
/// MADT revision of ACPI 6.3/6.4 (all entries used here exist since 1.0).
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: integers are 64 bits.
const DSDT_REVISION: u8 = 2;
/// Tables start on 16-byte boundaries.
const TABLE_ALIGN: usize = 16;
/// Virtio-mmio devices are named `VR00`..`VRFF` in the DSDT.
pub const MAX_VIRTIO_DEVICES: usize = 256;

/// MADT flag: the platform also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT Local APIC NMI entry (type 4, 6 bytes): every processor (UID 0xff),
/// flags "conforms to the bus", LINT1.
const MADT_LOCAL_APIC_NMI_LINT1: [u8; 6] = [4, 6, 0xff, 0, 0, 1];

/// FADT IAPC_BOOT_ARCH: VGA Not Present.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT IAPC_BOOT_ARCH: MSI Not Supported.
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// FADT IAPC_BOOT_ARCH: CMOS RTC Not Present.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

// The layout's addresses in the widths the tables store them; a value that
// does not fit fails the build.
const LAPIC_ADDRESS: u32 = to_u32(APIC_START);
const IOAPIC_ADDRESS: u32 = to_u32(IOAPIC_START);
const COM1_PORT: u16 = to_u16(COM1_BASE);
const COM1_PORTS: u8 = to_u8(COM1_LEN);
const PVPANIC_IO_PORT: u16 = to_u16(PVPANIC_PORT);
const PVPANIC_PORTS: u8 = to_u8(PVPANIC_LEN);

const fn to_u32(value: u64) -> u32 {
    assert!(value <= u32::MAX as u64);
    value as u32
}

const fn to_u16(value: u64) -> u16 {
    assert!(value <= u16::MAX as u64);
    value as u16
}

const fn to_u8(value: u64) -> u8 {
    assert!(value <= u8::MAX as u64);
    value as u8
}

/// What the ACPI tables describe besides the fixed platform devices (COM1,
/// pvpanic, the ACPI PM registers), which agentvm always creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiLayout {
    /// Number of vCPUs; their local APIC IDs are `0..vcpus`, the first one
    /// boots.
    pub vcpus: u8,
    /// The virtio-mmio devices as `(window base, window size, GSI)`, in the
    /// order the guest should number them. Windows must lie below 4 GiB and
    /// GSIs be IOAPIC inputs (at most [`IRQ_MAX`]).
    pub virtio_mmio: Vec<(u64, u64, u32)>,
}

/// Errors while creating the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// No vCPUs, or more than the APIC ID space holds.
    #[error("{0} vCPUs cannot be described; between 1 and {MAX_CPUS} are supported")]
    VcpuCount(u8),
    /// More virtio-mmio devices than the DSDT can name.
    #[error("{0} virtio-mmio devices are more than the {MAX_VIRTIO_DEVICES} ACPI can describe")]
    TooManyDevices(usize),
    /// A virtio-mmio window that a 32-bit memory descriptor cannot hold.
    #[error("Virtio-mmio window at {base:#x} of {size:#x} bytes does not lie below 4 GiB")]
    WindowAbove4G {
        /// Start of the window.
        base: u64,
        /// Size of the window.
        size: u64,
    },
    /// A GSI the IOAPIC does not have.
    #[error("GSI {0} is not an IOAPIC input (0 to {IRQ_MAX})")]
    Gsi(u32),
    /// The tables do not fit between the RSDP and the end of the BIOS area.
    #[error("ACPI tables of {0} bytes do not fit below 1 MiB")]
    TooLarge(usize),
    /// Guest memory does not cover the BIOS area.
    #[error("Cannot write the ACPI tables to guest memory")]
    GuestMemory(#[source] GuestMemoryError),
}

/// A virtio-mmio device as the DSDT describes it.
struct MmioDevice {
    base: u32,
    size: u32,
    gsi: u32,
}

/// Writes the RSDP, XSDT, FADT, MADT and DSDT for `layout` into guest
/// memory and returns the RSDP's address (for the zero page's
/// `acpi_rsdp_addr` / PVH's `rsdp_paddr`).
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    layout: &AcpiLayout,
) -> Result<GuestAddress, AcpiError> {
    let image = build(layout)?;
    let rsdp = GuestAddress(RSDP_START);
    mem.write_slice(&image, rsdp)
        .map_err(AcpiError::GuestMemory)?;
    Ok(rsdp)
}

/// The tables as one image to load at [`RSDP_START`].
fn build(layout: &AcpiLayout) -> Result<Vec<u8>, AcpiError> {
    let devices = validate(layout)?;

    let mut image = Image::default();
    // The RSDP goes first, at RSDP_START, once the XSDT's address is known.
    image.push(&vec![0; Rsdp::len()]);
    let dsdt = image.push(&dsdt(&devices));
    let madt = image.push(&madt(layout.vcpus));
    let fadt = image.push(&aml_bytes(&fadt(dsdt)));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    let xsdt = image.push_xsdt(&aml_bytes(&xsdt));
    image.bytes[..Rsdp::len()].copy_from_slice(&aml_bytes(&Rsdp::new(OEM_ID, xsdt)));

    let room = (BIOS_END - RSDP_START) as usize;
    if image.bytes.len() > room {
        return Err(AcpiError::TooLarge(image.bytes.len()));
    }
    Ok(image.bytes)
}

fn validate(layout: &AcpiLayout) -> Result<Vec<MmioDevice>, AcpiError> {
    if layout.vcpus == 0 || layout.vcpus > MAX_CPUS {
        return Err(AcpiError::VcpuCount(layout.vcpus));
    }
    if layout.virtio_mmio.len() > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyDevices(layout.virtio_mmio.len()));
    }
    layout
        .virtio_mmio
        .iter()
        .map(|&(base, size, gsi)| {
            let outside = || AcpiError::WindowAbove4G { base, size };
            let (b, s) = (u32::try_from(base), u32::try_from(size));
            let (Ok(b), Ok(s)) = (b, s) else {
                return Err(outside());
            };
            if u64::from(b) + u64::from(s) > 1 << 32 {
                return Err(outside());
            }
            if gsi > IRQ_MAX {
                return Err(AcpiError::Gsi(gsi));
            }
            Ok(MmioDevice {
                base: b,
                size: s,
                gsi,
            })
        })
        .collect()
}

/// Length of the common header of every system description table.
const SDT_HEADER_LEN: usize = 36;

/// Tables laid out one after another from [`RSDP_START`].
#[derive(Default)]
struct Image {
    bytes: Vec<u8>,
}

impl Image {
    /// Appends `table` at the next aligned offset and returns its guest
    /// address.
    fn push(&mut self, table: &[u8]) -> u64 {
        let offset = self.bytes.len().next_multiple_of(TABLE_ALIGN);
        self.put(offset, table)
    }

    /// Appends the XSDT so that its 64-bit entries, which follow the 36-byte
    /// header, are 8-byte aligned: some readers (the rust-osdev `acpi`
    /// crate among them) load them as `u64` in place.
    fn push_xsdt(&mut self, table: &[u8]) -> u64 {
        let offset = self.bytes.len().next_multiple_of(TABLE_ALIGN);
        let misalignment = (offset + SDT_HEADER_LEN) % 8;
        self.put(offset + (8 - misalignment) % 8, table)
    }

    fn put(&mut self, offset: usize, table: &[u8]) -> u64 {
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(table);
        RSDP_START + offset as u64
    }
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// A one-byte register in I/O space.
fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch =
        (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = io_register(ACPI_PM_BASE + RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_register(ACPI_PM_BASE + SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_register(ACPI_PM_BASE + SLEEP_STATUS_OFFSET);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_ID).into();
    fadt.finalize()
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut entries = Vec::new();
    for id in 0..vcpus {
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(vcpus, IOAPIC_ADDRESS, 0).to_aml_bytes(&mut entries);
    entries.extend_from_slice(&MADT_LOCAL_APIC_NMI_LINT1);

    // Header, local APIC address, flags.
    let mut madt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, LAPIC_ADDRESS);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    madt.append_slice(&entries);
    madt.as_slice().to_vec()
}

fn dsdt(devices: &[MmioDevice]) -> Vec<u8> {
    let mut body = Vec::new();
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);

    let mut sb = Vec::new();
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORTS),
                    &edge_interrupt(COM1_IRQ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut sb);
    aml::Device::new(
        "PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::IO::new(
                    PVPANIC_IO_PORT,
                    PVPANIC_IO_PORT,
                    1,
                    PVPANIC_PORTS,
                )]),
            ),
        ],
    )
    .to_aml_bytes(&mut sb);
    for (index, device) in devices.iter().enumerate() {
        // Four characters for every index below MAX_VIRTIO_DEVICES.
        let name = format!("VR{index:02X}");
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &index),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, device.base, device.size),
                        &edge_interrupt(device.gsi),
                    ]),
                ),
            ],
        )
        .to_aml_bytes(&mut sb);
    }
    body.extend_from_slice(&aml::Scope::raw("\\_SB_".into(), sb));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// `Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }`.
fn edge_interrupt(gsi: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, gsi)
}

#[cfg(test)]
mod tests;
