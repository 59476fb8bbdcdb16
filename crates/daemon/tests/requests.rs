//! Bad input on ironcelld's Task API, from a ttrpc client of the test's own
//! (no containerd): unknown ids, malformed, out-of-order and duplicate
//! requests, a task address used for another namespace, clients that send
//! half a frame or garbage and disconnect. Each gets an error response; the
//! daemon keeps serving and leaks no file descriptor.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api::*;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use ironcell_testutil::*;
use ttrpc::Code;

mod common;
use common::*;

/// A bundle of the test image whose process sleeps.
fn bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image().join("bundle/config.json")).unwrap())
            .unwrap();
    config["root"] = serde_json::json!({"path": image().join("rootfs"), "readonly": true});
    config["process"]["args"] = serde_json::json!(["sleep", "100"]);
    config["process"]["terminal"] = serde_json::json!(false);
    config["linux"]["cgroupsPath"] = serde_json::json!(format!("/ironcell-test/{}", unique("req")));
    std::fs::write(b.join("config.json"), config.to_string()).unwrap();
    b
}

#[test]
fn bad_requests_get_errors_and_leak_nothing() {
    if !need_root("ironcelld requests") {
        return;
    }
    let mut d = Daemon::start();
    let address = d.endpoint();
    let bundle = bundle(d.root.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fds_before = rt.block_on(async {
        let t = TaskClient::new(Client::connect(&address).await.unwrap());
        let ns = || ctx(Some("default"));

        // Unknown ids, for every kind of request.
        let st = |id: &str| StateRequest {
            id: id.into(),
            ..Default::default()
        };
        assert_eq!(code(t.state(ns(), &st("nosuch")).await), Code::NOT_FOUND);
        let start = |id: &str, exec: &str| StartRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        assert_eq!(
            code(t.start(ns(), &start("nosuch", "")).await),
            Code::NOT_FOUND
        );
        let del = |id: &str, exec: &str| DeleteRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        assert_eq!(
            code(t.delete(ns(), &del("nosuch", "")).await),
            Code::NOT_FOUND
        );
        let wait = |id: &str| WaitRequest {
            id: id.into(),
            ..Default::default()
        };
        assert_eq!(code(t.wait(ns(), &wait("nosuch")).await), Code::NOT_FOUND);

        // Malformed creates.
        let create = |id: &str, bundle: &str| CreateTaskRequest {
            id: id.into(),
            bundle: bundle.into(),
            ..Default::default()
        };
        let b = bundle.to_str().unwrap();
        for (id, bundle) in [
            ("../x", b),
            ("ok1", "relative/bundle"),
            ("ok2", "/nonexistent"),
        ] {
            assert_eq!(
                code(t.create(ns(), &create(id, bundle)).await),
                Code::INVALID_ARGUMENT,
                "{id} {bundle}"
            );
        }
        // The address serves one namespace only.
        assert_eq!(
            code(t.state(ctx(Some("other")), &st("nosuch")).await),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code(t.create(ctx(Some("../etc")), &create("c", b)).await),
            Code::INVALID_ARGUMENT
        );

        // A real task, then out-of-order and duplicate requests on it.
        let pid = t.create(ns(), &create("c1", b)).await.unwrap().pid;
        assert!(pid > 0);
        // The same Create again answers the same task (the keeper re-sends
        // requests a dying daemon did not answer); another bundle under the
        // same id is refused.
        assert_eq!(t.create(ns(), &create("c1", b)).await.unwrap().pid, pid);
        let other = d.root.path().join("other-bundle");
        std::fs::create_dir_all(&other).unwrap();
        assert_eq!(
            code(t.create(ns(), &create("c1", other.to_str().unwrap())).await),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code(t.start(ns(), &start("c1", "e1")).await),
            Code::NOT_FOUND
        );
        assert_eq!(t.start(ns(), &start("c1", "")).await.unwrap().pid, pid);
        // Start is idempotent for the same reason.
        assert_eq!(t.start(ns(), &start("c1", "")).await.unwrap().pid, pid);
        let exec = |exec_id: &str, spec: &[u8]| ExecProcessRequest {
            id: "c1".into(),
            exec_id: exec_id.into(),
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: spec.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            code(t.exec(ns(), &exec("e1", b"{not json")).await),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code(t.exec(ns(), &exec("../e", b"{}")).await),
            Code::INVALID_ARGUMENT
        );
        let spec = br#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#;
        t.exec(ns(), &exec("e1", spec)).await.unwrap();
        assert_eq!(
            code(t.exec(ns(), &exec("e1", spec)).await),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code(t.delete(ns(), &del("c1", "")).await),
            Code::FAILED_PRECONDITION
        );
        let kill = |sig: u32| KillRequest {
            id: "c1".into(),
            signal: sig,
            ..Default::default()
        };
        for bad in [0, 65, u32::MAX] {
            assert_eq!(
                code(t.kill(ns(), &kill(bad)).await),
                Code::INVALID_ARGUMENT,
                "signal {bad}"
            );
        }
        t.kill(ns(), &kill(9)).await.unwrap();
        let exit = t.wait(ns(), &wait("c1")).await.unwrap();
        assert_eq!(exit.exit_status, 137);
        assert_eq!(code(t.kill(ns(), &kill(9)).await), Code::NOT_FOUND);
        t.delete(ns(), &del("c1", "e1")).await.unwrap();
        t.delete(ns(), &del("c1", "")).await.unwrap();
        assert_eq!(code(t.delete(ns(), &del("c1", "")).await), Code::NOT_FOUND);
        d.fds()
    });

    // Clients that send half a frame, garbage or an oversized frame, and
    // disconnect; and many clients that connect and leave.
    let path = address.strip_prefix("unix://").unwrap();
    for i in 0..50 {
        let mut s = UnixStream::connect(path).unwrap();
        let junk: &[u8] = match i % 3 {
            0 => &[0, 0, 0, 40, 0, 0, 0, 1, 1],               // half a header
            1 => &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0], // 4 GiB frame
            _ => b"GET / HTTP/1.1\r\n\r\n",
        };
        let _ = s.write_all(junk);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.alive(), "the daemon died");
    rt.block_on(async {
        let t = TaskClient::new(Client::connect(&address).await.unwrap());
        let r = t
            .state(
                ctx(Some("default")),
                &StateRequest {
                    id: "nosuch".into(),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(code(r), Code::NOT_FOUND);
    });
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = d.fds();
    assert!(
        fds_after <= fds_before + 2,
        "fds before {fds_before}, after {fds_after}"
    );
    // Nothing of the task is left.
    for dir in ["tasks/default", "containers/default"] {
        let left: Vec<_> = std::fs::read_dir(d.root.path().join(dir))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}

/// containerd 2.x's sandbox controller (gRPC) gets errors for what it
/// cannot do: requests without a namespace or with an invalid one, unknown
/// or invalid pod ids, options that are not a PodSandboxConfig, a cgroup
/// that escapes the hierarchy, a pod annotation naming a sandbox no pod
/// runs in. A pod it makes reports the Task API address
/// with version 3, and goes on Shutdown. The controller of VM pods writes
/// a pod's bundle at Create, and Shutdown removes it.
#[test]
fn sandbox_controller_errors() {
    use ironcelld::controller::api::containerd::services::sandbox::v1::controller_client::ControllerClient;
    use ironcelld::controller::api::containerd::services::sandbox::v1::*;
    use tonic::{Code, Request};

    if !need_root("ironcelld sandbox controller") {
        return;
    }
    let mut d = Daemon::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = ironcell_testutil::cri::channel(d.root.path().join("sandbox.sock")).await;
        let mut c = ControllerClient::new(ch);
        fn req<T>(ns: Option<&str>, msg: T) -> Request<T> {
            let mut r = Request::new(msg);
            if let Some(ns) = ns {
                r.metadata_mut()
                    .insert("containerd-namespace", ns.parse().unwrap());
            }
            r
        }
        let create = |id: &str, options: Option<prost_types::Any>| ControllerCreateRequest {
            sandbox_id: id.into(),
            options,
            ..Default::default()
        };
        // The status code of a call that must fail.
        macro_rules! fails {
            ($call:expr) => {
                match $call.await {
                    Err(s) => s.code(),
                    Ok(ok) => panic!("expected an error, got {:?}", ok.into_inner()),
                }
            };
        }
        // A request for pod `$id` in namespace "default".
        macro_rules! pod {
            ($ty:ident, $id:expr) => {
                req(
                    Some("default"),
                    $ty {
                        sandbox_id: $id.into(),
                        ..Default::default()
                    },
                )
            };
        }
        let c2 = &mut c;
        assert_eq!(
            fails!(c2.create(req(None, create("p1", None)))),
            Code::InvalidArgument
        );
        assert_eq!(
            fails!(c2.create(req(Some("../x"), create("p1", None)))),
            Code::InvalidArgument
        );
        assert_eq!(
            fails!(c2.create(req(Some("default"), create("../p", None)))),
            Code::InvalidArgument
        );
        let config = |bytes: Vec<u8>| {
            Some(prost_types::Any {
                type_url: "type.googleapis.com/runtime.v1.PodSandboxConfig".into(),
                value: bytes,
            })
        };
        // Not protobuf at all.
        assert_eq!(
            fails!(c2.create(req(Some("default"), create("p1", config(vec![0xff; 7]))))),
            Code::InvalidArgument
        );
        // linux { cgroup_parent: "/a/../../etc" }: field 8 holding field 1.
        let parent = b"/a/../../etc";
        let mut linux = vec![0x0a, parent.len() as u8];
        linux.extend_from_slice(parent);
        let mut bytes = vec![0x42, linux.len() as u8];
        bytes.extend_from_slice(&linux);
        assert_eq!(
            fails!(c2.create(req(Some("default"), create("p1", config(bytes))))),
            Code::InvalidArgument
        );
        // A pod annotation naming a sandbox a pod cannot be, or none.
        for kind in ["wasm", "bogus"] {
            let (k, v) = ("io.ironcell.sandbox".as_bytes(), kind.as_bytes());
            let mut entry = vec![0x0a, k.len() as u8];
            entry.extend_from_slice(k);
            entry.extend_from_slice(&[0x12, v.len() as u8]);
            entry.extend_from_slice(v);
            let mut bytes = vec![0x3a, entry.len() as u8];
            bytes.extend_from_slice(&entry);
            let status = c2
                .create(req(Some("default"), create("p1", config(bytes))))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{kind}: {status}");
            assert!(status.message().contains(kind), "{status}");
        }
        // The controller of VM pods writes a pod's bundle at Create, and
        // Shutdown removes it, with the VM never started.
        let vm_socket = d.root.path().join("sandbox-vm.sock");
        let mut vm = ControllerClient::new(ironcell_testutil::cri::channel(vm_socket).await);
        vm.create(req(Some("default"), create("vmp", None)))
            .await
            .unwrap_or_else(|e| panic!("Create on the VM controller: {e}"));
        let bundle = d.root.path().join("vm-pods/default/vmp");
        let spec = std::fs::read_to_string(bundle.join("config.json")).unwrap();
        assert!(spec.contains(r#""io.ironcell.sandbox": "vm""#), "{spec}");
        vm.shutdown(pod!(ControllerShutdownRequest, "vmp"))
            .await
            .unwrap();
        assert!(!bundle.exists(), "the VM pod's bundle is left");
        // Unknown pods.
        let no = "nosuch";
        assert_eq!(
            fails!(c2.start(pod!(ControllerStartRequest, no))),
            Code::NotFound
        );
        assert_eq!(
            fails!(c2.wait(pod!(ControllerWaitRequest, no))),
            Code::NotFound
        );
        assert_eq!(
            fails!(c2.status(pod!(ControllerStatusRequest, no))),
            Code::NotFound
        );
        assert_eq!(
            fails!(c2.metrics(pod!(ControllerMetricsRequest, no))),
            Code::NotFound
        );
        assert_eq!(
            fails!(c2.shutdown(pod!(ControllerShutdownRequest, no))),
            Code::NotFound
        );
        let ns = || Some("default");

        // A pod: created, started (the address and version containerd 2.1
        // needs), reported, its metrics refused without a cgroup, removed.
        c2.create(req(ns(), create("p1", None))).await.unwrap();
        let started = c2
            .start(pod!(ControllerStartRequest, "p1"))
            .await
            .unwrap()
            .into_inner();
        assert!(started.pid > 0);
        assert_eq!(started.version, 3);
        let path = started
            .address
            .strip_prefix("ttrpc+unix://")
            .unwrap_or_else(|| panic!("{}", started.address));
        assert!(Path::new(path).exists(), "{path}");
        let status = c2
            .status(pod!(ControllerStatusRequest, "p1"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (status.state.as_str(), status.pid),
            ("SANDBOX_READY", started.pid)
        );
        assert_eq!(status.address, started.address);
        // Another namespace does not see it.
        let mut other = pod!(ControllerStatusRequest, "p1");
        other
            .metadata_mut()
            .insert("containerd-namespace", "other".parse().unwrap());
        assert_eq!(fails!(c2.status(other)), Code::NotFound);
        assert_eq!(
            fails!(c2.metrics(pod!(ControllerMetricsRequest, "p1"))),
            Code::FailedPrecondition
        );
        let mut waiter = c2.clone();
        let wait =
            tokio::spawn(async move { waiter.wait(pod!(ControllerWaitRequest, "p1")).await });
        c2.stop(pod!(ControllerStopRequest, "p1")).await.unwrap();
        let exit = wait.await.unwrap().unwrap().into_inner();
        assert_eq!(exit.exit_status, 128 + 9);
        c2.shutdown(pod!(ControllerShutdownRequest, "p1"))
            .await
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", started.pid));
        assert!(
            stat.as_ref().map_or(true, |s| s.contains(" Z ")),
            "the pod process is left: {stat:?}"
        );
    });
    assert!(d.alive(), "the daemon died");
    assert!(
        !d.root.path().join("pods/default/p1.json").exists(),
        "the pod's record is left"
    );
}
