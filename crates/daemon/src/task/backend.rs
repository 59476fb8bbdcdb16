//! The boundary between the task registry and what runs a task's
//! processes: one [`TaskBackend`] per task, made by the [`Backends`] of its
//! kind. The registry (`task/mod.rs`) keeps what is the same for every
//! kind: the table, the records, the events and their order, the exits, the
//! keeper's slots. A backend does what differs: how the processes are made,
//! started, signalled, paused, measured and removed.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use ironcell_container::stats::Stats;
use ironcell_oci::Bundle;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};
use crate::keeper::{Keeper, ProcKey, Slot};
use crate::reaper::{Exit, Reaper};
use crate::stdio::{self, StdinRelay};

use super::IoSpec;

/// Which backend runs a task (recorded in `task.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Processes in the namespace sandbox, forked by helpers under the keeper.
    Native,
    /// A WASI module run in the daemon itself.
    Wasm,
    /// A container in a VM: the init of one that owns its VM as a native
    /// task's (its relay owns the VM); a pod member's init and every
    /// exec'd process run through the agent by the daemon.
    Vm,
    /// A fake, for the registry's unit tests.
    #[cfg(test)]
    Test,
}

/// Called once with the exit of the process it was given for.
pub type ExitSink = Box<dyn FnOnce(Exit) + Send>;

/// Called by a backend's `start` at the moment the init counts as started:
/// after anything that can fail, before the payload can end (its exit
/// event must follow TaskStart).
pub type Announce<'a> = &'a (dyn Fn() + Send + Sync);

/// Where a task lives: its names and its directories.
#[derive(Debug, Clone)]
pub struct Place {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    /// The sandbox library's state root for the task's namespace.
    pub state_root: PathBuf,
    /// The daemon's directory for the task (record, pid files, specs).
    pub dir: PathBuf,
}

impl Place {
    /// The claim of the task's create on what it makes (`claim.rs`).
    pub fn claim(&self) -> PathBuf {
        self.dir.join(super::record::CREATING)
    }

    /// Where the claim goes when a removal takes it over.
    pub fn abandoned_claim(&self) -> PathBuf {
        self.dir.join(super::record::ABANDONED)
    }
}

/// A process a backend made: its pid (the daemon's own for an in-process
/// one) and the daemon's ends of its stdio.
#[derive(Default)]
pub struct Spawned {
    pub pid: i32,
    pub stdin: Option<StdinRelay>,
    pub master: Option<File>,
}

/// Makes the backend of each new task, and of each task a previous daemon
/// recorded.
#[async_trait]
pub trait Backends: Send + Sync {
    /// Makes `place`'s task from `bundle` (loaded; its rootfs mounted): its
    /// init is created, not started.
    async fn create(
        &self,
        place: &Place,
        bundle: &Bundle,
        io: &IoSpec,
        sandbox: Option<ironcell_sandbox::Kind>,
    ) -> Result<(Box<dyn TaskBackend>, Spawned)>;

    /// The backend of a recorded task of `kind`, found again after a
    /// restart of the daemon.
    fn recover(&self, kind: TaskKind, place: &Place) -> Result<Box<dyn TaskBackend>>;

    /// Removes whatever a create of `place`'s task that never finished (the
    /// daemon died in it, or it failed) may have made: processes, cgroups,
    /// state. The create is abandoned first, and a process of the backend
    /// still making it is waited for (bounded: `claim.rs`).
    async fn discard(&self, place: &Place) -> Result<()>;
}

/// What runs one task's processes.
#[async_trait]
pub trait TaskBackend: Send + Sync {
    fn kind(&self) -> TaskKind;

    /// Whether the task's processes outlive the daemon. A task whose
    /// processes die with it is reported ended by the next daemon, and its
    /// record need not follow each start.
    fn outlives_daemon(&self) -> bool {
        true
    }

    /// Calls `on_exit` once process `pid` ends (`exec_id` None: the init).
    fn watch(&self, exec_id: Option<&str>, pid: i32, on_exit: ExitSink);

    /// Starts the init, calling `announce` once it counts as started.
    async fn start(&self, announce: Announce<'_>) -> Result<()>;

    /// Refuses exec processes at once (at Exec, not at their Start), for a
    /// kind without them.
    fn can_exec(&self) -> Result<()> {
        Ok(())
    }

    /// Makes and starts exec process `exec_id` from its process spec file.
    async fn exec(&self, key: &ProcKey, exec_id: &str, io: &IoSpec, spec: &Path)
        -> Result<Spawned>;

    /// A restarted daemon's take-back of process `exec_id`'s stdio (empty:
    /// the init's) from the keeper, for a backend that connects it itself:
    /// the stdin relay (if any) it started again. None: the registry takes
    /// the stdio back (a stdin pipe, a pty master).
    async fn reattach_stdio(
        &self,
        _key: &ProcKey,
        _exec_id: &str,
        _io: &IoSpec,
    ) -> Option<Option<StdinRelay>> {
        None
    }

    /// Resizes the terminal of process `exec_id` (empty: the init's) when
    /// the backend does it (the daemon holds no pty of it); None: the
    /// daemon resizes the process's pty master.
    async fn resize(&self, _exec_id: &str, _width: u32, _height: u32) -> Option<Result<()>> {
        None
    }

    /// Sends `signal` to the init (`exec` None; `all`: to every process of
    /// the task) or to the started exec (its id and pid).
    async fn signal(&self, exec: Option<(&str, i32)>, signal: i32, all: bool) -> Result<()>;

    /// Removes the task's container. `live_init`: the init's pid when it
    /// never ended (its exit will not be watched any more).
    async fn delete(&self, live_init: Option<i32>) -> Result<()>;

    /// Pauses (`true`) or resumes every process of the task.
    async fn pause(&self, pause: bool) -> Result<()>;

    /// Whether the task was paused (asked of a recovered task).
    async fn paused(&self) -> bool;

    /// The pids of the task's processes.
    async fn pids(&self) -> Result<Vec<i32>>;

    async fn stats(&self) -> Result<Stats>;

    async fn update(&self, resources: LinuxResources) -> Result<()>;

    /// The memory cgroup whose OOM kills are the task's, if it has one.
    async fn memory_cgroup(&self) -> Option<PathBuf>;

    /// Without a memory cgroup: what reports the task's OOM kills, if
    /// anything does (a VM's agent).
    async fn oom_waiter(&self) -> Option<ironcell_sandbox::OomWaiter> {
        None
    }
}

/// The daemon's side of the processes every backend makes: its root, the
/// binary its helpers run, the reaper, the keeper (None only in tests that
/// never fork a process) and the stdin relays whose ends the keeper holds.
pub struct Host {
    pub root: PathBuf,
    pub exe: PathBuf,
    pub reaper: Arc<Reaper>,
    pub keeper: Option<Arc<Keeper>>,
    counter: AtomicU64,
}

impl Host {
    pub fn new(
        root: PathBuf,
        exe: PathBuf,
        reaper: Arc<Reaper>,
        keeper: Option<Arc<Keeper>>,
    ) -> Host {
        Host {
            root,
            exe,
            reaper,
            keeper,
            counter: AtomicU64::new(0),
        }
    }

    /// A number no other call returns (for unique file names).
    pub fn unique(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Relays stdin FIFO `path` (or the already open `fifo`) into `sink`.
    /// The keeper holds copies of both ends meanwhile, so that across a
    /// daemon restart the process's stdin stays open and containerd's writes
    /// are buffered, and drops them when the relay ends by itself.
    pub fn start_stdin(
        &self,
        key: &ProcKey,
        path: &str,
        fifo: Option<OwnedFd>,
        sink: OwnedFd,
    ) -> std::result::Result<StdinRelay, stdio::StdioError> {
        let fifo = match fifo {
            Some(f) => f,
            None => StdinRelay::open_fifo(path)?,
        };
        if let Some(k) = &self.keeper {
            k.hold(key, Slot::Stdin, &sink);
            k.hold(key, Slot::StdinFifo, &fifo);
        }
        let key = key.clone();
        let keeper = self.keeper.clone();
        StdinRelay::start(
            fifo,
            sink,
            Box::new(move || {
                if let Some(k) = keeper {
                    k.release(&key, Slot::Stdin);
                    k.release(&key, Slot::StdinFifo);
                }
            }),
        )
    }
}

/// Runs blocking work off the async threads.
pub async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TaskError::Internal(format!("internal error: {e}")))?
}

/// The error of an operation a kind of task does not have.
pub fn unsupported(what: &str, kind: &str) -> TaskError {
    TaskError::Unimplemented(format!("{what} is not supported for {kind} tasks"))
}
