//! The registry's lifecycle through a fake backend: create, start, exec,
//! kill, wait, delete and recovery after a restart, without root and
//! without forking anything.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ironcell_basics::exit_status;
use ironcell_container::stats::Stats;
use ironcell_oci::Bundle;
use oci_spec::runtime::LinuxResources;
use tokio::sync::mpsc;

use super::backend::{Announce, ExitSink};
use super::*;
use crate::events::Event;

/// The fake's world: its "processes" and what was asked of it. Shared by
/// the registries of one test, as the real processes outlive a daemon.
#[derive(Default)]
struct World {
    next_pid: AtomicI32,
    /// Pid to where its exit goes (the latest `watch`).
    sinks: Mutex<HashMap<i32, ExitSink>>,
    running: Mutex<HashSet<i32>>,
    paused: Mutex<HashSet<String>>,
    /// What the registry asked, in order.
    calls: Mutex<Vec<String>>,
    /// Tasks the backend deleted: a second delete fails, as the real
    /// container's state directory is gone by then.
    deleted: Mutex<HashSet<String>>,
    /// Whether its tasks outlive the daemon (false: as wasm tasks).
    dies_with_daemon: bool,
}

impl World {
    fn new(dies_with_daemon: bool) -> Arc<World> {
        Arc::new(World {
            next_pid: AtomicI32::new(100),
            dies_with_daemon,
            ..Default::default()
        })
    }

    fn call(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn spawn(&self) -> i32 {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.running.lock().unwrap().insert(pid);
        pid
    }

    /// Process `pid` ends with `status`: its watcher is told, if any.
    fn end(&self, pid: i32, status: u32) {
        self.running.lock().unwrap().remove(&pid);
        let sink = self.sinks.lock().unwrap().remove(&pid);
        if let Some(sink) = sink {
            sink(Exit {
                pid,
                status,
                at: SystemTime::now(),
            });
        }
    }
}

struct FakeBackends(Arc<World>);

struct FakeTask {
    world: Arc<World>,
    id: String,
    init: i32,
    /// The backend resizes the init's terminal too (as a VM pod member's,
    /// which has no pty on the host): a task of `/in-guest`.
    resizes_init: bool,
}

#[async_trait]
impl Backends for FakeBackends {
    async fn create(
        &self,
        place: &Place,
        bundle: &Bundle,
        _io: &IoSpec,
        _sandbox: Option<ironcell_sandbox::Kind>,
    ) -> Result<(Box<dyn TaskBackend>, Spawned)> {
        let args = bundle
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone());
        let hang = args.as_ref().is_some_and(|a| a[0] == "/hang");
        let slow = args.as_ref().is_some_and(|a| a[0] == "/slow");
        let resizes_init = args.as_ref().is_some_and(|a| a[0] == "/in-guest");
        if args.is_some_and(|a| a[0] == "/fail") {
            return Err(TaskError::InvalidArgument(
                "the fake cannot run /fail".into(),
            ));
        }
        let pid = self.0.spawn();
        self.0.call(format!("create {} {pid}", place.id));
        if hang {
            // A daemon killed in the middle of this create.
            std::future::pending::<()>().await;
        }
        if slow {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let task = FakeTask {
            world: self.0.clone(),
            id: place.id.clone(),
            init: pid,
            resizes_init,
        };
        Ok((
            Box::new(task),
            Spawned {
                pid,
                ..Default::default()
            },
        ))
    }

    async fn discard(&self, place: &Place) -> Result<()> {
        self.0.call(format!("discard {}", place.id));
        Ok(())
    }

    fn recover(&self, kind: TaskKind, place: &Place) -> Result<Box<dyn TaskBackend>> {
        assert_eq!(kind, TaskKind::Test);
        let record = TaskRecord::read(&place.dir).expect("recovered from a record");
        Ok(Box::new(FakeTask {
            world: self.0.clone(),
            id: place.id.clone(),
            init: record.init.pid,
            resizes_init: false,
        }))
    }
}

#[async_trait]
impl TaskBackend for FakeTask {
    fn kind(&self) -> TaskKind {
        TaskKind::Test
    }

    fn outlives_daemon(&self) -> bool {
        !self.world.dies_with_daemon
    }

    fn watch(&self, _exec_id: Option<&str>, pid: i32, on_exit: ExitSink) {
        if self.world.running.lock().unwrap().contains(&pid) {
            self.world.sinks.lock().unwrap().insert(pid, on_exit);
        }
    }

    async fn start(&self, announce: Announce<'_>) -> Result<()> {
        self.world.call(format!("start {}", self.id));
        announce();
        Ok(())
    }

    async fn exec(&self, _: &ProcKey, exec_id: &str, _: &IoSpec, spec: &Path) -> Result<Spawned> {
        assert!(spec.is_file(), "the exec's spec was written");
        let pid = self.world.spawn();
        self.world.call(format!("exec {} {exec_id} {pid}", self.id));
        Ok(Spawned {
            pid,
            ..Default::default()
        })
    }

    async fn signal(&self, exec: Option<(&str, i32)>, signal: i32, _all: bool) -> Result<()> {
        let pid = exec.map_or(self.init, |(_, pid)| pid);
        self.world.call(format!("signal {pid} {signal}"));
        self.world.end(pid, exit_status::of_signal(signal));
        Ok(())
    }

    async fn delete(&self, live_init: Option<i32>) -> Result<()> {
        self.world.call(format!("delete {} {live_init:?}", self.id));
        // A moment in which a second delete of the same task could start.
        tokio::time::sleep(Duration::from_millis(10)).await;
        if !self.world.deleted.lock().unwrap().insert(self.id.clone()) {
            return Err(TaskError::Internal(format!(
                "cannot delete container {}: its state is gone",
                self.id
            )));
        }
        if let Some(pid) = live_init {
            self.world.sinks.lock().unwrap().remove(&pid);
            self.world.running.lock().unwrap().remove(&pid);
        }
        Ok(())
    }

    async fn pause(&self, pause: bool) -> Result<()> {
        let mut paused = self.world.paused.lock().unwrap();
        if pause {
            paused.insert(self.id.clone());
        } else {
            paused.remove(&self.id);
        }
        Ok(())
    }

    async fn paused(&self) -> bool {
        self.world.paused.lock().unwrap().contains(&self.id)
    }

    async fn pids(&self) -> Result<Vec<i32>> {
        Ok(vec![self.init])
    }

    async fn stats(&self) -> Result<Stats> {
        Ok(Stats::default())
    }

    async fn update(&self, _: LinuxResources) -> Result<()> {
        Ok(())
    }

    async fn memory_cgroup(&self) -> Option<PathBuf> {
        None
    }

    async fn resize(&self, exec_id: &str, width: u32, height: u32) -> Option<Result<()>> {
        if exec_id.is_empty() && !self.resizes_init {
            return None;
        }
        self.world
            .call(format!("resize {exec_id} {width}x{height}"));
        Some(Ok(()))
    }
}

const CONTAINERD: &str = "/run/fake-containerd.sock";

/// A registry on `root` with the fake world's backend, and its events.
fn registry(root: &Path, world: &Arc<World>) -> (Arc<Tasks>, mpsc::UnboundedReceiver<Event>) {
    let host = Arc::new(Host::new(
        root.to_path_buf(),
        PathBuf::from("/nonexistent/ironcelld"),
        Arc::new(Reaper::default()),
        None,
    ));
    let (events, rx) = Publisher::capture();
    let tasks = Tasks::with_backends(host, Box::new(FakeBackends(world.clone())), events);
    (Arc::new(tasks), rx)
}

/// A bundle directory whose process runs `arg0`.
fn bundle(dir: &Path, name: &str, arg0: &str) -> PathBuf {
    let b = dir.join(name);
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    let config = format!(
        r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
            "process": {{"args": ["{arg0}"], "cwd": "/", "user": {{"uid": 0, "gid": 0}}}}}}"#
    );
    std::fs::write(b.join("config.json"), config).unwrap();
    b
}

fn request(id: &str, bundle: PathBuf) -> CreateRequest {
    CreateRequest {
        namespace: "ns".into(),
        containerd: Some(CONTAINERD.into()),
        id: id.into(),
        bundle,
        rootfs: Vec::new(),
        io: IoSpec::default(),
        sandbox: None,
    }
}

fn topics(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<&'static str> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e.topic.rsplit('/').next().unwrap_or(e.topic));
    }
    out
}

const EXEC_SPEC: &[u8] = br#"{"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#;

async fn wait_exit(tasks: &Tasks, id: &str, exec_id: &str) -> Exit {
    tokio::time::timeout(Duration::from_secs(5), tasks.wait("ns", id, exec_id))
        .await
        .expect("the exit came")
        .expect("wait answered")
}

#[tokio::test]
async fn lifecycle_create_start_exec_kill_wait_delete() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let (tasks, mut events) = registry(&dir.path().join("root"), &world);
    let b = bundle(dir.path(), "a", "/bin/sleep");

    let pid = tasks.create(request("a", b.clone())).await.unwrap();
    assert_eq!(
        tasks.state("ns", "a", "").unwrap().1.status,
        ProcStatus::Created
    );
    // The same Create again answers the same task; another bundle is refused.
    assert_eq!(tasks.create(request("a", b.clone())).await.unwrap(), pid);
    let other = bundle(dir.path(), "other", "/bin/sleep");
    let e = tasks.create(request("a", other)).await.unwrap_err();
    assert!(matches!(e, TaskError::AlreadyExists(_)), "{e}");

    assert_eq!(tasks.start("ns", "a", "").await.unwrap(), pid);
    assert_eq!(
        tasks.start("ns", "a", "").await.unwrap(),
        pid,
        "repeated Start"
    );
    assert_eq!(
        tasks.state("ns", "a", "").unwrap().1.status,
        ProcStatus::Running
    );

    tasks
        .exec("ns", "a", "e1", IoSpec::default(), EXEC_SPEC)
        .unwrap();
    let e = tasks
        .exec("ns", "a", "e1", IoSpec::default(), EXEC_SPEC)
        .unwrap_err();
    assert!(matches!(e, TaskError::AlreadyExists(_)), "{e}");
    let e = tasks.kill("ns", "a", "e1", 15, false).await.unwrap_err();
    assert!(
        matches!(e, TaskError::FailedPrecondition(_)),
        "not started: {e}"
    );
    let exec_pid = tasks.start("ns", "a", "e1").await.unwrap();
    assert_ne!(exec_pid, pid);
    assert_eq!(tasks.start("ns", "a", "e1").await.unwrap(), exec_pid);
    let e = tasks.delete("ns", "a", "e1").await.unwrap_err();
    assert!(matches!(e, TaskError::FailedPrecondition(_)), "{e}");
    world.end(exec_pid, 3);
    assert_eq!(wait_exit(&tasks, "a", "e1").await.status, 3);
    let (deleted_pid, exit) = tasks.delete("ns", "a", "e1").await.unwrap();
    assert_eq!((deleted_pid, exit.map(|e| e.status)), (exec_pid, Some(3)));

    tasks.pause("ns", "a", true).await.unwrap();
    assert_eq!(
        tasks.state("ns", "a", "").unwrap().1.status,
        ProcStatus::Paused
    );
    let e = tasks.delete("ns", "a", "").await.unwrap_err();
    assert!(e.to_string().contains("it is paused"), "{e}");
    tasks.pause("ns", "a", false).await.unwrap();

    tasks.kill("ns", "a", "", 9, false).await.unwrap();
    let exit = wait_exit(&tasks, "a", "").await;
    assert_eq!((exit.pid, exit.status), (pid, exit_status::KILLED));
    let e = tasks.kill("ns", "a", "", 9, false).await.unwrap_err();
    assert!(matches!(e, TaskError::NotFound(_)), "{e}");
    let e = tasks.exec("ns", "a", "late", IoSpec::default(), EXEC_SPEC);
    assert!(matches!(e, Err(TaskError::FailedPrecondition(_))));

    let (_, exit) = tasks.delete("ns", "a", "").await.unwrap();
    assert_eq!(exit.map(|e| e.status), Some(exit_status::KILLED));
    assert!(matches!(tasks.get("ns", "a"), Err(TaskError::NotFound(_))));
    assert!(
        !dir.path().join("root/tasks/ns/a").exists(),
        "its directory is gone"
    );
    assert_eq!(
        topics(&mut events),
        [
            "create",
            "start",
            "exec-added",
            "exec-started",
            "exit",
            "paused",
            "resumed",
            "exit",
            "delete"
        ]
    );
    assert_eq!(
        world.calls(),
        [
            format!("create a {pid}"),
            "start a".into(),
            format!("exec a e1 {exec_pid}"),
            format!("signal {pid} 9"),
            "delete a None".into(),
        ]
    );
}

#[tokio::test]
async fn a_terminal_is_resized_by_a_backend_that_resizes() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let (tasks, _events) = registry(&dir.path().join("root"), &world);
    let pid = tasks
        .create(request("a", bundle(dir.path(), "a", "/bin/sleep")))
        .await
        .unwrap();
    tasks.start("ns", "a", "").await.unwrap();
    tasks
        .exec("ns", "a", "e1", IoSpec::default(), EXEC_SPEC)
        .unwrap();
    tasks.start("ns", "a", "e1").await.unwrap();
    tasks.resize("ns", "a", "e1", 101, 33).await.unwrap();
    // An unknown exec is not the backend's to answer, nor the init's
    // terminal (none here: its relay's pty master would be resized).
    let e = tasks.resize("ns", "a", "nope", 1, 1).await.unwrap_err();
    assert!(matches!(e, TaskError::NotFound(_)), "{e}");
    let e = tasks.resize("ns", "a", "", 1, 1).await.unwrap_err();
    assert!(e.to_string().contains("has no terminal"), "{e}");
    let calls = world.calls();
    assert_eq!(
        calls[calls.len() - 2..],
        [format!("exec a e1 {}", pid + 1), "resize e1 101x33".into()]
    );
    // A backend that carries the init's terminal resizes it.
    tasks
        .create(request("b", bundle(dir.path(), "b", "/in-guest")))
        .await
        .unwrap();
    tasks.resize("ns", "b", "", 80, 24).await.unwrap();
    assert_eq!(world.calls().last().unwrap(), "resize  80x24");
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_and_a_created_task_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let root = dir.path().join("root");
    let (tasks, _events) = registry(&root, &world);
    let e = tasks
        .create(request("bad", bundle(dir.path(), "bad", "/fail")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot run /fail"), "{e}");
    assert!(!root.join("tasks/ns/bad").exists());
    // The id is free again.
    let pid = tasks
        .create(request("bad", bundle(dir.path(), "good", "/bin/true")))
        .await
        .unwrap();
    // Deleted before it started: the backend kills its init, and a waiter
    // learns that exit.
    let waiter = {
        let tasks = tasks.clone();
        tokio::spawn(async move { tasks.wait("ns", "bad", "").await })
    };
    tokio::task::yield_now().await;
    tasks.delete("ns", "bad", "").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waited.map(|e| e.status).ok(), Some(exit_status::KILLED));
    assert!(world.calls().contains(&format!("delete bad Some({pid})")));
    let bad_ids = ["", "../x", "a/b"];
    for id in bad_ids {
        let r = tasks
            .create(request(id, bundle(dir.path(), "good", "/bin/true")))
            .await;
        assert!(
            matches!(r, Err(TaskError::InvalidArgument(_))),
            "{id}: {r:?}"
        );
    }
}

#[tokio::test]
async fn a_restarted_registry_finds_its_tasks_and_their_exits() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let root = dir.path().join("root");
    let (pid, exec_pid) = {
        let (tasks, _events) = registry(&root, &world);
        let pid = tasks
            .create(request("a", bundle(dir.path(), "a", "/bin/sleep")))
            .await
            .unwrap();
        tasks.start("ns", "a", "").await.unwrap();
        tasks
            .exec("ns", "a", "e", IoSpec::default(), EXEC_SPEC)
            .unwrap();
        let exec_pid = tasks.start("ns", "a", "e").await.unwrap();
        tasks.pause("ns", "a", true).await.unwrap();
        (pid, exec_pid)
    };
    // A directory without any record (left by an older daemon).
    std::fs::create_dir_all(root.join("tasks/ns/half")).unwrap();

    let (tasks, mut events) = registry(&root, &world);
    tasks.recover().await;
    assert!(
        !root.join("tasks/ns/half").exists(),
        "an unfinished create is removed"
    );
    assert!(!world.calls().iter().any(|c| c.starts_with("discard")));
    let (task, view) = tasks.state("ns", "a", "").unwrap();
    assert_eq!((view.pid, view.status), (pid, ProcStatus::Paused));
    assert_eq!(task.bundle, dir.path().join("a"));
    tasks.pause("ns", "a", false).await.unwrap();
    // Exits after the restart reach the new registry, in the record too.
    world.end(exec_pid, 0);
    assert_eq!(wait_exit(&tasks, "a", "e").await.status, 0);
    world.end(pid, 1);
    assert_eq!(wait_exit(&tasks, "a", "").await.status, 1);
    let record = TaskRecord::read(&root.join("tasks/ns/a")).unwrap();
    assert_eq!(record.kind(), TaskKind::Test);
    assert_eq!(record.init.exit.map(|e| e.0), Some(1));
    assert_eq!(topics(&mut events), ["resumed", "exit", "exit"]);
    tasks.delete("ns", "a", "").await.unwrap();
}

/// containerd removed the bundle of a task it gave up while no daemon
/// could delete the task: the next daemon kills and deletes it. A task
/// whose bundle is still there is kept.
#[tokio::test]
async fn a_restarted_registry_removes_tasks_whose_bundle_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let root = dir.path().join("root");
    let (gone_pid, kept_pid) = {
        let (tasks, _events) = registry(&root, &world);
        let gone = tasks
            .create(request("gone", bundle(dir.path(), "gone", "/bin/sleep")))
            .await
            .unwrap();
        let kept = tasks
            .create(request("kept", bundle(dir.path(), "kept", "/bin/sleep")))
            .await
            .unwrap();
        tasks.start("ns", "gone", "").await.unwrap();
        tasks.start("ns", "kept", "").await.unwrap();
        (gone, kept)
    };
    std::fs::remove_dir_all(dir.path().join("gone")).unwrap();
    let (tasks, _events) = registry(&root, &world);
    tasks.recover().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tasks.get("ns", "gone").is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task was not removed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(world.calls().contains(&format!("signal {gone_pid} 9")));
    assert!(
        !root.join("tasks/ns/gone").exists(),
        "its record is removed"
    );
    assert!(!world.running.lock().unwrap().contains(&gone_pid));
    assert!(tasks.get("ns", "kept").is_ok());
    assert!(world.running.lock().unwrap().contains(&kept_pid));
    assert!(!world.calls().contains(&format!("signal {kept_pid} 9")));
}

/// containerd gives a task up (its connection was lost) while the task is
/// still being created: the removal waits for the create, then kills and
/// deletes the task it made, so that no task outlives containerd's
/// knowledge of it. A task never created leaves the backend a discard.
#[tokio::test]
async fn a_task_given_up_mid_create_is_removed_once_created() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let root = dir.path().join("root");
    let (tasks, _events) = registry(&root, &world);
    let creating = {
        let (tasks, b) = (tasks.clone(), bundle(dir.path(), "s", "/slow"));
        tokio::spawn(async move { tasks.create(request("s", b)).await })
    };
    while !world.calls().iter().any(|c| c.starts_with("create s")) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (pid, exit) = tasks
        .remove_given_up("ns", "s")
        .await
        .unwrap()
        .expect("the created task was removed");
    assert_eq!(creating.await.unwrap().unwrap(), pid);
    assert_eq!(exit.map(|e| e.status), Some(exit_status::KILLED));
    assert!(world.calls().contains(&format!("signal {pid} 9")));
    assert!(tasks.get("ns", "s").is_err());
    assert!(!root.join("tasks/ns/s").exists(), "its record is removed");

    assert_eq!(tasks.remove_given_up("ns", "never").await.unwrap(), None);
    assert!(world.calls().contains(&"discard never".to_string()));
    assert!(tasks.remove_given_up("ns", "../x").await.is_err());
}

/// containerd's own delete of a task it gave up and the shim's `delete`
/// can come at the same moment: one of them deletes the task, the other
/// finds it gone; neither fails.
#[tokio::test]
async fn two_removals_of_a_given_up_task_at_once_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let (tasks, _events) = registry(&dir.path().join("root"), &world);
    let pid = tasks
        .create(request("t", bundle(dir.path(), "t", "/bin/sleep")))
        .await
        .unwrap();
    tasks.start("ns", "t", "").await.unwrap();
    let (a, b) = tokio::join!(
        tasks.remove_given_up("ns", "t"),
        tasks.remove_given_up("ns", "t")
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.is_some() != b.is_some(),
        "exactly one removal deleted the task: {a:?} {b:?}"
    );
    assert_eq!(a.or(b).map(|(p, _)| p), Some(pid));
    let deletes = world
        .calls()
        .iter()
        .filter(|c| c.starts_with("delete t"))
        .count();
    assert_eq!(deletes, 1, "{:?}", world.calls());
    assert!(tasks.get("ns", "t").is_err());
}

/// ttrpc drops a request's handler when containerd's connection closes:
/// a create cut off that way still runs to its end, leaving a task that
/// containerd's cleanup then finds, not a half-made one.
#[tokio::test]
async fn a_create_whose_request_is_dropped_still_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let root = dir.path().join("root");
    let (tasks, _events) = registry(&root, &world);
    let cut = tokio::time::timeout(
        Duration::from_millis(50),
        tasks.create(request("s", bundle(dir.path(), "s", "/slow"))),
    )
    .await;
    assert!(
        cut.is_err(),
        "the request was cut off before the create ended"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tasks.get("ns", "s").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the create never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(TaskRecord::read(&root.join("tasks/ns/s")).is_some());
}

/// A keeper was lost: the tasks known then were given up by containerd.
/// One whose delete never comes is removed after the grace period; one
/// containerd deleted meanwhile, and made again under the same name, is
/// not touched.
#[tokio::test(start_paused = true)]
async fn tasks_given_up_with_a_lost_keeper_are_removed_after_a_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let root = dir.path().join("root");
    let (tasks, _events) = registry(&root, &world);
    let stale = tasks
        .create(request("stale", bundle(dir.path(), "stale", "/bin/sleep")))
        .await
        .unwrap();
    tasks
        .create(request("again", bundle(dir.path(), "again", "/bin/sleep")))
        .await
        .unwrap();
    tasks.remove_after_keeper_loss();
    // containerd's own clean-up of "again" came, then a new "again".
    tasks.delete("ns", "again", "").await.unwrap();
    let new = tasks
        .create(request("again", bundle(dir.path(), "again2", "/bin/sleep")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        tasks.get("ns", "stale").is_ok(),
        "removed before the grace period"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(tasks.get("ns", "stale").is_err(), "the stale task stays");
    assert!(world.calls().contains(&format!("signal {stale} 9")));
    assert!(tasks.get("ns", "again").is_ok());
    assert!(!world.calls().contains(&format!("signal {new} 9")));
}

/// A restarted daemon finds a task recorded with a keeper that is not the
/// one serving now: containerd gave it up with that keeper, and the task
/// is removed after the grace period. One with no keeper recorded stays.
#[tokio::test(start_paused = true)]
async fn a_task_of_a_lost_keeper_is_removed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let root = dir.path().join("root");
    let pid = {
        let (tasks, _events) = registry(&root, &world);
        tasks
            .create(request("kept", bundle(dir.path(), "kept", "/bin/sleep")))
            .await
            .unwrap();
        tasks
            .create(request("lost", bundle(dir.path(), "lost", "/bin/sleep")))
            .await
            .unwrap()
    };
    let record_dir = root.join("tasks/ns/lost");
    let mut record = TaskRecord::read(&record_dir).unwrap();
    record.keeper = Some("4242:1".into());
    record.write(&record_dir);
    let (tasks, _events) = registry(&root, &world);
    tasks.recover().await;
    assert!(
        tasks.get("ns", "lost").is_ok(),
        "removed before the grace period"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(tasks.get("ns", "lost").is_err());
    assert!(world.calls().contains(&format!("signal {pid} 9")));
    assert!(tasks.get("ns", "kept").is_ok());
}

#[tokio::test]
async fn tasks_that_die_with_the_daemon_are_reported_killed() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(true);
    let root = dir.path().join("root");
    {
        let (tasks, _events) = registry(&root, &world);
        tasks
            .create(request("w", bundle(dir.path(), "w", "/m.wasm")))
            .await
            .unwrap();
        tasks.start("ns", "w", "").await.unwrap();
    }
    let (tasks, mut events) = registry(&root, &world);
    tasks.recover().await;
    let exit = wait_exit(&tasks, "w", "").await;
    assert_eq!(exit.status, exit_status::KILLED);
    assert_eq!(topics(&mut events), ["exit"]);
    let e = tasks.start("ns", "w", "").await.unwrap_err();
    assert!(matches!(e, TaskError::FailedPrecondition(_)), "{e}");
}

/// The daemon dies in the middle of a create: the next one removes what
/// the create made (through the backend's discard, with nothing known of
/// it but its names and bundle), and the Create that containerd sends
/// again makes the task anew.
#[tokio::test]
async fn a_create_cut_short_is_discarded_and_can_be_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(false);
    let root = dir.path().join("root");
    let hung_bundle = bundle(dir.path(), "h", "/hang");
    {
        let (tasks, _events) = registry(&root, &world);
        let creating = {
            let tasks = tasks.clone();
            let b = hung_bundle.clone();
            tokio::spawn(async move { tasks.create(request("h", b)).await })
        };
        while !world.calls().iter().any(|c| c.starts_with("create h")) {
            tokio::task::yield_now().await;
        }
        creating.abort();
        assert!(root.join("tasks/ns/h").exists());
    }
    let (tasks, _events) = registry(&root, &world);
    tasks.recover().await;
    assert!(
        world.calls().contains(&"discard h".to_string()),
        "{:?}",
        world.calls()
    );
    assert!(!root.join("tasks/ns/h").exists());
    assert!(matches!(tasks.get("ns", "h"), Err(TaskError::NotFound(_))));
    // containerd's Create again (the same bundle, now runnable).
    let same_bundle = bundle(dir.path(), "h", "/bin/true");
    assert_eq!(same_bundle, hung_bundle);
    let pid = tasks.create(request("h", same_bundle)).await.unwrap();
    assert!(pid > 0);
    tasks.delete("ns", "h", "").await.unwrap();
}
