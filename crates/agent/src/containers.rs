//! The containers the host asked for, and their processes.
//!
//! Each container is made by ironcell's container engine (in a helper
//! process, see [`crate::helper`]) from the spec the host sent, under the
//! agent's state root: its bundle (that spec as
//! `config.json`) in `<root>/bundles/<id>`, the engine's state in
//! `<root>/state/<id>`. Its cgroup is always `/ironcell/<id>`: the host's
//! cgroup path names the host's hierarchy, which means nothing here.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ironcell_container::{ConsoleSocket, Engine};
use ironcell_oci::{Bundle, Status};
use ironcell_protocol::{check_id, MAX_DOCUMENT};
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};

use crate::helper::{self, Job};
use crate::oom::{oom_kills, OomWatch};
use crate::process::{Exit, Pipes, Process};
use crate::reaper::Reaper;
use crate::AgentError;
struct Entry {
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The container's memory cgroup, for OOM reports.
    memory: Option<PathBuf>,
}

pub struct Containers {
    engine: Engine,
    bundles: PathBuf,
    consoles: PathBuf,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    reaper: Arc<Reaper>,
    pub oom: Arc<OomWatch>,
    /// Names console sockets and process files uniquely.
    seq: AtomicU64,
}

fn lock_execs(entry: &Entry) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
    entry.execs.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many exited exec'd processes a container keeps the status of (for
/// a host that waits again, after its own restart). Beyond it the oldest
/// go: a liveness probe execs every few seconds for the pod's lifetime.
const EXITED_EXECS_KEPT: usize = 64;

/// Whether exec id `exec_id` names a process that has not exited. The id
/// of an exited one may be used again (containerd's clients reuse an exec
/// id once they deleted its process).
fn exec_id_taken(execs: &HashMap<String, Arc<Process>>, exec_id: &str) -> bool {
    execs.get(exec_id).is_some_and(|p| p.exit().is_none())
}

/// Forgets the oldest exited processes beyond [`EXITED_EXECS_KEPT`].
fn prune_exited(execs: &mut HashMap<String, Arc<Process>>) {
    let mut exited: Vec<(std::time::SystemTime, String)> = execs
        .iter()
        .filter_map(|(id, p)| p.exit().map(|e| (e.at, id.clone())))
        .collect();
    if exited.len() <= EXITED_EXECS_KEPT {
        return;
    }
    exited.sort();
    for (_, id) in &exited[..exited.len() - EXITED_EXECS_KEPT] {
        execs.remove(id);
    }
}

/// What the host learns of a container's state.
pub struct State {
    pub status: Status,
    pub pid: i32,
}

/// A guest without swap (no `/proc/swaps`: the kernel has no swap
/// support) has no `memory.swap.*` files in its cgroups, where a swap
/// limit (podman sets one with every memory limit) would fail the whole
/// create. Such a limit means nothing without swap: it is dropped.
fn drop_swap_limit(resources: &mut LinuxResources) {
    if std::path::Path::new("/proc/swaps").exists() {
        return;
    }
    if let Some(mut memory) = *resources.memory() {
        memory.set_swap(None);
        resources.set_memory(Some(memory));
    }
}

/// The spec of a container as the agent makes it from the host's
/// `config.json`: checked, its cgroup the guest's `/ironcell/<id>`, no
/// swap limit without swap; and whether its process has a terminal.
pub fn guest_spec(id: &str, spec_json: &[u8]) -> Result<(Spec, bool), AgentError> {
    check_id("container id", id)?;
    let mut spec: Spec = parse_json("config.json", spec_json)?;
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(PathBuf::from(format!("/ironcell/{id}"))));
    if let Some(mut r) = linux.resources().clone() {
        drop_swap_limit(&mut r);
        linux.set_resources(Some(r));
    }
    spec.set_linux(Some(linux));
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    Ok((spec, terminal))
}

/// An exec'd process from the host's JSON, and whether it has a terminal.
pub fn exec_process(process_json: &[u8]) -> Result<(OciProcess, bool), AgentError> {
    let process: OciProcess = parse_json("process", process_json)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(AgentError::Invalid(
            "process: args must name a program".into(),
        ));
    }
    let terminal = process.terminal().unwrap_or(false);
    Ok((process, terminal))
}

/// Resources for an update from the host's JSON.
pub fn guest_resources(resources_json: &[u8]) -> Result<LinuxResources, AgentError> {
    let mut resources: LinuxResources = parse_json("resources", resources_json)?;
    drop_swap_limit(&mut resources);
    Ok(resources)
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, AgentError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(AgentError::Invalid(format!(
            "{what} is {} bytes, more than the {MAX_DOCUMENT} allowed",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| AgentError::Invalid(format!("{what}: {e}")))
}

impl Containers {
    /// Containers under state root `root` (created if missing).
    pub fn new(
        root: &Path,
        reaper: Arc<Reaper>,
        oom: Arc<OomWatch>,
    ) -> Result<Containers, AgentError> {
        let bundles = root.join("bundles");
        let consoles = root.join("c");
        for d in [&bundles, &consoles] {
            fs::create_dir_all(d)
                .map_err(AgentError::io(format!("cannot create {}", d.display())))?;
        }
        Ok(Containers {
            engine: Engine::new(root.join("state"), false),
            bundles,
            consoles,
            entries: Mutex::new(HashMap::new()),
            reaper,
            oom,
            seq: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, AgentError> {
        check_id("container id", id)?;
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NoContainer(id.to_string()))
    }

    /// The process `exec_id` of container `id` (its init for "").
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, AgentError> {
        let entry = self.entry(id)?;
        if exec_id.is_empty() {
            return Ok(entry.init.clone());
        }
        check_id("exec id", exec_id)?;
        let process = lock_execs(&entry)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::NoProcess(id.to_string(), exec_id.to_string()));
        process
    }

    /// A console socket for one process's terminal.
    fn console(&self) -> Result<ConsoleSocket, AgentError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Ok(ConsoleSocket::bind(
            self.consoles.join(format!("{n}.sock")),
        )?)
    }

    /// Creates container `id` from the host's `config.json`; returns the
    /// init's pid. On failure nothing of it is left.
    pub fn create(&self, id: &str, spec_json: &[u8]) -> Result<i32, AgentError> {
        check_id("container id", id)?;
        if self.lock().contains_key(id) {
            return Err(AgentError::Exists(format!("container {id}")));
        }
        let (mut spec, terminal) = guest_spec(id, spec_json)?;
        if std::process::id() == 1 {
            crate::network::take_pod_sysctls(&mut spec)?;
            crate::pod_shm::prepare(&spec)?;
        }
        // The bundle directory is this create's claim on the id: a create
        // of the same id in flight on another connection fails here, and
        // never removes what is not its own.
        let dir = self.bundles.join(id);
        fs::create_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => AgentError::Exists(format!("container {id}")),
            _ => AgentError::io(format!("cannot create {}", dir.display()))(e),
        })?;
        let result = self.create_in(id, &dir, &spec, terminal);
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    fn create_in(
        &self,
        id: &str,
        dir: &Path,
        spec: &Spec,
        terminal: bool,
    ) -> Result<i32, AgentError> {
        let text = serde_json::to_vec(spec).map_err(|e| AgentError::Invalid(e.to_string()))?;
        fs::write(dir.join("config.json"), text)
            .map_err(AgentError::io("cannot write the bundle's config.json"))?;
        let bundle = Bundle::load(dir).map_err(ironcell_container::ContainerError::from)?;
        let (child_io, pipes) = Pipes::new(terminal)?;
        let console = if terminal {
            Some(self.console()?)
        } else {
            None
        };
        let spawning = self.reaper.spawn_lock();
        let pid = helper::run(
            &Job::Create {
                id,
                bundle: &bundle.path,
            },
            self.engine.root(),
            child_io,
            console.as_ref().map(|c| c.path()),
        )?;
        let container = match self.engine.load(id) {
            Ok(c) => c,
            Err(e) => {
                drop(spawning);
                self.discard(id);
                return Err(e.into());
            }
        };
        let tty = match &console {
            Some(c) => match c.receive(ironcell_container::ConsoleSocket::TIMEOUT) {
                Ok(t) => Some(t),
                Err(e) => {
                    drop(spawning);
                    self.discard(id);
                    return Err(e.into());
                }
            },
            None => None,
        };
        let init = Arc::new(Process::new(pid, pipes, tty));
        if !ironcell_oci::has_own_namespace(spec, oci_spec::runtime::LinuxNamespaceType::Pid) {
            self.kill_rest_with(id, &init);
        }
        self.reaper.watch(pid, init.clone());
        drop(spawning);
        let memory = container.memory_cgroup();
        if let Some(m) = &memory {
            self.oom.watch(id, m);
        }
        self.lock().insert(
            id.to_string(),
            Arc::new(Entry {
                init,
                execs: Mutex::new(HashMap::new()),
                memory,
            }),
        );
        Ok(pid)
    }

    /// Kills what is left of container `id` once `init` has exited. A
    /// container without a PID namespace of its own (a pod member in the
    /// pod's) keeps its other processes when its init ends, as the kernel
    /// ends them only with a namespace's init; they would hold the init's
    /// stdio open, and its wait would never answer. containerd's shim does
    /// the same for runc containers (`ShouldKillAllOnExit`).
    fn kill_rest_with(&self, id: &str, init: &Process) {
        let (engine, id) = (self.engine.clone(), id.to_string());
        init.on_exit(Box::new(move || {
            // Off the reaper's thread: the engine reads its state and the
            // cgroup's.
            let _ = std::thread::Builder::new()
                .name("kill-rest".into())
                .spawn(move || {
                    if let Ok(mut c) = engine.load(&id) {
                        let _ = c.kill(libc::SIGKILL, true);
                    }
                });
        }));
    }

    /// Removes a container the engine made but the agent could not finish.
    fn discard(&self, id: &str) {
        let _spawning = self.reaper.spawn_lock();
        if let Ok(mut c) = self.engine.load(id) {
            let _ = c.delete(true);
        }
    }

    pub fn start(&self, id: &str) -> Result<(), AgentError> {
        self.entry(id)?;
        let _spawning = self.reaper.spawn_lock();
        Ok(self.engine.load(id)?.start()?)
    }

    pub fn state(&self, id: &str) -> Result<State, AgentError> {
        let entry = self.entry(id)?;
        let c = self.engine.load(id)?;
        let status = match (c.status(), entry.init.exit()) {
            (_, Some(_)) => Status::Stopped,
            (s, None) => s,
        };
        Ok(State {
            status,
            pid: if status == Status::Stopped {
                0
            } else {
                entry.init.pid
            },
        })
    }

    /// Deletes container `id`: its processes (with `force`), cgroup, state
    /// and bundle.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), AgentError> {
        let entry = self.entry(id)?;
        {
            let _spawning = self.reaper.spawn_lock();
            let mut c = self.engine.load(id)?;
            if !force
                && entry.init.exit().is_none()
                && matches!(c.status(), Status::Running | Status::Paused)
            {
                return Err(AgentError::NotRunning(format!(
                    "cannot delete container {id}: it is {}, stop it first or use force",
                    c.status()
                )));
            }
            c.delete(true)?;
        }
        // Its processes are gone: their input ends, and output nobody
        // attached never will be.
        for p in std::iter::once(&entry.init).chain(lock_execs(&entry).values()) {
            p.close_stdin();
            p.discard_unattached();
        }
        self.oom.forget(id);
        self.lock().remove(id);
        let _ = fs::remove_dir_all(self.bundles.join(id));
        if std::process::id() == 1 {
            crate::pod_shm::remove(id);
        }
        Ok(())
    }

    pub fn pause(&self, id: &str) -> Result<(), AgentError> {
        self.entry(id)?;
        Ok(self.engine.load(id)?.pause()?)
    }

    pub fn resume(&self, id: &str) -> Result<(), AgentError> {
        self.entry(id)?;
        Ok(self.engine.load(id)?.resume()?)
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>, AgentError> {
        self.entry(id)?;
        Ok(self.engine.load(id)?.pids()?)
    }

    pub fn stats(&self, id: &str) -> Result<ironcell_container::stats::Stats, AgentError> {
        self.entry(id)?;
        let container = self.engine.load(id)?;
        let mut stats = container.stats()?;
        // cgroup v2 counts OOMs, OOM kills and hits of memory.max in
        // memory.events, not in memory.stat: the host reads them here
        // (`ironcell events` reports OOM kills from "oom_kill").
        let events = container
            .memory_cgroup()
            .and_then(|d| std::fs::read_to_string(d.join("memory.events")).ok())
            .unwrap_or_default();
        for (k, v) in events.lines().filter_map(|l| l.split_once(' ')) {
            if let ("oom" | "oom_kill" | "max", Ok(n)) = (k, v.trim().parse::<u64>()) {
                stats.memory.stats.entry(k.to_string()).or_insert(n);
            }
        }
        Ok(stats)
    }

    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), AgentError> {
        self.entry(id)?;
        let resources = guest_resources(resources_json)?;
        Ok(self.engine.load(id)?.update(&resources)?)
    }

    /// Starts process `exec_id` in container `id`; returns its pid.
    pub fn exec(&self, id: &str, exec_id: &str, process_json: &[u8]) -> Result<i32, AgentError> {
        let entry = self.entry(id)?;
        check_id("exec id", exec_id)?;
        if exec_id_taken(&lock_execs(&entry), exec_id) {
            return Err(AgentError::Exists(format!(
                "process {exec_id} of container {id}"
            )));
        }
        if entry.init.exit().is_some() {
            return Err(AgentError::NotRunning(format!(
                "cannot exec in container {id}: it is stopped"
            )));
        }
        // Checked here, where the error keeps its kind (the helper's
        // report is a line of text).
        match self.engine.load(id)?.status() {
            Status::Running => {}
            s => {
                return Err(AgentError::NotRunning(format!(
                    "cannot exec in container {id}: it is {s}, not running"
                )))
            }
        }
        let (process, terminal) = exec_process(process_json)?;
        // Named uniquely: a request for the same exec id may be in flight.
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let file = self
            .bundles
            .join(id)
            .join(format!("exec-{exec_id}-{n}.json"));
        let text = serde_json::to_vec(&process).map_err(|e| AgentError::Invalid(e.to_string()))?;
        fs::write(&file, text).map_err(AgentError::io("cannot write the process file"))?;
        let result = self.exec_file(&entry, id, exec_id, &file, terminal);
        let _ = fs::remove_file(&file);
        result
    }

    fn exec_file(
        &self,
        entry: &Entry,
        id: &str,
        exec_id: &str,
        file: &Path,
        terminal: bool,
    ) -> Result<i32, AgentError> {
        let (child_io, pipes) = Pipes::new(terminal)?;
        let console = if terminal {
            Some(self.console()?)
        } else {
            None
        };
        let spawning = self.reaper.spawn_lock();
        // Checked again under the spawn lock, which is held until the
        // process is recorded: of two requests for one exec id, one runs.
        if exec_id_taken(&lock_execs(entry), exec_id) {
            return Err(AgentError::Exists(format!(
                "process {exec_id} of container {id}"
            )));
        }
        let pid = helper::run(
            &Job::Exec { id, process: file },
            self.engine.root(),
            child_io,
            console.as_ref().map(|c| c.path()),
        )?;
        let tty = match &console {
            Some(c) => match c.receive(ironcell_container::ConsoleSocket::TIMEOUT) {
                Ok(t) => Some(t),
                Err(e) => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return Err(e.into());
                }
            },
            None => None,
        };
        let process = Arc::new(Process::new(pid, pipes, tty));
        self.reaper.watch(pid, process.clone());
        let mut execs = lock_execs(entry);
        execs.insert(exec_id.to_string(), process);
        prune_exited(&mut execs);
        drop(execs);
        drop(spawning);
        Ok(pid)
    }

    /// Sends `signal` to the init (with `all`, to every process of the
    /// container) or to an exec'd process.
    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| AgentError::Invalid(format!("signal {signal} is out of range")))?;
        if exec_id.is_empty() {
            let entry = self.entry(id)?;
            if entry.init.exit().is_some() && !all {
                return Err(AgentError::NotRunning(format!(
                    "container {id} is not running"
                )));
            }
            return Ok(self.engine.load(id)?.kill(signal, all)?);
        }
        let p = self.process(id, exec_id)?;
        if p.exit().is_some() {
            return Err(AgentError::NotRunning(format!(
                "process {exec_id} of container {id} is not running"
            )));
        }
        // SAFETY: kill(2) takes plain integers and touches no memory.
        if unsafe { libc::kill(p.pid, signal) } != 0 {
            return Err(AgentError::sys("kill")(nix::errno::Errno::last()));
        }
        Ok(())
    }

    /// Waits for process `exec_id` (the init for "") to exit and (unless
    /// `exit_only`) its output to be sent; with whether its container saw
    /// an OOM kill.
    pub fn wait(
        &self,
        id: &str,
        exec_id: &str,
        exit_only: bool,
    ) -> Result<(Exit, bool), AgentError> {
        let p = self.process(id, exec_id)?;
        let exit = if exit_only { p.wait_exit() } else { p.wait() };
        let oom = self
            .entry(id)
            .ok()
            .and_then(|e| e.memory.clone())
            .is_some_and(|m| oom_kills(&m.join("memory.events")) > 0);
        Ok((exit, oom))
    }

    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Kills every container's processes (before the VM powers off).
    pub fn kill_all(&self) {
        for id in self.ids() {
            if let Ok(mut c) = self.engine.load(&id) {
                let _ = c.kill(libc::SIGKILL, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Exit, Pipes};
    use std::time::{Duration, SystemTime};

    /// A process record without stdio, exited `age` ago (None: running).
    fn process(age: Option<u64>) -> Arc<Process> {
        let (_, pipes) = Pipes::new(true).unwrap();
        let p = Arc::new(Process::new(1, pipes, None));
        if let Some(age) = age {
            p.exited(Exit {
                code: 0,
                signal: 0,
                at: SystemTime::now() - Duration::from_secs(age),
            });
        }
        p
    }

    #[test]
    fn an_exited_execs_id_may_be_used_again_a_running_ones_may_not() {
        let mut execs = HashMap::new();
        execs.insert("running".to_string(), process(None));
        execs.insert("done".to_string(), process(Some(1)));
        assert!(exec_id_taken(&execs, "running"));
        assert!(!exec_id_taken(&execs, "done"));
        assert!(!exec_id_taken(&execs, "new"));
    }

    #[test]
    fn only_the_newest_exited_execs_are_kept() {
        let mut execs = HashMap::new();
        execs.insert("running".to_string(), process(None));
        for age in 0..EXITED_EXECS_KEPT as u64 + 10 {
            execs.insert(format!("e{age}"), process(Some(age)));
        }
        prune_exited(&mut execs);
        assert_eq!(execs.len(), EXITED_EXECS_KEPT + 1);
        assert!(execs.contains_key("running"));
        assert!(execs.contains_key("e0"), "the newest stays");
        let oldest = format!("e{}", EXITED_EXECS_KEPT + 9);
        assert!(!execs.contains_key(&oldest), "the oldest goes");
        assert!(execs.contains_key(&format!("e{}", EXITED_EXECS_KEPT - 1)));
        assert!(!execs.contains_key(&format!("e{EXITED_EXECS_KEPT}")));
    }
}
