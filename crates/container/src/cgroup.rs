//! A cgroup by path, outside libcontainer's containers: the cgroup a pod's
//! containers share (the CRI's `cgroup_parent`, cgroupfs driver), which
//! ironcelld puts a pod's own process in and reports statistics of, and the
//! cgroup of a wasm container's runner process ([`Cgroup`]).

use std::path::{Path, PathBuf};

use libcgroups::common::{AnyCgroupManager, CgroupManager, ControllerOpt, FreezerState};
use libcgroups::stats::Stats;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::error::ContainerError;

fn manager(path: &Path) -> Result<AnyCgroupManager, ContainerError> {
    open(path, false, "")
}

fn open(path: &Path, systemd: bool, name: &str) -> Result<AnyCgroupManager, ContainerError> {
    if !systemd && (!path.is_absolute() || path.components().any(|c| c.as_os_str() == "..")) {
        return Err(ContainerError::Engine {
            what: format!("cgroup {}", path.display()),
            msg: "must be an absolute cgroupfs path without '..'".into(),
        });
    }
    libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
        cgroup_path: PathBuf::from(path),
        systemd_cgroup: systemd,
        container_name: name.to_string(),
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

/// The directory of the cgroupfs path `path` for a controller: under the
/// unified hierarchy on cgroup v2 (with whether it is), under the
/// controller's own hierarchy on v1.
fn controller_dir(path: &Path, v1: libcgroups::v1::ControllerType) -> Option<(PathBuf, bool)> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    match libcgroups::common::get_cgroup_setup().ok()? {
        libcgroups::common::CgroupSetup::Unified => Some((
            Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT).join(rel),
            true,
        )),
        _ => libcgroups::v1::util::get_subsystem_mount_point(&v1)
            .ok()
            .map(|m| (m.join(rel), false)),
    }
}

/// The memory cgroup directory of the cgroupfs path `path`: where OOM kills
/// are counted (`memory.oom_control` on v1, `memory.events` on v2).
pub fn memory_dir(path: &Path) -> Option<PathBuf> {
    controller_dir(path, libcgroups::v1::ControllerType::Memory).map(|(d, _)| d)
}

/// Whether the cgroupfs cgroup at `path` is frozen (v1 `freezer.state`,
/// v2 `cgroup.freeze`). Reads the one file: no manager is built (on cgroup
/// v1 that parses the mount table once per controller).
pub fn is_frozen(path: &Path) -> bool {
    match controller_dir(path, libcgroups::v1::ControllerType::Freezer) {
        Some((d, true)) => {
            std::fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
        }
        Some((d, false)) => {
            std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
        }
        None => false,
    }
}

/// libcgroups' options for setting `resources` on a live cgroup.
pub(crate) fn controller_opt(resources: &LinuxResources) -> ControllerOpt<'_> {
    ControllerOpt {
        resources,
        disable_oom_killer: resources
            .memory()
            .as_ref()
            .and_then(|m| m.disable_oom_killer())
            .unwrap_or(false),
        oom_score_adj: None,
        freezer_state: None,
    }
}

/// A container's own cgroup, handled by path (cgroupfs) or by systemd unit
/// (`slice:prefix:name`), on cgroup v1 or v2.
pub struct Cgroup {
    path: PathBuf,
    manager: AnyCgroupManager,
}

impl Cgroup {
    /// The cgroup at `path` for container `id`.
    pub fn open(path: &Path, systemd: bool, id: &str) -> Result<Cgroup, ContainerError> {
        Ok(Cgroup {
            path: path.to_path_buf(),
            manager: open(path, systemd, id)?,
        })
    }

    fn err(&self, what: &str, e: impl std::error::Error + 'static) -> ContainerError {
        ContainerError::Engine {
            what: format!("cannot {what} cgroup {}", self.path.display()),
            msg: crate::error::chain(&e),
        }
    }

    /// Moves `pid` in, creating the cgroup where it is missing.
    pub fn add(&self, pid: i32) -> Result<(), ContainerError> {
        self.manager
            .add_task(Pid::from_raw(pid))
            .map_err(|e| self.err("join", e))
    }

    /// Sets the limits of `resources`.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), ContainerError> {
        self.manager
            .apply(&controller_opt(resources))
            .map_err(|e| self.err("set the limits of", e))
    }

    /// Every process in it, sorted.
    pub fn pids(&self) -> Result<Vec<i32>, ContainerError> {
        let mut pids: Vec<i32> = self
            .manager
            .get_all_pids()
            .map_err(|e| self.err("list the processes of", e))?
            .into_iter()
            .map(Pid::as_raw)
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    pub fn stats(&self) -> Result<Stats, ContainerError> {
        self.manager
            .stats()
            .map_err(|e| self.err("read statistics of", e))
    }

    /// Freezes (true) or thaws (false) every process in it.
    pub fn freeze(&self, frozen: bool) -> Result<(), ContainerError> {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.manager
            .freeze(state)
            .map_err(|e| self.err("freeze", e))
    }

    /// Removes it (its processes must be gone).
    pub fn remove(&self) -> Result<(), ContainerError> {
        self.manager.remove().map_err(|e| self.err("remove", e))
    }
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
