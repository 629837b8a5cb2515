//! The tables are read back from guest memory the way a guest finds them
//! (RSDP → XSDT → FADT/MADT, FADT → DSDT) and checked four ways: byte
//! offsets from the ACPI specification, the independent `acpi` crate's
//! parser, and, when acpica-tools is installed, ACPICA's `iasl`
//! (disassemble, then recompile) and `acpiexec` (load the namespace and
//! evaluate objects with the interpreter Linux uses). Without the tools
//! those two tests print why and pass.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::ptr::NonNull;

use acpi::fadt::Fadt;
use acpi::platform::address::AddressSpace as GasSpace;
use acpi::platform::interrupt::{LocalInterruptLine, NmiProcessor};
use acpi::platform::ProcessorState;
use acpi::sdt::Signature;
use acpi::{AcpiHandler, AcpiTables, InterruptModel, PhysicalMapping, PowerProfile};
use vm_memory::GuestMemoryBackend;

use super::super::layout::{IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use super::*;

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("guest memory")
}

/// `vcpus` vCPUs and `devices` virtio-mmio devices placed the way the
/// device manager places them.
fn layout(vcpus: u8, devices: usize) -> AcpiLayout {
    AcpiLayout {
        vcpus,
        virtio_mmio: (0..devices)
            .map(|i| {
                let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
                (base, VIRTIO_MMIO_SIZE, IRQ_BASE + i as u32)
            })
            .collect(),
    }
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr))
        .expect("read guest memory");
    buf
}

/// A table with a standard header: its length is at offset 4.
fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let header = read(mem, addr, 36);
    read(mem, addr, u32_at(&header, 4) as usize)
}

/// The tables as a guest finds them.
struct Found {
    rsdp: Vec<u8>,
    xsdt: Vec<u8>,
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
    fadt_addr: u64,
    madt_addr: u64,
    dsdt_addr: u64,
    /// (address, length) of every table, the RSDP included.
    spans: Vec<(u64, usize)>,
}

fn find_tables(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> Found {
    let rsdp = read(mem, rsdp_addr.0, 36);
    let xsdt_addr = u64_at(&rsdp, 24);
    let xsdt = read_table(mem, xsdt_addr);
    assert_eq!(&xsdt[..4], b"XSDT");
    assert_eq!(
        (xsdt_addr + 36) % 8,
        0,
        "XSDT entries are naturally aligned"
    );
    let mut by_signature: HashMap<[u8; 4], (u64, Vec<u8>)> = HashMap::new();
    for entry in xsdt[36..].chunks(8) {
        let addr = u64_at(entry, 0);
        let table = read_table(mem, addr);
        let signature = table[..4].try_into().expect("signature");
        assert!(by_signature.insert(signature, (addr, table)).is_none());
    }
    let (fadt_addr, fadt) = by_signature.remove(b"FACP").expect("XSDT lists the FADT");
    let (madt_addr, madt) = by_signature.remove(b"APIC").expect("XSDT lists the MADT");
    assert!(by_signature.is_empty(), "only FADT and MADT in the XSDT");
    let dsdt_addr = u64_at(&fadt, 140);
    let dsdt = read_table(mem, dsdt_addr);
    let spans = vec![
        (rsdp_addr.0, rsdp.len()),
        (xsdt_addr, xsdt.len()),
        (fadt_addr, fadt.len()),
        (madt_addr, madt.len()),
        (dsdt_addr, dsdt.len()),
    ];
    Found {
        rsdp,
        xsdt,
        fadt,
        madt,
        dsdt,
        fadt_addr,
        madt_addr,
        dsdt_addr,
        spans,
    }
}

fn create(layout: &AcpiLayout) -> (GuestMemoryMmap, Found) {
    let mem = guest_memory();
    let rsdp = create_acpi_tables(&mem, layout).expect("ACPI tables");
    assert_eq!(rsdp, GuestAddress(RSDP_START));
    let found = find_tables(&mem, rsdp);
    (mem, found)
}

#[test]
fn every_table_checksums_to_zero_and_they_link_up() {
    for (vcpus, devices) in [(1, 0), (2, 3), (MAX_CPUS, 19)] {
        let (_mem, t) = create(&layout(vcpus, devices));

        assert_eq!(&t.rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[..20]), 0, "RSDP ACPI 1.0 checksum");
        assert_eq!(sum(&t.rsdp), 0, "RSDP extended checksum");
        assert_eq!(&t.rsdp[9..15], b"AGNTVM");
        assert_eq!(t.rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(&t.rsdp, 16), 0, "no RSDT");
        assert_eq!(u32_at(&t.rsdp, 20), 36, "RSDP length");

        for table in [&t.xsdt, &t.fadt, &t.madt, &t.dsdt] {
            let name = String::from_utf8_lossy(&table[..4]).into_owned();
            assert_eq!(sum(table), 0, "{name} checksum");
            assert_eq!(&table[10..16], b"AGNTVM", "{name} OEM ID");
        }
        assert_eq!(&t.dsdt[..4], b"DSDT", "FADT X_DSDT points at the DSDT");

        let mut spans = t.spans.clone();
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].0 + pair[0].1 as u64 <= pair[1].0,
                "overlap: {pair:x?}"
            );
        }
        for (addr, len) in spans {
            assert!(addr >= RSDP_START && addr + len as u64 <= BIOS_END);
        }
    }
}

#[test]
fn fadt_describes_a_hardware_reduced_platform_with_power_registers() {
    let (_mem, t) = create(&layout(1, 1));
    let f = &t.fadt;
    assert_eq!(f.len(), 276, "ACPI 6 FADT");
    assert_eq!((f[8], f[131] & 0xf), (6, 5), "FADT 6.5");
    assert_eq!(u32_at(f, 36), 0, "no FACS");
    assert_eq!(u32_at(f, 40), 0, "32-bit DSDT field unused");
    assert_eq!(u64_at(f, 132), 0, "no X_FACS");
    assert_eq!(u64_at(f, 140), t.dsdt_addr);
    assert_eq!(u16_at(f, 46), 0, "no SCI");

    let flags = u32_at(f, 112);
    let expected = (1 << 20) | (1 << 10) | (1 << 4) | (1 << 5);
    assert_eq!(
        flags, expected,
        "HW_REDUCED_ACPI, RESET_REG_SUP, PWR/SLP_BUTTON"
    );

    let boot_arch = u16_at(f, 109);
    assert_eq!(
        boot_arch,
        (1 << 2) | (1 << 3) | (1 << 5),
        "no VGA, MSI, CMOS RTC"
    );
    assert_eq!(
        boot_arch & (1 << 1),
        0,
        "8042 flag clear: Linux leaves the i8042 alone"
    );

    // Generic Address Structures: space, width, offset, access size, address.
    let gas = |offset: usize| {
        (
            f[offset],
            f[offset + 1],
            f[offset + 2],
            f[offset + 3],
            u64_at(f, offset + 4),
        )
    };
    assert_eq!(gas(116), (1, 8, 0, 1, 0x602), "reset register");
    assert_eq!(f[128], 0x06, "reset value");
    assert_eq!(gas(244), (1, 8, 0, 1, 0x600), "sleep control register");
    assert_eq!(gas(256), (1, 8, 0, 1, 0x601), "sleep status register");
    for pm_block in (148..244).step_by(12) {
        assert_eq!(
            gas(pm_block),
            (0, 0, 0, 0, 0),
            "no fixed hardware at {pm_block}"
        );
    }
    assert_eq!(&f[268..276], b"AGENTVM\0", "hypervisor vendor");
}

/// MADT entries as (type, bytes).
fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut at = 44;
    while at < madt.len() {
        let len = usize::from(madt[at + 1]);
        assert!(len >= 2 && at + len <= madt.len(), "entry at {at}");
        entries.push((madt[at], madt[at..at + len].to_vec()));
        at += len;
    }
    entries
}

#[test]
fn madt_has_an_enabled_local_apic_per_vcpu_and_one_ioapic() {
    for vcpus in [1u8, 4, MAX_CPUS] {
        let (_mem, t) = create(&layout(vcpus, 0));
        assert_eq!(u32_at(&t.madt, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u32_at(&t.madt, 40), 1, "PCAT_COMPAT");

        let entries = madt_entries(&t.madt);
        let lapics: Vec<_> = entries.iter().filter(|(kind, _)| *kind == 0).collect();
        assert_eq!(lapics.len(), usize::from(vcpus));
        for (i, (_, e)) in lapics.iter().enumerate() {
            assert_eq!(
                (e.len(), e[2], e[3]),
                (8, i as u8, i as u8),
                "UID and APIC ID"
            );
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
        let ioapics: Vec<_> = entries.iter().filter(|(kind, _)| *kind == 1).collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = &ioapics[0].1;
        assert_eq!(ioapic[2], vcpus, "IOAPIC ID after the vCPUs'");
        assert_eq!((u32_at(ioapic, 4), u32_at(ioapic, 8)), (0xfec0_0000, 0));

        let others: Vec<_> = entries.iter().filter(|(kind, _)| *kind > 1).collect();
        assert_eq!(others.len(), 1, "no interrupt source overrides");
        assert_eq!(others[0].1, [4, 6, 0xff, 0, 0, 1], "NMI on every LINT1");
    }
}

#[test]
fn dsdt_describes_s5_com1_pvpanic_and_every_virtio_device() {
    let devices = 19;
    let (_mem, t) = create(&layout(1, devices));
    let aml = &t.dsdt[36..];
    let count = |needle: &[u8]| aml.windows(needle.len()).filter(|w| w == &needle).count();

    // Name (_S5_, Package (4) { 5, 0, 0, 0 })
    assert_eq!(
        count(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 5, 0, 0, 0]),
        1
    );
    // _HID EISAID("PNP0501"), then IO (0x3f8, 0x3f8, 1, 8) and IRQ 4.
    assert_eq!(count(&[0x0c, 0x41, 0xd0, 0x05, 0x01]), 1);
    assert_eq!(count(&[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
    assert_eq!(count(b"QEMU0001\0"), 1);
    assert_eq!(count(&[0x47, 1, 0x05, 5, 0x05, 5, 1, 1]), 1);
    let interrupt = |gsi: u32| [[0x89, 6, 0, 0x03, 1].as_slice(), &gsi.to_le_bytes()].concat();
    assert_eq!(
        count(&interrupt(4)),
        1,
        "COM1: edge, active high, exclusive"
    );

    assert_eq!(count(b"LNRO0005\0"), devices);
    for (i, &(base, size, gsi)) in layout(1, devices).virtio_mmio.iter().enumerate() {
        let name = format!("VR{i:02X}");
        assert_eq!(count(name.as_bytes()), 1, "{name}");
        let memory = [
            [0x86, 9, 0, 1].as_slice(),
            &(base as u32).to_le_bytes(),
            &(size as u32).to_le_bytes(),
        ]
        .concat();
        assert_eq!(count(&memory), 1, "{name} Memory32Fixed");
        assert_eq!(count(&interrupt(gsi)), 1, "{name} interrupt");
    }
}

/// Maps guest memory for the `acpi` crate.
#[derive(Clone)]
struct GuestMemoryHandler(GuestMemoryMmap);

impl AcpiHandler for GuestMemoryHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let addr = GuestAddress(physical_address as u64);
        assert!(
            self.0.check_range(addr, size),
            "{size} bytes at {addr:?} are not guest RAM"
        );
        let host = self.0.get_host_address(addr).expect("host address");
        let ptr = NonNull::new(host.cast::<T>()).expect("mapped");
        // SAFETY: `ptr` points at `size` bytes of one guest memory region
        // (checked above), and the mapping keeps a clone of the memory, so
        // the region stays mapped for as long as the mapping exists.
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

#[test]
fn the_acpi_crate_parses_the_platform_the_tables_describe() {
    let vcpus = 4;
    let (mem, t) = create(&layout(vcpus, 3));
    let handler = GuestMemoryHandler(mem);

    // SAFETY: the handler maps only checked guest memory.
    let tables =
        unsafe { AcpiTables::from_rsdp(handler.clone(), RSDP_START as usize) }.expect("tables");
    assert_eq!(tables.revision, 2);
    let dsdt = tables.dsdt.as_ref().expect("DSDT");
    assert_eq!(dsdt.address as u64, t.dsdt_addr + 36);
    assert_eq!(dsdt.length as usize, t.dsdt.len() - 36);
    assert_eq!(
        tables.sdts[&Signature::FADT].physical_address as u64,
        t.fadt_addr
    );
    assert_eq!(
        tables.sdts[&Signature::MADT].physical_address as u64,
        t.madt_addr
    );

    let info = tables.platform_info().expect("platform info");
    assert!(matches!(info.power_profile, PowerProfile::Unspecified));
    assert!(
        info.pm_timer.is_none(),
        "no PM timer on a hardware-reduced platform"
    );
    let cpus = info.processor_info.expect("processors");
    assert_eq!(cpus.boot_processor.local_apic_id, 0);
    assert_eq!(cpus.boot_processor.state, ProcessorState::Running);
    let aps: Vec<_> = cpus
        .application_processors
        .iter()
        .map(|p| (p.local_apic_id, p.state))
        .collect();
    let expected: Vec<_> = (1..u32::from(vcpus))
        .map(|id| (id, ProcessorState::WaitingForSipi))
        .collect();
    assert_eq!(aps, expected);
    let InterruptModel::Apic(apic) = info.interrupt_model else {
        panic!("not an APIC platform");
    };
    assert_eq!(apic.local_apic_address, 0xfee0_0000);
    assert!(apic.also_has_legacy_pics);
    assert!(apic.interrupt_source_overrides.is_empty());
    assert_eq!(apic.io_apics.len(), 1);
    let ioapic = &apic.io_apics[0];
    assert_eq!(
        (
            ioapic.id,
            ioapic.address,
            ioapic.global_system_interrupt_base
        ),
        (vcpus, 0xfec0_0000, 0)
    );
    assert!(matches!(
        apic.local_apic_nmi_lines.as_slice(),
        [line] if matches!(line.processor, NmiProcessor::All) && matches!(line.line, LocalInterruptLine::Lint1)
    ));

    // SAFETY: `Fadt` is the layout of an ACPI 6 FADT, which is what is there.
    let fadt = unsafe { tables.get_sdt::<Fadt>(Signature::FADT) }
        .expect("valid")
        .expect("present");
    let flags = { fadt.flags };
    assert!(flags.system_is_hw_reduced_acpi());
    assert!(flags.supports_system_reset_via_fadt());
    assert!(flags.power_button_is_control_method() && flags.sleep_button_is_control_method());
    let boot_arch = { fadt.iapc_boot_arch };
    assert!(!boot_arch.motherboard_implements_8042());
    assert!(boot_arch.dont_probe_vga() && boot_arch.dont_enable_msi());
    let reset = fadt.reset_register().expect("reset register");
    assert_eq!(
        (reset.address_space, reset.address, reset.bit_width),
        (GasSpace::SystemIo, 0x602, 8)
    );
    assert_eq!({ fadt.reset_value }, 0x06);
    let control = fadt
        .sleep_control_register()
        .expect("valid")
        .expect("sleep control");
    let status = fadt
        .sleep_status_register()
        .expect("valid")
        .expect("sleep status");
    assert_eq!(
        (control.address_space, control.address),
        (GasSpace::SystemIo, 0x600)
    );
    assert_eq!(
        (status.address_space, status.address),
        (GasSpace::SystemIo, 0x601)
    );

    // A guest without a boot-protocol pointer scans the BIOS area instead.
    // SAFETY: as above.
    let scanned =
        unsafe { AcpiTables::search_for_rsdp_bios(handler) }.expect("RSDP found by scanning");
    assert_eq!(scanned.sdts.len(), tables.sdts.len());
}

#[test]
fn rejects_layouts_it_cannot_describe_without_writing_anything() {
    let mem = guest_memory();
    let window = |base: u64, size: u64| AcpiLayout {
        vcpus: 1,
        virtio_mmio: vec![(base, size, 5)],
    };
    let mut bad_gsi = layout(1, 1);
    bad_gsi.virtio_mmio[0].2 = IRQ_MAX + 1;
    let cases = [
        (layout(0, 0), "VcpuCount(0)"),
        (layout(255, 0), "VcpuCount(255)"),
        (layout(1, MAX_VIRTIO_DEVICES + 1), "TooManyDevices(257)"),
        (bad_gsi, "Gsi(24)"),
        (window(0xffff_f000, 0x2000), "WindowAbove4G"),
        (window(1 << 32, 0x1000), "WindowAbove4G"),
    ];
    for (layout, expected) in cases {
        let err = create_acpi_tables(&mem, &layout).expect_err(expected);
        assert!(format!("{err:?}").starts_with(expected), "{err:?}");
    }
    assert_eq!(read(&mem, RSDP_START, 8), [0; 8], "nothing written");

    // The last window below 4 GiB is fine.
    create_acpi_tables(&mem, &window(0xffff_f000, 0x1000)).expect("window ending at 4 GiB");
}

#[test]
fn reports_guest_memory_that_does_not_reach_the_bios_area() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xa_0000)]).expect("memory");
    let err = create_acpi_tables(&mem, &layout(1, 0)).expect_err("no BIOS area");
    assert!(matches!(err, AcpiError::GuestMemory(_)), "{err:?}");
}

/// `name : value` pairs of an `iasl -d` data table listing.
fn iasl_fields(dsl: &str) -> Vec<(String, String)> {
    dsl.lines()
        .filter_map(|line| {
            // Data lines start with "[offset decimal length]".
            let line = line.trim_start();
            let line = match line.strip_prefix('[') {
                Some(rest) => rest.split_once(']').map_or(rest, |(_, fields)| fields),
                None => line,
            };
            let (key, value) = line.split_once(" : ")?;
            Some((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

fn has_field(fields: &[(String, String)], key_prefix: &str, value: &str) -> bool {
    fields
        .iter()
        .any(|(k, v)| k.starts_with(key_prefix) && v == value)
}

/// Whether an ACPICA tool is installed; says why a test skips if not.
fn have_tool(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .is_ok();
    if !found {
        eprintln!("skipped: {tool} is not installed (Debian/Ubuntu package acpica-tools)");
    }
    found
}

/// Runs an ACPICA tool in `dir`; returns its output after asserting it
/// exited successfully.
fn acpica(tool: &str, dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(tool)
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ACPICA tool");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{log}");
    log
}

#[test]
fn iasl_disassembles_and_recompiles_the_tables_cleanly() {
    if !have_tool("iasl") {
        return;
    }
    let devices = 3;
    let (_mem, t) = create(&layout(2, devices));
    let dir = tempfile::tempdir().expect("temporary directory");

    // The RSDP is left out: iasl cannot take one as a binary file (its
    // signature is not an ACPI name); the checksum tests and the acpi crate
    // cover it.
    let mut dsl = HashMap::new();
    for (name, table) in [
        ("dsdt", &t.dsdt),
        ("facp", &t.fadt),
        ("apic", &t.madt),
        ("xsdt", &t.xsdt),
    ] {
        std::fs::write(dir.path().join(format!("{name}.dat")), table).expect("write table");
        let log = acpica("iasl", dir.path(), &["-d", &format!("{name}.dat")]);
        let lower = log.to_lowercase();
        for complaint in ["error", "warning", "invalid", "unknown"] {
            assert!(!lower.contains(complaint), "iasl -d {name}: {log}");
        }
        let text =
            std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).expect("listing");
        assert!(!text.contains("****"), "iasl flagged {name}:\n{text}");
        // Compile the listing back: ASL semantics for the DSDT, field
        // ranges for the data tables.
        let log = acpica(
            "iasl",
            dir.path(),
            &["-p", &format!("{name}-again"), &format!("{name}.dsl")],
        );
        assert!(log.contains(" 0 Errors"), "iasl {name}.dsl: {log}");
        dsl.insert(name, text);
    }

    let dsdt = &dsl["dsdt"];
    assert!(dsdt.contains("Name (_S5, Package (0x04)"), "{dsdt}");
    for needle in ["0x05,", "EisaId (\"PNP0501\")", "\"QEMU0001\"", "0x03F8,"] {
        assert!(dsdt.contains(needle), "{needle} missing:\n{dsdt}");
    }
    let blocks: HashMap<&str, &str> = dsdt
        .split("Device (")
        .skip(1)
        .map(|block| (&block[..4], block))
        .collect();
    assert!(blocks["COM1"].contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive"));
    assert!(blocks["COM1"].contains("0x00000004,"));
    for (i, (base, size, gsi)) in layout(2, devices).virtio_mmio.into_iter().enumerate() {
        let block = blocks[format!("VR{i:02X}").as_str()];
        for needle in [
            "\"LNRO0005\"".to_string(),
            "Memory32Fixed (ReadWrite,".to_string(),
            format!("0x{base:08X},"),
            format!("0x{size:08X},"),
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive".to_string(),
            format!("0x{gsi:08X},"),
        ] {
            assert!(
                block.contains(&needle),
                "VR{i:02X} lacks {needle}:\n{block}"
            );
        }
    }

    let fadt = iasl_fields(&dsl["facp"]);
    for (key, value) in [
        ("Hardware Reduced", "1"),
        ("Reset Register Supported", "1"),
        ("8042 Present", "0"),
        ("VGA Not Present", "1"),
        ("CMOS RTC Not Present", "1"),
        ("Value to cause reset", "06"),
        ("Address", "0000000000000602"),
        ("Address", "0000000000000600"),
        ("Address", "0000000000000601"),
        ("DSDT Address", &format!("{:016X}", t.dsdt_addr)),
    ] {
        assert!(
            has_field(&fadt, key, value),
            "FADT {key} : {value}:\n{}",
            dsl["facp"]
        );
    }

    let madt = iasl_fields(&dsl["apic"]);
    let lapics = madt
        .iter()
        .filter(|(k, v)| k == "Subtable Type" && v.starts_with("00"))
        .count();
    assert_eq!(lapics, 2, "{}", dsl["apic"]);
    for (key, value) in [
        ("Local Apic Address", "FEE00000"),
        ("PC-AT Compatibility", "1"),
        ("Address", "FEC00000"),
    ] {
        assert!(
            has_field(&madt, key, value),
            "MADT {key} : {value}:\n{}",
            dsl["apic"]
        );
    }

    let xsdt = iasl_fields(&dsl["xsdt"]);
    for addr in [t.fadt_addr, t.madt_addr] {
        assert!(
            has_field(&xsdt, "ACPI Table Address", &format!("{addr:016X}")),
            "{}",
            dsl["xsdt"]
        );
    }
}

#[test]
fn acpica_loads_the_namespace_and_evaluates_the_objects_linux_uses() {
    if !have_tool("acpiexec") {
        return;
    }
    let (_mem, t) = create(&layout(2, 2));
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, table) in [("facp", &t.fadt), ("dsdt", &t.dsdt), ("apic", &t.madt)] {
        std::fs::write(dir.path().join(format!("{name}.dat")), table).expect("write table");
    }
    // ACPICA's interpreter (the one Linux runs) loads the tables on a
    // hardware-reduced platform and evaluates what the kernel asks for.
    let objects = [
        "\\_S5_",
        "\\_SB_.COM1._CRS",
        "\\_SB_.PEVT._HID",
        "\\_SB_.VR00._CRS",
        "\\_SB_.VR01._HID",
    ];
    let commands: Vec<String> = objects.iter().map(|o| format!("Evaluate {o}")).collect();
    let log = acpica(
        "acpiexec",
        dir.path(),
        &[
            "-b",
            &commands.join("; "),
            "facp.dat",
            "dsdt.dat",
            "apic.dat",
        ],
    );
    let lower = log.to_lowercase();
    for complaint in ["error", "warning", "failed", "ae_"] {
        assert!(!lower.contains(complaint), "acpiexec: {log}");
    }
    for object in objects {
        let returned = format!("Evaluation of {object} returned");
        assert!(log.contains(&returned), "{object}:\n{log}");
    }
    assert!(
        log.contains("[Integer] = 0000000000000005"),
        "_S5_ sleep type:\n{log}"
    );
    assert!(log.contains("LNRO0005"), "VR01._HID:\n{log}");
}
