//! wasm tasks per second through ironcelld's Task API (bench/README.md), as
//! runwasi's stress test measures its shims: a private ironcelld, one ttrpc
//! connection, and hello-world tasks (a WASI module that writes one line to
//! a file given as its stdout), each Create, Start, Wait and Delete.
//!
//!     cargo run --release -p ironcelld --example wasm_stress -- [--tasks N] [--parallel P]
//!
//! Runs N tasks one after another (each task's four requests before the
//! next task's first); then N tasks as runwasi's stress test runs them by
//! default (`--parallel 1`, serial steps up to Start: one task at a time
//! from Create to Start, its Wait and Delete overlapping the next tasks);
//! then N tasks with P in flight at once, each whole; and prints tasks/s
//! for the three. Every task's output is checked. The
//! sequential client runs on a current-thread runtime
//! (`STRESS_MT_CLIENT=1`: a multi-threaded one, whose own thread switches
//! cost about a fifth of the rate on the CI host); `STRESS_DIRECT=1`
//! connects to the daemon's backend socket, bypassing the keeper, to
//! measure the keeper's share; `STRESS_SINK_RTT=1` also times 200 round
//! trips to the event stand-in, a bare ttrpc server, for comparison. The
//! daemon's root and the bundles are on a tmpfs, as under /run on a host.
//! The daemon's events go to a stand-in for containerd's event service in
//! this process (on a thread of its own), which counts them: every task's
//! TaskCreate, TaskStart, TaskExit and TaskDelete must arrive. Needs root.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::*;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use ironcell_testutil::wasm::program;
use ironcell_testutil::{start_daemon, DaemonGuard};

const HELLO: &str = "hello from wasm\n";

/// containerd's event service, as far as the daemon uses it: counts.
struct EventSink(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl containerd_shim_protos::shim_async::Events for EventSink {
    async fn forward(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: containerd_shim_protos::shim::events::ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Default::default())
    }
}

/// Serves `sink` at `path` on a thread of its own (as containerd would be
/// a process of its own).
fn serve_events(path: &Path, sink: Arc<EventSink>) {
    let addr = format!("unix://{}", path.display());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut server = ttrpc::asynchronous::Server::new()
                .bind(&addr)
                .unwrap()
                .register_service(containerd_shim_protos::shim_async::create_events(sink));
            server.start().await.unwrap();
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap();
}

fn ctx() -> ttrpc::context::Context {
    let mut md = HashMap::new();
    md.insert(
        "containerd-namespace-ttrpc".to_string(),
        vec!["default".to_string()],
    );
    let mut c = ttrpc::context::with_metadata(md);
    c.timeout_nano = Duration::from_secs(60).as_nanos() as i64;
    c
}

/// Bundle `i`: config.json, rootfs/app.wasm (a hard link to one module)
/// and an empty stdout file.
fn bundle(dir: &Path, module: &Path, i: usize) -> PathBuf {
    let b = dir.join(format!("b{i}"));
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::hard_link(module, b.join("rootfs/app.wasm")).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["/app.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
    });
    std::fs::write(b.join("config.json"), config.to_string()).unwrap();
    std::fs::write(b.join("out"), "").unwrap();
    b
}

/// One task, Create to Delete; checks its exit status and output. Adds
/// the time of each request to `phases` (Create, Start, Wait, Delete).
/// With `slot`, the task holds one of its permits from before Create to
/// after Start, as runwasi's stress test does.
async fn task(
    t: &TaskClient,
    b: &Path,
    id: &str,
    phases: &mut [Duration; 4],
    slot: Option<&tokio::sync::Semaphore>,
) -> Result<(), String> {
    let out = b.join("out");
    let permit = match slot {
        Some(s) => Some(s.acquire().await.map_err(|e| e.to_string())?),
        None => None,
    };
    let mut mark = Instant::now();
    let mut lap = |i: usize| {
        phases[i] += mark.elapsed();
        mark = Instant::now();
    };
    t.create(
        ctx(),
        &CreateTaskRequest {
            id: id.into(),
            bundle: b.to_str().unwrap().into(),
            stdout: out.to_str().unwrap().into(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("create {id}: {e}"))?;
    lap(0);
    let r = |id: &str| (id.to_string(), String::new());
    t.start(
        ctx(),
        &StartRequest {
            id: r(id).0,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("start {id}: {e}"))?;
    lap(1);
    drop(permit);
    let w = t
        .wait(
            ctx(),
            &WaitRequest {
                id: r(id).0,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("wait {id}: {e}"))?;
    lap(2);
    t.delete(
        ctx(),
        &DeleteRequest {
            id: r(id).0,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("delete {id}: {e}"))?;
    lap(3);
    if w.exit_status != 0 {
        return Err(format!("{id} exited with {}", w.exit_status));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    if text != HELLO {
        return Err(format!("{id} wrote {text:?}"));
    }
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut n, mut parallel) = (1000usize, 100usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tasks" => n = args.next().and_then(|v| v.parse().ok()).expect("--tasks N"),
            "--parallel" => {
                parallel = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--parallel P")
            }
            _ => panic!("usage: wasm_stress [--tasks N] [--parallel P]"),
        }
    }
    let exe = std::env::current_exe().unwrap();
    let daemon = exe.parent().unwrap().parent().unwrap().join("ironcelld");
    assert!(
        daemon.exists(),
        "build ironcelld first: {}",
        daemon.display()
    );
    let root = tempfile::Builder::new()
        .prefix("ironcell-wasm-stress-")
        .tempdir_in("/tmp")
        .unwrap();
    // The daemon's root and the bundles on a tmpfs, as on a host where they
    // live under /run (ironcelld's default root, containerd's bundles).
    nix::mount::mount(
        Some("tmpfs"),
        root.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .expect("mount a tmpfs for the daemon's root");
    let mut child = start_daemon(&daemon, root.path());
    let _guard = DaemonGuard(root.path().to_path_buf());
    let control = root.path().join("control.sock");
    let start = Instant::now();
    while UnixStream::connect(&control).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "no daemon");
        std::thread::sleep(Duration::from_millis(20));
    }
    let events = root.path().join("containerd.sock.ttrpc");
    let sink = Arc::new(EventSink(Default::default()));
    serve_events(&events, sink.clone());
    let mut c = UnixStream::connect(&control).unwrap();
    let register = serde_json::json!({"register": {
        "namespace": "default", "id": "stress", "containerd": events.to_str().unwrap(),
    }});
    c.write_all(format!("{register}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let mut address = v["address"].as_str().unwrap().to_string();
    if std::env::var_os("STRESS_DIRECT").is_some() {
        address = address.replace("/t/", "/b/");
        println!("direct: {address}");
    }

    let dir = root.path().join("bundles");
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("hello.wasm");
    std::fs::write(&module, program(HELLO, "")).unwrap();
    let bundles: Vec<PathBuf> = (0..n).map(|i| bundle(&dir, &module, i)).collect();

    // The sequential run's client is single-threaded: one request at a
    // time needs no second thread, and a multi-threaded client's own
    // thread switches would be counted against the daemon. The concurrent
    // run's client is multi-threaded, on a connection of its own.
    // Round trips to the event stand-in, timed for comparison: they count
    // as forwards there.
    let probes = if std::env::var_os("STRESS_SINK_RTT").is_some() {
        200
    } else {
        0
    };
    let seq_rt = if std::env::var_os("STRESS_MT_CLIENT").is_some() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .unwrap();
    let (seq, phases) = seq_rt.block_on(async {
        let t = TaskClient::new(Client::connect(&address).await.unwrap());
        let probe = Instant::now();
        for _ in 0..200 {
            let _ = t
                .state(
                    ctx(),
                    &StateRequest {
                        id: "nosuch".into(),
                        ..Default::default()
                    },
                )
                .await;
        }
        println!(
            "round trip of a State request (unknown id): {:.0} µs",
            probe.elapsed().as_secs_f64() * 1e6 / 200.0
        );
        if probes > 0 {
            let ec = containerd_shim_protos::shim_async::EventsClient::new(
                Client::connect(&format!("unix://{}", events.display()))
                    .await
                    .unwrap(),
            );
            let req = containerd_shim_protos::shim::events::ForwardRequest::default();
            let probe = Instant::now();
            for _ in 0..probes {
                ec.forward(ctx(), &req).await.unwrap();
            }
            println!(
                "round trip to a bare ttrpc server (the event stand-in): {:.0} µs",
                probe.elapsed().as_secs_f64() * 1e6 / probes as f64
            );
        }
        // The first task compiles the module (into the daemon's cache).
        let mut phases = [Duration::ZERO; 4];
        task(&t, &bundles[0], "warmup", &mut phases, None)
            .await
            .unwrap();
        phases = [Duration::ZERO; 4];
        for b in &bundles {
            std::fs::write(b.join("out"), "").unwrap();
        }
        let start = Instant::now();
        for (i, b) in bundles.iter().enumerate() {
            task(&t, b, &format!("s{i}"), &mut phases, None)
                .await
                .unwrap();
        }
        (start.elapsed(), phases)
    });
    drop(seq_rt);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `slots` tasks at a time: in whole (Create to Delete), or, as
    // runwasi's stress test does, only from Create to Start.
    let many = |prefix: &'static str, slots: usize, whole: bool| {
        for b in &bundles {
            std::fs::write(b.join("out"), "").unwrap();
        }
        rt.block_on(async {
            let t = Arc::new(TaskClient::new(Client::connect(&address).await.unwrap()));
            let sem = Arc::new(tokio::sync::Semaphore::new(slots));
            let start = Instant::now();
            let mut handles = Vec::new();
            for (i, b) in bundles.iter().enumerate() {
                let (t, b, sem) = (t.clone(), b.clone(), sem.clone());
                handles.push(tokio::spawn(async move {
                    let id = format!("{prefix}{i}");
                    let mut phases = [Duration::ZERO; 4];
                    if whole {
                        let _permit = sem.acquire_owned().await.unwrap();
                        task(&t, &b, &id, &mut phases, None).await
                    } else {
                        task(&t, &b, &id, &mut phases, Some(&sem)).await
                    }
                }));
            }
            for h in handles {
                h.await.unwrap().unwrap();
            }
            start.elapsed()
        })
    };
    let serial_start = many("r", 1, false);
    let par = many("p", parallel, true);
    // Four events a task: the warm-up task and 3n more.
    let expected = 4 * (3 * n + 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let arrived = || {
        sink.0
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(probes)
    };
    while arrived() < expected {
        assert!(
            Instant::now() < deadline,
            "events: {} of {expected} arrived",
            arrived()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("events forwarded to the containerd stand-in: {expected} of {expected}");
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "sequential, mean µs per request: Create {:.0}, Start {:.0}, Wait {:.0}, Delete {:.0}\n",
        us(phases[0]),
        us(phases[1]),
        us(phases[2]),
        us(phases[3])
    );
    println!("| run | tasks | in flight | seconds | tasks/s |");
    println!("|---|---:|---:|---:|---:|");
    for (what, d, p) in [
        ("sequential", seq, "1"),
        ("serial-start", serial_start, "1 from Create to Start"),
        ("concurrent", par, &parallel.to_string()),
    ] {
        println!(
            "| {what} | {n} | {p} | {:.3} | {:.0} |",
            d.as_secs_f64(),
            n as f64 / d.as_secs_f64()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(_guard);
    let _ = nix::mount::umount2(root.path(), nix::mount::MntFlags::MNT_DETACH);
}
