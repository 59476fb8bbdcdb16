//! One device served to a vhost-user frontend: the frontend's requests
//! (features, guest memory, rings, config) applied to a [`VirtioDevice`],
//! the same device the MMIO transport serves to a guest of this VMM.
//!
//! Hand-written over `vhost`'s request handler rather than with
//! `vhost-user-backend`: that crate's backends own their queues behind its
//! own vring type, while these devices take theirs whole at activation
//! (`ActiveQueues`), as from the MMIO transport.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, Error as VhostError, GpuBackend, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestRegionMmap};

use crate::devices::virtio::{
    ActiveQueues, CallFds, EventRegistrar, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::GuestMemory;

type Result<T> = std::result::Result<T, VhostError>;

/// The most memory regions a frontend may give (QEMU gives one per RAM
/// block: a microvm has one or two).
const MAX_REGIONS: usize = 8;

/// The largest ring virtio allows (virtio 1.2, 2.7).
const MAX_RING_SIZE: u32 = 32768;

/// One ring as the frontend set it up. Addresses are guest-physical.
#[derive(Default)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    addresses_set: bool,
    next_avail: u16,
    kick: Option<File>,
    enabled: bool,
}

/// A frontend's mapping of one guest memory region: where it sits in the
/// frontend's address space, for the ring addresses it sends.
struct FrontendRegion {
    user_addr: u64,
    size: u64,
    guest_addr: u64,
}

pub struct DeviceBackend {
    device: Box<dyn VirtioDevice>,
    events: EventRegistrar,
    /// The queues the frontend drives: the first `rings.len()` of the
    /// device's (vsock's event queue stays with QEMU); the rest are given
    /// to the device unready.
    rings: Vec<Ring>,
    calls: Arc<CallFds>,
    /// Whether the frontend reads the device's configuration from here
    /// (QEMU's vhost-user-vsock does; its vhost-user-fs has its own).
    config_space: bool,
    acked_features: u64,
    protocol_features: u64,
    mem: Option<GuestMemory>,
    regions: Vec<FrontendRegion>,
    active: bool,
    /// Set after the device refused the guest's input: it is not served
    /// until the frontend sets its rings up again.
    broken: bool,
}

impl DeviceBackend {
    /// Serves `device`, whose first `rings` queues the frontend drives.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        rings: usize,
        config_space: bool,
        events: EventRegistrar,
    ) -> Self {
        let rings = rings.min(device.queue_max_sizes().len());
        DeviceBackend {
            device,
            events,
            rings: (0..rings).map(|_| Ring::default()).collect(),
            calls: Arc::new(CallFds::default()),
            config_space,
            acked_features: 0,
            protocol_features: 0,
            mem: None,
            regions: Vec::new(),
            active: false,
            broken: false,
        }
    }

    fn offered_features(&self) -> u64 {
        self.device.features()
            | VIRTIO_F_VERSION_1
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn ring(&mut self, index: u32) -> Result<&mut Ring> {
        let rings = self.rings.len();
        self.rings.get_mut(index as usize).ok_or_else(|| {
            tracing::warn!("the frontend named ring {index}; the device has {rings}");
            VhostError::InvalidParam
        })
    }

    /// The guest-physical address of frontend virtual address `va`.
    fn guest_addr(&self, va: u64) -> Result<u64> {
        self.regions
            .iter()
            .find(|r| va >= r.user_addr && va - r.user_addr < r.size)
            .map(|r| r.guest_addr + (va - r.user_addr))
            .ok_or_else(|| {
                tracing::warn!("ring address {va:#x} is in no memory region the frontend gave");
                VhostError::InvalidParam
            })
    }

    /// Whether the device runs (every ring it drives is set up).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The frontend made buffers available on queue `index` (its kick fd
    /// was readable).
    pub fn kick(&mut self, index: usize) {
        if let Some(Some(k)) = self.rings.get(index).map(|r| r.kick.as_ref()) {
            let mut b = [0u8; 8];
            let _ = std::io::Read::read(&mut &*k, &mut b);
        }
        if self.active && !self.broken {
            if let Err(e) = self.device.queue_notify(index) {
                self.fail(&e.to_string());
            }
        }
    }

    /// A backend fd the device registered is ready.
    pub fn handle_event(&mut self, fd: i32, events: vmm_sys_util::epoll::EventSet) {
        if self.active && !self.broken {
            if let Err(e) = self.device.handle_event(fd, events) {
                self.fail(&e.to_string());
            }
        }
    }

    fn fail(&mut self, reason: &str) {
        tracing::warn!(
            device = self.device.device_type(),
            "virtio device error: {reason}"
        );
        self.broken = true;
    }

    /// Activates the device once every ring the frontend drives is set up,
    /// enabled and has its kick fd, over memory the frontend gave.
    fn maybe_activate(&mut self) -> Result<()> {
        if self.active {
            return Ok(());
        }
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        if !self
            .rings
            .iter()
            .all(|r| r.addresses_set && r.kick.is_some() && r.enabled)
        {
            return Ok(());
        }
        let mut queues = Vec::new();
        for (i, max) in self.device.queue_max_sizes().iter().enumerate() {
            let size = self.rings.get(i).map_or(*max, |r| r.size);
            let mut q = Queue::new(size).map_err(|_| VhostError::InvalidParam)?;
            if let Some(r) = self.rings.get(i) {
                q.set_desc_table_address(Some(r.desc as u32), Some((r.desc >> 32) as u32));
                q.set_avail_ring_address(Some(r.avail as u32), Some((r.avail >> 32) as u32));
                q.set_used_ring_address(Some(r.used as u32), Some((r.used >> 32) as u32));
                q.set_next_avail(r.next_avail);
                q.set_next_used(r.next_avail);
                q.set_ready(true);
                if !q.is_valid(&mem) {
                    tracing::warn!(queue = i, "vhost-user ring lies outside guest memory");
                    return Err(VhostError::InvalidParam);
                }
            }
            queues.push(q);
        }
        let active = ActiveQueues {
            mem,
            queues,
            interrupt: Arc::new(Interrupt::calls(self.calls.clone())),
            events: self.events.clone(),
        };
        self.device.activate(active).map_err(|e| {
            tracing::warn!("activating the device: {e}");
            VhostError::InvalidOperation("the device refused its queues")
        })?;
        self.active = true;
        self.broken = false;
        Ok(())
    }

    /// Stops the device. Every chain it took was returned by then, so
    /// each ring's used index is where it resumes.
    fn deactivate(&mut self) {
        if !self.active {
            return;
        }
        self.device.reset();
        self.active = false;
        let Some(mem) = &self.mem else { return };
        for r in &mut self.rings {
            if let Ok(used) = mem.read_obj::<u16>(GuestAddress(r.used + 2)) {
                r.next_avail = u16::from_le(used);
            }
        }
    }

    /// The frontend is gone: the device removes what it made on the host.
    pub fn cleanup(&mut self) {
        self.deactivate();
        self.device.cleanup();
    }
}

impl VhostUserBackendReqHandlerMut for DeviceBackend {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.reset_device()
    }

    fn reset_device(&mut self) -> Result<()> {
        self.deactivate();
        for (i, r) in self.rings.iter_mut().enumerate() {
            if let Some(k) = r.kick.take() {
                self.events.remove(k.as_raw_fd());
            }
            *r = Ring::default();
            self.calls.set(i, None);
        }
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !self.offered_features() != 0 {
            return Err(VhostError::InvalidParam);
        }
        self.acked_features = features;
        self.device
            .ack_features(features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
        // Without protocol features rings are enabled from the start
        // (vhost-user spec, "Ring states").
        let enabled = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0;
        for r in &mut self.rings {
            r.enabled = enabled;
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() || ctx.len() > MAX_REGIONS {
            return Err(VhostError::InvalidParam);
        }
        let mut mapped = Vec::new();
        let mut regions = Vec::new();
        for (r, file) in ctx.iter().zip(files) {
            let size = usize::try_from(r.memory_size).map_err(|_| VhostError::InvalidParam)?;
            // MAP_SHARED of the frontend's memory fd at its offset.
            let mapping = MmapRegion::from_file(FileOffset::new(file, r.mmap_offset), size)
                .map_err(|_| VhostError::InvalidParam)?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_phys_addr))
                .ok_or(VhostError::InvalidParam)?;
            mapped.push(region);
            regions.push(FrontendRegion {
                user_addr: r.user_addr,
                size: r.memory_size,
                guest_addr: r.guest_phys_addr,
            });
        }
        // Overlapping or wrapping regions are refused here.
        let mem = GuestMemory::from_regions(mapped).map_err(|_| VhostError::InvalidParam)?;
        // A new table while the device runs (memory hotplug, which a
        // microvm has not): the device restarts on the new one.
        let was_active = self.active;
        self.deactivate();
        self.mem = Some(mem);
        self.regions = regions;
        if was_active {
            self.maybe_activate()?;
        }
        Ok(None)
    }

    /// The frontend picks the ring sizes (QEMU's vhost-user-fs: 1024): any
    /// power of two virtio allows.
    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        if num == 0 || num > MAX_RING_SIZE || !num.is_power_of_two() {
            tracing::warn!("ring {index}: size {num} (at most {MAX_RING_SIZE}, a power of two)");
            return Err(VhostError::InvalidParam);
        }
        self.ring(index)?.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let (desc, used, avail) = (
            self.guest_addr(descriptor)?,
            self.guest_addr(used)?,
            self.guest_addr(available)?,
        );
        let r = self.ring(index)?;
        r.desc = desc;
        r.used = used;
        r.avail = avail;
        r.addresses_set = true;
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.ring(index)?.next_avail = u16::try_from(base).map_err(|_| VhostError::InvalidParam)?;
        Ok(())
    }

    /// Stops the ring (and with it the device) and returns where the
    /// frontend resumes: every chain the device took was returned, so the
    /// used index is the next available one.
    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        self.ring(index)?;
        self.deactivate();
        let r = &mut self.rings[index as usize];
        let next = r.next_avail;
        if let Some(k) = r.kick.take() {
            self.events.remove(k.as_raw_fd());
        }
        r.enabled = false;
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let events = self.events.clone();
        let r = self.ring(u32::from(index))?;
        if let Some(old) = r.kick.take() {
            events.remove(old.as_raw_fd());
        }
        // No fd (polling mode) is not supported: the device runs on kicks.
        let fd = fd.ok_or(VhostError::InvalidParam)?;
        events
            .add_queue(fd.as_raw_fd(), u32::from(index))
            .map_err(VhostError::ReqHandlerError)?;
        r.kick = Some(fd);
        self.maybe_activate()
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.ring(u32::from(index))?;
        self.calls.set(usize::from(index), fd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> Result<()> {
        self.ring(u32::from(index))?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        let mut features = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        if self.config_space {
            features |= VhostUserProtocolFeatures::CONFIG;
        }
        Ok(features)
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.rings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        self.ring(index)?.enabled = enable;
        if enable {
            self.maybe_activate()
        } else {
            self.deactivate();
            Ok(())
        }
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        // The handler bounds size by the message's (at most 256 bytes).
        let mut buf = vec![0u8; size as usize];
        self.device.read_config(u64::from(offset), &mut buf);
        Ok(buf)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _flags: VhostUserConfigFlags) -> Result<()> {
        self.device.write_config(u64::from(offset), buf);
        Ok(())
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(VhostError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(VhostError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> Result<(VhostUserInflight, File)> {
        Err(VhostError::InvalidOperation("no inflight tracking"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> Result<()> {
        Err(VhostError::InvalidOperation("no inflight tracking"))
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_REGIONS as u64)
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        Err(VhostError::InvalidOperation(
            "memory slots are not negotiated",
        ))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> Result<()> {
        Err(VhostError::InvalidOperation(
            "memory slots are not negotiated",
        ))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(VhostError::InvalidOperation("no migration"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(VhostError::InvalidOperation("no migration"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(VhostError::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        Err(VhostError::InvalidOperation("no dirty logging"))
    }
}
