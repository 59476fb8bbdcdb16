//! The Intel MultiProcessor table (MP spec 1.4) in the EBDA: without ACPI it
//! is how Linux finds the application processors, the IOAPIC and the ISA
//! interrupt routing. Written by hand: no rust-vmm crate provides it, and
//! the format is a few fixed-size records.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{EBDA_START, IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR, LOW_RAM_END};
use crate::error::{Error, Result};
use crate::GuestMemory;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
/// CPU signature and feature flags of a generic family-6 processor with an
/// APIC and an FPU, as firmware reports them.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4) | 1;
const CPU_FEATURES: u32 = (1 << 9) | 1;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table's bytes for `vcpus` processors, placed at `base`.
pub fn build(base: u64, vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus; // the first ID after the CPUs
    let mut entries = Vec::new();
    let mut count = 0u16;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 2;
    for pin in 0..IOAPIC_PINS as u8 {
        // Pin 2 of the IOAPIC carries the PIT's IRQ 0, as on PCs.
        let (src, kind) = match pin {
            0 => (0, MP_IRQ_EXTINT),
            2 => (0, MP_IRQ_INT),
            p => (p, MP_IRQ_INT),
        };
        entries.extend_from_slice(&[MP_INTSRC, kind, 0, 0, 0, src, ioapic_id, pin]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"IRONCELL");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended table checksum
    header.push(0); // reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    floating
}

pub fn write(mem: &GuestMemory, vcpus: u8) -> Result<()> {
    let bytes = build(EBDA_START, vcpus);
    if EBDA_START + bytes.len() as u64 > LOW_RAM_END {
        return Err(Error::Boot(format!(
            "the MP table for {vcpus} vCPUs does not fit in the EBDA"
        )));
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|e| Error::Boot(format!("writing the MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_VCPUS;

    #[test]
    fn checksums_and_sizes() {
        for vcpus in [1, 2, MAX_VCPUS] {
            let t = build(EBDA_START, vcpus);
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            assert_eq!(&t[16..20], b"PCMP");
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(t[16..].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            assert!(
                EBDA_START + t.len() as u64 <= LOW_RAM_END,
                "{vcpus} vCPUs overflow the EBDA"
            );
        }
    }
}
