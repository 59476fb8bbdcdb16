//! Real containerd 1.6 (Debian's) with its runc shim v2 (containerd-shim-
//! runc-v2) using ironcell as the runc binary (`ctr run --runc-binary`).

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use ironcell_testutil::containerd::{Containerd, Options, IMAGE};

/// ironcell's state root for containerd's default namespace, under the
/// runc root `ctr run --runc-root` names.
fn runc_root(c: &Containerd) -> PathBuf {
    c.dir().join("runc-root")
}

fn ironcell_root(c: &Containerd) -> PathBuf {
    runc_root(c).join("default")
}

/// `ctr run` with ironcell as the runc binary.
fn run_args<'a>(c: &'a Containerd, extra: &[&'a str], rest: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["run".into(), "--runc-binary".into()];
    v.push(ironcell().to_str().unwrap().into());
    v.push("--runc-root".into());
    v.push(runc_root(c).to_str().unwrap().into());
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push(IMAGE.into());
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn ctr_ok(c: &Containerd, args: &[String]) -> String {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ok(&a)
}

#[test]
fn containerd_runc_shim_drives_ironcell() {
    let Some(c) = Containerd::start(Options::default()) else {
        return;
    };

    // Foreground run: output and exit status come back through the shim.
    let out = ctr_ok(
        &c,
        &run_args(
            &c,
            &["--rm"],
            &["fg", "sh", "-c", "echo hello via containerd"],
        ),
    );
    assert_eq!(out.trim(), "hello via containerd");
    let a = run_args(&c, &["--rm"], &["exit3", "sh", "-c", "exit 3"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(c.run(&a).status.code(), Some(3));

    // Detached task: ironcell holds its state; exec, ps, pause/resume,
    // metrics and kill go through the shim to ironcell.
    let marker = "4444441";
    ctr_ok(
        &c,
        &run_args(
            &c,
            &["-d"],
            &[
                "svc",
                "sh",
                "-c",
                &format!("trap 'exit 7' TERM; : {marker}; while true; do sleep 0.1; done"),
            ],
        ),
    );
    c.wait_task("svc", "RUNNING");
    let st: serde_json::Value = serde_json::from_slice(
        &Command::new(ironcell())
            .arg("--root")
            .arg(ironcell_root(&c))
            .args(["state", "svc"])
            .output()
            .unwrap()
            .stdout,
    )
    .expect("ironcell has the task's state");
    assert_eq!(st["status"], "running");

    let out = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "echo exec-ok; exit 4",
    ]);
    assert_eq!(stdout(&out).trim(), "exec-ok");
    assert_eq!(out.status.code(), Some(4));
    let ps = c.ok(&["task", "ps", "svc"]);
    assert!(ps.lines().count() >= 2, "{ps}");

    c.ok(&["task", "pause", "svc"]);
    c.wait_task("svc", "PAUSED");
    c.ok(&["task", "resume", "svc"]);
    c.wait_task("svc", "RUNNING");
    let metrics = c.ok(&["task", "metrics", "svc"]);
    assert!(
        metrics.contains("memory") || metrics.contains("METRIC"),
        "{metrics}"
    );

    c.ok(&["task", "kill", "svc"]); // SIGTERM
    c.wait_task("svc", "STOPPED");
    let del = c.ok(&["task", "delete", "svc"]);
    assert!(del.contains('7') || del.is_empty(), "{del}");
    c.ok(&["container", "rm", "svc"]);
    assert!(processes_with(marker).is_empty());

    // A terminal (-t), given to ctr by `script`.
    let args = run_args(
        &c,
        &["--rm", "-t"],
        &["tty", "sh", "-c", "[ -t 0 ] && echo ctr-is-a-tty; tty"],
    );
    let out = in_terminal(&c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let text = stdout(&out);
    assert!(
        text.contains("ctr-is-a-tty") && text.contains("/dev/pts/"),
        "{text} {}",
        stderr(&out)
    );

    // stdin reaches the task.
    let args = run_args(&c, &["--rm"], &["stdin", "sh", "-c", "read x; echo got:$x"]);
    let mut child = c
        .ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"typed-line\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).contains("got:typed-line"), "{}", stdout(&out));

    // Nothing of any task is left in ironcell's state root.
    let left: Vec<_> = fs::read_dir(ironcell_root(&c))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "ironcell state left: {left:?}");
}

/// The vm sandbox through containerd's runc shim: the runc binary is a
/// wrapper running ironcell with `--sandbox vm` and a configuration that
/// boots VMs under QEMU with TCG (the shim passes the binary no arguments
/// of its own).
#[test]
fn containerd_runc_shim_runs_containers_in_vms() {
    use ironcell_testutil::vm::{assert_no_vm_left, qemu_config, qemu_guest, vm_runtime_wrapper};
    let Some(g) = qemu_guest("containerd_runc_shim_runs_containers_in_vms") else {
        return;
    };
    let Some(c) = Containerd::start(Options::default()) else {
        return;
    };
    let config = qemu_config(c.dir(), &g, "");
    let wrapper = vm_runtime_wrapper(c.dir(), &ironcell(), &config);
    let args = |extra: &[&str], rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into(), "--runc-binary".into()];
        v.push(wrapper.to_str().unwrap().into());
        v.push("--runc-root".into());
        v.push(runc_root(&c).to_str().unwrap().into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(IMAGE.into());
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();

    let out = ctr_ok(&c, &args(&["--rm"], &["vmfg", "uname", "-r"]));
    assert!(
        out.trim().ends_with("-ironcell") && out.trim() != host_release,
        "{out}"
    );
    let a = args(&["--rm"], &["vmexit", "sh", "-c", "exit 3"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(c.run(&a).status.code(), Some(3));

    ctr_ok(&c, &args(&["-d"], &["vmsvc", "sleep", "1000"]));
    c.wait_task("vmsvc", "RUNNING");
    let out = c.ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "vmsvc",
        "sh",
        "-c",
        "uname -r",
    ]);
    assert!(out.trim().ends_with("-ironcell"), "{out}");
    c.ok(&["task", "pause", "vmsvc"]);
    c.wait_task("vmsvc", "PAUSED");
    c.ok(&["task", "resume", "vmsvc"]);
    c.wait_task("vmsvc", "RUNNING");
    c.ok(&["task", "kill", "-s", "KILL", "vmsvc"]);
    c.wait_task("vmsvc", "STOPPED");
    c.ok(&["task", "delete", "vmsvc"]);
    c.ok(&["container", "delete", "vmsvc"]);
    assert!(
        !ironcell_root(&c).join("vmsvc").exists(),
        "state left behind"
    );
    assert_no_vm_left(c.dir());
}
