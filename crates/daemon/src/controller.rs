//! containerd 2.x's sandbox controller: the gRPC service
//! `containerd.services.sandbox.v1.Controller`, which containerd calls on a
//! proxy plugin of type `sandbox`:
//!
//! ```toml
//! [proxy_plugins.ironcell]
//!   type = "sandbox"
//!   address = "/run/ironcell/ironcelld/sandbox.sock"
//! [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.ironcell]
//!   runtime_type = "io.containerd.ironcell.v2"
//!   sandboxer = "ironcell"
//! ```
//!
//! The CRI then makes a pod with Create and Start instead of a pause
//! container, and Start answers with the Task API address of the pod's
//! namespace (`ttrpc+unix://`, version 3): containerd sends the pod's
//! containers there itself, without running any shim. A pod is the same
//! as through 1.7's shim-side sandbox API (`pod.rs`): a namespace holder,
//! or, when the handler's options say `Sandbox = "vm"` or the pod's
//! annotation `io.ironcell.sandbox` is `vm`, a VM (`pod_vm.rs`).
//!
//! The containerd this socket serves is a daemon setting (`--containerd`):
//! the controller's requests name their namespace but not which containerd
//! sends them, and the tasks' events go to that containerd's ttrpc address.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use tonic::{Request, Response, Status};

use crate::endpoint::{EndpointKey, Endpoints};
use crate::error::TaskError;
use crate::task::Tasks;
use crate::time::prost_timestamp;

/// The messages and service generated from `proto/` (build.rs).
#[allow(clippy::all, missing_docs)]
pub mod api {
    pub mod containerd {
        pub mod types {
            include!(concat!(env!("OUT_DIR"), "/containerd.types.rs"));
        }
        pub mod services {
            pub mod sandbox {
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/containerd.services.sandbox.v1.rs"
                    ));
                }
            }
        }
    }
}

use api::containerd::services::sandbox::v1::controller_server::{
    Controller as ControllerApi, ControllerServer,
};
use api::containerd::services::sandbox::v1::*;
use api::containerd::types::{Metric, Platform};

/// The gRPC metadata key that carries containerd's namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The task API version Start and Status report: 3 makes containerd 2.1+
/// talk to the returned address directly (`containerd.task.v3.Task`).
const TASK_API_VERSION: u32 = 3;

pub struct Controller {
    /// Every pod this controller makes is a VM pod (the `-vm` socket).
    vm: bool,
    tasks: Arc<Tasks>,
    endpoints: Arc<Endpoints>,
    /// containerd's ttrpc address, where the pods' task events go.
    containerd: String,
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Status {
        Status::new(tonic::Code::from_i32(e.grpc_code()), e.to_string())
    }
}

/// The namespace a request names (containerd always sends one).
fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    let ns = req
        .metadata()
        .get(NAMESPACE_HEADER)
        .ok_or_else(|| Status::invalid_argument("the request names no containerd namespace"))?
        .to_str()
        .map_err(|_| Status::invalid_argument("the containerd namespace is not text"))?
        .to_string();
    crate::error::validate_namespace(&ns)?;
    Ok(ns)
}

impl Controller {
    pub fn new(
        tasks: Arc<Tasks>,
        endpoints: Arc<Endpoints>,
        containerd: String,
        vm: bool,
    ) -> Controller {
        Controller {
            vm,
            tasks,
            endpoints,
            containerd,
        }
    }

    /// The Task API address of a namespace, listening from now on.
    async fn address(&self, namespace: &str) -> Result<String, Status> {
        let key = EndpointKey {
            containerd: self.containerd.clone(),
            namespace: namespace.to_string(),
        };
        let address = self
            .endpoints
            .get(&key)
            .await
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        Ok(format!("ttrpc+{address}"))
    }
}

type R<T> = Result<Response<T>, Status>;

/// Refuses a pod whose runtime handler asks for a VM with its `options`
/// table (`Sandbox = "vm"`): containerd 2.x's CRI then fails every
/// container of the pod at StartContainer (it hands a sandboxer's tasks
/// runc's options type only), so the pod is refused at once, naming the
/// way that works.
fn refuse_handler_options(req: &ControllerCreateRequest) -> Result<(), Status> {
    let options = req
        .sandbox
        .as_ref()
        .and_then(|s| s.runtime.as_ref())
        .and_then(|r| r.options.as_ref())
        .map(
            |o| containerd_shim_protos::protobuf::well_known_types::any::Any {
                type_url: o.type_url.clone(),
                value: o.value.clone(),
                ..Default::default()
            },
        );
    if crate::runtime_options::sandbox_kind(options.as_ref())? == Some(ironcell_sandbox::Kind::Vm) {
        return Err(Status::invalid_argument(format!(
            "pod {}: containerd cannot start the containers of a sandboxer's pod whose handler \
             has an options table; select VM pods with sandboxer = \"ironcell-vm\" (the \
             controller at sandbox-vm.sock) and no options",
            req.sandbox_id
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl ControllerApi for Controller {
    async fn create(&self, req: Request<ControllerCreateRequest>) -> R<ControllerCreateResponse> {
        ironcell_basics::process_memory::note_activity();
        let ns = namespace(&req)?;
        let req = req.into_inner();
        refuse_handler_options(&req)?;
        let kind = self.vm.then_some(ironcell_sandbox::Kind::Vm);
        let options = req
            .options
            .as_ref()
            .filter(|o| crate::pod_config::is_pod_config(&o.type_url))
            .map(|o| o.value.clone());
        self.tasks
            .pods
            .create_blocking(
                ns.clone(),
                req.sandbox_id.clone(),
                req.netns_path.clone(),
                options,
                kind,
            )
            .await?;
        tracing::info!(namespace = %ns, id = %req.sandbox_id, "pod created");
        Ok(Response::new(ControllerCreateResponse {
            sandbox_id: req.sandbox_id,
        }))
    }

    async fn start(&self, req: Request<ControllerStartRequest>) -> R<ControllerStartResponse> {
        ironcell_basics::process_memory::note_activity();
        let ns = namespace(&req)?;
        let id = req.into_inner().sandbox_id;
        let address = self.address(&ns).await?;
        let (pid, created) = self.tasks.pods.start(&ns, &id).await?;
        Ok(Response::new(ControllerStartResponse {
            sandbox_id: id,
            pid: pid as u32,
            created_at: Some(prost_timestamp(created)),
            labels: HashMap::new(),
            address,
            version: TASK_API_VERSION,
        }))
    }

    async fn platform(
        &self,
        req: Request<ControllerPlatformRequest>,
    ) -> R<ControllerPlatformResponse> {
        let ns = namespace(&req)?;
        self.tasks.pods.status(&ns, &req.get_ref().sandbox_id)?;
        let (os, architecture) = crate::pod::platform();
        Ok(Response::new(ControllerPlatformResponse {
            platform: Some(Platform {
                os: os.into(),
                architecture: architecture.into(),
                ..Default::default()
            }),
        }))
    }

    async fn stop(&self, req: Request<ControllerStopRequest>) -> R<ControllerStopResponse> {
        ironcell_basics::process_memory::note_activity();
        let ns = namespace(&req)?;
        self.tasks.pods.stop(&ns, &req.get_ref().sandbox_id).await?;
        Ok(Response::new(ControllerStopResponse {}))
    }

    /// Blocks until the pod ends (containerd's CRI marks the pod not ready
    /// when this returns).
    async fn wait(&self, req: Request<ControllerWaitRequest>) -> R<ControllerWaitResponse> {
        let ns = namespace(&req)?;
        let exit = self.tasks.pods.wait(&ns, &req.get_ref().sandbox_id).await?;
        Ok(Response::new(ControllerWaitResponse {
            exit_status: exit.status,
            exited_at: Some(prost_timestamp(exit.at)),
        }))
    }

    async fn status(&self, req: Request<ControllerStatusRequest>) -> R<ControllerStatusResponse> {
        let ns = namespace(&req)?;
        let id = req.into_inner().sandbox_id;
        let status = self.tasks.pods.status(&ns, &id)?;
        Ok(Response::new(ControllerStatusResponse {
            sandbox_id: id,
            pid: status.pid,
            state: status.state().into(),
            info: HashMap::new(),
            created_at: Some(prost_timestamp(status.created)),
            exited_at: status.exit.map(|e| prost_timestamp(e.at)),
            extra: None,
            // containerd reads the address again after its own restart.
            address: self.address(&ns).await?,
            version: TASK_API_VERSION,
        }))
    }

    /// The pod goes; the daemon, serving other pods, stays.
    async fn shutdown(
        &self,
        req: Request<ControllerShutdownRequest>,
    ) -> R<ControllerShutdownResponse> {
        ironcell_basics::process_memory::note_activity();
        let ns = namespace(&req)?;
        let id = &req.get_ref().sandbox_id;
        self.tasks.pods.status(&ns, id)?;
        self.tasks.pods.remove(&ns, id).await;
        tracing::info!(namespace = %ns, %id, "pod removed");
        Ok(Response::new(ControllerShutdownResponse {}))
    }

    async fn metrics(
        &self,
        req: Request<ControllerMetricsRequest>,
    ) -> R<ControllerMetricsResponse> {
        let ns = namespace(&req)?;
        let id = req.into_inner().sandbox_id;
        let data = self.tasks.pods.metrics(&ns, &id).await?;
        Ok(Response::new(ControllerMetricsResponse {
            metrics: Some(Metric {
                timestamp: Some(prost_timestamp(SystemTime::now())),
                id,
                data: Some(prost_types::Any {
                    type_url: data.type_url,
                    value: data.value,
                }),
            }),
        }))
    }

    /// containerd keeps a pod's metadata (labels, extensions) itself; the
    /// daemon keeps nothing an update could change, so an update of a pod
    /// that exists succeeds.
    async fn update(&self, req: Request<ControllerUpdateRequest>) -> R<ControllerUpdateResponse> {
        let ns = namespace(&req)?;
        self.tasks.pods.status(&ns, &req.get_ref().sandbox_id)?;
        Ok(Response::new(ControllerUpdateResponse {}))
    }
}

/// Serves the controller on the unix socket `path` (replacing a stale one)
/// until the runtime ends.
pub fn serve(path: &Path, controller: Controller) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    ironcell_basics::owner_only(path)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let path = PathBuf::from(path);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .serve_with_incoming(ControllerServer::new(controller), incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(socket = %path.display(), error = %e, "sandbox controller stopped");
        }
    });
    Ok(())
}
