//! Real containerd 1.6 (Debian 12's) driving ironcelld through the
//! `io.containerd.ironcell.v2` runtime: `ctr run` in the foreground and
//! detached, exec, ps, pause/resume, metrics, kill, a terminal, stdin, two
//! namespaces with the same task id, and one daemon for all of it.
//! Containers in VMs through the same daemon are in `vm.rs`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ironcell_testutil::*;

mod with_containerd;
use with_containerd::*;

#[test]
fn ctr_through_ironcelld() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();

    // Foreground: output and exit status come back through the daemon.
    let out = s.ctr_ok(&s.run_args(&["--rm"], &["fg", "sh", "-c", "echo hello via ironcelld"]));
    assert_eq!(out.trim(), "hello via ironcelld", "{}", s.daemon_log());
    let a = s.run_args(&["--rm"], &["exit3", "sh", "-c", "exit 3"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(c.run(&a).status.code(), Some(3));

    // Detached task with exec, ps, pause/resume, metrics and kill.
    let marker = "5555551";
    s.ctr_ok(&s.run_args(
        &["-d"],
        &[
            "svc",
            "sh",
            "-c",
            &format!("trap 'exit 7' TERM; : {marker}; while true; do sleep 0.1; done"),
        ],
    ));
    c.wait_task("svc", "RUNNING");
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
    assert_eq!(stdout(&out).trim(), "exec-ok", "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(4));
    // A second exec with the same id is fine once the first is gone; an exec
    // in a task of another id is not found.
    let out = c.run(&["task", "exec", "--exec-id", "e1", "nosuch", "true"]);
    assert!(!out.status.success());
    let ps = c.ok(&["task", "ps", "svc"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    c.ok(&["task", "pause", "svc"]);
    c.wait_task("svc", "PAUSED");
    c.ok(&["task", "resume", "svc"]);
    c.wait_task("svc", "RUNNING");
    let metrics = c.ok(&["task", "metrics", "svc"]);
    assert!(metrics.contains("memory"), "{metrics}");

    // The same id in another namespace is another task.
    c.import("other");
    let ns2 = ["-n", "other"];
    let mut a = ns2.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    a.extend(s.run_args(&["-d"], &["svc", "sh", "-c", "sleep 1000"]));
    s.ctr_ok(&a);
    let ls = c.ok(&["-n", "other", "task", "ls"]);
    assert!(ls.contains("RUNNING"), "{ls}");

    c.ok(&["task", "kill", "svc"]); // SIGTERM: the trap exits 7
    c.wait_task("svc", "STOPPED");
    let out = c.run(&["task", "delete", "svc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.ok(&["container", "rm", "svc"]);
    assert!(processes_with(marker).is_empty());
    // The other namespace's task is untouched.
    let ls = c.ok(&["-n", "other", "task", "ls"]);
    assert!(ls.contains("RUNNING"), "{ls}");
    c.ok(&["-n", "other", "task", "kill", "-s", "SIGKILL", "svc"]);
    let start = Instant::now();
    while !c.ok(&["-n", "other", "task", "ls"]).contains("STOPPED") {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ok(&["-n", "other", "task", "delete", "svc"]);
    c.ok(&["-n", "other", "container", "rm", "svc"]);

    // The keeper holds copies of a terminal's and a stdin relay's fds
    // while their task lives (for a daemon restart), and drops them after.
    let keeper_fds = || {
        let k = s.keepers();
        assert_eq!(k.len(), 1);
        std::fs::read_dir(format!("/proc/{}/fd", k[0]))
            .unwrap()
            .count()
    };
    let fds_before = keeper_fds();

    // A terminal (-t), given to ctr by `script`.
    let args = s.run_args(
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

    // stdin reaches the task, and its end is the task's EOF.
    let args = s.run_args(
        &["--rm"],
        &[
            "stdin",
            "sh",
            "-c",
            "read x; echo got:$x; cat; echo after-eof",
        ],
    );
    let mut child = c
        .ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"typed-line\nmore\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "got:typed-line\nmore\nafter-eof\n");
    let start = Instant::now();
    while keeper_fds() > fds_before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the keeper still holds {} fds, {fds_before} before the tty and stdin tasks",
            keeper_fds()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // One daemon and its keeper served every task; no shim process stayed.
    assert_eq!(s.daemons().len(), 1, "{}", s.daemon_log());
    assert_eq!(s.keepers().len(), 1);
    let shims: Vec<i32> = processes_with("containerd-shim-ironcell-v2")
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/environ"))
                .is_ok_and(|e| e.contains(&*s.root.to_string_lossy()))
        })
        .collect();
    assert!(shims.is_empty(), "shim processes left: {shims:?}");

    // Nothing of any task is left in the daemon's state.
    for dir in [
        "tasks/default",
        "tasks/other",
        "containers/default",
        "containers/other",
    ] {
        let left: Vec<_> = std::fs::read_dir(s.root.join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir} left: {left:?}");
    }
}

#[test]
fn bad_requests_are_errors() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    // Unknown task.
    let out = c.run(&["task", "kill", "nosuch"]);
    assert!(!out.status.success());
    // A bundle whose process cannot run: a clear error, nothing left.
    let args = s.run_args(&["--rm"], &["bad", "/no/such/binary"]);
    let out = c.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/no/such/binary") || stderr(&out).contains("No such file"),
        "{}",
        stderr(&out)
    );
    let _ = c.run(&["container", "rm", "bad"]);
    let left: Vec<_> = std::fs::read_dir(s.root.join("tasks/default"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "task state left: {left:?}");
    // The daemon is still up and serves the next task.
    let out = s.ctr_ok(&s.run_args(&["--rm"], &["after", "echo", "still-serving"]));
    assert_eq!(out.trim(), "still-serving");
}

/// (Task ids differ from the other tests': ctr derives the cgroup path from
/// the namespace and id, and the tests run at the same time.)
///
/// ironcelld killed with SIGKILL mid-workload and started again: a
/// foreground `ctr run` keeps its stdin (even what is typed while no daemon
/// runs), its output and its exit status, a task
/// that exited while no daemon ran is reported with its status, a detached
/// task can still be exec'd into, killed and deleted, and the events reach
/// containerd.
#[test]
fn daemon_restart_mid_workload() {
    use std::io::{BufRead, BufReader, Write};
    let Some((s, mut first)) = Setup::start_by_hand() else {
        return;
    };
    let c = s.c();
    let mut events = c.ctr(&["events"]).stdout(Stdio::piped()).spawn().unwrap();
    s.ctr_ok(&s.run_args(
        &["-d"],
        &[
            "rsvc",
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 0.1; done",
        ],
    ));
    s.ctr_ok(&s.run_args(&["-d"], &["rquick", "sh", "-c", "sleep 1; exit 9"]));
    let args = s.run_args(
        &["--rm"],
        &[
            "rfg",
            "sh",
            "-c",
            "echo before; read a; echo got:$a; read b; echo got:$b; cat; echo after; exit 5",
        ],
    );
    let mut fg = c
        .ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = fg.stdin.take().unwrap();
    let mut out = BufReader::new(fg.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");
    input.write_all(b"one\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got:one\n");

    // Kill the daemon; the keeper stays.
    let old = kill_daemon(&s.root);
    assert_eq!(old.len(), 1);
    let _ = first.wait();
    // While no daemon runs: `rquick` exits, and a line is typed.
    input.write_all(b"two\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut daemon = start_daemon(Path::new(env!("CARGO_BIN_EXE_ironcelld")), &s.root);

    // The foreground run carries on: the line typed while the daemon was
    // down arrives, stdin's end is the task's EOF, and its status comes back.
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got:two\n", "{}\n{}", s.daemon_log(), c.log());
    drop(input);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "after\n", "{}", s.daemon_log());
    assert_eq!(fg.wait().unwrap().code(), Some(5));

    c.wait_task("rquick", "STOPPED");
    c.ok(&["task", "delete", "rquick"]);
    c.ok(&["container", "rm", "rquick"]);

    let out = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "rsvc",
        "sh",
        "-c",
        "echo still-here",
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "still-here",
        "{} {}",
        stderr(&out),
        s.daemon_log()
    );
    c.ok(&["task", "kill", "rsvc"]);
    c.wait_task("rsvc", "STOPPED");
    c.ok(&["task", "delete", "rsvc"]);
    c.ok(&["container", "rm", "rsvc"]);

    // containerd got the exits, with their statuses, from the new daemon.
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let ev = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).to_string();
    for (id, status) in [("rquick", 9), ("rsvc", 7), ("rfg", 5)] {
        assert!(
            ev.lines().any(|l| l.contains("/tasks/exit")
                && l.contains(&format!("\"container_id\":\"{id}\""))
                && l.contains(&format!("\"exit_status\":{status}"))),
            "no exit event for {id}: {ev}"
        );
    }
    assert_eq!(s.daemons().len(), 1);
    assert_ne!(s.daemons(), old);
    stop_daemon(&s);
    let _ = daemon.wait();
}

/// An OOM kill in a task's memory cgroup reaches containerd as TaskOOM.
#[test]
fn oom_kill_is_reported() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    let mut events = c.ctr(&["events"]).stdout(Stdio::piped()).spawn().unwrap();
    // Filling tmpfs (charged to the container) past the limit gets dd
    // OOM-killed.
    let args = s.run_args(
        &["--rm", "--memory-limit", "16777216"],
        &[
            "oomt",
            "sh",
            "-c",
            "exec dd if=/dev/zero of=/dev/shm/fill bs=1M count=48",
        ],
    );
    let out = c.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let ev = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).to_string();
    assert!(
        ev.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("\"container_id\":\"oomt\"")),
        "no OOM event: {ev}\n{}",
        s.daemon_log()
    );
}

/// A container in another's PID namespace (`ctr run --with-ns`, as a pod's
/// containers share the pod's): when its init is killed, its other
/// processes, which the kernel leaves running in that namespace, are
/// killed before its exit is told, as containerd's shim does for runc.
#[test]
fn a_containers_rest_ends_with_its_init_in_a_shared_pid_namespace() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    s.ctr_ok(&s.run_args(&["-d"], &["pidholder", "sleep", "2001"]));
    c.wait_task("pidholder", "RUNNING");
    let tasks = c.ok(&["task", "ls"]);
    let holder = tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("pidholder")).then(|| f.next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no pid for pidholder: {tasks}"));
    let ns = format!("pid:/proc/{holder}/ns/pid");
    s.ctr_ok(&s.run_args(
        &["-d", "--with-ns", &ns],
        &["pidmember", "sh", "-c", "sleep 2002 & wait"],
    ));
    c.wait_task("pidmember", "RUNNING");
    let start = Instant::now();
    while processes_with("sleep 2002").len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the member's child never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.ok(&["task", "kill", "-s", "KILL", "pidmember"]);
    c.wait_task("pidmember", "STOPPED");
    let left = processes_with("sleep 2002");
    assert!(left.is_empty(), "the member's child outlived it: {left:?}");
    c.ok(&["task", "delete", "pidmember"]);
    c.ok(&["container", "rm", "pidmember"]);
    c.ok(&["task", "kill", "-s", "KILL", "pidholder"]);
    c.wait_task("pidholder", "STOPPED");
    c.ok(&["task", "delete", "pidholder"]);
    c.ok(&["container", "rm", "pidholder"]);
}

/// containerd restarted while a task runs finds it again (the shim wrote
/// the task's address into the bundle) and still gets its exit.
#[test]
fn containerd_restart_keeps_tasks() {
    let Some(mut s) = Setup::start() else { return };
    s.ctr_ok(&s.run_args(
        &["-d"],
        &[
            "ksvc",
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 0.1; done",
        ],
    ));
    s.c().wait_task("ksvc", "RUNNING");
    s.c_mut().restart();
    let c = s.c();
    assert_eq!(c.task_status("ksvc"), "RUNNING", "{}", c.log());
    let out = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "k1",
        "ksvc",
        "echo",
        "after-restart",
    ]);
    assert_eq!(stdout(&out).trim(), "after-restart", "{}", stderr(&out));
    c.ok(&["task", "kill", "ksvc"]);
    c.wait_task("ksvc", "STOPPED");
    c.ok(&["task", "delete", "ksvc"]);
    c.ok(&["container", "rm", "ksvc"]);
}

/// A task with a terminal across a daemon restart: the keeper holds the pty
/// master, the new daemon relays it again, and what is typed afterwards
/// reaches the process (given to ctr by `script`).
#[test]
fn terminal_survives_a_daemon_restart() {
    use std::io::{Read, Write};
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    let args = s.run_args(
        &["--rm", "-t"],
        &[
            "ttyr",
            "sh",
            "-c",
            "echo ready; read a; echo got:$a; exit 4",
        ],
    );
    let line = std::iter::once("ctr".to_string())
        .chain(
            c.ctr(&[])
                .get_args()
                .map(|a| a.to_string_lossy().into_owned()),
        )
        .chain(args)
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = std::process::Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = script.stdin.take().unwrap();
    let mut out = script.stdout.take().unwrap();
    // A test that goes wrong must fail, not hang: the terminal goes away
    // after 60 s whatever happens.
    let pid = script.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    // Read until the task says it is ready.
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("ready") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "no output: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The shim started the daemon: the keeper starts it again.
    let old = kill_daemon(&s.root);
    wait_for_new_daemon(&s.root, &old, Duration::from_secs(10));
    // Give the new daemon a moment to take the terminal back.
    std::thread::sleep(Duration::from_millis(500));
    input.write_all(b"typed\r").unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert!(rest.contains("got:typed"), "{rest:?}\n{}", s.daemon_log());
    assert_eq!(script.wait().unwrap().code(), Some(4));
}

/// A WASI image through containerd 1.6 and ironcelld: the module runs in
/// the daemon (the task's pid is the daemon's), its output comes back
/// through ctr's FIFOs, and a detached one ends on `ctr task kill`.
#[test]
fn ctr_runs_a_wasm_image() {
    use ironcell_testutil::wasm::{image_archive, program, SPIN};
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    for (repo, module) in [
        ("wasm-hello", program("hello from wasm via ctr\n", "")),
        ("wasm-spin", program("", SPIN)),
    ] {
        let archive = image_archive(c.dir(), repo, "latest", &module);
        c.ok(&["images", "import", archive.to_str().unwrap()]);
    }
    let hello = "docker.io/library/wasm-hello:latest";
    let out = c.ok(&["run", "--rm", "--runtime", RUNTIME, hello, "w1"]);
    assert_eq!(out, "hello from wasm via ctr\n", "{}", s.daemon_log());
    let spin = "docker.io/library/wasm-spin:latest";
    c.ok(&["run", "-d", "--runtime", RUNTIME, spin, "w2"]);
    c.wait_task("w2", "RUNNING");
    let pid: i32 = c
        .ok(&["task", "ls"])
        .lines()
        .find(|l| l.starts_with("w2 "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    assert_eq!(vec![pid], s.daemons(), "the module runs in the daemon");
    c.ok(&["task", "kill", "-s", "SIGTERM", "w2"]);
    c.wait_task("w2", "STOPPED");
    c.ok(&["task", "delete", "w2"]);
    c.ok(&["container", "rm", "w2"]);
    assert!(s.daemons().len() == 1, "{}", s.daemon_log());
}
