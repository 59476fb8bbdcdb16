//! COM1: vm-superio's 16550 UART on ports 0x3f8..0x3ff, its interrupt an
//! irqfd on GSI 4, its output a raw file descriptor (stdout or a file) so
//! each byte leaves the VMM when the guest writes it.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusAction, BusDevice};

pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;

/// vm-superio raises interrupts through a `Trigger`; ours writes an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct Serial(vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>);

impl Serial {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial(vm_superio::Serial::new(EventFdTrigger(irq), out))
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.0.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if let Err(e) = self.0.write(offset as u8, data[0]) {
            // The output went away (closed pipe, full disk): the guest keeps
            // running, as it would with a disconnected serial cable.
            tracing::debug!("serial write: {e:?}");
        }
        BusAction::None
    }
}
