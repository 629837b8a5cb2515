//! Boot-time vCPU state: page tables, general and special registers, FPU,
//! MSRs and the local APIC's LINT pins.
//!
//! Two entry modes: Linux's 64-bit boot protocol (long mode, identity-mapped
//! low 4 GiB, RSI = zero page) and PVH (32-bit protected mode, paging off,
//! EBX = `hvm_start_info`).

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{kvm_segment_from_gdt, GDT_32, GDT_64};
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension (needed for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;
/// Number of page directories: each maps 1 GiB with 2 MiB pages.
pub const IDENTITY_MAPPED_GIB: u64 = 4;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, EBX = `hvm_start_info`.
    Pvh,
}

/// Errors setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the page tables or GDT into guest memory failed.
    #[error("Cannot write boot structures to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// A KVM register ioctl failed.
    #[error("KVM refused the {what} state")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM set fewer MSRs than asked.
    #[error("KVM set {set} of {wanted} boot MSRs")]
    Msrs {
        /// MSRs set.
        set: usize,
        /// MSRs wanted.
        wanted: usize,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Writes the GDT, an empty IDT and (for 64-bit entry) identity page tables
/// covering the first [`IDENTITY_MAPPED_GIB`] GiB.
pub fn write_boot_tables(mem: &GuestMemoryMmap<()>, mode: EntryMode) -> Result<(), RegsError> {
    let gdt = match mode {
        EntryMode::Linux64 => &GDT_64,
        EntryMode::Pvh => &GDT_32,
    };
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + i as u64 * 8))
            .map_err(RegsError::GuestMemory)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(RegsError::GuestMemory)?;
    if mode == EntryMode::Linux64 {
        write_page_tables(mem)?;
    }
    Ok(())
}

fn write_page_tables(mem: &GuestMemoryMmap<()>) -> Result<(), RegsError> {
    let w = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(RegsError::GuestMemory)
    };
    w(PDPTE_START | PAGE_PRESENT_RW, PML4_START)?;
    let mut table = vec![0u8; 512 * 8 * IDENTITY_MAPPED_GIB as usize];
    for (i, chunk) in table.chunks_exact_mut(8).enumerate() {
        let entry = ((i as u64) << 21) | PAGE_PRESENT_RW | PAGE_SIZE_2M;
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&table, GuestAddress(PDE_START))
        .map_err(RegsError::GuestMemory)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        w(
            (PDE_START + gib * 0x1000) | PAGE_PRESENT_RW,
            PDPTE_START + gib * 8,
        )?;
    }
    Ok(())
}

/// General registers at entry.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// Special registers at entry, starting from the vCPU's current ones (which
/// keep the APIC base and other KVM-owned fields).
pub fn boot_sregs(mode: EntryMode, mut sregs: kvm_sregs) -> kvm_sregs {
    let gdt = match mode {
        EntryMode::Linux64 => &GDT_64,
        EntryMode::Pvh => &GDT_32,
    };
    let code = kvm_segment_from_gdt(gdt[2], 2);
    let data = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[4], 4);
    match mode {
        EntryMode::Linux64 => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// FPU at reset: x87 control word 0x37f, MXCSR 0x1f80 (all exceptions masked).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR indices set at boot.
pub mod msr {
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// IA32_LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// IA32_CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// IA32_FMASK.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// IA32_KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_TSC.
    pub const TSC: u32 = 0x10;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// IA32_MISC_ENABLE.FAST_STRING.
    pub const MISC_ENABLE_FAST_STRING: u64 = 1;
    /// MTRRs enabled, default type write-back.
    pub const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
}

/// The boot MSR values: syscall MSRs cleared, fast strings on, MTRRs enabled
/// with write-back as the default type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(msr::SYSENTER_CS, 0),
        e(msr::SYSENTER_ESP, 0),
        e(msr::SYSENTER_EIP, 0),
        e(msr::STAR, 0),
        e(msr::CSTAR, 0),
        e(msr::KERNEL_GS_BASE, 0),
        e(msr::SYSCALL_MASK, 0),
        e(msr::LSTAR, 0),
        e(msr::TSC, 0),
        e(msr::MISC_ENABLE, msr::MISC_ENABLE_FAST_STRING),
        e(msr::MTRR_DEF_TYPE, msr::MTRR_ENABLE_WB),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

fn delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as firmware does.
pub fn boot_lapic(mut state: kvm_lapic_state) -> kvm_lapic_state {
    let lvt0 = lapic_reg(&state, APIC_LVT0);
    set_lapic_reg(&mut state, APIC_LVT0, delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&state, APIC_LVT1);
    set_lapic_reg(&mut state, APIC_LVT1, delivery_mode(lvt1, APIC_MODE_NMI));
    state
}

/// Sets every boot register of `vcpu` for entry at `entry` in `mode`.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    mode: EntryMode,
    entry: u64,
    is_bsp: bool,
) -> Result<(), RegsError> {
    let msrs = boot_msr_entries();
    let wanted = msrs.len();
    let msrs = Msrs::from_entries(&msrs).map_err(|_| RegsError::Msrs { set: 0, wanted })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSR"))?;
    if set != wanted {
        return Err(RegsError::Msrs { set, wanted });
    }
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("FPU"))?;
    let lapic = vcpu.get_lapic().map_err(kvm("LAPIC"))?;
    vcpu.set_lapic(&boot_lapic(lapic)).map_err(kvm("LAPIC"))?;
    if is_bsp {
        let sregs = vcpu.get_sregs().map_err(kvm("special register"))?;
        vcpu.set_sregs(&boot_sregs(mode, sregs))
            .map_err(kvm("special register"))?;
        vcpu.set_regs(&boot_regs(mode, entry))
            .map_err(kvm("register"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Walks the tables the way the MMU does for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap<()>, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(PML4_START + ((va >> 39) & 0x1ff) * 8))
            .unwrap();
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8))
            .unwrap();
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8))
            .unwrap();
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) + (va & 0x1f_ffff))
    }

    #[test]
    fn page_tables_identity_map_the_low_4_gib_and_nothing_more() {
        let m = mem();
        write_boot_tables(&m, EntryMode::Linux64).unwrap();
        for va in [
            0,
            0x7000,
            0x10_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xc000_1234,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&m, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&m, 0x1_0000_0000), None);
        let pde: u64 = m.read_obj(GuestAddress(PDE_START)).unwrap();
        assert_eq!(pde, 0x83);
    }

    #[test]
    fn gdt_is_written_where_sregs_point() {
        let m = mem();
        write_boot_tables(&m, EntryMode::Pvh).unwrap();
        let s = boot_sregs(EntryMode::Pvh, kvm_sregs::default());
        let cs: u64 = m
            .read_obj(GuestAddress(s.gdt.base + u64::from(s.cs.selector)))
            .unwrap();
        assert_eq!(cs, GDT_32[2]);
        assert_eq!(s.gdt.limit, 39);
        // PVH leaves paging off and writes no page tables.
        let pml4e: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4e, 0);
    }

    #[test]
    fn long_mode_and_pvh_register_values() {
        let s = boot_sregs(
            EntryMode::Linux64,
            kvm_sregs {
                apic_base: 0xfee0_0900,
                ..Default::default()
            },
        );
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!((s.cr3, s.cr4, s.efer), (PML4_START, 0x20, 0x500));
        assert_eq!((s.cs.l, s.cs.selector, s.ss.selector), (1, 0x10, 0x18));
        assert_eq!(s.apic_base, 0xfee0_0900, "KVM-owned fields kept");
        let r = boot_regs(EntryMode::Linux64, 0x100_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );

        let p = boot_sregs(EntryMode::Pvh, kvm_sregs::default());
        assert_eq!((p.cr0, p.cr4, p.efer), (0x11, 0, 0));
        assert_eq!((p.cs.l, p.cs.db), (0, 1));
        let r = boot_regs(EntryMode::Pvh, 0x100_0200);
        assert_eq!((r.rip, r.rbx), (0x100_0200, PVH_INFO_START));
    }

    #[test]
    fn fpu_msrs_and_lint_pins() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
        let m = boot_msr_entries();
        let get = |i| m.iter().find(|e| e.index == i).unwrap().data;
        assert_eq!(get(msr::MTRR_DEF_TYPE), 0x806);
        assert_eq!(get(msr::MISC_ENABLE), 1);
        assert_eq!(get(msr::LSTAR), 0);

        let mut state = kvm_lapic_state::default();
        set_lapic_reg(&mut state, APIC_LVT0, 0x0001_0000 | 0x300); // masked, some mode
        let out = boot_lapic(state);
        assert_eq!(lapic_reg(&out, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&out, APIC_LVT1), 0x400);
    }
}
