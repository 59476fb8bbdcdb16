//! containerd 1.7 (Debian 13's, unpacked by scripts/fetch-containerd-1.7.sh)
//! driven through its CRI by a client in this test, as the kubelet drives
//! it, with ironcell as the RuntimeClass handler `ironcell`: a host-network
//! pod with two containers, ExecSync, ContainerStatus, logs, and the pod's
//! stop and removal, all served by one ironcelld.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironcell_testutil::cri::{
    channel, cluster_dns, container_config, container_namespaces, exec_script, pod_config,
    pod_namespaces, run_container, run_pod_sandbox, start_containerd, start_containerd_with,
    start_controller, stop_and_remove_pod, wait_for_state, CniBridge, Cri, IMAGE,
    SANDBOXER_HANDLER, SANDBOX_API_HANDLER,
};
use ironcell_testutil::kubelet::{
    assert_nothing_left, drive, CriGuard, Pod as KubeletPod, PodCgroup,
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

/// `path` in the cgroup hierarchy `controller` (cgroup v1), or in the
/// unified hierarchy when `controller` is empty or not mounted.
fn cgroup_dir(controller: &str, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    if !controller.is_empty() && v1.join("cgroup.procs").exists() {
        v1.join(rel)
    } else {
        Path::new("/sys/fs/cgroup").join(rel)
    }
}

/// Removes a test pod cgroup from every hierarchy (the kubelet's job).
struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let rel = self.0.strip_prefix("/").unwrap_or(&self.0).to_path_buf();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| d.flatten().map(|e| e.path().join(&rel)).collect())
            .unwrap_or_default();
        dirs.push(Path::new("/sys/fs/cgroup").join(&rel));
        for d in dirs.into_iter().filter(|d| d.is_dir()) {
            // Children first (containers' cgroups left by a failed test).
            if let Ok(children) = std::fs::read_dir(&d) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// The pids of the pod processes (`ironcelld helper pod`) of the daemon
/// at `root`.
fn ironcelld_pod_holders(root: &Path) -> Vec<i32> {
    let daemons = ironcelld_processes(root, true);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, a)| a.split_whitespace().nth(1)?.parse::<i32>().ok());
            cmdline.split(|b| *b == 0).any(|a| a == b"pod")
                && ppid.is_some_and(|p| daemons.contains(&p))
        })
        .collect()
}

async fn wait_state(rt: &mut RuntimeServiceClient<Channel>, id: &str, want: ContainerState) {
    let (limit, poll) = (Duration::from_secs(20), Duration::from_millis(100));
    if let Err(e) = wait_for_state(rt, id, want, limit, poll).await {
        panic!("{e}");
    }
}

#[test]
fn cri_pod_with_two_containers() {
    run_pod(Cri::V17 { sandbox_api: false });
}

/// The same pod through containerd 1.7's sandbox API (the experimental CRI
/// "sbserver", `sandbox_mode = "shim"`): ironcelld makes the pod itself (a
/// namespace holder, no pause container) and the containers share its IPC
/// namespace.
#[test]
fn cri_pod_through_the_sandbox_api() {
    run_pod(Cri::V17 { sandbox_api: true });
}

/// The same pod through containerd 2.x's CRI with ironcelld as its sandbox
/// controller (a `sandbox` proxy plugin): containerd calls the pod's
/// containers on the Task API address the controller returns, without any
/// shim process.
#[test]
fn cri_pod_through_the_sandbox_controller() {
    run_pod(Cri::V2);
}

fn run_pod(cri: Cri) {
    let sandbox_api = cri != (Cri::V17 { sandbox_api: false });
    let root = tempfile::Builder::new()
        .prefix("icd-")
        .tempdir_in("/tmp")
        .unwrap();
    // Even when an assertion fails, nothing of the daemon is left.
    let _guard = DaemonGuard(root.path().to_path_buf());
    let handler = match cri {
        Cri::V17 { sandbox_api: true } => SANDBOX_API_HANDLER,
        Cri::V17 { sandbox_api: false } => "ironcell",
        Cri::V2 => SANDBOXER_HANDLER,
    };
    let pod_cgroup = PathBuf::from(format!("/ironcell-cri-{}", std::process::id()));
    let _cgroups = CgroupGuard(pod_cgroup.clone());
    let Some((mut c, logs)) = start_containerd(bin_dir(), root.path(), cri) else {
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
        let want = match cri {
            Cri::V17 { .. } => {
                std::env::var("IRONCELL_CRI_VERSION").unwrap_or_else(|_| cri.version().into())
            }
            Cri::V2 => cri.version().into(),
        };
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

        let mut pod = pod_config(if sandbox_api { "sb-pod" } else { "cri-pod" }, &logs);
        // shareProcessNamespace: the holder's PID namespace init is found
        // again by the restarted daemon.
        pod_namespaces(&mut pod).pid = NamespaceMode::Pod as i32;
        if cri == Cri::V2 {
            // A pod cgroup, as the kubelet gives each pod: the pod's process
            // joins it, and the pod's statistics come from it.
            if let Some(linux) = pod.linux.as_mut() {
                linux.cgroup_parent = pod_cgroup.display().to_string();
            }
        }
        let pod_id = run_pod_sandbox(&mut rt, &pod, handler)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));

        let mut ids = Vec::new();
        for (name, script) in [
            ("web", "echo web-started; while true; do sleep 0.2; done"),
            ("side", "echo side-started; sleep 1000"),
        ] {
            let mut config = container_config(name, &["sh", "-c", script]);
            container_namespaces(&mut config).pid = NamespaceMode::Pod as i32;
            let id = run_container(&mut rt, &pod_id, &pod, config)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
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
        if cri == Cri::V2 {
            // containerd sent the containers to the controller's address
            // itself: no shim `start` ran (it would have written `address`).
            for id in &ids {
                let bundle = c
                    .dir()
                    .join("state/io.containerd.runtime.v2.task/k8s.io")
                    .join(id);
                let files: Vec<_> = std::fs::read_dir(&bundle)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                assert!(files.iter().any(|f| f == "bootstrap.json"), "{files:?}");
                assert!(!files.iter().any(|f| f == "address"), "{files:?}");
                let bootstrap =
                    std::fs::read_to_string(bundle.join("bootstrap.json")).unwrap_or_default();
                assert!(bootstrap.contains("ttrpc"), "{bootstrap}");
            }
        }
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
            let old = kill_daemon(root.path());
            let bin = Path::new(env!("CARGO_BIN_EXE_ironcelld"));
            match cri {
                // Started by hand, so restarted by hand.
                Cri::V2 => restarted = Some(start_controller(bin, root.path(), &c)),
                // Started by the shim: the keeper starts it again.
                Cri::V17 { .. } => {
                    wait_for_new_daemon(root.path(), &old, Duration::from_secs(10));
                }
            }
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
            // The pod's PID namespace: web's loop seen from side, and no
            // host process; the pid the pod reports is still its init's.
            // (The bracket keeps the pattern from matching this script.)
            let script = "grep -l 'web-s[t]arted' /proc/[0-9]*/cmdline | wc -l; \
                          ls -d /proc/[0-9]* | wc -l";
            let (_, text) = exec_script(&mut rt, &ids[1], script).await;
            let counts: Vec<usize> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            assert!(
                counts.len() == 2 && counts[0] == 1 && counts[1] < 10,
                "the pod's PID namespace after the restart: {text:?}"
            );
        }
        if cri == Cri::V2 {
            // containerd restarted too: it finds the containers again from
            // their bundles and the pod's address from the controller.
            c.restart();
            rt = ironcell_testutil::cri::runtime_after_restart(&c).await;
            let out = rt
                .exec_sync(ExecSyncRequest {
                    container_id: ids[0].clone(),
                    cmd: vec!["echo".into(), "after-containerd-restart".into()],
                    timeout: 10,
                })
                .await
                .unwrap_or_else(|e| panic!("ExecSync after a containerd restart: {e}\n{}", c.log()))
                .into_inner();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "after-containerd-restart"
            );
            // The pod's statistics: its cgroup holds the pod's process and
            // both containers.
            let stats = rt
                .pod_sandbox_stats(PodSandboxStatsRequest {
                    pod_sandbox_id: pod_id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("PodSandboxStats: {e}\n{}", c.log()))
                .into_inner()
                .stats
                .unwrap();
            let memory = stats
                .linux
                .as_ref()
                .and_then(|l| l.memory.as_ref())
                .and_then(|m| m.working_set_bytes.as_ref())
                .map(|v| v.value);
            assert!(memory.unwrap_or(0) > 0, "{stats:?}");
            let holder = ironcelld_pod_holders(root.path());
            assert_eq!(holder.len(), 1, "one pod process: {holder:?}");
            let procs =
                std::fs::read_to_string(cgroup_dir("memory", &pod_cgroup).join("cgroup.procs"))
                    .or_else(|_| {
                        std::fs::read_to_string(cgroup_dir("", &pod_cgroup).join("cgroup.procs"))
                    })
                    .unwrap_or_default();
            assert!(
                procs.lines().any(|l| l.trim() == holder[0].to_string()),
                "pod process {} not in {}: {procs:?}",
                holder[0],
                pod_cgroup.display()
            );
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

/// The kubelet's pods of testutil::kubelet through containerd 1.7's CRI
/// with ironcelld's handler `ironcell` (a pause container per pod), the
/// same functions crates/cli/tests/cri.rs runs through containerd's runc
/// shim with the ironcell CLI.
fn through_ironcelld(test: &str, what: KubeletPod) {
    if !need_root(test) {
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("icd-")
        .tempdir_in("/tmp")
        .unwrap();
    let _daemon = DaemonGuard(root.path().to_path_buf());
    let cgroup = PodCgroup::new("ironcell-cri-icd");
    let Some((c, logs)) = start_containerd(bin_dir(), root.path(), Cri::V17 { sandbox_api: false })
    else {
        return;
    };
    let _guard = CriGuard(c.socket());
    let marker = unique("kubelet-marker");
    let label = format!("containerd 1.7 + ironcelld ({test})");
    drive(
        &c,
        "ironcell",
        &label,
        what,
        root.path(),
        &logs,
        &cgroup,
        &marker,
    );
    let state = [
        root.path().join("tasks/k8s.io"),
        root.path().join("containers/k8s.io"),
    ];
    assert_nothing_left(&c, &cgroup, &marker, &state);
}

/// A pod's lifecycle as the kubelet drives it (testutil::kubelet's
/// pod_lifecycle): exits with their reasons, OOMKilled, ExecSync, logs,
/// stop and removal; every call well inside the kubelet's timeouts, and
/// nothing left afterwards.
#[test]
fn cri_pod_lifecycle_through_ironcelld() {
    through_ironcelld("cri_pod_lifecycle_through_ironcelld", KubeletPod::Lifecycle);
}

/// Bidirectional ("rshared") and HostToContainer ("rslave") host-path
/// mounts.
#[test]
fn cri_mount_propagation_through_ironcelld() {
    through_ironcelld(
        "cri_mount_propagation_through_ironcelld",
        KubeletPod::Propagation,
    );
}

/// An ExecSync'd process is confined as the container's init.
#[test]
fn cri_exec_is_confined_as_the_init_through_ironcelld() {
    through_ironcelld(
        "cri_exec_is_confined_as_the_init_through_ironcelld",
        KubeletPod::Confinement,
    );
}

/// CRI UpdateContainerResources: the new limits in the container's cgroup.
#[test]
fn cri_update_container_resources_through_ironcelld() {
    through_ironcelld(
        "cri_update_container_resources_through_ironcelld",
        KubeletPod::Update,
    );
}

/// A pod on a CNI network with a hostname and sysctls, three ways: the
/// pause container of the `ironcell` handler (containerd 1.7) as the
/// reference, 1.7's shim-side sandbox API and 2.1's sandbox controller,
/// where the daemon's pod holder owns the pod's namespaces. Each pod's
/// container sees the pod's hostname (uname's), the pod's network sysctl
/// in its
/// network namespace and its IPC sysctl in its IPC namespace (not the
/// host's), and an address on the bridge.
#[test]
fn cri_pod_hostname_and_sysctls() {
    let test = "cri_pod_hostname_and_sysctls";
    if !need_root(test) {
        return;
    }
    let host_ping = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap();
    let host_shm = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap();
    for (cri, handler) in [
        (Cri::V17 { sandbox_api: false }, "ironcell"),
        (Cri::V17 { sandbox_api: true }, SANDBOX_API_HANDLER),
        (Cri::V2, SANDBOXER_HANDLER),
    ] {
        let Some(net) = CniBridge::new(test) else {
            return;
        };
        let root = tempfile::Builder::new()
            .prefix("icd-")
            .tempdir_in("/tmp")
            .unwrap();
        let _guard = DaemonGuard(root.path().to_path_buf());
        let Some((c, logs)) =
            start_containerd_with(bin_dir(), root.path(), cri, net.config(cri), vec![])
        else {
            return;
        };
        let _cri_guard = CriGuard(c.socket());
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(async {
            let mut rt = RuntimeServiceClient::new(channel(c.socket()).await);
            let mut pod = pod_config("named", &logs);
            pod.hostname = "named-pod".into();
            let (dns, resolv_conf) = cluster_dns();
            pod.dns_config = Some(dns);
            let linux = pod.linux.as_mut().unwrap();
            linux.sysctls = [
                ("net.ipv4.ping_group_range", "0 4242"),
                ("kernel.shm_rmid_forced", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let ns = pod_namespaces(&mut pod);
            ns.network = NamespaceMode::Pod as i32;
            // shareProcessNamespace: one PID namespace for the pod.
            ns.pid = NamespaceMode::Pod as i32;
            if handler != "ironcell" {
                // hostUsers: false, which a pod made here cannot give.
                let mut own_users = pod.clone();
                pod_namespaces(&mut own_users).userns_options = Some(UserNamespace {
                    mode: NamespaceMode::Pod as i32,
                    uids: vec![IdMapping {
                        host_id: 100_000,
                        container_id: 0,
                        length: 65536,
                    }],
                    gids: vec![IdMapping {
                        host_id: 100_000,
                        container_id: 0,
                        length: 65536,
                    }],
                });
                let e = run_pod_sandbox(&mut rt, &own_users, handler)
                    .await
                    .expect_err("a pod of its own user namespace");
                assert!(e.message().contains("hostUsers: false"), "{handler}: {e}");
            }
            let pod_id = run_pod_sandbox(&mut rt, &pod, handler)
                .await
                .unwrap_or_else(|e| panic!("{handler}: RunPodSandbox: {e}\n{}", c.log()));
            let in_pod_pid = |name: &str| {
                let mut config = container_config(name, &["sleep", "1000"]);
                let security = config
                    .linux
                    .as_mut()
                    .and_then(|l| l.security_context.as_mut())
                    .unwrap();
                // A debugging sidecar's capability: it may ptrace what it
                // sees, pid 1 included.
                security.capabilities = Some(Capability {
                    add_capabilities: vec!["SYS_PTRACE".into()],
                    ..Default::default()
                });
                let ns = security.namespace_options.as_mut().unwrap();
                (ns.pid, ns.network) = (NamespaceMode::Pod as i32, NamespaceMode::Pod as i32);
                config
            };
            let config = in_pod_pid("c");
            let id = run_container(&mut rt, &pod_id, &pod, config)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            wait_state(&mut rt, &id, ContainerState::ContainerRunning).await;
            let script = "hostname; cat /proc/sys/net/ipv4/ping_group_range \
                          /proc/sys/kernel/shm_rmid_forced; ip -4 -o addr show eth0";
            let (_, text) = exec_script(&mut rt, &id, script).await;
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.first(), Some(&"named-pod"), "{handler}: {text}");
            assert_eq!(
                lines
                    .get(1)
                    .map(|l| l.split_whitespace().collect::<Vec<_>>()),
                Some(vec!["0", "4242"]),
                "{handler}: {text}"
            );
            assert_eq!(lines.get(2), Some(&"1"), "{handler}: {text}");
            assert!(
                lines.get(3).is_some_and(|l| l.contains("inet ")),
                "{handler}: {text}"
            );
            // The pod's /dev/shm is one for its containers.
            let other = run_container(&mut rt, &pod_id, &pod, in_pod_pid("d"))
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            wait_state(&mut rt, &other, ContainerState::ContainerRunning).await;
            let (code, _) = exec_script(&mut rt, &id, "echo pod-shm > /dev/shm/seen").await;
            assert_eq!(code, 0, "{handler}");
            let script = "cat /dev/shm/seen; stat -f -c %T /dev/shm; df -k /dev/shm | tail -1";
            let (_, text) = exec_script(&mut rt, &other, script).await;
            let lines: Vec<&str> = text.lines().collect();
            // A tmpfs of containerd's default size (64 MiB), not the disk.
            assert_eq!(lines[..2], ["pod-shm", "tmpfs"], "{handler}: {text}");
            assert_eq!(
                lines.get(2).and_then(|l| l.split_whitespace().nth(1)),
                Some("65536"),
                "{handler}: {text}"
            );
            // The pod's PID namespace: both containers' processes, none of
            // the host's.
            let script = "grep -l ^sleep /proc/[0-9]*/cmdline | wc -l; \
                          ls -d /proc/[0-9]* | wc -l; cat /proc/1/cmdline";
            let (_, text) = exec_script(&mut rt, &other, script).await;
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.first(), Some(&"2"), "{handler}: {text:?}");
            let count: usize = lines
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            assert!(count < 10, "{handler}: {count} processes seen: {text:?}");
            let host_init = std::fs::read("/proc/1/cmdline").unwrap();
            assert!(
                !text.as_bytes().ends_with(&host_init),
                "{handler}: the host's init is the pod's: {text:?}"
            );
            if handler != "ironcell" {
                // The holder's init is pid 1: it gives a container that
                // may ptrace it nothing of the host (its root is empty, it
                // is nobody without capabilities), as a pause container.
                let script = "ls -A /proc/1/root/ | wc -l; ls /proc/1/fd | wc -l; \
                              grep -E '^(Uid|CapEff)' /proc/1/status";
                let (_, text) = exec_script(&mut rt, &other, script).await;
                let words: Vec<&str> = text.split_whitespace().collect();
                assert_eq!(
                    words,
                    [
                        "0",
                        "0",
                        "Uid:",
                        "65534",
                        "65534",
                        "65534",
                        "65534",
                        "CapEff:",
                        "0000000000000000"
                    ],
                    "{handler}: {text:?}"
                );
            }
            // The pod's files, as containerd's pause path writes them: its
            // DNS config (the cluster's) and its hostname.
            let (_, text) = exec_script(&mut rt, &id, "cat /etc/resolv.conf /etc/hostname").await;
            assert_eq!(text, format!("{resolv_conf}named-pod\n"), "{handler}");
            stop_and_remove_pod(&mut rt, &pod_id)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            // The holder and its PID namespace's init are gone.
            let mark = format!("\0pod\0--sandbox\0k8s.io/{pod_id}\0");
            let holders: Vec<String> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .is_ok_and(|c| c.windows(mark.len()).any(|w| w == mark.as_bytes()))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                holders.is_empty(),
                "{handler}: pod processes left: {holders:?}"
            );
        });
        let files = root.path().join("pod-files/k8s.io");
        let left: Vec<_> = std::fs::read_dir(&files)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{handler}: pod files left: {left:?}");
        // Dropped in reverse: the CRI guard first, then containerd, the
        // daemon and the bridge.
    }
    // The host's own values are untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap(),
        host_ping
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap(),
        host_shm
    );
}
