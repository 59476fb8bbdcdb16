//! virtio devices on the virtio-mmio transport (version 2). The transport
//! (`mmio`) owns each device's registers and queues; a device sees queues
//! only once the driver set DRIVER_OK, and every descriptor chain it takes
//! from a queue is validated here first (`checked_chain`).

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::IrqLine;
use crate::GuestMemory;

pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub const INTERRUPT_VRING: u32 = 1;
pub const INTERRUPT_CONFIG: u32 = 2;

/// What a device reports when the guest hands it something it must refuse
/// outright. The transport then marks the device DEVICE_NEEDS_RESET and
/// stops serving it until the driver resets it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("descriptor chain {0}")]
    BadChain(&'static str),
    #[error("queue {0} is not usable: {1}")]
    BadQueue(usize, String),
    #[error("guest memory access failed: {0}")]
    Memory(String),
    #[error("backend: {0}")]
    Backend(String),
}

/// The device's interrupt: the ISR status bits and how the driver is told,
/// by the interrupt line (MMIO transport) or by the eventfd the vhost-user
/// frontend gave for each queue.
pub struct Interrupt {
    status: AtomicU32,
    delivery: Delivery,
}

enum Delivery {
    Line(IrqLine),
    Calls(Arc<CallFds>),
}

/// The "call" eventfds a vhost-user frontend set, one per queue (none
/// until it sets one; it may replace them at any time).
#[derive(Default)]
pub struct CallFds(std::sync::Mutex<Vec<Option<std::fs::File>>>);

impl CallFds {
    pub fn set(&self, queue: usize, fd: Option<std::fs::File>) {
        let mut calls = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if calls.len() <= queue {
            calls.resize_with(queue + 1, || None);
        }
        calls[queue] = fd;
    }

    fn call(&self, queue: usize) {
        let calls = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(fd)) = calls.get(queue) {
            // An eventfd counter only overflows after 2^64 - 2 calls; a
            // full one (EAGAIN) has an interrupt pending anyway.
            let _ = std::io::Write::write(&mut &*fd, &1u64.to_ne_bytes());
        }
    }
}

impl Interrupt {
    pub fn new(line: IrqLine) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            delivery: Delivery::Line(line),
        }
    }

    /// An interrupt delivered through a vhost-user frontend's eventfds.
    pub fn calls(calls: Arc<CallFds>) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            delivery: Delivery::Calls(calls),
        }
    }

    /// Tells the driver of a change of `kind` (`INTERRUPT_CONFIG`: the
    /// device's configuration or status; a vhost-user frontend learns of
    /// that from the device's own channel, which these devices do not use,
    /// so it is only recorded).
    pub fn signal(&self, kind: u32) {
        self.status.fetch_or(kind, Ordering::SeqCst);
        if let Delivery::Line(line) = &self.delivery {
            line.trigger();
        }
    }

    /// Tells the driver that queue `queue` has used buffers.
    pub fn signal_queue(&self, queue: usize) {
        match &self.delivery {
            Delivery::Line(_) => self.signal(INTERRUPT_VRING),
            Delivery::Calls(calls) => calls.call(queue),
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Lets a device watch its backend's file descriptors (tap, sockets) on the
/// VMM's event loop. Events come back through `VirtioDevice::handle_event`.
#[derive(Clone)]
pub struct EventRegistrar {
    epoll: Arc<Epoll>,
    device: usize,
}

/// Event-loop tokens: the high 32 bits name the device (+1), the low 32 bits
/// the fd; queue notifications use `QUEUE_TOKEN | index`.
pub const QUEUE_TOKEN: u32 = 0x8000_0000;

impl EventRegistrar {
    pub fn new(epoll: Arc<Epoll>, device: usize) -> Self {
        EventRegistrar { epoll, device }
    }

    pub fn token(&self, low: u32) -> u64 {
        ((self.device as u64 + 1) << 32) | u64::from(low)
    }

    pub fn add(&self, fd: RawFd, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, self.token(fd as u32)),
        )
    }

    /// Watches `fd`, the ioeventfd of queue `queue`'s notifications.
    pub fn add_queue(&self, fd: RawFd, queue: u32) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, self.token(QUEUE_TOKEN | queue)),
        )
    }

    pub fn modify(&self, fd: RawFd, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, self.token(fd as u32)),
        )
    }

    pub fn remove(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// A registrar that goes nowhere, for unit tests of devices.
    pub fn detached() -> Self {
        EventRegistrar {
            epoll: Arc::new(Epoll::new().expect("epoll_create")),
            device: 0,
        }
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActiveQueues {
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
    pub events: EventRegistrar,
}

impl ActiveQueues {
    /// Returns a used chain to the driver and raises the interrupt if the
    /// driver wants one.
    pub fn complete(&mut self, queue: usize, head: u16, len: u32) -> Result<(), DeviceError> {
        let q = &mut self.queues[queue];
        q.add_used(&self.mem, head, len)
            .map_err(|e| DeviceError::BadQueue(queue, e.to_string()))?;
        if q.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_queue(queue);
        }
        Ok(())
    }

    /// Takes the next available chain, validated; `None` when the driver has
    /// not made any available.
    /// `mem` is a clone of `self.mem`, so the chain does not borrow `self`.
    pub fn pop<'m>(
        &mut self,
        mem: &'m GuestMemory,
        queue: usize,
    ) -> Result<Option<DescriptorChain<&'m GuestMemory>>, DeviceError> {
        let q = &mut self.queues[queue];
        let mut iter = q
            .iter(mem)
            .map_err(|e| DeviceError::BadQueue(queue, e.to_string()))?;
        match iter.next() {
            Some(chain) => checked_chain(mem, chain).map(Some),
            None => Ok(None),
        }
    }

    /// Puts the last popped chain back, for a device that cannot use it yet
    /// (no data to fill an rx buffer with).
    pub fn undo_pop(&mut self, queue: usize) {
        self.queues[queue].go_to_previous_position();
    }
}

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// The driver's accepted features, before activation.
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, queues: ActiveQueues) -> Result<(), DeviceError>;
    /// The driver made buffers available on queue `index`.
    fn queue_notify(&mut self, index: usize) -> Result<(), DeviceError>;
    /// A backend fd the device registered became ready.
    fn handle_event(&mut self, _fd: RawFd, _events: EventSet) -> Result<(), DeviceError> {
        Ok(())
    }
    /// The driver reset the device: drop the queues and the backend state
    /// that belongs to them.
    fn reset(&mut self);
    /// Shutting down: remove sockets and other things left on the host.
    fn cleanup(&mut self) {}
}

/// Reads `data.len()` bytes of a config struct at `offset`; bytes past its
/// end read as zero (the spec leaves them undefined; zero is harmless).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off < config.len() {
        let n = data.len().min(config.len() - off);
        data[..n].copy_from_slice(&config[off..off + n]);
    }
}

/// Validates a chain before a device touches it: every descriptor lies in
/// guest memory, the chain ends (no loop, not longer than the queue, no
/// broken `next` index or indirect table), and device-writable descriptors
/// come after the readable ones (virtio 1.2, 2.7.4.2). virtio-queue's
/// iterator stops silently on such chains; here they are errors.
pub fn checked_chain<'a>(
    mem: &'a GuestMemory,
    chain: DescriptorChain<&'a GuestMemory>,
) -> Result<DescriptorChain<&'a GuestMemory>, DeviceError> {
    let mut last = None;
    let mut seen_writable = false;
    let mut count = 0usize;
    for desc in chain.clone() {
        count += 1;
        let addr = desc.addr();
        let len = desc.len() as usize;
        if len > 0 && (addr.checked_add(len as u64).is_none() || !mem.check_range(addr, len)) {
            return Err(DeviceError::BadChain("points outside guest memory"));
        }
        if desc.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return Err(DeviceError::BadChain(
                "has a readable descriptor after a writable one",
            ));
        }
        last = Some(desc);
    }
    match last {
        None => Err(DeviceError::BadChain("is empty or its head is invalid")),
        Some(d) if d.has_next() => Err(DeviceError::BadChain(
            "does not end (a loop, longer than the queue, or a bad next index)",
        )),
        Some(_) if count == 0 => unreachable!(),
        Some(_) => Ok(chain),
    }
}

/// Total bytes of the chain's readable and writable descriptors.
pub fn chain_lengths(chain: &DescriptorChain<&GuestMemory>) -> (u64, u64) {
    chain.clone().fold((0, 0), |(r, w), d| {
        if d.is_write_only() {
            (r, w + u64::from(d.len()))
        } else {
            (r + u64::from(d.len()), w)
        }
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! Building queues and chains in real guest memory, as a driver would,
    //! including malformed ones.
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    pub const QUEUE_SIZE: u16 = 16;

    pub fn memory() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    /// One descriptor: (address, length, device-writable, next index or None).
    pub type Desc = (u64, u32, bool, Option<u16>);

    pub struct TestQueue<'a> {
        pub mock: MockSplitQueue<'a, GuestMemory>,
        next_avail: u16,
    }

    impl<'a> TestQueue<'a> {
        /// A queue whose rings live at `base`.
        pub fn new(mem: &'a GuestMemory, base: u64) -> Self {
            TestQueue {
                mock: MockSplitQueue::create(mem, GuestAddress(base), QUEUE_SIZE),
                next_avail: 0,
            }
        }

        pub fn queue(&self) -> Queue {
            self.mock.create_queue().unwrap()
        }

        /// Writes descriptors at table index `first..` and makes the first
        /// available. `next` fields are taken as given, so loops and
        /// out-of-range links can be built.
        pub fn add(&mut self, first: u16, descs: &[Desc]) {
            for (i, (addr, len, write, next)) in descs.iter().enumerate() {
                let mut flags = 0u16;
                if *write {
                    flags |= VRING_DESC_F_WRITE as u16;
                }
                if next.is_some() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let d = SplitDescriptor::new(*addr, *len, flags, next.unwrap_or(0));
                self.mock
                    .desc_table()
                    .store(first + i as u16, RawDescriptor::from(d))
                    .unwrap();
            }
            let avail = self.mock.avail();
            avail
                .ring()
                .ref_at(usize::from(self.next_avail % QUEUE_SIZE))
                .unwrap()
                .store(first);
            self.next_avail = self.next_avail.wrapping_add(1);
            avail.idx().store(self.next_avail);
        }

        /// A well-formed chain of consecutive descriptors starting at `first`.
        pub fn add_chain(&mut self, first: u16, bufs: &[(u64, u32, bool)]) {
            let descs: Vec<Desc> = bufs
                .iter()
                .enumerate()
                .map(|(i, (a, l, w))| {
                    (
                        *a,
                        *l,
                        *w,
                        (i + 1 < bufs.len()).then_some(first + i as u16 + 1),
                    )
                })
                .collect();
            self.add(first, &descs);
        }

        pub fn used_idx(&self) -> u16 {
            self.mock.used().idx().load()
        }

        /// (head id, written length) of used element `i`.
        pub fn used(&self, i: u16) -> (u32, u32) {
            let e = self
                .mock
                .used()
                .ring()
                .ref_at(usize::from(i % QUEUE_SIZE))
                .unwrap()
                .load();
            (e.id(), e.len())
        }
    }

    pub fn active(mem: &GuestMemory, queues: Vec<Queue>) -> ActiveQueues {
        let line = IrqLine::new(5, None);
        ActiveQueues {
            mem: mem.clone(),
            queues,
            interrupt: Arc::new(Interrupt::new(line)),
            events: EventRegistrar::detached(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn pop_err(descs: &[Desc]) -> DeviceError {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0x1000);
        tq.add(0, descs);
        let mut a = active(&mem, vec![tq.queue()]);
        a.pop(&mem, 0).unwrap_err()
    }

    #[test]
    fn hostile_chains_are_refused() {
        let out = 0x40_0000 - 0x10;
        assert_eq!(
            pop_err(&[(out, 0x100, false, None)]),
            DeviceError::BadChain("points outside guest memory")
        );
        assert_eq!(
            pop_err(&[(u64::MAX - 4, 0x100, false, None)]),
            DeviceError::BadChain("points outside guest memory")
        );
        let looping = pop_err(&[(0x10000, 16, false, Some(1)), (0x10010, 16, false, Some(0))]);
        assert!(matches!(looping, DeviceError::BadChain(m) if m.contains("does not end")));
        let bad_next = pop_err(&[(0x10000, 16, false, Some(QUEUE_SIZE + 3))]);
        assert!(matches!(bad_next, DeviceError::BadChain(m) if m.contains("does not end")));
        let order = pop_err(&[(0x10000, 16, true, Some(1)), (0x10010, 16, false, None)]);
        assert!(matches!(order, DeviceError::BadChain(m) if m.contains("after a writable")));
    }

    #[test]
    fn bad_head_index_is_refused() {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0x1000);
        tq.add(0, &[(0x10000, 16, false, None)]);
        // Point the avail ring at a descriptor index beyond the table.
        tq.mock
            .avail()
            .ring()
            .ref_at(0)
            .unwrap()
            .store(QUEUE_SIZE + 1);
        let mut a = active(&mem, vec![tq.queue()]);
        assert!(matches!(
            a.pop(&mem, 0).unwrap_err(),
            DeviceError::BadChain(_)
        ));
    }

    #[test]
    fn avail_index_running_ahead_is_refused() {
        let mem = memory();
        let tq = TestQueue::new(&mem, 0x1000);
        tq.mock.avail().idx().store(QUEUE_SIZE + 5);
        let mut a = active(&mem, vec![tq.queue()]);
        assert!(matches!(
            a.pop(&mem, 0).unwrap_err(),
            DeviceError::BadQueue(0, _)
        ));
    }

    #[test]
    fn good_chain_passes() {
        let mem = memory();
        let mut tq = TestQueue::new(&mem, 0x1000);
        tq.add_chain(0, &[(0x10000, 16, false), (0x10010, 16, true)]);
        let mut a = active(&mem, vec![tq.queue()]);
        let c = a.pop(&mem, 0).unwrap().unwrap();
        assert_eq!(chain_lengths(&c), (16, 16));
        assert!(a.pop(&mem, 0).unwrap().is_none());
    }
}
