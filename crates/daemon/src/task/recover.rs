//! A restarted daemon's recovery, and the removal of what containerd gave
//! up: tasks found again from their records, creates a dead daemon left
//! unfinished, containers no record names, and tasks whose containerd
//! connection was lost with a keeper.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ironcell_basics::exit_status;

use super::backend::blocking;
use super::record::{CreatingRecord, TaskRecord};
use super::{IoSpec, Task, TaskInner, Tasks};
use crate::error::{validate_id, validate_namespace, Result, TaskError};
use crate::keeper::{Keeper, ProcKey, Slot};
use crate::mount;
use crate::reaper::Exit;
use crate::stdio;

/// How long removing a given-up task waits for its killed init to exit.
const GIVE_UP_WAIT: Duration = Duration::from_secs(10);
/// How long containerd gets to delete the tasks it gave up with a lost
/// keeper before the daemon removes the rest itself.
const GIVEN_UP_GRACE: Duration = Duration::from_secs(10);
/// How long removing a given-up task waits for a create of it to end.
const CREATE_WAIT: Duration = Duration::from_secs(30);

impl Tasks {
    /// Rebuilds the task table from the records a previous daemon wrote and
    /// watches every process still alive: their exits come from the keeper,
    /// including those that happened while no daemon ran. A task directory
    /// without a record is a create that never finished: it is removed.
    pub async fn recover(self: &Arc<Self>) {
        self.pods.recover().await;
        self.pods.remove_lost().await;
        let Ok(namespaces) = std::fs::read_dir(self.host.root.join("tasks")) else {
            return;
        };
        for ns_dir in namespaces.flatten() {
            let Ok(ids) = std::fs::read_dir(ns_dir.path()) else {
                continue;
            };
            for dir in ids.flatten() {
                let dir = dir.path();
                let record = TaskRecord::read(&dir).filter(|r| {
                    validate_namespace(&r.namespace).is_ok() && validate_id("id", &r.id).is_ok()
                });
                let Some(r) = record else {
                    self.discard_unfinished(&dir).await;
                    continue;
                };
                self.recover_task(r, dir).await;
            }
        }
        // Tasks reached through a keeper that is gone were given up by
        // containerd; their deletes may never have reached a daemon.
        let current = self.keeper().map(Keeper::identity);
        let lost: Vec<Arc<Task>> = self
            .tasks
            .lock()
            .unwrap()
            .values()
            .filter(|t| t.keeper.is_some() && t.keeper != current)
            .cloned()
            .collect();
        self.remove_later(lost);
    }

    /// Task directory `dir` has no record: a create that never finished
    /// (the daemon died in it). What it made goes: the container, the
    /// rootfs mount, the directory. containerd, whose Create got no
    /// answer, sends it again or deletes the task.
    async fn discard_unfinished(&self, dir: &std::path::Path) {
        let creating = CreatingRecord::read(dir).filter(|r| {
            validate_namespace(&r.namespace).is_ok() && validate_id("id", &r.id).is_ok()
        });
        if let Some(c) = creating {
            tracing::warn!(namespace = %c.namespace, id = %c.id, "removing an unfinished create");
            let mut place = self.place(&c.namespace, &c.id, c.bundle.clone());
            place.dir = dir.to_path_buf();
            // A helper still making it is waited for: it is mid-create
            // (a helper that has not begun makes nothing once the claim
            // is taken over).
            if let Err(e) = self.backends.discard(&place).await {
                tracing::warn!(id = %c.id, error = %e, "cannot remove an unfinished create's container");
            }
            if c.rootfs_mounted {
                let rootfs = c.bundle.join("rootfs");
                let _ = blocking(move || {
                    mount::unmount_all(&rootfs);
                    Ok(())
                })
                .await;
            }
        } else {
            tracing::warn!("removing {}: no task record", dir.display());
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn recover_task(self: &Arc<Self>, r: TaskRecord, dir: PathBuf) {
        let mut place = self.place(&r.namespace, &r.id, r.bundle.clone());
        place.dir = dir;
        let backend = match self.backends.recover(r.kind(), &place) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(dir = %place.dir.display(), error = %e, "task not re-attached");
                return;
            }
        };
        let task = Arc::new(Task {
            namespace: r.namespace.clone(),
            id: r.id.clone(),
            bundle: r.bundle,
            containerd: r.containerd,
            dir: place.dir,
            rootfs_mounted: r.rootfs_mounted,
            backend,
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
            deleting: tokio::sync::Mutex::new(()),
            keeper: r.keeper,
        });
        let key = (task.namespace.clone(), task.id.clone());
        let live: Vec<(Option<String>, i32)> = {
            let inner = task.inner.lock().unwrap();
            inner
                .all()
                .filter(|(_, p)| p.alive())
                .map(|(k, p)| (k.cloned(), p.pid))
                .collect()
        };
        if !task.backend.outlives_daemon() {
            self.tasks.lock().unwrap().insert(key, task.clone());
            for (exec_id, pid) in live {
                // It ran in the daemon that died.
                let exit = Exit {
                    pid,
                    status: exit_status::KILLED,
                    at: SystemTime::now(),
                };
                self.on_exit(&task, exec_id, exit);
            }
            tracing::info!(namespace = %task.namespace, id = %task.id, "task re-attached (ended with the previous daemon)");
            return;
        }
        if task.backend.paused().await {
            self.paused.lock().unwrap().insert(key.clone());
        }
        self.tasks.lock().unwrap().insert(key, task.clone());
        let init_alive = live.iter().any(|(e, _)| e.is_none());
        // Before the exits are watched: an exit releases what the keeper
        // holds of the process's stdio, and output that waits there (a
        // process that ended while no daemon ran) must be taken first.
        self.reattach_io(&task).await;
        for (exec_id, pid) in live {
            self.watch_exit(&task, exec_id, pid);
        }
        if init_alive {
            self.watch_oom(&task).await;
        }
        tracing::info!(namespace = %task.namespace, id = %task.id, "task re-attached");
        if !task.bundle.exists() {
            // containerd removes a task's bundle only once it has given the
            // task up: its connection to the task's address was lost (the
            // keeper died) and its cleanup found no daemon to delete it.
            tracing::warn!(
                namespace = %task.namespace,
                id = %task.id,
                bundle = %task.bundle.display(),
                "the task's bundle is gone: containerd gave it up; removing it"
            );
            let (tasks, ns, id) = (self.clone(), task.namespace.clone(), task.id.clone());
            tokio::spawn(async move {
                if let Err(e) = tasks.give_up(&ns, &id).await {
                    tracing::warn!(namespace = %ns, id = %id, error = %e, "cannot remove a task containerd gave up");
                }
            });
        }
    }

    /// A restarted daemon takes the stdio of `task`'s live processes back
    /// from the keeper: the stdin relays and the terminals (or the backend
    /// takes back what it connected itself).
    async fn reattach_io(&self, task: &Task) {
        let Some(keeper) = self.keeper() else { return };
        let procs: Vec<(String, IoSpec, ProcKey)> = {
            let inner = task.inner.lock().unwrap();
            // Every live process, started or not: its relays began at
            // create, and a daemon killed between a Start and the record of
            // it must still give the terminal back (the re-sent Start then
            // finds the process running).
            inner
                .all()
                .filter(|(_, p)| p.alive())
                .map(|(e, p)| (e.cloned().unwrap_or_default(), p.io.clone(), p.key.clone()))
                .collect()
        };
        for (exec_id, io, key) in procs {
            if let Some(relay) = task.backend.reattach_stdio(&key, &exec_id, &io).await {
                let mut inner = task.inner.lock().unwrap();
                if let Ok(p) = inner.proc_mut(&task.id, &exec_id) {
                    p.stdin = relay;
                }
                continue;
            }
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
                match self.host.start_stdin(&key, &io.stdin, fifo, sink) {
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

    /// containerd has given task `id` up (its connection to the task was
    /// lost, and it runs the shim's `delete`): removes whatever of it
    /// exists. A create of it still running is waited for (a bounded time)
    /// first, since its task would otherwise appear after containerd has
    /// forgotten it. A task is then killed and deleted: its pid and exit
    /// are returned, as Delete answers them. Without one, any container of
    /// that name a backend left (a create cut short by a daemon's death, or
    /// that never reached one) is removed, and None is returned.
    pub async fn remove_given_up(&self, ns: &str, id: &str) -> Result<Option<(i32, Option<Exit>)>> {
        validate_namespace(ns)?;
        validate_id("task id", id)?;
        let key = (ns.to_string(), id.to_string());
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        while self.creating.lock().unwrap().contains(&key) {
            if tokio::time::Instant::now() > deadline {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {id} is still being created"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.get(ns, id).is_ok() {
            tracing::warn!(
                namespace = ns,
                id,
                "containerd gave up on the task: killing it"
            );
            return match self.give_up(ns, id).await {
                Ok(done) => Ok(Some(done)),
                // Deleted meanwhile by a request of its own.
                Err(TaskError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let place = self.place(ns, id, PathBuf::new());
        self.backends.discard(&place).await?;
        Ok(None)
    }

    /// Kills every process of task `id`, waits a bounded time for the
    /// init's end, and deletes the task.
    async fn give_up(&self, ns: &str, id: &str) -> Result<(i32, Option<Exit>)> {
        self.get(ns, id)?;
        let _ = self.kill(ns, id, "", libc::SIGKILL as u32, true).await;
        let _ = tokio::time::timeout(GIVE_UP_WAIT, self.wait(ns, id, "")).await;
        self.delete_now(ns, id, "").await
    }

    /// The keeper through which containerd reached every task now known
    /// was lost: their connections closed with it, so containerd gave them
    /// all up, and it deletes each through the shim's `delete`. A task
    /// still here after a grace period (that delete did not get through:
    /// its daemon died under it, or containerd's time for it ran out) is
    /// removed here. A task made since, under the same name, is not.
    pub fn remove_after_keeper_loss(self: &Arc<Self>) {
        let known: Vec<Arc<Task>> = self.tasks.lock().unwrap().values().cloned().collect();
        self.remove_later(known);
    }

    /// Removes `given_up` after the grace period, each unless containerd
    /// deleted it meanwhile (a task made since under the same name is
    /// another task, and stays).
    fn remove_later(self: &Arc<Self>, given_up: Vec<Arc<Task>>) {
        if given_up.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GIVEN_UP_GRACE).await;
            for task in given_up {
                let key = (task.namespace.clone(), task.id.clone());
                let same = me
                    .tasks
                    .lock()
                    .unwrap()
                    .get(&key)
                    .is_some_and(|t| Arc::ptr_eq(t, &task));
                if !same {
                    continue;
                }
                tracing::warn!(
                    namespace = %task.namespace,
                    id = %task.id,
                    "containerd gave up the task with the lost keeper and its delete did not come: removing it"
                );
                if let Err(e) = me.remove_given_up(&task.namespace, &task.id).await {
                    tracing::warn!(namespace = %task.namespace, id = %task.id, error = %e, "cannot remove a task containerd gave up");
                }
            }
        });
    }
}
