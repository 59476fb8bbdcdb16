//! containerd 1.7's shim-side sandbox API
//! (`containerd.runtime.sandbox.v1.Sandbox`) over the daemon's pods
//! (`pod.rs`): each call of one endpoint (one containerd namespace) is the
//! [`Pods`] call of the same name, its answer in the API's types.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::sandbox_api::*;
use containerd_shim_protos::sandbox_async::Sandbox as SandboxService;
use containerd_shim_protos::types::platform::Platform;
use ttrpc::asynchronous::TtrpcContext;

use crate::pod::{platform, Pods};
use crate::pod_config::is_pod_config;
use crate::time::timestamp;

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
