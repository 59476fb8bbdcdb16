//! What several ironcell crates need and none of them owns: writing a file
//! so that readers never see half of it ([`atomic_file`]), sockets only
//! their owner reaches ([`owner_only`]), the exit statuses of processes
//! that a signal ended ([`exit_status`]), the memory upkeep of the
//! long-running processes ([`process_memory`], [`text_pages`]), and what
//! tells one process from another ([`proc_stat`]).
//!
//! This crate is the bottom of the workspace: it depends on no other
//! ironcell crate, only on the standard library, libc and tracing.

pub mod atomic_file;
pub mod exit_status;
pub mod proc_stat;
pub mod text_pages;
// glibc's allocator controls (malloc_trim, mallopt): the daemon and the
// keeper are built against glibc; the vmm (musl) does not use them.
#[cfg(target_env = "gnu")]
pub mod process_memory;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes `path` (a socket a daemon listens on) reachable by its owner
/// (root) only.
pub fn owner_only(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot restrict {}: {e}", path.display())))
}
