//! The IOAPIC, emulated in the VMM (KVM's split irqchip: the local APICs
//! stay in the kernel, the IOAPIC and the 8259 PIC do not). An 82093AA
//! register interface at 0xfec00000 with 24 pins; a device's interrupt on
//! pin N becomes the MSI its redirection entry describes, injected with
//! KVM_SIGNAL_MSI.
//!
//! Why not KVM's in-kernel IOAPIC and PIC: their emulation is host-kernel
//! code a guest can reach, and creating them registers devices on the VM's
//! I/O bus, which the host frees through an SRCU callback; destroying a VM
//! younger than one grace period then waits for it (13 ms on the CI host).
//! Cloud Hypervisor makes the same choice.
//!
//! Semantics: every pin is delivered as an edge (the MP table declares the
//! ISA pins edge-triggered, and our devices raise pulses); an edge that
//! arrives while its entry is masked is lost, as on the 82093AA and in
//! QEMU's and KVM's IOAPICs (Linux resends edges it masked itself). Remote
//! IRR is never set, so the EOI broadcast needs no handling.

use std::sync::Arc;

use crate::bus::{BusAction, BusDevice};

pub const IOAPIC_PINS: usize = 24;
const IOAPIC_VERSION: u32 = 0x11;
const REG_SELECT: u64 = 0x00;
const REG_WINDOW: u64 = 0x10;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIRECTION: u32 = 0x10;

const MASKED: u64 = 1 << 16;
/// Delivery status and remote IRR are read-only.
const READ_ONLY: u64 = (1 << 12) | (1 << 14);
const DELIVERY_EXTINT: u64 = 7;

/// Where the IOAPIC's messages go: KVM's in-kernel local APICs, or a test.
pub trait MsiSink: Send + Sync {
    fn inject(&self, address: u64, data: u32) -> Result<(), String>;
}

pub struct KvmMsiSink(pub Arc<kvm_ioctls::VmFd>);

impl MsiSink for KvmMsiSink {
    fn inject(&self, address: u64, data: u32) -> Result<(), String> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.0
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| format!("KVM_SIGNAL_MSI: {e}"))
    }
}

pub struct Ioapic {
    id: u32,
    select: u32,
    entries: [u64; IOAPIC_PINS],
    sink: Arc<dyn MsiSink>,
}

/// The MSI an entry describes: (address, data) as the local APICs take them.
fn message(entry: u64) -> (u64, u32) {
    let vector = (entry & 0xff) as u32;
    let delivery = ((entry >> 8) & 7) as u32;
    let logical = (entry >> 11) & 1;
    let dest = (entry >> 56) & 0xff;
    let address = 0xfee0_0000 | (dest << 12) | (logical << 2);
    (address, vector | (delivery << 8))
}

impl Ioapic {
    /// All entries start masked, as after a reset. `id` is the APIC ID the
    /// MP table gives the IOAPIC.
    pub fn new(id: u8, sink: Arc<dyn MsiSink>) -> Self {
        Ioapic {
            id: u32::from(id),
            select: 0,
            entries: [MASKED; IOAPIC_PINS],
            sink,
        }
    }

    /// A device raised an interrupt on `pin`.
    pub fn service_irq(&mut self, pin: usize) {
        if pin >= IOAPIC_PINS {
            return;
        }
        if self.entries[pin] & MASKED == 0 {
            self.deliver(pin);
        }
    }

    fn deliver(&mut self, pin: usize) {
        let entry = self.entries[pin];
        if (entry >> 8) & 7 == DELIVERY_EXTINT {
            // ExtINT means "ask the 8259", which does not exist here.
            tracing::debug!("ioapic: pin {pin} is ExtINT; dropped");
            return;
        }
        let (address, data) = message(entry);
        if let Err(e) = self.sink.inject(address, data) {
            tracing::warn!("ioapic: pin {pin}: {e}");
        }
    }

    fn read_register(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARBITRATION => (self.id & 0xf) << 24,
            REG_VERSION => IOAPIC_VERSION | ((IOAPIC_PINS as u32 - 1) << 16),
            r if (REG_REDIRECTION..REG_REDIRECTION + 2 * IOAPIC_PINS as u32).contains(&r) => {
                let entry = self.entries[((r - REG_REDIRECTION) / 2) as usize];
                if r % 2 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.select {
            REG_ID => self.id = (value >> 24) & 0xf,
            r if (REG_REDIRECTION..REG_REDIRECTION + 2 * IOAPIC_PINS as u32).contains(&r) => {
                let pin = ((r - REG_REDIRECTION) / 2) as usize;
                let old = self.entries[pin];
                self.entries[pin] = if r % 2 == 0 {
                    (old & !0xffff_ffff) | (u64::from(value) & !READ_ONLY) | (old & READ_ONLY)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
            }
            _ => {}
        }
    }
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            REG_SELECT => self.select,
            REG_WINDOW => self.read_register(),
            _ => 0,
        };
        data.fill(0);
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(bytes);
        match offset {
            REG_SELECT => self.select = value & 0xff,
            REG_WINDOW => self.write_register(value),
            _ => {}
        }
        BusAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, u32)>>);
    impl MsiSink for Recorder {
        fn inject(&self, address: u64, data: u32) -> Result<(), String> {
            self.0.lock().unwrap().push((address, data));
            Ok(())
        }
    }

    fn reg(io: &mut Ioapic, r: u32) -> u32 {
        io.write(REG_SELECT, &r.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(REG_WINDOW, &mut b);
        u32::from_le_bytes(b)
    }

    fn set(io: &mut Ioapic, r: u32, v: u32) {
        io.write(REG_SELECT, &r.to_le_bytes());
        io.write(REG_WINDOW, &v.to_le_bytes());
    }

    #[test]
    fn identity_and_version() {
        let rec = Arc::new(Recorder::default());
        let mut io = Ioapic::new(2, rec);
        assert_eq!(reg(&mut io, REG_ID), 2 << 24);
        assert_eq!(
            reg(&mut io, REG_VERSION),
            0x0017_0011,
            "24 pins, version 0x11"
        );
        assert_eq!(reg(&mut io, 0x10), MASKED as u32, "entries start masked");
        assert_eq!(reg(&mut io, 0x99), 0, "unknown registers read as zero");
    }

    #[test]
    fn unmasked_pin_becomes_its_msi() {
        let rec = Arc::new(Recorder::default());
        let mut io = Ioapic::new(1, rec.clone());
        set(&mut io, 0x10 + 2 * 5 + 1, 3 << 24); // destination APIC 3
        set(&mut io, 0x10 + 2 * 5, 0x30 | (1 << 12) | (1 << 14)); // vector 0x30; RO bits ignored
        assert_eq!(reg(&mut io, 0x10 + 2 * 5), 0x30);
        io.service_irq(5);
        assert_eq!(*rec.0.lock().unwrap(), vec![(0xfee0_3000, 0x30)]);
        // Logical destination, lowest priority.
        set(&mut io, 0x10 + 2 * 6, 0x41 | (1 << 8) | (1 << 11));
        io.service_irq(6);
        assert_eq!(rec.0.lock().unwrap()[1], (0xfee0_0004, 0x141));
        io.service_irq(99);
        assert_eq!(rec.0.lock().unwrap().len(), 2, "pins beyond 23 are ignored");
    }

    #[test]
    fn masked_edge_is_lost() {
        let rec = Arc::new(Recorder::default());
        let mut io = Ioapic::new(1, rec.clone());
        set(&mut io, 0x10 + 2 * 4, 0x24 | MASKED as u32);
        io.service_irq(4);
        assert!(rec.0.lock().unwrap().is_empty());
        set(&mut io, 0x10 + 2 * 4, 0x24);
        assert!(rec.0.lock().unwrap().is_empty(), "not delivered at unmask");
        io.service_irq(4);
        assert_eq!(*rec.0.lock().unwrap(), vec![(0xfee0_0000, 0x24)]);
    }

    #[test]
    fn extint_is_dropped() {
        let rec = Arc::new(Recorder::default());
        let mut io = Ioapic::new(1, rec.clone());
        set(&mut io, 0x10, 0x700);
        io.service_irq(0);
        assert!(rec.0.lock().unwrap().is_empty());
    }
}
