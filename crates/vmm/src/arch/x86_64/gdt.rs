//! The boot GDT and the segment registers derived from it.
//!
//! Entry layout (Intel SDM Vol. 3A §3.4.5): limit 15:0, base 23:0, access
//! byte, flags + limit 19:16, base 31:24.

use kvm_bindings::kvm_segment;

/// Builds a GDT entry from its flags (G, D/B, L, AVL in bits 15:12 with the
/// access byte in 7:0, as in `0xa09b`), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Selector of the code segment the boot vCPU runs on (64-bit: long mode code;
/// 32-bit PVH: flat 32-bit code). Linux's boot protocol wants `__BOOT_CS` = 0x10.
#[cfg(test)]
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment (`__BOOT_DS` = 0x18).
#[cfg(test)]
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the task state segment.
#[cfg(test)]
pub const TSS_SELECTOR: u16 = 0x20;

/// The boot GDT for the 64-bit entry: null, null, 64-bit code, data, TSS.
pub const GDT_64: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff), // code: G, L, present, DPL0, exec/read, accessed
    gdt_entry(0xc093, 0, 0xfffff), // data: G, D/B, present, read/write, accessed
    gdt_entry(0x808b, 0, 0xfffff), // TSS: busy 32-bit TSS
];

/// The boot GDT for the 32-bit PVH entry: null, null, 32-bit code, data, TSS.
pub const GDT_32: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff), // code: G, D/B (32-bit), present, exec/read
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Decodes a GDT entry into the segment register KVM expects.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let limit = ((((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32) as u64;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With G set the limit counts 4 KiB pages: KVM wants it in bytes.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit } as u32,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_the_sdm_encoding() {
        // Known encodings: flat 64-bit code and flat data segments.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn segments_decode_from_entries() {
        let cs = kvm_segment_from_gdt(GDT_64[2], 2);
        assert_eq!(cs.selector, CODE_SELECTOR);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        let ds = kvm_segment_from_gdt(GDT_64[3], 3);
        assert_eq!(
            (ds.selector, ds.l, ds.db, ds.type_),
            (DATA_SELECTOR, 0, 1, 3)
        );
        let cs32 = kvm_segment_from_gdt(GDT_32[2], 2);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tss = kvm_segment_from_gdt(GDT_64[4], 4);
        assert_eq!(
            (tss.selector, tss.type_, tss.s, tss.g),
            (TSS_SELECTOR, 0xb, 0, 1)
        );
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
        let based = kvm_segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 1);
        assert_eq!(
            (based.base, based.limit, based.g),
            (0x1234_5678, 0xabcde, 0)
        );
    }
}
