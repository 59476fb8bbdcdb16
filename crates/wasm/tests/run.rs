//! The runner against modules written in WebAssembly text, compiled by the
//! test (`wat`): WASI stdio, arguments, environment, preopens, exit codes,
//! traps, limits, bad modules and the compiled-code cache.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironcell_wasm::*;

/// WASI preview 1 imports the test modules use.
const IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
"#;

fn module(dir: &Path, name: &str, body: &str) -> PathBuf {
    let text = format!("(module {IMPORTS} (memory (export \"memory\") 1) {body})");
    let bytes = wat::parse_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A module that writes `text` to fd 1 and returns from `_start`.
fn hello(dir: &Path, text: &str) -> PathBuf {
    module(
        dir,
        "hello",
        &format!(
            r#"(data (i32.const 16) "{}")
               (func (export "_start")
                 (i32.store (i32.const 0) (i32.const 16))
                 (i32.store (i32.const 4) (i32.const {}))
                 (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"#,
            text.replace('\n', "\\n"),
            text.len()
        ),
    )
}

fn spec(path: PathBuf) -> Spec {
    Spec {
        module: path,
        args: vec!["prog".into()],
        ..Default::default()
    }
}

fn runtime() -> Runtime {
    Runtime::new(None).unwrap()
}

#[test]
fn stdout_and_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut s = spec(hello(dir.path(), "hello, wasm\n"));
    s.stdout = Some(std::fs::File::create(&out).unwrap());
    assert_eq!(runtime().run(s).unwrap(), Exit::Code(0));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello, wasm\n");
}

#[test]
fn proc_exit_is_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(
        dir.path(),
        "exit7",
        r#"(func (export "_start") (call $proc_exit (i32.const 7)))"#,
    );
    let exit = runtime().run(spec(m)).unwrap();
    assert_eq!((exit.clone(), exit.status()), (Exit::Code(7), 7));
}

#[test]
fn arguments_and_environment_reach_the_module() {
    let dir = tempfile::tempdir().unwrap();
    // Exits with argc * 10 + the number of environment variables.
    let m = module(
        dir.path(),
        "counts",
        r#"(func (export "_start")
             (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
             (drop (call $environ_sizes_get (i32.const 8) (i32.const 12)))
             (call $proc_exit (i32.add (i32.mul (i32.load (i32.const 0)) (i32.const 10))
                                       (i32.load (i32.const 8)))))"#,
    );
    let mut s = spec(m);
    s.args = vec!["prog".into(), "a".into(), "b".into()];
    s.env = vec![("A".into(), "1".into()), ("B".into(), "2".into())];
    assert_eq!(runtime().run(s).unwrap(), Exit::Code(32));
}

/// Creates `new-file` for writing in the first preopen (fd 3); exits with
/// WASI's errno (0 on success).
fn creator(dir: &Path) -> PathBuf {
    module(
        dir,
        "create",
        r#"(data (i32.const 64) "new-file")
           (func (export "_start")
             (call $proc_exit (call $path_open (i32.const 3) (i32.const 0)
               (i32.const 64) (i32.const 8) (i32.const 1)
               (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 32))))"#,
    )
}

#[test]
fn preopens_are_read_only_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let m = creator(dir.path());
    for (read_only, created) in [(true, false), (false, true)] {
        let host = dir.path().join(format!("root-{read_only}"));
        std::fs::create_dir(&host).unwrap();
        let mut s = spec(m.clone());
        s.preopens = vec![Preopen {
            host: host.clone(),
            guest: "/".into(),
            read_only,
        }];
        let exit = runtime().run(s).unwrap();
        assert_eq!(host.join("new-file").exists(), created, "{exit:?}");
        assert_eq!(exit == Exit::Code(0), created, "{exit:?}");
    }
}

#[test]
fn a_trap_is_reported_with_134() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(
        dir.path(),
        "trap",
        r#"(func (export "_start") unreachable)"#,
    );
    let exit = runtime().run(spec(m)).unwrap();
    match &exit {
        Exit::Trap(msg) => assert!(msg.contains("unreachable"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(exit.status(), 134);
}

#[test]
fn the_memory_limit_stops_growth() {
    let dir = tempfile::tempdir().unwrap();
    // Grows by 100 pages (6.4 MiB) against a 1 MiB limit.
    let m = module(
        dir.path(),
        "grow",
        r#"(func (export "_start") (drop (memory.grow (i32.const 100))))"#,
    );
    let mut s = spec(m.clone());
    s.memory_limit = Some(1 << 20);
    let exit = runtime().run(s).unwrap();
    assert!(matches!(exit, Exit::MemoryLimit(_)), "{exit:?}");
    assert_eq!(exit.status(), 137);
    // Without the limit it grows.
    assert_eq!(runtime().run(spec(m)).unwrap(), Exit::Code(0));
}

/// A job's memory limit also caps tables (8 bytes an element).
#[test]
fn a_jobs_memory_limit_caps_tables() {
    let dir = tempfile::tempdir().unwrap();
    // 100000 elements against 64 KiB / 8 = 8192.
    let m = module(
        dir.path(),
        "table",
        r#"(table $t 1 funcref)
           (func (export "_start") (drop (table.grow $t (ref.null func) (i32.const 100000))))"#,
    );
    let job = ironcell_oci::wasm::Job {
        rootfs: dir.path().to_path_buf(),
        module: m.clone(),
        args: vec!["prog".into()],
        env: vec![],
        preopens: vec![],
        memory_limit: Some(64 << 10),
        time_budget_ms: None,
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        no_new_privileges: false,
        cgroup_tasks: vec![],
    };
    let s = Spec::from_job(&job);
    assert_eq!(s.table_limit, Some(8192));
    let exit = runtime().run(s).unwrap();
    assert!(matches!(exit, Exit::MemoryLimit(_)), "{exit:?}");
    assert_eq!(runtime().run(spec(m)).unwrap(), Exit::Code(0));
}

#[test]
fn the_time_budget_ends_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(
        dir.path(),
        "spin",
        r#"(func (export "_start") (loop $l (br $l)))"#,
    );
    let mut s = spec(m);
    s.time_budget = Some(Duration::from_millis(100));
    let start = Instant::now();
    let exit = runtime().run(s).unwrap();
    assert_eq!((exit.clone(), exit.status()), (Exit::TimeBudget, 152));
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_modules_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let err = |path: PathBuf| rt.run(spec(path)).unwrap_err().to_string();

    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
    assert!(err(text).contains("is not a WebAssembly module"));

    let good = std::fs::read(hello(dir.path(), "x")).unwrap();
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &good[..good.len() - 5]).unwrap();
    assert!(err(truncated).starts_with("invalid module"));

    let no_start = module(dir.path(), "nostart", r#"(func (export "main"))"#);
    assert!(err(no_start).contains("no `_start`"));

    let unknown = dir.path().join("unknown.wasm");
    std::fs::write(
        &unknown,
        wat::parse_str(r#"(module (import "env" "nosuch" (func)) (func (export "_start")))"#)
            .unwrap(),
    )
    .unwrap();
    let e = err(unknown);
    assert!(e.contains("nosuch"), "{e}");

    assert!(err(dir.path().join("missing.wasm")).contains("cannot read module"));
}

#[test]
fn compiled_code_is_cached_and_a_bad_cache_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let m = hello(dir.path(), "cached\n");
    let run = || {
        let out = dir.path().join("out");
        let mut s = spec(m.clone());
        s.stdout = Some(std::fs::File::create(&out).unwrap());
        let rt = Runtime::new(Some(cache.clone())).unwrap();
        assert_eq!(rt.run(s).unwrap(), Exit::Code(0));
        std::fs::read_to_string(&out).unwrap()
    };
    assert_eq!(run(), "cached\n");
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let modified = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    // A hit: the file is read, not written again.
    assert_eq!(run(), "cached\n");
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        modified
    );
    // A corrupt file: compiled again and replaced.
    std::fs::write(&files[0], b"garbage").unwrap();
    assert_eq!(run(), "cached\n");
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 100);
}

/// A component (WASI preview 2, `wasi:cli/run`): its `run` returning ok is
/// status 0, an error 1. Written in the component text format; it imports
/// nothing, so it runs with the p2 linker alone.
#[test]
fn components_run_through_wasi_cli_run() {
    let dir = tempfile::tempdir().unwrap();
    for (result, status) in [(0, 0), (1, 1)] {
        let text = format!(
            r#"(component
                 (core module $m (func (export "run") (result i32) (i32.const {result})))
                 (core instance $i (instantiate $m))
                 (func $run (result (result)) (canon lift (core func $i "run")))
                 (instance $inst (export "run" (func $run)))
                 (export "wasi:cli/run@0.2.0" (instance $inst)))"#
        );
        let path = dir.path().join(format!("c{result}.wasm"));
        std::fs::write(&path, wat::parse_str(&text).unwrap()).unwrap();
        let rt = runtime();
        let p = rt.load_file(&path).unwrap();
        assert!(p.is_component());
        rt.check(&p).unwrap();
        assert_eq!(rt.run(spec(path)).unwrap(), Exit::Code(status));
    }
}

/// Spec::kill ends a running module with 128 + the signal.
#[test]
fn a_kill_flag_ends_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(
        dir.path(),
        "spin",
        r#"(func (export "_start") (loop $l (br $l)))"#,
    );
    let rt = std::sync::Arc::new(runtime());
    let kill = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let mut s = spec(m);
    s.kill = Some(kill.clone());
    let rt2 = rt.clone();
    let k = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        kill.store(15, std::sync::atomic::Ordering::Relaxed);
        // Nothing else advances the epoch: without this the loop would
        // spin for ever (no ticker runs for a run without a time budget).
        rt2.interrupt();
    });
    let start = Instant::now();
    let exit = rt.run(s).unwrap();
    k.join().unwrap();
    assert_eq!((exit.clone(), exit.status()), (Exit::Killed(15), 143));
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// A kill whose flag and interrupt both came before the run was prepared
/// (while its module compiled) still ends it: the interrupt moved no
/// deadline of the run's store.
#[test]
fn a_kill_before_the_run_is_prepared_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(
        dir.path(),
        "spin",
        r#"(func (export "_start") (loop $l (br $l)))"#,
    );
    let rt = runtime();
    let kill = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    kill.store(9, std::sync::atomic::Ordering::SeqCst);
    rt.interrupt();
    let mut s = spec(m);
    s.kill = Some(kill);
    let start = Instant::now();
    let exit = rt.run(s).unwrap();
    assert_eq!((exit.clone(), exit.status()), (Exit::Killed(9), 137));
    assert!(start.elapsed() < Duration::from_secs(5));
}
