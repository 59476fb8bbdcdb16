//! Devices: legacy PC devices on the port-I/O bus, virtio devices on MMIO.

pub mod legacy;
pub mod virtio;
