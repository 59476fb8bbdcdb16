//! The wasm sandbox through the `ironcell` command line: a WebAssembly
//! module as a container's process (modules written in WebAssembly text,
//! compiled by the test), chosen by `--sandbox wasm` or by the entrypoint's
//! magic bytes; exit statuses, traps, limits, the lifecycle, and bad modules.

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;
use serde_json::json;

/// WASI preview 1 imports the test modules use.
const IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"#;

/// `print(text)` then `rest`, as `_start`.
fn program(text: &str, rest: &str) -> String {
    format!(
        r#"(module {IMPORTS} (memory (export "memory") 1)
             (data (i32.const 16) "{}")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 16))
               (i32.store (i32.const 4) (i32.const {}))
               (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
               {rest}))"#,
        text.replace('\n', "\\n"),
        text.len()
    )
}

/// A bundle whose rootfs holds only `/app.wasm` (the module `wat`, or raw
/// bytes when `wat` does not parse as text), its process `/app.wasm`.
fn wasm_bundle(
    env: &Env,
    name: &str,
    module: &[u8],
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let b = env.bundle(name, |c| {
        args(c, &["/app.wasm", "one", "two"]);
        c["process"]["terminal"] = json!(false);
        edit(c);
    });
    let rootfs = b.join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    fs::write(rootfs.join("app.wasm"), module).unwrap();
    let path = b.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    config["root"] = json!({"path": "rootfs", "readonly": false});
    fs::write(&path, config.to_string()).unwrap();
    b
}

fn wasm(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

#[test]
fn modules_run_as_containers() {
    if !need_root("modules_run_as_containers") {
        return;
    }
    let env = Env::new();
    // Chosen by the entrypoint's magic bytes: no flag, no annotation.
    let b = wasm_bundle(
        &env,
        "wasm-hello",
        &wasm(&program("hello from wasm\n", "")),
        |_| {},
    );
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "wasm-hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from wasm\n");
    assert_no_leftovers(&env, "wasm-hello", None);

    // proc_exit's status, with --sandbox wasm.
    let b = wasm_bundle(
        &env,
        "wasm-exit",
        &wasm(&program("", "(call $proc_exit (i32.const 7))")),
        |_| {},
    );
    let out = env.run(&[
        "--sandbox",
        "wasm",
        "run",
        "-b",
        b.to_str().unwrap(),
        "wasm-exit",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_no_leftovers(&env, "wasm-exit", None);

    // A trap: 134 and one line saying so.
    let b = wasm_bundle(
        &env,
        "wasm-trap",
        &wasm(&program("", "unreachable")),
        |_| {},
    );
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "wasm-trap"]);
    assert_eq!(out.status.code(), Some(134));
    let err = stderr(&out);
    assert!(
        err.contains("wasm trap") && err.contains("unreachable"),
        "{err}"
    );
    assert_no_leftovers(&env, "wasm-trap", None);

    // The spec's memory limit caps linear memory: growing by 2000 pages
    // (125 MiB) against 64 MiB ends the module with 137.
    let b = wasm_bundle(
        &env,
        "wasm-mem",
        &wasm(&program("", "(drop (memory.grow (i32.const 2000)))")),
        |c| c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}}),
    );
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "wasm-mem"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(stderr(&out).contains("memory limit"), "{}", stderr(&out));
    assert_no_leftovers(&env, "wasm-mem", None);
}

#[test]
fn wasm_lifecycle_and_unsupported_commands() {
    if !need_root("wasm_lifecycle_and_unsupported_commands") {
        return;
    }
    let env = Env::new();
    let id = "wasm-life";
    // Spins until killed.
    let b = wasm_bundle(&env, id, &wasm(&program("", "(loop $l (br $l))")), |_| {});
    let out = env.run(&["create", "-b", b.to_str().unwrap(), id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state = env.run(&["state", id]);
    let v: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(v["status"], "created", "{v}");
    assert!(env.run(&["start", id]).status.success());
    let v: serde_json::Value = serde_json::from_slice(&env.run(&["state", id]).stdout).unwrap();
    assert_eq!(v["status"], "running", "{v}");
    let listed = stdout(&env.run(&["list", "-q"]));
    assert!(listed.lines().any(|l| l == id), "{listed}");
    for (cmd, what) in [
        (vec!["exec", id, "/app.wasm"], "exec"),
        (vec!["pause", id], "pause"),
    ] {
        let out = env.run(&cmd);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{what} is not supported for wasm containers")),
            "{err}"
        );
    }
    assert!(env.run(&["kill", id, "KILL"]).status.success());
    wait_until(|| {
        let v: serde_json::Value =
            serde_json::from_slice(&env.run(&["state", id]).stdout).unwrap_or_default();
        v["status"] == "stopped"
    });
    assert!(env.run(&["delete", id]).status.success());
    assert_no_leftovers(&env, id, None);
}

#[test]
fn bad_modules_are_refused_at_create() {
    if !need_root("bad_modules_are_refused_at_create") {
        return;
    }
    let env = Env::new();
    let good = wasm(&program("x", ""));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wasm-trunc",
            good[..good.len() - 4].to_vec(),
            "invalid module",
        ),
        (
            "wasm-nostart",
            wasm(r#"(module (func (export "main")))"#),
            "no `_start`",
        ),
        (
            "wasm-import",
            wasm(r#"(module (import "env" "nosuch" (func)) (func (export "_start")))"#),
            "nosuch",
        ),
    ];
    for (id, module, want) in cases {
        let b = wasm_bundle(&env, id, &module, |_| {});
        let out = env.run(&["--sandbox", "wasm", "create", "-b", b.to_str().unwrap(), id]);
        assert!(!out.status.success(), "{id}");
        let err = stderr(&out);
        assert!(err.contains(want), "{id}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{id}: one line: {err}");
        assert_no_leftovers(&env, id, None);
    }
    // Not WebAssembly, with --sandbox wasm.
    let b = wasm_bundle(&env, "wasm-text", b"#!/bin/sh\necho hi\n", |_| {});
    let out = env.run(&[
        "--sandbox",
        "wasm",
        "run",
        "-b",
        b.to_str().unwrap(),
        "wasm-text",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a WebAssembly module"),
        "{}",
        stderr(&out)
    );
    assert_no_leftovers(&env, "wasm-text", None);
}
