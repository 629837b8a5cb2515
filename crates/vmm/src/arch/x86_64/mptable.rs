//! The Intel MultiProcessor Specification 1.4 table, for guests booted
//! without ACPI (`acpi=off`), where it is how Linux finds the application
//! processors and the IOAPIC.
//!
//! ```text
//! EBDA_START       floating pointer "_MP_" (16 bytes) ──┐
//! EBDA_START + 16  configuration table "PCMP"  <────────┘
//!                    header, then entries in the order the spec asks:
//!                    processors, bus (ISA), IOAPIC, I/O interrupts, local interrupts
//! ```
//!
//! Linux looks for the floating pointer in the last KiB of base memory
//! (0x9fc00), where [`EBDA_START`] puts it. The configuration table follows
//! it and may run past the first KiB for many vCPUs; the e820 map reserves
//! everything from [`EBDA_START`] to 1 MiB, and the table must end before the
//! ACPI tables at [`RSDP_START`].
//!
//! Interrupt routing matches what KVM's in-kernel irqchip does with its
//! default GSI routing (which agentvm does not change): ISA IRQ *n* and GSI
//! *n* arrive on IOAPIC pin *n*, so every I/O interrupt entry is the identity,
//! IRQ 0 included (no IRQ 0 → pin 2 override as on real chipsets). Pins 16–23
//! carry the virtio-mmio devices. The 8259 output is wired to the boot CPU's
//! LINT0 (ExtINT, virtual wire mode: no IMCR) and NMI to every CPU's LINT1.

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START, IRQ_MAX, RSDP_START};

/// Most vCPUs the table can describe: APIC IDs are 8 bits, 0xff is the
/// broadcast ID, and the IOAPIC takes the ID right after the last vCPU's.
pub const MAX_CPUS: u8 = 254;

/// Local APIC version the processor entries report (KVM's LAPIC: integrated
/// APIC, version 0x14).
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version (KVM's in-kernel IOAPIC reports 0x11).
const IOAPIC_VERSION: u8 = 0x11;
/// MP specification revision 1.4.
const SPEC_REVISION: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOT_PROCESSOR: u8 = 1 << 1;
/// CPUID signature "family 6"; guests do not rely on it.
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX FPU and APIC, as the spec asks processor entries to copy.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const IOAPIC_ENABLED: u8 = 1;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus" (ISA: edge, active high).
const INT_FLAGS_CONFORMING: u16 = 0;
const ISA_BUS_ID: u8 = 0;
/// Destination "every local APIC" of a local interrupt entry.
const ALL_LOCAL_APICS: u8 = 0xff;

// The layout's values in the widths the table stores them; a value that does
// not fit fails the build.
const IOAPIC_ADDRESS: u32 = to_u32(IOAPIC_START);
const LAPIC_ADDRESS: u32 = to_u32(APIC_START);
const CONFIG_TABLE_ADDRESS: u32 = to_u32(EBDA_START + FLOATING_POINTER_LEN as u64);
const LAST_IOAPIC_PIN: u8 = {
    assert!(IRQ_MAX <= u8::MAX as u32);
    IRQ_MAX as u8
};
const FLOATING_POINTER_LEN: usize = std::mem::size_of::<FloatingPointer>();

const fn to_u32(value: u64) -> u32 {
    assert!(value <= u32::MAX as u64);
    value as u32
}

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// No vCPUs, or more than the APIC ID space holds.
    #[error("{0} vCPUs cannot be described; between 1 and {MAX_CPUS} are supported")]
    CpuCount(u8),
    /// The table would run into the ACPI tables.
    #[error("An MP table of {0} bytes does not fit below the ACPI tables")]
    TooLarge(usize),
    /// Guest memory does not cover the table's place.
    #[error("Cannot write the MP table to guest memory")]
    GuestMemory(#[source] GuestMemoryError),
}

/// MP floating pointer structure (spec 4.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct FloatingPointer {
    signature: [u8; 4],
    config_table: u32,
    length_paragraphs: u8,
    spec_revision: u8,
    checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    feature1: u8,
    /// Bit 7 clear: no IMCR, virtual wire mode.
    feature2: u8,
    feature3_5: [u8; 3],
}

/// MP configuration table header (spec 4.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct ConfigHeader {
    signature: [u8; 4],
    base_length: u16,
    spec_revision: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    local_apic: u32,
    extended_length: u16,
    extended_checksum: u8,
    reserved: u8,
}

/// Processor entry (spec 4.3.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct ProcessorEntry {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    signature: u32,
    features: u32,
    reserved: [u32; 2],
}

/// Bus entry (spec 4.3.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct BusEntry {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// I/O APIC entry (spec 4.3.3).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct IoApicEntry {
    entry_type: u8,
    id: u8,
    version: u8,
    flags: u8,
    address: u32,
}

/// I/O interrupt assignment (spec 4.3.4) and local interrupt assignment
/// (spec 4.3.5) entries share this layout.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct InterruptEntry {
    entry_type: u8,
    interrupt_type: u8,
    flags: u16,
    source_bus: u8,
    source_irq: u8,
    destination_id: u8,
    destination_pin: u8,
}

// SAFETY: each struct is `repr(C, packed)` and made only of integers and
// integer arrays, so it has no padding and every bit pattern is a valid
// value.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for ConfigHeader {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for ProcessorEntry {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for BusEntry {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for IoApicEntry {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for InterruptEntry {}

/// Writes the MP table for `num_cpus` vCPUs (APIC IDs `0..num_cpus`, the
/// first one the boot processor) at [`EBDA_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let table = build(num_cpus)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(MptableError::GuestMemory)
}

/// The floating pointer followed by the configuration table, as loaded at
/// [`EBDA_START`].
fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let ioapic_id = num_cpus;

    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        entry_count += 1;
    };
    for id in 0..num_cpus {
        let boot = if id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        push(
            ProcessorEntry {
                entry_type: ENTRY_PROCESSOR,
                apic_id: id,
                apic_version: APIC_VERSION,
                flags: CPU_ENABLED | boot,
                signature: CPU_SIGNATURE,
                features: CPU_FEATURES,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        BusEntry {
            entry_type: ENTRY_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: *b"ISA   ",
        }
        .as_slice(),
    );
    push(
        IoApicEntry {
            entry_type: ENTRY_IOAPIC,
            id: ioapic_id,
            version: IOAPIC_VERSION,
            flags: IOAPIC_ENABLED,
            address: IOAPIC_ADDRESS,
        }
        .as_slice(),
    );
    for irq in 0..=LAST_IOAPIC_PIN {
        push(
            InterruptEntry {
                entry_type: ENTRY_IO_INTERRUPT,
                interrupt_type: INT_TYPE_INT,
                flags: INT_FLAGS_CONFORMING,
                source_bus: ISA_BUS_ID,
                source_irq: irq,
                destination_id: ioapic_id,
                destination_pin: irq,
            }
            .as_slice(),
        );
    }
    for (interrupt_type, destination_id, pin) in
        [(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, ALL_LOCAL_APICS, 1)]
    {
        push(
            InterruptEntry {
                entry_type: ENTRY_LOCAL_INTERRUPT,
                interrupt_type,
                flags: INT_FLAGS_CONFORMING,
                source_bus: ISA_BUS_ID,
                source_irq: 0,
                destination_id,
                destination_pin: pin,
            }
            .as_slice(),
        );
    }

    let base_length = std::mem::size_of::<ConfigHeader>() + entries.len();
    let total = FLOATING_POINTER_LEN + base_length;
    let base_length = match u16::try_from(base_length) {
        Ok(len) if EBDA_START + total as u64 <= RSDP_START => len,
        _ => return Err(MptableError::TooLarge(total)),
    };
    let mut header = ConfigHeader {
        signature: *b"PCMP",
        base_length,
        spec_revision: SPEC_REVISION,
        checksum: 0,
        oem_id: *b"AGNTVM  ",
        product_id: *b"AGENTVM     ",
        oem_table: 0,
        oem_table_size: 0,
        entry_count,
        local_apic: LAPIC_ADDRESS,
        extended_length: 0,
        extended_checksum: 0,
        reserved: 0,
    };
    header.checksum = checksum(&[header.as_slice(), &entries]);

    let mut pointer = FloatingPointer {
        signature: *b"_MP_",
        config_table: CONFIG_TABLE_ADDRESS,
        length_paragraphs: (FLOATING_POINTER_LEN / 16) as u8,
        spec_revision: SPEC_REVISION,
        ..Default::default()
    };
    pointer.checksum = checksum(&[pointer.as_slice()]);

    let mut table = Vec::with_capacity(total);
    table.extend_from_slice(pointer.as_slice());
    table.extend_from_slice(header.as_slice());
    table.extend_from_slice(&entries);
    Ok(table)
}

/// The byte that makes `parts` sum to zero.
fn checksum(parts: &[&[u8]]) -> u8 {
    let sum = parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0u8, |acc, b| acc.wrapping_add(*b));
    sum.wrapping_neg()
}

#[cfg(test)]
mod tests;
