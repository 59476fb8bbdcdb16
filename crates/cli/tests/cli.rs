//! The `ironcell` command line, driven as a container engine drives runc:
//! lifecycle, exec, list/ps, pause/resume, logging, and bad input.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn run_reports_output_and_exit_status() {
    if !need_root("run_reports_output_and_exit_status") {
        return;
    }
    let env = Env::new();
    let b = env.bundle("hello", |_| {});
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("hello from ironcell"), "{text}");
    assert!(text.contains("uid=0(root)"), "{text}");
    assert!(text.lines().any(|l| l == "ironcell"), "hostname: {text}");
    assert_no_leftovers(&env, "hello", None);

    let b = env.bundle("exit7", |c| args(c, &["/bin/sh", "-c", "exit 7"]));
    let out = env.run(&["run", "-b", b.to_str().unwrap(), "exit7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_no_leftovers(&env, "exit7", None);

    // Killed by a signal: 128+N. (The container's pid 1 ignores signals
    // it has no handler for, even SIGKILL from inside, so kill it from the host.)
    let b = env.bundle("killed", |c| args(c, &["/bin/sleep", "4242420"]));
    let mut child = env
        .cmd(&["run", "-b", b.to_str().unwrap(), "killed"])
        .spawn()
        .unwrap();
    wait_until(|| processes_with("4242420").len() == 1);
    let pid = processes_with("4242420")[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(137), "128+SIGKILL");
    assert_no_leftovers(&env, "killed", Some("4242420"));
}

#[test]
fn run_with_relative_bundle_and_no_pivot() {
    if !need_root("run_with_relative_bundle_and_no_pivot") {
        return;
    }
    let env = Env::new();
    let b = env.bundle("nopivot", |c| args(c, &["/bin/sh", "-c", "echo pivot-ok"]));
    let out = env
        .cmd(&["run", "--no-pivot", "nopivot"])
        .current_dir(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "pivot-ok");
    assert_no_leftovers(&env, "nopivot", None);
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    if !need_root("lifecycle_create_start_state_kill_delete") {
        return;
    }
    let env = Env::new();
    let marker = "4242421";
    let id = "life";
    // pid 1 of a pid namespace ignores SIGTERM unless it handles it.
    let script = format!("trap 'exit 0' TERM; : {marker}; while true; do sleep 0.05; done");
    let b = env.bundle(id, |c| args(c, &["/bin/sh", "-c", &script]));
    let pid_file = env.dir.path().join("life.pid");
    env.ok(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        id,
    ]);
    let st = env.state(id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id);
    assert_eq!(st["bundle"], json!(b));
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    // The process exists but has not run the user's program yet.
    let early: Vec<String> = processes_with(marker)
        .iter()
        .map(|p| fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
        .collect();
    assert!(early.is_empty(), "{early:?}");

    env.ok(&["start", id]);
    assert_eq!(env.status(id), "running");
    env.fails(&["start", id], "cannot start container life: it is running");
    env.fails(&["delete", id], "stop it first or use --force");

    let list = env.ok(&["list"]);
    let header = list.lines().next().unwrap();
    assert!(header.starts_with("ID") && header.contains("STATUS") && header.contains("OWNER"));
    assert!(list
        .lines()
        .any(|l| l.starts_with("life ") && l.contains("running")));
    let json: Value = serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(json[0]["id"], id);
    assert_eq!(json[0]["pid"], pid);
    assert_eq!(env.ok(&["list", "-q"]).trim(), id);

    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "--format", "json", id])).unwrap();
    assert!(pids.contains(&pid), "{pids:?}");
    let table = env.ok(&["ps", id]);
    assert!(table.lines().next().unwrap().contains("PID"));
    assert!(table.contains(marker), "{table}");

    env.ok(&["kill", id]); // SIGTERM by default
    env.wait_status(id, "stopped");
    assert_eq!(env.state(id)["pid"], 0);
    env.fails(&["kill", id, "KILL"], "not running");
    env.ok(&["delete", id]);
    env.fails(&["state", id], "container life does not exist");
    assert_no_leftovers(&env, id, Some(marker));
}

#[test]
fn kill_by_name_number_and_all() {
    if !need_root("kill_by_name_number_and_all") {
        return;
    }
    let env = Env::new();
    // A shell that reports USR1 and exits on it.
    let id = "sigs";
    let b = env.bundle(id, |c| {
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                "trap 'echo got-usr1; exit 5' USR1; echo ready; while true; do sleep 0.05; done",
            ],
        )
    });
    let log = env.dir.path().join("sigs.out");
    let status = env
        .cmd(&["create", "-b", b.to_str().unwrap(), id])
        .stdout(fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    env.ok(&["start", id]);
    wait_for_file_text(&log, "ready");
    env.fails(&["kill", id, "NOTASIGNAL"], "unknown signal \"NOTASIGNAL\"");
    env.fails(&["kill", id, "99"], "unknown signal \"99\"");
    env.ok(&["kill", id, "usr1"]);
    env.wait_status(id, "stopped");
    wait_for_file_text(&log, "got-usr1");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, None);

    // --all reaches every process of the container, not just init.
    let id = "all";
    let marker = "4242422";
    let b = env.bundle(id, |c| {
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                &format!("sleep {marker} & sleep {marker} & wait"),
            ],
        )
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    // The shell's command line carries the marker too.
    wait_until(|| processes_with(marker).len() == 3);
    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "-f", "json", id])).unwrap();
    assert_eq!(pids.len(), 3, "{pids:?}");
    env.ok(&["kill", "--all", id, "9"]);
    env.wait_status(id, "stopped");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, Some(marker));
}

/// What containerd's runc shim runs once a container's init has exited:
/// `kill --all ID 9` (its KillAll, and containerd's delete with
/// WithProcessKill) must succeed and kill what is left in the container's
/// cgroup; `kill ID 9` must fail with runc's "container not running", which
/// the shim takes for "already finished". Anything else and containerd
/// retries the delete forever: the exit is never recorded.
#[test]
fn kill_after_exit_as_the_runc_shim_does() {
    if !need_root("kill_after_exit_as_the_runc_shim_does") {
        return;
    }
    let env = Env::new();
    // A container with its own pid namespace: nothing outlives the init.
    let id = "exited";
    let b = env.bundle(id, |c| args(c, &["/bin/sh", "-c", "exit 3"]));
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    env.wait_status(id, "stopped");
    env.ok(&["kill", "--all", id, "9"]);
    env.fails(&["kill", id, "9"], "container not running");
    env.fails(&["kill", id, "KILL"], "container not running");
    env.ok(&["kill", "--all", id, "9"]);
    // ps answers for a stopped container too (runc lists what is left).
    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "--format", "json", id])).unwrap();
    assert!(pids.is_empty(), "{pids:?}");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, None);

    // Without a pid namespace of its own, the init's children outlive it in
    // the container's cgroup: `kill --all` on the stopped container kills
    // them, as runc does.
    let id = "orphans";
    let marker = "4242424";
    let b = env.bundle(id, |c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                &format!("sleep {marker} & echo $! > /dev/null; exit 0"),
            ],
        )
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    env.wait_status(id, "stopped");
    wait_until(|| processes_with(marker).len() == 1);
    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "--format", "json", id])).unwrap();
    assert_eq!(pids.len(), 1, "the orphan is in the cgroup: {pids:?}");
    env.fails(&["kill", id, "9"], "container not running");
    assert_eq!(
        processes_with(marker).len(),
        1,
        "kill without --all signals nothing"
    );
    env.ok(&["kill", "--all", id, "9"]);
    wait_until(|| processes_with(marker).is_empty());
    env.ok(&["kill", "--all", id, "9"]);
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, Some(marker));
}

/// A signal leaves the container's status alone: a created container that
/// gets signal 0 (which only checks that the process exists) is still
/// created, and a paused one that gets SIGTERM is still paused, and can be
/// resumed (it then handles the signal).
#[test]
fn kill_keeps_created_and_paused_status() {
    if !need_root("kill_keeps_created_and_paused_status") {
        return;
    }
    let env = Env::new();
    let id = "sig-status";
    let log = env.dir.path().join("sig-status.out");
    let b = env.bundle(id, |c| {
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
            ],
        )
    });
    let status = env
        .cmd(&["create", "-b", b.to_str().unwrap(), id])
        .stdout(fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    env.ok(&["kill", id, "0"]);
    assert_eq!(env.status(id), "created");
    env.ok(&["start", id]);
    wait_for_file_text(&log, "ready");
    env.ok(&["kill", id, "0"]);
    assert_eq!(env.status(id), "running");
    env.ok(&["pause", id]);
    env.ok(&["kill", id, "TERM"]);
    assert_eq!(env.status(id), "paused");
    env.ok(&["resume", id]);
    env.wait_status(id, "stopped");
    wait_for_file_text(&log, "got-term");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, None);

    // --all thaws a paused container after signalling it, as runc does.
    let id = "sig-all-paused";
    let b = env.bundle(id, |c| args(c, &["/bin/sleep", "1000"]));
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    env.ok(&["pause", id]);
    env.ok(&["kill", "--all", id, "0"]);
    assert_eq!(env.status(id), "running");
    env.ok(&["kill", "--all", id, "KILL"]);
    env.wait_status(id, "stopped");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, None);
}

#[test]
fn delete_force_kills_running_container() {
    if !need_root("delete_force_kills_running_container") {
        return;
    }
    let env = Env::new();
    let id = "forced";
    let marker = "4242423";
    let b = env.bundle(id, |c| args(c, &["/bin/sleep", marker]));
    env.ok(&["run", "--detach", "-b", b.to_str().unwrap(), id]);
    assert_eq!(env.status(id), "running");
    env.ok(&["delete", "--force", id]);
    assert_no_leftovers(&env, id, Some(marker));
    // A created (never started) container can be deleted without --force.
    let id = "created";
    let b = env.bundle(id, |c| args(c, &["/bin/sleep", marker]));
    env.ok(&["create", "-b", b.to_str().unwrap(), id]);
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, Some(marker));
}

#[test]
fn exec_runs_in_the_container() {
    if !need_root("exec_runs_in_the_container") {
        return;
    }
    let env = Env::new();
    let id = "ex";
    let marker = "4242424";
    let b = env.bundle(id, |c| {
        args(c, &["/bin/sleep", marker]);
        c["process"]["env"] = json!(["PATH=/bin", "FROM_SPEC=yes"]);
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);

    // Same pid namespace: the container's init is pid 1.
    let out = env.ok(&[
        "exec",
        id,
        "/bin/sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert!(out.contains(marker), "{out}");
    let out = env.run(&["exec", id, "/bin/sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9));
    let out = env.ok(&[
        "exec",
        "-e",
        "EXTRA=1",
        "--cwd",
        "/tmp",
        "--user",
        "65534:65534",
        id,
        "/bin/sh",
        "-c",
        "echo $FROM_SPEC $EXTRA $(pwd) $(id -u) $(id -g)",
    ]);
    assert_eq!(out.trim(), "yes 1 /tmp 65534 65534");

    // --process with a process.json, as containerd and conmon call it.
    let proc_file = env.dir.path().join("process.json");
    fs::write(
        &proc_file,
        json!({
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", "echo from-process-json $P"],
            "env": ["PATH=/bin", "P=42"],
            "cwd": "/"
        })
        .to_string(),
    )
    .unwrap();
    let out = env.ok(&["exec", "--process", proc_file.to_str().unwrap(), id]);
    assert_eq!(out.trim(), "from-process-json 42");

    // Detached exec with a pid file.
    let pid_file = env.dir.path().join("exec.pid");
    let marker2 = "4242425";
    env.ok(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        id,
        "/bin/sleep",
        marker2,
    ]);
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(processes_with(marker2), vec![pid]);
    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "-f", "json", id])).unwrap();
    assert!(pids.contains(&pid));

    env.fails(&["exec", id], "exec needs a command");
    env.fails(
        &["exec", "--process", "/nonexistent.json", id],
        "no such file",
    );
    env.fails(
        &["exec", "nosuch", "/bin/true"],
        "container nosuch does not exist",
    );
    env.ok(&["kill", id, "KILL"]);
    env.wait_status(id, "stopped");
    env.fails(&["exec", id, "/bin/true"], "it is stopped, not running");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, Some(marker2));
}

#[test]
fn pause_and_resume_freeze_the_container() {
    if !need_root("pause_and_resume_freeze_the_container") {
        return;
    }
    let env = Env::new();
    let id = "frozen";
    let b = env.bundle(id, |c| {
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                "while true; do date +%s%N > /dev/shm/tick; sleep 0.02; done",
            ],
        )
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    let pid = env.state(id)["pid"].as_i64().unwrap();
    env.ok(&["pause", id]);
    assert_eq!(env.status(id), "paused");
    let state = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    // A frozen task sleeps in the freezer (state D or S, never R).
    assert!(!state.contains("State:\tR"), "{state}");
    let tick = |env: &Env| env.ok(&["exec", "--ignore-paused", id, "/bin/cat", "/dev/shm/tick"]);
    let _ = tick; // exec into a frozen cgroup would block: read from the host side instead.
    let shm = format!("/proc/{pid}/root/dev/shm/tick");
    let before = fs::read_to_string(&shm).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        before,
        fs::read_to_string(&shm).unwrap(),
        "ticked while paused"
    );
    env.fails(&["pause", id], "it is paused, not running");
    env.ok(&["resume", id]);
    assert_eq!(env.status(id), "running");
    wait_until(|| fs::read_to_string(&shm).unwrap() != before);
    env.fails(&["resume", id], "it is running, not paused");
    env.ok(&["delete", "-f", id]);
    assert_no_leftovers(&env, id, None);
}

#[test]
fn foreground_run_forwards_signals() {
    if !need_root("foreground_run_forwards_signals") {
        return;
    }
    let env = Env::new();
    let id = "fwd";
    let b = env.bundle(id, |c| {
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done",
            ],
        )
    });
    let log = env.dir.path().join("fwd.out");
    let mut child = env
        .cmd(&["run", "-b", b.to_str().unwrap(), id])
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file_text(&log, "ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(fs::read_to_string(&log).unwrap().contains("got-term"));
    assert_no_leftovers(&env, id, None);
}

#[test]
fn preserve_fds_passes_descriptors() {
    if !need_root("preserve_fds_passes_descriptors") {
        return;
    }
    let env = Env::new();
    let id = "fds";
    let b = env.bundle(id, |c| args(c, &["/bin/sh", "-c", "cat <&3"]));
    let input = env.dir.path().join("fd3.txt");
    fs::write(&input, "through-fd-3\n").unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<{}; {} --root {} run --preserve-fds 1 -b {} {id}",
            input.display(),
            ironcell().display(),
            env.root.display(),
            b.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "through-fd-3");
}

#[test]
fn console_socket_receives_the_pty() {
    if !need_root("console_socket_receives_the_pty") {
        return;
    }
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::{IoSliceMut, Read};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::net::UnixListener;

    let env = Env::new();
    let id = "tty";
    let b = env.bundle(id, |c| {
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                "if [ -t 0 ] && [ -t 1 ]; then echo is-a-tty; fi; tty",
            ],
        );
        c["process"]["terminal"] = json!(true);
    });
    let sock = env.dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // Without a console socket a detached terminal container is refused.
    env.fails(&["create", "-b", b.to_str().unwrap(), id], "console");
    assert!(!env.root.join(id).exists());

    env.ok(&[
        "create",
        "--console-socket",
        sock.to_str().unwrap(),
        "-b",
        b.to_str().unwrap(),
        id,
    ]);
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("pty master fd");
    // SAFETY: the fd was just received and is owned by nobody else.
    let mut master = unsafe { fs::File::from_raw_fd(fd) };
    env.ok(&["start", id]);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut chunk = [0u8; 512];
        match master.read(&mut chunk) {
            Ok(0) | Err(_) => break, // EIO once the slave side is closed
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
        if String::from_utf8_lossy(&out).contains("/dev/") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("is-a-tty"), "{text}");
    assert!(
        text.contains("/dev/pts/") || text.contains("/dev/console"),
        "{text}"
    );
    env.wait_status(id, "stopped");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, None);
}

/// `run` and `exec -t` in the foreground with no console socket: ironcell
/// holds the pty itself and relays it to its own terminal (given here by
/// `script`, as a person's shell would).
#[test]
fn foreground_terminal_without_console_socket() {
    if !need_root("foreground_terminal_without_console_socket") {
        return;
    }
    let env = Env::new();
    let id = "fgtty";
    let b = env.bundle(id, |c| {
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                "[ -t 0 ] && [ -t 1 ] && echo fg-is-a-tty; tty; exit 4",
            ],
        );
        c["process"]["terminal"] = json!(true);
    });
    let out = in_terminal(&env.cmd(&["run", "-b", b.to_str().unwrap(), id]));
    let text = stdout(&out);
    assert!(
        text.contains("fg-is-a-tty") && text.contains("/dev/pts/"),
        "{text} {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert_no_leftovers(&env, id, None);

    let id = "exectty";
    let b = env.bundle(id, |c| args(c, &["/bin/sleep", "4242427"]));
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    let out = in_terminal(&env.cmd(&[
        "exec",
        "-t",
        id,
        "sh",
        "-c",
        "[ -t 0 ] && echo exec-is-a-tty; tty",
    ]));
    let text = stdout(&out);
    assert!(
        text.contains("exec-is-a-tty") && text.contains("/dev/pts/"),
        "{text} {}",
        stderr(&out)
    );
    env.ok(&["delete", "-f", id]);
    assert_no_leftovers(&env, id, Some("4242427"));
    let left: Vec<_> = fs::read_dir(&env.root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "console socket or state left: {left:?}");
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    if !need_root("bad_input_is_one_line_and_leaves_nothing") {
        return;
    }
    let env = Env::new();
    let dir = env.dir.path();
    let broken = dir.join("broken");
    fs::create_dir_all(&broken).unwrap();
    fs::write(
        broken.join("config.json"),
        "{\n \"ociVersion\": \"1.0.2\",\n oops }",
    )
    .unwrap();
    env.fails(
        &["create", "-b", broken.to_str().unwrap(), "broken"],
        "malformed JSON at line 3",
    );
    env.fails(
        &["run", "-b", broken.to_str().unwrap(), "broken"],
        "config.json: malformed JSON",
    );

    let schema = env.bundle("schema", |c| c["process"]["args"] = json!("not-a-list"));
    env.fails(
        &["create", "-b", schema.to_str().unwrap(), "schema"],
        "does not match the OCI runtime spec",
    );
    let norootfs = env.bundle("norootfs", |c| {
        c["root"]["path"] = json!("/nonexistent/rootfs")
    });
    env.fails(
        &["create", "-b", norootfs.to_str().unwrap(), "norootfs"],
        "root.path /nonexistent/rootfs: no such directory",
    );
    env.fails(
        &["create", "-b", "/nonexistent/bundle", "x"],
        "bundle /nonexistent/bundle: no such directory",
    );
    let noconfig = dir.join("noconfig");
    fs::create_dir_all(&noconfig).unwrap();
    env.fails(
        &["create", "-b", noconfig.to_str().unwrap(), "x"],
        "config.json: no such file",
    );

    let good = env.bundle("good", |c| args(c, &["/bin/sleep", "4242426"]));
    let g = good.to_str().unwrap();
    env.fails(&["create", "-b", g, "a/b"], "invalid container id \"a/b\"");
    env.fails(&["create", "-b", g, ".."], "\"..\" are not allowed");
    env.fails(&["create", "-b", g, "../escape"], "invalid container id");
    env.fails(&["create", "-b", g, ""], "must not be empty");
    env.fails(
        &["--sandbox", "app-kernel", "create", "-b", g, "ak1"],
        "app-kernel sandbox is not built yet",
    );
    let out = env.run(&["--sandbox", "kvm", "create", "-b", g, "x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown sandbox kind"),
        "{}",
        stderr(&out)
    );
    let wasm = env.bundle("wasm", |c| {
        c["annotations"] = json!({"io.ironcell.sandbox": "wasm"})
    });
    // The wasm sandbox, for a bundle whose process is a shell.
    env.fails(
        &["create", "-b", wasm.to_str().unwrap(), "wasm"],
        "wasm: /bin/sh is not a WebAssembly module",
    );
    env.fails(
        &[
            "create",
            "--console-socket",
            "/nonexistent.sock",
            "-b",
            g,
            "x",
        ],
        "console",
    );

    for cmd in ["start", "state", "kill", "pause", "resume", "ps"] {
        env.fails(&[cmd, "ghost"], "container ghost does not exist");
    }
    env.fails(&["delete", "ghost"], "container ghost does not exist");
    env.ok(&["delete", "--force", "ghost"]);
    env.fails(&["state", "../etc"], "invalid container id");

    env.ok(&["create", "-b", g, "good"]);
    env.fails(
        &["create", "-b", g, "good"],
        "container good already exists",
    );
    env.ok(&["delete", "good"]);

    // Nothing of any refused container exists.
    for id in [
        "broken", "schema", "norootfs", "x", "vm1", "wasm", "good", "a", "..",
    ] {
        if id != ".." {
            assert_no_leftovers(&env, id, Some("4242426"));
        }
    }
    let left: Vec<_> = fs::read_dir(&env.root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state root not empty: {left:?}");
}

#[test]
fn failed_start_cleans_up() {
    if !need_root("failed_start_cleans_up") {
        return;
    }
    let env = Env::new();
    // The program does not exist in the rootfs: create succeeds (runc checks
    // at exec time), run must fail and remove everything.
    let id = "noprog";
    let b = env.bundle(id, |c| args(c, &["/no/such/program"]));
    let out = env.run(&["run", "-b", b.to_str().unwrap(), id]);
    assert!(!out.status.success());
    assert_no_leftovers(&env, id, None);
}

#[test]
fn json_log_carries_errors_for_containerd() {
    if !need_root("json_log_carries_errors_for_containerd") {
        return;
    }
    let env = Env::new();
    let log = env.dir.path().join("log.json");
    env.fails(
        &[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "start",
            "ghost",
        ],
        "container ghost does not exist",
    );
    let text = fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(last["msg"]
        .as_str()
        .unwrap()
        .contains("container ghost does not exist"));
    assert!(last["time"].as_str().unwrap().ends_with('Z'));

    let log = env.dir.path().join("log.txt");
    env.fails(
        &["--log", log.to_str().unwrap(), "state", "ghost"],
        "does not exist",
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("level=error msg=\"container ghost does not exist\""),
        "{text}"
    );

    // --debug logs the engine's work.
    let b = env.bundle("dbg", |c| args(c, &["/bin/true"]));
    let log = env.dir.path().join("debug.json");
    env.ok(&[
        "--debug",
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "run",
        "-b",
        b.to_str().unwrap(),
        "dbg",
    ]);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("\"level\":\"debug\"")),
        "{text}"
    );
}

#[test]
fn spec_features_version() {
    let env = Env::new();
    let dir = env.dir.path().join("spec");
    fs::create_dir_all(&dir).unwrap();
    env.ok(&["spec", "--bundle", dir.to_str().unwrap()]);
    let spec: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
    assert!(spec["linux"]["namespaces"].as_array().unwrap().len() >= 4);
    env.fails(&["spec", "--bundle", dir.to_str().unwrap()], "file exists");

    let f: Value = serde_json::from_str(&env.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert!(f["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "createRuntime"));
    assert_eq!(f["linux"]["cgroup"]["v1"], true);
    assert_eq!(f["linux"]["cgroup"]["v2"], true);

    let v = env.ok(&["--version"]);
    assert!(v.starts_with("ironcell version "), "{v}");
    let out = env.run(&["--systemd-cgroup", "list"]);
    if !std::path::Path::new("/run/systemd/system").exists() {
        assert!(!out.status.success());
        assert!(stderr(&out).contains("systemd is not running"));
    }
}

#[test]
fn hooks_run_in_order_with_state() {
    if !need_root("hooks_run_in_order_with_state") {
        return;
    }
    let env = Env::new();
    let id = "hooks";
    let logdir = env.dir.path().join("hooklog");
    fs::create_dir_all(&logdir).unwrap();
    fs::set_permissions(&logdir, fs::Permissions::from_mode(0o777)).unwrap();
    let host_log = logdir.join("log");
    // Runtime-namespace hooks write the host path; container-namespace hooks
    // (createContainer, startContainer) see the same dir bind-mounted at /run/hooklog.
    let host_hook = |name: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c",
            format!("read -r s; case \"$s\" in *'\"id\":\"{id}\"'*|*'\"id\": \"{id}\"'*) echo {name} >> {};; *) echo {name}-nostate >> {};; esac", host_log.display(), host_log.display())]})
    };
    // createContainer runs in the container's mount namespace before
    // pivot_root (the host's paths still resolve); startContainer after it.
    let ctr_hook = |name: &str, path: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} >> {path}")]});
    let host_log_str = host_log.to_str().unwrap().to_string();
    let b = env.bundle(id, |c| {
        args(c, &["/bin/sh", "-c", "echo process >> /run/hooklog/log"]);
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .extend([
                // A tmpfs first, so the mount point is not made in the shared image rootfs.
                json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs"}),
                json!({"destination": "/run/hooklog", "type": "bind", "source": logdir, "options": ["rbind", "rw"]}),
            ]);
        c["hooks"] = json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "createContainer": [ctr_hook("createContainer", &host_log_str)],
            "startContainer": [ctr_hook("startContainer", "/run/hooklog/log")],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
        });
    });
    let out = env.run(&["run", "-b", b.to_str().unwrap(), id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = fs::read_to_string(&host_log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let pos = |n: &str| {
        lines
            .iter()
            .position(|l| *l == n)
            .unwrap_or_else(|| panic!("hook {n} did not run (or without state): {lines:?}"))
    };
    assert!(pos("prestart") < pos("createContainer"));
    assert!(pos("createRuntime") < pos("createContainer"));
    assert!(pos("createContainer") < pos("startContainer"));
    assert!(pos("startContainer") < pos("poststop"));
    assert!(pos("poststart") < pos("poststop"));
    assert!(pos("process") < pos("poststop"));
    assert_no_leftovers(&env, id, None);

    // A failing createRuntime hook fails the create and leaves nothing.
    let id = "badhook";
    let b = env.bundle(id, |c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    });
    let out = env.run(&["create", "-b", b.to_str().unwrap(), id]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
    assert_no_leftovers(&env, id, None);
}

fn wait_for_file_text(path: &std::path::Path, text: &str) {
    wait_until(|| fs::read_to_string(path).is_ok_and(|t| t.contains(text)));
}

/// A file of container `id`'s cgroup (made by [`Env::bundle`]) in the v1
/// hierarchy of `controller`.
fn v1_cgroup_file(controller: &str, id: &str, file: &str) -> std::path::PathBuf {
    std::path::Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("ironcell-test")
        .join(id)
        .join(file)
}

fn read_trimmed(path: &std::path::Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Whether this host has the cgroup v1 hierarchies the update tests read;
/// says loudly when it has not.
fn need_cgroup_v1(test: &str) -> bool {
    if cgroup_v2_only()
        || !std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
    {
        eprintln!("SKIPPED {test}: needs cgroup v1 hierarchies (this host is cgroup v2)");
        return false;
    }
    true
}

/// `ironcell update` with runc's flags, with `--resources FILE` and with
/// `--resources -`: every value reaches the container's cgroup files; what
/// is left out stays; the OOM killer's setting survives a memory update;
/// bad input is one line naming what is wrong.
#[test]
fn update_sets_cgroup_limits() {
    if !need_root("update_sets_cgroup_limits") || !need_cgroup_v1("update_sets_cgroup_limits") {
        return;
    }
    let env = Env::new();
    let id = "upd";
    let b = env.bundle(id, |c| {
        args(c, &["/bin/sleep", "4242431"]);
        c["linux"]["resources"]["memory"] = json!({"limit": 128 << 20});
        c["linux"]["resources"]["pids"] = json!({"limit": 100});
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    let file = |ctl: &str, f: &str| read_trimmed(&v1_cgroup_file(ctl, id, f));
    assert_eq!(
        file("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );

    env.ok(&[
        "update",
        "--memory",
        "64m",
        "--memory-reservation",
        "32M",
        "--cpu-share",
        "512",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "50000",
        "--cpuset-cpus",
        "0",
        "--cpuset-mems",
        "0",
        "--pids-limit",
        "33",
        "--kernel-memory",
        "10m",
        id,
    ]);
    assert_eq!(
        file("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        file("memory", "memory.soft_limit_in_bytes"),
        (32u64 << 20).to_string()
    );
    assert_eq!(file("cpu", "cpu.shares"), "512");
    assert_eq!(file("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(file("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(file("cpuset", "cpuset.cpus"), "0");
    assert_eq!(file("pids", "pids.max"), "33");

    // docker's and podman's spelling, -1 for "unlimited", a lone flag.
    env.ok(&[
        "update",
        "--cpu-shares",
        "256",
        "--cpu-quota",
        "-1",
        "--pids-limit",
        "-1",
        id,
    ]);
    assert_eq!(file("cpu", "cpu.shares"), "256");
    assert_eq!(file("cpu", "cpu.cfs_quota_us"), "-1");
    assert_eq!(file("pids", "pids.max"), "max");
    assert_eq!(
        file("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string(),
        "untouched"
    );

    // --resources FILE, as podman passes it (a pids limit of 0 and empty
    // cpusets leave those alone, as in runc).
    let oom_control = v1_cgroup_file("memory", id, "memory.oom_control");
    fs::write(&oom_control, "1").unwrap();
    let res = env.dir.path().join("resources.json");
    fs::write(
        &res,
        r#"{"memory":{"limit":100000000,"swap":200000000},"cpu":{"shares":1024,"cpus":"","mems":""},
            "pids":{"limit":0},"devices":[{"allow":false,"access":"rwm"}]}"#,
    )
    .unwrap();
    env.ok(&["update", "--resources", res.to_str().unwrap(), id]);
    assert_eq!(file("memory", "memory.limit_in_bytes"), "99999744");
    if v1_cgroup_file("memory", id, "memory.memsw.limit_in_bytes").exists() {
        assert_eq!(file("memory", "memory.memsw.limit_in_bytes"), "199999488");
    }
    assert_eq!(file("cpu", "cpu.shares"), "1024");
    assert_eq!(file("cpuset", "cpuset.cpus"), "0");
    assert_eq!(file("pids", "pids.max"), "max");
    assert!(
        read_trimmed(&oom_control).contains("oom_kill_disable 1"),
        "a memory update turned the OOM killer back on: {}",
        read_trimmed(&oom_control)
    );
    // The device rules were not replayed: /dev/null still works.
    let out = env.ok(&["exec", id, "sh", "-c", "echo x > /dev/null && echo dev-ok"]);
    assert_eq!(out.trim(), "dev-ok");

    // --resources - (containerd's runc shim): the JSON on stdin.
    let mut child = env
        .cmd(&["update", "-r", "-", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(br#"{"memory":{"limit":150000000,"swap":300000000},"cpu":{"quota":20000,"period":50000}}"#)
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(file("memory", "memory.limit_in_bytes"), "149999616");
    assert_eq!(file("cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(file("cpu", "cpu.cfs_period_us"), "50000");
    let weight = ["blkio.weight", "blkio.bfq.weight"]
        .into_iter()
        .map(|f| v1_cgroup_file("blkio", id, f))
        .find(|p| p.exists());
    match weight {
        Some(w) => {
            env.ok(&["update", "--blkio-weight", "300", id]);
            assert_eq!(read_trimmed(&w), "300");
        }
        None => eprintln!("update_sets_cgroup_limits: no blkio weight file on this host; --blkio-weight not checked"),
    }

    // Bad input: one line naming what is wrong; nothing changes.
    env.fails(
        &["update", "--memory", "lots", id],
        "--memory: invalid size \"lots\"",
    );
    env.fails(&["update", "--cpu-share", "-5", id], "--cpu-share \"-5\"");
    env.fails(
        &["update", "--blkio-weight", "5", id],
        "between 10 and 1000",
    );
    env.fails(&["update", "--l3-cache-schema", "L3:0=f", id], "Intel RDT");
    env.fails(&["update", "--mem-bw-schema", "MB:0=70", id], "Intel RDT");
    env.fails(
        &[
            "update",
            "--resources",
            res.to_str().unwrap(),
            "--memory",
            "1m",
            id,
        ],
        "cannot be combined with --memory",
    );
    let bad = env.dir.path().join("bad.json");
    fs::write(&bad, r#"{"memory":{"limit":"lots"}}"#).unwrap();
    env.fails(
        &["update", "-r", bad.to_str().unwrap(), id],
        "not LinuxResources JSON",
    );
    env.fails(&["update", "--memory", "1m", "nosuch"], "does not exist");
    env.fails(
        &["update", "--memory", "1m", id, "extra"],
        "unexpected argument",
    );
    assert_eq!(file("memory", "memory.limit_in_bytes"), "149999616");

    // A stopped container has nothing to update.
    env.ok(&["kill", id, "KILL"]);
    env.wait_status(id, "stopped");
    env.fails(&["update", "--memory", "64m", id], "stopped");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, Some("4242431"));
}

fn events_of(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// `ironcell events --stats` prints one stats event in runc's shape;
/// `ironcell events --interval` streams stats events and an oom event for
/// the OOM kill in the container, and ends when the container stops.
#[test]
fn events_stats_and_oom_stream() {
    if !need_root("events_stats_and_oom_stream") {
        return;
    }
    let env = Env::new();
    let id = "evstats";
    let b = env.bundle(id, |c| {
        args(c, &["/bin/sleep", "4242432"]);
        c["linux"]["resources"]["memory"] = json!({"limit": 96 << 20});
        c["linux"]["resources"]["pids"] = json!({"limit": 77});
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    let ev = events_of(&env.ok(&["events", "--stats", id]));
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = &ev[0];
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("stats"), Some(id))
    );
    let d = &e["data"];
    assert_eq!(d["memory"]["usage"]["limit"], 96u64 << 20, "{d}");
    assert!(d["memory"]["usage"]["usage"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["pids"]["current"], 1, "{d}");
    assert_eq!(d["pids"]["limit"], 77, "{d}");
    assert!(d["cpu"]["usage"]["total"].as_u64().unwrap() > 0, "{d}");
    assert!(d["cpu"]["usage"].get("kernel").is_some() && d["cpu"]["usage"].get("user").is_some());
    assert!(d["hugetlb"].is_object() && d["blkio"].is_object() && d["memory"]["raw"].is_object());
    env.ok(&["kill", id, "KILL"]);
    env.wait_status(id, "stopped");
    env.fails(&["events", "--stats", id], "is not running");
    env.fails(&["events", "--interval", "0s", id], "greater than 0");
    env.fails(&["events", "nosuch"], "does not exist");
    env.ok(&["delete", id]);

    // The stream: stats every 300 ms, an oom event when `tail /dev/zero`
    // (which grows without end) is OOM-killed, and the end with the
    // container's.
    let id = "evoom";
    let b = env.bundle(id, |c| {
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                ": 4242433; sleep 1.5; tail /dev/zero; sleep 0.5",
            ],
        );
        c["linux"]["resources"]["memory"] = json!({"limit": 32 << 20, "swap": 32 << 20});
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    let start = Instant::now();
    let mut child = env
        .cmd(&["events", "--interval", "300ms", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("events did not end with the container: {}", stdout(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ev = events_of(&stdout(&out));
    let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "oom").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| **k == "stats").count() >= 3,
        "{kinds:?}"
    );
    let oom = ev.iter().find(|e| e["type"] == "oom").unwrap();
    assert_eq!(oom, &json!({"type": "oom", "id": id}));
    for e in ev.iter().filter(|e| e["type"] == "stats") {
        assert_eq!(e["data"]["memory"]["usage"]["limit"], 32u64 << 20);
    }
    assert_eq!(env.status(id), "stopped");
    env.ok(&["delete", id]);
    assert_no_leftovers(&env, id, Some("4242433"));
}

/// Drives `ironcell ARGS` on a pty of the test's own, as a person's shell
/// would (the pty is ironcell's controlling terminal): the container's
/// process must see the same terminal size, get what is typed, and see the
/// new size when the outer terminal is resized (SIGWINCH). ironcell's
/// terminal is raw while the process runs and restored after. Returns the
/// exit code.
fn drive_pty(env: &Env, args: &[&str]) -> i32 {
    use nix::pty::{openpty, Winsize};
    use nix::sys::termios::{tcgetattr, LocalFlags};
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};

    let ws = |rows, cols| Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&ws(24, 80)), None).unwrap();
    let before = tcgetattr(pty.slave.as_fd()).unwrap();
    assert!(before.local_flags.contains(LocalFlags::ICANON));
    let mut cmd = env.cmd(args);
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl are async-signal-safe and touch no memory
    // of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::setsid() < 0 || nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&out.lock().unwrap()).to_string();
    let wait_for = |want: &str| {
        let start = Instant::now();
        while !text().contains(want) {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                panic!("{args:?}: never printed {want:?}: {:?}", text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("size:24 80");
    let raw = tcgetattr(pty.slave.as_fd()).unwrap();
    assert!(
        !raw.local_flags.contains(LocalFlags::ICANON)
            && !raw.local_flags.contains(LocalFlags::ECHO),
        "ironcell's terminal is not in raw mode while the process runs"
    );
    master.write_all(b"typed-line\n").unwrap();
    wait_for("got:typed-line");
    // SAFETY: TIOCSWINSZ reads one winsize struct from this stack frame.
    let r = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws(33, 99)) };
    assert_eq!(r, 0);
    wait_for("resized:33 99");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{args:?} did not end: {:?}",
            text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let after = tcgetattr(pty.slave.as_fd()).unwrap();
    assert_eq!(
        after.local_flags, before.local_flags,
        "ironcell left its terminal in raw mode"
    );
    status.code().unwrap_or(-1)
}

/// The script the pty tests run: the size, a typed line, the new size.
const PTY_SCRIPT: &str = "echo size:$(stty size); read l; echo got:$l; \
    while [ \"$(stty size)\" != \"33 99\" ]; do sleep 0.05; done; echo resized:$(stty size); exit 5";

/// A foreground `run` and `exec -t` with no console socket: ironcell's own
/// pty relays input and output both ways and passes on resizes.
#[test]
fn foreground_terminal_relays_input_and_resizes() {
    if !need_root("foreground_terminal_relays_input_and_resizes") {
        return;
    }
    let env = Env::new();
    let id = "ptyrun";
    let b = env.bundle(id, |c| {
        args(c, &["/bin/sh", "-c", PTY_SCRIPT]);
        c["process"]["terminal"] = json!(true);
    });
    assert_eq!(drive_pty(&env, &["run", "-b", b.to_str().unwrap(), id]), 5);
    assert_no_leftovers(&env, id, None);

    let id = "ptyexec";
    let b = env.bundle(id, |c| args(c, &["/bin/sleep", "4242434"]));
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    assert_eq!(
        drive_pty(&env, &["exec", "-t", id, "sh", "-c", PTY_SCRIPT]),
        5
    );
    // exec --process with "terminal": true, as engines pass it.
    let process = env.dir.path().join("process.json");
    fs::write(
        &process,
        serde_json::to_string(&json!({
            "terminal": true,
            "args": ["sh", "-c", PTY_SCRIPT],
            "env": ["PATH=/bin:/usr/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0}
        }))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        drive_pty(&env, &["exec", "--process", process.to_str().unwrap(), id]),
        5
    );
    env.ok(&["delete", "-f", id]);
    assert_no_leftovers(&env, id, Some("4242434"));
}

/// `ironcell check` says what this host offers: here, as root, that pod
/// networking works (the probe tied two taps with tc in a namespace of its
/// own), and it leaves no tap behind.
#[test]
fn check_reports_the_host_and_probes_pod_networking() {
    if !need_root("check_reports_the_host_and_probes_pod_networking") {
        return;
    }
    let out = Command::new(ironcell())
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "/dev/kvm",
        "/dev/net/tun",
        "pod networking      yes",
        "namespace           yes",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    let links = Command::new("ip").args(["-br", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("probe0"),
        "the probe's tap is in the host's namespace"
    );
}
