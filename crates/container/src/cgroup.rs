//! A cgroup by path, outside any container: the cgroup a pod's containers
//! share (the CRI's `cgroup_parent`, cgroupfs driver), which ironcelld puts
//! a pod's own process in and reports statistics of.

use std::path::{Path, PathBuf};

use libcgroups::common::{AnyCgroupManager, CgroupManager};
use libcgroups::stats::Stats;
use nix::unistd::Pid;

use crate::error::ContainerError;

fn manager(path: &Path) -> Result<AnyCgroupManager, ContainerError> {
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(ContainerError::Engine {
            what: format!("cgroup {}", path.display()),
            msg: "must be an absolute cgroupfs path without '..'".into(),
        });
    }
    libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
        cgroup_path: PathBuf::from(path),
        systemd_cgroup: false,
        container_name: String::new(),
    })
    .map_err(|e| ContainerError::Engine {
        what: format!("cannot open cgroup {}", path.display()),
        msg: crate::error::chain(&e),
    })
}

/// Moves `pid` into the cgroup at `path` (relative to each hierarchy's
/// root, as in a spec's `cgroupsPath`), creating it where it is missing.
pub fn join(path: &Path, pid: i32) -> Result<(), ContainerError> {
    manager(path)?
        .add_task(Pid::from_raw(pid))
        .map_err(|e| ContainerError::Engine {
            what: format!("cannot move process {pid} into cgroup {}", path.display()),
            msg: crate::error::chain(&e),
        })
}

/// Resource usage of the cgroup at `path` and everything below it.
pub fn stats(path: &Path) -> Result<Stats, ContainerError> {
    manager(path)?.stats().map_err(|e| ContainerError::Engine {
        what: format!("cannot read statistics of cgroup {}", path.display()),
        msg: crate::error::chain(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_or_escaping_paths_are_refused() {
        for p in ["kubepods/pod1", "/kubepods/../../etc", ""] {
            let e = stats(Path::new(p)).unwrap_err().to_string();
            assert!(e.contains("absolute cgroupfs path"), "{p}: {e}");
        }
    }
}
