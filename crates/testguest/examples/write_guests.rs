//! Writes every ready-made guest into a directory, for trying them by hand:
//!
//! ```text
//! cargo run -p agentvm-testguest --example write_guests -- /tmp/guests [mmio base, hex]
//! qemu-system-x86_64 -M microvm -m 64M -nodefaults -nographic -no-reboot \
//!     -serial stdio -device isa-debug-exit,iobase=0xf4 -kernel /tmp/guests/pvh-probe.pvh-elf
//! ```

use std::path::PathBuf;

use agentvm_testguest::programs::{self, BootProbeOptions};
use agentvm_testguest::Format;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "guests".into()));
    // The virtio-mmio transport the MMIO probes read (default: QEMU microvm's first).
    let mmio_base = match std::env::args().nth(2) {
        Some(text) => u64::from_str_radix(text.trim_start_matches("0x"), 16)?,
        None => 0xfeb0_0000,
    };
    std::fs::create_dir_all(&dir)?;
    let formats = [
        Format::Elf64,
        Format::PvhElf,
        Format::DualElf,
        Format::bzimage(),
    ];
    let mut guests = Vec::new();
    for format in formats {
        guests.push(programs::hello_as(
            format,
            "hello from agentvm-testguest\n",
        )?);
        guests.push(programs::mmio_probe_as(format, mmio_base)?);
    }
    for format in [Format::Elf64, Format::bzimage()] {
        for read_efer in [false, true] {
            guests.push(programs::boot_protocol_probe_as(
                format,
                BootProbeOptions { read_efer },
            )?);
        }
    }
    guests.push(programs::pvh_probe()?);
    guests.push(programs::bench_guest()?);
    for guest in &guests {
        let path = guest.write_to(&dir)?;
        println!(
            "{:<28} load {:#010x} entry64 {:<12} pvh {}",
            path.display(),
            guest.load_addr(),
            guest.entry64().map_or("-".into(), |e| format!("{e:#x}")),
            guest.pvh_entry().map_or("-".into(), |e| format!("{e:#x}")),
        );
    }
    Ok(())
}
