//! Address → device dispatch for port I/O and MMIO exits. Written by hand:
//! rust-vmm's vm-device is unreleased for our vm-memory version, and a
//! sorted list of ranges is all a handful of devices needs.

use std::sync::{Arc, Mutex};

/// What the VM must do after a device access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusAction {
    None,
    /// The guest asked for a reset (i8042 0xFE): the VMM stops, exit 0.
    Reset,
}

pub trait BusDevice: Send {
    /// `offset` is relative to the device's base; `data` is 1, 2, 4 or 8 bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction;
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Default)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at [base, base+len). Overlaps are a programming error
    /// of the VMM's layout and are refused.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), String> {
        let end = base.checked_add(len).ok_or("range wraps")?;
        if len == 0 || self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(format!("bus range {base:#x}+{len:#x} overlaps or is empty"));
        }
        self.ranges.push((base, len, device));
        self.ranges.sort_by_key(|(b, _, _)| *b);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let i = self
            .ranges
            .partition_point(|(b, _, _)| *b <= addr)
            .checked_sub(1)?;
        let (base, len, dev) = &self.ranges[i];
        let off = addr - base;
        (off + size as u64 <= *len).then_some((off, dev))
    }

    /// Reads from the device at `addr`; unclaimed addresses read as all
    /// ones, like an empty ISA bus. Returns false if nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; writes to unclaimed addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> BusAction {
        match self.find(addr, data.len()) {
            Some((off, dev)) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(off, data),
            None => BusAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _: u64, data: &[u8]) -> BusAction {
            self.0 = data[0];
            BusAction::None
        }
    }

    #[test]
    fn dispatch_and_bounds() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Reg(1)))).unwrap();
        bus.insert(0x20, 4, Arc::new(Mutex::new(Reg(9)))).unwrap();
        assert!(bus.insert(0x12, 4, Arc::new(Mutex::new(Reg(0)))).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b, [3]);
        let mut w = [0u8; 4];
        assert!(
            !bus.read(0x22, &mut w),
            "a read crossing the end is unclaimed"
        );
        assert_eq!(w, [0xff; 4]);
        assert!(!bus.read(0x14, &mut b));
        bus.write(0x20, &[5]);
        bus.read(0x20, &mut b);
        assert_eq!(b, [5]);
    }
}
