//! Devices: legacy PC devices on the port-I/O bus, virtio devices on MMIO.

pub mod legacy;
pub mod virtio;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// A device's interrupt line: an eventfd that KVM injects as GSI `gsi`
/// (an irqfd). It is handed to KVM only once the guest's driver shows it
/// wants interrupts (a virtio driver sets DRIVER_OK, a serial driver
/// enables UART interrupts): each irqfd costs the host an SRCU grace
/// period when the VM is torn down, which a guest that polls never needs.
/// Until then, triggers accumulate in the eventfd and are delivered at
/// registration.
pub struct IrqLine {
    evt: EventFd,
    gsi: u32,
    vm: Option<Arc<VmFd>>,
    registered: AtomicBool,
}

impl IrqLine {
    /// `vm` is None for device unit tests, where nothing is injected.
    pub fn new(gsi: u32, vm: Option<Arc<VmFd>>) -> std::io::Result<Self> {
        Ok(IrqLine {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            gsi,
            vm,
            registered: AtomicBool::new(false),
        })
    }

    /// Registers the irqfd with KVM, once.
    pub fn enable(&self) -> Result<(), String> {
        if self.registered.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        match &self.vm {
            Some(vm) => vm
                .register_irqfd(&self.evt, self.gsi)
                .map_err(|e| format!("KVM_IRQFD for GSI {}: {e}", self.gsi)),
            None => Ok(()),
        }
    }

    pub fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }

    pub fn is_enabled(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
    }
}
