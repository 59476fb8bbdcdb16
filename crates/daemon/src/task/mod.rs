//! Tasks: every container the daemon runs, of every containerd namespace,
//! with their processes (the init and each exec), their stdio and their
//! exits. The shim v2 Task service (`service.rs`) is a thin layer on this.
//!
//! - `mod.rs` (here): the registry, the same for every kind of task: the
//!   table, the records, the events in their order, the exits and Wait, the
//!   stdio the keeper holds, recovery after a restart;
//! - `backend.rs`: the [`TaskBackend`] trait through which the registry
//!   runs a task's processes, and what backends share ([`Host`]);
//! - `native.rs`, `vm.rs`, `wasm.rs`: the backends (namespace-sandbox
//!   containers; vm-sandbox containers, whose execs run through the agent;
//!   WASI modules in the daemon), `kinds.rs` choosing one per bundle;
//! - `process.rs`: a process's state; `record.rs`: `task.json`.

mod backend;
mod kinds;
mod native;
mod process;
mod record;
mod recover;
#[cfg(test)]
mod tests;
mod vm;
mod wasm;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use ironcell_basics::exit_status;
use ironcell_container::stats::Stats;
use ironcell_oci::Bundle;
use oci_spec::runtime::{LinuxResources, Process};

use crate::detach::detached;
use crate::error::{validate_id, validate_namespace};
use crate::error::{Result, TaskError};
use crate::events::Publisher;
use crate::keeper::{Keeper, ProcKey};
use crate::mount::{self, Mount};
use crate::oom;
use crate::pod::Pods;
use crate::reaper::{Exit, Reaper};
use crate::stdio;
use crate::time::timestamp;

use backend::blocking;
pub use backend::{Backends, Host, Place, Spawned, TaskBackend, TaskKind};
pub use process::{IoSpec, ProcStatus, ProcView};

use process::{Phase, Proc};
use record::{CreatingRecord, ProcRecord, TaskRecord};

struct TaskInner {
    init: Proc,
    execs: HashMap<String, Proc>,
}

impl TaskInner {
    /// The init process (`exec_id` empty) or an exec of task `id`.
    fn proc(&self, id: &str, exec_id: &str) -> Result<&Proc> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| exec_not_found(id, exec_id))
    }

    fn proc_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| exec_not_found(id, exec_id))
    }

    /// Every process (the init's exec id None), for a look over all.
    fn all(&self) -> impl Iterator<Item = (Option<&String>, &Proc)> {
        std::iter::once((None, &self.init)).chain(self.execs.iter().map(|(k, p)| (Some(k), p)))
    }
}

/// One container of one containerd namespace.
pub struct Task {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    /// containerd's ttrpc address, for this task's events.
    containerd: Option<String>,
    /// Its record, pid files, process specs.
    dir: PathBuf,
    rootfs_mounted: bool,
    /// What runs its processes.
    backend: Box<dyn TaskBackend>,
    inner: Mutex<TaskInner>,
    /// Watches the task's memory cgroup for OOM kills.
    oom: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held by the delete of the task's init: a second one at the same
    /// time (containerd's own beside a shim's `delete`) waits, then finds
    /// the task gone.
    deleting: tokio::sync::Mutex<()>,
    /// The keeper containerd reached it through when it was made: if that
    /// keeper is lost, containerd has given the task up.
    keeper: Option<String>,
}

impl Task {
    /// Writes the task's record.
    fn save(&self) {
        let record = {
            let inner = self.inner.lock().unwrap();
            TaskRecord {
                namespace: self.namespace.clone(),
                id: self.id.clone(),
                bundle: self.bundle.clone(),
                containerd: self.containerd.clone(),
                rootfs_mounted: self.rootfs_mounted,
                kind: Some(self.backend.kind()),
                wasm: false,
                init: ProcRecord::of(&inner.init),
                execs: inner
                    .execs
                    .iter()
                    .map(|(k, p)| (k.clone(), ProcRecord::of(p)))
                    .collect(),
                keeper: self.keeper.clone(),
            }
        };
        record.write(&self.dir);
    }

    fn publish_to<T: crate::events::Topic>(&self, events: &Publisher, event: T) {
        events.publish(self.containerd.as_deref(), &self.namespace, event);
    }
}

type Key = (String, String);

/// Every task of every namespace.
pub struct Tasks {
    host: Arc<Host>,
    backends: Box<dyn Backends>,
    events: Publisher,
    /// Pods made through the sandbox API (`pod.rs`).
    pub pods: Arc<Pods>,
    /// Ids being created (a second Create of the same id fails at once).
    creating: Mutex<HashSet<Key>>,
    tasks: Mutex<HashMap<Key, Arc<Task>>>,
    paused: Mutex<HashSet<Key>>,
}

fn not_found(ns: &str, id: &str) -> TaskError {
    TaskError::NotFound(format!("task {id} not found in namespace {ns}"))
}

fn exec_not_found(id: &str, exec_id: &str) -> TaskError {
    TaskError::NotFound(format!("exec {exec_id} not found in task {id}"))
}

/// What Create needs.
pub struct CreateRequest {
    pub namespace: String,
    /// containerd's ttrpc address, for the task's events.
    pub containerd: Option<String>,
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<Mount>,
    pub io: IoSpec,
    /// The sandbox kind the runtime handler's options ask for (None: the
    /// bundle's annotation, or what its process is).
    pub sandbox: Option<ironcell_sandbox::Kind>,
}

impl Tasks {
    /// The daemon's registry, running every kind of task it knows.
    pub fn new(
        root: PathBuf,
        exe: PathBuf,
        reaper: Arc<Reaper>,
        keeper: Option<Arc<Keeper>>,
        events: Publisher,
    ) -> Tasks {
        let host = Arc::new(Host::new(root, exe, reaper, keeper));
        let backends = Box::new(kinds::ByKind::new(host.clone()));
        Tasks::with_backends(host, backends, events)
    }

    /// A registry whose tasks run through `backends`.
    pub fn with_backends(host: Arc<Host>, backends: Box<dyn Backends>, events: Publisher) -> Tasks {
        Tasks {
            pods: Arc::new(Pods::new(
                host.root.clone(),
                host.exe.clone(),
                host.reaper.clone(),
                host.keeper.clone(),
            )),
            host,
            backends,
            events,
            creating: Mutex::default(),
            tasks: Mutex::default(),
            paused: Mutex::default(),
        }
    }

    fn keeper(&self) -> Option<&Keeper> {
        self.host.keeper.as_deref()
    }

    fn place(&self, namespace: &str, id: &str, bundle: PathBuf) -> Place {
        let root = &self.host.root;
        Place {
            namespace: namespace.to_string(),
            id: id.to_string(),
            bundle,
            state_root: root.join("containers").join(namespace),
            dir: root.join("tasks").join(namespace).join(id),
        }
    }

    pub fn get(&self, namespace: &str, id: &str) -> Result<Arc<Task>> {
        self.tasks
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), id.to_string()))
            .cloned()
            .ok_or_else(|| not_found(namespace, id))
    }

    pub fn count(&self) -> usize {
        self.tasks.lock().unwrap().len()
    }

    fn is_paused(&self, t: &Task) -> bool {
        self.paused
            .lock()
            .unwrap()
            .contains(&(t.namespace.clone(), t.id.clone()))
    }

    /// Creates task `req.id` (see [`Tasks::start`] for why it runs
    /// detached).
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<i32> {
        let me = self.clone();
        detached(async move { me.create_now(req).await }).await
    }

    async fn create_now(self: &Arc<Self>, req: CreateRequest) -> Result<i32> {
        validate_namespace(&req.namespace)?;
        validate_id("task id", &req.id)?;
        let key = (req.namespace.clone(), req.id.clone());
        // The same Create again (the keeper re-sends a request whose answer
        // a dying daemon never wrote): the task it made.
        if let Some(t) = self.tasks.lock().unwrap().get(&key) {
            if t.bundle == req.bundle {
                tracing::info!(id = %req.id, "repeated Create: the task exists");
                return Ok(t.inner.lock().unwrap().init.pid);
            }
        }
        if self.tasks.lock().unwrap().contains_key(&key)
            || !self.creating.lock().unwrap().insert(key.clone())
        {
            return Err(TaskError::AlreadyExists(format!(
                "task {} already exists in namespace {}",
                req.id, req.namespace
            )));
        }
        let result = self.create_inner(&req).await;
        self.creating.lock().unwrap().remove(&key);
        let task = result?;
        let pid = task.inner.lock().unwrap().init.pid;
        task.save();
        self.tasks.lock().unwrap().insert(key, task.clone());
        self.watch_exit(&task, None, pid);
        self.watch_oom(&task).await;
        task.publish_to(
            &self.events,
            TaskCreate {
                container_id: task.id.clone(),
                bundle: task.bundle.display().to_string(),
                io: MessageField::some(TaskIO {
                    stdin: req.io.stdin.clone(),
                    stdout: req.io.stdout.clone(),
                    stderr: req.io.stderr.clone(),
                    terminal: req.io.terminal,
                    ..Default::default()
                }),
                pid: pid as u32,
                ..Default::default()
            },
        );
        tracing::info!(namespace = %task.namespace, id = %task.id, pid, "task created");
        Ok(pid)
    }

    /// Makes the task: its directory, its rootfs mounted, its init created
    /// by its backend; on failure, none of these is left.
    async fn create_inner(&self, req: &CreateRequest) -> Result<Arc<Task>> {
        if !req.bundle.is_absolute() {
            return Err(TaskError::InvalidArgument(format!(
                "bundle {} is not an absolute path",
                req.bundle.display()
            )));
        }
        // Read here, not on the blocking pool: a config.json under
        // containerd's bundle directory (on /run, a tmpfs) is read in
        // microseconds, and a hop to the pool and back costs more
        // (sequential wasm tasks: bench/README.md).
        let mut bundle =
            Bundle::load(&req.bundle).map_err(|e| TaskError::InvalidArgument(format!("{e}")))?;
        self.pods.give_files(&req.namespace, &mut bundle)?;
        // A container of a VM pod made here runs in its VM, whatever its
        // handler's options (containerd 2.x sends a sandboxer's pods'
        // containers none).
        let sandbox = req
            .sandbox
            .or_else(|| self.pods.member_kind(&req.namespace, &bundle.spec));
        let place = self.place(&req.namespace, &req.id, req.bundle.clone());
        std::fs::create_dir_all(&place.dir).map_err(|e| {
            TaskError::Internal(format!("cannot create {}: {e}", place.dir.display()))
        })?;
        let rootfs_mounted = !req.rootfs.is_empty();
        let creating = CreatingRecord {
            namespace: req.namespace.clone(),
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs_mounted,
        };
        if let Err(e) = creating.write(&place.dir) {
            let _ = std::fs::remove_dir_all(&place.dir);
            return Err(TaskError::Internal(format!(
                "cannot write in {}: {e}",
                place.dir.display()
            )));
        }
        let rootfs = req.bundle.join("rootfs");
        let undo = |mounted: bool| {
            if mounted {
                mount::unmount_all(&rootfs);
            }
            let _ = std::fs::remove_dir_all(&place.dir);
        };
        if rootfs_mounted {
            let (mounts, target) = (req.rootfs.clone(), rootfs.clone());
            let r = blocking(move || {
                std::fs::create_dir_all(&target).map_err(|e| {
                    TaskError::Internal(format!("cannot create {}: {e}", target.display()))
                })?;
                mount::mount_all(&mounts, &target)
                    .map_err(|e| TaskError::InvalidArgument(e.to_string()))
            })
            .await;
            if let Err(e) = r {
                undo(false);
                return Err(e);
            }
        }
        let (backend, spawned) = match self
            .backends
            .create(&place, &bundle, &req.io, sandbox)
            .await
        {
            Ok(made) => made,
            Err(e) => {
                // A create that failed after its container was made (its
                // answer was lost with a keeper, say) leaves none.
                if let Err(d) = self.backends.discard(&place).await {
                    tracing::warn!(id = %req.id, error = %d, "cannot remove a failed create's container");
                }
                undo(rootfs_mounted);
                return Err(e);
            }
        };
        let mut init = Proc::new(req.io.clone(), ProcKey::new(&req.namespace, &req.id, ""));
        init.pid = spawned.pid;
        init.stdin = spawned.stdin;
        init.master = spawned.master;
        Ok(Arc::new(Task {
            namespace: place.namespace,
            id: place.id,
            bundle: place.bundle,
            containerd: req.containerd.clone(),
            dir: place.dir,
            rootfs_mounted,
            backend,
            inner: Mutex::new(TaskInner {
                init,
                execs: HashMap::new(),
            }),
            oom: Mutex::new(None),
            deleting: tokio::sync::Mutex::new(()),
            keeper: self.keeper().map(Keeper::identity),
        }))
    }

    /// Publishes TaskOOM for each OOM kill in the task's memory cgroup.
    async fn watch_oom(&self, task: &Arc<Task>) {
        let dir = task
            .backend
            .memory_cgroup()
            .await
            .filter(|d| oom::watchable(d));
        let events = self.events.clone();
        let (address, ns, id) = (
            task.containerd.clone(),
            task.namespace.clone(),
            task.id.clone(),
        );
        let on_oom = move || {
            tracing::info!(namespace = %ns, %id, "OOM kill");
            events.publish(
                address.as_deref(),
                &ns,
                TaskOOM {
                    container_id: id.clone(),
                    ..Default::default()
                },
            );
        };
        let watched = match dir {
            Some(dir) => oom::watch(dir, on_oom),
            None => match task.backend.oom_waiter().await {
                Some(w) => oom::watch_waiter(w, on_oom),
                None => {
                    tracing::debug!(id = %task.id, "nothing to watch for OOM kills");
                    return;
                }
            },
        };
        match watched {
            Ok(handle) => *task.oom.lock().unwrap() = Some(handle),
            Err(e) => tracing::warn!(id = %task.id, error = %e, "cannot watch for OOM kills"),
        }
    }

    /// Has `task`'s backend report the exit of `pid` (the init's with
    /// `exec_id` None), to be recorded unless the task is gone by then.
    fn watch_exit(self: &Arc<Self>, task: &Arc<Task>, exec_id: Option<String>, pid: i32) {
        let (tasks, weak) = (Arc::downgrade(self), Arc::downgrade(task));
        let id = exec_id.clone();
        task.backend.watch(
            exec_id.as_deref(),
            pid,
            Box::new(move |exit| {
                if let (Some(tasks), Some(task)) = (tasks.upgrade(), weak.upgrade()) {
                    tasks.on_exit(&task, id, exit);
                }
            }),
        );
    }

    fn on_exit(&self, task: &Task, exec_id: Option<String>, exit: Exit) {
        {
            let mut inner = task.inner.lock().unwrap();
            let p = match &exec_id {
                None => &mut inner.init,
                Some(e) => match inner.execs.get_mut(e) {
                    Some(p) => p,
                    None => return,
                },
            };
            p.release_io(self.keeper());
            p.exit.send_replace(Some(exit));
        }
        task.save();
        tracing::info!(
            namespace = %task.namespace, id = %task.id, exec_id = exec_id.as_deref().unwrap_or(""),
            pid = exit.pid, status = exit.status, "process exited"
        );
        task.publish_to(
            &self.events,
            TaskExit {
                container_id: task.id.clone(),
                id: exec_id.unwrap_or_else(|| task.id.clone()),
                pid: exit.pid as u32,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            },
        );
    }

    /// Starts the init or exec process `exec_id` of task `id`. Like every
    /// operation that changes a task in several steps, it runs to its end
    /// detached from the request (`detach.rs`).
    pub async fn start(self: &Arc<Self>, ns: &str, id: &str, exec_id: &str) -> Result<i32> {
        let (me, ns, id, exec_id) = (
            self.clone(),
            ns.to_string(),
            id.to_string(),
            exec_id.to_string(),
        );
        detached(async move { me.start_now(&ns, &id, &exec_id).await }).await
    }

    async fn start_now(self: &Arc<Self>, ns: &str, id: &str, exec_id: &str) -> Result<i32> {
        let task = self.get(ns, id)?;
        if exec_id.is_empty() {
            return self.start_init(&task).await;
        }
        let (io, spec, key) = {
            let mut inner = task.inner.lock().unwrap();
            if inner.init.exited().is_some() {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {id} has exited: cannot start exec {exec_id}"
                )));
            }
            let p = inner
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| exec_not_found(id, exec_id))?;
            match p.phase {
                Phase::Started => {
                    tracing::info!(id, exec_id, "repeated Start: the exec runs");
                    return Ok(p.pid);
                }
                Phase::Starting => {
                    return Err(TaskError::FailedPrecondition(format!(
                        "exec {exec_id} is being started"
                    )))
                }
                // Claimed now: a second Start of this exec fails above.
                Phase::Created => p.phase = Phase::Starting,
            }
            (
                p.io.clone(),
                p.spec.clone().unwrap_or_default(),
                p.key.clone(),
            )
        };
        let spawned = match task.backend.exec(&key, exec_id, &io, &spec).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(p) = task.inner.lock().unwrap().execs.get_mut(exec_id) {
                    p.phase = Phase::Created;
                }
                return Err(e);
            }
        };
        let pid = spawned.pid;
        {
            let mut inner = task.inner.lock().unwrap();
            if let Some(p) = inner.execs.get_mut(exec_id) {
                p.pid = pid;
                p.phase = Phase::Started;
                p.stdin = spawned.stdin;
                p.master = spawned.master;
            }
        }
        task.save();
        self.watch_exit(&task, Some(exec_id.to_string()), pid);
        task.publish_to(
            &self.events,
            TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Starts the task's init; a Start repeated (the keeper re-sends one
    /// whose answer a dying daemon never wrote) answers the running init.
    async fn start_init(&self, task: &Arc<Task>) -> Result<i32> {
        let pid = {
            let inner = task.inner.lock().unwrap();
            if inner.init.phase == Phase::Started {
                tracing::info!(id = %task.id, "repeated Start: the task runs");
                return Ok(inner.init.pid);
            }
            if inner.init.exited().is_some() {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {} has exited: it cannot be started",
                    task.id
                )));
            }
            inner.init.pid
        };
        let announce = || {
            task.inner.lock().unwrap().init.phase = Phase::Started;
            if task.backend.outlives_daemon() {
                task.save();
            }
            task.publish_to(
                &self.events,
                TaskStart {
                    container_id: task.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
        };
        task.backend.start(&announce).await?;
        Ok(pid)
    }

    /// Adds an exec process (started later by Start). `spec` is the OCI
    /// process as JSON.
    pub fn exec(&self, ns: &str, id: &str, exec_id: &str, io: IoSpec, spec: &[u8]) -> Result<()> {
        validate_id("exec id", exec_id)?;
        let task = self.get(ns, id)?;
        task.backend.can_exec()?;
        let process: Process = serde_json::from_slice(spec).map_err(|e| {
            TaskError::InvalidArgument(format!("exec {exec_id}: process spec: {e}"))
        })?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(TaskError::InvalidArgument(format!(
                "exec {exec_id}: the process has no args"
            )));
        }
        if io.terminal != process.terminal().unwrap_or(false) {
            return Err(TaskError::InvalidArgument(format!(
                "exec {exec_id}: terminal in the request and the process spec differ"
            )));
        }
        {
            let mut inner = task.inner.lock().unwrap();
            if inner.init.exited().is_some() {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {id} has exited: cannot add exec {exec_id}"
                )));
            }
            if inner.execs.contains_key(exec_id) {
                return Err(TaskError::AlreadyExists(format!(
                    "exec {exec_id} already exists in task {id}"
                )));
            }
            let path = task.dir.join(format!("exec-{exec_id}.json"));
            std::fs::write(&path, spec).map_err(|e| {
                TaskError::Internal(format!("cannot write {}: {e}", path.display()))
            })?;
            let mut p = Proc::new(io, ProcKey::new(ns, id, exec_id));
            p.spec = Some(path);
            inner.execs.insert(exec_id.to_string(), p);
        }
        task.save();
        task.publish_to(
            &self.events,
            TaskExecAdded {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }

    pub fn state(&self, ns: &str, id: &str, exec_id: &str) -> Result<(Arc<Task>, ProcView)> {
        let task = self.get(ns, id)?;
        let paused = self.is_paused(&task);
        let view = {
            let inner = task.inner.lock().unwrap();
            ProcView::of(inner.proc(id, exec_id)?, paused)
        };
        Ok((task, view))
    }

    pub async fn kill(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let (task, view) = self.state(ns, id, exec_id)?;
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| TaskError::InvalidArgument(format!("invalid signal {signal}")))?;
        if view.status == ProcStatus::Stopped {
            return Err(TaskError::NotFound(format!(
                "process already finished: {}",
                if exec_id.is_empty() { id } else { exec_id }
            )));
        }
        if exec_id.is_empty() {
            return task.backend.signal(None, signal, all).await;
        }
        if view.pid <= 0 {
            return Err(TaskError::FailedPrecondition(format!(
                "exec {exec_id} is not started"
            )));
        }
        task.backend
            .signal(Some((exec_id, view.pid)), signal, all)
            .await
    }

    /// Waits until the process exits.
    pub async fn wait(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let task = self.get(ns, id)?;
        let mut rx = {
            let inner = task.inner.lock().unwrap();
            let p = inner.proc(id, exec_id)?;
            p.exit.subscribe()
        };
        // Only the receiver is kept: a deleted task's sender must drop.
        drop(task);
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| TaskError::NotFound(format!("task {id} was deleted while waiting")))?;
        Ok(exit.expect("wait_for returned a value"))
    }

    /// Deletes task `id`, or its exec process `exec_id` (detached from the
    /// request: see [`Tasks::start`]).
    pub async fn delete(
        self: &Arc<Self>,
        ns: &str,
        id: &str,
        exec_id: &str,
    ) -> Result<(i32, Option<Exit>)> {
        let (me, ns, id, exec_id) = (
            self.clone(),
            ns.to_string(),
            id.to_string(),
            exec_id.to_string(),
        );
        detached(async move { me.delete_now(&ns, &id, &exec_id).await }).await
    }

    async fn delete_now(&self, ns: &str, id: &str, exec_id: &str) -> Result<(i32, Option<Exit>)> {
        let task = self.get(ns, id)?;
        if !exec_id.is_empty() {
            let mut inner = task.inner.lock().unwrap();
            let p = inner
                .execs
                .get(exec_id)
                .ok_or_else(|| exec_not_found(id, exec_id))?;
            if p.phase != Phase::Created && p.exited().is_none() {
                return Err(TaskError::FailedPrecondition(format!(
                    "exec {exec_id} is still running"
                )));
            }
            let mut p = inner.execs.remove(exec_id).expect("checked above");
            drop(inner);
            task.save();
            p.release_io(self.keeper());
            if let Some(spec) = &p.spec {
                let _ = std::fs::remove_file(spec);
            }
            return Ok((p.pid, p.exited()));
        }
        let _deleting = task.deleting.lock().await;
        if !Arc::ptr_eq(&self.get(ns, id)?, &task) {
            // Deleted, and made again under the same name, meanwhile.
            return Err(not_found(ns, id));
        }
        let (pid, exit) = {
            let inner = task.inner.lock().unwrap();
            let status = inner.init.status(self.is_paused(&task));
            if matches!(status, ProcStatus::Running | ProcStatus::Paused) {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {id} must be stopped before it is deleted: it is {}",
                    if status == ProcStatus::Paused {
                        "paused"
                    } else {
                        "running"
                    }
                )));
            }
            (inner.init.pid, inner.init.exited())
        };
        let live_init = exit.is_none().then_some(pid);
        task.backend.delete(live_init).await?;
        let exit = exit.unwrap_or_else(|| {
            // The backend killed the init: its waiters learn that exit.
            let killed = Exit {
                pid,
                status: exit_status::KILLED,
                at: SystemTime::now(),
            };
            task.inner
                .lock()
                .unwrap()
                .init
                .exit
                .send_replace(Some(killed));
            killed
        });
        let key = (ns.to_string(), id.to_string());
        let removed = self.tasks.lock().unwrap().remove(&key);
        self.paused.lock().unwrap().remove(&key);
        if let Some(t) = removed {
            // Waiters see the exit, or an error once the task is dropped.
            let mut inner = t.inner.lock().unwrap();
            inner.init.release_io(self.keeper());
            for p in inner.execs.values_mut() {
                p.release_io(self.keeper());
            }
        }
        if let Some(h) = task.oom.lock().unwrap().take() {
            h.abort();
        }
        if task.rootfs_mounted {
            mount::unmount_all(&task.bundle.join("rootfs"));
        }
        let _ = std::fs::remove_dir_all(&task.dir);
        task.publish_to(
            &self.events,
            TaskDelete {
                container_id: id.to_string(),
                pid: pid as u32,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                id: id.to_string(),
                ..Default::default()
            },
        );
        tracing::info!(namespace = ns, id, "task deleted");
        Ok((pid, Some(exit)))
    }

    /// Pauses or resumes task `id` (detached from the request: see
    /// [`Tasks::start`]).
    pub async fn pause(self: &Arc<Self>, ns: &str, id: &str, pause: bool) -> Result<()> {
        let (me, ns, id) = (self.clone(), ns.to_string(), id.to_string());
        detached(async move { me.pause_now(&ns, &id, pause).await }).await
    }

    async fn pause_now(&self, ns: &str, id: &str, pause: bool) -> Result<()> {
        let task = self.get(ns, id)?;
        task.backend.pause(pause).await?;
        let key = (ns.to_string(), id.to_string());
        if pause {
            self.paused.lock().unwrap().insert(key);
            task.publish_to(
                &self.events,
                TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        } else {
            self.paused.lock().unwrap().remove(&key);
            task.publish_to(
                &self.events,
                TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    pub async fn pids(&self, ns: &str, id: &str) -> Result<Vec<i32>> {
        self.get(ns, id)?.backend.pids().await
    }

    pub async fn stats(&self, ns: &str, id: &str) -> Result<Stats> {
        self.get(ns, id)?.backend.stats().await
    }

    pub async fn update(&self, ns: &str, id: &str, resources: &[u8]) -> Result<()> {
        let task = self.get(ns, id)?;
        let resources: LinuxResources = serde_json::from_slice(resources)
            .map_err(|e| TaskError::InvalidArgument(format!("update of {id}: resources: {e}")))?;
        task.backend.update(resources).await
    }

    pub async fn resize(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let task = self.get(ns, id)?;
        task.inner.lock().unwrap().proc(id, exec_id)?;
        if let Some(done) = task.backend.resize(exec_id, width, height).await {
            return done;
        }
        let inner = task.inner.lock().unwrap();
        let p = inner.proc(id, exec_id)?;
        match &p.master {
            Some(m) => stdio::resize(m, width, height)
                .map_err(|e| TaskError::Internal(format!("cannot resize the terminal: {e}"))),
            None => Err(TaskError::FailedPrecondition(format!(
                "{} has no terminal",
                if exec_id.is_empty() { id } else { exec_id }
            ))),
        }
    }

    pub fn close_io(&self, ns: &str, id: &str, exec_id: &str) -> Result<()> {
        let task = self.get(ns, id)?;
        let mut inner = task.inner.lock().unwrap();
        let p = inner.proc_mut(id, exec_id)?;
        p.close_stdin(self.keeper());
        Ok(())
    }
}
