//! Loading the kernel and initrd and writing the structures the guest reads
//! at its entry point: PVH `hvm_start_info` (preferred) or the Linux zero
//! page for the plain 64-bit ELF entry.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::*;
use crate::error::{Error, Result};
use crate::GuestMemory;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PAGE: u64 = 0x1000;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh(u64),
    /// 64-bit long mode, identity paging, RSI = zero page.
    Long64(u64),
}

/// The guest's memory map, as E820 entries (address, size, type).
fn memory_map(mem: &GuestMemory) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        let start = start.max(HIMEM_START);
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// End of the RAM below the MMIO gap.
fn low_ram_end(mem: &GuestMemory) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|end| *end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

/// Loads the ELF kernel; returns its entry and the end of its image.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<(Entry, u64)> {
    let mut file = File::open(path).map_err(|source| Error::KernelOpen {
        path: path.into(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| Error::KernelOpen {
        path: path.into(),
        source,
    })?;
    if !meta.is_file() {
        return Err(Error::KernelLoad {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        Error::KernelLoad {
            path: path.into(),
            reason: elf_reason(&e),
        }
    })?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Entry::Pvh(addr.raw_value()),
        _ => Entry::Long64(loaded.kernel_load.raw_value()),
    };
    Ok((entry, loaded.kernel_end))
}

/// linux-loader's messages end with a period and name the ELF field; keep
/// them but say what the user can do about the common case.
fn elf_reason(e: &linux_loader::loader::Error) -> String {
    use linux_loader::loader::elf::Error as E;
    match e {
        linux_loader::loader::Error::Elf(E::InvalidElfMagicNumber)
        | linux_loader::loader::Error::Elf(E::ReadElfHeader) => {
            "not an ELF file (pass the uncompressed vmlinux, not a bzImage)".into()
        }
        other => other.to_string().trim_end_matches('.').to_string(),
    }
}

/// Copies the initrd to the top of low RAM; returns (address, size).
pub fn load_initrd(mem: &GuestMemory, path: &Path, kernel_end: u64) -> Result<(u64, u64)> {
    let err = |reason: String| Error::Initrd {
        path: path.into(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    if size == 0 {
        return Err(err("empty file".into()));
    }
    let top = low_ram_end(mem);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|a| *a >= kernel_end.max(HIMEM_START));
    let Some(addr) = addr else {
        return Err(err(format!(
            "{size} bytes do not fit in guest memory above the kernel"
        )));
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| err(e.to_string()))?;
    Ok((addr, size))
}

fn write<T: vm_memory::ByteValued>(mem: &GuestMemory, val: T, addr: u64, what: &str) -> Result<()> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|e| Error::Boot(format!("writing {what}: {e}")))
}

pub fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<()> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| Error::Boot(format!("writing the command line: {e}")))
}

/// Writes `hvm_start_info`, its module list and memory map.
pub fn write_pvh_info(mem: &GuestMemory, initrd: Option<(u64, u64)>) -> Result<()> {
    let map = memory_map(mem);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
        write(
            mem,
            hvm_modlist_entry {
                paddr: addr,
                size,
                ..Default::default()
            },
            PVH_MODLIST_ADDR,
            "the PVH module list",
        )?;
    }
    for (i, (addr, size, type_)) in map.into_iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        write(mem, entry, at, "the PVH memory map")?;
    }
    write(mem, info, PVH_INFO_ADDR, "hvm_start_info")
}

/// Writes the Linux zero page for the 64-bit entry.
pub fn write_zero_page(
    mem: &GuestMemory,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = memory_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(Error::Boot(
            "memory map does not fit in the zero page".into(),
        ));
    }
    params.e820_entries = map.len() as u8;
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    write(mem, params, ZERO_PAGE_ADDR, "the zero page")
}

/// Identity-maps the first 4 GiB with 2 MiB pages for the 64-bit entry.
pub fn write_page_tables(mem: &GuestMemory) -> Result<()> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    write(mem, PDPT_ADDR | PRESENT_RW, PML4_ADDR, "the PML4")?;
    for gib in 0..4u64 {
        let pd = PD_ADDR + gib * PAGE;
        write(mem, pd | PRESENT_RW, PDPT_ADDR + gib * 8, "the PDPT")?;
        for i in 0..512u64 {
            let frame = (gib << 30) | (i << 21);
            write(
                mem,
                frame | PRESENT_RW | HUGE,
                pd + i * 8,
                "a page directory",
            )?;
        }
    }
    Ok(())
}

/// Loads everything the boot vCPU needs; returns its entry.
pub fn setup(
    mem: &GuestMemory,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    vcpus: u8,
) -> Result<Entry> {
    let (entry, kernel_end) = load_kernel(mem, kernel)?;
    let initrd = initrd
        .map(|p| load_initrd(mem, p, kernel_end))
        .transpose()?;
    write_cmdline(mem, cmdline)?;
    match entry {
        Entry::Pvh(_) => write_pvh_info(mem, initrd)?,
        Entry::Long64(_) => {
            write_zero_page(mem, cmdline.len(), initrd)?;
            write_page_tables(mem)?;
        }
    }
    super::mptable::write(mem, vcpus)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem(mib: u64) -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (mib << 20) as usize)]).unwrap()
    }

    #[test]
    fn pvh_info_has_cmdline_memmap_and_initrd() {
        let m = mem(16);
        write_cmdline(&m, "console=ttyS0").unwrap();
        write_pvh_info(&m, Some((0x80_0000, 0x1000))).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries, 3);
        let last: hvm_memmap_table_entry = m.read_obj(GuestAddress(PVH_MEMMAP_ADDR + 48)).unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (HIMEM_START, (16 << 20) - HIMEM_START, E820_RAM)
        );
        let mut cmd = [0u8; 14];
        m.read_slice(&mut cmd, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
    }

    #[test]
    fn non_elf_kernel_is_a_clear_error() {
        let m = mem(16);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"MZ this is not an ELF file at all, just some bytes....................................").unwrap();
        let e = load_kernel(&m, f.path()).unwrap_err().to_string();
        assert!(e.contains("not an ELF file"), "{e}");
        let e = load_kernel(&m, Path::new("/nonexistent/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot open kernel /nonexistent/vmlinux"), "{e}");
    }

    #[test]
    fn initrd_too_big_is_refused() {
        let m = mem(4);
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 << 20).unwrap();
        let e = load_initrd(&m, f.path(), HIMEM_START + 0x1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not fit"), "{e}");
    }

    #[test]
    fn page_tables_identity_map() {
        let m = mem(16);
        write_page_tables(&m).unwrap();
        let pde: u64 = m
            .read_obj(GuestAddress(PD_ADDR + 3 * PAGE + 511 * 8))
            .unwrap();
        assert_eq!(pde & !0xfff, (3 << 30) | (511 << 21));
    }
}
