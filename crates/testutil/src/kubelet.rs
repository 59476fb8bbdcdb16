//! What the kubelet does with a pod through CRI, as functions shared by the
//! CRI tests of each runtime path (containerd's runc shim with the ironcell
//! CLI as its runc binary, in the CLI's tests; ironcelld, in the daemon's):
//! a pod's lifecycle with every call timed, a mount-propagation pod, and the
//! confinement of an ExecSync'd process against its container's init.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

use crate::cri::{container_config, pod_config};
use crate::{confinement_diff, processes_with, CONFINEMENT_SNAPSHOT};

/// The pods this module drives.
#[derive(Clone, Copy, Debug)]
pub enum Pod {
    /// [`pod_lifecycle`].
    Lifecycle,
    /// [`mount_propagation`], on a shared mount under the test's directory.
    Propagation,
    /// [`exec_confinement`].
    Confinement,
    /// [`update_resources`].
    Update,
}

/// Runs pod `what` through containerd `c`'s CRI with runtime handler
/// `handler` (`label` names the runtime path in the printed timings), with
/// the pods' logs under `logs` and their cgroups under `cgroup`; `dir` is
/// the test's own directory. The caller checks afterwards that nothing is
/// left ([`assert_nothing_left`] with `marker`).
#[allow(clippy::too_many_arguments)]
pub fn drive(
    c: &crate::containerd::Containerd,
    handler: &str,
    label: &str,
    what: Pod,
    dir: &Path,
    logs: &Path,
    cgroup: &PodCgroup,
    marker: &str,
) {
    let shared = match what {
        Pod::Propagation => Some(SharedMount::new(&dir.join("shared"))),
        _ => None,
    };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let rt = RuntimeServiceClient::new(crate::cri::channel(c.socket()).await);
        let mut calls = Calls::new(rt, label, &c.dir().join("containerd.log"));
        match what {
            Pod::Lifecycle => pod_lifecycle(&mut calls, handler, logs, cgroup, marker).await,
            Pod::Propagation => {
                let shared = shared.as_ref().unwrap();
                mount_propagation(&mut calls, c, handler, logs, cgroup, marker, shared).await
            }
            Pod::Update => update_resources(&mut calls, c, handler, logs, cgroup, marker).await,
            Pod::Confinement => {
                let out = dir.join("out");
                exec_confinement(&mut calls, handler, logs, cgroup, marker, &out).await
            }
        }
        calls.print();
    });
}

/// The bound on every CRI call. The kubelet gives each call 2 minutes
/// (`--runtime-request-timeout`) and its probes far less; a call of a
/// healthy runtime takes well under a second.
pub const CALL_LIMIT: Duration = Duration::from_secs(10);

/// The CRI calls of one test, timed: each must return within
/// [`CALL_LIMIT`] (plus the grace period it was given), and the table is
/// printed at the end.
pub struct Calls {
    pub rt: RuntimeServiceClient<Channel>,
    /// The runtime path, in the printed table.
    label: String,
    /// containerd's log, shown when a call fails.
    log: PathBuf,
    rows: Vec<(String, Duration)>,
}

impl Calls {
    pub fn new(rt: RuntimeServiceClient<Channel>, label: &str, containerd_log: &Path) -> Calls {
        Calls {
            rt,
            label: label.into(),
            log: containerd_log.to_path_buf(),
            rows: Vec::new(),
        }
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs a CRI call, records its time, and asserts it succeeded within
    /// [`CALL_LIMIT`] plus `grace`.
    pub async fn timed_grace<T, F>(&mut self, call: &str, grace: Duration, f: F) -> T
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let r = f.await;
        let took = start.elapsed();
        self.rows.push((call.to_string(), took));
        let r = match r {
            Ok(r) => r.into_inner(),
            Err(e) => panic!(
                "[{}] {call} failed after {took:?}: {e}\ncontainerd's log:\n{}",
                self.label,
                self.log_tail()
            ),
        };
        assert!(
            took < CALL_LIMIT + grace,
            "[{}] {call} took {took:?}, over {:?}\ncontainerd's log:\n{}",
            self.label,
            CALL_LIMIT + grace,
            self.log_tail()
        );
        r
    }

    pub async fn timed<T, F>(&mut self, call: &str, f: F) -> T
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.timed_grace(call, Duration::ZERO, f).await
    }

    /// Records the time of a call expected to fail, and returns its error.
    pub async fn timed_err<T: std::fmt::Debug, F>(&mut self, call: &str, f: F) -> tonic::Status
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let r = f.await;
        let took = start.elapsed();
        self.rows.push((call.to_string(), took));
        assert!(took < CALL_LIMIT, "[{}] {call} took {took:?}", self.label);
        match r {
            Ok(r) => panic!("[{}] {call} should have failed: {r:?}", self.label),
            Err(e) => e,
        }
    }

    /// Prints the table of calls and times (stderr: `--nocapture` shows it).
    pub fn print(&self) {
        let mut t = format!(
            "\n== CRI calls through {} (each < {:?})\n| call | ms |\n| --- | ---: |\n",
            self.label, CALL_LIMIT
        );
        for (call, took) in &self.rows {
            t += &format!("| {call} | {:.1} |\n", took.as_secs_f64() * 1000.0);
        }
        let total: Duration = self.rows.iter().map(|r| r.1).sum();
        t += &format!(
            "| total ({} calls) | {:.1} |\n",
            self.rows.len(),
            total.as_secs_f64() * 1000.0
        );
        eprintln!("{t}");
    }

    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        let mut rt = self.rt.clone();
        let status = rt.container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        });
        self.timed("ContainerStatus", status)
            .await
            .status
            .expect("ContainerStatus without a status")
    }

    /// Polls ContainerStatus (as the kubelet's PLEG relists) until the
    /// container is in `want`; returns its status.
    pub async fn wait_state(&mut self, id: &str, want: ContainerState) -> ContainerStatus {
        let start = Instant::now();
        loop {
            let st = self
                .rt
                .container_status(ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .unwrap_or_else(|e| panic!("[{}] ContainerStatus {id}: {e}", self.label))
                .into_inner()
                .status
                .unwrap();
            if st.state == want as i32 {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "[{}] container {id} never {want:?}: {st:?}\ncontainerd's log:\n{}",
                self.label,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// RunPodSandbox with `pod`, and its status READY.
    pub async fn run_pod(&mut self, pod: &PodSandboxConfig, handler: &str) -> String {
        let mut rt = self.rt.clone();
        let run = rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: handler.into(),
        });
        let id = self.timed("RunPodSandbox", run).await.pod_sandbox_id;
        let mut rt = self.rt.clone();
        let status = rt.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        });
        let st = self.timed("PodSandboxStatus", status).await.status.unwrap();
        assert_eq!(st.state, PodSandboxState::SandboxReady as i32, "{st:?}");
        id
    }

    /// CreateContainer and StartContainer.
    pub async fn start(
        &mut self,
        pod_id: &str,
        pod: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> String {
        let name = config.metadata.as_ref().unwrap().name.clone();
        let mut rt = self.rt.clone();
        let create = rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        });
        let id = self
            .timed(&format!("CreateContainer {name}"), create)
            .await
            .container_id;
        let mut rt = self.rt.clone();
        let start = rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        });
        self.timed(&format!("StartContainer {name}"), start).await;
        id
    }

    pub async fn exec_sync(&mut self, call: &str, id: &str, cmd: &[&str]) -> ExecSyncResponse {
        let mut rt = self.rt.clone();
        let exec = rt.exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        });
        self.timed(call, exec).await
    }

    /// StopPodSandbox and RemovePodSandbox, and the pod and its containers
    /// are gone from the CRI's lists.
    pub async fn remove_pod(&mut self, pod_id: &str) {
        let mut rt = self.rt.clone();
        let stop = rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        });
        self.timed("StopPodSandbox", stop).await;
        let mut rt = self.rt.clone();
        let status = rt.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        });
        let st = self.timed("PodSandboxStatus", status).await.status.unwrap();
        assert_eq!(st.state, PodSandboxState::SandboxNotready as i32, "{st:?}");
        let mut rt = self.rt.clone();
        let remove = rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        });
        self.timed("RemovePodSandbox", remove).await;
        let containers = self
            .rt
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: pod_id.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(containers.containers.is_empty(), "{containers:?}");
        let pods = self
            .rt
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(!pods.items.iter().any(|p| p.id == pod_id), "{pods:?}");
    }
}

/// A pod named `name` logging to `logs`, its cgroups under `cgroup_parent`
/// (cgroupfs), as the kubelet gives each pod a cgroup of its own.
pub fn pod(name: &str, logs: &Path, cgroup_parent: &Path) -> PodSandboxConfig {
    let mut pod = pod_config(name, logs);
    pod.linux.as_mut().unwrap().cgroup_parent = cgroup_parent.display().to_string();
    pod
}

/// A cgroup parent for one test's pod, removed from every hierarchy when
/// dropped (the kubelet's job; children first, left by a failed test).
pub struct PodCgroup(pub PathBuf);

impl PodCgroup {
    pub fn new(name: &str) -> PodCgroup {
        PodCgroup(PathBuf::from(format!("/{}", crate::unique(name))))
    }

    /// This cgroup's directory in every hierarchy where it exists.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let rel = self.0.strip_prefix("/").unwrap_or(&self.0).to_path_buf();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| d.flatten().map(|e| e.path().join(&rel)).collect())
            .unwrap_or_default();
        dirs.push(Path::new("/sys/fs/cgroup").join(&rel));
        dirs.into_iter().filter(|d| d.is_dir()).collect()
    }

    /// Asserts that no container cgroup is left below the pod's, then
    /// removes the pod's own (as the kubelet does): that fails if a process
    /// is left in it.
    pub fn assert_empty_and_remove(&self) {
        for d in self.dirs() {
            let children: Vec<PathBuf> = std::fs::read_dir(&d)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            assert!(children.is_empty(), "cgroups left: {children:?}");
            if let Err(e) = std::fs::remove_dir(&d) {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                panic!("cannot remove {}: {e}; processes {procs:?}", d.display());
            }
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in self.dirs() {
            if let Ok(children) = std::fs::read_dir(&d) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Asserts that nothing of a test's pods is left once they are removed: no
/// process whose command line holds `marker`, no shim of containerd `c`,
/// no cgroup below `cgroup` (which is removed), no mount below containerd's
/// directory, and no entry in any of the runtime's `state` directories.
pub fn assert_nothing_left(
    c: &crate::containerd::Containerd,
    cgroup: &PodCgroup,
    marker: &str,
    state: &[PathBuf],
) {
    let shims = format!("-address {}", c.socket().display());
    let start = Instant::now();
    loop {
        let procs = processes_with(marker);
        let shim = processes_with(&shims);
        if procs.is_empty() && shim.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "left: container processes {procs:?}, shims {shim:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cgroup.assert_empty_and_remove();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(c.dir().to_str().unwrap()))
        .map(str::to_string)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    for dir in state {
        let left: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} left: {left:?}", dir.display());
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn config(name: &str, script: &str) -> ContainerConfig {
    let mut c = container_config(name, &[]);
    c.command = sh(script);
    c
}

/// Stops and removes every pod, retrying as the kubelet does while a
/// daemon comes back, within `limit`.
pub async fn remove_all_pods(rt: &mut RuntimeServiceClient<Channel>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let pods = rt
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
        if pods.is_empty() {
            return;
        }
        let mut errors = Vec::new();
        for p in pods {
            let stopped = rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await;
            let removed = match stopped {
                Ok(_) => rt
                    .remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: p.id.clone(),
                    })
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                errors.push(format!("{}: {}", p.id, e.message()));
            }
        }
        assert!(
            Instant::now() < deadline,
            "pods not removed within {limit:?}: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until CRI's log file `<logs>/<name>.log` holds `want` (a line
/// `<time> <stream> F <text>`); returns it.
pub async fn wait_log(logs: &Path, name: &str, want: &str) -> String {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
        if log.lines().any(|l| l.ends_with(want)) {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name}.log never held {want:?}: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pod's lifecycle as the kubelet drives it, through runtime handler
/// `handler`: run the pod; a container that completes, one that fails
/// (exit code and reason reach ContainerStatus), one OOM-killed (reason
/// OOMKilled); ExecSync (output, exit code, and a timeout the kubelet's
/// probes rely on); the CRI log files; ReopenContainerLog and stats; stop
/// and removal of a running container, an exited one and one that ignores
/// SIGTERM; the pod's stop and removal. Every container's command line
/// holds `marker`.
pub async fn pod_lifecycle(
    calls: &mut Calls,
    handler: &str,
    logs: &Path,
    cgroup: &PodCgroup,
    marker: &str,
) {
    let pod = pod(&crate::unique("kubelet"), logs, &cgroup.0);
    let pod_id = calls.run_pod(&pod, handler).await;

    let done = calls
        .start(
            &pod_id,
            &pod,
            config("done", &format!(": {marker}; echo done-out; exit 0")),
        )
        .await;
    let fail = calls
        .start(
            &pod_id,
            &pod,
            config("fail", &format!(": {marker}; echo fail-err >&2; exit 3")),
        )
        .await;
    let mut oom = config(
        "oom",
        &format!(": {marker}; echo oom-start; x=0123456789abcdef; while true; do x=$x$x; done"),
    );
    oom.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let oom = calls.start(&pod_id, &pod, oom).await;
    let run = calls
        .start(
            &pod_id,
            &pod,
            config(
                "run",
                &format!(
                    ": {marker}; trap 'echo run-term; exit 0' TERM; echo run-started; \
                     while true; do sleep 0.1; done"
                ),
            ),
        )
        .await;
    // PID 1 of its namespace without a handler: SIGTERM does nothing, and
    // StopContainer must escalate to SIGKILL after the grace period.
    let stubborn = calls
        .start(
            &pod_id,
            &pod,
            config(
                "stubborn",
                &format!(": {marker}; echo stubborn-started; while true; do sleep 0.1; done"),
            ),
        )
        .await;

    // Containers that ended by themselves: exit code and reason.
    let st = calls
        .wait_state(&done, ContainerState::ContainerExited)
        .await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );
    // (Not finished_at >= started_at: containerd takes started_at when the
    // shim's Start returns, which a container this short can outlive.)
    assert!(st.started_at > 0 && st.finished_at > 0, "{st:?}");
    let st = calls
        .wait_state(&fail, ContainerState::ContainerExited)
        .await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"), "{st:?}");
    let st = calls
        .wait_state(&oom, ContainerState::ContainerExited)
        .await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (137, "OOMKilled"),
        "{st:?}"
    );
    calls
        .wait_state(&run, ContainerState::ContainerRunning)
        .await;
    calls
        .wait_state(&stubborn, ContainerState::ContainerRunning)
        .await;
    let st = calls.status(&run).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");

    // The CRI log files hold each container's output, by stream.
    wait_log(logs, "done", "stdout F done-out").await;
    wait_log(logs, "fail", "stderr F fail-err").await;
    wait_log(logs, "oom", "stdout F oom-start").await;
    wait_log(logs, "run", "stdout F run-started").await;

    // ExecSync, as `kubectl exec` without a terminal and exec probes.
    let out = calls
        .exec_sync(
            "ExecSync",
            &run,
            &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"],
        )
        .await;
    assert_eq!(
        (
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            out.exit_code
        ),
        ("exec-out", "exec-err", 5),
        "{out:?}"
    );
    // A probe that outlives its timeout: the call ends at the timeout and
    // the exec'd process is killed.
    let exec_marker = format!("{marker}-probe");
    let mut rt = calls.rt.clone();
    let probe = rt.exec_sync(ExecSyncRequest {
        container_id: run.clone(),
        cmd: sh(&format!(": {exec_marker}; sleep 30")),
        timeout: 1,
    });
    let err = calls.timed_err("ExecSync (timeout 1 s)", probe).await;
    assert!(
        err.message().contains("timeout") || err.code() == tonic::Code::DeadlineExceeded,
        "{err:?}"
    );
    let start = Instant::now();
    while !processes_with(&exec_marker).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the timed-out exec's process is left: {:?}",
            processes_with(&exec_marker)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Exec with streams: the CRI answers with the streaming server's URL
    // (the client's SPDY or websocket session is not exercised here).
    let mut rt = calls.rt.clone();
    let exec = rt.exec(ExecRequest {
        container_id: run.clone(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    });
    let url = calls.timed("Exec (URL only)", exec).await.url;
    assert!(url.starts_with("http://"), "{url}");

    // What the kubelet also calls on a running pod.
    let mut rt = calls.rt.clone();
    let reopen = rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: run.clone(),
    });
    calls.timed("ReopenContainerLog", reopen).await;
    let mut rt = calls.rt.clone();
    let stats = rt.list_container_stats(ListContainerStatsRequest {
        filter: Some(ContainerStatsFilter {
            pod_sandbox_id: pod_id.clone(),
            ..Default::default()
        }),
    });
    let stats = calls.timed("ListContainerStats", stats).await;
    let run_stats = stats
        .stats
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == run))
        .unwrap_or_else(|| panic!("no stats for the running container: {stats:?}"));
    assert!(
        run_stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .is_some_and(|v| v.value > 0),
        "{run_stats:?}"
    );

    // Stop and remove: a running container (SIGTERM, it exits 0), an
    // exited one, and one that ignores SIGTERM (SIGKILL after 2 s).
    let mut rt = calls.rt.clone();
    let stop = rt.stop_container(StopContainerRequest {
        container_id: run.clone(),
        timeout: 10,
    });
    calls.timed("StopContainer running", stop).await;
    let st = calls.status(&run).await;
    assert_eq!(
        (st.state, st.exit_code),
        (ContainerState::ContainerExited as i32, 0),
        "{st:?}"
    );
    wait_log(logs, "run", "stdout F run-term").await;
    let mut rt = calls.rt.clone();
    let stop = rt.stop_container(StopContainerRequest {
        container_id: done.clone(),
        timeout: 10,
    });
    calls.timed("StopContainer exited", stop).await;
    let mut rt = calls.rt.clone();
    let stop = rt.stop_container(StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 2,
    });
    calls
        .timed_grace(
            "StopContainer ignoring SIGTERM (grace 2 s)",
            Duration::from_secs(2),
            stop,
        )
        .await;
    let st = calls.status(&stubborn).await;
    assert_eq!(
        (st.state, st.exit_code),
        (ContainerState::ContainerExited as i32, 137),
        "{st:?}"
    );
    for (what, id) in [("running", &run), ("exited", &done), ("killed", &stubborn)] {
        let mut rt = calls.rt.clone();
        let remove = rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        });
        calls
            .timed(&format!("RemoveContainer {what}"), remove)
            .await;
    }
    // The failed and the OOM-killed containers go with the pod.
    calls.remove_pod(&pod_id).await;
}

/// A directory made a shared tmpfs mount (what Bidirectional propagation
/// needs on the host side), unmounted with everything below when dropped.
pub struct SharedMount(pub PathBuf);

impl SharedMount {
    pub fn new(dir: &Path) -> SharedMount {
        std::fs::create_dir_all(dir).unwrap();
        mount(&["-t", "tmpfs", "tmpfs", dir.to_str().unwrap()]);
        let m = SharedMount(dir.to_path_buf());
        mount(&["--make-shared", dir.to_str().unwrap()]);
        m
    }

    /// The mount points at and below it, in /proc/self/mountinfo.
    pub fn mounts(&self) -> Vec<String> {
        let dir = self.0.to_str().unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m == dir || m.starts_with(&format!("{dir}/")))
            .collect()
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(&self.0).status();
        crate::unmount_below(&self.0);
    }
}

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        crate::stderr(&out)
    );
}

/// The OCI spec containerd wrote for container `id` (its bundle's
/// config.json, in containerd `c`'s state).
pub fn bundle_spec(c: &crate::containerd::Containerd, id: &str) -> serde_json::Value {
    let path = c
        .dir()
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(id)
        .join("config.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A mount-propagation pod through `handler`: a privileged container with
/// the host path `shared` (a [`SharedMount`]) mounted Bidirectional
/// (containerd writes rootfsPropagation "rshared") and one with it mounted
/// HostToContainer ("rslave"). A mount made on the host after they started
/// shows in both; one made in the bidirectional container shows on the
/// host; none of the containers' own mounts leak to the host.
pub async fn mount_propagation(
    calls: &mut Calls,
    c: &crate::containerd::Containerd,
    handler: &str,
    logs: &Path,
    cgroup: &PodCgroup,
    marker: &str,
    shared: &SharedMount,
) {
    let mut pod = pod(&crate::unique("propagation"), logs, &cgroup.0);
    // A privileged container needs a privileged pod.
    let sc = pod.linux.as_mut().unwrap().security_context.as_mut();
    sc.unwrap().privileged = true;
    let pod_id = calls.run_pod(&pod, handler).await;
    let host = shared.0.to_str().unwrap();
    let mut ids = Vec::new();
    for (name, propagation, rootfs) in [
        (
            "bidi",
            MountPropagation::PropagationBidirectional,
            "rshared",
        ),
        (
            "h2c",
            MountPropagation::PropagationHostToContainer,
            "rslave",
        ),
    ] {
        let mut config = config(
            name,
            &format!(": {marker}; trap 'exit 0' TERM; while true; do sleep 0.1; done"),
        );
        config.mounts = vec![Mount {
            container_path: "/prop".into(),
            host_path: host.into(),
            propagation: propagation as i32,
            ..Default::default()
        }];
        if propagation == MountPropagation::PropagationBidirectional {
            // Mounting from inside needs CAP_SYS_ADMIN (Kubernetes allows
            // Bidirectional only to privileged containers).
            let sc = config
                .linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap();
            sc.privileged = true;
        }
        let id = calls.start(&pod_id, &pod, config).await;
        let spec = bundle_spec(c, &id);
        assert_eq!(
            spec["linux"]["rootfsPropagation"], rootfs,
            "{name}: {}",
            spec["linux"]
        );
        calls
            .wait_state(&id, ContainerState::ContainerRunning)
            .await;
        ids.push((name, id));
    }

    // Host to container: a mount made on the host after the start.
    let late = shared.0.join("late");
    std::fs::create_dir(&late).unwrap();
    mount(&["-t", "tmpfs", "tmpfs", late.to_str().unwrap()]);
    std::fs::write(late.join("hello"), "hello-from-host").unwrap();
    for (name, id) in &ids {
        let out = calls
            .exec_sync(
                &format!("ExecSync {name} (read)"),
                id,
                &["cat", "/prop/late/hello"],
            )
            .await;
        assert_eq!(
            (String::from_utf8_lossy(&out.stdout).as_ref(), out.exit_code),
            ("hello-from-host", 0),
            "{name} does not see the host's mount: {out:?}"
        );
    }
    // Container to host, through the bidirectional mount only.
    let out = calls
        .exec_sync(
            "ExecSync bidi (mount)",
            &ids[0].1,
            &[
                "sh",
                "-c",
                "mkdir /prop/from-c && mount -t tmpfs tmpfs /prop/from-c && echo hello-from-c > /prop/from-c/f",
            ],
        )
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let f = shared.0.join("from-c/f");
    assert_eq!(
        std::fs::read_to_string(&f).unwrap_or_default().trim(),
        "hello-from-c",
        "the container's mount did not reach the host: {:?}",
        shared.mounts()
    );
    let out = calls
        .exec_sync("ExecSync h2c (read)", &ids[1].1, &["cat", "/prop/from-c/f"])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-c",
        "{out:?}"
    );

    calls.remove_pod(&pod_id).await;
    // Only the mounts made on purpose are below the host path: none of the
    // containers' own (rootfs, /proc, /dev...) leaked through "rshared".
    let want: Vec<String> = [shared.0.clone(), late, shared.0.join("from-c")]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut got = shared.mounts();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted, "mounts below the host path");
}

/// The confinement of a process ExecSync'd into a container, compared field
/// by field ([`confinement_diff`]) with the container's init, which writes
/// its own to the host directory `out`: a root container and a non-root
/// one with no_new_privs, both under the runtime's default seccomp profile.
pub async fn exec_confinement(
    calls: &mut Calls,
    handler: &str,
    logs: &Path,
    cgroup: &PodCgroup,
    marker: &str,
    out: &Path,
) {
    std::fs::create_dir_all(out).unwrap();
    std::fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let pod = pod(&crate::unique("confinement"), logs, &cgroup.0);
    let pod_id = calls.run_pod(&pod, handler).await;
    for (name, user) in [("root", None), ("user", Some(1000))] {
        let mut config = config(
            name,
            &format!(
                "{CONFINEMENT_SNAPSHOT}\nsnap > /out/{name}.tmp; mv /out/{name}.tmp /out/{name}; \
                 : {marker}; trap 'exit 0' TERM; while true; do sleep 0.1; done"
            ),
        );
        config.mounts = vec![Mount {
            container_path: "/out".into(),
            host_path: out.display().to_string(),
            ..Default::default()
        }];
        let sc = config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sc.seccomp = Some(SecurityProfile {
            profile_type: security_profile::ProfileType::RuntimeDefault as i32,
            ..Default::default()
        });
        if let Some(uid) = user {
            sc.run_as_user = Some(Int64Value { value: uid });
            sc.run_as_group = Some(Int64Value { value: 100 });
            sc.supplemental_groups = vec![4242];
            sc.no_new_privs = true;
        }
        let id = calls.start(&pod_id, &pod, config).await;
        let file = out.join(name);
        let start = Instant::now();
        while !file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: the init wrote no snapshot"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let init = std::fs::read_to_string(&file).unwrap();
        assert!(
            init.contains("Seccomp:\t2"),
            "{name}: the init has no seccomp filter: {init}"
        );
        if user.is_some() {
            assert!(init.contains("NoNewPrivs:\t1"), "{init}");
            assert!(init.contains("Uid:\t1000\t"), "{init}");
        }
        let exec = calls
            .exec_sync(
                &format!("ExecSync {name} (snapshot)"),
                &id,
                &["sh", "-c", &format!("{CONFINEMENT_SNAPSHOT}\nsnap")],
            )
            .await;
        assert_eq!(exec.exit_code, 0, "{exec:?}");
        let exec = String::from_utf8_lossy(&exec.stdout).to_string();
        let diff = confinement_diff(&init, &exec);
        assert!(
            diff.is_empty(),
            "{name}: the exec'd process is confined otherwise than the init:\n{}",
            diff.join("\n")
        );
    }
    calls.remove_pod(&pod_id).await;
}

/// UpdateContainerResources as the kubelet sends it (the CPU manager's
/// static policy, in-place pod resize), through `handler`: the new limits
/// reach the container's cgroup on the host (cgroup v1 files, under the
/// cgroupsPath containerd `c` wrote), the container keeps running, and
/// ContainerStatus reports them.
pub async fn update_resources(
    calls: &mut Calls,
    c: &crate::containerd::Containerd,
    handler: &str,
    logs: &Path,
    cgroup: &PodCgroup,
    marker: &str,
) {
    let pod = pod(&crate::unique("resize"), logs, &cgroup.0);
    let pod_id = calls.run_pod(&pod, handler).await;
    let mut limited = config(
        "limited",
        &format!(": {marker}; echo limited-started; while true; do sleep 0.1; done"),
    );
    limited.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        cpu_shares: 256,
        cpu_period: 100_000,
        cpu_quota: 20_000,
        ..Default::default()
    });
    let id = calls.start(&pod_id, &pod, limited).await;
    wait_log(logs, "limited", "limited-started").await;
    let path = bundle_spec(c, &id)["linux"]["cgroupsPath"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let read = |ctl: &str, f: &str| {
        let p = Path::new("/sys/fs/cgroup").join(ctl).join(&path).join(f);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.shares"), "256");

    let new = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 512,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpuset_cpus: "0".into(),
        ..Default::default()
    };
    let mut rt = calls.rt.clone();
    let update = rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(new.clone()),
        ..Default::default()
    });
    calls.timed("UpdateContainerResources", update).await;
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    let st = calls.status(&id).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");
    let reported = st.resources.and_then(|r| r.linux).unwrap_or_default();
    assert_eq!(
        (
            reported.memory_limit_in_bytes,
            reported.cpu_shares,
            reported.cpu_quota
        ),
        (64 << 20, 512, 50_000),
        "ContainerStatus resources"
    );
    let exec = calls
        .exec_sync(
            "ExecSync (after the update)",
            &id,
            &["sh", "-c", "echo still-here"],
        )
        .await;
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "still-here");

    // A limit the container cannot be held to is the runtime's error,
    // and the old limit stays.
    let mut rt = calls.rt.clone();
    let update = rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            cpuset_cpus: "4095".into(),
            ..new
        }),
        ..Default::default()
    });
    let err = calls
        .timed_err("UpdateContainerResources (bad cpuset)", update)
        .await;
    assert!(err.message().contains("cpuset"), "{err:?}");
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    calls.remove_pod(&pod_id).await;
}

/// Removes, when dropped, every task and container containerd (at
/// `socket`) still has in the CRI's namespace, and then kills its shims: a
/// failed test leaves no container behind. Declare it after the
/// containerd, so that it runs first.
pub struct CriGuard(pub PathBuf);

impl Drop for CriGuard {
    fn drop(&mut self) {
        let ctr = |args: &[&str]| {
            Command::new("ctr")
                .arg("--address")
                .arg(&self.0)
                .args(["-n", "k8s.io"])
                .args(args)
                .output()
                .map(|o| crate::stdout(&o))
                .unwrap_or_default()
        };
        for id in ctr(&["task", "ls", "-q"]).lines() {
            ctr(&["task", "kill", "-s", "SIGKILL", id]);
            ctr(&["task", "delete", "-f", id]);
        }
        for id in ctr(&["container", "ls", "-q"]).lines() {
            ctr(&["container", "rm", id]);
        }
        for p in processes_with(&format!("-address {}", self.0.display())) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
