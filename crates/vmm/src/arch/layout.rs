//! Guest-physical memory layout (see docs/vmm.md).

/// GDT used by the initial vCPU state.
pub const GDT_ADDR: u64 = 0x500;
/// `struct hvm_start_info` for the PVH entry.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// Linux zero page (`struct boot_params`) for the 64-bit entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack of the 64-bit entry.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Identity page tables of the 64-bit entry: PML4, PDPT and four page
/// directories of 2 MiB pages covering 4 GiB.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line, NUL-terminated.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Extended BIOS data area: the MP table lives here, up to 0xa0000.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory.
pub const LOW_RAM_END: u64 = 0xa0000;
/// Kernels load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// [3 GiB, 4 GiB) holds device windows; RAM beyond 3 GiB moves above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// virtio-mmio windows, one per device.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of the first virtio device; serial uses 4.
pub const VIRTIO_FIRST_GSI: u32 = 5;
pub const SERIAL_GSI: u32 = 4;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// The in-kernel IOAPIC has 24 pins.
pub const IOAPIC_PINS: u32 = 24;

/// The guest RAM ranges for `memory` bytes: low RAM up to the MMIO gap, the
/// rest above 4 GiB.
pub fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    if memory <= MMIO_GAP_START {
        vec![(0, memory)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, memory - MMIO_GAP_START)]
    }
}

/// Window of the `index`th virtio device: (base address, GSI).
pub fn virtio_window(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_FIRST_GSI + index as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        let (base, gsi) = virtio_window(18);
        assert!(base + VIRTIO_MMIO_SIZE <= IOAPIC_ADDR);
        assert!(gsi < IOAPIC_PINS);
    }
}
