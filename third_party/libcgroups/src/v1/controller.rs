use std::fs;
use std::path::Path;

use nix::unistd::Pid;

use crate::common::{self, CGROUP_PROCS, ControllerOpt, WrapIoResult, WrappedIoError};

pub(super) trait Controller {
    type Error: From<WrappedIoError>;
    type Resource;

    /// Adds a new task specified by its pid to the cgroup
    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;
        move_task(pid, cgroup_path)?;
        Ok(())
    }

    /// Applies resource restrictions to the cgroup
    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error>;

    /// Checks if the controller needs to handle this request
    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource>;
}

/// ironcell patch: moves `pid` into the v1 cgroup at `cgroup_path`.
///
/// Writing a pid to `cgroup.procs` makes the kernel take the global
/// threadgroup lock for writing, which waits for an RCU grace period: about
/// 10 ms on an idle host, on every container start. A single-threaded
/// process that moves itself can instead write "0" to `tasks`: migrating
/// one thread that is `current` needs no threadgroup stability, and the
/// kernel (since Linux 6.0) skips that lock. For a single-threaded process
/// moving its only thread is moving the process, so the result is the same.
/// Any other case takes the usual path.
pub(super) fn move_task(pid: Pid, cgroup_path: &Path) -> Result<(), WrappedIoError> {
    if pid == Pid::this() && single_threaded() {
        common::write_cgroup_file_str(cgroup_path.join("tasks"), "0")
    } else {
        common::write_cgroup_file(cgroup_path.join(CGROUP_PROCS), pid)
    }
}

fn single_threaded() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|n| n.trim() == "1")
        })
        .unwrap_or(false)
}
