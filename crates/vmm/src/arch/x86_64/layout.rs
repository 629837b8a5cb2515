//! Where things live in guest physical memory (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT                       0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)               0x0000_a000  PDPT
//! 0x0000_6000  PVH hvm_start_info        0x0000_b000  4 page directories (4 GiB identity map)
//! 0x0000_6040  PVH module list           0x0002_0000  kernel command line
//! 0x0000_6100  PVH memory map            0x0009_fc00  EBDA: MP table
//! 0x0000_7000  zero page (boot_params)   0x000e_0000  ACPI: RSDP, then the other tables
//! 0x0000_8ff0  initial stack pointer     0x0010_0000  kernel (bzImage protected-mode code / vmlinux)
//! 0xc000_0000 .. 0xfec0_0000  MMIO: virtio-mmio devices from MMIO_START
//! 0xfec0_0000  IOAPIC    0xfee0_0000  LAPIC    0x1_0000_0000  RAM above the hole
//! ```

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (left empty; the kernel installs its own).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Maximum number of PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories that identity-map the low 4 GiB.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the ACPI RSDP goes (inside the BIOS search area).
pub const RSDP_START: u64 = 0xe0000;
/// End of the reserved BIOS area.
pub const BIOS_END: u64 = 0x10_0000;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Where the first virtio-mmio device's register window starts in guest
/// physical memory. Device `n` sits at `VIRTIO_MMIO_START + n *`
/// [`VIRTIO_MMIO_SIZE`], in the order the builder adds them: the devices
/// given to [`crate::VmBuilder::device`], then the balloon, then the
/// network device. Guests find them through ACPI or the command line; a
/// guest written for a test may use these instead.
pub const VIRTIO_MMIO_START: u64 = MMIO_HOLE_START;
/// Size of each virtio-mmio register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// First GSI handed to virtio devices (0–4 are legacy ISA lines in use).
pub const IRQ_BASE: u32 = 5;
/// Last GSI the in-kernel IOAPIC has (24 pins).
pub const IRQ_MAX: u32 = 23;
