//! Per-vCPU CPUID, normalised from what KVM supports.
//!
//! KVM_GET_SUPPORTED_CPUID describes the host. Each vCPU needs its own APIC ID
//! in the leaves that carry it, a topology that matches the VM (one socket,
//! `n` cores, one thread per core), the hypervisor bit, and the KVM signature
//! leaves so the guest enables kvm-clock and other paravirtual features.
//!
//! Some of what the guest should see KVM emulates without listing it (the
//! TSC-deadline mode of the in-kernel local APIC, [`Host::tsc_deadline`]),
//! or leaves out (the processor's brand string). Without the TSC-deadline
//! bit Linux programs its timer through the APIC's memory-mapped
//! registers, each write an instruction KVM must decode, where an MSR
//! write would do.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// VM topology the CPUID describes.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// Number of vCPUs (cores of the single socket).
    pub vcpus: u8,
}

impl Topology {
    /// Bits of the APIC ID that number the cores: ceil(log2(vcpus)).
    pub fn core_bits(&self) -> u32 {
        u32::from(self.vcpus.max(1))
            .next_power_of_two()
            .trailing_zeros()
    }
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// CPUID.1:ECX bit 31, "running under a hypervisor".
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, "more than one logical processor per package".
pub const EDX_HTT: u32 = 1 << 28;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// CPUID.1:ECX bit 24, "the local APIC timer supports TSC-deadline mode".
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// The leaves that hold the 48-byte processor brand string.
pub const LEAVES_BRAND: [u32; 3] = [0x8000_0002, 0x8000_0003, 0x8000_0004];
/// The hypervisor leaf that reports the TSC and APIC bus frequencies in kHz.
const LEAF_TIMING: u32 = 0x4000_0010;
/// KVM's local APIC timer counts at 1 GHz (its bus cycle is 1 ns), in kHz.
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// What the host offers beyond KVM's supported CPUID list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Host {
    /// KVM emulates the local APIC timer's TSC-deadline mode
    /// (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub tsc_deadline: bool,
    /// The host processor's brand string as the twelve registers of leaves
    /// 0x80000002..=0x80000004, when it has one.
    pub brand: Option<[u32; 12]>,
    /// The guest's TSC frequency in kHz, when it is invariant (the guest can
    /// then skip calibrating it).
    pub tsc_khz: Option<u32>,
}

impl Host {
    /// The brand string of the processor this runs on, if it reports one.
    pub fn brand_of_this_cpu() -> Option<[u32; 12]> {
        use std::arch::x86_64::__cpuid;
        if __cpuid(0x8000_0000).eax < LEAVES_BRAND[2] {
            return None;
        }
        let mut regs = [0u32; 12];
        for (i, leaf) in LEAVES_BRAND.into_iter().enumerate() {
            let r = __cpuid(leaf);
            regs[i * 4..i * 4 + 4].copy_from_slice(&[r.eax, r.ebx, r.ecx, r.edx]);
        }
        regs.iter().any(|&r| r != 0).then_some(regs)
    }

    /// Whether this processor's TSC runs at a constant rate in every power
    /// state (CPUID.80000007H:EDX bit 8).
    pub fn invariant_tsc_on_this_cpu() -> bool {
        use std::arch::x86_64::__cpuid;
        __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
    }
}

/// Rewrites `entries` (KVM's supported CPUID) for vCPU `apic_id`.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, apic_id: u8, topo: Topology, host: Host) {
    let apic = u32::from(apic_id);
    let n = u32::from(topo.vcpus.max(1));
    let core_bits = topo.core_bits();

    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: 31:24 initial APIC ID, 23:16 logical processors per
                // package, 15:8 CLFLUSH line size in quadwords.
                e.ebx = (apic << 24) | (n << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if host.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX 31:26 cores per package - 1; 25:14 logical processors
                // sharing this cache - 1 (L3 is shared by all, L1/L2 per core).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
            }
            LEAF_KVM_SIGNATURE => {
                e.eax = if host.tsc_khz.is_some() {
                    LEAF_TIMING
                } else {
                    LEAF_KVM_FEATURES
                };
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            LEAF_AMD_SIZES => {
                // ECX 15:12 APIC ID size, 7:0 number of cores - 1.
                e.ecx = (core_bits << 12) | (n - 1);
            }
            LEAF_AMD_CACHE => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14);
            }
            LEAF_AMD_TOPOLOGY => {
                // EAX extended APIC ID; EBX 15:8 threads per core - 1, 7:0
                // core id; ECX node 0, one node per package.
                e.eax = apic;
                e.ebx = apic & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }

    // The topology leaves are written whole: KVM lists the host's levels,
    // and a host without them (or with an unknown level type at subleaf
    // 0) lists subleaf 0 alone. Linux then reads no core level, puts each
    // vCPU in a package of its own and, on AMD without an invariant TSC,
    // marks the TSC unstable because packages are not synchronised.
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if max_basic < leaf && !entries.iter().any(|e| e.function == leaf) {
            continue;
        }
        entries.retain(|e| e.function != leaf);
        let levels = [
            (0, 1, LEVEL_TYPE_SMT),
            (core_bits, n, LEVEL_TYPE_CORE),
            (0, 0, LEVEL_TYPE_INVALID),
        ];
        for (index, (shift, count, kind)) in (0u32..).zip(levels) {
            entries.push(kvm_cpuid_entry2 {
                function: leaf,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: count,
                ecx: (kind << 8) | index,
                edx: apic,
                ..Default::default()
            });
        }
    }

    // Guests find KVM through 0x40000000; make sure it is there even if the
    // host's list lacks it.
    if !entries.iter().any(|e| e.function == LEAF_KVM_SIGNATURE) {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_KVM_SIGNATURE,
            eax: if host.tsc_khz.is_some() {
                LEAF_TIMING
            } else {
                LEAF_KVM_FEATURES
            },
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
    entries.retain(|e| e.function != LEAF_TIMING);
    if let Some(khz) = host.tsc_khz {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_TIMING,
            eax: khz,
            ebx: KVM_APIC_BUS_KHZ,
            ..Default::default()
        });
    }
    if let Some(brand) = host.brand {
        let max_ext = entries
            .iter()
            .find(|e| e.function == 0x8000_0000)
            .map_or(0, |e| e.eax);
        if max_ext >= LEAVES_BRAND[2] {
            entries.retain(|e| !LEAVES_BRAND.contains(&e.function));
            for (i, function) in LEAVES_BRAND.into_iter().enumerate() {
                let r = &brand[i * 4..i * 4 + 4];
                entries.push(kvm_cpuid_entry2 {
                    function,
                    eax: r[0],
                    ebx: r[1],
                    ecx: r[2],
                    edx: r[3],
                    ..Default::default()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        let mut leaf1 = entry(1, 0);
        leaf1.ebx = 0xff_ff_ff_12; // host APIC id/count garbage, brand index 0x12
        leaf1.edx = EDX_HTT;
        let mut l1d = entry(4, 0);
        l1d.eax = (1 << 5) | 0x1; // level 1 data cache
        let mut l3 = entry(4, 3);
        l3.eax = (3 << 5) | 0x3;
        vec![
            leaf1,
            l1d,
            l3,
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x1f, 1),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn each_vcpu_sees_its_apic_id_and_the_vm_topology() {
        let topo = Topology { vcpus: 6 };
        assert_eq!(topo.core_bits(), 3);
        let mut v = host();
        normalize(&mut v, 5, topo, Host::default());

        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 5);
        assert_eq!((l1.ebx >> 16) & 0xff, 6);
        assert_eq!(l1.ebx & 0xff, 0x12, "brand index kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);

        let smt = find(&v, 0xb, 0);
        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx),
            (0, 1, LEVEL_TYPE_SMT, 5)
        );
        let core = find(&v, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx, core.edx),
            (3, 6, (2 << 8) | 1, 5)
        );
        let end = find(&v, 0xb, 2);
        assert_eq!((end.ebx, end.ecx), (0, 2));
        assert_eq!(find(&v, 0x1f, 1).edx, 5);

        assert_eq!(find(&v, 4, 0).eax >> 26, 5, "cores per package - 1");
        assert_eq!((find(&v, 4, 0).eax >> 14) & 0xfff, 0, "L1 private");
        assert_eq!((find(&v, 4, 3).eax >> 14) & 0xfff, 5, "L3 shared by all");
        assert_eq!(
            find(&v, 4, 3).eax & 0x3fff,
            (3 << 5) | 3,
            "cache fields kept"
        );

        assert_eq!(find(&v, 0x8000_0008, 0).ecx, (3 << 12) | 5);
        assert_eq!(find(&v, 0x8000_001e, 0).eax, 5);
    }

    /// What KVM lists in the nested rig's L1 (an AMD model without
    /// topology leaves): leaf 0xb's subleaf 0, zeros. Every vCPU still
    /// sees the whole topology, one package of `n` cores; so does a guest
    /// whose host lists no 0xb at all or more levels than we describe.
    #[test]
    fn topology_leaves_are_whole_whatever_the_host_lists() {
        let mut max = entry(0, 0);
        max.eax = 0xd;
        let mut lists = [
            vec![max, entry(0xb, 0)],
            vec![max],
            vec![
                max,
                entry(0xb, 0),
                entry(0xb, 1),
                entry(0xb, 2),
                entry(0xb, 3),
            ],
        ];
        for v in &mut lists {
            normalize(v, 1, Topology { vcpus: 2 }, Host::default());
            let leaf: Vec<_> = v.iter().filter(|e| e.function == 0xb).collect();
            let got: Vec<_> = leaf
                .iter()
                .map(|e| (e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx))
                .collect();
            let sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
            assert_eq!(
                got,
                [
                    (0, sig, 0, 1, (LEVEL_TYPE_SMT << 8), 1),
                    (1, sig, 1, 2, (LEVEL_TYPE_CORE << 8) | 1, 1),
                    (2, sig, 0, 0, 2, 1),
                ]
            );
            // 0x1f lies past the highest basic leaf: not added.
            assert!(!v.iter().any(|e| e.function == 0x1f));
        }
    }

    #[test]
    fn single_vcpu_has_no_htt_and_kvm_signature_is_added() {
        let mut v = host();
        normalize(&mut v, 0, Topology { vcpus: 1 }, Host::default());
        assert_eq!(find(&v, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&v, 0xb, 1).eax, 0);
        let sig = find(&v, LEAF_KVM_SIGNATURE, 0);
        let mut text = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            text.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&text, b"KVMKVMKVM\0\0\0");
        assert_eq!(sig.eax, LEAF_KVM_FEATURES);
    }

    #[test]
    fn without_host_extras_nothing_is_invented() {
        let mut v = host();
        normalize(&mut v, 0, Topology { vcpus: 1 }, Host::default());
        assert_eq!(find(&v, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
        assert!(v.iter().all(|e| e.function != LEAF_TIMING));
        assert!(v.iter().all(|e| !LEAVES_BRAND.contains(&e.function)));
    }

    #[test]
    fn host_extras_reach_the_guest() {
        let mut v = host();
        let mut ext = entry(0x8000_0000, 0);
        ext.eax = 0x8000_0021;
        v.push(ext);
        // KVM's own (empty) brand leaf is replaced, not duplicated.
        v.push(entry(0x8000_0002, 0));
        let text = b"AMD EPYC-Rome Processor\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let mut brand = [0u32; 12];
        for (i, r) in brand.iter_mut().enumerate() {
            *r = u32::from_le_bytes(text[i * 4..i * 4 + 4].try_into().unwrap());
        }
        let extras = Host {
            tsc_deadline: true,
            brand: Some(brand),
            tsc_khz: Some(2_445_000),
        };
        normalize(&mut v, 0, Topology { vcpus: 1 }, extras);

        assert_ne!(find(&v, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(find(&v, 1, 0).ecx & ECX_HYPERVISOR, 0, "kept");
        assert_eq!(find(&v, LEAF_KVM_SIGNATURE, 0).eax, LEAF_TIMING);
        let timing = find(&v, LEAF_TIMING, 0);
        assert_eq!((timing.eax, timing.ebx), (2_445_000, 1_000_000));
        let mut got = Vec::new();
        for leaf in LEAVES_BRAND {
            assert_eq!(v.iter().filter(|e| e.function == leaf).count(), 1);
            let e = find(&v, leaf, 0);
            for r in [e.eax, e.ebx, e.ecx, e.edx] {
                got.extend_from_slice(&r.to_le_bytes());
            }
        }
        assert_eq!(&got[..], &text[..]);
    }

    #[test]
    fn a_brand_is_not_added_past_the_last_extended_leaf() {
        let mut v = host();
        let mut ext = entry(0x8000_0000, 0);
        ext.eax = 0x8000_0001;
        v.push(ext);
        let extras = Host {
            brand: Some([0x4141_4141; 12]),
            ..Host::default()
        };
        normalize(&mut v, 0, Topology { vcpus: 1 }, extras);
        assert!(v.iter().all(|e| !LEAVES_BRAND.contains(&e.function)));
    }
}
