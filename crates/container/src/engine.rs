use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use chrono::SecondsFormat;
use ironcell_oci::{validate_id, Bundle, ContainerState, Status, OCI_VERSION};
use libcgroups::common::{CgroupManager, FreezerState};
use libcgroups::stats::Stats;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::ContainerStatus;
use libcontainer::syscall::syscall::SyscallType;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::error::ContainerError;

/// The file libcontainer keeps a container's state in, inside its directory.
const STATE_FILE: &str = "state.json";

/// Options of `create` / `run`, named as runc names them.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
    pub no_pivot: bool,
    /// false when the caller waits for the container in the foreground.
    pub detach: bool,
}

/// The stdio a container's (or an exec'd) process gets instead of the
/// caller's own fds 0, 1 and 2 (the guest agent gives it pipes).
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl ProcessIo {
    pub(crate) fn apply(self, mut b: ContainerBuilder) -> ContainerBuilder {
        if let Some(fd) = self.stdin {
            b = b.with_stdin(fd);
        }
        if let Some(fd) = self.stdout {
            b = b.with_stdout(fd);
        }
        if let Some(fd) = self.stderr {
            b = b.with_stderr(fd);
        }
        b
    }
}

/// All containers under one state root (runc's `--root`).
#[derive(Debug, Clone)]
pub struct Engine {
    root: PathBuf,
    systemd_cgroup: bool,
}

impl Engine {
    pub fn new(root: impl Into<PathBuf>, systemd_cgroup: bool) -> Self {
        Engine {
            root: root.into(),
            systemd_cgroup,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Whether a container with this id has state on disk.
    pub fn exists(&self, id: &str) -> bool {
        self.dir(id).join(STATE_FILE).exists()
    }

    fn ensure_root(&self) -> Result<(), ContainerError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| {
                ContainerError::io(
                    format!("cannot create state root {}", self.root.display()),
                    e,
                )
            })
    }

    /// Creates container `id` from `bundle`: namespaces, cgroups, rootfs,
    /// and an init process that waits for `start`. On failure nothing of the
    /// container is left: no state directory, cgroup or process.
    pub fn create(
        &self,
        id: &str,
        bundle: &Bundle,
        opts: &CreateOptions,
    ) -> Result<Container, ContainerError> {
        self.create_with_io(id, bundle, opts, ProcessIo::default())
    }

    /// [`Self::create`] with the init's stdio given as `io`.
    pub fn create_with_io(
        &self,
        id: &str,
        bundle: &Bundle,
        opts: &CreateOptions,
        io: ProcessIo,
    ) -> Result<Container, ContainerError> {
        validate_id(id)?;
        let dir = self.dir(id);
        if dir.exists() {
            return Err(ContainerError::Exists(id.to_string()));
        }
        self.ensure_root()?;
        if let Some(socket) = &opts.console_socket {
            if !socket.exists() {
                return Err(ContainerError::Invalid(format!(
                    "console socket {}: no such file",
                    socket.display()
                )));
            }
        }
        let result = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_pid_file(opts.pid_file.as_ref())
            .and_then(|b| b.with_root_path(&self.root))
            .map(|b| {
                io.apply(
                    b.with_console_socket(opts.console_socket.as_ref())
                        .with_preserved_fds(opts.preserve_fds),
                )
            })
            .and_then(|b| b.validate_id())
            .and_then(|b| {
                b.as_init(&bundle.path)
                    .with_systemd(self.systemd_cgroup)
                    .with_detach(opts.detach)
                    .with_no_pivot(opts.no_pivot)
                    .build()
            });
        match result {
            Ok(inner) => Ok(Container { inner }),
            Err(e) => {
                let err = ContainerError::engine(format!("cannot create container {id}"), e);
                self.remove_failed(id, &dir);
                Err(err)
            }
        }
    }

    /// Removes what a failed create left (libcontainer cleans up after
    /// itself on most paths; this covers the rest).
    fn remove_failed(&self, id: &str, dir: &Path) {
        if dir.join(STATE_FILE).exists() {
            if let Ok(mut c) = libcontainer::container::Container::load(dir.to_path_buf()) {
                if let Err(e) = c.delete(true) {
                    tracing::warn!(id, error = %e, "cleanup of failed container");
                }
            }
        }
        if dir.exists() {
            if let Err(e) = fs::remove_dir_all(dir) {
                tracing::warn!(id, error = %e, "cannot remove {}", dir.display());
            }
        }
    }

    /// Loads container `id` and refreshes its status from the live process.
    pub fn load(&self, id: &str) -> Result<Container, ContainerError> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !dir.join(STATE_FILE).exists() {
            return Err(ContainerError::NotFound(id.to_string()));
        }
        let inner = libcontainer::container::Container::load(dir)
            .map_err(|e| ContainerError::engine(format!("cannot load container {id}"), e))?;
        Ok(Container { inner })
    }

    /// Ids of every container under the root, sorted.
    pub fn ids(&self) -> Result<Vec<String>, ContainerError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ContainerError::io(
                    format!("cannot read state root {}", self.root.display()),
                    e,
                ))
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// runc's `delete` of a directory without state (an aborted create):
    /// removes it. Returns whether there was anything to remove.
    pub fn remove_stale(&self, id: &str) -> Result<bool, ContainerError> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !dir.exists() {
            return Ok(false);
        }
        fs::remove_dir_all(&dir)
            .map_err(|e| ContainerError::io(format!("cannot remove {}", dir.display()), e))?;
        Ok(true)
    }
}

/// One container on disk.
pub struct Container {
    pub(crate) inner: libcontainer::container::Container,
}

impl Container {
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    pub fn status(&self) -> Status {
        match self.inner.status() {
            ContainerStatus::Creating => Status::Creating,
            ContainerStatus::Created => Status::Created,
            ContainerStatus::Running => Status::Running,
            ContainerStatus::Paused => Status::Paused,
            ContainerStatus::Stopped => Status::Stopped,
        }
    }

    /// The init process's pid, while it lives.
    pub fn pid(&self) -> Option<i32> {
        match self.status() {
            Status::Stopped => None,
            _ => self.inner.pid().map(Pid::as_raw),
        }
    }

    pub fn bundle(&self) -> &Path {
        self.inner.bundle()
    }

    /// The container's root filesystem as its bundle names it.
    pub fn rootfs(&self) -> PathBuf {
        let bundle = self.bundle();
        fs::read_to_string(bundle.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["root"]["path"].as_str().map(PathBuf::from))
            .map(|p| if p.is_absolute() { p } else { bundle.join(p) })
            .unwrap_or_else(|| bundle.join("rootfs"))
    }

    /// The state runc's `state` prints.
    pub fn state(&self, sandbox: &str) -> ContainerState {
        ContainerState {
            oci_version: OCI_VERSION.to_string(),
            id: self.id().to_string(),
            pid: self.pid().unwrap_or(0),
            status: self.status(),
            bundle: self.bundle().to_path_buf(),
            rootfs: self.rootfs(),
            created: self
                .inner
                .created()
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true))
                .unwrap_or_default(),
            annotations: self.inner.state.annotations.clone().unwrap_or_default(),
            // runc fills the owner in `list` only.
            owner: String::new(),
            sandbox: sandbox.to_string(),
        }
    }

    fn wrong_status(&self, op: &'static str, hint: &'static str) -> ContainerError {
        ContainerError::WrongStatus {
            op,
            id: self.id().to_string(),
            status: self.status(),
            hint,
        }
    }

    /// Runs the user's process in a created container.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        if self.status() != Status::Created {
            return Err(self.wrong_status("start", ", not created"));
        }
        let id = self.id().to_string();
        self.inner
            .start()
            .map_err(|e| ContainerError::engine(format!("cannot start container {id}"), e))
    }

    /// Sends `signal` to the init process, or with `all` to every process in
    /// the container's cgroup, as runc does. A stopped container accepts
    /// only `all`: what is left in its cgroup is signalled (processes of a
    /// container without a pid namespace of its own outlive its init), and
    /// nothing happens when the cgroup is empty or gone. Without `all` the
    /// error carries runc's words, [`crate::NOT_RUNNING`].
    pub fn kill(&mut self, signal: i32, all: bool) -> Result<(), ContainerError> {
        let status = self.status();
        match status {
            Status::Created | Status::Running | Status::Paused => {}
            Status::Stopped if all => {}
            _ => return Err(self.wrong_status("kill", crate::NOT_RUNNING)),
        }
        if all {
            return self.signal_all(signal, status);
        }
        let id = self.id().to_string();
        let pid = self
            .pid()
            .ok_or_else(|| ContainerError::Invalid(format!("container {id} has no init pid")))?;
        signal_pid(&id, pid, signal)?;
        // A frozen process dies only once thawed (cgroup v1), as runc does
        // for SIGKILL.
        if status == Status::Paused && signal == nix::libc::SIGKILL {
            if let Err(e) = self.cgroup()?.freeze(FreezerState::Thawed) {
                tracing::warn!(id, error = %crate::error::chain(&e), "cannot thaw the killed container");
            }
        }
        Ok(())
    }

    /// Signals every process in the container's cgroup, frozen meanwhile so
    /// that none forks past the signal (runc's `signalAllProcesses`); the
    /// cgroup is thawed afterwards, so a paused container is running again.
    fn signal_all(&mut self, signal: i32, status: Status) -> Result<(), ContainerError> {
        let id = self.id().to_string();
        let cgroup = self.cgroup()?;
        let list_err = |e: libcgroups::common::AnyManagerError| ContainerError::Engine {
            what: format!("cannot list processes of {id}"),
            msg: crate::error::chain(&e),
        };
        if status == Status::Stopped {
            match cgroup.get_all_pids() {
                Ok(pids) if pids.is_empty() => return Ok(()),
                Ok(_) => {}
                Err(_) if !self.cgroup_exists() => return Ok(()),
                Err(e) => return Err(list_err(e)),
            }
        }
        if let Err(e) = cgroup.freeze(FreezerState::Frozen) {
            tracing::warn!(id, error = %crate::error::chain(&e), "cannot freeze the container to signal it");
        }
        let pids = cgroup.get_all_pids().map_err(list_err);
        let result = pids.and_then(|pids| {
            pids.into_iter()
                .try_for_each(|pid| signal_pid(&id, pid.as_raw(), signal))
        });
        if let Err(e) = cgroup.freeze(FreezerState::Thawed) {
            tracing::warn!(id, error = %crate::error::chain(&e), "cannot thaw the container after signalling it");
        } else if status == Status::Paused {
            // libcontainer keeps a saved "paused" while the init lives.
            if let Err(e) = self.inner.set_status(ContainerStatus::Running).save() {
                tracing::warn!(id, error = %crate::error::chain(&e), "cannot record the container as running");
            }
        }
        result
    }

    /// Whether the container's cgroup directory exists (cgroupfs driver;
    /// with systemd, whose unit's cgroup goes away with its last process,
    /// a cgroup that cannot be listed is taken as gone, as runc does).
    fn cgroup_exists(&self) -> bool {
        if self.inner.systemd() {
            return false;
        }
        self.inner
            .spec()
            .map(|c| crate::cgroup::exists(&c.cgroup_path))
            .unwrap_or(false)
    }

    /// Deletes the container's state, cgroup and processes. Without `force`
    /// only a created or stopped container can be deleted (as runc).
    pub fn delete(&mut self, force: bool) -> Result<(), ContainerError> {
        if !force && matches!(self.status(), Status::Running | Status::Paused) {
            return Err(self.wrong_status("delete", ", stop it first or use --force"));
        }
        let id = self.id().to_string();
        self.inner
            .delete(force)
            .map_err(|e| ContainerError::engine(format!("cannot delete container {id}"), e))
    }

    pub fn pause(&mut self) -> Result<(), ContainerError> {
        if self.status() != Status::Running {
            return Err(self.wrong_status("pause", ", not running"));
        }
        let id = self.id().to_string();
        self.inner
            .pause()
            .map_err(|e| ContainerError::engine(format!("cannot pause container {id}"), e))
    }

    pub fn resume(&mut self) -> Result<(), ContainerError> {
        if self.status() != Status::Paused {
            return Err(self.wrong_status("resume", ", not paused"));
        }
        let id = self.id().to_string();
        self.inner
            .resume()
            .map_err(|e| ContainerError::engine(format!("cannot resume container {id}"), e))
    }

    /// The container's cgroup, as its config names it.
    fn cgroup(&self) -> Result<libcgroups::common::AnyCgroupManager, ContainerError> {
        let id = self.id().to_string();
        let config = self
            .inner
            .spec()
            .map_err(|e| ContainerError::engine(format!("cannot read config of {id}"), e))?;
        libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
            cgroup_path: config.cgroup_path,
            systemd_cgroup: self.inner.systemd(),
            container_name: id.clone(),
        })
        .map_err(|e| ContainerError::Engine {
            what: format!("cannot open cgroup of {id}"),
            msg: crate::error::chain(&e),
        })
    }

    /// The container's memory cgroup directory (cgroupfs driver; None with
    /// the systemd driver or when it cannot be found): where OOM kills are
    /// counted (`memory.oom_control` on v1, `memory.events` on v2).
    pub fn memory_cgroup(&self) -> Option<PathBuf> {
        if self.inner.systemd() {
            return None;
        }
        crate::cgroup::memory_dir(&self.inner.spec().ok()?.cgroup_path)
    }

    /// Pids of every process in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, ContainerError> {
        let pids = self
            .cgroup()?
            .get_all_pids()
            .map_err(|e| ContainerError::Engine {
                what: format!("cannot list processes of {}", self.id()),
                msg: crate::error::chain(&e),
            })?;
        let mut pids: Vec<i32> = pids.into_iter().map(Pid::as_raw).collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Resource usage of the container's cgroup (cgroup v1 or v2).
    pub fn stats(&self) -> Result<Stats, ContainerError> {
        self.cgroup()?.stats().map_err(|e| ContainerError::Engine {
            what: format!("cannot read statistics of {}", self.id()),
            msg: crate::error::chain(&e),
        })
    }

    /// Applies new resource limits to a live container's cgroup.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), ContainerError> {
        match self.status() {
            Status::Created | Status::Running | Status::Paused => {}
            _ => return Err(self.wrong_status("update", ", not running")),
        }
        let resources = crate::cgroup::for_update(resources, self.memory_cgroup().as_deref());
        self.cgroup()?
            .apply(&crate::cgroup::controller_opt(&resources))
            .map_err(|e| ContainerError::Engine {
                what: format!("cannot update resources of {}", self.id()),
                msg: crate::error::chain(&e),
            })
    }
}

/// kill(2) of one process of container `id`; a process that is already gone
/// is not an error.
fn signal_pid(id: &str, pid: i32, signal: i32) -> Result<(), ContainerError> {
    // SAFETY: kill(2) takes plain integers and touches no memory.
    if unsafe { nix::libc::kill(pid, signal) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(nix::libc::ESRCH) {
            return Err(ContainerError::io(
                format!("cannot signal container {id} process {pid}"),
                e,
            ));
        }
    }
    Ok(())
}
