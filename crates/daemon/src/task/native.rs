//! Native tasks: containers of the namespace and vm sandboxes (the
//! `sandbox` library, as the CLI runs them). Their processes are forked by
//! helper jobs (`helper.rs`) under the keeper, which reaps them and reports
//! their exits through the reaper. A vm container that owns its VM has a
//! relay for its process (docs/vm.md): it owns the VM, carries the stdio,
//! and ends with the container's status, so the VM outlives a daemon
//! restart as any container's processes do.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ironcell_container::stats::Stats;
use ironcell_container::ConsoleSocket;
use ironcell_oci::Bundle;
use ironcell_sandbox::Sandboxes;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::claim;
use crate::error::{Result, TaskError};
use crate::helper::{self, HelperStdio, Job};
use crate::keeper::{ProcKey, Slot};
use crate::stdio::{self, StdinRelay};

use super::backend::{
    blocking, Announce, Backends, ExitSink, Host, Place, Spawned, TaskBackend, TaskKind,
};
use super::IoSpec;

/// The init's pid file in a task's directory (the helper writes it; its
/// path on the helper's command line names the job).
const INIT_PID: &str = "init.pid";
/// How long removing a container waits for a helper still making it.
const HELPER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Makes native tasks.
pub struct NativeBackends {
    pub host: Arc<Host>,
}

/// One native task.
pub struct NativeTask {
    host: Arc<Host>,
    place: Place,
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

#[async_trait]
impl Backends for NativeBackends {
    async fn create(
        &self,
        place: &Place,
        bundle: &Bundle,
        io: &IoSpec,
        sandbox: Option<ironcell_sandbox::Kind>,
    ) -> Result<(Box<dyn TaskBackend>, Spawned)> {
        let (task, spawned) =
            NativeTask::create(&self.host, place, bundle, io, sandbox, false).await?;
        Ok((Box::new(task), spawned))
    }

    async fn discard(&self, place: &Place) -> Result<()> {
        // A create cut short may have left its helper running: what it
        // makes is removed once it is done (`claim.rs`).
        let taken = claim::take_over(&place.claim(), &place.abandoned_claim(), HELPER_WAIT)
            .await
            .map_err(|e| TaskError::Internal(e.to_string()))?;
        if taken.timed_out {
            tracing::warn!(id = %place.id, "a helper still makes the container being removed");
        }
        remove_container(place).await
    }

    fn recover(&self, kind: TaskKind, place: &Place) -> Result<Box<dyn TaskBackend>> {
        debug_assert_eq!(kind, TaskKind::Native);
        Ok(Box::new(NativeTask::of(&self.host, place)))
    }
}

/// Deletes `place`'s container with force (its processes killed, its
/// cgroup and state removed), if it exists, and whatever is left of its
/// state directory.
async fn remove_container(place: &Place) -> Result<()> {
    let (root, id) = (place.state_root.clone(), place.id.clone());
    blocking(move || Ok(Sandboxes::new(&root, false).remove(&id)?)).await
}

impl NativeTask {
    /// Makes `place`'s container from `bundle`; its init is created, not
    /// started.
    pub async fn create(
        host: &Arc<Host>,
        place: &Place,
        bundle: &Bundle,
        io: &IoSpec,
        sandbox: Option<ironcell_sandbox::Kind>,
        detach_vm: bool,
    ) -> Result<(NativeTask, Spawned)> {
        let pid_file = place.dir.join(INIT_PID);
        let systemd_cgroup = systemd_cgroup(bundle);
        let job = |console_socket| Job::Create {
            root: place.state_root.clone(),
            id: place.id.clone(),
            bundle: place.bundle.clone(),
            claim: place.claim(),
            pid_file: pid_file.clone(),
            console_socket,
            systemd_cgroup,
            sandbox,
            detach_vm,
        };
        let key = ProcKey::new(&place.namespace, &place.id, "");
        let spawned = spawn_process(host, &key, io, job, &pid_file).await?;
        Ok((NativeTask::of(host, place), spawned))
    }

    /// The task of a container that exists.
    pub fn of(host: &Arc<Host>, place: &Place) -> NativeTask {
        NativeTask {
            host: host.clone(),
            place: place.clone(),
        }
    }

    /// Removes the task's container with force, if it exists.
    pub async fn remove(&self) -> Result<()> {
        remove_container(&self.place).await
    }

    /// Whether the task's container has a PID namespace of its own. One
    /// that has not (a pod's container in the pod's shared namespace) keeps
    /// its other processes when its init ends, since the kernel ends a
    /// namespace's processes only with that namespace's init; they are
    /// killed when the init's exit is seen ([`TaskBackend::watch`]).
    fn owns_pid_namespace(&self) -> bool {
        Bundle::load(&self.place.bundle).is_ok_and(|b| {
            ironcell_oci::has_own_namespace(&b.spec, oci_spec::runtime::LinuxNamespaceType::Pid)
        })
    }

    /// Hands the exit of `pid` (a process of the keeper's) to `on_exit`,
    /// then acknowledges it to the keeper, which keeps each exit until the
    /// daemon has recorded it.
    pub fn watch_exit(&self, pid: i32, on_exit: ExitSink) {
        self.watch_pid(pid, false, on_exit);
    }

    /// [`NativeTask::watch_exit`]; with `kill_rest`, the container's other
    /// processes are killed before the exit is told, as containerd's shim
    /// does for runc (`ShouldKillAllOnExit`).
    fn watch_pid(&self, pid: i32, kill_rest: bool, on_exit: ExitSink) {
        let rx = self.host.reaper.watch(pid);
        let keeper = self.host.keeper.clone();
        let (root, id) = (self.place.state_root.clone(), self.place.id.clone());
        tokio::spawn(async move {
            let Ok(exit) = rx.await else { return };
            if kill_rest {
                let _ = blocking(move || {
                    Ok(Sandboxes::new(&root, false)
                        .owner(&id)?
                        .kill(&id, libc::SIGKILL, true)?)
                })
                .await;
            }
            on_exit(exit);
            if let Some(k) = keeper {
                k.ack(exit.pid);
            }
        });
    }

    /// Runs `f` on the sandbox that owns the task's container, on the
    /// blocking pool.
    async fn on_sandbox<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&dyn ironcell_sandbox::Sandbox, &str) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (root, id) = (self.place.state_root.clone(), self.place.id.clone());
        blocking(move || f(Sandboxes::new(&root, false).owner(&id)?, &id)).await
    }
}

#[async_trait]
impl TaskBackend for NativeTask {
    fn kind(&self) -> TaskKind {
        TaskKind::Native
    }

    fn watch(&self, exec_id: Option<&str>, pid: i32, on_exit: ExitSink) {
        let kill_rest = exec_id.is_none() && !self.owns_pid_namespace();
        self.watch_pid(pid, kill_rest, on_exit);
    }

    async fn start(&self, announce: Announce<'_>) -> Result<()> {
        self.on_sandbox(|b, id| {
            // Started already by a daemon that died before recording it.
            if b.state(id)?.status == ironcell_oci::Status::Created {
                b.start(id)?;
            }
            Ok(())
        })
        .await?;
        announce();
        Ok(())
    }

    async fn exec(
        &self,
        key: &ProcKey,
        exec_id: &str,
        io: &IoSpec,
        spec: &Path,
    ) -> Result<Spawned> {
        let pid_file = self.place.dir.join(format!("exec-{exec_id}.pid"));
        let job = |console_socket| Job::Exec {
            root: self.place.state_root.clone(),
            id: self.place.id.clone(),
            process: spec.to_path_buf(),
            pid_file: pid_file.clone(),
            console_socket,
        };
        let spawned = spawn_process(&self.host, key, io, job, &pid_file).await;
        let _ = std::fs::remove_file(&pid_file);
        spawned
    }

    async fn signal(&self, exec: Option<(&str, i32)>, signal: i32, all: bool) -> Result<()> {
        let Some((exec_id, pid)) = exec else {
            return self
                .on_sandbox(move |b, id| Ok(b.kill(id, signal, all)?))
                .await;
        };
        // SAFETY: kill(2) with integers only.
        if unsafe { libc::kill(pid, signal) } != 0 {
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

    async fn delete(&self, live_init: Option<i32>) -> Result<()> {
        self.remove().await?;
        if let Some(pid) = live_init {
            self.host.reaper.forget(pid);
        }
        Ok(())
    }

    async fn pause(&self, pause: bool) -> Result<()> {
        self.on_sandbox(move |b, id| {
            if pause {
                b.pause(id)?
            } else {
                b.resume(id)?
            }
            Ok(())
        })
        .await
    }

    async fn paused(&self) -> bool {
        self.on_sandbox(|b, id| Ok(b.state(id)?.status == ironcell_oci::Status::Paused))
            .await
            .unwrap_or(false)
    }

    async fn pids(&self) -> Result<Vec<i32>> {
        self.on_sandbox(|b, id| Ok(b.pids(id)?)).await
    }

    async fn stats(&self) -> Result<Stats> {
        self.on_sandbox(|b, id| Ok(b.stats(id)?)).await
    }

    async fn update(&self, resources: LinuxResources) -> Result<()> {
        self.on_sandbox(move |b, id| Ok(b.update(id, &resources)?))
            .await
    }

    async fn memory_cgroup(&self) -> Option<PathBuf> {
        self.on_sandbox(|b, id| Ok(b.memory_cgroup(id)?))
            .await
            .ok()
            .flatten()
    }

    async fn oom_waiter(&self) -> Option<ironcell_sandbox::OomWaiter> {
        self.on_sandbox(|b, id| Ok(b.oom_waiter(id)?))
            .await
            .ok()
            .flatten()
    }
}

/// Opens `io`, runs the helper job that forks the process, and returns
/// the new process's pid and the daemon's ends of its stdio.
async fn spawn_process(
    host: &Host,
    key: &ProcKey,
    io: &IoSpec,
    job: impl FnOnce(Option<PathBuf>) -> Job,
    pid_file: &Path,
) -> Result<Spawned> {
    let bad = |e: stdio::StdioError| TaskError::InvalidArgument(e.to_string());
    let console = if io.terminal {
        let dir = host.root.join("console");
        std::fs::create_dir_all(&dir)
            .map_err(|e| TaskError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{}-{}.sock", std::process::id(), host.unique()));
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
            stdin_relay = Some(host.start_stdin(key, &io.stdin, None, sink).map_err(bad)?);
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
    let fail = |e: TaskError, relay: Option<StdinRelay>| {
        if let Some(r) = relay {
            r.close();
        }
        e
    };
    let Some(keeper) = &host.keeper else {
        return Err(fail(
            TaskError::Internal("no keeper to spawn processes".into()),
            stdin_relay,
        ));
    };
    let generation = match helper::run(keeper, &host.reaper, &host.exe, &job, hio).await {
        Ok(g) => g,
        Err(e) => return Err(fail(TaskError::Internal(format!("{e:#}")), stdin_relay)),
    };
    let pid = match helper::read_pid_file(pid_file) {
        Some(pid) => pid,
        None => {
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
                .receive(ConsoleSocket::TIMEOUT)
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
        if let (Some(k), Some(out)) = (&host.keeper, &stdout) {
            k.hold(key, Slot::TtyOut, out);
        }
        stdio::relay_output(&m, stdout)
            .map_err(|e| TaskError::Internal(format!("cannot relay the terminal: {e}")))?;
        let dup = |m: &File| {
            m.try_clone()
                .map(OwnedFd::from)
                .map_err(|e| TaskError::Internal(format!("terminal: {e}")))
        };
        keeper.hold(key, Slot::Tty, &dup(&m)?);
        if !io.stdin.is_empty() {
            stdin_relay = Some(
                host.start_stdin(key, &io.stdin, None, dup(&m)?)
                    .map_err(bad)?,
            );
        }
        master = Some(m);
    }
    // Re-parented to the keeper the helper ran under, which may be lost by
    // now; an exit that came meanwhile is kept for this.
    host.reaper.expect(pid, generation);
    Ok(Spawned {
        pid,
        stdin: stdin_relay,
        master,
    })
}
