//! Real containerd 1.6 (Debian 12's) driving ironcelld through the
//! `io.containerd.ironcell.v2` runtime: `ctr run` in the foreground and
//! detached, exec, ps, pause/resume, metrics, kill, a terminal, stdin, two
//! namespaces with the same task id, and one daemon for all of it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ironcell_testutil::containerd::{Containerd, Options, IMAGE};
use ironcell_testutil::*;

const RUNTIME: &str = "io.containerd.ironcell.v2";

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ironcelld"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// containerd with ironcell's shim on its PATH and a private daemon root.
struct Setup {
    c: Option<Containerd>,
    root: PathBuf,
}

impl Setup {
    fn start() -> Option<Setup> {
        let root_dir = tempfile::Builder::new()
            .prefix("icd-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let c = Containerd::start(Options {
            path: vec![bin_dir()],
            env: vec![("IRONCELLD_ROOT".into(), OsString::from(&root_dir))],
            ..Default::default()
        })?;
        Some(Setup {
            c: Some(c),
            root: root_dir,
        })
    }

    /// [`Setup::start`] with a daemon started by hand, without
    /// `--supervised` (as under a service manager): a killed one stays
    /// dead until the test starts the next.
    fn start_by_hand() -> Option<(Setup, std::process::Child)> {
        let s = Setup::start()?;
        let d = start_daemon(Path::new(env!("CARGO_BIN_EXE_ironcelld")), &s.root);
        wait_for_new_daemon(&s.root, &[], Duration::from_secs(10));
        Some((s, d))
    }

    fn run_args<'a>(&self, extra: &[&'a str], rest: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into(), "--runtime".into(), RUNTIME.into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(IMAGE.into());
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    fn c(&self) -> &Containerd {
        self.c.as_ref().unwrap()
    }

    fn c_mut(&mut self) -> &mut Containerd {
        self.c.as_mut().unwrap()
    }

    fn ctr_ok(&self, args: &[String]) -> String {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c().ok(&a)
    }

    /// Pids of ironcelld daemons serving this test's root.
    fn daemons(&self) -> Vec<i32> {
        ironcelld_processes(&self.root, false)
    }

    /// Pids of the keeper of this test's root.
    fn keepers(&self) -> Vec<i32> {
        ironcelld_processes(&self.root, true)
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.root.join("ironcelld.log")).unwrap_or_default()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // containerd's cleanup kills and deletes leftover tasks through the
        // daemon; then the daemon stops and its root goes.
        self.c.take();
        stop_daemon(self);
        kill_all(self.keepers(), nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn kill_all(pids: Vec<i32>, sig: nix::sys::signal::Signal) {
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

fn stop_daemon(s: &Setup) {
    for p in s.daemons() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let start = Instant::now();
    while !s.daemons().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

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

/// A daemon the shim started (`--supervised`) is started again by the
/// keeper when killed: a request sent right after the kill is answered by
/// the next daemon. Killed again and again soon after each start, it is
/// given up (the keeper says so in its log), and a request then fails
/// after a bounded wait with an error naming the cause. A daemon stopped
/// on purpose (SIGTERM) is not started again.
#[test]
fn a_killed_daemon_comes_back_by_itself() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    s.ctr_ok(&s.run_args(
        &["-d"],
        &[
            "sup",
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 0.1; done",
        ],
    ));
    let mut kills = 0;
    let failed = loop {
        let old = kill_daemon(&s.root);
        let killed = Instant::now();
        kills += 1;
        let exec_id = format!("e{kills}");
        let out = c.run(&["task", "exec", "--exec-id", &exec_id, "sup", "echo", "back"]);
        let answered = killed.elapsed();
        if !out.status.success() {
            break (out, answered);
        }
        assert_eq!(stdout(&out).trim(), "back", "{}", s.daemon_log());
        assert!(!s.daemons().is_empty() && s.daemons() != old);
        eprintln!(
            "kill {kills}: exec answered {} ms after the kill",
            answered.as_millis()
        );
        assert!(kills <= 10, "the keeper never gave up");
    };
    // Five quick deaths in a row (the first daemon may have lived long
    // enough not to count).
    assert!((5..=6).contains(&kills), "gave up after {kills} kills");
    let (out, answered) = failed;
    assert!(
        stderr(&out).contains("ironcelld is not running"),
        "{}",
        stderr(&out)
    );
    assert!(answered >= Duration::from_secs(10), "{answered:?}");
    eprintln!(
        "after giving up: exec failed {} ms after the kill: {}",
        answered.as_millis(),
        stderr(&out).trim()
    );
    let log = std::fs::read_to_string(s.root.join("keeper.log")).unwrap();
    assert!(log.contains("no longer restarts it"), "{log}");
    assert!(s.daemons().is_empty());

    // Started by hand again, it is supervised again; a SIGTERM is a stop
    // on purpose.
    let bin = Path::new(env!("CARGO_BIN_EXE_ironcelld"));
    let mut d = start_daemon_with(bin, &s.root, &["--supervised".as_ref()]);
    wait_for_new_daemon(&s.root, &[], Duration::from_secs(10));
    let out = c.ok(&["task", "exec", "--exec-id", "last", "sup", "echo", "again"]);
    assert_eq!(out.trim(), "again");
    stop_daemon(&s);
    let _ = d.wait();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(s.daemons().is_empty(), "a stopped daemon was started again");

    let mut d = start_daemon(bin, &s.root);
    wait_for_new_daemon(&s.root, &[], Duration::from_secs(10));
    c.ok(&["task", "kill", "sup"]);
    c.wait_task("sup", "STOPPED");
    c.ok(&["task", "delete", "sup"]);
    c.ok(&["container", "rm", "sup"]);
    stop_daemon(&s);
    let _ = d.wait();
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

/// Fault injection: rounds of concurrent `ctr run -d`, with the daemon
/// killed (SIGKILL) at a random moment of each round, as a crash or an
/// OOM kill would. The keeper starts the daemon again; every task that
/// runs afterwards answers exec; once containerd has deleted everything,
/// nothing is left: no task record, no container state, no cgroup, no
/// rootfs mount, no container process. The seed is printed (set
/// `IRONCELL_FAULT_SEED` to replay a run).
#[test]
fn kills_at_random_points_leave_nothing_behind() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    let seed: u64 = std::env::var("IRONCELL_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("fault injection seed: {seed} (IRONCELL_FAULT_SEED)");
    let mut rng = seed;
    let mut next = move |bound: u64| {
        // xorshift64: reproducible from the seed, no dependency.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let marker = format!("fault-{}", seed % 1_000_000);
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 4;
    let mut ids = Vec::new();
    for round in 0..ROUNDS {
        let runs: Vec<_> = (0..PER_ROUND)
            .map(|i| {
                let id = format!("f{round}{i}");
                ids.push(id.clone());
                let args = s.run_args(
                    &["-d"],
                    &[&id, "sh", "-c", &format!("sleep 3600; : {marker}")],
                );
                c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(next(600)));
        let old = kill_daemon(&s.root);
        let back = wait_for_new_daemon(&s.root, &old, Duration::from_secs(10));
        let results: Vec<_> = runs
            .into_iter()
            .map(|r| r.wait_with_output().unwrap())
            .collect();
        let ok = results.iter().filter(|o| o.status.success()).count();
        for o in results.iter().filter(|o| !o.status.success()) {
            eprintln!("a run failed: {}", stderr(o).trim());
        }
        eprintln!(
            "round {round}: killed, back in {} ms; {ok} of {PER_ROUND} runs succeeded",
            back.as_millis()
        );
        // Outside the crash-loop window before the next kill.
        if round + 1 < ROUNDS {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Every task containerd says runs answers exec.
    let mut running = 0;
    for id in &ids {
        if c.task_status(id) != "RUNNING" {
            continue;
        }
        running += 1;
        let out = c.run(&["task", "exec", "--exec-id", "probe", id, "echo", "alive"]);
        assert_eq!(
            stdout(&out).trim(),
            "alive",
            "{id}: {}\n{}",
            stderr(&out),
            s.daemon_log()
        );
    }
    eprintln!("{running} of {} tasks running after the kills", ids.len());
    // containerd deletes everything it has.
    for id in &ids {
        let _ = c.run(&["task", "kill", "-s", "SIGKILL", id]);
    }
    for id in &ids {
        let d = c.run(&["task", "delete", "-f", id]);
        let r = c.run(&["container", "rm", id]);
        if !r.status.success() {
            eprintln!(
                "{id}: task delete: {} / container rm: {}",
                stderr(&d).trim(),
                stderr(&r).trim()
            );
        }
    }
    assert_eq!(
        c.ok(&["container", "ls", "-q"]).trim(),
        "",
        "{}",
        s.daemon_log()
    );
    // Nothing left.
    let entries = |dir: PathBuf| -> Vec<String> {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten())
                    .flatten()
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        entries(s.root.join("tasks")),
        Vec::<String>::new(),
        "task records left"
    );
    let left = entries(s.root.join("containers"));
    assert!(
        left.is_empty(),
        "container state left: {left:?}\n{}",
        s.daemon_log()
            .lines()
            .filter(|l| left.iter().any(|p| p.ends_with(&format!(
                "/{}",
                l.split("\"id\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("?")
            ))))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let start = Instant::now();
    while !processes_with(&marker).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "container processes left: {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for id in &ids {
        assert!(
            !mounts.contains(&format!("/{id}/rootfs ")),
            "{id}'s rootfs is still mounted"
        );
        let out = std::process::Command::new("find")
            .args([
                "/sys/fs/cgroup",
                "-maxdepth",
                "4",
                "-type",
                "d",
                "-name",
                id,
            ])
            .output()
            .unwrap();
        assert_eq!(stdout(&out).trim(), "", "{id}'s cgroups are left");
    }
}
