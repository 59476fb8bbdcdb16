//! A CRI client for the tests and benchmarks that drive containerd 1.7's
//! CRI: the channel over containerd's unix socket, and host-network pod and
//! container configurations built on the test image.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// The pod sandbox image (`scripts/build-test-image.sh`).
pub const PAUSE: &str = "localhost/ironcell-pause:latest";
pub const IMAGE: &str = "localhost/ironcell-test:latest";

/// containerd 1.7 unpacked by `scripts/fetch-containerd-1.7.sh`, or None
/// (with a loud notice) when it is missing.
pub fn containerd17() -> Option<PathBuf> {
    let dir = std::env::var_os("IRONCELL_CONTAINERD17_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ironcell/containerd-1.7/root/usr/bin"));
    let bin = dir.join("containerd");
    if bin.exists() {
        Some(bin)
    } else {
        eprintln!(
            "\n!!! SKIPPED containerd 1.7 CRI test: {} is missing (run `make setup`) !!!\n",
            bin.display()
        );
        None
    }
}

/// The runtime handler that makes pods through ironcelld's sandbox API
/// (`sandbox_mode = "shim"`; containerd needs `ENABLE_CRI_SANDBOXES=1`).
pub const SANDBOX_API_HANDLER: &str = "ironcell-sandbox-api";

/// containerd's CRI configuration with the runtime handlers `runc`,
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

/// A private containerd 1.7 with the CRI on: ironcell's binaries from
/// `bins` on its PATH (and containerd's own directory, for its runc shim),
/// the daemon root `root`, the sandbox API on when `sandbox_api`, the test
/// image and the pause image imported for the CRI. Returns it and the pods'
/// log directory; None when containerd 1.7 is missing or not root.
pub fn start_containerd(
    bins: PathBuf,
    root: &Path,
    sandbox_api: bool,
) -> Option<(crate::containerd::Containerd, PathBuf)> {
    let binary = containerd17()?;
    let mut env = vec![("IRONCELLD_ROOT".into(), root.as_os_str().to_owned())];
    if sandbox_api {
        env.push(("ENABLE_CRI_SANDBOXES".into(), "1".into()));
    }
    let c = crate::containerd::Containerd::start(crate::containerd::Options {
        path: vec![bins, binary.parent().map(PathBuf::from)?],
        binary: Some(binary),
        cri: true,
        extra_config: config(),
        env,
    })?;
    c.import("k8s.io");
    let pause = crate::image().join("ironcell-pause.docker.tar");
    c.ok(&["-n", "k8s.io", "images", "import", pause.to_str().unwrap()]);
    let logs = c.dir().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    Some((c, logs))
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
