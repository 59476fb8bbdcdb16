//! Fuzzes ironcelld's request decoding and handling: each input picks a
//! Task API method (or the shim's control protocol, or a method of the
//! sandbox controller), a namespace, and the request bytes, which are
//! decoded as that method's protobuf message (or the control JSON) and
//! handled by the daemon's real service, as a request arriving on an
//! endpoint would be. Nothing may panic; every bad request
//! must come back as an error.
//!
//! Run: `make fuzz` (cargo +nightly fuzz run requests).
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use containerd_shim_protos::api::*;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::Task;
use ironcelld::control::{Control, Request};
use ironcelld::controller::api::containerd::services::sandbox::v1::controller_server::Controller as _;
use ironcelld::controller::api::containerd::services::sandbox::v1::*;
use ironcelld::controller::Controller;
use ironcelld::endpoint::Endpoints;
use ironcelld::events::Publisher;
use ironcelld::reaper::Reaper;
use ironcelld::service::{Service, NAMESPACE_KEY};
use ironcelld::task::Tasks;
use libfuzzer_sys::fuzz_target;
use ttrpc::asynchronous::TtrpcContext;

struct World {
    rt: tokio::runtime::Runtime,
    service: Service,
    control: Control,
    controller: Controller,
    _root: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let (service, control, controller) = rt.block_on(async {
            let tasks = Arc::new(Tasks::new(
                root.path().to_path_buf(),
                PathBuf::from("/nonexistent/ironcelld"),
                Arc::new(Reaper::default()),
                None,
                Publisher::start(),
            ));
            let service = Service {
                tasks: tasks.clone(),
                namespace: "default".into(),
                containerd: String::new(),
            };
            let endpoints = Arc::new(Endpoints::new(root.path().to_path_buf(), tasks.clone(), None));
            let controller = Controller::new(tasks.clone(), endpoints.clone(), "/nonexistent".into());
            (service, Control { tasks, endpoints }, controller)
        });
        World {
            rt,
            service,
            control,
            controller,
            _root: root,
        }
    })
}

fn ctx(ns: &str) -> TtrpcContext {
    let mut metadata = HashMap::new();
    if !ns.is_empty() {
        metadata.insert(NAMESPACE_KEY.to_string(), vec![ns.to_string()]);
    }
    TtrpcContext {
        mh: Default::default(),
        metadata,
        timeout_nano: 0,
        connection_data: Arc::new(ttrpc::ConnectionData),
    }
}

/// A sandbox controller request: `ns` in its gRPC metadata (none when
/// empty).
fn grpc<T>(ns: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = ns.parse() {
        if !ns.is_empty() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
    }
    r
}

macro_rules! grpc_call {
    ($s:expr, $ns:expr, $bytes:expr, $ty:ty, $m:ident) => {
        if let Ok(req) = <$ty as prost::Message>::decode($bytes) {
            let _ = $s.$m(grpc($ns, req)).await;
        }
    };
}

macro_rules! call {
    ($s:expr, $c:expr, $bytes:expr, $ty:ty, $m:ident) => {
        if let Ok(req) = <$ty>::parse_from_bytes($bytes) {
            let _ = $s.$m(&$c, req).await;
        }
    };
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let w = world();
    let method = data[0];
    let ns_len = (data[1] as usize).min(data.len() - 2);
    let ns = String::from_utf8_lossy(&data[2..2 + ns_len]).into_owned();
    let body = &data[2 + ns_len..];
    let c = ctx(&ns);
    let s = &w.service;
    w.rt.block_on(async {
        // Wait would block for ever on a live process; there is none here,
        // but keep every call bounded all the same.
        let call = async {
            match method % 19 {
                0 => call!(s, c, body, StateRequest, state),
                1 => call!(s, c, body, CreateTaskRequest, create),
                2 => call!(s, c, body, StartRequest, start),
                3 => call!(s, c, body, DeleteRequest, delete),
                4 => call!(s, c, body, PidsRequest, pids),
                5 => call!(s, c, body, PauseRequest, pause),
                6 => call!(s, c, body, ResumeRequest, resume),
                7 => call!(s, c, body, KillRequest, kill),
                8 => call!(s, c, body, ExecProcessRequest, exec),
                9 => call!(s, c, body, ResizePtyRequest, resize_pty),
                10 => call!(s, c, body, CloseIORequest, close_io),
                11 => call!(s, c, body, UpdateTaskRequest, update),
                12 => call!(s, c, body, WaitRequest, wait),
                13 => call!(s, c, body, StatsRequest, stats),
                14 => call!(s, c, body, ConnectRequest, connect),
                15 => call!(s, c, body, ShutdownRequest, shutdown),
                16 => call!(s, c, body, CheckpointTaskRequest, checkpoint),
                17 if !body.is_empty() => {
                    // The sandbox controller. Start, and Status of a pod that
                    // exists, listen on a new socket per namespace: Start is
                    // left out, Status is sent for "default" pods only.
                    let (sel, body) = (body[0], &body[1..]);
                    let g = &w.controller;
                    match sel % 8 {
                        0 => grpc_call!(g, &ns, body, ControllerCreateRequest, create),
                        1 => grpc_call!(g, &ns, body, ControllerPlatformRequest, platform),
                        2 => grpc_call!(g, &ns, body, ControllerStopRequest, stop),
                        3 => grpc_call!(g, &ns, body, ControllerWaitRequest, wait),
                        4 if ns == "default" => {
                            grpc_call!(g, &ns, body, ControllerStatusRequest, status)
                        }
                        5 => grpc_call!(g, &ns, body, ControllerShutdownRequest, shutdown),
                        6 => grpc_call!(g, &ns, body, ControllerMetricsRequest, metrics),
                        7 => grpc_call!(g, &ns, body, ControllerUpdateRequest, update),
                        _ => {}
                    }
                }
                _ => {
                    // The shim's control protocol. Register would listen on
                    // a new socket per input; decode it, handle the rest.
                    if let Ok(req) = serde_json::from_slice::<Request>(body) {
                        if !matches!(req, Request::Register { .. }) {
                            let _ = w.control.handle(req).await;
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), call).await;
    });
});
