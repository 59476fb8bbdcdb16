//! The PC devices a microVM keeps: COM1, the i8042's reset line, and the
//! IOAPIC.

mod i8042;
pub mod ioapic;
mod serial;

pub use i8042::I8042;
pub use ioapic::{Ioapic, KvmMsiSink, MsiSink};
pub use serial::{IrqTrigger, Serial, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
