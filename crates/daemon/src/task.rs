//! Tasks: every container the daemon runs, of every containerd namespace,
//! with their processes (the init and each exec), their stdio and their
//! exits. The shim v2 Task service (`service.rs`) is a thin layer on this.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use ironcell_container::stats::Stats;
use ironcell_container::{ConsoleSocket, ContainerError};
use ironcell_oci::Bundle;
use ironcell_sandbox::{Kind, SandboxError, Sandboxes};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{validate_id, validate_namespace};
use crate::error::{Result, TaskError};
use crate::events::Publisher;
use crate::helper::{self, HelperStdio, Job};
use crate::keeper::{Keeper, ProcKey, Slot};
use crate::mount::{self, Mount};
use crate::oom;
use crate::pod::Pods;
use crate::reaper::{Exit, Reaper};
use crate::stdio::{self, StdinRelay};
use crate::time::{from_nanos, nanos, timestamp};
use crate::wasm::{WasmHost, WasmProc, WasmStdio};

/// Runs blocking sandbox work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TaskError::Internal(format!("internal error: {e}")))?
}

/// A process's stdio as containerd gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// The init process or one exec'd process.
struct Proc {
    /// The process's name at the keeper.
    key: ProcKey,
    pid: i32,
    io: IoSpec,
    started: bool,
    exit: watch::Sender<Option<Exit>>,
    stdin: Option<StdinRelay>,
    master: Option<File>,
    /// An exec's process.json (written at Exec, used at Start).
    spec: Option<PathBuf>,
    /// What the keeper may hold under `key` and has not been told to drop
    /// yet: the stdin relay's ends (a stdin FIFO) and the terminal's (a
    /// terminal). Told once; a process without either costs the keeper no
    /// message (a wasm task's or a plain one's end used to send it eight).
    kept: Kept,
}

#[derive(Debug, Clone, Copy, Default)]
struct Kept {
    stdin: bool,
    tty: bool,
}

impl Proc {
    fn new(io: IoSpec, key: ProcKey) -> Proc {
        Proc {
            kept: Kept {
                stdin: !io.stdin.is_empty(),
                tty: io.terminal,
            },
            key,
            pid: 0,
            io,
            started: false,
            exit: watch::channel(None).0,
            stdin: None,
            master: None,
            spec: None,
        }
    }

    fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Ends the process's stdin (CloseIO): the relay stops and the keeper
    /// drops its copy of the pipe.
    fn close_stdin(&mut self, keeper: Option<&Keeper>) {
        if let Some(s) = self.stdin.take() {
            s.close();
        }
        if let (Some(k), true) = (keeper, std::mem::take(&mut self.kept.stdin)) {
            k.release(&self.key, Slot::Stdin);
            k.release(&self.key, Slot::StdinFifo);
        }
    }

    /// The process is gone: nothing of its stdio is kept any more.
    fn release_io(&mut self, keeper: Option<&Keeper>) {
        self.close_stdin(keeper);
        if let (Some(k), true) = (keeper, std::mem::take(&mut self.kept.tty)) {
            k.release(&self.key, Slot::Tty);
            k.release(&self.key, Slot::TtyOut);
        }
    }
}

/// What is kept on disk of a process (`task.json`), for a restarted daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProcRecord {
    pid: i32,
    io: IoSpec,
    started: bool,
    /// Exit status and time (nanoseconds since the epoch).
    exit: Option<(u32, u64)>,
    spec: Option<PathBuf>,
}

impl ProcRecord {
    fn of(p: &Proc) -> ProcRecord {
        ProcRecord {
            pid: p.pid,
            io: p.io.clone(),
            started: p.started,
            exit: p.exited().map(|e| (e.status, nanos(e.at))),
            spec: p.spec.clone(),
        }
    }

    fn restore(self, key: ProcKey) -> Proc {
        let mut p = Proc::new(self.io, key);
        p.pid = self.pid;
        p.started = self.started;
        p.spec = self.spec;
        if let Some((status, at)) = self.exit {
            p.exit.send_replace(Some(Exit {
                pid: self.pid,
                status,
                at: from_nanos(at),
            }));
        }
        p
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TaskRecord {
    namespace: String,
    id: String,
    bundle: PathBuf,
    containerd: Option<String>,
    rootfs_mounted: bool,
    /// A wasm task (run in the daemon: it died with the daemon that ran it).
    #[serde(default)]
    wasm: bool,
    init: ProcRecord,
    execs: std::collections::BTreeMap<String, ProcRecord>,
}

/// A process's view for State and Wait.
#[derive(Debug, Clone)]
pub struct ProcView {
    pub pid: i32,
    pub status: ProcStatus,
    pub io: IoSpec,
    pub exit: Option<Exit>,
}

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
}

/// One container of one containerd namespace.
pub struct Task {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    /// containerd's ttrpc address, for this task's events.
    containerd: Option<String>,
    /// The sandbox library's state root for this namespace.
    root: PathBuf,
    /// Pid files, process specs.
    dir: PathBuf,
    rootfs_mounted: bool,
    /// The module of a wasm task, run in the daemon (`wasm.rs`).
    wasm: Option<Arc<WasmProc>>,
    inner: Mutex<TaskInner>,
    /// Watches the task's memory cgroup for OOM kills.
    oom: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Task {
    /// Writes the task's record (atomically: a new file renamed over).
    fn save(&self) {
        let record = {
            let inner = self.inner.lock().unwrap();
            TaskRecord {
                namespace: self.namespace.clone(),
                id: self.id.clone(),
                bundle: self.bundle.clone(),
                containerd: self.containerd.clone(),
                rootfs_mounted: self.rootfs_mounted,
                wasm: self.wasm.is_some(),
                init: ProcRecord::of(&inner.init),
                execs: inner
                    .execs
                    .iter()
                    .map(|(k, p)| (k.clone(), ProcRecord::of(p)))
                    .collect(),
            }
        };
        let path = self.dir.join("task.json");
        let r = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|b| ironcell_basics::atomic_file::write(&path, &b));
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot write {}", path.display());
        }
    }

    fn sandboxes(&self) -> Sandboxes {
        Sandboxes::new(&self.root, false)
    }

    fn view(&self, p: &Proc, paused: bool) -> ProcView {
        let status = match (p.exited(), p.started, paused) {
            (Some(_), _, _) => ProcStatus::Stopped,
            (None, false, _) => ProcStatus::Created,
            (None, true, true) => ProcStatus::Paused,
            (None, true, false) => ProcStatus::Running,
        };
        ProcView {
            pid: p.pid,
            status,
            io: p.io.clone(),
            exit: p.exited(),
        }
    }
}

type Key = (String, String);

/// Every task of every namespace.
pub struct Tasks {
    pub(crate) root: PathBuf,
    pub(crate) exe: PathBuf,
    pub(crate) reaper: Arc<Reaper>,
    /// Spawns the helpers and reports exits; None only in tests that never
    /// start a process.
    pub(crate) keeper: Option<Arc<Keeper>>,
    events: Publisher,
    /// Pods made through the sandbox API (`pod.rs`).
    pub pods: Arc<Pods>,
    /// Ids being created (a second Create of the same id fails at once).
    creating: Mutex<std::collections::HashSet<Key>>,
    tasks: Mutex<HashMap<Key, Arc<Task>>>,
    paused: Mutex<std::collections::HashSet<Key>>,
    counter: AtomicU64,
    /// The wasm runtime every wasm task shares.
    wasm: Arc<WasmHost>,
}

fn not_found(ns: &str, id: &str) -> TaskError {
    TaskError::NotFound(format!("task {id} not found in namespace {ns}"))
}

fn exec_not_found(id: &str, exec_id: &str) -> TaskError {
    TaskError::NotFound(format!("exec {exec_id} not found in task {id}"))
}

/// A cgroups path in systemd's `slice:prefix:name` form.
fn systemd_cgroup(bundle: &Bundle) -> bool {
    bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .and_then(|p| p.to_str())
        .is_some_and(|p| !p.starts_with('/') && p.split(':').count() == 3)
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
}

impl Tasks {
    pub fn new(
        root: PathBuf,
        exe: PathBuf,
        reaper: Arc<Reaper>,
        keeper: Option<Arc<Keeper>>,
        events: Publisher,
    ) -> Tasks {
        Tasks {
            wasm: Arc::new(WasmHost::new(root.join("wasm-cache"))),
            pods: Arc::new(Pods::new(
                root.clone(),
                exe.clone(),
                reaper.clone(),
                keeper.clone(),
            )),
            root,
            exe,
            reaper,
            keeper,
            events,
            creating: Mutex::default(),
            tasks: Mutex::default(),
            paused: Mutex::default(),
            counter: AtomicU64::new(0),
        }
    }

    /// Rebuilds the task table from the records a previous daemon wrote and
    /// watches every process still alive: their exits come from the keeper,
    /// including those that happened while no daemon ran. A task directory
    /// without a record is a create that never finished: it is removed.
    pub async fn recover(self: &Arc<Self>) {
        self.pods.recover();
        let Ok(namespaces) = std::fs::read_dir(self.root.join("tasks")) else {
            return;
        };
        for ns_dir in namespaces.flatten() {
            let Ok(ids) = std::fs::read_dir(ns_dir.path()) else {
                continue;
            };
            for dir in ids.flatten() {
                let dir = dir.path();
                let record: Option<TaskRecord> = std::fs::read(dir.join("task.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let Some(r) = record.filter(|r| {
                    validate_namespace(&r.namespace).is_ok() && validate_id("id", &r.id).is_ok()
                }) else {
                    tracing::warn!("removing {}: no task record", dir.display());
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                };
                let task = Arc::new(Task {
                    root: self.root.join("containers").join(&r.namespace),
                    namespace: r.namespace.clone(),
                    id: r.id.clone(),
                    bundle: r.bundle,
                    containerd: r.containerd,
                    dir,
                    rootfs_mounted: r.rootfs_mounted,
                    wasm: None,
                    inner: Mutex::new(TaskInner {
                        init: r.init.restore(ProcKey::new(&r.namespace, &r.id, "")),
                        execs: r
                            .execs
                            .into_iter()
                            .map(|(k, p)| {
                                let key = ProcKey::new(&r.namespace, &r.id, &k);
                                (k, p.restore(key))
                            })
                            .collect(),
                    }),
                    oom: Mutex::new(None),
                });
                if r.wasm {
                    let key = (task.namespace.clone(), task.id.clone());
                    self.tasks.lock().unwrap().insert(key, task.clone());
                    let pid = task.inner.lock().unwrap().init.pid;
                    if task.inner.lock().unwrap().init.exited().is_none() {
                        // Its module ran in the daemon that died.
                        let exit = Exit {
                            pid,
                            status: ironcell_basics::exit_status::KILLED,
                            at: SystemTime::now(),
                        };
                        self.on_exit(&task, None, exit);
                    }
                    tracing::info!(namespace = %task.namespace, id = %task.id, "wasm task re-attached (ended with the previous daemon)");
                    continue;
                }
                let t = task.clone();
                let paused = blocking(move || {
                    Ok(t.sandboxes()
                        .owner(&t.id)
                        .and_then(|b| b.state(&t.id))
                        .is_ok_and(|s| s.status == ironcell_oci::Status::Paused))
                })
                .await
                .unwrap_or(false);
                let key = (task.namespace.clone(), task.id.clone());
                if paused {
                    self.paused.lock().unwrap().insert(key.clone());
                }
                self.tasks.lock().unwrap().insert(key, task.clone());
                let live: Vec<(Option<String>, i32)> = {
                    let inner = task.inner.lock().unwrap();
                    std::iter::once((None, &inner.init))
                        .chain(inner.execs.iter().map(|(k, p)| (Some(k.clone()), p)))
                        .filter(|(_, p)| p.pid > 0 && p.exited().is_none())
                        .map(|(k, p)| (k, p.pid))
                        .collect()
                };
                let init_alive = live.iter().any(|(e, _)| e.is_none());
                for (exec_id, pid) in live {
                    self.watch_exit(&task, exec_id, pid);
                }
                if init_alive {
                    self.watch_oom(&task).await;
                }
                self.reattach_io(&task).await;
                tracing::info!(namespace = %task.namespace, id = %task.id, "task re-attached");
            }
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

    fn unique(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<i32> {
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
        if task.wasm.is_none() {
            self.watch_exit(&task, None, pid);
            self.watch_oom(&task).await;
        }
        self.events.publish(
            task.containerd.as_deref(),
            &task.namespace,
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
        let bundle =
            Bundle::load(&req.bundle).map_err(|e| TaskError::InvalidArgument(format!("{e}")))?;
        let systemd = systemd_cgroup(&bundle);
        self.pods.prepare_files(&req.namespace, &bundle.spec);
        let root = self.root.join("containers").join(&req.namespace);
        let dir = self.root.join("tasks").join(&req.namespace).join(&req.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| TaskError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let rootfs = req.bundle.join("rootfs");
        let mut task = Task {
            namespace: req.namespace.clone(),
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            containerd: req.containerd.clone(),
            root,
            dir,
            rootfs_mounted: false,
            wasm: None,
            inner: Mutex::new(TaskInner {
                init: Proc::new(req.io.clone(), ProcKey::new(&req.namespace, &req.id, "")),
                execs: HashMap::new(),
            }),
            oom: Mutex::new(None),
        };
        let undo = |task: &Task| {
            if task.rootfs_mounted {
                mount::unmount_all(&rootfs);
            }
            let _ = std::fs::remove_dir_all(&task.dir);
        };
        if !req.rootfs.is_empty() {
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
                undo(&task);
                return Err(e);
            }
            task.rootfs_mounted = true;
        }
        let kind = match Sandboxes::select(None, &bundle) {
            Ok(k) => k,
            Err(e) => {
                undo(&task);
                return Err(e.into());
            }
        };
        if kind == Kind::Vm {
            undo(&task);
            return Err(TaskError::InvalidArgument(
                "the vm sandbox is not served by ironcelld yet: run the container with \
                 containerd's runc shim and ironcell as its binary (docs/vm.md)"
                    .into(),
            ));
        }
        if kind == Kind::Wasm {
            return match self.create_wasm(&task, &bundle, &req.io).await {
                Ok((proc, stdin)) => {
                    task.wasm = Some(Arc::new(proc));
                    let mut inner = task.inner.lock().unwrap();
                    inner.init.pid = std::process::id() as i32;
                    inner.init.stdin = stdin;
                    drop(inner);
                    Ok(Arc::new(task))
                }
                Err(e) => {
                    undo(&task);
                    Err(e)
                }
            };
        }
        let pid_file = task.dir.join("init.pid");
        let job = |console: Option<PathBuf>| Job::Create {
            root: task.root.clone(),
            id: task.id.clone(),
            bundle: task.bundle.clone(),
            pid_file: pid_file.clone(),
            console_socket: console,
            systemd_cgroup: systemd,
        };
        let key = ProcKey::new(&task.namespace, &task.id, "");
        let started = self.spawn_process(&key, &req.io, job, &pid_file).await;
        match started {
            Ok(proc_io) => {
                let mut inner = task.inner.lock().unwrap();
                inner.init.pid = proc_io.pid;
                inner.init.stdin = proc_io.stdin;
                inner.init.master = proc_io.master;
            }
            Err(e) => {
                undo(&task);
                return Err(e);
            }
        }
        Ok(Arc::new(task))
    }

    /// A wasm task's module, checked, with its stdio open.
    async fn create_wasm(
        &self,
        task: &Task,
        bundle: &Bundle,
        io: &IoSpec,
    ) -> Result<(WasmProc, Option<StdinRelay>)> {
        let bad = |e: stdio::StdioError| TaskError::InvalidArgument(e.to_string());
        if io.terminal {
            return Err(TaskError::InvalidArgument(
                "wasm: a terminal is not supported for wasm tasks in ironcelld".into(),
            ));
        }
        let stdout = stdio::open_output("stdout", &io.stdout).map_err(bad)?;
        let stderr = stdio::open_output("stderr", &io.stderr).map_err(bad)?;
        let (stdin, relay) = if io.stdin.is_empty() {
            (None, None)
        } else {
            let (fd, sink) = stdio::stdin_pipe().map_err(bad)?;
            let key = ProcKey::new(&task.namespace, &task.id, "");
            let relay = self.start_stdin(&key, &io.stdin, None, sink).map_err(bad)?;
            (Some(fd), Some(relay))
        };
        let stdio = WasmStdio {
            stdin,
            stdout,
            stderr,
        };
        // A module whose program is in memory (the usual case: another task
        // of the same image ran before) is ready at once, here. One that
        // must be loaded from the disk cache or compiled takes milliseconds
        // to seconds: the async worker hands its other tasks over meanwhile
        // (block_in_place: the daemon's runtime is a multi-threaded one with
        // one worker, and another thread takes the worker over). A hop to
        // another thread, either way, costs more than the first case.
        let created = self.wasm.read(bundle).and_then(|module| {
            if module.compiled() {
                self.wasm.create(module, stdio)
            } else {
                tokio::task::block_in_place(|| self.wasm.create(module, stdio))
            }
        });
        match created {
            Ok(p) => Ok((p, relay)),
            Err(e) => {
                if let Some(r) = relay {
                    r.close();
                }
                Err(e)
            }
        }
    }

    /// Relays stdin FIFO `path` (or the already open `fifo`) into `sink`.
    /// The keeper holds copies of both ends meanwhile, so that across a
    /// daemon restart the process's stdin stays open and containerd's writes
    /// are buffered, and drops them when the relay ends by itself.
    fn start_stdin(
        &self,
        key: &ProcKey,
        path: &str,
        fifo: Option<OwnedFd>,
        sink: OwnedFd,
    ) -> Result<StdinRelay, stdio::StdioError> {
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

    /// A restarted daemon takes the stdio of `task`'s live processes back
    /// from the keeper: the stdin relays and the terminals.
    async fn reattach_io(&self, task: &Task) {
        let Some(keeper) = &self.keeper else { return };
        let procs: Vec<(String, IoSpec, ProcKey)> = {
            let inner = task.inner.lock().unwrap();
            std::iter::once((String::new(), &inner.init))
                .chain(inner.execs.iter().map(|(k, p)| (k.clone(), p)))
                // Every live process, started or not: its relays began at
                // create, and a daemon killed between a Start and the record
                // of it must still give the terminal back (the re-sent
                // Start then finds the process running).
                .filter(|(_, p)| p.pid > 0 && p.exited().is_none())
                .map(|(e, p)| (e, p.io.clone(), p.key.clone()))
                .collect()
        };
        for (exec_id, io, key) in procs {
            let (mut relay, mut master) = (None, None);
            let sink = if io.terminal {
                let Some(m) = keeper.fetch(&key, Slot::Tty).await else {
                    continue;
                };
                let m = File::from(m);
                let held = keeper.fetch(&key, Slot::TtyOut).await;
                let out = match held {
                    Some(fd) => Ok(Some(fd)),
                    None => stdio::open_output("stdout", &io.stdout),
                };
                match out {
                    Ok(out) => {
                        if let Err(e) = stdio::relay_output(&m, out) {
                            tracing::warn!(id = %task.id, error = %e, "terminal not re-attached");
                        }
                    }
                    Err(e) => tracing::warn!(id = %task.id, error = %e, "terminal not re-attached"),
                }
                let sink = m.try_clone().ok().map(OwnedFd::from);
                master = Some(m);
                sink.filter(|_| !io.stdin.is_empty())
            } else if !io.stdin.is_empty() {
                keeper.fetch(&key, Slot::Stdin).await
            } else {
                None
            };
            if let Some(sink) = sink {
                let fifo = keeper.fetch(&key, Slot::StdinFifo).await;
                match self.start_stdin(&key, &io.stdin, fifo, sink) {
                    Ok(r) => relay = Some(r),
                    Err(e) => tracing::warn!(id = %task.id, error = %e, "stdin not re-attached"),
                }
            }
            let mut inner = task.inner.lock().unwrap();
            if let Ok(p) = inner.proc_mut(&task.id, &exec_id) {
                p.stdin = relay;
                p.master = master;
            }
        }
    }

    /// Opens `io`, runs the helper job that forks the process, and returns
    /// the new process's pid and the daemon's ends of its stdio.
    async fn spawn_process(
        &self,
        key: &ProcKey,
        io: &IoSpec,
        job: impl FnOnce(Option<PathBuf>) -> Job,
        pid_file: &Path,
    ) -> Result<SpawnedIo> {
        let bad = |e: stdio::StdioError| TaskError::InvalidArgument(e.to_string());
        let console = if io.terminal {
            let dir = self.root.join("console");
            std::fs::create_dir_all(&dir).map_err(|e| {
                TaskError::Internal(format!("cannot create {}: {e}", dir.display()))
            })?;
            let path = dir.join(format!("{}-{}.sock", std::process::id(), self.unique()));
            Some(ConsoleSocket::bind(path).map_err(|e| TaskError::Internal(e.to_string()))?)
        } else {
            None
        };
        let mut stdin_relay = None;
        let hio = if io.terminal {
            HelperStdio {
                stdin: None,
                stdout: None,
                stderr: None,
            }
        } else {
            let stdin = if io.stdin.is_empty() {
                None
            } else {
                let (fd, sink) = stdio::stdin_pipe().map_err(bad)?;
                stdin_relay = Some(self.start_stdin(key, &io.stdin, None, sink).map_err(bad)?);
                Some(fd)
            };
            let outputs = stdio::open_output("stdout", &io.stdout)
                .and_then(|o| Ok((o, stdio::open_output("stderr", &io.stderr)?)));
            let (stdout, stderr) = match outputs {
                Ok(o) => o,
                Err(e) => {
                    if let Some(r) = stdin_relay {
                        r.close();
                    }
                    return Err(bad(e));
                }
            };
            HelperStdio {
                stdin,
                stdout,
                stderr,
            }
        };
        let job = job(console.as_ref().map(|c| c.path().to_path_buf()));
        let Some(keeper) = &self.keeper else {
            return Err(TaskError::Internal("no keeper to spawn processes".into()));
        };
        let result = helper::run(keeper, &self.reaper, &self.exe, &job, hio).await;
        let fail = |e: TaskError, relay: Option<StdinRelay>| {
            if let Some(r) = relay {
                r.close();
            }
            e
        };
        if let Err(e) = result {
            return Err(fail(TaskError::Internal(format!("{e:#}")), stdin_relay));
        }
        let pid = match std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            Some(pid) if pid > 0 => pid,
            _ => {
                return Err(fail(
                    TaskError::Internal(format!(
                        "no pid in {} after the process was created",
                        pid_file.display()
                    )),
                    stdin_relay,
                ))
            }
        };
        let mut master = None;
        if let Some(console) = console {
            let got = blocking(move || {
                console
                    .receive(ironcell_container::ConsoleSocket::TIMEOUT)
                    .map_err(|e| TaskError::Internal(e.to_string()))
            })
            .await;
            let m = match got {
                Ok(m) => m,
                Err(e) => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    return Err(e);
                }
            };
            let stdout = stdio::open_output("stdout", &io.stdout).map_err(bad)?;
            // The keeper holds the terminal's output FIFO open too: when no
            // daemon relays, containerd's reader must not see an EOF.
            if let (Some(k), Some(out)) = (&self.keeper, &stdout) {
                k.hold(key, Slot::TtyOut, out);
            }
            stdio::relay_output(&m, stdout)
                .map_err(|e| TaskError::Internal(format!("cannot relay the terminal: {e}")))?;
            let dup = |m: &File| {
                m.try_clone()
                    .map(OwnedFd::from)
                    .map_err(|e| TaskError::Internal(format!("terminal: {e}")))
            };
            if let Some(k) = &self.keeper {
                k.hold(key, Slot::Tty, &dup(&m)?);
            }
            if !io.stdin.is_empty() {
                stdin_relay = Some(
                    self.start_stdin(key, &io.stdin, None, dup(&m)?)
                        .map_err(bad)?,
                );
            }
            master = Some(m);
        }
        Ok(SpawnedIo {
            pid,
            stdin: stdin_relay,
            master,
        })
    }

    /// Publishes TaskOOM for each OOM kill in the task's memory cgroup.
    async fn watch_oom(&self, task: &Arc<Task>) {
        let t = task.clone();
        let dir = blocking(move || Ok(t.sandboxes().owner(&t.id)?.memory_cgroup(&t.id)?))
            .await
            .ok()
            .flatten()
            .filter(|d| oom::watchable(d));
        let Some(dir) = dir else {
            tracing::debug!(id = %task.id, "no memory cgroup to watch for OOM kills");
            return;
        };
        let events = self.events.clone();
        let (address, ns, id) = (
            task.containerd.clone(),
            task.namespace.clone(),
            task.id.clone(),
        );
        match oom::watch(dir, move || {
            tracing::info!(namespace = %ns, %id, "OOM kill");
            events.publish(
                address.as_deref(),
                &ns,
                TaskOOM {
                    container_id: id.clone(),
                    ..Default::default()
                },
            );
        }) {
            Ok(handle) => *task.oom.lock().unwrap() = Some(handle),
            Err(e) => tracing::warn!(id = %task.id, error = %e, "cannot watch for OOM kills"),
        }
    }

    /// Watches `pid` and records its exit for (task, exec_id).
    fn watch_exit(self: &Arc<Self>, task: &Arc<Task>, exec_id: Option<String>, pid: i32) {
        let rx = self.reaper.watch(pid);
        let tasks = self.clone();
        let task = task.clone();
        tokio::spawn(async move {
            let Ok(exit) = rx.await else { return };
            tasks.on_exit(&task, exec_id, exit);
        });
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
            p.release_io(self.keeper.as_deref());
            p.exit.send_replace(Some(exit));
        }
        task.save();
        if let (Some(k), None) = (&self.keeper, &task.wasm) {
            k.ack(exit.pid);
        }
        tracing::info!(
            namespace = %task.namespace, id = %task.id, exec_id = exec_id.as_deref().unwrap_or(""),
            pid = exit.pid, status = exit.status, "process exited"
        );
        self.events.publish(
            task.containerd.as_deref(),
            &task.namespace,
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

    pub async fn start(self: &Arc<Self>, ns: &str, id: &str, exec_id: &str) -> Result<i32> {
        let task = self.get(ns, id)?;
        if exec_id.is_empty() {
            {
                let inner = task.inner.lock().unwrap();
                if inner.init.started {
                    // Idempotent: the keeper re-sends a Start whose answer
                    // a dying daemon never wrote.
                    tracing::info!(id, "repeated Start: the task runs");
                    return Ok(inner.init.pid);
                }
                if inner.init.exited().is_some() {
                    return Err(TaskError::FailedPrecondition(format!(
                        "task {id} has exited: it cannot be started"
                    )));
                }
            }
            if task.wasm.is_none() {
                let t = task.clone();
                blocking(move || {
                    let sandboxes = t.sandboxes();
                    let b = sandboxes.owner(&t.id)?;
                    // Started already by a daemon that died before recording it.
                    if b.state(&t.id)?.status == ironcell_oci::Status::Created {
                        b.start(&t.id)?;
                    }
                    Ok(())
                })
                .await?;
            }
            let pid = {
                let mut inner = task.inner.lock().unwrap();
                inner.init.started = true;
                inner.init.pid
            };
            // A wasm task's record need not say it started: a restarted
            // daemon reports it ended either way.
            if task.wasm.is_none() {
                task.save();
            }
            self.events.publish(
                task.containerd.as_deref(),
                ns,
                TaskStart {
                    container_id: id.to_string(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
            // Run only now: its exit event must follow TaskStart.
            if let Some(proc) = task.wasm.clone() {
                if let Err(e) = self.start_wasm(&task, proc) {
                    // As a process that could not be exec'd.
                    let exit = Exit {
                        pid,
                        status: ironcell_basics::exit_status::CANNOT_EXECUTE,
                        at: SystemTime::now(),
                    };
                    self.on_exit(&task, None, exit);
                    return Err(e);
                }
            }
            return Ok(pid);
        }
        let (io, spec) = {
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
            if p.started && p.pid > 0 {
                tracing::info!(id, exec_id, "repeated Start: the exec runs");
                return Ok(p.pid);
            }
            if p.started {
                return Err(TaskError::FailedPrecondition(format!(
                    "exec {exec_id} is being started"
                )));
            }
            // Claimed now: a second Start of this exec fails above.
            p.started = true;
            (p.io.clone(), p.spec.clone().unwrap_or_default())
        };
        let pid_file = task.dir.join(format!("exec-{exec_id}.pid"));
        let job = |console| Job::Exec {
            root: task.root.clone(),
            id: task.id.clone(),
            process: spec.clone(),
            pid_file: pid_file.clone(),
            console_socket: console,
        };
        let key = ProcKey::new(ns, id, exec_id);
        let spawned = self.spawn_process(&key, &io, job, &pid_file).await;
        let _ = std::fs::remove_file(&pid_file);
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                if let Some(p) = task.inner.lock().unwrap().execs.get_mut(exec_id) {
                    p.started = false;
                }
                return Err(e);
            }
        };
        let pid = spawned.pid;
        {
            let mut inner = task.inner.lock().unwrap();
            if let Some(p) = inner.execs.get_mut(exec_id) {
                p.pid = pid;
                p.stdin = spawned.stdin;
                p.master = spawned.master;
            }
        }
        task.save();
        self.watch_exit(&task, Some(exec_id.to_string()), pid);
        self.events.publish(
            task.containerd.as_deref(),
            ns,
            TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Runs a wasm task's module; its end is the
    /// task's exit. Modules run on the wasm host's own thread pool, not the
    /// daemon's blocking pool: a long-running module must not hold up the
    /// short blocking work of other tasks.
    fn start_wasm(self: &Arc<Self>, task: &Arc<Task>, proc: Arc<WasmProc>) -> Result<()> {
        let (tasks, t) = (self.clone(), task.clone());
        let pid = std::process::id() as i32;
        let pool = self.wasm.pool()?;
        pool.spawn_blocking(move || {
            let status = tasks.wasm.run(&proc);
            let exit = Exit {
                pid,
                status,
                at: SystemTime::now(),
            };
            // Recorded right here: on_exit is synchronous (a channel send,
            // a watch update, the record's write), and a hop to an async
            // worker would cost a thread wake-up per task.
            tasks.on_exit(&t, None, exit);
        });
        Ok(())
    }

    /// Adds an exec process (started later by Start). `spec` is the OCI
    /// process as JSON.
    pub fn exec(&self, ns: &str, id: &str, exec_id: &str, io: IoSpec, spec: &[u8]) -> Result<()> {
        validate_id("exec id", exec_id)?;
        let task = self.get(ns, id)?;
        unsupported_for_wasm(&task, "exec")?;
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
        self.events.publish(
            task.containerd.as_deref(),
            ns,
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
            task.view(inner.proc(id, exec_id)?, paused)
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
        if let (true, Some(proc)) = (exec_id.is_empty(), &task.wasm) {
            self.wasm.kill(proc, signal);
            if view.status == ProcStatus::Created {
                // Never started: it ends now, as a killed process would.
                let exit = Exit {
                    pid: view.pid,
                    status: ironcell_basics::exit_status::of_signal(signal),
                    at: SystemTime::now(),
                };
                self.on_exit(&task, None, exit);
            }
            return Ok(());
        }
        if exec_id.is_empty() {
            let t = task.clone();
            return blocking(move || Ok(t.sandboxes().owner(&t.id)?.kill(&t.id, signal, all)?))
                .await;
        }
        if view.pid <= 0 {
            return Err(TaskError::FailedPrecondition(format!(
                "exec {exec_id} is not started"
            )));
        }
        // SAFETY: kill(2) with integers only.
        if unsafe { libc::kill(view.pid, signal) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Err(TaskError::NotFound(format!(
                    "process already finished: {exec_id}"
                )));
            }
            return Err(TaskError::Internal(format!(
                "cannot signal exec {exec_id}: {e}"
            )));
        }
        Ok(())
    }

    /// Waits until the process exits.
    pub async fn wait(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let task = self.get(ns, id)?;
        let mut rx = {
            let inner = task.inner.lock().unwrap();
            let p = inner.proc(id, exec_id)?;
            p.exit.subscribe()
        };
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| TaskError::NotFound(format!("task {id} was deleted while waiting")))?;
        Ok(exit.expect("wait_for returned a value"))
    }

    pub async fn delete(&self, ns: &str, id: &str, exec_id: &str) -> Result<(i32, Option<Exit>)> {
        let task = self.get(ns, id)?;
        if !exec_id.is_empty() {
            let mut inner = task.inner.lock().unwrap();
            let p = inner
                .execs
                .get(exec_id)
                .ok_or_else(|| exec_not_found(id, exec_id))?;
            if p.started && p.exited().is_none() {
                return Err(TaskError::FailedPrecondition(format!(
                    "exec {exec_id} is still running"
                )));
            }
            let mut p = inner.execs.remove(exec_id).expect("checked above");
            drop(inner);
            task.save();
            p.release_io(self.keeper.as_deref());
            if let Some(spec) = &p.spec {
                let _ = std::fs::remove_file(spec);
            }
            return Ok((p.pid, p.exited()));
        }
        let (pid, exit) = {
            let inner = task.inner.lock().unwrap();
            let view = task.view(&inner.init, self.is_paused(&task));
            if matches!(view.status, ProcStatus::Running | ProcStatus::Paused) {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {id} must be stopped before it is deleted: it is {}",
                    if view.status == ProcStatus::Paused {
                        "paused"
                    } else {
                        "running"
                    }
                )));
            }
            (inner.init.pid, inner.init.exited())
        };
        // A wasm task has no sandbox state: no trip to the blocking pool.
        if task.wasm.is_none() {
            let t = task.clone();
            blocking(move || {
                let sandboxes = t.sandboxes();
                match sandboxes.owner(&t.id) {
                    Ok(b) => b.delete(&t.id, true)?,
                    // Already gone (a delete that failed half-way before).
                    Err(SandboxError::Container(ContainerError::NotFound(_))) => {}
                    Err(e) => return Err(e.into()),
                }
                Ok(())
            })
            .await?;
        }
        let key = (ns.to_string(), id.to_string());
        let removed = self.tasks.lock().unwrap().remove(&key);
        self.paused.lock().unwrap().remove(&key);
        if let Some(t) = removed {
            let mut inner = t.inner.lock().unwrap();
            inner.init.release_io(self.keeper.as_deref());
            for p in inner.execs.values_mut() {
                p.release_io(self.keeper.as_deref());
            }
            // Waiters see the exit, or an error if there never was one.
            if inner.init.exited().is_none() && t.wasm.is_none() {
                self.reaper.forget(inner.init.pid);
            }
        }
        if let Some(h) = task.oom.lock().unwrap().take() {
            h.abort();
        }
        if task.rootfs_mounted {
            mount::unmount_all(&task.bundle.join("rootfs"));
        }
        let _ = std::fs::remove_dir_all(&task.dir);
        let (status, at) = exit
            .map(|e| (e.status, e.at))
            .unwrap_or((ironcell_basics::exit_status::KILLED, SystemTime::now()));
        self.events.publish(
            task.containerd.as_deref(),
            ns,
            TaskDelete {
                container_id: id.to_string(),
                pid: pid as u32,
                exit_status: status,
                exited_at: MessageField::some(timestamp(at)),
                id: id.to_string(),
                ..Default::default()
            },
        );
        tracing::info!(namespace = ns, id, "task deleted");
        Ok((pid, exit))
    }

    pub async fn pause(&self, ns: &str, id: &str, pause: bool) -> Result<()> {
        let task = self.get(ns, id)?;
        unsupported_for_wasm(&task, if pause { "pause" } else { "resume" })?;
        let t = task.clone();
        blocking(move || {
            let sandboxes = t.sandboxes();
            let b = sandboxes.owner(&t.id)?;
            if pause {
                b.pause(&t.id)?
            } else {
                b.resume(&t.id)?
            }
            Ok(())
        })
        .await?;
        let key = (ns.to_string(), id.to_string());
        if pause {
            self.paused.lock().unwrap().insert(key);
            self.events.publish(
                task.containerd.as_deref(),
                ns,
                TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        } else {
            self.paused.lock().unwrap().remove(&key);
            self.events.publish(
                task.containerd.as_deref(),
                ns,
                TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    pub async fn pids(&self, ns: &str, id: &str) -> Result<Vec<i32>> {
        let task = self.get(ns, id)?;
        if task.wasm.is_some() {
            // The module is no process of its own.
            return Ok(Vec::new());
        }
        blocking(move || Ok(task.sandboxes().owner(&task.id)?.pids(&task.id)?)).await
    }

    pub async fn stats(&self, ns: &str, id: &str) -> Result<Stats> {
        let task = self.get(ns, id)?;
        unsupported_for_wasm(&task, "metrics")?;
        blocking(move || Ok(task.sandboxes().owner(&task.id)?.stats(&task.id)?)).await
    }

    pub async fn update(&self, ns: &str, id: &str, resources: &[u8]) -> Result<()> {
        let task = self.get(ns, id)?;
        unsupported_for_wasm(&task, "update")?;
        let resources: LinuxResources = serde_json::from_slice(resources)
            .map_err(|e| TaskError::InvalidArgument(format!("update of {id}: resources: {e}")))?;
        blocking(move || {
            Ok(task
                .sandboxes()
                .owner(&task.id)?
                .update(&task.id, &resources)?)
        })
        .await
    }

    pub fn resize(&self, ns: &str, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let task = self.get(ns, id)?;
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
        p.close_stdin(self.keeper.as_deref());
        Ok(())
    }
}

/// Refuses `what` on a wasm task (run in the daemon: no process, cgroup
/// or container of its own).
fn unsupported_for_wasm(task: &Task, what: &str) -> Result<()> {
    match task.wasm {
        Some(_) => Err(TaskError::Unimplemented(format!(
            "{what} is not supported for wasm tasks"
        ))),
        None => Ok(()),
    }
}

/// What the daemon keeps of a started process's stdio.
struct SpawnedIo {
    pid: i32,
    stdin: Option<StdinRelay>,
    master: Option<File>,
}
