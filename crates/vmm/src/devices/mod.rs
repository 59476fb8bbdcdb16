//! Devices: legacy PC devices on the port-I/O bus, virtio devices on MMIO.

pub mod legacy;
pub mod virtio;

use std::sync::{Arc, Mutex};

use legacy::Ioapic;

/// A device's interrupt line: pin `pin` of the IOAPIC. A trigger is an edge.
pub struct IrqLine {
    pin: usize,
    ioapic: Option<Arc<Mutex<Ioapic>>>,
}

impl IrqLine {
    /// `ioapic` is None for device unit tests, where nothing is delivered.
    pub fn new(pin: u32, ioapic: Option<Arc<Mutex<Ioapic>>>) -> Self {
        IrqLine {
            pin: pin as usize,
            ioapic,
        }
    }

    pub fn trigger(&self) {
        if let Some(io) = &self.ioapic {
            io.lock()
                .unwrap_or_else(|e| e.into_inner())
                .service_irq(self.pin);
        }
    }
}
