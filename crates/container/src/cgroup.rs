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

/// A cgroupfs path must be absolute (each hierarchy's root is `/`) and stay
/// inside the hierarchy.
fn check_cgroupfs_path(path: &Path) -> Result<(), ContainerError> {
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(ContainerError::Engine {
            what: format!("cgroup {}", path.display()),
            msg: "must be an absolute cgroupfs path without '..'".into(),
        });
    }
    Ok(())
}

fn open(path: &Path, systemd: bool, name: &str) -> Result<AnyCgroupManager, ContainerError> {
    if !systemd {
        check_cgroupfs_path(path)?;
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

/// Whether the cgroupfs cgroup at `path` exists: its directory in the
/// hierarchy libcgroups lists processes from (v1 `devices`, or the unified
/// hierarchy).
pub fn exists(path: &Path) -> bool {
    controller_dir(path, libcgroups::v1::ControllerType::Devices).is_some_and(|(d, _)| d.is_dir())
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

/// The limits an update applies, as runc's `update` applies them: the
/// device rules are left alone (runc's `SkipDevices`: an update cannot
/// change them, and replaying a spec's rules would drop what was allowed
/// since), zero and empty values mean "unchanged" (runc's JSON shape has no
/// other way to leave a field out: a pids limit of 0, empty cpuset lists),
/// and the memory cgroup's current OOM-killer setting (`memory.oom_control`
/// in `memory_dir`, cgroup v1) is kept unless the update names one: the
/// memory controller rewrites it whenever memory limits change.
pub fn for_update(resources: &LinuxResources, memory_dir: Option<&Path>) -> LinuxResources {
    let mut r = resources.clone();
    r.set_devices(None);
    if r.pids().as_ref().is_some_and(|p| p.limit() == 0) {
        r.set_pids(None);
    }
    if let Some(cpu) = r.cpu().as_ref() {
        let mut cpu = cpu.clone();
        if cpu.cpus().as_deref() == Some("") {
            cpu.set_cpus(None);
        }
        if cpu.mems().as_deref() == Some("") {
            cpu.set_mems(None);
        }
        r.set_cpu(Some(cpu));
    }
    if let Some(mem) = r.memory().as_ref() {
        if mem.disable_oom_killer().is_none() {
            let mut mem = *mem;
            let disabled = memory_dir
                .and_then(|d| std::fs::read_to_string(d.join("memory.oom_control")).ok())
                .is_some_and(|t| t.lines().any(|l| l.trim() == "oom_kill_disable 1"));
            mem.set_disable_oom_killer(Some(disabled));
            r.set_memory(Some(mem));
        }
    }
    r
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

    /// Applies an update's limits ([`for_update`]).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), ContainerError> {
        let memory = memory_dir(&self.path);
        self.apply(&for_update(resources, memory.as_deref()))
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

/// cgroup v1 without libcgroups' manager, for the start of a wasm
/// container's runner: one read of the mount table, the cgroup's directory
/// made in each hierarchy, and a **self-join**.
///
/// Why by hand: moving another process into a cgroup (writing its pid to
/// `cgroup.procs`, which is all libcgroups' `add_task` can do) takes the
/// kernel's global `cgroup_threadgroup_rwsem` for writing, which waits for
/// an RCU grace period: 5-20 ms on the CI host, the largest part of a wasm
/// container's start. A thread that writes `0` to a v1 hierarchy's `tasks`
/// file moves only itself and skips that lock (kernel/cgroup/cgroup.c,
/// `cgroup_procs_write_start`): 0.3 ms here. A single-threaded process that
/// does it for every hierarchy is wholly in the cgroup, and the threads it
/// starts later inherit it. Besides, libcgroups' v1 manager reads the mount
/// table and `/proc/self/cgroup` once per controller (24 reads).
///
/// Limits, freezing, statistics and process lists stay with libcgroups
/// ([`Cgroup`]), which finds the same directories.
pub mod v1 {
    use std::io::ErrorKind;
    use std::path::{Path, PathBuf};

    use crate::error::ContainerError;

    /// The controllers libcgroups' v1 manager handles (its `CONTROLLERS`,
    /// which it does not export); a hierarchy with none of them (a named
    /// one such as `name=systemd`) is left alone, as libcgroups does.
    const CONTROLLERS: &[&str] = &[
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "hugetlb",
        "memory",
        "pids",
        "perf_event",
        "blkio",
        "net_prio",
        "net_cls",
        "freezer",
    ];

    fn err(what: String, e: impl std::fmt::Display) -> ContainerError {
        ContainerError::Engine {
            what,
            msg: e.to_string(),
        }
    }

    /// A v1 hierarchy: its mount point and its controllers.
    pub type Hierarchy = (PathBuf, Vec<String>);

    /// The mount points of the v1 hierarchies with a controller libcgroups
    /// handles, in mount-table order; None on a cgroup v2 (unified) host.
    pub fn hierarchies() -> Result<Option<Vec<Hierarchy>>, ContainerError> {
        let root = Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT);
        match nix::sys::statfs::statfs(root) {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {
                return Ok(None)
            }
            Ok(_) => {}
            Err(e) => return Err(err(format!("cannot stat {}", root.display()), e)),
        }
        let table = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| err("cannot read /proc/self/mountinfo".into(), e))?;
        Ok(Some(parse_mountinfo(&table)))
    }

    /// The `cgroup` (v1) mounts of a mountinfo table: (mount point, its
    /// controllers), the first mount of each controller only.
    pub(crate) fn parse_mountinfo(table: &str) -> Vec<Hierarchy> {
        let mut seen: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for line in table.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut r = right.split(' ');
            if r.next() != Some("cgroup") {
                continue;
            }
            let super_opts = r.nth(1).unwrap_or("");
            let controllers: Vec<String> = super_opts
                .split(',')
                .filter(|o| CONTROLLERS.contains(o) && !seen.iter().any(|s| s == o))
                .map(str::to_string)
                .collect();
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            if controllers.is_empty() {
                continue;
            }
            seen.extend(controllers.iter().cloned());
            out.push((PathBuf::from(unescape(mount_point)), controllers));
        }
        out
    }

    /// mountinfo's octal escapes (`\040` for a space).
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 3 < b.len()
                && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `path` (a cgroupfs path, absolute, no `..`) under each hierarchy.
    pub fn dirs(hierarchies: &[Hierarchy], path: &Path) -> Vec<PathBuf> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        hierarchies.iter().map(|(m, _)| m.join(rel)).collect()
    }

    /// Makes the cgroup `path` in every hierarchy (a new cpuset cgroup gets
    /// its parent's CPUs and memory nodes, without which nothing can join
    /// it) and returns the `tasks` files the container's process writes `0`
    /// into to join it (the wasm runner does, first thing).
    pub fn prepare(hierarchies: &[Hierarchy], path: &Path) -> Result<Vec<PathBuf>, ContainerError> {
        super::check_cgroupfs_path(path)?;
        let rel = path.strip_prefix("/").unwrap_or(path);
        let mut tasks = Vec::new();
        for (mount, controllers) in hierarchies {
            let dir = mount.join(rel);
            std::fs::create_dir_all(&dir)
                .map_err(|e| err(format!("cannot create cgroup {}", dir.display()), e))?;
            if controllers.iter().any(|c| c == "cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    inherit(mount, rel, file)?;
                }
            }
            tasks.push(dir.join("tasks"));
        }
        Ok(tasks)
    }

    /// Copies `file` down from the nearest ancestor along `rel` into every
    /// cgroup where it is empty (as libcgroups' cpuset controller does).
    fn inherit(mount: &Path, rel: &Path, file: &str) -> Result<(), ContainerError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p.join(file))
                .map_err(|e| err(format!("cannot read {}", p.join(file).display()), e))
        };
        let mut cur = mount.to_path_buf();
        let mut value = read(&cur)?;
        for c in rel.components() {
            cur.push(c);
            let own = read(&cur)?;
            if own.trim().is_empty() {
                std::fs::write(cur.join(file), value.trim())
                    .map_err(|e| err(format!("cannot write {}", cur.join(file).display()), e))?;
            } else {
                value = own;
            }
        }
        Ok(())
    }

    /// Removes the cgroup `path` from every hierarchy, SIGKILLing what is
    /// still in it (as libcgroups' `remove`), retrying while the kernel
    /// still counts a process that just died.
    pub fn remove(hierarchies: &[Hierarchy], path: &Path) -> Result<(), ContainerError> {
        for dir in dirs(hierarchies, path) {
            for attempt in 0..50 {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && attempt < 49 => {
                        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                                let _ = nix::sys::signal::kill(
                                    nix::unistd::Pid::from_raw(pid),
                                    nix::sys::signal::Signal::SIGKILL,
                                );
                            }
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        return Err(err(format!("cannot remove cgroup {}", dir.display()), e))
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 27 0:28 / /mnt/memory\\040again rw,relatime - cgroup cgroup rw,memory
36 30 0:31 / /sys/fs/cgroup/my\\040pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn v1_hierarchies_from_the_mount_table() {
        let h = v1::parse_mountinfo(MOUNTINFO);
        let names: Vec<(&str, Vec<&str>)> = h
            .iter()
            .map(|(m, c)| (m.to_str().unwrap(), c.iter().map(|s| s.as_str()).collect()))
            .collect();
        assert_eq!(
            names,
            [
                ("/sys/fs/cgroup/cpu,cpuacct", vec!["cpu", "cpuacct"]),
                ("/sys/fs/cgroup/memory", vec!["memory"]),
                ("/sys/fs/cgroup/my pids", vec!["pids"]),
            ]
        );
        assert_eq!(
            v1::dirs(&h, Path::new("/ironcell/c1"))[1],
            Path::new("/sys/fs/cgroup/memory/ironcell/c1")
        );
    }

    #[test]
    fn v1_prepare_refuses_relative_paths_and_inherits_cpusets() {
        let h = vec![(PathBuf::from("/nonexistent"), vec!["pids".to_string()])];
        for p in ["ironcell/c1", "/ironcell/../../etc"] {
            let e = v1::prepare(&h, Path::new(p)).unwrap_err().to_string();
            assert!(e.contains("absolute cgroupfs path"), "{p}: {e}");
        }
        // A cpuset "hierarchy" in a plain directory: the new cgroups get
        // the nearest non-empty ancestor's values.
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path();
        std::fs::write(m.join("cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(m.join("cpuset.mems"), "0\n").unwrap();
        std::fs::create_dir_all(m.join("a/b")).unwrap();
        for d in ["a", "a/b"] {
            std::fs::write(m.join(d).join("cpuset.cpus"), "").unwrap();
            std::fs::write(m.join(d).join("cpuset.mems"), "\n").unwrap();
        }
        std::fs::write(m.join("a/cpuset.cpus"), "1\n").unwrap();
        let h = vec![(m.to_path_buf(), vec!["cpuset".to_string()])];
        let tasks = v1::prepare(&h, Path::new("/a/b")).unwrap();
        assert_eq!(tasks, [m.join("a/b/tasks")]);
        let read = |p: &str| std::fs::read_to_string(m.join(p)).unwrap();
        assert_eq!(read("a/b/cpuset.cpus"), "1");
        assert_eq!(read("a/cpuset.mems"), "0");
        assert_eq!(read("a/b/cpuset.mems"), "0");
    }

    #[test]
    fn updates_skip_devices_and_unset_values_and_keep_the_oom_killer() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"devices":[{"allow":false,"access":"rwm"}],"pids":{"limit":0},
                "cpu":{"cpus":"","mems":"0","shares":512},"memory":{"limit":67108864}}"#,
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("memory.oom_control"),
            "oom_kill_disable 1\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        let u = for_update(&r, Some(tmp.path()));
        assert!(u.devices().is_none(), "devices are never updated");
        assert!(u.pids().is_none(), "a pids limit of 0 leaves it unchanged");
        let cpu = u.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.cpus().as_deref(), cpu.mems().as_deref()),
            (None, Some("0"))
        );
        assert_eq!(cpu.shares(), Some(512));
        let mem = u.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(67108864));
        assert_eq!(mem.disable_oom_killer(), Some(true), "kept from the cgroup");
        assert_eq!(
            for_update(&r, None)
                .memory()
                .as_ref()
                .unwrap()
                .disable_oom_killer(),
            Some(false)
        );
        let r: LinuxResources =
            serde_json::from_str(r#"{"memory":{"disableOOMKiller":false},"pids":{"limit":-1}}"#)
                .unwrap();
        let u = for_update(&r, Some(tmp.path()));
        assert_eq!(
            u.memory().as_ref().unwrap().disable_oom_killer(),
            Some(false)
        );
        assert_eq!(u.pids().as_ref().unwrap().limit(), -1);
    }

    #[test]
    fn relative_or_escaping_paths_are_refused() {
        for p in ["kubepods/pod1", "/kubepods/../../etc", ""] {
            let e = stats(Path::new(p)).unwrap_err().to_string();
            assert!(e.contains("absolute cgroupfs path"), "{p}: {e}");
        }
    }
}
