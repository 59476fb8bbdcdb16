//! x86_64 specifics: the guest-physical layout, the boot structures the
//! guest reads (PVH start info or the Linux zero page, E820 map, MP table),
//! and the initial vCPU state.

pub mod boot;
pub mod cpu;
pub mod cpuid_cache;
pub mod layout;
pub mod mptable;
