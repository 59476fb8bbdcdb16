//! The part of the i8042 keyboard controller a VM needs: the CPU reset line.
//! Linux (`reboot=k`) and simple guests write 0xFE to port 0x64 to reset.
//! Reads return "no data, input buffer empty", so drivers probing for a
//! keyboard find none and move on. (vm-superio's i8042 asks for an event
//! object and also emulates keyboard interrupts we do not want; this is the
//! two registers that matter.)

use crate::bus::{BusAction, BusDevice};

pub const I8042_DATA: u64 = 0x60;
pub const I8042_COMMAND: u64 = 0x64;
const CMD_RESET_CPU: u8 = 0xfe;

#[derive(Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// The bus maps ports 0x60..=0x64; offset 4 is the command port.
    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if offset == I8042_COMMAND - I8042_DATA && data.first() == Some(&CMD_RESET_CPU) {
            BusAction::Reset
        } else {
            BusAction::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_only_on_fe_to_the_command_port() {
        let mut k = I8042;
        assert_eq!(k.write(4, &[0xfe]), BusAction::Reset);
        assert_eq!(k.write(4, &[0xd1]), BusAction::None);
        assert_eq!(k.write(0, &[0xfe]), BusAction::None);
        let mut b = [0xaa];
        k.read(4, &mut b);
        assert_eq!(b, [0]);
    }
}
