//! virtio-rng (device 4): one queue; every device-writable buffer the
//! driver offers is filled from the host's getrandom(2).

use std::io::Write;

use super::{ActiveQueues, DeviceError, VirtioDevice, TYPE_RNG};

const QUEUE_SIZE: u16 = 64;
/// Bytes handed out per request at most: a driver asking for gigabytes gets
/// a short answer, which the spec allows (the used length says how much).
const MAX_PER_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    active: Option<ActiveQueues>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }
}

fn getrandom(buf: &mut [u8]) -> Result<(), DeviceError> {
    let mut filled = 0;
    while filled < buf.len() {
        // The raw system call, not libc's getrandom(): in the static musl
        // build with LTO, std's weak reference to that symbol kept musl's
        // from being linked in, and the call jumped to address 0.
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getrandom,
                buf[filled..].as_mut_ptr(),
                buf.len() - filled,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(DeviceError::Backend(format!("getrandom: {e}")));
        }
        filled += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, queues: ActiveQueues) -> Result<(), DeviceError> {
        self.active = Some(queues);
        Ok(())
    }

    fn queue_notify(&mut self, _index: usize) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = a.mem.clone();
        while let Some(chain) = a.pop(&mem, 0)? {
            let head = chain.head_index();
            let mut writer = chain
                .writer(&mem)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            let len = writer.available_bytes().min(MAX_PER_REQUEST);
            let mut bytes = vec![0u8; len];
            getrandom(&mut bytes)?;
            writer
                .write_all(&bytes)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            a.complete(0, head, len as u32)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers() {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0x1000);
        tq.add_chain(0, &[(0x10000, 32, true), (0x10100, 32, true)]);
        let mut rng = Rng::new();
        rng.activate(active(&mem, vec![tq.queue()])).unwrap();
        rng.queue_notify(0).unwrap();
        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used(0), (0, 64));
        let mut out = [0u8; 32];
        mem.read_slice(&mut out, GuestAddress(0x10100)).unwrap();
        assert_ne!(out, [0u8; 32]);
    }

    #[test]
    fn read_only_buffer_gets_nothing_and_huge_request_is_capped() {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0x1000);
        tq.add_chain(0, &[(0x10000, 32, false)]);
        tq.add_chain(1, &[(0x20000, 0x30_0000, true)]);
        let mut rng = Rng::new();
        rng.activate(active(&mem, vec![tq.queue()])).unwrap();
        rng.queue_notify(0).unwrap();
        assert_eq!(tq.used(0), (0, 0));
        assert_eq!(tq.used(1), (1, MAX_PER_REQUEST as u32));
    }

    #[test]
    fn out_of_bounds_buffer_is_a_device_error() {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0x1000);
        tq.add_chain(0, &[(0x3f_fff0, 0x100, true)]);
        let mut rng = Rng::new();
        rng.activate(active(&mem, vec![tq.queue()])).unwrap();
        assert!(matches!(rng.queue_notify(0), Err(DeviceError::BadChain(_))));
        assert_eq!(tq.used_idx(), 0, "nothing was returned to the driver");
    }
}
