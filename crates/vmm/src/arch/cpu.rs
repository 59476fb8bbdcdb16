//! Initial vCPU state: CPUID, segments and control registers for the entry
//! mode, FPU, and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::boot::Entry;
use super::layout::*;
use crate::error::{Error, Result};
use crate::GuestMemory;

const GDT_NULL: u64 = 0;
const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
const GDT_CODE32: u64 = 0x00cf_9b00_0000_ffff;
const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;
/// A busy 32-bit TSS of 104 bytes at 0: KVM wants a usable TR.
const GDT_TSS: u64 = 0x0000_8b00_0000_0067;

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The GDT for `entry`: null, code (selector 0x8), data (0x10), TSS (0x18).
fn gdt(entry: Entry) -> [u64; 4] {
    let code = match entry {
        Entry::Pvh(_) => GDT_CODE32,
        Entry::Long64(_) => GDT_CODE64,
    };
    [GDT_NULL, code, GDT_DATA, GDT_TSS]
}

/// A KVM segment from a GDT entry, as the CPU would load it.
fn segment(index: u16, entry: u64) -> kvm_segment {
    let flag = |bit: u32| ((entry >> bit) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let raw = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
            if flag(55) == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: flag(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: flag(54),
        s: flag(44),
        l: flag(53),
        g: flag(55),
        avl: flag(52),
        unusable: if flag(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the GDT to guest memory and sets up the segment and control
/// registers for `entry`.
pub fn setup_sregs(mem: &GuestMemory, vcpu: &VcpuFd, entry: Entry) -> Result<()> {
    let table = gdt(entry);
    for (i, e) in table.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(|e| Error::Boot(format!("writing the GDT: {e}")))?;
    }
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let data = segment(2, table[2]);
    sregs.cs = segment(1, table[1]);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3, table[3]);
    match entry {
        Entry::Pvh(_) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        Entry::Long64(_) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))
}

/// General registers at the entry point.
pub fn setup_regs(vcpu: &VcpuFd, entry: Entry) -> Result<()> {
    let regs = match entry {
        Entry::Pvh(rip) => kvm_regs {
            rip,
            rbx: PVH_INFO_ADDR,
            rflags: 2,
            ..Default::default()
        },
        Entry::Long64(rip) => kvm_regs {
            rip,
            rsi: ZERO_PAGE_ADDR,
            rsp: BOOT_STACK_ADDR,
            rbp: BOOT_STACK_ADDR,
            rflags: 2,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))
}

pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))
}

/// CPUID for vCPU `id` of `count`: the host's supported set with this vCPU's
/// APIC ID and topology, and the hypervisor bit.
pub fn setup_cpuid(vcpu: &VcpuFd, supported: &CpuId, id: u8, count: u8) -> Result<()> {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the logical count above is valid
                }
            }
            0xb => {
                e.edx = u32::from(id);
            }
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware leaves them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_NMI: u32 = 4;
    const MODE_EXTINT: u32 = 7;
    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    let mut set = |off: usize, mode: u32| {
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = lapic.regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    };
    set(APIC_LVT0, MODE_EXTINT);
    set(APIC_LVT1, MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_from_gdt_entries() {
        let cs = segment(1, GDT_CODE64);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.g, cs.type_, cs.present),
            (8, 1, 0, 1, 0xb, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(1, GDT_CODE32);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(2, GDT_DATA);
        assert_eq!((ds.type_, ds.s, ds.base), (3, 1, 0));
        let tr = segment(3, GDT_TSS);
        assert_eq!((tr.type_, tr.s, tr.limit), (0xb, 0, 0x67));
    }
}
