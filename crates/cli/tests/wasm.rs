//! The wasm sandbox through the `ironcell` command line: a WebAssembly
//! module as a container's process (modules written in WebAssembly text,
//! compiled by the test), run by the `ironcell-wasm` runner; chosen by
//! `--sandbox wasm`, the annotations or the entrypoint's magic bytes; exit
//! statuses, traps, limits, preopens, the lifecycle, and bad modules.

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;
use ironcell_testutil::wasm::{program, SLEEP_50MS, SPIN};
use serde_json::json;

/// `rest` for a program that creates `new-file` in the preopen `fd` and
/// exits with path_open's errno.
fn create_in(fd: u32) -> String {
    format!(
        "(call $proc_exit (call $path_open (i32.const {fd}) (i32.const 0)
           (i32.const 512) (i32.const 8) (i32.const 1)
           (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 8)))"
    )
}

/// A bundle whose rootfs holds only `/app.wasm`, its process
/// `/app.wasm one two`.
fn wasm_bundle(
    env: &Env,
    name: &str,
    module: &[u8],
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let b = env.bundle(name, |c| {
        args(c, &["/app.wasm", "one", "two"]);
        c["process"]["terminal"] = json!(false);
        c["root"] = json!({"path": "rootfs", "readonly": false});
        edit(c);
    });
    let rootfs = b.join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    fs::write(rootfs.join("app.wasm"), module).unwrap();
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
        &program("hello from wasm\n", ""),
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
        &program("", "(call $proc_exit (i32.const 7))"),
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

    // A sleep (poll_oneoff) wakes up.
    let b = wasm_bundle(&env, "wasm-sleep", &program("awake\n", SLEEP_50MS), |_| {});
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "wasm-sleep"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "awake\n");
    assert_no_leftovers(&env, "wasm-sleep", None);

    // A trap: 134 and one line saying so.
    let b = wasm_bundle(&env, "wasm-trap", &program("", "unreachable"), |_| {});
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "wasm-trap"]);
    assert_eq!(out.status.code(), Some(134));
    let err = stderr(&out);
    assert!(
        err.contains("wasm trap") && err.contains("unreachable"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_no_leftovers(&env, "wasm-trap", None);

    // The spec's memory limit caps linear memory: growing by 2000 pages
    // (125 MiB) against 64 MiB ends the module with 137.
    let b = wasm_bundle(
        &env,
        "wasm-mem",
        &program("", "(drop (memory.grow (i32.const 2000)))"),
        |c| c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}}),
    );
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "wasm-mem"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(stderr(&out).contains("memory limit"), "{}", stderr(&out));
    assert_no_leftovers(&env, "wasm-mem", None);

    // The time budget annotation ends a loop with 152.
    let b = wasm_bundle(&env, "wasm-budget", &program("", SPIN), |c| {
        c["annotations"] = json!({"io.ironcell.wasm.time-budget-ms": "100"})
    });
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "wasm-budget"]);
    assert_eq!(out.status.code(), Some(152), "{}", stderr(&out));
    assert!(stderr(&out).contains("time budget"), "{}", stderr(&out));
    assert_no_leftovers(&env, "wasm-budget", None);
}

/// The rootfs is preopened at `/` and bind mounts at their destinations,
/// read-only where the mount is; the module runs as the spec's user.
#[test]
fn rootfs_and_bind_mounts_are_preopened() {
    if !need_root("rootfs_and_bind_mounts_are_preopened") {
        return;
    }
    let env = Env::new();
    let data = env.dir.path().join("data");
    fs::create_dir(&data).unwrap();
    // fd 3 is `/`, fd 4 the first bind mount (proc and tmpfs mounts are not
    // preopened).
    for (id, fd, ro, user) in [
        ("wasm-root", 3, false, 0),
        ("wasm-bind", 4, false, 0),
        ("wasm-bind-ro", 4, true, 0),
        ("wasm-bind-user", 4, false, 4242),
    ] {
        let b = wasm_bundle(&env, id, &program("", &create_in(fd)), |c| {
            let mut opts = vec!["rbind"];
            if ro {
                opts.push("ro");
            }
            c["mounts"] = json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": data, "options": opts},
            ]);
            c["process"]["user"] = json!({"uid": user, "gid": user});
        });
        let out = env.run(&["run", "-b", b.to_str().unwrap(), id]);
        let target = if fd == 3 {
            b.join("rootfs/new-file")
        } else {
            data.join("new-file")
        };
        // Root's directory, not writable by 4242: EACCES (2) from WASI.
        let expect_ok = !ro && user == 0;
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{id}: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert_eq!(target.exists(), expect_ok, "{id}");
        let _ = fs::remove_file(&target);
        assert_no_leftovers(&env, id, None);
    }
}

#[test]
fn wasm_lifecycle_pause_and_unsupported_exec() {
    if !need_root("wasm_lifecycle_pause_and_unsupported_exec") {
        return;
    }
    let env = Env::new();
    let id = "wasm-life";
    // Spins until killed.
    let b = wasm_bundle(&env, id, &program("", SPIN), |_| {});
    let pid_file = env.dir.path().join("wasm.pid");
    env.ok(&[
        "create",
        "-b",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        id,
    ]);
    let v = env.state(id);
    assert_eq!(v["status"], "created", "{v}");
    assert_eq!(v["sandbox"], "wasm", "{v}");
    let pid = v["pid"].as_i64().unwrap();
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    env.ok(&["start", id]);
    assert_eq!(env.status(id), "running");
    // The runner has its seccomp filter (docs/wasm.md) on every thread, and
    // no_new_privs, from create on.
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for t in tasks.flatten() {
        let st = fs::read_to_string(t.path().join("status")).unwrap();
        assert!(
            st.contains("\nSeccomp:\t2\n"),
            "thread {:?}: {st}",
            t.file_name()
        );
        assert!(st.contains("\nNoNewPrivs:\t1\n"), "{st}");
        // ...and is in the container's cgroup in every hierarchy (on v1 it
        // joined them itself, before its threads existed).
        let cg = fs::read_to_string(t.path().join("cgroup")).unwrap();
        let lines: Vec<&str> = cg.lines().filter(|l| !l.contains("name=")).collect();
        let v1: Vec<&&str> = lines.iter().filter(|l| !l.starts_with("0::")).collect();
        let check: Vec<&str> = if v1.is_empty() {
            lines
        } else {
            v1.into_iter().copied().collect()
        };
        assert!(!check.is_empty(), "{cg}");
        for l in check {
            assert!(
                l.ends_with(&format!("/{id}")),
                "thread {:?}: {cg}",
                t.file_name()
            );
        }
    }
    env.fails(&["start", id], "not created");
    let listed = env.ok(&["list", "-q"]);
    assert!(listed.lines().any(|l| l == id), "{listed}");
    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "--format", "json", id])).unwrap();
    assert_eq!(pids, [pid]);
    env.ok(&["pause", id]);
    assert_eq!(env.status(id), "paused");
    env.ok(&["resume", id]);
    assert_eq!(env.status(id), "running");
    env.fails(
        &["exec", id, "/app.wasm"],
        "exec is not supported for wasm containers",
    );
    env.fails(&["delete", id], "stop it first");
    env.ok(&["kill", id, "TERM"]);
    env.wait_status(id, "stopped");
    env.fails(&["kill", id, "KILL"], "not running");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, None);

    // delete --force of a running module.
    let id = "wasm-force";
    let b = wasm_bundle(&env, id, &program("", SPIN), |_| {});
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    assert_eq!(env.status(id), "running");
    env.ok(&["delete", "--force", id]);
    assert_no_leftovers(&env, id, None);
}

/// terminal: true in the foreground: the module's stdio is a pty that the
/// CLI relays (as for a namespace container).
#[test]
fn wasm_terminal() {
    if !need_root("wasm_terminal") {
        return;
    }
    let env = Env::new();
    let id = "wasm-tty";
    let b = wasm_bundle(
        &env,
        id,
        &program("on a tty\n", "(call $proc_exit (i32.const 3))"),
        |c| c["process"]["terminal"] = json!(true),
    );
    let out = in_terminal(&env.cmd(&["run", "-b", b.to_str().unwrap(), id]));
    assert!(stdout(&out).contains("on a tty"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_no_leftovers(&env, id, None);
    // Detached without a console socket: refused, nothing left.
    env.fails(&["create", "-b", b.to_str().unwrap(), id], "console");
    assert_no_leftovers(&env, id, None);
}

#[test]
fn bad_modules_are_refused_at_create() {
    if !need_root("bad_modules_are_refused_at_create") {
        return;
    }
    let env = Env::new();
    let good = program("x", "");
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
    // A bind mount whose source is missing is skipped as a file would be;
    // a missing module is named.
    let b = wasm_bundle(&env, "wasm-nomod", &good, |c| {
        args(c, &["/missing.wasm"]);
    });
    env.fails(
        &[
            "--sandbox",
            "wasm",
            "create",
            "-b",
            b.to_str().unwrap(),
            "wasm-nomod",
        ],
        "module /missing.wasm in the rootfs",
    );
    assert_no_leftovers(&env, "wasm-nomod", None);
}

/// Builds `tests/wasm/NAME.c` for wasm32-wasi with Debian's clang and
/// wasi-libc (installed by scripts/setup.sh).
fn build_c(name: &str, out: &std::path::Path) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/wasm/{name}.c"));
    let st = std::process::Command::new("clang-14")
        .args(["--target=wasm32-wasi", "-O2", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .expect("clang-14 is missing: run `make setup` (scripts/setup.sh)");
    assert!(st.success(), "clang-14 {}", src.display());
}

/// A C program on wasi-libc: arguments, environment, a file of the rootfs,
/// a file written through a bind mount, its exit status.
#[test]
fn a_c_program_on_wasi_libc() {
    if !need_root("a_c_program_on_wasi_libc") {
        return;
    }
    let env = Env::new();
    let id = "wasm-libc";
    let module = env.dir.path().join("libc.wasm");
    build_c("libc", &module);
    let data = env.dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let b = wasm_bundle(&env, id, &fs::read(&module).unwrap(), |c| {
        args(c, &["/app.wasm", "one", "two words"]);
        c["process"]["env"] = json!(["GREETING=hi there"]);
        c["mounts"] = json!([
            {"destination": "/data", "type": "bind", "source": data, "options": ["rbind"]},
        ]);
    });
    fs::create_dir_all(b.join("rootfs/etc")).unwrap();
    fs::write(b.join("rootfs/etc/motd"), "from the rootfs\n").unwrap();
    let out = env.run(&["run", "-b", b.to_str().unwrap(), id]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "arg one\narg two words\nenv hi there\nmotd from the rootfs\n"
    );
    assert_eq!(
        fs::read_to_string(data.join("out")).unwrap(),
        "written by wasm\n"
    );
    assert_no_leftovers(&env, id, None);
}
