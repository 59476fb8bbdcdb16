//! containerd's shim v2 Task API (`containerd.task.v2.Task`) over ttrpc.
//! Each endpoint (see `endpoint.rs`) serves the tasks of one containerd
//! namespace: requests name their task by id only, and containerd 1.6 and
//! 1.7 do not say which namespace they speak for, so the socket does. A task
//! of one namespace cannot be reached through another's address.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task as TaskService;
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::{Code, Error as TtrpcError};

use crate::error::TaskError;
use crate::metrics;
use crate::mount::Mount;
use crate::task::{CreateRequest, IoSpec, ProcStatus, Tasks};
use crate::time::timestamp;

/// The metadata key containerd puts the namespace under for ttrpc.
pub const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";

impl From<TaskError> for TtrpcError {
    fn from(e: TaskError) -> Self {
        use protobuf::Enum;
        let code = Code::from_i32(e.grpc_code()).unwrap_or(Code::UNKNOWN);
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

/// The Task service of one endpoint: one containerd, one namespace.
pub struct Service {
    pub tasks: Arc<Tasks>,
    pub namespace: String,
    /// containerd's ttrpc address, for the events of tasks created here.
    pub containerd: String,
}

impl Service {
    /// The namespace of a request is the endpoint's. containerd 2.x also
    /// names it in the ttrpc metadata (1.6 and 1.7 do not); a request that
    /// names another namespace is refused.
    fn namespace(&self, ctx: &TtrpcContext) -> Result<String, TaskError> {
        ironcell_basics::process_memory::note_activity();
        if let Some(ns) = ctx.metadata.get(NAMESPACE_KEY).and_then(|v| v.first()) {
            if *ns != self.namespace {
                return Err(TaskError::InvalidArgument(format!(
                    "this task address serves namespace {}, not {ns}",
                    self.namespace
                )));
            }
        }
        Ok(self.namespace.clone())
    }
}

type R<T> = ttrpc::Result<T>;

fn status(s: ProcStatus) -> Status {
    match s {
        ProcStatus::Created => Status::CREATED,
        ProcStatus::Running => Status::RUNNING,
        ProcStatus::Paused => Status::PAUSED,
        ProcStatus::Stopped => Status::STOPPED,
    }
}

#[async_trait]
impl TaskService for Service {
    async fn state(&self, ctx: &TtrpcContext, req: StateRequest) -> R<StateResponse> {
        let ns = self.namespace(ctx)?;
        let (task, view) = self.tasks.state(&ns, &req.id, &req.exec_id)?;
        Ok(StateResponse {
            id: req.id,
            bundle: task.bundle.display().to_string(),
            pid: view.pid.max(0) as u32,
            status: status(view.status).into(),
            stdin: view.io.stdin,
            stdout: view.io.stdout,
            stderr: view.io.stderr,
            terminal: view.io.terminal,
            exit_status: view.exit.map(|e| e.status).unwrap_or(0),
            exited_at: view
                .exit
                .map(|e| MessageField::some(timestamp(e.at)))
                .unwrap_or_default(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn create(&self, ctx: &TtrpcContext, req: CreateTaskRequest) -> R<CreateTaskResponse> {
        let ns = self.namespace(ctx)?;
        if !req.checkpoint.is_empty() {
            return Err(
                TaskError::Unimplemented("checkpoint/restore is not supported".into()).into(),
            );
        }
        let rootfs = req
            .rootfs
            .iter()
            .map(|m| Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let sandbox = crate::runtime_options::sandbox_kind(req.options.as_ref())?;
        let pid = self
            .tasks
            .create(CreateRequest {
                namespace: ns,
                containerd: Some(self.containerd.clone()),
                id: req.id,
                bundle: req.bundle.into(),
                rootfs,
                io: IoSpec {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    terminal: req.terminal,
                },
                sandbox,
            })
            .await?;
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(&self, ctx: &TtrpcContext, req: StartRequest) -> R<StartResponse> {
        let ns = self.namespace(ctx)?;
        let pid = self.tasks.start(&ns, &req.id, &req.exec_id).await?;
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn delete(&self, ctx: &TtrpcContext, req: DeleteRequest) -> R<DeleteResponse> {
        let ns = self.namespace(ctx)?;
        let (pid, exit) = self.tasks.delete(&ns, &req.id, &req.exec_id).await?;
        Ok(DeleteResponse {
            pid: pid.max(0) as u32,
            exit_status: exit
                .map(|e| e.status)
                .unwrap_or(ironcell_basics::exit_status::KILLED),
            exited_at: MessageField::some(timestamp(
                exit.map(|e| e.at)
                    .unwrap_or_else(std::time::SystemTime::now),
            )),
            ..Default::default()
        })
    }

    async fn pids(&self, ctx: &TtrpcContext, req: PidsRequest) -> R<PidsResponse> {
        let ns = self.namespace(ctx)?;
        let pids = self.tasks.pids(&ns, &req.id).await?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, ctx: &TtrpcContext, req: PauseRequest) -> R<Empty> {
        let ns = self.namespace(ctx)?;
        self.tasks.pause(&ns, &req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, ctx: &TtrpcContext, req: ResumeRequest) -> R<Empty> {
        let ns = self.namespace(ctx)?;
        self.tasks.pause(&ns, &req.id, false).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, ctx: &TtrpcContext, req: KillRequest) -> R<Empty> {
        let ns = self.namespace(ctx)?;
        self.tasks
            .kill(&ns, &req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(Empty::new())
    }

    async fn exec(&self, ctx: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        let ns = self.namespace(ctx)?;
        let spec = req.spec.as_ref().map(|a| a.value.clone()).ok_or_else(|| {
            TaskError::InvalidArgument(format!("exec {}: no process spec", req.exec_id))
        })?;
        self.tasks.exec(
            &ns,
            &req.id,
            &req.exec_id,
            IoSpec {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
            },
            &spec,
        )?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, ctx: &TtrpcContext, req: ResizePtyRequest) -> R<Empty> {
        let ns = self.namespace(ctx)?;
        self.tasks
            .resize(&ns, &req.id, &req.exec_id, req.width, req.height)
            .await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, ctx: &TtrpcContext, req: CloseIORequest) -> R<Empty> {
        let ns = self.namespace(ctx)?;
        if req.stdin {
            self.tasks.close_io(&ns, &req.id, &req.exec_id)?;
        } else {
            self.tasks.get(&ns, &req.id)?;
        }
        Ok(Empty::new())
    }

    async fn update(&self, ctx: &TtrpcContext, req: UpdateTaskRequest) -> R<Empty> {
        let ns = self.namespace(ctx)?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| {
                TaskError::InvalidArgument(format!("update of {}: no resources", req.id))
            })?;
        self.tasks.update(&ns, &req.id, &resources).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, ctx: &TtrpcContext, req: WaitRequest) -> R<WaitResponse> {
        let ns = self.namespace(ctx)?;
        let exit = self.tasks.wait(&ns, &req.id, &req.exec_id).await?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn stats(&self, ctx: &TtrpcContext, req: StatsRequest) -> R<StatsResponse> {
        let ns = self.namespace(ctx)?;
        let stats = self.tasks.stats(&ns, &req.id).await?;
        Ok(StatsResponse {
            stats: MessageField::some(metrics::to_any(&stats, metrics::unified())),
            ..Default::default()
        })
    }

    async fn connect(&self, ctx: &TtrpcContext, req: ConnectRequest) -> R<ConnectResponse> {
        let ns = self.namespace(ctx)?;
        // As containerd's runc shim: the shim answers even for a task it
        // does not have yet (containerd connects to a pod's shim before it
        // creates the pod's containers there).
        let task_pid = self
            .tasks
            .state(&ns, &req.id, "")
            .map(|(_, view)| view.pid.max(0) as u32)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    /// containerd asks a task's shim to exit once the task is deleted. The
    /// daemon serves every other task too, so it stays.
    async fn shutdown(&self, ctx: &TtrpcContext, req: ShutdownRequest) -> R<Empty> {
        let ns = self.namespace(ctx)?;
        tracing::debug!(namespace = %ns, id = %req.id, tasks = self.tasks.count(), "shutdown ignored: the daemon serves every task");
        Ok(Empty::new())
    }
}
