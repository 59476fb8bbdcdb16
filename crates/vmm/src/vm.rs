//! Building a VM from a `VmConfig` and running it: KVM setup, guest memory,
//! boot, devices, vCPU threads, and the VMM thread's event loop (queue
//! notifications, device backends, the control API, vCPU exits).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, CpuId, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use serde_json::{json, Value};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::api::{error_response, ApiServer, Request};
use crate::arch::{boot, cpu, cpuid_cache, layout};
use crate::bus::Bus;
use crate::config::{SerialOutput, VmConfig};
use crate::devices::legacy::{
    Ioapic, KvmMsiSink, Serial, I8042, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use crate::devices::virtio::fs::FsWorker;
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::{self, EventRegistrar, VirtioDevice, QUEUE_TOKEN};
use crate::devices::IrqLine;
use crate::error::{Error, Result};
use crate::jail::Jail;
pub use crate::vcpu::ExitReason;
use crate::vcpu::{ExitNotifier, RunState, Vcpu, VcpuControl};
use crate::GuestMemory;

const TOKEN_EXIT: u64 = 1;
const TOKEN_API_LISTENER: u64 = 2;
/// API connections: this bit plus the fd.
const TOKEN_API_CONN: u64 = 1 << 31;

struct VirtioSlot {
    kind: &'static str,
    base: u64,
    gsi: u32,
    transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
}

pub struct Vmm {
    config: VmConfig,
    // Kept for the VM's lifetime: KVM's memory slots point into `_mem`'s
    // mappings, which must outlive the VM fd.
    _kvm: Kvm,
    _vm: Arc<VmFd>,
    _mem: GuestMemory,
    vcpus: Vec<Vcpu>,
    vcpu_filter: Option<seccompiler::BpfProgram>,
    vmm_filter: Option<seccompiler::BpfProgram>,
    fs_filter: Option<seccompiler::BpfProgram>,
    /// Entered in `run`, before any thread starts.
    jail: Option<Jail>,
    /// The virtio-fs devices' threads, started in `run`.
    fs_workers: Vec<FsWorker>,
    control: Arc<VcpuControl>,
    exit: Arc<ExitNotifier>,
    epoll: Arc<Epoll>,
    api: Option<ApiServer>,
    virtio: Vec<VirtioSlot>,
    started: Instant,
}

fn open_kvm() -> Result<Kvm> {
    // Kvm::new() opens with O_CLOEXEC; map the errno to a message that says
    // what is missing.
    Kvm::new().map_err(|e| Error::KvmOpen(std::io::Error::from_raw_os_error(e.errno())))
}

fn serial_output(cfg: &SerialOutput) -> Result<Box<dyn Write + Send>> {
    Ok(match cfg {
        // A raw dup of fd 1: each byte leaves when the guest writes it,
        // without Rust's line buffering of Stdout.
        SerialOutput::Stdout => {
            // SAFETY: dup of fd 1 has no memory-safety preconditions.
            let fd = unsafe { libc::dup(1) };
            if fd < 0 {
                return Err(Error::io("dup stdout for the serial port")(
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            Box::new(unsafe { std::fs::File::from_raw_fd(fd) })
        }
        SerialOutput::None => Box::new(std::io::sink()),
        SerialOutput::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(Error::io(format!("serial output {}", p.display())))?,
        ),
    })
}

/// Maps guest RAM: anonymous private mappings with MAP_NORESERVE, so
/// nothing is allocated until the guest touches a page.
fn map_memory(memory_mib: u32) -> Result<GuestMemory> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(u64::from(memory_mib) << 20)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Memory(e.to_string()))
}

/// Gives KVM the guest RAM, one memory slot per region.
fn register_memory(vm: &VmFd, mem: &GuestMemory) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`; `Vmm` keeps
        // `mem` as long as the VM fd (field order drops the VM first).
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// What `Vmm::new` builds once KVM has the guest's memory and irqchip.
struct Machine {
    epoll: Arc<Epoll>,
    vcpus: Vec<Vcpu>,
    control: Arc<VcpuControl>,
    exit: Arc<ExitNotifier>,
    virtio: Vec<VirtioSlot>,
}

/// Starts vCPU threads on the CPU of the thread that creates them. A new
/// thread is otherwise woken on an idle CPU, which on a virtualized host is
/// an IPI through the outer hypervisor: about half a millisecond before the
/// guest's first instruction on the CI host. The creating thread narrows its
/// CPU affinity to its current CPU (threads inherit it), and every thread
/// widens it back to the original set as soon as it runs.
#[derive(Clone)]
struct SameCpuStart(Option<libc::cpu_set_t>);

impl SameCpuStart {
    fn begin() -> Self {
        // SAFETY: cpu_set_t is plain data; the calls get and set this
        // thread's own affinity with correctly sized sets.
        unsafe {
            let mut original: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut original)
                != 0
            {
                return SameCpuStart(None);
            }
            let cpu = libc::sched_getcpu();
            if cpu < 0 {
                return SameCpuStart(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                return SameCpuStart(None);
            }
            SameCpuStart(Some(original))
        }
    }

    /// Restores the calling thread's original affinity.
    fn end(&self) {
        if let Some(original) = &self.0 {
            // SAFETY: sets this thread's affinity from a set read earlier.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), original) };
        }
    }
}

impl Vmm {
    /// Builds the VM. Nothing on the host is left behind if this fails.
    /// `filters` are the seccomp programs for the vCPU, VMM and virtio-fs
    /// threads (None: no seccomp). With `config.jail`, this must be called
    /// before the process starts any thread (jail.rs).
    pub fn new(mut config: VmConfig, filters: Option<crate::seccomp::Filters>) -> Result<Self> {
        let t0 = Instant::now();
        tracing::debug!("setup starts at {} us", crate::since_start_us());
        config.validate()?;
        // The jail's mount namespace comes first: every thread started
        // later is in it, and the fs devices open their /proc fd in it.
        let jail = match config.jail {
            true => Some(crate::jail::prepare(&mut config)?),
            false => None,
        };
        // Devices that open host files go first, so bad paths are reported
        // before KVM is touched.
        let device_error = |device: &'static str| {
            move |reason| Error::Device {
                device: device.into(),
                reason,
            }
        };
        let mut devices: Vec<(&'static str, Box<dyn VirtioDevice>)> = Vec::new();
        for b in &config.block {
            let dev = virtio::block::Block::open(&b.path, b.read_only, b.serial.as_deref())
                .map_err(device_error("block"))?;
            devices.push(("block", Box::new(dev)));
        }
        for n in &config.net {
            let dev = virtio::net::Net::new(n).map_err(device_error("net"))?;
            devices.push(("net", Box::new(dev)));
        }
        let mut fs_workers = Vec::new();
        for f in &config.fs {
            let (dev, worker) = virtio::fs::Fs::new(f).map_err(|reason| Error::Device {
                device: format!("fs {}", f.tag),
                reason,
            })?;
            devices.push(("fs", Box::new(dev)));
            fs_workers.push(worker);
        }
        if let Some(v) = &config.vsock {
            let dev = virtio::vsock::Vsock::new(v).map_err(device_error("vsock"))?;
            devices.push(("vsock", Box::new(dev)));
        }
        if config.rng {
            devices.push(("rng", Box::new(virtio::rng::Rng::new())));
        }

        let kvm = open_kvm()?;
        let vm = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
        let t_vm = t0.elapsed();
        // Guest memory first. Every change to KVM's memory slots or I/O bus
        // waits for an SRCU grace period in the host kernel, and only the
        // first one on a fresh VM is quick: 0.15 ms, against 4-8 ms when it
        // follows KVM_CREATE_IRQCHIP's bus registrations on the CI host.
        // (The irqchip's registrations free the old buses with call_srcu; a
        // VM destroyed before that grace period ends waits for it, see
        // docs/vmm.md.)
        let mem = map_memory(config.memory_mib)?;
        register_memory(&vm, &mem)?;
        let t_mem = t0.elapsed();
        vm.set_tss_address(0xfffb_d000)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        // KVM's split irqchip: the local APICs in the kernel, the IOAPIC in
        // the VMM (devices/legacy/ioapic.rs says why), no 8259 PIC and no
        // PIT. Linux on KVM keeps time with kvm-clock and the local APIC
        // timer (QEMU's microvm runs it with pic=off,pit=off too).
        let mut split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        split.args[0] = layout::IOAPIC_PINS as u64;
        vm.enable_cap(&split)
            .map_err(Error::kvm("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
        let t_irq = t0.elapsed();
        let supported = cpuid_cache::supported_cpuid(&kvm, config.cpuid_cache.dir().as_deref())?;
        let Machine {
            epoll,
            vcpus,
            control,
            exit,
            virtio,
        } = Self::build_machine(&config, &supported, &vm, &mem, devices)?;
        // The API socket is the last thing created on the host.
        let api = match &config.api_socket {
            Some(path) => {
                let api = ApiServer::bind(path)?;
                epoll
                    .ctl(
                        ControlOperation::Add,
                        api.listener_fd(),
                        EpollEvent::new(EventSet::IN, TOKEN_API_LISTENER),
                    )
                    .map_err(Error::io("epoll_ctl"))?;
                Some(api)
            }
            None => None,
        };

        tracing::debug!(
            "setup: devices and KVM_CREATE_VM {} us, guest memory {} us, irqchip {} us, boot and vCPUs {} us, all {} us",
            t_vm.as_micros(),
            (t_mem - t_vm).as_micros(),
            (t_irq - t_mem).as_micros(),
            (t0.elapsed() - t_irq).as_micros(),
            t0.elapsed().as_micros()
        );
        Ok(Vmm {
            config,
            _kvm: kvm,
            _vm: vm,
            _mem: mem,
            vcpus,
            vcpu_filter: filters.as_ref().map(|f| f.vcpu.clone()),
            fs_filter: filters.as_ref().map(|f| f.fs.clone()),
            vmm_filter: filters.map(|f| f.vmm),
            jail,
            fs_workers,
            control,
            exit,
            epoll,
            api,
            virtio,
            started: t0,
        })
    }

    /// Devices, boot structures and vCPUs.
    fn build_machine(
        config: &VmConfig,
        supported: &CpuId,
        vm: &Arc<VmFd>,
        mem: &GuestMemory,
        devices: Vec<(&'static str, Box<dyn VirtioDevice>)>,
    ) -> Result<Machine> {
        let epoll = Arc::new(Epoll::new().map_err(Error::io("epoll_create"))?);

        // Legacy devices.
        let mut mmio = Bus::new();
        let ioapic = Arc::new(Mutex::new(Ioapic::new(
            config.vcpus,
            Arc::new(KvmMsiSink(vm.clone())),
        )));
        mmio.insert(layout::IOAPIC_ADDR, layout::IOAPIC_SIZE, ioapic.clone())
            .map_err(Error::Boot)?;
        let mut pio = Bus::new();
        let serial_irq = IrqLine::new(layout::SERIAL_GSI, Some(ioapic.clone()));
        let serial = Serial::new(serial_irq, serial_output(&config.serial)?);
        pio.insert(
            SERIAL_PORT_BASE,
            SERIAL_PORT_LEN,
            Arc::new(Mutex::new(serial)),
        )
        .map_err(Error::Boot)?;
        pio.insert(0x60, 5, Arc::new(Mutex::new(I8042)))
            .map_err(Error::Boot)?;

        // virtio-mmio devices, announced on the command line.
        let mut cmdline = config.cmdline.clone();
        let mut virtio = Vec::new();
        for (index, (kind, dev)) in devices.into_iter().enumerate() {
            let (base, gsi) = layout::virtio_window(index);
            let irq = IrqLine::new(gsi, Some(ioapic.clone()));
            let registrar = EventRegistrar::new(epoll.clone(), index);
            let transport = MmioTransport::new(dev, mem.clone(), irq, registrar.clone());
            let mut queue_evts = Vec::new();
            for q in 0..transport.num_queues() {
                let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
                vm.register_ioevent(
                    &evt,
                    &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(Error::kvm("KVM_IOEVENTFD"))?;
                registrar
                    .add_queue(evt.as_raw_fd(), q as u32)
                    .map_err(Error::io("epoll_ctl"))?;
                queue_evts.push(evt);
            }
            let transport = Arc::new(Mutex::new(transport));
            mmio.insert(base, layout::VIRTIO_MMIO_SIZE, transport.clone())
                .map_err(Error::Boot)?;
            cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{gsi}"));
            virtio.push(VirtioSlot {
                kind,
                base,
                gsi,
                transport,
                queue_evts,
            });
        }
        if cmdline.len() > crate::config::MAX_CMDLINE_LEN {
            return Err(Error::Config(format!(
                "cmdline with the virtio device parameters is {} bytes, at most {} fit",
                cmdline.len(),
                crate::config::MAX_CMDLINE_LEN
            )));
        }

        let entry = boot::setup(
            mem,
            &config.kernel,
            config.initrd.as_deref(),
            &cmdline,
            config.vcpus,
        )?;

        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);
        let control = Arc::new(VcpuControl::default());
        let exit = Arc::new(ExitNotifier::new().map_err(Error::io("eventfd"))?);
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
            cpu::setup_cpuid(&fd, supported, id, config.vcpus)?;
            cpu::setup_lint(&fd)?;
            if id == 0 {
                cpu::setup_fpu(&fd)?;
                cpu::setup_sregs(mem, &fd, entry)?;
                cpu::setup_regs(&fd, entry)?;
            }
            vcpus.push(Vcpu {
                id,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                control: control.clone(),
                exit: exit.clone(),
            });
        }
        epoll
            .ctl(
                ControlOperation::Add,
                exit.evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_EXIT),
            )
            .map_err(Error::io("epoll_ctl"))?;

        Ok(Machine {
            epoll,
            vcpus,
            control,
            exit,
            virtio,
        })
    }

    /// Starts the vCPUs and serves events until the VM stops.
    pub fn run(mut self) -> Result<ExitReason> {
        self.started = Instant::now();
        crate::vcpu::install_kick_handler()
            .map_err(Error::io("installing the vCPU kick signal handler"))?;
        // Before any thread starts: the jail's pivot_root, then the fs
        // threads with their cwd at the shares' roots in it.
        let workers = std::mem::take(&mut self.fs_workers);
        let mut roots: Vec<Option<std::os::fd::OwnedFd>> = match self.jail.take() {
            Some(jail) => {
                let shares: Vec<_> = workers.iter().map(|w| (w.share(), w.read_only())).collect();
                jail.enter(&shares)?.into_iter().map(Some).collect()
            }
            None => Vec::new(),
        };
        roots.resize_with(workers.len(), || None);
        for (worker, root) in workers.into_iter().zip(roots) {
            let tag = worker.tag().to_string();
            worker
                .start(self.fs_filter.clone(), root)
                .map_err(|reason| Error::Device {
                    device: format!("fs {tag}"),
                    reason,
                })?;
        }
        let vcpu_filter = self.vcpu_filter.take().map(Arc::new);
        let affinity = SameCpuStart::begin();
        for vcpu in std::mem::take(&mut self.vcpus) {
            let filter = vcpu_filter.clone();
            let affinity = affinity.clone();
            std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id))
                .spawn(move || {
                    affinity.end();
                    vcpu.run(filter.as_deref())
                })
                .map_err(Error::io("spawning a vCPU thread"))?;
        }
        affinity.end();
        if let Some(f) = self.vmm_filter.take() {
            seccompiler::apply_filter(&f).map_err(|e| Error::Seccomp(e.to_string()))?;
            if std::env::var_os(crate::seccomp::SELFTEST_ENV).is_some() {
                crate::seccomp::selftest_forbidden_syscall();
            }
        }
        let reason = self.event_loop();
        // Park every vCPU for good before guest memory and devices go away
        // (when `self` is dropped on return; Drop removes the sockets).
        self.control.pause(self.config.vcpus as usize);
        Ok(reason)
    }

    fn event_loop(&mut self) -> ExitReason {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return ExitReason::VcpuError {
                        vcpu: 0,
                        reason: format!("epoll_wait: {e}"),
                    }
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                match token {
                    TOKEN_EXIT => {
                        if let Some(reason) = self.exit.take() {
                            return reason;
                        }
                    }
                    TOKEN_API_LISTENER => self.api_accept(),
                    t if t >> 32 == 0 && t & TOKEN_API_CONN != 0 => {
                        if let Some(reason) = self.api_serve((t & !TOKEN_API_CONN) as RawFd) {
                            return reason;
                        }
                    }
                    t => self.device_event(t, ev.event_set()),
                }
            }
        }
    }

    fn device_event(&mut self, token: u64, events: EventSet) {
        let Some(slot) = ((token >> 32) as usize)
            .checked_sub(1)
            .and_then(|i| self.virtio.get(i))
        else {
            return;
        };
        let low = token as u32;
        let mut transport = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        if low & QUEUE_TOKEN != 0 {
            let q = (low & !QUEUE_TOKEN) as usize;
            if let Some(evt) = slot.queue_evts.get(q) {
                let _ = evt.read();
            }
            transport.notify(q);
        } else {
            transport.handle_event(low as RawFd, events);
        }
    }

    fn api_accept(&mut self) {
        let Some(api) = self.api.as_mut() else { return };
        for fd in api.accept() {
            let ev = EpollEvent::new(
                EventSet::IN | EventSet::READ_HANG_UP,
                TOKEN_API_CONN | fd as u64,
            );
            if self.epoll.ctl(ControlOperation::Add, fd, ev).is_err() {
                api.close(fd);
            }
        }
    }

    /// Serves a connection's requests; returns an exit reason on shutdown.
    fn api_serve(&mut self, fd: RawFd) -> Option<ExitReason> {
        let (requests, done) = self.api.as_mut()?.read(fd);
        let mut exit = None;
        for req in requests {
            let response = match req {
                Err(msg) => error_response(&msg),
                Ok(Request::Pause) => {
                    self.control.pause(self.config.vcpus as usize);
                    json!({"ok": true, "state": "paused"})
                }
                Ok(Request::Resume) => {
                    self.control.resume();
                    json!({"ok": true, "state": "running"})
                }
                Ok(Request::Status) => self.status(),
                Ok(Request::Shutdown) => {
                    exit = Some(ExitReason::Shutdown);
                    json!({"ok": true, "state": "shutting-down"})
                }
            };
            self.api.as_mut()?.reply(fd, &response);
        }
        if done {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.api.as_mut()?.close(fd);
        }
        exit
    }

    fn status(&self) -> Value {
        let state = match self.control.state() {
            RunState::Running => "running",
            RunState::Paused => "paused",
        };
        let devices: Vec<Value> = self
            .virtio
            .iter()
            .map(|s| {
                let t = s.transport.lock().unwrap_or_else(|e| e.into_inner());
                json!({
                    "type": s.kind,
                    "mmio_base": format!("{:#x}", s.base),
                    "gsi": s.gsi,
                    "driver_status": t.status(),
                    "needs_reset": t.is_broken(),
                })
            })
            .collect();
        json!({
            "ok": true,
            "state": state,
            "vcpus": self.config.vcpus,
            "memory_mib": self.config.memory_mib,
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "kernel": self.config.kernel,
            "devices": devices,
        })
    }

    fn cleanup(&mut self) {
        self.api = None;
        for slot in &self.virtio {
            slot.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cleanup();
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.cleanup();
    }
}
