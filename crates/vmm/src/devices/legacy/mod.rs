//! The PC devices a microVM keeps: COM1 and the i8042's reset line.

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::{IrqTrigger, Serial, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
