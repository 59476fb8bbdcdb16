//! Pods without a pause container: containerd's sandbox API on the shim side
//! (`containerd.runtime.sandbox.v1.Sandbox`).
//!
//! containerd 1.7's CRI uses it when the runtime handler has
//! `sandbox_mode = "shim"` and containerd runs with `ENABLE_CRI_SANDBOXES=1`
//! (docs/daemon.md): CreateSandbox and StartSandbox instead of creating and
//! starting a pause container, then the pod's containers on the same task
//! address. For the namespace sandbox, a pod is a tiny holder process that
//! owns the pod's IPC and UTS namespaces (and joins the pod's network
//! namespace when there is one): the pid containerd builds the containers'
//! namespace paths from (`/proc/<pid>/ns/...`). It is `ironcelld helper pod`
//! (`helper.rs`),
//! a child of the keeper like every container process: no image, no rootfs,
//! no container set-up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::sandbox_api::*;
use containerd_shim_protos::sandbox_async::Sandbox as SandboxService;
use containerd_shim_protos::types::platform::Platform;
use ironcell_sandbox::Kind;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;
use ttrpc::asynchronous::TtrpcContext;

use crate::error::TaskError;
use crate::keeper::Keeper;
use crate::pod_config::{is_pod_config, PodConfig};
use crate::pod_vm::VmHolder;
use crate::reaper::Exit;
use crate::reaper::Reaper;
use crate::time::{from_nanos, nanos, timestamp};

/// How long Stop waits for the holder to go.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// One pod.
pub struct Pod {
    netns: String,
    /// The pod's VM holder, for a VM pod (`pod_vm.rs`).
    vm: Option<VmHolder>,
    /// The cgroup the pod's containers share (the CRI's `cgroup_parent`,
    /// cgroupfs driver), or empty: the holder goes there, and the pod's
    /// metrics come from there.
    cgroup: String,
    created: SystemTime,
    pid: Mutex<i32>,
    exit: watch::Sender<Option<Exit>>,
    /// The keeper the holder was spawned by ([`Keeper::identity`]).
    /// containerd reaches the pod through that keeper: once it is lost,
    /// containerd counts the pod as ended and never stops it.
    keeper: Mutex<Option<String>>,
}

/// What is kept on disk of a pod (`<root>/pods/<ns>/<id>.json`), for a
/// restarted daemon.
#[derive(serde::Serialize, serde::Deserialize)]
struct PodRecord {
    netns: String,
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
            cgroup: pod.cgroup.clone(),
            created_nanos: nanos(pod.created),
            pid: *pod.pid.lock().unwrap(),
            keeper: pod.keeper.lock().unwrap().clone(),
            vm: pod.vm.is_some(),
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

    /// Watches a pod's holder; its exit (from the keeper) ends the pod.
    fn watch(&self, pod: &Arc<Pod>, pid: i32) {
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

    /// A restarted daemon takes back the pods a previous one made.
    pub fn recover(&self) {
        let Ok(namespaces) = std::fs::read_dir(self.root.join("pods")) else {
            return;
        };
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
                    netns: r.netns,
                    cgroup: r.cgroup,
                    created: from_nanos(r.created_nanos),
                    pid: Mutex::new(r.pid),
                    exit: watch::channel(None).0,
                    keeper: Mutex::new(r.keeper),
                });
                if r.pid > 0 {
                    self.watch(&pod, r.pid);
                }
                tracing::info!(namespace = %ns_name, %id, "pod re-attached");
                self.pods.lock().unwrap().insert((ns_name.clone(), id), pod);
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
        if let Some(h) = &holder {
            h.write_bundle(id, netns, &config)?;
        }
        pods.insert(
            key,
            Arc::new(Pod {
                netns: netns.to_string(),
                vm: holder,
                cgroup: config.cgroup_parent,
                created: SystemTime::now(),
                pid: Mutex::new(0),
                exit: watch::channel(None).0,
                keeper: Mutex::new(None),
            }),
        );
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

    pub async fn start(&self, ns: &str, id: &str) -> Result<(i32, SystemTime), TaskError> {
        let pod = self.get(ns, id)?;
        let running = *pod.pid.lock().unwrap();
        if running > 0 {
            return Ok((running, pod.created));
        }
        let keeper = self
            .keeper
            .as_ref()
            .ok_or_else(|| TaskError::Internal("no keeper to spawn processes".into()))?;
        if let Some(holder) = &pod.vm {
            let pid = match holder.start(id, keeper, &self.reaper, &self.exe).await {
                Ok(pid) => pid,
                Err(e) => {
                    // containerd does not remove a pod whose start failed:
                    // nothing of it is left.
                    self.remove(ns, id).await;
                    return Err(e);
                }
            };
            *pod.pid.lock().unwrap() = pid;
            *pod.keeper.lock().unwrap() = Some(keeper.identity());
            self.save(ns, id, &pod);
            self.watch(&pod, pid);
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
        let pid = match keeper.spawn(argv.clone(), vec![], "/".into(), vec![]).await {
            Ok(made) => made.pid,
            Err(e) => {
                // The keeper may have spawned it and died before saying
                // so: that holder would be no one's.
                if let Some(pid) = crate::helper::find_running(&argv) {
                    tracing::warn!(pid, id, "killing a pod holder its lost keeper spawned");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                return Err(TaskError::Internal(format!(
                    "cannot start sandbox {id}: {e:#}"
                )));
            }
        };
        *pod.pid.lock().unwrap() = pid;
        *pod.keeper.lock().unwrap() = Some(keeper.identity());
        self.save(ns, id, &pod);
        self.watch(&pod, pid);
        if !pod.cgroup.is_empty() {
            let cgroup = std::path::PathBuf::from(&pod.cgroup);
            let joined =
                tokio::task::spawn_blocking(move || ironcell_container::cgroup::join(&cgroup, pid))
                    .await
                    .map_err(|e| TaskError::Internal(e.to_string()))?;
            if let Err(e) = joined {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(TaskError::Internal(format!(
                    "cannot start sandbox {id}: {e}"
                )));
            }
        }
        // The holder must have its namespaces before containers join them.
        let start = std::time::Instant::now();
        let host_ipc = std::fs::read_link("/proc/self/ns/ipc").ok();
        while std::fs::read_link(format!("/proc/{pid}/ns/ipc")).ok() == host_ipc {
            if start.elapsed() > Duration::from_secs(5) || pod.exit.borrow().is_some() {
                return Err(TaskError::Internal(format!(
                    "sandbox {id}: the pod process did not set up its namespaces"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tracing::info!(namespace = ns, id, pid, "pod started");
        Ok((pid, pod.created))
    }

    pub async fn stop(&self, ns: &str, id: &str) -> Result<(), TaskError> {
        let pod = self.get(ns, id)?;
        stop_pod(&pod, ns, id).await;
        Ok(())
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
        let pid = *pod.pid.lock().unwrap();
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
    pub async fn remove(&self, ns: &str, id: &str) {
        let removed = self
            .pods
            .lock()
            .unwrap()
            .remove(&(ns.to_string(), id.to_string()));
        let _ = std::fs::remove_file(self.file(ns, id));
        let Some(pod) = removed else { return };
        match &pod.vm {
            // With force: the VM goes whatever runs in it.
            Some(holder) => holder.delete(id).await,
            None => {
                let pid = *pod.pid.lock().unwrap();
                if pid > 0 && pod.exit.borrow().is_none() && is_holder(pid, ns, id) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Ends a pod's holder, if it runs, and waits a while for its exit. A VM
/// pod's holder is asked through the guest; its relay is killed when the
/// guest cannot be asked.
async fn stop_pod(pod: &Pod, ns: &str, id: &str) {
    let pid = *pod.pid.lock().unwrap();
    if pid <= 0 || pod.exit.borrow().is_some() {
        return;
    }
    let ours = match &pod.vm {
        Some(holder) => holder.is_relay(pid) && !holder.kill(id).await,
        None => is_holder(pid, ns, id),
    };
    if ours {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let mut rx = pod.exit.subscribe();
    let _ = tokio::time::timeout(STOP_WAIT, rx.wait_for(|e| e.is_some())).await;
}

/// Whether `pid` is the holder of pod `ns/id` (by its command line): a
/// recorded pid whose holder ended while no daemon watched may have been
/// reused by an unrelated process.
fn is_holder(pid: i32, ns: &str, id: &str) -> bool {
    let mark = format!("\0pod\0--sandbox\0{ns}/{id}\0");
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

/// The pod files a container bind-mounts, and what they hold for a
/// host-network pod: the host's own.
const POD_FILES: [(&str, &str); 3] = [
    ("/etc/hosts", "/etc/hosts"),
    ("/etc/resolv.conf", "/etc/resolv.conf"),
    ("/etc/hostname", "/etc/hostname"),
];

impl Pods {
    /// The sandbox of a container whose pod is a VM pod made here: vm.
    pub fn member_kind(&self, ns: &str, spec: &oci_spec::runtime::Spec) -> Option<Kind> {
        let pod = spec.annotations().as_ref()?.get(SANDBOX_ID_ANNOTATION)?;
        self.get(ns, pod).ok()?.vm.as_ref().map(|_| Kind::Vm)
    }

    /// containerd 1.7's CRI, in sandbox-API mode, leaves the pod's
    /// `hosts`, `resolv.conf` and `hostname` to the sandbox (its pause
    /// container path writes them, its shim path does not), yet mounts them
    /// into every container. For a container of a pod made here, each such
    /// bind source that is missing (or an empty directory left by an earlier
    /// attempt) becomes a copy of the host's file: the pod shares the
    /// host's network.
    pub fn prepare_files(&self, ns: &str, spec: &oci_spec::runtime::Spec) {
        let pod = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
            .cloned();
        let Some(pod) = pod else { return };
        if self.get(ns, &pod).is_err() {
            return;
        }
        for m in spec.mounts().iter().flatten() {
            let Some((_, host)) = POD_FILES
                .iter()
                .find(|(dest, _)| m.destination() == std::path::Path::new(dest))
            else {
                continue;
            };
            let Some(source) = m.source() else { continue };
            if source.is_file() {
                continue;
            }
            if source.is_dir() {
                // Empty, or remove_dir refuses: then leave it.
                if std::fs::remove_dir(source).is_err() {
                    continue;
                }
            }
            if let Some(dir) = source.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let content = std::fs::read(host).unwrap_or_default();
            if let Err(e) = std::fs::write(source, content) {
                tracing::warn!(pod = %pod, file = %source.display(), error = %e, "cannot write a pod file");
            }
        }
    }
}

/// The sandbox service of one endpoint (one containerd namespace).
pub struct PodService {
    pub pods: Arc<Pods>,
    pub namespace: String,
}

type R<T> = ttrpc::Result<T>;

#[async_trait]
impl SandboxService for PodService {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> R<CreateSandboxResponse> {
        ironcell_basics::process_memory::note_activity();
        let options = req
            .options
            .as_ref()
            .filter(|o| is_pod_config(&o.type_url))
            .map(|o| o.value.clone());
        self.pods
            .create_blocking(
                self.namespace.clone(),
                req.sandbox_id,
                req.netns_path,
                options,
                None,
            )
            .await?;
        Ok(CreateSandboxResponse::default())
    }

    async fn start_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: StartSandboxRequest,
    ) -> R<StartSandboxResponse> {
        ironcell_basics::process_memory::note_activity();
        let (pid, created) = self.pods.start(&self.namespace, &req.sandbox_id).await?;
        Ok(StartSandboxResponse {
            pid: pid as u32,
            created_at: MessageField::some(timestamp(created)),
            ..Default::default()
        })
    }

    async fn platform(&self, _ctx: &TtrpcContext, _req: PlatformRequest) -> R<PlatformResponse> {
        let (os, architecture) = platform();
        Ok(PlatformResponse {
            platform: MessageField::some(Platform {
                os: os.into(),
                architecture: architecture.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn stop_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: StopSandboxRequest,
    ) -> R<StopSandboxResponse> {
        ironcell_basics::process_memory::note_activity();
        self.pods.stop(&self.namespace, &req.sandbox_id).await?;
        Ok(StopSandboxResponse::default())
    }

    async fn wait_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: WaitSandboxRequest,
    ) -> R<WaitSandboxResponse> {
        let exit = self.pods.wait(&self.namespace, &req.sandbox_id).await?;
        Ok(WaitSandboxResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn sandbox_status(
        &self,
        _ctx: &TtrpcContext,
        req: SandboxStatusRequest,
    ) -> R<SandboxStatusResponse> {
        let status = self.pods.status(&self.namespace, &req.sandbox_id)?;
        Ok(SandboxStatusResponse {
            sandbox_id: req.sandbox_id,
            pid: status.pid,
            state: status.state().into(),
            created_at: MessageField::some(timestamp(status.created)),
            exited_at: status
                .exit
                .map(|e| MessageField::some(timestamp(e.at)))
                .unwrap_or_default(),
            ..Default::default()
        })
    }

    async fn ping_sandbox(&self, _ctx: &TtrpcContext, req: PingRequest) -> R<PingResponse> {
        self.pods.get(&self.namespace, &req.sandbox_id)?;
        Ok(PingResponse::default())
    }

    /// containerd asks the pod's shim to exit; the daemon serves other pods,
    /// so only the pod goes.
    async fn shutdown_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: ShutdownSandboxRequest,
    ) -> R<ShutdownSandboxResponse> {
        ironcell_basics::process_memory::note_activity();
        self.pods.remove(&self.namespace, &req.sandbox_id).await;
        Ok(ShutdownSandboxResponse::default())
    }

    async fn sandbox_metrics(
        &self,
        _ctx: &TtrpcContext,
        req: SandboxMetricsRequest,
    ) -> R<SandboxMetricsResponse> {
        let data = self.pods.metrics(&self.namespace, &req.sandbox_id).await?;
        // The Metric type is not exported by containerd-shim-protos.
        let mut resp = SandboxMetricsResponse::default();
        let metric = resp.metrics.mut_or_insert_default();
        metric.timestamp = MessageField::some(timestamp(SystemTime::now()));
        metric.id = req.sandbox_id;
        metric.data = MessageField::some(data);
        Ok(resp)
    }
}
