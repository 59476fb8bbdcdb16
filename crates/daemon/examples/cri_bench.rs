//! Pod start latency through containerd 1.7's CRI, ironcell against the runc
//! shim (bench/README.md): a private containerd 1.7 (with its sandbox API
//! enabled) and three runtime handlers: ironcell through the sandbox API,
//! ironcell with a pause container, runc; each run is RunPodSandbox, CreateContainer and StartContainer of
//! `/bin/true`, until ContainerStatus says it exited (timed), then the pod's
//! stop and removal (not timed). The handlers take turns.
//!
//!     cargo run --release -p ironcelld --example cri_bench -- [--runs N]
//!
//! Needs root, `make setup` (containerd 1.7) and `make image`.

use std::time::{Duration, Instant};

use ironcell_testutil::cri::{
    channel, container_config, interleave, pod_config, print_latency_table, run_container,
    start_containerd, Cri, SANDBOX_API_HANDLER,
};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

/// ironcell through the sandbox API (no pause container), ironcell with a
/// pause container, and the runc shim.
const HANDLERS: [&str; 3] = [SANDBOX_API_HANDLER, "ironcell", "runc"];

/// One pod with one container of /bin/true, from RunPodSandbox to the
/// container's exit; returns the milliseconds, or why it failed.
async fn one(
    rt: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    n: usize,
    logs: &std::path::Path,
) -> Result<f64, String> {
    let name = format!("bench-{handler}-{n}");
    let pod = pod_config(&name, logs);
    let start = Instant::now();
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id;
    let result = async {
        let config = container_config("true", &["/bin/true"]);
        let id = run_container(rt, &pod_id, &pod, config).await?;
        ironcell_testutil::cri::wait_exited(rt, &id, Duration::from_secs(30)).await?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    }
    .await;
    let _ = rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await;
    let _ = rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await;
    result
}

fn main() {
    let mut runs = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            other => panic!("unknown argument {other} (usage: cri_bench [--runs N])"),
        }
    }
    // target/<profile>/examples/cri_bench: the daemon and shim are two up.
    let exe = std::env::current_exe().unwrap();
    let bins = exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf();
    let root = tempfile::Builder::new()
        .prefix("icd-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    let guard = ironcell_testutil::DaemonGuard(root.path().to_path_buf());
    let Some((c, logs)) = start_containerd(bins, root.path(), Cri::V17 { sandbox_api: true })
    else {
        eprintln!("cri_bench: needs root and containerd 1.7 (make setup)");
        std::process::exit(1);
    };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = tokio.block_on(async {
        let mut rt = RuntimeServiceClient::new(channel(c.socket()).await);
        interleave("cri_bench", &HANDLERS, runs, async |h: &str, n: usize| {
            one(&mut rt, h, n, &logs).await
        })
        .await
    });
    let medians = print_latency_table(
        "CRI pod + container (/bin/true) through containerd 1.7, start to exit, interleaved",
        &HANDLERS,
        &mut results,
    );
    if medians.len() == HANDLERS.len() {
        let runc = medians[HANDLERS.len() - 1];
        for (h, m) in HANDLERS.iter().zip(&medians).take(HANDLERS.len() - 1) {
            println!("ratio of medians {h}/runc: {:.2}x", m / runc);
        }
    }
    drop(c);
    drop(guard);
}
