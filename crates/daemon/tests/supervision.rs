//! ironcelld's supervision under containerd 1.6: a killed daemon is
//! started again by its keeper (or, killed in its start-up, by the shim
//! that started it), a killed keeper is replaced by the daemon,
//! and kills of either at random points of concurrent creates leave
//! nothing behind once containerd has deleted its tasks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ironcell_testutil::*;

mod with_containerd;
use with_containerd::*;

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

/// A daemon killed in its own start-up, before it listens (and maybe
/// before it asked the keeper to supervise it, which it does first), is
/// started again: the `ctr run` whose shim started it succeeds. The kill
/// must land before the daemon listens; an attempt where it came too late
/// is repeated.
#[test]
fn a_daemon_killed_in_its_start_up_is_started_again() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    let mut ids = Vec::new();
    let mut landed = 0;
    for attempt in 0..5 {
        stop_daemon(&s);
        let root = s.root.clone();
        let killer = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let daemons = ironcelld_processes(&root, false);
                if daemons.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let listening =
                    std::os::unix::net::UnixStream::connect(root.join("control.sock")).is_ok();
                if !listening {
                    kill_all(daemons, nix::sys::signal::Signal::SIGKILL);
                }
                return !listening;
            }
            false
        });
        let id = format!("s{attempt}");
        ids.push(id.clone());
        let started = Instant::now();
        let out = c.run(
            &s.run_args(&["-d"], &[&id, "sleep", "3600"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let in_start_up = killer.join().unwrap();
        assert!(
            out.status.success(),
            "ctr run failed after the daemon was killed {}: {}\n{}",
            if in_start_up {
                "in its start-up"
            } else {
                "once it listened"
            },
            stderr(&out),
            s.daemon_log()
        );
        let out = c.ok(&["task", "exec", "--exec-id", "e", &id, "echo", "up"]);
        assert_eq!(out.trim(), "up");
        if in_start_up {
            landed += 1;
            eprintln!(
                "attempt {attempt}: killed in its start-up; ctr run and exec answered in {} ms",
                started.elapsed().as_millis()
            );
            if landed == 2 {
                break;
            }
        }
    }
    assert!(landed > 0, "no kill landed in the daemon's start-up");
    for id in &ids {
        c.ok(&["task", "kill", "-s", "SIGKILL", id]);
        c.wait_task(id, "STOPPED");
        c.ok(&["task", "delete", id]);
        c.ok(&["container", "rm", id]);
    }
}

/// The keeper killed under a running task: the daemon starts a new keeper
/// at once. containerd, whose connection to the task's address closed with
/// the old keeper, gives the task up and runs the shim's `delete`: the
/// daemon kills and removes it (the end of its process comes through a
/// pidfd, the process having been the old keeper's child). The namespace's
/// address is served again (a new task runs and answers exec), and the new
/// keeper supervises the daemon (a killed daemon comes back).
#[test]
fn a_killed_keeper_is_replaced_and_its_tasks_are_cleaned_up() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    let marker = format!("keeper-kill-{}", std::process::id());
    s.ctr_ok(&s.run_args(
        &["-d"],
        &["old", "sh", "-c", &format!("sleep 3600; : {marker}")],
    ));
    assert_eq!(processes_with(&marker).len(), 1);
    let old_keeper = kill_keeper(&s.root);
    let killed = Instant::now();
    let replaced = wait_for_new_keeper(&s.root, &old_keeper, Duration::from_secs(10));
    let daemon_before = s.daemons();
    assert_eq!(daemon_before.len(), 1, "the daemon outlives its keeper");

    // Given up by containerd, removed by the daemon: process and record.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_with(&marker).is_empty()
        || s.root.join("tasks/default/old").exists()
        || !c.task_status("old").is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the given-up task stays: processes {:?}, status {:?}\n{}",
            processes_with(&marker),
            c.task_status("old"),
            s.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cleaned = killed.elapsed();

    // The same namespace's address works through the new keeper.
    s.ctr_ok(&s.run_args(&["-d"], &["new", "sleep", "3600"]));
    let out = c.ok(&["task", "exec", "--exec-id", "e1", "new", "echo", "alive"]);
    assert_eq!(out.trim(), "alive");
    let served = killed.elapsed();

    // The new keeper supervises the daemon.
    let old = kill_daemon(&s.root);
    let back = wait_for_new_daemon(&s.root, &old, Duration::from_secs(10));
    let out = c.ok(&["task", "exec", "--exec-id", "e2", "new", "echo", "again"]);
    assert_eq!(out.trim(), "again");
    eprintln!(
        "keeper killed: replaced in {} ms, the given-up task removed in {} ms, \
         a new task answered exec {} ms after the kill; the daemon killed \
         next came back in {} ms",
        replaced.as_millis(),
        cleaned.as_millis(),
        served.as_millis(),
        back.as_millis()
    );
    c.ok(&["task", "kill", "-s", "SIGKILL", "new"]);
    c.wait_task("new", "STOPPED");
    c.ok(&["task", "delete", "new"]);
    c.ok(&["container", "rm", "new", "old"]);
}

/// containerd runs the shim's `delete` when its connections through a
/// keeper broke. A daemon whose keeper is lost answers it only once a new
/// keeper is connected: answered earlier, and the daemon killed before
/// that, nothing would start a daemon again, and the containers given up
/// with the keeper would stay. Here no new keeper can start (a directory
/// takes its socket's path), the daemon is killed under the waiting
/// `delete`, and the `delete` starts the next daemon, which its keeper
/// supervises.
#[test]
fn a_delete_during_a_keeper_loss_leaves_a_supervised_daemon() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    s.ctr_ok(&s.run_args(&["-d"], &["given-up", "sleep", "3600"]));
    let socket = s.root.join("keeper.sock");
    std::fs::remove_file(&socket).unwrap();
    std::fs::create_dir(&socket).unwrap();
    let old_keeper = kill_keeper(&s.root);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.daemon_log().contains("cannot start a new keeper") {
        assert!(Instant::now() < deadline, "{}", s.daemon_log());
        std::thread::sleep(Duration::from_millis(20));
    }

    let delete = std::process::Command::new(bin_dir().join("containerd-shim-ironcell-v2"))
        .env("IRONCELLD_ROOT", &s.root)
        // As for a pod's id (a pod is no task): answered at once before.
        .args(["-namespace", "default", "-id", "a-pod", "delete"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut delete = delete;
    assert!(
        delete.try_wait().unwrap().is_none(),
        "a daemon without a keeper answered the shim's delete"
    );
    let old_daemon = kill_daemon(&s.root);
    std::fs::remove_dir(&socket).unwrap();
    let out = delete.wait_with_output().unwrap();
    assert!(out.status.success(), "delete: {}", stderr(&out));

    // containerd's own delete may have started a daemon at the same
    // moment: the second one exits (the root's lock).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.daemons().len() != 1 || old_daemon.contains(&s.daemons()[0]) {
        assert!(
            Instant::now() < deadline,
            "not one new daemon after the delete: {:?}\n{}",
            s.daemons(),
            s.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_new_keeper(&s.root, &old_keeper, Duration::from_secs(10));
    let killed = kill_daemon(&s.root);
    let back = wait_for_new_daemon(&s.root, &killed, Duration::from_secs(10));
    eprintln!(
        "the delete waited for a keeper; the daemon it started came back {} ms after a kill",
        back.as_millis()
    );
    // The task given up with the lost keeper goes, process and record.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.root.join("tasks/default/given-up").exists() || !c.task_status("given-up").is_empty() {
        assert!(Instant::now() < deadline, "{}", s.daemon_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ok(&["container", "rm", "given-up"]);
}

/// Fault injection: rounds of concurrent `ctr run -d` (beside an exec in
/// each earlier task and the delete of one), with the daemon, the keeper
/// or both killed (SIGKILL) at a random moment of each round, as a crash or
/// an OOM kill would. The keeper starts a killed daemon
/// again, the daemon a killed keeper (containerd gives up the tasks it
/// reached through that keeper), and the shim's next `start` or `delete`
/// starts a daemon killed with its keeper. Every task that runs afterwards
/// answers exec; once containerd has deleted everything, nothing is left:
/// no task record, no container state, no cgroup, no rootfs mount, no
/// container process. The seed is printed (set `IRONCELL_FAULT_SEED` to
/// replay a run).
#[test]
fn kills_at_random_points_leave_nothing_behind() {
    let Some(s) = Setup::start() else { return };
    let c = s.c();
    let mut rng = FaultRng::from_env();
    let marker = format!("fault-{}", rng.seed() % 1_000_000);
    let mut next = |bound: u64| rng.below(bound);
    // Three daemon kills at most: fewer than the keeper's five crash-loop
    // deaths in a row, after which it would stop restarting the daemon.
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 4;
    let mut ids: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        // Beside this round's creates and starts: an exec in each task of
        // the earlier rounds, and the delete of one of them, all cut by
        // the same kill.
        let earlier = ids.clone();
        let doomed = (!earlier.is_empty()).then(|| next(earlier.len() as u64) as usize);
        let others: Vec<_> = earlier
            .iter()
            .enumerate()
            .map(|(n, id)| {
                let exec_id = format!("x{round}");
                let args: Vec<&str> = if Some(n) == doomed {
                    vec!["task", "delete", "-f", id.as_str()]
                } else {
                    vec![
                        "task",
                        "exec",
                        "--exec-id",
                        &exec_id,
                        id.as_str(),
                        "sh",
                        "-c",
                        "sleep 0.3",
                    ]
                };
                c.ctr(&args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
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
        let victims = ["daemon", "keeper", "daemon and keeper"];
        let victim = victims[next(victims.len() as u64) as usize];
        let back = match victim {
            "daemon" => {
                // Once it serves: a kill in its start-up is the test
                // a_daemon_killed_in_its_start_up_is_started_again.
                wait_for_new_daemon(&s.root, &[], Duration::from_secs(10));
                let old = kill_daemon(&s.root);
                Some(wait_for_new_daemon(&s.root, &old, Duration::from_secs(10)))
            }
            "keeper" => {
                let old = kill_keeper(&s.root);
                Some(wait_for_new_keeper(&s.root, &old, Duration::from_secs(10)))
            }
            _ => {
                // The keeper first: a daemon killed first would be started
                // again by it.
                kill_keeper(&s.root);
                kill_daemon(&s.root);
                None
            }
        };
        let results: Vec<_> = runs
            .into_iter()
            .map(|r| r.wait_with_output().unwrap())
            .collect();
        let others_ok = others
            .into_iter()
            .map(|o| o.wait_with_output().unwrap())
            .filter(|o| o.status.success())
            .count();
        let ok = results.iter().filter(|o| o.status.success()).count();
        for o in results.iter().filter(|o| !o.status.success()) {
            eprintln!("a run failed: {}", stderr(o).trim());
        }
        eprintln!(
            "round {round}: killed the {victim}, {}; {ok} of {PER_ROUND} runs and \
             {others_ok} of {} execs and deletes succeeded",
            back.map_or("left to the shim to start again".into(), |b| format!(
                "replaced in {} ms",
                b.as_millis()
            )),
            earlier.len()
        );
    }
    // The next start: a daemon killed with its keeper is started by the
    // next shim call, and removes what containerd gave up meanwhile.
    s.ctr_ok(&s.run_args(&["--rm"], &["probe", "true"]));
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
    // The daemon removes the tasks containerd gave up as containerd's
    // cleanups reach it, and those whose cleanup never came 10 s after a
    // keeper's loss.
    let start = Instant::now();
    while !(entries(s.root.join("tasks")).is_empty()
        && entries(s.root.join("containers")).is_empty())
        && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = entries(s.root.join("tasks"));
    assert!(
        left.is_empty(),
        "task records left: {:?}\n{}",
        left.iter()
            .map(|d| (
                d,
                std::fs::read_dir(d)
                    .map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            ))
            .collect::<Vec<_>>(),
        s.daemon_log()
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
