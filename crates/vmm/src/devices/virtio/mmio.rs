//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the
//! register file the driver programs, the device status state machine, and
//! the hand-over of queues to the device at DRIVER_OK.

use std::sync::Arc;

use crate::devices::IrqLine;
use virtio_queue::{Queue, QueueT};

use super::{
    ActiveQueues, EventRegistrar, Interrupt, VirtioDevice, INTERRUPT_CONFIG, VIRTIO_F_VERSION_1,
};
use crate::bus::{BusAction, BusDevice};
use crate::GuestMemory;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "IRCL", shown by Linux as the vendor.
const VENDOR: u32 = 0x4c43_5249;

pub const REG_QUEUE_NOTIFY: u64 = 0x50;
const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    events: EventRegistrar,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
    /// Set when the device refused guest input; cleared by a reset.
    broken: bool,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: IrqLine,
        events: EventRegistrar,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            events,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
            broken: false,
        }
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue registers may only change before the device is live.
        if self.active {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The driver notified queue `index` (through the ioeventfd).
    pub fn notify(&mut self, index: usize) {
        if !self.active || self.broken || index >= self.queues.len() {
            return;
        }
        if let Err(e) = self.device.queue_notify(index) {
            self.fail(&e.to_string());
        }
    }

    /// A backend fd registered by the device is ready.
    pub fn handle_event(&mut self, fd: std::os::fd::RawFd, events: vmm_sys_util::epoll::EventSet) {
        if !self.active || self.broken {
            return;
        }
        if let Err(e) = self.device.handle_event(fd, events) {
            self.fail(&e.to_string());
        }
    }

    /// The device refused guest input: tell the driver it needs a reset
    /// (virtio 1.2, 2.1.2) and stop serving it.
    fn fail(&mut self, reason: &str) {
        tracing::warn!(
            device = self.device.device_type(),
            "virtio device error: {reason}"
        );
        self.broken = true;
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt.signal(INTERRUPT_CONFIG);
    }

    /// The VMM is exiting: the device removes what it created on the host.
    pub fn cleanup(&mut self) {
        self.device.cleanup();
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.broken = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.interrupt.ack(u32::MAX);
        for q in &mut self.queues {
            q.reset();
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (virtio 1.2, 3.1.1); anything else
        // is ignored.
        if value & self.status != self.status {
            return;
        }
        let new = value & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let ok = self.driver_features & !self.offered_features() == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
            self.device.ack_features(self.driver_features);
        }
        self.status = value;
        if new & STATUS_DRIVER_OK != 0 && self.status & STATUS_FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                self.fail(&format!(
                    "queue {i} lies outside guest memory or is misaligned"
                ));
                return;
            }
            // The device gets its own copy; the transport keeps the registers.
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(e) => {
                    self.fail(&format!("queue {i}: {e}"));
                    return;
                }
            }
        }
        let active = ActiveQueues {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            events: self.events.clone(),
        };
        match self.device.activate(active) {
            Ok(()) => self.active = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x44 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    // virtio-queue ignores sizes that are not a power of two
                    // or above the maximum; is_valid() then fails at DRIVER_OK.
                    q.set_size(v as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => self.notify(v as usize),
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self
                .selected_queue()
                .map_or((), |q| q.set_desc_table_address(Some(v), None)),
            0x84 => self
                .selected_queue()
                .map_or((), |q| q.set_desc_table_address(None, Some(v))),
            0x90 => self
                .selected_queue()
                .map_or((), |q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self
                .selected_queue()
                .map_or((), |q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self
                .selected_queue()
                .map_or((), |q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self
                .selected_queue()
                .map_or((), |q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if offset >= CONFIG_SPACE {
            if self.status & STATUS_DRIVER_OK == 0 || !self.active {
                self.device.write_config(offset - CONFIG_SPACE, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
        BusAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{rng::Rng, TYPE_RNG};
    use super::*;

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport(mem: &GuestMemory) -> MmioTransport {
        let irq = IrqLine::new(5, None);
        MmioTransport::new(
            Box::new(Rng::new()),
            mem.clone(),
            irq,
            EventRegistrar::detached(),
        )
    }

    fn negotiate(t: &mut MmioTransport) {
        wr(t, 0x70, STATUS_ACKNOWLEDGE);
        wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, 0x24, 1);
        wr(t, 0x20, 1); // VIRTIO_F_VERSION_1
        wr(
            t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    #[test]
    fn identity_registers() {
        let mem = memory();
        let mut t = transport(&mem);
        assert_eq!(rd(&mut t, 0), MAGIC);
        assert_eq!(rd(&mut t, 4), 2);
        assert_eq!(rd(&mut t, 8), TYPE_RNG);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1, "VERSION_1 is offered");
        let mut short = [0xaau8; 2];
        t.read(0, &mut short);
        assert_eq!(short, [0, 0], "registers are 32-bit only");
    }

    #[test]
    fn features_ok_needs_version_1_and_only_offered_bits() {
        let mem = memory();
        let mut t = transport(&mem);
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(
            rd(&mut t, 0x70) & STATUS_FEATURES_OK,
            0,
            "legacy driver refused"
        );
        wr(&mut t, 0, 0);
        wr(&mut t, 0x70, 0);
        negotiate(&mut t);
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, 1 << 20);
        assert_ne!(rd(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        assert_eq!(
            t.driver_features, VIRTIO_F_VERSION_1,
            "features are frozen after FEATURES_OK"
        );
    }

    #[test]
    fn queue_outside_memory_marks_needs_reset() {
        let mem = memory();
        let mut t = transport(&mem);
        negotiate(&mut t);
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, 16);
        wr(&mut t, 0x80, 0xffff_0000); // descriptor table far beyond RAM
        wr(&mut t, 0x90, 0x2000);
        wr(&mut t, 0xa0, 0x3000);
        wr(&mut t, 0x44, 1);
        wr(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(t.is_broken());
        assert_ne!(rd(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
        assert_ne!(rd(&mut t, 0x60) & INTERRUPT_CONFIG, 0);
        wr(&mut t, 0x70, 0);
        assert!(!t.is_broken(), "a reset clears the error");
        assert_eq!(rd(&mut t, 0x70), 0);
    }

    #[test]
    fn live_queue_registers_are_frozen_and_notify_of_unknown_queue_is_ignored() {
        let mem = memory();
        let mut t = transport(&mem);
        let tq = TestQueue::new(&mem, 0x1000);
        negotiate(&mut t);
        wr(&mut t, 0x38, 16);
        wr(&mut t, 0x80, tq.mock.desc_table_addr().0 as u32);
        wr(&mut t, 0x90, tq.mock.avail_addr().0 as u32);
        wr(&mut t, 0xa0, tq.mock.used_addr().0 as u32);
        wr(&mut t, 0x44, 1);
        wr(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(t.active && !t.is_broken());
        wr(&mut t, 0x80, 0xdead_0000);
        assert_eq!(t.queues[0].desc_table(), tq.mock.desc_table_addr().0);
        wr(&mut t, REG_QUEUE_NOTIFY, 7);
        assert!(!t.is_broken());
    }
}
