//! x86_64: memory layout, CPUID, registers, GDT, page tables, e820, MP table
//! and ACPI tables.

pub mod acpi;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
