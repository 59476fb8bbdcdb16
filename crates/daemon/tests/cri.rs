//! containerd 1.7 (Debian 13's, unpacked by scripts/fetch-containerd-1.7.sh)
//! driven through its CRI by a client in this test, as the kubelet drives
//! it, with ironcell as the RuntimeClass handler `ironcell`: a host-network
//! pod with two containers, ExecSync, ContainerStatus, logs, and the pod's
//! stop and removal, all served by one ironcelld.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironcell_testutil::cri::{
    channel, container_config, pod_config, start_containerd, IMAGE, SANDBOX_API_HANDLER,
};
use ironcell_testutil::*;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ironcelld"))
        .parent()
        .unwrap()
        .to_path_buf()
}

async fn wait_state(rt: &mut RuntimeServiceClient<Channel>, id: &str, want: ContainerState) {
    let start = Instant::now();
    loop {
        let st = rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if st.state == want as i32 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "container {id} never {want:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn cri_pod_with_two_containers() {
    run_pod(false);
}

/// The same pod through containerd 1.7's sandbox API (the experimental CRI
/// "sbserver", `sandbox_mode = "shim"`): ironcelld makes the pod itself (a
/// namespace holder, no pause container) and the containers share its IPC
/// namespace.
#[test]
fn cri_pod_through_the_sandbox_api() {
    run_pod(true);
}

fn run_pod(sandbox_api: bool) {
    let root = tempfile::Builder::new()
        .prefix("icd-")
        .tempdir_in("/tmp")
        .unwrap();
    // Even when an assertion fails, nothing of the daemon is left.
    let _guard = DaemonGuard(root.path().to_path_buf());
    let handler = if sandbox_api {
        SANDBOX_API_HANDLER
    } else {
        "ironcell"
    };
    let Some((c, logs)) = start_containerd(bin_dir(), root.path(), sandbox_api) else {
        return;
    };

    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut restarted = None;
    tokio.block_on(async {
        let ch = channel(c.socket()).await;
        let mut rt = RuntimeServiceClient::new(ch.clone());
        let mut img = ImageServiceClient::new(ch);
        let v = rt
            .version(VersionRequest::default())
            .await
            .unwrap_or_else(|e| panic!("CRI Version: {e}\n{}", c.log()))
            .into_inner();
        // IRONCELL_CRI_VERSION: the version expected when another containerd
        // is pointed at with IRONCELL_CONTAINERD17_BIN (2.1 works too).
        let want = std::env::var("IRONCELL_CRI_VERSION").unwrap_or_else(|_| "1.7".into());
        assert!(v.runtime_version.starts_with(&want), "{v:?}");
        let images = img
            .list_images(ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            images
                .images
                .iter()
                .any(|i| i.repo_tags.iter().any(|t| t == IMAGE)),
            "{images:?}"
        );

        let pod = pod_config(if sandbox_api { "sb-pod" } else { "cri-pod" }, &logs);
        let pod_id = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()))
            .into_inner()
            .pod_sandbox_id;

        let mut ids = Vec::new();
        for (name, script) in [
            ("web", "echo web-started; while true; do sleep 0.2; done"),
            ("side", "echo side-started; sleep 1000"),
        ] {
            let id = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_id.clone(),
                    config: Some(container_config(name, &["sh", "-c", script])),
                    sandbox_config: Some(pod.clone()),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
            ids.push(id);
        }
        for id in &ids {
            wait_state(&mut rt, id, ContainerState::ContainerRunning).await;
        }

        let out = rt
            .exec_sync(ExecSyncRequest {
                container_id: ids[0].clone(),
                cmd: vec!["sh".into(), "-c".into(), "echo exec-sync; exit 3".into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "exec-sync");
        assert_eq!(out.exit_code, 3);

        // The pod's containers share its IPC namespace, not the host's.
        let mut ipc = Vec::new();
        for id in &ids {
            let out = rt
                .exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["readlink".into(), "/proc/self/ns/ipc".into()],
                    timeout: 10,
                })
                .await
                .unwrap()
                .into_inner();
            ipc.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let host = std::fs::read_link("/proc/self/ns/ipc").unwrap();
        assert_eq!(ipc[0], ipc[1]);
        assert!(ipc[0].starts_with("ipc:["), "{ipc:?}");
        assert_ne!(ipc[0], host.to_string_lossy());
        // Through the sandbox API, no task runs for the pod itself.
        let pod_task = root.path().join("tasks/k8s.io").join(&pod_id);
        assert_eq!(pod_task.exists(), !sandbox_api, "{}", pod_task.display());

        // The containers' output reached CRI's log files.
        let start = Instant::now();
        loop {
            let web = std::fs::read_to_string(logs.join("web.log")).unwrap_or_default();
            let side = std::fs::read_to_string(logs.join("side.log")).unwrap_or_default();
            if web.contains("web-started") && side.contains("side-started") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "logs: {web:?} {side:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        if sandbox_api {
            // The daemon killed and started again under the running pod: the
            // pod and its containers are re-attached.
            kill_daemon(root.path());
            restarted = Some(start_daemon(
                Path::new(env!("CARGO_BIN_EXE_ironcelld")),
                root.path(),
            ));
            let out = rt
                .exec_sync(ExecSyncRequest {
                    container_id: ids[1].clone(),
                    cmd: vec!["echo".into(), "after-restart".into()],
                    timeout: 10,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "after-restart");
        }

        let status = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32);

        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
        for id in &ids {
            wait_state(&mut rt, id, ContainerState::ContainerExited).await;
        }
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
        let left = rt
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(left.containers.is_empty(), "{left:?}");
    });

    // One daemon and its keeper, and nothing of the pod left in its state.
    assert_eq!(
        ironcelld_processes(root.path(), false).len(),
        1,
        "one daemon"
    );
    assert_eq!(
        ironcelld_processes(root.path(), true).len(),
        1,
        "its keeper"
    );
    for dir in ["tasks/k8s.io", "containers/k8s.io"] {
        let left: Vec<_> = std::fs::read_dir(root.path().join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir} left: {left:?}");
    }
    drop(c);
    drop(_guard);
    if let Some(mut d) = restarted {
        let _ = d.wait();
    }
}
