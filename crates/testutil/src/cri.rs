//! A CRI client for the tests and benchmarks that drive containerd 1.7's
//! and 2.x's CRI: the channel over containerd's unix socket, and
//! host-network pod and container configurations built on the test image.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// The pod sandbox image (`scripts/build-test-image.sh`).
pub const PAUSE: &str = "localhost/ironcell-pause:latest";
pub const IMAGE: &str = "localhost/ironcell-test:latest";

/// Which containerd a CRI test drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cri {
    /// containerd 1.7 (Debian 13's); with `sandbox_api`, its experimental
    /// CRI sandbox mode is on (`ENABLE_CRI_SANDBOXES=1`).
    V17 { sandbox_api: bool },
    /// containerd 2.x (Debian unstable's), with ironcelld as its sandbox
    /// controller: the runtime handler [`SANDBOXER_HANDLER`].
    V2,
}

impl Cri {
    /// The version prefix, and where `scripts/fetch-containerd.sh` unpacks
    /// it (or the environment variable that overrides that).
    fn install(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Cri::V17 { .. } => (
                "1.7",
                "IRONCELL_CONTAINERD17_BIN",
                "/var/cache/ironcell/containerd-1.7/root/usr/bin",
            ),
            Cri::V2 => (
                "2",
                "IRONCELL_CONTAINERD2_BIN",
                "/var/cache/ironcell/containerd-2/root/usr/bin",
            ),
        }
    }

    /// The containerd binary, or None (with a loud notice) when it is
    /// missing.
    pub fn binary(self) -> Option<PathBuf> {
        let (version, var, default) = self.install();
        let dir = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default));
        let bin = dir.join("containerd");
        if bin.exists() {
            Some(bin)
        } else {
            eprintln!(
                "\n!!! SKIPPED containerd {version} CRI test: {} is missing (run `make setup`) !!!\n",
                bin.display()
            );
            None
        }
    }

    /// The version the CRI reports.
    pub fn version(self) -> &'static str {
        self.install().0
    }
}

/// The runtime handler that makes pods through ironcelld's sandbox API
/// (`sandbox_mode = "shim"`; containerd needs `ENABLE_CRI_SANDBOXES=1`).
pub const SANDBOX_API_HANDLER: &str = "ironcell-sandbox-api";

/// containerd 1.7's runtime handler that runs containerd's own runc shim
/// (`io.containerd.runc.v2`) with the ironcell CLI as its runc binary
/// (`BinaryName`), as a cluster trying ironcell first would configure it;
/// see [`start_containerd_with_runc_shim`].
pub const RUNC_SHIM_HANDLER: &str = "ironcell-runc";

/// containerd 1.7's runtime handler whose pods run in VMs, a VM a pod:
/// ironcelld's shim with the handler option `Sandbox = "vm"`
/// ([`vm_handler_config`]).
pub const VM_HANDLER: &str = "ironcell-vm";

/// The runtime handler [`VM_HANDLER`] for `cri`'s CRI.
pub fn vm_handler_config(cri: Cri) -> String {
    let plugin = match cri {
        Cri::V17 { .. } => r#"plugins."io.containerd.grpc.v1.cri""#,
        Cri::V2 => r#"plugins."io.containerd.cri.v1.runtime""#,
    };
    format!(
        r#"
[{plugin}.containerd.runtimes.{VM_HANDLER}]
  runtime_type = "io.containerd.ironcell.v2"
  [{plugin}.containerd.runtimes.{VM_HANDLER}.options]
    Sandbox = "vm"
"#
    )
}

/// A CNI network for a test's pods: Debian's `bridge` and `host-local`
/// plugins (containernetworking-plugins, in /usr/lib/cni), a bridge and a
/// /24 of the test's own; the bridge goes when dropped.
pub struct CniBridge {
    dir: tempfile::TempDir,
    pub bridge: String,
    /// The bridge's address, the pods' gateway.
    pub gateway: std::net::Ipv4Addr,
}

impl CniBridge {
    /// None (after a loud notice) without the plugins.
    pub fn new(test: &str) -> Option<CniBridge> {
        let plugins = Path::new("/usr/lib/cni");
        if !["bridge", "host-local", "loopback"]
            .iter()
            .all(|p| plugins.join(p).exists())
        {
            eprintln!(
                "\n!!! SKIPPED {test}: the CNI plugins are missing from /usr/lib/cni (run `make setup`) !!!\n"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("iccni-")
            .tempdir_in("/tmp")
            .unwrap();
        // A subnet and bridge of its own, also beside the other bridges of
        // this test process (its tests run in parallel).
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = (std::process::id() + k * 37) % 200 + 20;
        let bridge = format!("iccni{n}");
        let gateway = std::net::Ipv4Addr::new(10, 213, n as u8, 1);
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("ironcell-test-{n}"),
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("10.213.{n}.0/24"), "gateway": gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.path().join("ipam"),
                },
            }],
        });
        std::fs::create_dir(dir.path().join("conf")).unwrap();
        std::fs::write(
            dir.path().join("conf/10-ironcell-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
        Some(CniBridge {
            dir,
            bridge,
            gateway,
        })
    }

    /// `cri`'s CRI configuration for this network.
    pub fn config(&self, cri: Cri) -> String {
        let (plugin, bin_dir) = match cri {
            Cri::V17 { .. } => (
                r#"plugins."io.containerd.grpc.v1.cri""#,
                r#"bin_dir = "/usr/lib/cni""#,
            ),
            Cri::V2 => (
                r#"plugins."io.containerd.cri.v1.runtime""#,
                r#"bin_dirs = ["/usr/lib/cni"]"#,
            ),
        };
        format!(
            r#"
[{plugin}.cni]
  {bin_dir}
  conf_dir = "{}"
"#,
            self.dir.path().join("conf").display()
        )
    }
}

impl Drop for CniBridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// containerd 2.x's runtime handler whose pods ironcelld's sandbox
/// controller makes (`sandboxer = "ironcell"`).
pub const SANDBOXER_HANDLER: &str = "ironcell-sandboxer";

/// containerd 2.x's CRI configuration (version 3): the sandbox controller
/// at `controller` as the proxy plugin `ironcell` (and its controller of
/// VM pods, beside it, as `ironcell-vm`), the runtime handlers
/// `runc`, `ironcell` (a pause container per pod) and
/// [`SANDBOXER_HANDLER`], and the pause image.
pub fn config_v2(controller: &Path) -> String {
    format!(
        r#"
[proxy_plugins.ironcell]
  type = "sandbox"
  address = "{controller}"
[proxy_plugins.ironcell-vm]
  type = "sandbox"
  address = "{vm_controller}"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{PAUSE}"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.ironcell]
  runtime_type = "io.containerd.ironcell.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{SANDBOXER_HANDLER}]
  runtime_type = "io.containerd.ironcell.v2"
  sandboxer = "ironcell"
"#,
        controller = controller.display(),
        vm_controller = controller.with_file_name("sandbox-vm.sock").display(),
    )
}

/// containerd 1.7's CRI configuration with the runtime handlers `runc`,
/// `ironcell` (a pause container per pod) and `ironcell-sandbox-api`, and
/// the pause image.
pub fn config() -> String {
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ironcell]
      runtime_type = "io.containerd.ironcell.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{SANDBOX_API_HANDLER}]
      runtime_type = "io.containerd.ironcell.v2"
      sandbox_mode = "shim"
"#
    )
}

/// The runtime handler [`RUNC_SHIM_HANDLER`] for containerd 1.7's CRI:
/// the runc shim calling `ironcell` with state root `runc_root` (the shim
/// adds the namespace: ironcell's `--root` is `<runc_root>/k8s.io`).
pub fn runc_shim_config(ironcell: &Path, runc_root: &Path) -> String {
    format!(
        r#"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNC_SHIM_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNC_SHIM_HANDLER}.options]
        BinaryName = "{}"
        Root = "{}"
"#,
        ironcell.display(),
        runc_root.display()
    )
}

/// [`start_containerd`] for containerd 1.7 (without the sandbox API) with
/// the handler [`RUNC_SHIM_HANDLER`] too: containerd's runc shim with the
/// ironcell CLI `ironcell` as its runc binary, its state under
/// `<root>/runc` ([`runc_shim_state`]).
pub fn start_containerd_with_runc_shim(
    bins: PathBuf,
    root: &Path,
    ironcell: &Path,
) -> Option<(crate::containerd::Containerd, PathBuf)> {
    start(
        bins,
        root,
        Cri::V17 { sandbox_api: false },
        runc_shim_config(ironcell, &root.join("runc")),
    )
}

/// ironcell's state root for the k8s.io namespace of the containerd that
/// [`start_containerd_with_runc_shim`] started on `root`.
pub fn runc_shim_state(root: &Path) -> PathBuf {
    root.join("runc/k8s.io")
}

/// A private containerd (`cri`) with the CRI on: ironcell's binaries from
/// `bins` on its PATH (and containerd's own directory, for its runc shim),
/// the daemon root `root`, the test image and the pause image imported for
/// the CRI. For containerd 2.x, ironcelld runs too, as its sandbox
/// controller (started after containerd, whose ttrpc address it needs:
/// containerd connects to a proxy plugin when first used). Returns it and
/// the pods' log directory; None when that containerd is missing or not
/// root.
pub fn start_containerd(
    bins: PathBuf,
    root: &Path,
    cri: Cri,
) -> Option<(crate::containerd::Containerd, PathBuf)> {
    start(bins, root, cri, String::new())
}

/// [`start_containerd`] with `more_config` appended to containerd's
/// configuration (in its version's form) and `env` in its environment
/// (and so in the shims' and ironcelld's).
pub fn start_containerd_with(
    bins: PathBuf,
    root: &Path,
    cri: Cri,
    more_config: String,
    env: Vec<(String, std::ffi::OsString)>,
) -> Option<(crate::containerd::Containerd, PathBuf)> {
    start_in(bins, root, cri, more_config, env)
}

fn start(
    bins: PathBuf,
    root: &Path,
    cri: Cri,
    more_config: String,
) -> Option<(crate::containerd::Containerd, PathBuf)> {
    start_in(bins, root, cri, more_config, Vec::new())
}

fn start_in(
    bins: PathBuf,
    root: &Path,
    cri: Cri,
    more_config: String,
    more_env: Vec<(String, std::ffi::OsString)>,
) -> Option<(crate::containerd::Containerd, PathBuf)> {
    let binary = cri.binary()?;
    let mut env = vec![("IRONCELLD_ROOT".into(), root.as_os_str().to_owned())];
    env.extend(more_env.iter().cloned());
    if cri == (Cri::V17 { sandbox_api: true }) {
        env.push(("ENABLE_CRI_SANDBOXES".into(), "1".into()));
    }
    let c = crate::containerd::Containerd::start(crate::containerd::Options {
        path: vec![bins.clone(), binary.parent().map(PathBuf::from)?],
        binary: Some(binary),
        cri: true,
        extra_config: match cri {
            Cri::V17 { .. } => config() + &more_config,
            Cri::V2 => config_v2(&root.join("sandbox.sock")) + &more_config,
        },
        version3: cri == Cri::V2,
        env,
    })?;
    if cri == Cri::V2 {
        let mut daemon = start_controller_with_env(&bins.join("ironcelld"), root, &c, &more_env);
        // Reaped whenever it ends (the test's DaemonGuard kills it).
        std::thread::spawn(move || daemon.wait());
    }
    c.import("k8s.io");
    let pause = crate::image().join("ironcell-pause.docker.tar");
    c.ok(&["-n", "k8s.io", "images", "import", pause.to_str().unwrap()]);
    wait_for_cri_images(&c, &[IMAGE, PAUSE]);
    let logs = c.dir().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    Some((c, logs))
}

/// Waits until containerd `c`'s CRI lists the images `want`: the CRI
/// learns of images imported through ctr from containerd's events, a
/// moment after the import returns, and a RunPodSandbox before that tries
/// to pull its pause image from the network.
fn wait_for_cri_images(c: &crate::containerd::Containerd, want: &[&str]) {
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut images = ImageServiceClient::new(channel(c.socket()).await);
        let start = std::time::Instant::now();
        loop {
            let listed = images
                .list_images(ListImagesRequest::default())
                .await
                .map(|r| r.into_inner().images)
                .unwrap_or_default();
            let has = |tag: &&str| listed.iter().any(|i| i.repo_tags.iter().any(|t| t == tag));
            if want.iter().all(has) {
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "containerd's CRI never listed {want:?}: {listed:?}\n{}",
                c.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
}

/// Starts ironcelld (binary `bin`, root `root`) as containerd `c`'s
/// sandbox controller, and waits for its socket.
pub fn start_controller(
    bin: &Path,
    root: &Path,
    c: &crate::containerd::Containerd,
) -> std::process::Child {
    start_controller_with_env(bin, root, c, &[])
}

/// [`start_controller`] with `env` added to the daemon's environment.
pub fn start_controller_with_env(
    bin: &Path,
    root: &Path,
    c: &crate::containerd::Containerd,
    env: &[(String, std::ffi::OsString)],
) -> std::process::Child {
    let socket = root.join("sandbox.sock");
    let _ = std::fs::remove_file(&socket);
    let ttrpc = c.ttrpc_socket();
    let child = crate::start_daemon_with_env(
        bin,
        root,
        &["--containerd".as_ref(), ttrpc.as_os_str()],
        env,
    );
    let start = std::time::Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "ironcelld did not listen on {}",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child
}

/// A gRPC channel to containerd's unix socket.
pub async fn channel(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to containerd's CRI")
}

fn host_namespaces() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

/// A host-network pod (its hostname left empty, as the kubelet does: a
/// hostname needs a private UTS namespace).
pub fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: host_namespaces(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The namespace options of a pod made by [`pod_config`], to change.
pub fn pod_namespaces(pod: &mut PodSandboxConfig) -> &mut NamespaceOption {
    pod.linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("pod_config gives every pod namespace options")
}

/// The namespace options of a container made by [`container_config`], to
/// change.
pub fn container_namespaces(config: &mut ContainerConfig) -> &mut NamespaceOption {
    config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("container_config gives every container namespace options")
}

/// A cluster's DNS config, as the kubelet gives a pod (servers, search
/// domains, options), and the `/etc/resolv.conf` its containers must see
/// (resolv.conf(5): one line for the search domains, one a server, one for
/// the options).
pub fn cluster_dns() -> (DnsConfig, &'static str) {
    let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    (
        DnsConfig {
            servers: words(&["10.96.0.10", "fd00:10:96::a"]),
            searches: words(&["default.svc.cluster.local", "svc.cluster.local"]),
            options: words(&["ndots:5"]),
        },
        "search default.svc.cluster.local svc.cluster.local\n\
         nameserver 10.96.0.10\nnameserver fd00:10:96::a\noptions ndots:5\n",
    )
}

/// A container of the test image running `command`, logging to
/// `<pod log dir>/<name>.log`.
pub fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: host_namespaces(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ExecSync of `sh -c script` in container `id`: its exit code and its
/// stdout followed by its stderr.
pub async fn exec_script(
    rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<Channel>,
    id: &str,
    script: &str,
) -> (i32, String) {
    let out = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 30,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?} in {id}: {e}"))
        .into_inner();
    (
        out.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// RunPodSandbox of `config` with runtime handler `handler`; returns the
/// pod's id.
pub async fn run_pod_sandbox(
    rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<Channel>,
    config: &PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    Ok(rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

/// StopPodSandbox, then RemovePodSandbox, of pod `id`, as the kubelet
/// removes a pod; which call failed and why.
pub async fn stop_and_remove_pod(
    rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(), String> {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map_err(|e| format!("StopPodSandbox: {e}"))?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map_err(|e| format!("RemovePodSandbox: {e}"))?;
    Ok(())
}

/// CreateContainer and StartContainer of `config` in pod `pod_id`, as the
/// kubelet runs a container; returns its id, or which call failed and why.
pub async fn run_container(
    rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, String> {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .map_err(|e| format!("CreateContainer {name}: {}", e.message()))?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(|e| format!("StartContainer {name}: {}", e.message()))?;
    Ok(id)
}

/// Polls ContainerStatus every `poll` until container `id` is in
/// `want`, for at most `limit`; returns its status.
pub async fn wait_for_state(
    rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<Channel>,
    id: &str,
    want: ContainerState,
    limit: std::time::Duration,
    poll: std::time::Duration,
) -> Result<ContainerStatus, String> {
    let start = std::time::Instant::now();
    loop {
        let st = rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|e| format!("ContainerStatus {id}: {e}"))?
            .into_inner()
            .status
            .ok_or_else(|| format!("ContainerStatus {id}: no status"))?;
        if st.state == want as i32 {
            return Ok(st);
        }
        if start.elapsed() > limit {
            return Err(format!(
                "container {id} never {want:?} within {limit:?}: {st:?}"
            ));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Polls ContainerStatus closely (a benchmark's timing depends on it)
/// until container `id` exited, for at most `limit`.
pub async fn wait_exited(
    rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<Channel>,
    id: &str,
    limit: std::time::Duration,
) -> Result<(), String> {
    let poll = std::time::Duration::from_millis(2);
    wait_for_state(rt, id, ContainerState::ContainerExited, limit, poll)
        .await
        .map(|_| ())
}

/// A CRI client of containerd `c` once its CRI answers again after a
/// restart (it answers "not initialized yet" while it recovers its pods
/// and containers).
pub async fn runtime_after_restart(
    c: &crate::containerd::Containerd,
) -> k8s_cri::v1::runtime_service_client::RuntimeServiceClient<Channel> {
    let mut rt =
        k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel(c.socket()).await);
    let start = std::time::Instant::now();
    while let Err(e) = rt.status(StatusRequest::default()).await {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "CRI not back after a containerd restart: {e}\n{}",
            c.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    rt
}

/// The median, minimum and maximum of `v` (sorted in place; not empty).
pub fn median_min_max(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// A benchmark's latency runs: an untimed warm-up of each handler, then
/// `runs` rounds in which every handler runs `one(handler, n)` once, the
/// first of the round rotating so that drift hits them alike. Returns,
/// per handler, the times (ms) of the runs that succeeded and how many
/// failed (each failure on stderr, after `prog`).
pub async fn interleave(
    prog: &str,
    handlers: &[&str],
    runs: usize,
    mut one: impl AsyncFnMut(&str, usize) -> Result<f64, String>,
) -> Vec<(Vec<f64>, usize)> {
    let mut results = vec![(Vec::new(), 0); handlers.len()];
    for h in handlers {
        if let Err(e) = one(h, usize::MAX).await {
            eprintln!("{prog}: {h} warm-up failed: {e}");
        }
    }
    for i in 0..runs {
        for k in 0..handlers.len() {
            let k = (k + i) % handlers.len();
            match one(handlers[k], i).await {
                Ok(ms) => results[k].0.push(ms),
                Err(e) => {
                    results[k].1 += 1;
                    eprintln!("{prog}: {} run {i} failed: {e}", handlers[k]);
                }
            }
        }
    }
    results
}

/// Prints [`interleave`]'s results as a table under `title`; returns the
/// medians of the handlers with a run that succeeded.
pub fn print_latency_table(
    title: &str,
    handlers: &[&str],
    results: &mut [(Vec<f64>, usize)],
) -> Vec<f64> {
    println!("\n{title}\n");
    println!("| handler | runs ok | median ms | min | max |");
    println!("|---|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (h, (v, failed)) in handlers.iter().zip(results.iter_mut()) {
        let ok = v.len();
        if ok == 0 {
            println!("| {h} | 0/{failed} | - | - | - |");
            continue;
        }
        let (med, min, max) = median_min_max(v);
        medians.push(med);
        println!(
            "| {h} | {ok}/{} | {med:.1} | {min:.1} | {max:.1} |",
            ok + *failed
        );
    }
    medians
}
