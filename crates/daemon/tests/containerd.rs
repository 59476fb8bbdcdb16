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

    fn ctr_ok(&self, args: &[String]) -> String {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c().ok(&a)
    }

    /// Pids of ironcelld processes serving this test's root.
    fn daemons(&self) -> Vec<i32> {
        processes_with(&format!("--root {}", self.root.display()))
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "ironcelld")
            })
            .collect()
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
        let _ = std::fs::remove_dir_all(&self.root);
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

    // One daemon served every task; no shim process stayed.
    assert_eq!(s.daemons().len(), 1, "{}", s.daemon_log());
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
