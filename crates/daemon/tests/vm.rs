//! Containers in VMs (the vm sandbox) through ironcelld and real
//! containerd 1.6 (`ctr run --annotation io.ironcell.sandbox=vm`), with
//! QEMU and TCG: the guest's side, the daemon's and containerd's restarts,
//! and the VM's faults.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ironcell_testutil::vm::{
    assert_no_vm_left, config, guest, pvm_test_guest, qemu_config, qemu_guest, Backend,
};
use ironcell_testutil::*;

mod with_containerd;
use with_containerd::*;

/// What `ctr run` adds to run a container in a VM.
const VM: [&str; 2] = ["--annotation", "io.ironcell.sandbox=vm"];

/// containerd and ironcelld, whose VMs boot under QEMU with TCG (the
/// configuration in `IRONCELL_CONFIG` of the daemon's environment, with
/// `extra` in its `[vm]` section), and the directory of that
/// configuration and of the VMs' run directories; None (after a loud
/// notice) without root, QEMU or the guest image.
fn start(test: &str, extra: &str) -> Option<(Setup, tempfile::TempDir)> {
    let g = qemu_guest(test)?;
    let vmdir = tempfile::Builder::new()
        .prefix("icdvm-")
        .tempdir_in("/tmp")
        .unwrap();
    let config = qemu_config(vmdir.path(), &g, extra);
    let s = Setup::start_with_env(vec![("IRONCELL_CONFIG".into(), config.into())])?;
    Some((s, vmdir))
}

/// The vm sandbox through ironcelld: `ctr run` with the
/// `io.ironcell.sandbox=vm` annotation runs the container in a guest of
/// its own (QEMU with TCG, configured by `IRONCELL_CONFIG` in the daemon's
/// environment): the guest's kernel and boot id, the exit status, stdin,
/// a terminal, exec (with a terminal sized as the caller's), containers
/// that join its VM as a CRI pod's do (with stdin; with a sized terminal),
/// metrics, pause and resume. The daemon is SIGKILLed
/// while the VM runs, and the keeper's next daemon serves it: exec works,
/// the exit comes back, and deleting it leaves no VM. An OOM kill in a
/// guest is a TaskOOM.
#[test]
fn ctr_runs_containers_in_vms_through_ironcelld() {
    let Some((s, vmdir)) = start(
        "ctr_runs_containers_in_vms_through_ironcelld",
        "memory_mib = 256",
    ) else {
        return;
    };
    let c = s.c();
    let vm = VM;
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();

    // Foreground, with stdin: the guest's kernel and boot id, the status.
    let args = s.run_args(
        &[&["--rm"][..], &vm].concat(),
        &[
            "vmfg",
            "sh",
            "-c",
            "uname -r; cat /proc/sys/kernel/random/boot_id; read a; echo got:$a; exit 4",
        ],
    );
    let mut fg = ctr_piped(c, &args.iter().map(String::as_str).collect::<Vec<_>>());
    std::io::Write::write_all(fg.stdin.as_mut().unwrap(), b"typed\n").unwrap();
    let out = fg.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}\n{}",
        stderr(&out),
        s.daemon_log()
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("-ironcell"), "{text}");
    assert_ne!(lines[1], host_boot.trim(), "the host's boot id: {text}");
    assert_eq!(lines[2], "got:typed", "{text}");

    // A terminal of the guest.
    let args = s.run_args(
        &[&["--rm", "-t"][..], &vm].concat(),
        &[
            "vmtty",
            "sh",
            "-c",
            "[ -t 0 ] && echo is-a-tty; tty; exit 2",
        ],
    );
    let out = in_terminal(&c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let text = stdout(&out);
    assert!(
        text.contains("is-a-tty") && text.contains("/dev/pts/0"),
        "{text} {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");

    // Detached, with exec, pause and resume.
    let mut events = c.ctr(&["events"]).stdout(Stdio::piped()).spawn().unwrap();
    s.ctr_ok(&s.run_args(
        &[&["-d"][..], &vm].concat(),
        &[
            "vmsvc",
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 0.1; done",
        ],
    ));
    c.wait_task("vmsvc", "RUNNING");
    let exec = |id: &str| {
        c.run(&[
            "task",
            "exec",
            "--exec-id",
            id,
            "vmsvc",
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; exit 3",
        ])
    };
    let out = exec("e1");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let guest_boot = stdout(&out).trim().to_string();
    assert_ne!(guest_boot, host_boot.trim());
    // Containers whose CRI annotations name vmsvc as their pod's sandbox
    // join its VM, with no host process (the daemon carries their stdio):
    // one with stdin, and one with a terminal sized as the caller's (ctr
    // resizes it once it started, so the process waits for a size).
    let member = [
        &vm[..],
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=vmsvc",
        ],
    ]
    .concat();
    let args = s.run_args(
        &[&["--rm"][..], &member].concat(),
        &[
            "vmmember",
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; read a; echo got:$a; exit 4",
        ],
    );
    let mut fg = ctr_piped(c, &args.iter().map(String::as_str).collect::<Vec<_>>());
    std::io::Write::write_all(fg.stdin.as_mut().unwrap(), b"typed\n").unwrap();
    let out = output_within(fg, "vmmember");
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(4), format!("{guest_boot}\ngot:typed\n")),
        "{}\n{}",
        stderr(&out),
        s.daemon_log()
    );
    let args = s.run_args(
        &[&["--rm", "-t"][..], &member].concat(),
        &[
            "vmmembertty",
            "sh",
            "-c",
            "[ -t 0 ] && echo is-a-tty; for i in $(seq 100); do s=$(stty size 2>/dev/null); \
             [ \"$s\" != '0 0' ] && [ -n \"$s\" ] && break; sleep 0.1; done; \
             echo \"size:$s\"; exit 2",
        ],
    );
    let out = in_sized_terminal(
        &c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>()),
        33,
        101,
    );
    let text = stdout(&out);
    assert!(
        text.contains("is-a-tty") && text.contains("size:33 101"),
        "{text} {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    // An exec's stdin, stdout and stderr, each to its own end: the end of
    // the caller's input is the process's.
    let mut piped = exec_with_stdin(
        c,
        "epipe",
        "while read l; do echo out:$l; echo err:$l >&2; done; exit 5",
    );
    std::io::Write::write_all(piped.stdin.as_mut().unwrap(), b"a\nb\n").unwrap();
    let out = output_within(piped, "epipe");
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(5), "out:a\nout:b\n"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("err:a\nerr:b\n"), "{}", stderr(&out));
    // An exec with a terminal of the guest, sized as the caller's: 33 rows,
    // 101 columns (ctr resizes it once the process started, so the
    // process waits for a size).
    let ctr = c.ctr(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "etty",
        "vmsvc",
        "sh",
        "-c",
        "[ -t 0 ] && echo is-a-tty; for i in $(seq 100); do s=$(stty size 2>/dev/null); \
         [ -n \"$s\" ] && break; sleep 0.1; done; echo \"size:$s\"; exit 4",
    ]);
    let out = in_sized_terminal(&ctr, 33, 101);
    let text = stdout(&out);
    assert!(
        text.contains("is-a-tty") && text.contains("size:33 101"),
        "{text} {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(4), "{text}");
    // Statistics from the guest's cgroups, in the host's metrics type.
    let metrics = c.ok(&["task", "metrics", "vmsvc"]);
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (memory, pids) = if host_is_cgroup_v2() {
        (value("memory.usage"), value("pids.current"))
    } else {
        (value("memory.usage_in_bytes"), value("pids.current"))
    };
    assert!(memory.is_some_and(|m| m > 0), "{metrics}");
    assert!(pids.is_some_and(|p| p >= 2), "{metrics}");
    c.ok(&["task", "pause", "vmsvc"]);
    c.wait_task("vmsvc", "PAUSED");
    c.ok(&["task", "resume", "vmsvc"]);
    c.wait_task("vmsvc", "RUNNING");

    // The daemon dies; the VM does not, and the next daemon serves it. An
    // exec running meanwhile (no host process stands for it) keeps its
    // stdin and its output through the keeper.
    let mut running = exec_with_stdin(c, "elong", "touch /tmp/elong; read l; echo got:$l; exit 6");
    let start = std::time::Instant::now();
    loop {
        let probe = c.run(&[
            "task",
            "exec",
            "--exec-id",
            "eprobe",
            "vmsvc",
            "test",
            "-e",
            "/tmp/elong",
        ]);
        if probe.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "elong did not start: {:?} {}",
            probe.status,
            stderr(&probe)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let old = kill_daemon(&s.root);
    wait_for_new_daemon(&s.root, &old, Duration::from_secs(20));
    std::io::Write::write_all(running.stdin.as_mut().unwrap(), b"late\n").unwrap();
    let out = output_within(running, "elong");
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(6), "got:late\n"),
        "{}\n{}",
        stderr(&out),
        s.daemon_log()
    );
    let out = exec("e2");
    assert_eq!(
        (out.status.code(), stdout(&out).trim()),
        (Some(3), guest_boot.as_str()),
        "{}\n{}",
        stderr(&out),
        s.daemon_log()
    );
    c.ok(&["task", "kill", "vmsvc"]);
    c.wait_task("vmsvc", "STOPPED");
    c.ok(&["task", "delete", "vmsvc"]);
    c.ok(&["container", "rm", "vmsvc"]);

    // An OOM kill in the guest, under the container's own limit (which
    // also sizes its VM), reaches containerd as TaskOOM.
    let args = s.run_args(
        &[&["--rm", "--memory-limit", "33554432"][..], &vm].concat(),
        &[
            "vmoom",
            "sh",
            "-c",
            "sleep 1; exec dd if=/dev/zero of=/dev/shm/fill bs=1M count=128",
        ],
    );
    let out = c.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));

    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let ev = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).to_string();
    assert!(
        ev.lines().any(|l| l.contains("/tasks/exit")
            && l.contains("\"container_id\":\"vmsvc\"")
            && l.contains("\"exit_status\":7")),
        "no exit event for vmsvc: {ev}"
    );
    assert!(
        ev.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("\"container_id\":\"vmoom\"")),
        "no OOM event for vmoom: {ev}\n{}",
        s.daemon_log()
    );
    assert_no_vm_left(vmdir.path());
}

/// Whether this host mounts cgroup v2 (containerd's metrics type follows).
fn host_is_cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A container's VM faults, through ironcelld: a guest that stops
/// answering (its QEMU frozen) makes a request fail at the configured
/// deadline while the daemon goes on serving other tasks; a hypervisor
/// killed under a task ends the task (137, an exit event), and its delete
/// leaves no VM.
#[test]
fn vm_faults_through_ironcelld_end_in_deadlines_and_exits() {
    let Some((s, vmdir)) = start(
        "vm_faults_through_ironcelld_end_in_deadlines_and_exits",
        "agent_timeout_secs = 3",
    ) else {
        return;
    };
    let c = s.c();
    let vm = VM;
    let mut events = c.ctr(&["events"]).stdout(Stdio::piped()).spawn().unwrap();
    for id in ["vmfrozen", "vmkilled"] {
        s.ctr_ok(&s.run_args(&[&["-d"][..], &vm].concat(), &[id, "sleep", "1000"]));
        c.wait_task(id, "RUNNING");
    }
    s.ctr_ok(&s.run_args(&["-d"], &["plain", "sleep", "1000"]));
    let qemu_of = |id: &str| {
        processes_with(vmdir.path().join("vmrun").to_str().unwrap())
            .into_iter()
            .find(|p| {
                let exe = std::fs::read_link(format!("/proc/{p}/exe")).unwrap_or_default();
                let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
                exe.to_string_lossy().contains("qemu")
                    && cmd.contains(&vm_run_dir(&s, id).to_string_lossy().to_string())
            })
            .unwrap_or_else(|| panic!("no QEMU of {id}"))
    };
    let signal = |pid: i32, sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);

    // Frozen: the request fails at the deadline; another task is served
    // meanwhile.
    let frozen = qemu_of("vmfrozen");
    signal(frozen, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let paused = {
        let mut cmd = c.ctr(&["task", "pause", "vmfrozen"]);
        std::thread::spawn(move || {
            let start = Instant::now();
            (cmd.output().unwrap(), start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let plain = c.run(&["task", "exec", "--exec-id", "p1", "plain", "echo", "served"]);
    assert_eq!(stdout(&plain).trim(), "served", "{}", stderr(&plain));
    let (out, took) = paused.join().unwrap();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        took < Duration::from_secs(20),
        "the request took {took:?}: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("guest agent"), "{}", stderr(&out));
    signal(frozen, nix::sys::signal::Signal::SIGCONT).unwrap();

    // Killed: the task ends.
    signal(qemu_of("vmkilled"), nix::sys::signal::Signal::SIGKILL).unwrap();
    c.wait_task("vmkilled", "STOPPED");
    for id in ["vmfrozen", "vmkilled", "plain"] {
        let _ = c.run(&["task", "kill", "-s", "KILL", id]);
        c.wait_task(id, "STOPPED");
        c.ok(&["task", "delete", id]);
        c.ok(&["container", "rm", id]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let ev = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).to_string();
    assert!(
        ev.lines().any(|l| l.contains("/tasks/exit")
            && l.contains("\"container_id\":\"vmkilled\"")
            && l.contains("\"exit_status\":137")),
        "no exit event for vmkilled: {ev}"
    );
    assert_no_vm_left(vmdir.path());
}

/// The VM run directory of vm task `id` (from its sandbox state).
fn vm_run_dir(s: &Setup, id: &str) -> std::path::PathBuf {
    let state = std::fs::read_dir(s.root.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|ns| ns.path().join(id).join("vm.json"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no vm.json of {id} under {}", s.root.display()));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    v["run_dir"].as_str().unwrap().into()
}

/// containerd restarted while a container runs in a VM finds the task
/// again through ironcelld: it is still running, exec reaches the same
/// guest, and its end and delete leave no VM.
#[test]
fn containerd_restart_keeps_vm_tasks() {
    let Some((mut s, vmdir)) = start("containerd_restart_keeps_vm_tasks", "") else {
        return;
    };
    s.ctr_ok(&s.run_args(&[&["-d"][..], &VM].concat(), &["vmkeep", "sleep", "1000"]));
    s.c().wait_task("vmkeep", "RUNNING");
    let boot_id = |c: &ironcell_testutil::containerd::Containerd, exec_id: &str| {
        let out = c.run(&[
            "task",
            "exec",
            "--exec-id",
            exec_id,
            "vmkeep",
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let before = boot_id(s.c(), "b1");
    s.c_mut().restart();
    let c = s.c();
    assert_eq!(c.task_status("vmkeep"), "RUNNING", "{}", c.log());
    assert_eq!(boot_id(c, "b2"), before);
    c.ok(&["task", "kill", "-s", "KILL", "vmkeep"]);
    c.wait_task("vmkeep", "STOPPED");
    // The VM ends with its container, before the task's delete.
    let marker = vmdir.path().join("vmrun");
    let left = ironcell_testutil::processes_with(marker.to_str().unwrap());
    assert!(left.is_empty(), "the VM outlived its container: {left:?}");
    c.ok(&["task", "delete", "vmkeep"]);
    c.ok(&["container", "rm", "vmkeep"]);
    assert_no_vm_left(vmdir.path());
}

/// Under ironcell-vmm, which jails itself in a mount namespace of its own,
/// a container's VM is the keeper's too, with no relay: the share's
/// namespace is pinned on a file (crates/sandbox/src/vm/share_ns.rs), and a
/// container that joins the VM as a pod member's does gets its rootfs
/// through it into the VMM's jail. On a PVM host with the pvm-test kernel
/// (minutes: docs/pvm-host.md); on hosts with VT-x or AMD-V the CRI tests
/// (`cri_vm.rs`) run under ironcell-vmm as well.
#[test]
fn ironcell_vmm_vms_have_no_relay_on_pvm() {
    let test = "ironcell_vmm_vms_have_no_relay_on_pvm";
    let Some(g) = guest(test) else { return };
    let Some((pvm, extra)) = pvm_test_guest(test, &g) else {
        return;
    };
    let vmdir = tempfile::Builder::new()
        .prefix("icdvm-")
        .tempdir_in("/tmp")
        .unwrap();
    let config = config(vmdir.path(), &pvm, Backend::IroncellVmm, &extra);
    let Some(s) = Setup::start_with_env(vec![("IRONCELL_CONFIG".into(), config.into())]) else {
        return;
    };
    let c = s.c();
    s.ctr_ok(&s.run_args(&[&["-d"][..], &VM].concat(), &["vmvmm", "sleep", "1000"]));
    c.wait_task("vmvmm", "RUNNING");
    let relays = helper_relays(&s.root, "create");
    assert!(relays.is_empty(), "{relays:#?}");
    let marker = vmdir.path().join("vmrun");
    let vmm: Vec<i32> = processes_with(marker.to_str().unwrap())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("ironcell-vmm"))
        })
        .collect();
    assert_eq!(vmm.len(), 1, "{vmm:?}");
    let keepers = ironcelld_processes(&s.root, true);
    assert!(
        keepers.contains(&parent_of(vmm[0])),
        "the VMM's parent is not the keeper ({keepers:?})"
    );

    // A member's rootfs reaches the guest only if its mount reached the
    // VMM's jail.
    let member = [
        &VM[..],
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=vmvmm",
        ],
    ]
    .concat();
    let args = s.run_args(
        &[&["--rm"][..], &member].concat(),
        &["vmvmmember", "cat", "/etc/hostname"],
    );
    let out = c.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.daemon_log());
    assert!(!stdout(&out).is_empty(), "the member read nothing");

    c.ok(&["task", "kill", "-s", "KILL", "vmvmm"]);
    c.wait_task("vmvmm", "STOPPED");
    let left = processes_with(marker.to_str().unwrap());
    assert!(left.is_empty(), "the VM outlived its container: {left:?}");
    c.ok(&["task", "delete", "vmvmm"]);
    c.ok(&["container", "rm", "vmvmm"]);
    assert_no_vm_left(vmdir.path());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = vmdir.path().to_string_lossy().into_owned();
    assert!(!mounts.contains(&dir), "mounts left: {mounts}");
}

/// `ctr task exec` of `sh -c script` in task vmsvc as `exec_id`, its stdio
/// piped.
fn exec_with_stdin(
    c: &ironcell_testutil::containerd::Containerd,
    exec_id: &str,
    script: &str,
) -> std::process::Child {
    ctr_piped(
        c,
        &[
            "task",
            "exec",
            "--exec-id",
            exec_id,
            "vmsvc",
            "sh",
            "-c",
            script,
        ],
    )
}

/// `ctr ARGS` started with its stdin, stdout and stderr piped.
fn ctr_piped(c: &ironcell_testutil::containerd::Containerd, args: &[&str]) -> std::process::Child {
    c.ctr(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The output of `ctr`, once it ended (within a minute: an exec whose
/// output is never closed would hang the test).
fn output_within(child: std::process::Child, what: &str) -> std::process::Output {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id() as i32;
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{what}: ctr did not end within a minute")
        })
}
