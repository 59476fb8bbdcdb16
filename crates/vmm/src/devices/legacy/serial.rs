//! COM1: vm-superio's 16550 UART on ports 0x3f8..0x3ff, its interrupt
//! IOAPIC pin 4, its output a raw file descriptor (stdout or a file) so
//! each byte leaves the VMM when the guest writes it.

use std::io::Write;

use vm_superio::serial::NoEvents;

use crate::bus::{BusAction, BusDevice};
use crate::devices::IrqLine;

pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;

/// vm-superio raises interrupts through a `Trigger`; ours is an IOAPIC pin.
pub struct IrqTrigger(pub IrqLine);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger();
        Ok(())
    }
}

pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            // The output went away (closed pipe, full disk): the guest keeps
            // running, as it would with a disconnected serial cable.
            tracing::debug!("serial write: {e:?}");
        }
        BusAction::None
    }
}
