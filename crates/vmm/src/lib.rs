//! ironcell's virtual machine monitor: one KVM microVM per process, built on
//! the rust-vmm crates (kvm-ioctls, vm-memory, linux-loader, vm-superio,
//! virtio-queue). See `docs/vmm.md` for the guest's view of the machine.

pub mod api;
pub mod arch;
pub mod bus;
pub mod config;
pub mod devices;
pub mod error;
pub mod jail;
pub mod seccomp;
pub mod vcpu;
pub mod vhost_user;
pub mod vm;

pub use config::VmConfig;
pub use error::{Error, Result};
pub use vm::{ExitReason, Vmm};

/// Microseconds since the process started (the first call, from `main`):
/// the startup phases logged at debug level use it.
pub fn since_start_us() -> u128 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros()
}

/// The guest memory type used everywhere: anonymous mappings, populated by
/// the host kernel page by page as the guest touches them.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
