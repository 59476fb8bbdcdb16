//! ironcelld's supervision under the Sandbox API: the daemon, the keeper
//! or both killed (SIGKILL) at random points of concurrent pod starts
//! through containerd 1.7's CRI (ironcell's sandbox-API handler: the daemon
//! makes each pod itself, then its container) leave nothing behind once
//! the pods are stopped and removed, as the kubelet does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironcell_testutil::cri::{
    channel, container_config, run_container, start_containerd, Cri, SANDBOX_API_HANDLER,
};
use ironcell_testutil::kubelet::{assert_nothing_left, pod, remove_all_pods, CriGuard, PodCgroup};
use ironcell_testutil::*;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ironcelld"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The processes that hold a pod's namespaces (`ironcelld helper pod`,
/// of this build's binary: this test binary runs no other daemon).
fn pod_holders() -> Vec<i32> {
    let exe = bin_dir().join("ironcelld");
    processes_with(&exe.display().to_string())
        .into_iter()
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.get(1) == Some(&&b"helper"[..]) && args.get(2) == Some(&&b"pod"[..])
        })
        .collect()
}

/// A pod and its container, as the kubelet starts them. Errors are
/// expected while the daemon or its keeper is down: the call that failed
/// is returned.
async fn start_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    name: &str,
    logs: &Path,
    cgroup: &Path,
    marker: &str,
) -> Result<(), String> {
    let config = pod(name, logs, cgroup);
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: SANDBOX_API_HANDLER.into(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {}", e.message()))?
        .into_inner()
        .pod_sandbox_id;
    let script = format!("sleep 3600; : {marker}");
    let container = container_config("c", &["sh", "-c", &script]);
    run_container(rt, &pod_id, &config, container).await?;
    Ok(())
}

/// Three rounds of three concurrent pod starts (RunPodSandbox,
/// CreateContainer, StartContainer), with the daemon, the keeper or both
/// killed at a random moment of each; the seed is printed
/// (`IRONCELL_FAULT_SEED` replays it). Every container that runs
/// afterwards answers ExecSync; once every pod is stopped and removed, no
/// container process, pod holder, cgroup, mount, task or pod record is
/// left.
#[test]
fn pod_kills_at_random_points_leave_nothing_behind() {
    if !need_root("pod_kills_at_random_points_leave_nothing_behind") {
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("icd-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = root.path();
    let _daemon = DaemonGuard(root.to_path_buf());
    let cgroup = PodCgroup::new("ironcell-pod-faults");
    let Some((c, logs)) = start_containerd(bin_dir(), root, Cri::V17 { sandbox_api: true }) else {
        return;
    };
    let _guard = CriGuard(c.socket());
    let mut rng = FaultRng::from_env();
    let mut next = |bound: u64| rng.below(bound);
    let marker = unique("pod-fault");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let rt = RuntimeServiceClient::new(channel(c.socket()).await);
        const ROUNDS: usize = 3;
        const PER_ROUND: usize = 3;
        for round in 0..ROUNDS {
            let starts: Vec<_> = (0..PER_ROUND)
                .map(|i| {
                    let mut rt = rt.clone();
                    let (logs, cgroup, marker) = (logs.clone(), cgroup.0.clone(), marker.clone());
                    tokio::spawn(async move {
                        start_pod(&mut rt, &format!("p{round}{i}"), &logs, &cgroup, &marker).await
                    })
                })
                .collect();
            let delay = Duration::from_millis(next(800));
            let victim = ["daemon", "keeper", "daemon and keeper"][next(3) as usize];
            let root_path = root.to_path_buf();
            let killed = tokio::task::spawn_blocking(move || {
                // A daemon exists once the first pod start reached the
                // shim; the kill comes at a random moment after.
                wait_for_new_daemon(&root_path, &[], Duration::from_secs(20));
                std::thread::sleep(delay);
                match victim {
                    "daemon" => {
                        kill_daemon(&root_path);
                    }
                    "keeper" => {
                        kill_keeper(&root_path);
                    }
                    _ => {
                        kill_keeper(&root_path);
                        kill_daemon(&root_path);
                    }
                }
            });
            let mut ok = 0;
            for s in starts {
                match s.await.unwrap() {
                    Ok(()) => ok += 1,
                    Err(e) => eprintln!("a pod start failed: {e}"),
                }
            }
            killed.await.unwrap();
            eprintln!(
                "round {round}: killed the {victim} after {} ms; {ok} of {PER_ROUND} pods started",
                delay.as_millis()
            );
        }

        // Every container that runs answers.
        let mut rt = rt;
        let containers = rt
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        let mut answered = 0;
        for ct in containers
            .iter()
            .filter(|ct| ct.state == ContainerState::ContainerRunning as i32)
        {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let out = rt
                    .exec_sync(ExecSyncRequest {
                        container_id: ct.id.clone(),
                        cmd: vec!["echo".into(), "alive".into()],
                        timeout: 10,
                    })
                    .await;
                match out {
                    Ok(out) => {
                        let out = out.into_inner();
                        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alive");
                        answered += 1;
                        break;
                    }
                    // Given up with a lost keeper: its pod goes below.
                    Err(_) if still_running(&mut rt, &ct.id).await.is_none() => break,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "ExecSync in {} failed: {e}",
                            ct.id
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        eprintln!("{answered} running containers answered ExecSync after the kills");

        remove_all_pods(&mut rt, Duration::from_secs(60)).await;
    });
    let state = [
        root.join("tasks/k8s.io"),
        root.join("containers/k8s.io"),
        root.join("pods/k8s.io"),
    ];
    // The containers of pods containerd gave up with a lost keeper are
    // removed by the daemon itself, 10 s after it found the keeper lost
    // (containerd deletes no task of such a pod).
    let start = Instant::now();
    let left = |dir: &PathBuf| std::fs::read_dir(dir).map_or(0, |d| d.count());
    while state.iter().map(left).sum::<usize>() > 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the daemon's state emptied {} ms after the pods were removed",
        start.elapsed().as_millis()
    );
    assert_nothing_left(&c, &cgroup, &marker, &state);
    let holders = pod_holders();
    assert!(holders.is_empty(), "pod holders left: {holders:?}");
}

/// Some(()) while container `id` is listed as running.
async fn still_running(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> Option<()> {
    let st = rt
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .ok()?
        .into_inner()
        .status?;
    (st.state == ContainerState::ContainerRunning as i32).then_some(())
}
