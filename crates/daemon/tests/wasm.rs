//! wasm tasks in ironcelld, from a ttrpc client of the test's own: modules
//! (WebAssembly text compiled by the test) run inside the daemon — the
//! task's pid is the daemon's, no process is started — with their exit
//! statuses, traps, kills before and after start, refused operations, bad
//! modules, and a daemon restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::*;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use ironcell_testutil::wasm::{program, SLEEP_50MS, SPIN};
use ironcell_testutil::*;
use ttrpc::Code;

mod common;
use common::*;

/// A bundle `dir/name` whose rootfs holds `/app.wasm`, and empty files for
/// its stdout and stderr.
fn bundle(dir: &Path, name: &str, module: &[u8]) -> (PathBuf, PathBuf, PathBuf) {
    let b = dir.join(name);
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::write(b.join("rootfs/app.wasm"), module).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["/app.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
    });
    std::fs::write(b.join("config.json"), config.to_string()).unwrap();
    let (out, err) = (b.join("stdout"), b.join("stderr"));
    std::fs::write(&out, "").unwrap();
    std::fs::write(&err, "").unwrap();
    (b, out, err)
}

#[test]
fn wasm_tasks_run_in_the_daemon() {
    if !need_root("wasm tasks in ironcelld") {
        return;
    }
    let mut d = Daemon::start();
    let address = d.endpoint();
    let dir = d.root.path().join("bundles");
    let daemon_pid = d.child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ns = || ctx(Some("default"));
    let create = |id: &str, b: &Path, out: &Path, err: &Path| CreateTaskRequest {
        id: id.into(),
        bundle: b.to_str().unwrap().into(),
        stdout: out.to_str().unwrap().into(),
        stderr: err.to_str().unwrap().into(),
        ..Default::default()
    };
    let req = |id: &str| (id.to_string(), String::new());
    rt.block_on(async {
        let t = TaskClient::new(Client::connect(&address).await.unwrap());
        let start = |id: &str| StartRequest {
            id: req(id).0,
            ..Default::default()
        };
        let wait = |id: &str| WaitRequest {
            id: req(id).0,
            ..Default::default()
        };
        let delete = |id: &str| DeleteRequest {
            id: req(id).0,
            ..Default::default()
        };
        let kill = |id: &str, signal: u32| KillRequest {
            id: req(id).0,
            signal,
            ..Default::default()
        };

        // Hello: stdout, status 0, the daemon's own pid, no process.
        let (b, out, _) = bundle(&dir, "hello", &program("hello from wasm\n", ""));
        let r = t
            .create(ns(), &create("hello", &b, &out, &out))
            .await
            .unwrap();
        assert_eq!(r.pid, daemon_pid);
        let pids = t
            .pids(
                ns(),
                &PidsRequest {
                    id: "hello".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(pids.processes.is_empty());
        t.start(ns(), &start("hello")).await.unwrap();
        let w = t.wait(ns(), &wait("hello")).await.unwrap();
        assert_eq!(w.exit_status, 0);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello from wasm\n");
        let del = t.delete(ns(), &delete("hello")).await.unwrap();
        assert_eq!(del.exit_status, 0);

        // A module that sleeps (poll_oneoff: WASI's clock through the
        // runtime's timers) wakes up and ends.
        let (b, out, err) = bundle(&dir, "sleep", &program("", SLEEP_50MS));
        t.create(ns(), &create("sleep", &b, &out, &err))
            .await
            .unwrap();
        let before = Instant::now();
        t.start(ns(), &start("sleep")).await.unwrap();
        let w = t.wait(ns(), &wait("sleep")).await.unwrap();
        assert_eq!(
            w.exit_status,
            0,
            "{}",
            std::fs::read_to_string(&err).unwrap()
        );
        assert!(before.elapsed() >= Duration::from_millis(50));
        t.delete(ns(), &delete("sleep")).await.unwrap();

        // proc_exit's status; a trap: 134 and the reason on stderr.
        for (id, rest, status) in [
            ("exit7", "(call $proc_exit (i32.const 7))", 7),
            ("trap", "unreachable", 134),
        ] {
            let (b, out, err) = bundle(&dir, id, &program("", rest));
            t.create(ns(), &create(id, &b, &out, &err)).await.unwrap();
            t.start(ns(), &start(id)).await.unwrap();
            assert_eq!(
                t.wait(ns(), &wait(id)).await.unwrap().exit_status,
                status,
                "{id}"
            );
            if id == "trap" {
                let e = std::fs::read_to_string(&err).unwrap();
                assert!(e.contains("wasm trap") && e.contains("unreachable"), "{e}");
            }
            t.delete(ns(), &delete(id)).await.unwrap();
        }

        // A spinning module ends promptly on SIGTERM (143); exec, pause and
        // metrics are refused meanwhile, as is a delete.
        let spin = program("", SPIN);
        let (b, out, err) = bundle(&dir, "spin", &spin);
        t.create(ns(), &create("spin", &b, &out, &err))
            .await
            .unwrap();
        t.start(ns(), &start("spin")).await.unwrap();
        let e = code(
            t.exec(
                ns(),
                &ExecProcessRequest {
                    id: "spin".into(),
                    exec_id: "e1".into(),
                    spec: containerd_shim_protos::protobuf::MessageField::some(
                        containerd_shim_protos::protobuf::well_known_types::any::Any {
                            value: br#"{"args":["/app.wasm"],"cwd":"/","user":{"uid":0,"gid":0}}"#
                                .to_vec(),
                            ..Default::default()
                        },
                    ),
                    ..Default::default()
                },
            )
            .await,
        );
        assert_eq!(e, Code::UNIMPLEMENTED);
        let p = code(
            t.pause(
                ns(),
                &PauseRequest {
                    id: "spin".into(),
                    ..Default::default()
                },
            )
            .await,
        );
        assert_eq!(p, Code::UNIMPLEMENTED);
        assert_eq!(
            code(t.delete(ns(), &delete("spin")).await),
            Code::FAILED_PRECONDITION
        );
        let before = Instant::now();
        t.kill(ns(), &kill("spin", 15)).await.unwrap();
        assert_eq!(t.wait(ns(), &wait("spin")).await.unwrap().exit_status, 143);
        assert!(
            before.elapsed() < Duration::from_secs(2),
            "{:?}",
            before.elapsed()
        );
        t.delete(ns(), &delete("spin")).await.unwrap();

        // Killed before its start: it ends at once and cannot start.
        t.create(ns(), &create("early", &b, &out, &err))
            .await
            .unwrap();
        t.kill(ns(), &kill("early", 9)).await.unwrap();
        assert_eq!(t.wait(ns(), &wait("early")).await.unwrap().exit_status, 137);
        assert_eq!(
            code(t.start(ns(), &start("early")).await),
            Code::FAILED_PRECONDITION
        );
        t.delete(ns(), &delete("early")).await.unwrap();

        // Bad modules: refused at create, nothing kept.
        let good = program("x", "");
        for (id, module, want) in [
            ("trunc", good[..good.len() - 4].to_vec(), "invalid module"),
            (
                "nostart",
                wat::parse_str(r#"(module (func (export "main")))"#).unwrap(),
                "no `_start`",
            ),
            ("text", b"#!/bin/sh\n".to_vec(), "not a WebAssembly module"),
        ] {
            let (mut b, out, err) = bundle(&dir, id, &module);
            if id == "text" {
                // Chosen by annotation: the magic bytes say otherwise.
                let mut c: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(b.join("config.json")).unwrap())
                        .unwrap();
                c["annotations"] = serde_json::json!({"io.ironcell.sandbox": "wasm"});
                std::fs::write(b.join("config.json"), c.to_string()).unwrap();
                b = b.canonicalize().unwrap();
            }
            match t.create(ns(), &create(id, &b, &out, &err)).await {
                Err(ttrpc::Error::RpcStatus(s)) => {
                    assert_eq!(s.code(), Code::INVALID_ARGUMENT, "{id}");
                    assert!(s.message.contains(want), "{id}: {}", s.message);
                }
                other => panic!("{id}: {other:?}"),
            }
            let st = StateRequest {
                id: id.into(),
                ..Default::default()
            };
            assert_eq!(code(t.state(ns(), &st).await), Code::NOT_FOUND);
        }
        assert!(!d.root.path().join("tasks/default/trunc").exists());

        // Ten modules that never end (more than the daemon's blocking pool
        // has threads) do not hold up another task.
        let spinners: Vec<String> = (0..10).map(|i| format!("busy{i}")).collect();
        for id in &spinners {
            t.create(ns(), &create(id, &b, &out, &err)).await.unwrap();
            t.start(ns(), &start(id)).await.unwrap();
        }
        let (hb, hout, _) = bundle(&dir, "hello2", &program("still served\n", ""));
        t.create(ns(), &create("hello2", &hb, &hout, &hout))
            .await
            .unwrap();
        t.start(ns(), &start("hello2")).await.unwrap();
        assert_eq!(t.wait(ns(), &wait("hello2")).await.unwrap().exit_status, 0);
        assert_eq!(std::fs::read_to_string(&hout).unwrap(), "still served\n");
        t.delete(ns(), &delete("hello2")).await.unwrap();
        for id in &spinners {
            t.kill(ns(), &kill(id, 9)).await.unwrap();
            assert_eq!(t.wait(ns(), &wait(id)).await.unwrap().exit_status, 137);
            t.delete(ns(), &delete(id)).await.unwrap();
        }

        // A module running when the daemon dies: the next daemon reports it
        // ended with 137.
        t.create(ns(), &create("orphan", &b, &out, &err))
            .await
            .unwrap();
        t.start(ns(), &start("orphan")).await.unwrap();
    });
    d.restart();
    rt.block_on(async {
        let t = TaskClient::new(Client::connect(&address).await.unwrap());
        let w = t
            .wait(
                ns(),
                &WaitRequest {
                    id: "orphan".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(w.exit_status, 137);
        t.delete(
            ns(),
            &DeleteRequest {
                id: "orphan".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    });
    assert!(d.alive());
}
