//! VM pods through containerd 1.7's and 2.x's CRI, as the kubelet drives it: the
//! runtime handler `ironcell-vm` (ironcelld's shim with `Sandbox = "vm"`)
//! boots one VM for the pod (QEMU with TCG here) when the pause container
//! is made, and the pod's containers join it. The pod is on a CNI bridge
//! network (Debian's plugins), tied to the VM by a tap.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironcell_testutil::cri::{
    self, channel, cluster_dns, container_config, exec_script, pod_config, pod_namespaces,
    run_pod_sandbox, runtime_after_restart, start_containerd_with, start_controller_with_env,
    stop_and_remove_pod, vm_handler_config, wait_for_state, CniBridge, Cri, SANDBOX_API_HANDLER,
    VM_HANDLER,
};
use ironcell_testutil::cri_stream;
use ironcell_testutil::kubelet::{remove_all_pods, wait_log, CriGuard, PodCgroup};
use ironcell_testutil::vm::{self, assert_no_vm_left, backends, guest, Backend, Guest};
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

/// A pod on the CNI network, with its own IPC, UTS and PID namespaces
/// (`shareProcessNamespace`), asking for a VM by its annotation (which only
/// the handlers that read it heed).
fn vm_pod(name: &str, logs: &Path) -> PodSandboxConfig {
    let mut pod = pod_config(name, logs);
    pod.annotations
        .insert("io.ironcell.sandbox".into(), "vm".into());
    pod.hostname = name.into();
    pod.dns_config = Some(cluster_dns().0);
    let ns = pod_namespaces(&mut pod);
    ns.network = NamespaceMode::Pod as i32;
    ns.ipc = NamespaceMode::Pod as i32;
    ns.pid = NamespaceMode::Pod as i32;
    pod
}

/// [`ironcell_testutil::cri::run_container`], which must succeed.
/// (with the pod's namespace options: [`with_pod_namespaces`]).
async fn run_container(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    cri::run_container(rt, pod_id, pod, with_pod_namespaces(pod, config))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `config` with `pod`'s namespace options, as the kubelet gives a pod's
/// containers (CRI shares the pod's PID namespace by the container's).
fn with_pod_namespaces(pod: &PodSandboxConfig, mut config: ContainerConfig) -> ContainerConfig {
    let ns = pod
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = ns;
    config
}

async fn sandbox_status(rt: &mut RuntimeServiceClient<Channel>, pod_id: &str) -> PodSandboxStatus {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: pod_id.into(),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("PodSandboxStatus {pod_id}: {e}"))
    .into_inner()
    .status
    .unwrap_or_else(|| panic!("PodSandboxStatus {pod_id}: no status"))
}

async fn wait_state(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    want: ContainerState,
) -> ContainerStatus {
    let (limit, poll) = (Duration::from_secs(60), Duration::from_millis(100));
    wait_for_state(rt, id, want, limit, poll)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The hypervisor processes of the VMs whose run directories are under
/// `dir`.
fn hypervisor_pids(dir: &Path, backend: Backend) -> Vec<i32> {
    let hypervisor = match backend {
        Backend::QemuTcg => "qemu",
        Backend::IroncellVmm => "ironcell-vmm",
    };
    processes_with(&dir.display().to_string())
        .into_iter()
        .filter(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
            // ironcell-vmm's device process (beside QEMU) is not the
            // hypervisor.
            comm.starts_with(hypervisor) && !cmd.contains("--vhost-user-fs")
        })
        .collect()
}

/// Mounts under `dir` in any mount namespace of the host's processes.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut out: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .flat_map(|e| {
            std::fs::read_to_string(e.path().join("mountinfo"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&dir))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A daemon's state root and a directory for its VMs, with the config
/// file that puts them there; the daemon of the root is killed when it
/// goes.
struct VmPodHost {
    _guard: DaemonGuard,
    root: tempfile::TempDir,
    vmdir: tempfile::TempDir,
    /// The environment that makes ironcelld read the config file.
    env: Vec<(String, std::ffi::OsString)>,
}

impl VmPodHost {
    fn new(guest: &Guest, backend: Backend) -> VmPodHost {
        let root = tempfile::Builder::new()
            .prefix("icdvm-")
            .tempdir_in("/tmp")
            .unwrap();
        let vmdir = tempfile::Builder::new()
            .prefix("icvmpod-")
            .tempdir_in("/tmp")
            .unwrap();
        let config = vm::config(vmdir.path(), guest, backend, "memory_mib = 256");
        VmPodHost {
            _guard: DaemonGuard(root.path().to_path_buf()),
            env: vec![("IRONCELL_CONFIG".to_string(), config.into_os_string())],
            root,
            vmdir,
        }
    }

    /// Asserts, after waiting a while for the removals under way, that no
    /// VM, share mount in any namespace, container state, VM pod bundle or
    /// pod record is left.
    fn assert_nothing_left(&self) {
        let left = |dir: &str| -> Vec<std::ffi::OsString> {
            std::fs::read_dir(self.root.path().join(dir))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        let state = [
            "containers/k8s.io",
            "vm-pods/k8s.io",
            "pods/k8s.io",
            "pod-files/k8s.io",
        ];
        let start = Instant::now();
        while (state.iter().any(|d| !left(d).is_empty())
            || !vm::run_dirs(self.vmdir.path()).is_empty())
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for dir in state {
            assert!(left(dir).is_empty(), "{dir} left: {:?}", left(dir));
        }
        assert_no_vm_left(self.vmdir.path());
        assert_eq!(mounts_under(self.vmdir.path()), Vec::<String>::new());
    }
}

/// A pod of three containers in one VM through containerd 1.7's CRI,
/// after a host-network and a host-PID pod are refused. The VM is sized by
/// the pod's resources and its hypervisor is in the pod's host cgroup. The
/// containers see the same guest (its boot id, not the host's) and share
/// the pod's IPC and UTS namespaces and /dev/shm; ExecSync, the CRI's log
/// files, ContainerStats from the guest's cgroups, UpdateContainerResources
/// reaching the guest's cgroup, an OOM kill reported as OOMKilled; a server
/// in the pod answers the host at the pod's CNI address and the pod reaches
/// its gateway; ironcelld SIGKILLed and containerd restarted under the pod;
/// a privileged container refused; a container's removal leaves the VM
/// running; the pod's stop and removal leave no VM, mount, cgroup or state.
/// Then a pod whose hypervisor is killed: its container exits 137 and its
/// removal leaves nothing either.
#[test]
fn cri_pod_in_one_vm() {
    each_backend(
        "cri_pod_in_one_vm",
        Cri::V17 { sandbox_api: false },
        VM_HANDLER,
    );
}

/// The same pod through containerd 2.x's CRI, with a pause container (the
/// handler has no `sandboxer`).
#[test]
fn cri_pod_in_one_vm_on_containerd_2() {
    each_backend("cri_pod_in_one_vm_on_containerd_2", Cri::V2, VM_HANDLER);
}

/// The same pod through containerd 2.x's sandbox API: ironcelld's sandbox
/// controller boots the pod's VM, with the agent's `pause` as the holder of
/// the pod's namespaces, and no pause container.
#[test]
fn cri_pod_in_one_vm_through_the_sandboxer() {
    each_backend(
        "cri_pod_in_one_vm_through_the_sandboxer",
        Cri::V2,
        SANDBOXER_VM_HANDLER,
    );
}

/// Runs the pod under QEMU with TCG, and under ironcell-vmm where
/// /dev/kvm has VT-x or AMD-V (a loud notice elsewhere).
fn each_backend(test: &str, cri: Cri, handler: &str) {
    if !need_root(test) {
        return;
    }
    let Some(guest) = guest(test) else {
        return;
    };
    for backend in backends(test) {
        run_vm_pod(test, cri, handler, &guest, backend);
    }
}

/// The same pod through containerd 1.7's shim-side sandbox API, without a
/// pause container: the pod's annotation `io.ironcell.sandbox=vm` asks
/// ironcelld for the VM (the handler has no options).
#[test]
fn cri_pod_in_one_vm_through_the_sandbox_api_by_its_annotation() {
    each_backend(
        "cri_pod_in_one_vm_through_the_sandbox_api_by_its_annotation",
        Cri::V17 { sandbox_api: true },
        SANDBOX_API_HANDLER,
    );
}

/// VM pod starts through containerd 1.7's shim-side sandbox API with
/// ironcelld SIGKILLed while each boots its VM (the keeper starts the
/// daemon again and re-sends the start): each pod starts all the same.
/// Then ironcelld SIGKILLed while it makes a container in a pod's VM (the
/// next daemon undoes the cut-off create, and makes it again): the
/// container runs. Once the pods are stopped and removed, no VM, share
/// mount, container state, bundle or pod record is left.
#[test]
fn vm_pod_starts_cut_off_by_the_daemons_death_leave_nothing() {
    let test = "vm_pod_starts_cut_off_by_the_daemons_death_leave_nothing";
    if !need_root(test) {
        return;
    }
    let Some(guest) = guest(test) else {
        return;
    };
    for backend in backends(test) {
        cut_off_vm_pod_starts(test, &guest, backend);
    }
}

fn cut_off_vm_pod_starts(test: &str, guest: &Guest, backend: Backend) {
    let cri = Cri::V17 { sandbox_api: true };
    let Some(net) = CniBridge::new(test) else {
        return;
    };
    let host = VmPodHost::new(guest, backend);
    let root = &host.root;
    let env = host.env.clone();
    let Some((c, logs)) = start_containerd_with(bin_dir(), root.path(), cri, net.config(cri), env)
    else {
        return;
    };
    let _cri_guard = CriGuard(c.socket());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let rt = RuntimeServiceClient::new(channel(c.socket()).await);
        let mut last_pod = None;
        // The first kill lands while the helper boots the VM; the second
        // most likely while the holder starts in the guest.
        for (round, delay) in [(0, 300), (1, 1200)] {
            let mut client = rt.clone();
            let config = vm_pod(&format!("cut{round}"), &logs);
            let started = tokio::spawn(async move {
                client
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: SANDBOX_API_HANDLER.into(),
                    })
                    .await
            });
            let root_path = root.path().to_path_buf();
            tokio::task::spawn_blocking(move || {
                wait_for_new_daemon(&root_path, &[], Duration::from_secs(20));
                std::thread::sleep(Duration::from_millis(delay));
                let old = kill_daemon(&root_path);
                wait_for_new_daemon(&root_path, &old, Duration::from_secs(20));
            })
            .await
            .unwrap();
            // The keeper re-sends the start to the next daemon, which
            // undoes what the cut-off one made and starts the pod again.
            let pod_id = started
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: RunPodSandbox: {e}\n{}", c.log()))
                .into_inner()
                .pod_sandbox_id;
            let mut client = rt.clone();
            let st = sandbox_status(&mut client, &pod_id).await;
            assert_eq!(st.state, PodSandboxState::SandboxReady as i32, "{st:?}");
            eprintln!("round {round}: daemon killed after {delay} ms; the pod started");
            last_pod = Some((pod_id, vm_pod(&format!("cut{round}"), &logs)));
        }
        // Killed once the container's create has added it to the VM's share
        // (the pod's holder's mount namespace), before it is done: the next
        // daemon must undo that much before it makes the container again.
        let (pod_id, pod) = last_pod.unwrap();
        let mut client = rt.clone();
        let made = tokio::spawn(async move {
            let config = container_config("cutmember", &["sleep", "1000"]);
            cri::run_container(
                &mut client,
                &pod_id,
                &pod,
                with_pod_namespaces(&pod, config),
            )
            .await
        });
        let root_path = root.path().to_path_buf();
        let vm_dir = host.vmdir.path().to_path_buf();
        let cut = tokio::task::spawn_blocking(move || {
            let tasks = root_path.join("tasks/k8s.io");
            let start = Instant::now();
            let shared = loop {
                let creating: Vec<String> = std::fs::read_dir(&tasks)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|d| d.path().join("creating.json").exists())
                    .map(|d| d.file_name().to_string_lossy().into_owned())
                    .collect();
                let found = !creating.is_empty()
                    && hypervisor_pids(&vm_dir, backend).iter().any(|p| {
                        let mounts = std::fs::read_to_string(format!("/proc/{p}/mountinfo"))
                            .unwrap_or_default();
                        creating.iter().any(|id| mounts.contains(id.as_str()))
                    });
                if found || start.elapsed() > Duration::from_secs(60) {
                    break found;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            let old = kill_daemon(&root_path);
            wait_for_new_daemon(&root_path, &old, Duration::from_secs(20));
            shared
        })
        .await
        .unwrap();
        assert!(cut, "no container create was seen adding to the share");
        let id = made
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a create cut off: {e}\n{}", c.log()));
        let mut client = rt.clone();
        wait_state(&mut client, &id, ContainerState::ContainerRunning).await;
        // No relay: neither the pods' holders nor the container have one.
        let vm_relays = helper_relays(root.path(), "create");
        assert!(vm_relays.is_empty(), "{vm_relays:#?}");
        let mut rt = rt;
        remove_all_pods(&mut rt, Duration::from_secs(90)).await;
    });
    host.assert_nothing_left();
    // Dropped in reverse: the CRI guard, then containerd.
}

/// containerd 1.7's handler that passes a pod's `io.ironcell.*`
/// annotations to its pause container and containers, and has no options:
/// a pod's annotation chooses its sandbox.
const ANNOTATED_HANDLER: &str = "ironcell-annotated";

fn annotated_handler(cri: Cri) -> String {
    if cri == Cri::V2 {
        return String::new();
    }
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{ANNOTATED_HANDLER}]
  runtime_type = "io.containerd.ironcell.v2"
  pod_annotations = ["io.ironcell.*"]
"#
    )
}

/// containerd 2.x's handler whose pods ironcelld's controller of VM pods
/// makes (`sandboxer = "ironcell-vm"`, no options).
const SANDBOXER_VM_HANDLER: &str = "ironcell-vm-sandboxer";

/// A sandboxer's handler asking for VMs with an options table, which
/// containerd 2.x cannot pass to the pod's tasks: refused.
const SANDBOXER_OPTIONS_HANDLER: &str = "ironcell-vm-options";

fn sandboxer_vm_handler(cri: Cri) -> String {
    if cri != Cri::V2 {
        return String::new();
    }
    format!(
        r#"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{SANDBOXER_VM_HANDLER}]
  runtime_type = "io.containerd.ironcell.v2"
  sandboxer = "ironcell-vm"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{SANDBOXER_OPTIONS_HANDLER}]
  runtime_type = "io.containerd.ironcell.v2"
  sandboxer = "ironcell"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{SANDBOXER_OPTIONS_HANDLER}.options]
    Sandbox = "vm"
"#
    )
}

fn run_vm_pod(test: &str, cri: Cri, handler: &str, guest: &Guest, backend: Backend) {
    let Some(net) = CniBridge::new(test) else {
        return;
    };
    let host = VmPodHost::new(guest, backend);
    let (root, vmdir) = (&host.root, &host.vmdir);
    let env = host.env.clone();
    let Some((mut c, logs)) = start_containerd_with(
        bin_dir(),
        root.path(),
        cri,
        vm_handler_config(cri)
            + &net.config(cri)
            + &sandboxer_vm_handler(cri)
            + &annotated_handler(cri),
        env.clone(),
    ) else {
        return;
    };
    let _cri_guard = CriGuard(c.socket());
    let pod_cgroup = PodCgroup::new("vmpod");
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let mut rt = RuntimeServiceClient::new(channel(c.socket()).await);
        if handler == SANDBOXER_VM_HANDLER {
            let e = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(vm_pod("options", &logs)),
                    runtime_handler: SANDBOXER_OPTIONS_HANDLER.into(),
                })
                .await
                .unwrap_err();
            assert!(
                e.message().contains("sandboxer = \"ironcell-vm\""),
                "{e}\n{}",
                c.log()
            );
        }
        // What a VM cannot give is refused at RunPodSandbox, naming it:
        // the host's network, PID namespace and IPC namespace.
        for (name, network, pid, ipc, want) in [
            (
                "hostnet",
                NamespaceMode::Node,
                NamespaceMode::Container,
                NamespaceMode::Pod,
                "the host's network",
            ),
            (
                "hostpid",
                NamespaceMode::Pod,
                NamespaceMode::Node,
                NamespaceMode::Pod,
                "the host's PID namespace",
            ),
            (
                "hostipc",
                NamespaceMode::Pod,
                NamespaceMode::Container,
                NamespaceMode::Node,
                "the host's IPC namespace",
            ),
        ] {
            let mut refused = vm_pod(name, &logs);
            let ns = pod_namespaces(&mut refused);
            ns.network = network as i32;
            ns.pid = pid as i32;
            ns.ipc = ipc as i32;
            let e = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(refused),
                    runtime_handler: handler.into(),
                })
                .await
                .unwrap_err();
            assert!(e.message().contains(want), "{name}: {e}");
        }

        let mut pod = vm_pod("vmpod", &logs);
        pod.linux.as_mut().unwrap().cgroup_parent = pod_cgroup.0.display().to_string();
        // The sum of the containers' limits, as the kubelet passes it: the
        // VM gets it on top of the [vm] base (256 MiB, 1 vCPU).
        pod.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            ..Default::default()
        });
        let pod_id = run_pod_sandbox(&mut rt, &pod, handler)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
        let pod_status = sandbox_status(&mut rt, &pod_id).await;
        assert_eq!(pod_status.state, PodSandboxState::SandboxReady as i32);
        let ip: Ipv4Addr = pod_status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("pod IP: {e}: {pod_status:?}"));

        let mut ids = Vec::new();
        for (name, script, memory) in [
            (
                "web",
                "echo web-started; while true; do echo hello-from-the-pod | nc -l -p 8080; done",
                0,
            ),
            // Writes again once /tmp/go exists (made after a daemon
            // restart, below).
            (
                "side",
                "echo side-started; while [ ! -e /tmp/go ]; do sleep 0.1; done; \
                 echo side-after-restart; exec sleep 1000",
                0,
            ),
        ] {
            let mut config = container_config(name, &["sh", "-c", script]);
            if memory > 0 {
                config
                    .linux
                    .get_or_insert_with(Default::default)
                    .resources
                    .get_or_insert_with(Default::default)
                    .memory_limit_in_bytes = memory;
            }
            ids.push(run_container(&mut rt, &pod_id, &pod, config).await);
        }
        for id in &ids {
            wait_state(&mut rt, id, ContainerState::ContainerRunning).await;
        }

        // The VM's host processes are in the pod's cgroup, where the
        // kubelet accounts for them.
        let pod_path = pod_cgroup.0.display().to_string();
        let hypervisors = hypervisor_pids(vmdir.path(), backend);
        assert_eq!(hypervisors.len(), 1, "{hypervisors:?}");
        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", hypervisors[0])).unwrap();
        assert!(
            cgroups
                .lines()
                .all(|l| l.ends_with(":/") || l.contains(&format!(":{pod_path}/"))),
            "{cgroups}"
        );
        assert!(cgroups.contains(&format!(":{pod_path}/")), "{cgroups}");

        // One guest: the same boot id in both containers, not the host's;
        // the pod's IPC, UTS and PID namespaces shared, the pod's PID 1
        // its pause container's (the test pause image sleeps) or holder.
        let mut seen = Vec::new();
        for id in &ids {
            let (code, out) = exec_script(
                &mut rt,
                id,
                "cat /proc/sys/kernel/random/boot_id; readlink /proc/self/ns/ipc; \
                 readlink /proc/self/ns/pid; tr '\\0' ' ' < /proc/1/cmdline; echo; \
                 cat /etc/resolv.conf; hostname",
            )
            .await;
            assert_eq!(code, 0, "{out}");
            seen.push(out);
        }
        assert_eq!(seen[0], seen[1]);
        let first = seen[0].lines().nth(3).unwrap_or_default();
        assert!(
            first.starts_with("/bin/sleep 2147483647") || first.contains("ironcell-agent pause"),
            "the pod's PID 1: {seen:?}"
        );
        assert!(!seen[0].contains(host_boot.trim()), "{seen:?}");
        assert!(seen[0].ends_with("vmpod\n"), "{seen:?}");
        // The pod's DNS config is the guest's resolv.conf.
        assert!(seen[0].contains(cluster_dns().1), "{seen:?}");
        if cri == Cri::V2 && handler == VM_HANDLER {
            // containerd 2.x gives every pause container the network sysctl
            // net.ipv4.ping_group_range: set in the pod's (the guest's)
            // network namespace.
            let (_, out) =
                exec_script(&mut rt, &ids[0], "cat /proc/sys/net/ipv4/ping_group_range").await;
            assert_eq!(
                out.split_whitespace().collect::<Vec<_>>(),
                ["0", "2147483647"]
            );
        }
        let (_, out) = exec_script(
            &mut rt,
            &ids[0],
            "nproc; sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo",
        )
        .await;
        let sized: Vec<u64> = out
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        assert_eq!(sized.len(), 2, "{out}");
        assert_eq!(sized[0], 2, "vCPUs: {out}");
        assert!(sized[1] > 400 << 10, "a 512 MiB VM: {out}");
        // The pod's /dev/shm is one for its containers.
        let (code, out) = exec_script(&mut rt, &ids[0], "echo pod-shm > /dev/shm/seen").await;
        assert_eq!(code, 0, "{out}");
        let (_, out) = exec_script(&mut rt, &ids[1], "cat /dev/shm/seen").await;
        assert_eq!(out.trim(), "pod-shm");
        let (code, out) = exec_script(&mut rt, &ids[0], "echo exec-sync; exit 3").await;
        assert_eq!((code, out.trim()), (3, "exec-sync"));
        // kubectl exec -it: CRI's streaming exec with a terminal, resized
        // and typed into from the stream, ends with its status.
        let script = "i=0; while [ \"$(stty size)\" != '33 101' ] && [ $i -lt 100 ]; do \
                      sleep 0.1; i=$((i+1)); done; echo SIZE=$(stty size); \
                      read line; echo GOT=$line";
        let url = rt
            .exec(ExecRequest {
                container_id: ids[0].clone(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                tty: true,
                stdin: true,
                stdout: true,
                stderr: false,
            })
            .await
            .unwrap_or_else(|e| panic!("Exec: {e}"))
            .into_inner()
            .url;
        let streamed = tokio::task::spawn_blocking(move || {
            cri_stream::exec_in_terminal(&url, 33, 101, b"typed\n", Duration::from_secs(60))
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("streaming exec: {e}"));
        assert!(
            streamed.output.contains("SIZE=33 101") && streamed.output.contains("GOT=typed"),
            "{:?}",
            streamed.output
        );
        assert!(streamed.status.contains("Success"), "{}", streamed.status);

        // The containers' output reached CRI's log files.
        wait_log(&logs, "web", "web-started").await;
        wait_log(&logs, "side", "side-started").await;

        // The pod's server answers at the pod's CNI address, and the pod
        // reaches a server on its gateway.
        let start = Instant::now();
        let answer = loop {
            let got = TcpStream::connect_timeout(&(ip, 8080).into(), Duration::from_secs(5))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut a = String::new();
                    s.read_to_string(&mut a)?;
                    Ok(a)
                });
            match got {
                Ok(a) if !a.is_empty() => break a,
                other => assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the pod's server at {ip}:8080: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(answer.trim(), "hello-from-the-pod");
        let listener = TcpListener::bind((net.gateway, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            s.write_all(b"hello-from-the-host\n").unwrap();
            peer
        });
        let (code, out) =
            exec_script(&mut rt, &ids[1], &format!("nc {} {port}", net.gateway)).await;
        assert_eq!((code, out.trim()), (0, "hello-from-the-host"));
        assert_eq!(server.join().unwrap().ip(), ip);

        // Statistics come from the guest's cgroups; an update reaches them.
        let stats = rt
            .container_stats(ContainerStatsRequest {
                container_id: ids[1].clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStats: {e}"))
            .into_inner()
            .stats
            .unwrap();
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value);
        assert!(memory.is_some_and(|m| m > 0), "{memory:?}");
        rt.update_container_resources(UpdateContainerResourcesRequest {
            container_id: ids[1].clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}"));
        let (_, out) = exec_script(&mut rt, &ids[1], "cat /sys/fs/cgroup/memory.max").await;
        assert_eq!(out.trim(), (96u64 << 20).to_string());

        // A container over its memory limit in the guest: OOMKilled.
        let mut hog = container_config("hog", &["sh", "-c", "echo hog-started; tail /dev/zero"]);
        hog.linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
            .memory_limit_in_bytes = 24 << 20;
        let hog_id = run_container(&mut rt, &pod_id, &pod, hog).await;
        let st = wait_state(&mut rt, &hog_id, ContainerState::ContainerExited).await;
        assert_eq!(st.reason, "OOMKilled", "{st:?}");

        // A container with a terminal (kubectl run -it): what it writes to
        // the guest's pty reaches its log file.
        let mut tty = container_config(
            "tty",
            &["sh", "-c", "stty -onlcr; tty; echo tty-ok; exit 5"],
        );
        tty.tty = true;
        tty.stdin = true;
        let tty_id = run_container(&mut rt, &pod_id, &pod, tty).await;
        let st = wait_state(&mut rt, &tty_id, ContainerState::ContainerExited).await;
        assert_eq!(st.exit_code, 5, "{st:?}");
        let log = wait_log(&logs, "tty", "tty-ok").await;
        assert!(log.contains("/dev/pts/"), "{log}");

        // An exec has no process on the host: the daemon runs it through
        // the agent. One running while the daemon is SIGKILLed is carried
        // on by the next daemon, its output and status intact.
        let (mut exec_rt, exec_in) = (rt.clone(), ids[1].clone());
        let in_flight = tokio::spawn(async move {
            exec_script(
                &mut exec_rt,
                &exec_in,
                "echo before; touch /tmp/in-flight; \
                 while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after >&2; exit 4",
            )
            .await
        });
        let start = Instant::now();
        while exec_script(&mut rt, &ids[1], "test -e /tmp/in-flight")
            .await
            .0
            != 0
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the exec did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let exec_relays = helper_relays(root.path(), "exec");
        assert!(exec_relays.is_empty(), "{exec_relays:#?}");
        // Nor has the pod itself (its pause container, or its holder): the
        // VM's processes are the keeper's children, whichever the
        // hypervisor.
        let vm_relays = helper_relays(root.path(), "create");
        assert!(vm_relays.is_empty(), "{vm_relays:#?}");
        let hypervisor = hypervisor_pids(vmdir.path(), backend)[0];
        let keepers = ironcell_testutil::ironcelld_processes(root.path(), true);
        assert!(
            keepers.contains(&parent_of(hypervisor)),
            "the hypervisor's parent is not the keeper ({keepers:?})"
        );

        // The daemon SIGKILLed under the running pod: the keeper starts the
        // next, which serves the pod's containers in the same VM.
        let old = kill_daemon(root.path());
        match cri {
            // Started by hand (containerd 2.x's sandbox controller), so
            // restarted by hand.
            Cri::V2 => {
                let mut d = start_controller_with_env(
                    Path::new(env!("CARGO_BIN_EXE_ironcelld")),
                    root.path(),
                    &c,
                    &env,
                );
                std::thread::spawn(move || d.wait());
            }
            Cri::V17 { .. } => {
                wait_for_new_daemon(root.path(), &old, Duration::from_secs(10));
            }
        }
        let (code, out) = exec_script(&mut rt, &ids[1], "touch /tmp/go").await;
        assert_eq!(code, 0, "{out}");
        let (code, out) = in_flight.await.unwrap();
        assert_eq!((code, out.as_str()), (4, "before\nafter\n"));
        // A container's own output after the restart reaches its log file.
        wait_log(&logs, "side", "side-after-restart").await;
        let (code, out) = exec_script(
            &mut rt,
            &ids[1],
            "echo after-restart; cat /proc/sys/kernel/random/boot_id",
        )
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("after-restart\n"), "{out}");
        assert!(
            seen[0].starts_with(&out["after-restart\n".len()..]),
            "{out} {seen:?}"
        );

        // Each container's rootfs is in the VM's share, in the relay's
        // mount namespace.
        let shared = mounts_under(vmdir.path());
        for id in &ids {
            assert!(
                shared.iter().any(|m| m.contains(&format!("/{id}/rootfs"))),
                "{shared:#?}"
            );
        }

        // containerd restarted under the pod: it finds the pod and its
        // containers again, and exec reaches the same guest.
        c.restart();
        rt = runtime_after_restart(&c).await;
        let (code, out) =
            exec_script(&mut rt, &ids[0], "cat /proc/sys/kernel/random/boot_id").await;
        assert_eq!(code, 0, "{out}");
        assert!(seen[0].starts_with(&out), "{out} {seen:?}");

        // A privileged container gets every host device, which no guest
        // has: refused, and the pod carries on.
        let mut privileged = container_config("privileged", &["sleep", "1000"]);
        privileged
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
        let mut privileged_pod = pod.clone();
        privileged_pod
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .unwrap()
            .privileged = true;
        let privileged_id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(privileged),
                sandbox_config: Some(privileged_pod),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer privileged: {e}"))
            .into_inner()
            .container_id;
        // CRI makes the task, and so the container in the VM, at start.
        let e = rt
            .start_container(StartContainerRequest {
                container_id: privileged_id.clone(),
            })
            .await
            .unwrap_err();
        assert!(e.message().contains("host devices ("), "privileged: {e}");
        rt.remove_container(RemoveContainerRequest {
            container_id: privileged_id,
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer privileged: {e}"));

        // Removing one container leaves the pod's VM to the others.
        rt.remove_container(RemoveContainerRequest {
            container_id: hog_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
        let (code, out) = exec_script(&mut rt, &ids[0], "echo still-here").await;
        assert_eq!((code, out.trim()), (0, "still-here"));
        let shared = mounts_under(vmdir.path());
        assert!(
            !shared.iter().any(|m| m.contains(&hog_id)),
            "the removed container's share is left: {shared:#?}"
        );

        // The pod's network namespace (the hypervisor's), held open so
        // that what the pod's stop leaves in it can be seen after
        // containerd unmounts it.
        let hypervisor = hypervisor_pids(vmdir.path(), backend)[0];
        let pod_netns = std::fs::File::open(format!("/proc/{hypervisor}/ns/net")).unwrap();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log()));
        let left = hypervisor_pids(vmdir.path(), backend);
        assert!(left.is_empty(), "the pod's stop left its VM: {left:?}");
        let in_netns = |cmd: &[&str]| {
            let netns = format!(
                "--net=/proc/{}/fd/{}",
                std::process::id(),
                std::os::fd::AsRawFd::as_raw_fd(&pod_netns)
            );
            let out = std::process::Command::new("nsenter")
                .arg(netns)
                .args(cmd)
                .output()
                .unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let links = in_netns(&["ip", "-br", "link"]);
        assert!(!links.contains("tap0_ironcell"), "the tap is left: {links}");
        let qdiscs = in_netns(&["tc", "qdisc", "show"]);
        assert!(
            !qdiscs.contains("ingress"),
            "a tc ingress is left: {qdiscs}"
        );
        drop(pod_netns);
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log()));

        if cri == (Cri::V17 { sandbox_api: true }) {
            // The pod's holder ends on SIGTERM from a container of the pod
            // (as a pause container would), though it is PID 1 of the
            // pod's PID namespace, to which the kernel drops a signal left
            // at its default action; and its end ends the pod, as a pause
            // container's does: its VM stops, and the pod is not ready.
            let pod = vm_pod("holderends", &logs);
            let pod_id = run_pod_sandbox(&mut rt, &pod, handler)
                .await
                .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
            assert_eq!(hypervisor_pids(vmdir.path(), backend).len(), 1);
            // Sent again until it ends: one sent before the holder set its
            // handler up is dropped.
            let killer = container_config(
                "killer",
                &["sh", "-c", "while kill -TERM 1; do sleep 0.5; done"],
            );
            run_container(&mut rt, &pod_id, &pod, killer).await;
            let start = Instant::now();
            while !hypervisor_pids(vmdir.path(), backend).is_empty() {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the pod's VM outlived its holder\n{}",
                    std::fs::read_to_string(root.path().join("ironcelld.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let start = Instant::now();
            while sandbox_status(&mut rt, &pod_id).await.state
                != PodSandboxState::SandboxNotready as i32
            {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the pod is still ready without its holder"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stop_and_remove_pod(&mut rt, &pod_id)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
        }
        if cri == Cri::V2 || handler != VM_HANDLER {
            return;
        }
        // A pod whose hypervisor is killed: its container exits (137, as
        // killed), the pod is no longer ready, and its removal leaves
        // nothing (checked below). Its VM is asked for by the pod's
        // annotation, on a handler without options.
        let pod = vm_pod("vmdies", &logs);
        let pod_id = run_pod_sandbox(&mut rt, &pod, ANNOTATED_HANDLER)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
        let victim = container_config("victim", &["sleep", "1000"]);
        let id = run_container(&mut rt, &pod_id, &pod, victim).await;
        wait_state(&mut rt, &id, ContainerState::ContainerRunning).await;
        let hypervisors = hypervisor_pids(vmdir.path(), backend);
        assert_eq!(hypervisors.len(), 1, "one VM: {hypervisors:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(hypervisors[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let st = wait_state(&mut rt, &id, ContainerState::ContainerExited).await;
        assert_eq!(st.exit_code, 137, "{st:?}");
        let start = Instant::now();
        loop {
            let st = sandbox_status(&mut rt, &pod_id).await;
            if st.state == PodSandboxState::SandboxNotready as i32 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop_and_remove_pod(&mut rt, &pod_id)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    });
    host.assert_nothing_left();
    pod_cgroup.assert_empty_and_remove();
    // Dropped in reverse: the CRI guard, then containerd.
}
