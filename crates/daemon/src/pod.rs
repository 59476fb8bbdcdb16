//! Pods without a pause container, for containerd's sandbox APIs (1.7's on
//! the shim side, `pod_service.rs`; 2.x's controller, `controller.rs`):
//! containerd's CRI asks for a pod, then creates the pod's containers on
//! the task endpoints (docs/daemon.md). For the namespace sandbox, a pod is
//! a tiny holder process that owns the pod's IPC and UTS namespaces (and
//! its PID namespace when the pod shares one, and joins the pod's network
//! namespace when there is one): the pid containerd builds the
//! containers' namespace paths from (`/proc/<pid>/ns/...`). It is
//! `ironcelld helper pod` (`helper.rs`), a child of the keeper like every
//! container process: no image, no rootfs, no container set-up. A VM
//! pod's holder is its VM's (`pod_vm.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ironcell_sandbox::Kind;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::detach::detached;
use crate::error::TaskError;
use crate::keeper::Keeper;
use crate::pod_config::PodConfig;
use crate::pod_files::PodFiles;
use crate::pod_vm::VmHolder;
use crate::reaper::Exit;
use crate::reaper::Reaper;
use crate::time::{from_nanos, nanos};

/// How long Stop waits for the holder to go.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// One pod.
pub struct Pod {
    netns: String,
    /// The pod's hostname (a namespace pod's holder sets it in the pod's
    /// UTS namespace; a VM pod's holder spec has it), and the sysctls a
    /// namespace pod's holder sets in its namespaces (checked; paths under
    /// `/proc/sys`; a VM pod's go in its holder's spec).
    hostname: String,
    sysctls: Vec<(String, String)>,
    /// The pod's `/etc/resolv.conf` from its DNS config, or empty: the
    /// host's (see [`Pods::prepare_files`]).
    resolv_conf: String,
    /// The pod's VM holder, for a VM pod (`pod_vm.rs`).
    vm: Option<VmHolder>,
    /// A namespace pod whose containers share one PID namespace: its
    /// holder forks that namespace's init, whose pid is the pod's
    /// (containerd makes the containers' namespace paths from it), found
    /// once ([`Pod::namespace_pid`]).
    pid_namespace: bool,
    namespace_pid: Mutex<i32>,
    /// The cgroup the pod's containers share (the CRI's `cgroup_parent`,
    /// cgroupfs driver), or empty: the holder goes there, and the pod's
    /// metrics come from there.
    cgroup: String,
    created: SystemTime,
    pid: Mutex<i32>,
    exit: watch::Sender<Option<Exit>>,
    /// One start at a time (containerd, or the keeper, may send it twice).
    starting: tokio::sync::Mutex<()>,
    /// The keeper the holder was spawned by ([`Keeper::identity`]).
    /// containerd reaches the pod through that keeper: once it is lost,
    /// containerd counts the pod as ended and never stops it.
    keeper: Mutex<Option<String>>,
}

impl Pod {
    /// The pid whose namespaces are the pod's: the holder's, or the init
    /// of the PID namespace it made (its only child), 0 while neither is
    /// known.
    fn namespace_pid(&self) -> i32 {
        let holder = *self.pid.lock().unwrap();
        if !self.pid_namespace || holder <= 0 {
            return holder;
        }
        let mut known = self.namespace_pid.lock().unwrap();
        if *known == 0 {
            *known = std::fs::read_to_string(format!("/proc/{holder}/task/{holder}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
        }
        *known
    }
}

/// What is kept on disk of a pod (`<root>/pods/<ns>/<id>.json`), for a
/// restarted daemon.
#[derive(serde::Serialize, serde::Deserialize)]
struct PodRecord {
    netns: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    sysctls: Vec<(String, String)>,
    #[serde(default)]
    resolv_conf: String,
    #[serde(default)]
    cgroup: String,
    created_nanos: u64,
    pid: i32,
    /// [`Pod::keeper`] (absent from older records).
    #[serde(default)]
    keeper: Option<String>,
    /// A VM pod (its holder is a relay; absent from older records).
    #[serde(default)]
    vm: bool,
    #[serde(default)]
    pid_namespace: bool,
}

/// The pods of every namespace, each a holder process the keeper runs;
/// recorded under `<root>/pods/<ns>/<id>.json` for a restarted daemon.
pub struct Pods {
    root: PathBuf,
    /// The binary the helpers run (`helper pod`, `helper create`).
    exe: PathBuf,
    reaper: Arc<Reaper>,
    keeper: Option<Arc<Keeper>>,
    pods: Mutex<HashMap<(String, String), Arc<Pod>>>,
}

impl Pods {
    pub fn new(
        root: PathBuf,
        exe: PathBuf,
        reaper: Arc<Reaper>,
        keeper: Option<Arc<Keeper>>,
    ) -> Pods {
        Pods {
            root,
            exe,
            reaper,
            keeper,
            pods: Mutex::default(),
        }
    }
}

impl Pods {
    fn file(&self, ns: &str, id: &str) -> std::path::PathBuf {
        self.root.join("pods").join(ns).join(format!("{id}.json"))
    }

    fn save(&self, ns: &str, id: &str, pod: &Pod) {
        let path = self.file(ns, id);
        let record = PodRecord {
            netns: pod.netns.clone(),
            hostname: pod.hostname.clone(),
            resolv_conf: pod.resolv_conf.clone(),
            sysctls: pod.sysctls.clone(),
            cgroup: pod.cgroup.clone(),
            created_nanos: nanos(pod.created),
            pid: *pod.pid.lock().unwrap(),
            keeper: pod.keeper.lock().unwrap().clone(),
            vm: pod.vm.is_some(),
            pid_namespace: pod.pid_namespace,
        };
        let r = path
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|()| {
                let data = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
                ironcell_basics::atomic_file::write(&path, &data)
            });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot write {}", path.display());
        }
    }

    /// Watches a pod's holder (for a VM pod, its hypervisor, and the holder
    /// in the guest); its exit (from the keeper) ends the pod.
    fn watch(&self, pod: &Arc<Pod>, id: &str, pid: i32) {
        if let Some(holder) = &pod.vm {
            holder.stop_vm_with_holder(id);
        }
        let rx = self.reaper.watch(pid);
        let (keeper, p) = (self.keeper.clone(), pod.clone());
        tokio::spawn(async move {
            if let Ok(exit) = rx.await {
                p.exit.send_replace(Some(exit));
                if let Some(k) = keeper {
                    k.ack(exit.pid);
                }
            }
        });
    }

    /// A restarted daemon takes back the pods a previous one made. A pod
    /// recorded without a holder (pid 0) was created, and maybe being
    /// started when the previous daemon died: what such a start made is
    /// ended, and the pod is created again, for the Start the keeper
    /// re-sends.
    pub async fn recover(&self) {
        let Ok(namespaces) = std::fs::read_dir(self.root.join("pods")) else {
            return;
        };
        let mut cut_off = Vec::new();
        for ns in namespaces.flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                let Some(id) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                    continue;
                };
                let record: Option<PodRecord> = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let Some(r) = record.filter(|_| {
                    crate::error::validate_namespace(&ns_name).is_ok()
                        && crate::error::validate_id("sandbox id", &id).is_ok()
                }) else {
                    let _ = std::fs::remove_file(&path);
                    continue;
                };
                let pod = Arc::new(Pod {
                    vm: r.vm.then(|| VmHolder::new(&self.root, &ns_name, &id)),
                    pid_namespace: r.pid_namespace,
                    namespace_pid: Mutex::new(0),
                    netns: r.netns,
                    hostname: r.hostname,
                    resolv_conf: r.resolv_conf,
                    sysctls: r.sysctls,
                    cgroup: r.cgroup,
                    created: from_nanos(r.created_nanos),
                    pid: Mutex::new(r.pid),
                    exit: watch::channel(None).0,
                    starting: Default::default(),
                    keeper: Mutex::new(r.keeper),
                });
                if r.pid > 0 {
                    self.watch(&pod, &id, r.pid);
                    tracing::info!(namespace = %ns_name, %id, "pod re-attached");
                } else {
                    cut_off.push((ns_name.clone(), id.clone()));
                }
                self.pods.lock().unwrap().insert((ns_name.clone(), id), pod);
            }
        }
        for (ns, id) in cut_off {
            let Ok(pod) = self.get(&ns, &id) else {
                continue;
            };
            tracing::info!(namespace = %ns, %id, "pod re-attached, not started");
            let reset = match &pod.vm {
                Some(holder) => holder.discard_start(&id).await,
                None => {
                    end_holder(&pod, &ns, &id).await;
                    Ok(())
                }
            };
            if let Err(e) = reset {
                tracing::warn!(namespace = %ns, %id, error = %e, "cannot make the pod's VM again: removing the pod");
                self.remove(&ns, &id).await;
            }
        }
    }

    pub fn get(&self, ns: &str, id: &str) -> Result<Arc<Pod>, TaskError> {
        self.pods
            .lock()
            .unwrap()
            .get(&(ns.to_string(), id.to_string()))
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("sandbox {id} not found in namespace {ns}")))
    }

    /// Records a pod; `options` is the CRI's PodSandboxConfig (protobuf),
    /// when containerd sends it. The pod is a VM pod when its runtime
    /// handler asks for one (`kind`) or its annotation
    /// `io.ironcell.sandbox` does: its holder's bundle is written now.
    pub fn create(
        &self,
        ns: &str,
        id: &str,
        netns: &str,
        options: Option<&[u8]>,
        kind: Option<Kind>,
    ) -> Result<(), TaskError> {
        crate::error::validate_namespace(ns)?;
        crate::error::validate_id("sandbox id", id)?;
        let config = match options {
            Some(bytes) => PodConfig::decode(bytes)?,
            None => PodConfig::default(),
        };
        let vm = match (kind, config.annotations.get(SANDBOX_ANNOTATION)) {
            (Some(k), _) => k,
            (None, Some(k)) => k.parse::<Kind>().map_err(|e| {
                TaskError::InvalidArgument(format!(
                    "sandbox {id}: annotation {SANDBOX_ANNOTATION}: {e}"
                ))
            })?,
            (None, None) => Kind::Namespace,
        };
        let vm = match vm {
            Kind::Vm => true,
            Kind::Namespace => false,
            other => {
                return Err(TaskError::InvalidArgument(format!(
                    "sandbox {id}: a pod runs in the namespace or the vm sandbox, not in {other}"
                )))
            }
        };
        let mut pods = self.pods.lock().unwrap();
        let key = (ns.to_string(), id.to_string());
        if pods.contains_key(&key) {
            return Ok(()); // the keeper may re-send a Create
        }
        let holder = vm.then(|| VmHolder::new(&self.root, ns, id));
        // A VM pod's hostname and sysctls go in its holder's spec.
        let sysctls = match &holder {
            Some(h) => {
                h.write_bundle(id, netns, &config)?;
                Vec::new()
            }
            None => config.holder_sysctls(!netns.is_empty() && !config.host_network)?,
        };
        let pod = Arc::new(Pod {
            netns: netns.to_string(),
            hostname: config.hostname.clone(),
            sysctls,
            resolv_conf: config.resolv_conf.clone(),
            pid_namespace: !vm && config.shared_pid && !config.host_pid,
            namespace_pid: Mutex::new(0),
            vm: holder,
            cgroup: config.cgroup_parent,
            created: SystemTime::now(),
            pid: Mutex::new(0),
            exit: watch::channel(None).0,
            starting: Default::default(),
            // The keeper containerd reached the pod through: if it is lost
            // before the pod starts, containerd gave the pod up with it.
            keeper: Mutex::new(self.keeper.as_ref().map(|k| k.identity())),
        });
        // Recorded now: a Start the keeper re-sends to the next daemon
        // finds the pod.
        self.save(ns, id, &pod);
        pods.insert(key, pod);
        Ok(())
    }

    /// [`Pods::create`] on the blocking pool, off the async threads (a VM
    /// pod's bundle is written).
    pub async fn create_blocking(
        self: &Arc<Self>,
        ns: String,
        id: String,
        netns: String,
        options: Option<Vec<u8>>,
        kind: Option<Kind>,
    ) -> Result<(), TaskError> {
        let pods = self.clone();
        tokio::task::spawn_blocking(move || pods.create(&ns, &id, &netns, options.as_deref(), kind))
            .await
            .map_err(|e| TaskError::Internal(e.to_string()))?
    }

    /// Starts pod `id`'s holder; returns its pid. Detached from the request
    /// (`detach.rs`): a holder made must be recorded or ended.
    pub async fn start(
        self: &Arc<Self>,
        ns: &str,
        id: &str,
    ) -> Result<(i32, SystemTime), TaskError> {
        let (me, ns, id) = (self.clone(), ns.to_string(), id.to_string());
        detached(async move { me.start_now(&ns, &id).await }).await
    }

    async fn start_now(&self, ns: &str, id: &str) -> Result<(i32, SystemTime), TaskError> {
        let pod = self.get(ns, id)?;
        let _one_start = pod.starting.lock().await;
        if *pod.pid.lock().unwrap() > 0 {
            return Ok((pod.namespace_pid(), pod.created));
        }
        let keeper = self
            .keeper
            .as_ref()
            .ok_or_else(|| TaskError::Internal("no keeper to spawn processes".into()))?;
        self.record_starting(ns, id, &pod, keeper)?;
        if let Some(holder) = &pod.vm {
            let (pid, generation) = match holder.start(id, keeper, &self.reaper, &self.exe).await {
                Ok(made) => made,
                Err(e) => {
                    // containerd does not remove a pod whose start failed:
                    // nothing of it is left.
                    self.remove(ns, id).await;
                    return Err(e);
                }
            };
            self.record_start(ns, id, &pod, pid, generation, keeper)
                .await?;
            tracing::info!(namespace = ns, id, pid, "VM pod started");
            return Ok((pid, pod.created));
        }
        let mut argv = vec![
            self.exe.to_string_lossy().into_owned(),
            "helper".into(),
            "pod".into(),
            "--sandbox".into(),
            format!("{ns}/{id}"),
        ];
        if !pod.netns.is_empty() {
            argv.push("--netns".into());
            argv.push(pod.netns.clone());
        }
        if !pod.hostname.is_empty() {
            argv.push("--hostname".into());
            argv.push(pod.hostname.clone());
        }
        for (path, value) in &pod.sysctls {
            argv.push("--sysctl".into());
            argv.push(format!("{path}={value}"));
        }
        if pod.pid_namespace {
            argv.extend(["--pid-namespace".into(), "yes".into()]);
        }
        let made = match keeper.spawn(argv.clone(), vec![], "/".into(), vec![]).await {
            Ok(made) => made,
            Err(e) => {
                // The keeper may have spawned it and died before saying
                // so: that holder would be no one's.
                if let Some(pid) = find_spawned(&argv).await {
                    tracing::warn!(pid, id, "killing a pod holder its lost keeper spawned");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                self.remove(ns, id).await;
                return Err(TaskError::Internal(format!(
                    "cannot start sandbox {id}: {e:#}"
                )));
            }
        };
        let pid = made.pid;
        self.record_start(ns, id, &pod, pid, made.generation, keeper)
            .await?;
        if !pod.cgroup.is_empty() {
            if let Err(e) = join_cgroup(&pod.cgroup, pid).await {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(TaskError::Internal(format!(
                    "cannot start sandbox {id}: {e}"
                )));
            }
        }
        // The holder must have its namespaces before containers join them.
        let start = std::time::Instant::now();
        if !made_namespace(&pod, "ipc", || pid, start).await {
            return Err(TaskError::Internal(format!(
                "sandbox {id}: the pod process did not set up its namespaces"
            )));
        }
        if pod.pid_namespace && !made_namespace(&pod, "pid", || pod.namespace_pid(), start).await {
            return Err(TaskError::Internal(format!(
                "sandbox {id}: the pod process did not make its PID namespace"
            )));
        }
        let pid = pod.namespace_pid();
        if pod.pid_namespace && !pod.cgroup.is_empty() {
            // Forked before the holder joined the pod's cgroup.
            if let Err(e) = join_cgroup(&pod.cgroup, pid).await {
                tracing::warn!(id, error = %e, "the pod's PID namespace init is not in its cgroup");
            }
        }
        tracing::info!(namespace = ns, id, pid, "pod started");
        Ok((pid, pod.created))
    }

    /// Records that pod `id` starts, with pid 0, before its holder is made:
    /// a daemon that dies before the start ends leaves that record, and the
    /// next one removes the pod and what the start made ([`Pods::recover`]).
    fn record_starting(
        &self,
        ns: &str,
        id: &str,
        pod: &Arc<Pod>,
        keeper: &Keeper,
    ) -> Result<(), TaskError> {
        *pod.keeper.lock().unwrap() = Some(keeper.identity());
        let pods = self.pods.lock().unwrap();
        let ours = pods
            .get(&(ns.to_string(), id.to_string()))
            .is_some_and(|p| Arc::ptr_eq(p, pod));
        if !ours {
            return Err(TaskError::NotFound(format!(
                "sandbox {id} was removed before it started"
            )));
        }
        self.save(ns, id, pod);
        Ok(())
    }

    /// Records holder `pid`, made under the keeper of `generation`, as
    /// pod `id`'s, and watches it. A holder is no one's, and is ended with
    /// an error, when the pod was removed while it was made, or when the
    /// keeper that made it is lost (containerd gave the pod up with it).
    async fn record_start(
        &self,
        ns: &str,
        id: &str,
        pod: &Arc<Pod>,
        pid: i32,
        generation: u64,
        keeper: &Keeper,
    ) -> Result<(), TaskError> {
        *pod.pid.lock().unwrap() = pid;
        self.watch(pod, id, pid);
        // The identity first: a keeper replaced since has its generation
        // counted before its identity is set (`Keeper::replace`), so either
        // the check below sees the loss, or the identity recorded is the
        // lost keeper's and `remove_lost`, which follows every loss, sees it.
        *pod.keeper.lock().unwrap() = Some(keeper.identity());
        let lost = generation != self.reaper.generation();
        let ours = {
            let pods = self.pods.lock().unwrap();
            let ours = pods
                .get(&(ns.to_string(), id.to_string()))
                .is_some_and(|p| Arc::ptr_eq(p, pod));
            if ours && !lost {
                // Under the table's lock: a removal after this deletes the
                // record; one before it leaves the pod out of the table.
                self.save(ns, id, pod);
                return Ok(());
            }
            ours
        };
        if ours {
            self.remove(ns, id).await;
        } else {
            // Removed while the holder was made: the remover may have
            // found no pid to end.
            end_holder(pod, ns, id).await;
        }
        Err(TaskError::Internal(format!(
            "sandbox {id}: {}",
            if lost {
                "the keeper that started it was lost (containerd gave the pod up with it)"
            } else {
                "removed while it started"
            }
        )))
    }

    /// Stops pod `id`: its holder ends, and a VM pod's VM goes. Detached
    /// from the request (`detach.rs`).
    pub async fn stop(self: &Arc<Self>, ns: &str, id: &str) -> Result<(), TaskError> {
        let pod = self.get(ns, id)?;
        let (ns, id) = (ns.to_string(), id.to_string());
        detached(async move {
            stop_pod(&pod, &ns, &id).await;
            Ok(())
        })
        .await
    }

    pub async fn wait(&self, ns: &str, id: &str) -> Result<Exit, TaskError> {
        let pod = self.get(ns, id)?;
        let mut rx = pod.exit.subscribe();
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| TaskError::NotFound(format!("sandbox {id} was removed while waiting")))?;
        Ok(exit.expect("wait_for returned a value"))
    }

    /// Whether the pod runs, its pid, when it was made and how it ended.
    pub fn status(&self, ns: &str, id: &str) -> Result<PodStatus, TaskError> {
        let pod = self.get(ns, id)?;
        let pid = pod.namespace_pid();
        let exit = *pod.exit.borrow();
        Ok(PodStatus {
            pid: pid.max(0) as u32,
            ready: pid > 0 && exit.is_none(),
            created: pod.created,
            exit,
        })
    }

    /// The statistics of the pod's cgroup, as containerd's metrics `Any`.
    pub async fn metrics(
        &self,
        ns: &str,
        id: &str,
    ) -> Result<containerd_shim_protos::protobuf::well_known_types::any::Any, TaskError> {
        let pod = self.get(ns, id)?;
        if pod.cgroup.is_empty() {
            return Err(TaskError::FailedPrecondition(format!(
                "sandbox {id} has no cgroup of its own (its PodSandboxConfig names no cgroup_parent)"
            )));
        }
        let cgroup = std::path::PathBuf::from(&pod.cgroup);
        let stats = tokio::task::spawn_blocking(move || ironcell_container::cgroup::stats(&cgroup))
            .await
            .map_err(|e| TaskError::Internal(e.to_string()))?
            .map_err(|e| TaskError::Internal(e.to_string()))?;
        Ok(crate::metrics::to_any(&stats, crate::metrics::unified()))
    }

    /// Removes the pods whose holder a lost keeper spawned: containerd,
    /// whose connection to them closed with that keeper, counts them as
    /// ended and never stops them (the kubelet makes new ones).
    pub async fn remove_lost(&self) {
        let Some(current) = self.keeper.as_ref().map(|k| k.identity()) else {
            return;
        };
        let lost: Vec<(String, String)> = self
            .pods
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| {
                p.keeper
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|k| *k != current)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for (ns, id) in lost {
            tracing::warn!(namespace = %ns, %id, "containerd gave the pod up with the lost keeper: removing it");
            self.remove(&ns, &id).await;
        }
    }

    /// Ends the pod's holder, without waiting for its exit (a holder a lost
    /// keeper spawned reports none), and removes what the pod made.
    /// Detached from the request (`detach.rs`).
    pub async fn remove(&self, ns: &str, id: &str) {
        let removed = self
            .pods
            .lock()
            .unwrap()
            .remove(&(ns.to_string(), id.to_string()));
        let file = self.file(ns, id);
        let Some(pod) = removed else {
            PodFiles::remove(&self.root, ns, id);
            let _ = std::fs::remove_file(&file);
            return;
        };
        let root = self.root.clone();
        let id = id.to_string();
        let ns = ns.to_string();
        let _ = detached(async move {
            end_holder(&pod, &ns, &id).await;
            PodFiles::remove(&root, &ns, &id);
            // Last: a daemon that dies before the holder ends leaves the
            // record, and the next one removes the pod again.
            let _ = std::fs::remove_file(&file);
            Ok(())
        })
        .await;
    }
}

/// Moves `pid` into the pod's cgroup at `cgroup` (cgroupfs form).
async fn join_cgroup(cgroup: &str, pid: i32) -> Result<(), String> {
    let cgroup = std::path::PathBuf::from(cgroup);
    tokio::task::spawn_blocking(move || ironcell_container::cgroup::join(&cgroup, pid))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Waits until the process `pid()` names (0: not known yet) exists and its
/// namespace `kind` (`/proc/<pid>/ns/<kind>`) is not the daemon's; false
/// if that is not so 5 s after `start`, or the holder ended.
async fn made_namespace(
    pod: &Pod,
    kind: &str,
    pid: impl Fn() -> i32,
    start: std::time::Instant,
) -> bool {
    let daemons = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok();
    loop {
        let p = pid();
        let ns = (p > 0)
            .then(|| std::fs::read_link(format!("/proc/{p}/ns/{kind}")).ok())
            .flatten();
        if ns.is_some() && ns != daemons {
            return true;
        }
        if start.elapsed() > Duration::from_secs(5) || pod.exit.borrow().is_some() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Ends a removed pod's holder without waiting for its exit: a VM pod's VM
/// goes with force, whatever runs in it.
async fn end_holder(pod: &Pod, ns: &str, id: &str) {
    match &pod.vm {
        Some(holder) => holder.delete(id).await,
        None => {
            let pid = *pod.pid.lock().unwrap();
            if pid > 0 {
                if pod.exit.borrow().is_none() && is_holder(pid, ns, id) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                return;
            }
            // No pid recorded: a start cut off may have made the holder.
            let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
            for pid in pids.filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
                if is_holder(pid, ns, id) {
                    tracing::warn!(pid, id, "ending a pod holder whose start was cut off");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Finds a holder a lost keeper spawned with `argv`, if it runs. The
/// keeper may have died between its fork and the exec, so a child that
/// still has the keeper's command line is looked for again a little later.
async fn find_spawned(argv: &[String]) -> Option<i32> {
    for _ in 0..5 {
        if let Some(pid) = crate::helper::find_running(argv) {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Ends a pod's holder, if it runs, and waits a while for its exit. A VM
/// pod's holder is asked through the guest; its relay is killed when the
/// guest cannot be asked.
async fn stop_pod(pod: &Pod, ns: &str, id: &str) {
    let pid = *pod.pid.lock().unwrap();
    if pid > 0 && pod.exit.borrow().is_none() {
        let ours = match &pod.vm {
            Some(holder) => holder.stands_for_pod(id, pid) && !holder.kill(id).await,
            None => is_holder(pid, ns, id),
        };
        if ours {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let mut rx = pod.exit.subscribe();
        let _ = tokio::time::timeout(STOP_WAIT, rx.wait_for(|e| e.is_some())).await;
    }
    // A VM pod's VM goes with its stop, its tap and tc filters with it,
    // before containerd tears the pod's network down (as a pause
    // container's delete takes them).
    if let (Some(holder), true) = (&pod.vm, pid > 0) {
        holder.remove_vm(id).await;
    }
}

/// Whether `pid` is the holder of pod `ns/id` (by its command line): a
/// recorded pid whose holder ended while no daemon watched may have been
/// reused by an unrelated process.
fn is_holder(pid: i32, ns: &str, id: &str) -> bool {
    let mark = format!("\0helper\0pod\0--sandbox\0{ns}/{id}\0");
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(mark.len()).any(|w| w == mark.as_bytes()))
}

/// What [`Pods::status`] reports.
pub struct PodStatus {
    pub pid: u32,
    pub ready: bool,
    pub created: SystemTime,
    pub exit: Option<Exit>,
}

impl PodStatus {
    /// The CRI's names for the two states.
    pub fn state(&self) -> &'static str {
        if self.ready {
            "SANDBOX_READY"
        } else {
            "SANDBOX_NOTREADY"
        }
    }
}

/// The platform every pod of this daemon runs on.
pub(crate) fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

/// The pod annotation that chooses the pod's sandbox (`vm`).
const SANDBOX_ANNOTATION: &str = "io.ironcell.sandbox";

/// The CRI annotation that names a container's pod.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

impl Pods {
    /// The sandbox of a container whose pod is a VM pod made here: vm.
    pub fn member_kind(&self, ns: &str, spec: &oci_spec::runtime::Spec) -> Option<Kind> {
        let pod = spec.annotations().as_ref()?.get(SANDBOX_ID_ANNOTATION)?;
        self.get(ns, pod).ok()?.vm.as_ref().map(|_| Kind::Vm)
    }

    /// Gives a container of a pod made here the pod's files (`pod_files.rs`);
    /// nothing for any other container.
    pub fn give_files(&self, ns: &str, bundle: &mut ironcell_oci::Bundle) -> Result<(), TaskError> {
        let pod_id = bundle
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
            .cloned();
        let Some(pod_id) = pod_id else {
            return Ok(());
        };
        let Ok(pod) = self.get(ns, &pod_id) else {
            return Ok(());
        };
        let files = PodFiles {
            dir: PodFiles::dir(&self.root, ns, &pod_id),
            resolv_conf: &pod.resolv_conf,
            hostname: &pod.hostname,
            shm: pod.vm.is_none(),
        };
        files.give(bundle).map_err(|e| {
            TaskError::Internal(format!(
                "cannot give the container pod {pod_id}'s hosts, resolv.conf and hostname: {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of pods not started (pid 0), a holder a start cut off made,
    /// and a VM pod's bundle with that start's claim: the next daemon's
    /// recovery ends the holder and keeps both pods, ready to start, and
    /// leaves a started pod's record alone.
    #[tokio::test]
    async fn recovery_undoes_a_pods_start_that_was_cut_off() {
        let root = tempfile::tempdir().unwrap();
        let id = format!("cut-off-{}", std::process::id());
        // Stands for the holder: a process with a holder's command line.
        let mut holder = std::process::Command::new("sh")
            .args([
                "-c",
                "while :; do sleep 1; done",
                "helper",
                "pod",
                "--sandbox",
            ])
            .arg(format!("k8s.io/{id}"))
            .spawn()
            .unwrap();
        // Its command line is there once it runs sh, which may come after
        // spawn returns while other tests fork.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read(format!("/proc/{}/cmdline", holder.id()))
            .is_ok_and(|c| c.windows(id.len()).any(|w| w == id.as_bytes()))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the stand-in holder did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let pods = Pods::new(
            root.path().to_path_buf(),
            "/nonexistent".into(),
            Arc::new(Reaper::default()),
            None,
        );
        let record = |pid: i32, vm: bool| PodRecord {
            netns: String::new(),
            hostname: String::new(),
            resolv_conf: String::new(),
            sysctls: Vec::new(),
            cgroup: String::new(),
            created_nanos: 1,
            pid,
            keeper: None,
            vm,
            pid_namespace: false,
        };
        let dir = root.path().join("pods/k8s.io");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, r: PodRecord| {
            std::fs::write(
                dir.join(format!("{name}.json")),
                serde_json::to_vec(&r).unwrap(),
            )
            .unwrap()
        };
        write(&id, record(0, false));
        let started = std::process::id() as i32;
        write("started", record(started, false));
        // A VM pod's start cut off: its bundle (with the start's claim).
        write("cut-vm", record(0, true));
        let bundle = VmHolder::new(root.path(), "k8s.io", "cut-vm").bundle;
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("creating.json"), b"{}").unwrap();

        pods.recover().await;

        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = holder.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = holder.kill();
                panic!("the cut-off start's holder was not ended");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        // Both pods are there to be started again, the VM pod's bundle
        // with a claim for its next start.
        for id in [id.as_str(), "cut-vm"] {
            let status = pods.status("k8s.io", id).unwrap();
            assert!(status.pid == 0 && !status.ready);
            assert!(dir.join(format!("{id}.json")).exists());
        }
        assert!(bundle.join("creating.json").exists());
        assert!(!bundle.join("abandoned.json").exists());
        assert_eq!(
            pods.status("k8s.io", "started").unwrap().pid,
            started as u32
        );
        assert!(dir.join("started.json").exists());
    }

    /// A pod sharing one PID namespace reports its holder's child, found
    /// again by a restarted daemon that knows only the holder.
    #[test]
    fn a_pid_namespace_pods_pid_is_its_holders_child() {
        let mut holder = std::process::Command::new("sh")
            .args(["-c", "sleep 100 & wait"])
            .spawn()
            .unwrap();
        let pid = holder.id() as i32;
        let pod = |pid_namespace: bool| Pod {
            netns: String::new(),
            hostname: String::new(),
            sysctls: Vec::new(),
            resolv_conf: String::new(),
            vm: None,
            pid_namespace,
            namespace_pid: Mutex::new(0),
            cgroup: String::new(),
            created: SystemTime::now(),
            pid: Mutex::new(pid),
            exit: watch::channel(None).0,
            starting: Default::default(),
            keeper: Mutex::new(None),
        };
        // The child is forked by sh before it runs sleep.
        let runs_sleep = |p: i32| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"sleep\x00100"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let child = loop {
            let p = pod(true).namespace_pid();
            if (p > 0 && runs_sleep(p)) || std::time::Instant::now() > deadline {
                break p;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            child > 0 && runs_sleep(child),
            "holder {pid}'s child: {child}"
        );
        assert_eq!(pod(false).namespace_pid(), pid);
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
        let _ = holder.kill();
        let _ = holder.wait();
    }
}
