//! Reads the MP table back from guest memory the way a guest kernel does:
//! find the floating pointer, follow it, check both checksums, walk the
//! entries by type.

use super::*;

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("guest memory")
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr))
        .expect("read guest memory");
    buf
}

/// What a guest learns from the table.
#[derive(Debug, Default)]
struct Parsed {
    /// (APIC ID, flags, APIC version) per processor entry.
    cpus: Vec<(u8, u8, u8)>,
    buses: Vec<[u8; 6]>,
    /// (ID, address) per IOAPIC entry.
    ioapics: Vec<(u8, u32)>,
    /// (source IRQ, destination IOAPIC, pin) per I/O interrupt entry.
    io_interrupts: Vec<(u8, u8, u8)>,
    /// (type, destination APIC, LINT pin) per local interrupt entry.
    local_interrupts: Vec<(u8, u8, u8)>,
    local_apic: u32,
    end: u64,
}

fn parse(mem: &GuestMemoryMmap) -> Parsed {
    let fp: FloatingPointer = mem.read_obj(GuestAddress(EBDA_START)).expect("pointer");
    assert_eq!(&fp.signature, b"_MP_");
    assert_eq!(sum(fp.as_slice()), 0, "floating pointer checksum");
    assert_eq!(fp.length_paragraphs, 1);
    assert_eq!(fp.spec_revision, 4);
    assert_eq!(fp.feature1, 0, "a configuration table, not a default one");

    let table_addr = u64::from(fp.config_table);
    let header: ConfigHeader = mem.read_obj(GuestAddress(table_addr)).expect("header");
    assert_eq!(&header.signature, b"PCMP");
    let base_length = usize::from(header.base_length);
    assert_eq!(
        sum(&read(mem, table_addr, base_length)),
        0,
        "table checksum"
    );
    assert_eq!({ header.extended_length }, 0);

    let mut parsed = Parsed {
        local_apic: header.local_apic,
        end: table_addr + base_length as u64,
        ..Default::default()
    };
    let mut at = table_addr + std::mem::size_of::<ConfigHeader>() as u64;
    for _ in 0..header.entry_count {
        let entry_type: u8 = mem.read_obj(GuestAddress(at)).expect("entry type");
        let len = match entry_type {
            ENTRY_PROCESSOR => {
                let e: ProcessorEntry = mem.read_obj(GuestAddress(at)).expect("cpu");
                parsed.cpus.push((e.apic_id, e.flags, e.apic_version));
                20
            }
            ENTRY_BUS => {
                let e: BusEntry = mem.read_obj(GuestAddress(at)).expect("bus");
                parsed.buses.push(e.bus_type);
                8
            }
            ENTRY_IOAPIC => {
                let e: IoApicEntry = mem.read_obj(GuestAddress(at)).expect("ioapic");
                assert_eq!(e.flags, IOAPIC_ENABLED);
                parsed.ioapics.push((e.id, e.address));
                8
            }
            ENTRY_IO_INTERRUPT | ENTRY_LOCAL_INTERRUPT => {
                let e: InterruptEntry = mem.read_obj(GuestAddress(at)).expect("irq");
                assert_eq!(e.source_bus, ISA_BUS_ID);
                if entry_type == ENTRY_IO_INTERRUPT {
                    assert_eq!(e.interrupt_type, INT_TYPE_INT);
                    parsed
                        .io_interrupts
                        .push((e.source_irq, e.destination_id, e.destination_pin));
                } else {
                    parsed.local_interrupts.push((
                        e.interrupt_type,
                        e.destination_id,
                        e.destination_pin,
                    ));
                }
                8
            }
            other => panic!("unknown entry type {other} at {at:#x}"),
        };
        at += len;
    }
    assert_eq!(at, parsed.end, "entry count matches the table length");
    parsed
}

#[test]
fn structures_have_the_sizes_of_the_spec() {
    assert_eq!(std::mem::size_of::<FloatingPointer>(), 16);
    assert_eq!(std::mem::size_of::<ConfigHeader>(), 44);
    assert_eq!(std::mem::size_of::<ProcessorEntry>(), 20);
    assert_eq!(std::mem::size_of::<BusEntry>(), 8);
    assert_eq!(std::mem::size_of::<IoApicEntry>(), 8);
    assert_eq!(std::mem::size_of::<InterruptEntry>(), 8);
}

#[test]
fn describes_each_cpu_with_only_the_first_as_boot_processor() {
    for n in [1u8, 2, 7, MAX_CPUS] {
        let mem = guest_memory();
        setup_mptable(&mem, n).expect("mptable");
        let p = parse(&mem);

        let expected: Vec<_> = (0..n)
            .map(|id| {
                let boot = if id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
                (id, CPU_ENABLED | boot, 0x14)
            })
            .collect();
        assert_eq!(p.cpus, expected, "{n} vCPUs");
        assert_eq!(p.local_apic, 0xfee0_0000);
        assert_eq!(p.buses, vec![*b"ISA   "]);
        assert_eq!(
            p.ioapics,
            vec![(n, 0xfec0_0000)],
            "IOAPIC ID follows the vCPUs"
        );
        assert!(p.end <= RSDP_START, "{n} vCPUs: table ends at {:#x}", p.end);
    }
}

#[test]
fn routes_every_ioapic_pin_and_the_local_lines() {
    let mem = guest_memory();
    setup_mptable(&mem, 2).expect("mptable");
    let p = parse(&mem);

    // ISA IRQs 0-15 and the virtio GSIs up to 23, each on its own pin.
    let expected: Vec<_> = (0..=23u8).map(|irq| (irq, 2, irq)).collect();
    assert_eq!(p.io_interrupts, expected);
    assert_eq!(
        p.local_interrupts,
        vec![(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, 0xff, 1)],
        "ExtINT on the boot CPU's LINT0, NMI on every LINT1"
    );
}

#[test]
fn rejects_cpu_counts_the_apic_ids_cannot_hold() {
    let mem = guest_memory();
    for n in [0u8, 255] {
        let err = setup_mptable(&mem, n).expect_err("invalid count");
        assert!(
            matches!(err, MptableError::CpuCount(c) if c == n),
            "{err:?}"
        );
    }
    let fp: FloatingPointer = mem.read_obj(GuestAddress(EBDA_START)).expect("read");
    assert_eq!(fp.signature, [0; 4], "nothing written on error");
}

#[test]
fn reports_memory_that_does_not_reach_the_ebda() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9_0000)]).expect("memory");
    let err = setup_mptable(&mem, 1).expect_err("no EBDA");
    assert!(matches!(err, MptableError::GuestMemory(_)), "{err:?}");
}
