//! Real podman (Debian's) driving ironcell as its OCI runtime through conmon,
//! on the bundled test image imported from its archive.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

const IMAGE: &str = "localhost/ironcell-test:latest";

/// podman with private storage and the project's containers.conf
/// (scripts/containers.conf): this host lacks CAP_SYS_RESOURCE, so the
/// default ulimits podman would ask for (nofile 1048576) cannot be set; the
/// config lowers them to the host's hard limits.
struct Podman {
    dir: tempfile::TempDir,
    state_root: PathBuf,
}

impl Podman {
    fn new() -> Option<Podman> {
        if !need_root("podman") {
            return None;
        }
        if Command::new("podman").arg("--version").output().is_err() {
            panic!("podman is not installed: run `make setup` (scripts/setup.sh)");
        }
        let dir = tempfile::Builder::new()
            .prefix("ironcell-podman-")
            .tempdir()
            .unwrap();
        let p = Podman {
            state_root: PathBuf::from("/run/ironcell"),
            dir,
        };
        let out = p.run(&[
            "load",
            "-i",
            image().join("ironcell-test.docker.tar").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "podman load: {}", stderr(&out));
        Some(p)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", containers_conf())
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--runtime")
            .arg(ironcell())
            .args(args)
            .stdin(Stdio::null())
            // conmon writes an empty file named "oom" into its working
            // directory when the container is OOM-killed (the -m test does
            // that on purpose): keep it in the test's own directory.
            .current_dir(d);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(self.cmd(args))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-af", "-t", "0"]).output();
        // Unmount overlay layers podman left under the private storage.
        unmount_below(self.dir.path());
    }
}

/// `ironcell state ID` (of podman's state root, ironcell's default).
fn ironcell_state(id: &str) -> serde_json::Value {
    serde_json::from_slice(
        &Command::new(ironcell())
            .args(["state", id])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

fn state_dirs(root: &Path) -> Vec<String> {
    fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn podman_run_stdout_exit_codes_and_cleanup() {
    let Some(p) = Podman::new() else { return };
    assert_eq!(
        p.ok(&["run", "--rm", IMAGE, "echo", "hello via podman"])
            .trim(),
        "hello via podman"
    );
    let out = p.run(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "echo to-stderr >&2; exit 42",
    ]);
    assert_eq!(out.status.code(), Some(42));
    assert!(stderr(&out).contains("to-stderr"));
    // podman reads runc's words for a command that is missing or not
    // executable, and exits 127 or 126 as a shell would (125 otherwise).
    let out = p.run(&["run", "--rm", IMAGE, "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let out = p.run(&["run", "--rm", IMAGE, "/etc/hostname"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    // A container podman ran is ironcell's: podman records the runtime, and
    // while it runs ironcell's state root holds it.
    let id = p.ok(&["run", "-d", "--name", "owned", IMAGE, "sleep", "4343431"]);
    let id = id.trim();
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.OCIRuntime}}", "owned"])
            .trim(),
        ironcell().to_str().unwrap()
    );
    assert!(
        state_dirs(&p.state_root).contains(&id.to_string()),
        "no ironcell state for {id}"
    );
    let st = ironcell_state(id);
    assert_eq!(st["status"], "running");
    assert_eq!(st["sandbox"], "namespace");
    p.ok(&["rm", "-f", "-t", "0", "owned"]);
    assert!(
        !state_dirs(&p.state_root).contains(&id.to_string()),
        "state of {id} left"
    );
    assert!(processes_with("4343431").is_empty());
}

#[test]
fn podman_interactive_terminal() {
    let Some(p) = Podman::new() else { return };
    // A real terminal, as a person at a shell has.
    let out = in_terminal(&p.cmd(&[
        "run",
        "--rm",
        "-it",
        IMAGE,
        "sh",
        "-c",
        // The sleep: podman attaches to a -it container after starting it,
        // and loses what a container that exits at once printed (1 run in
        // 12 here, with runc as with ironcell).
        "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; tty; stty size; sleep 0.5",
    ]));
    let text = stdout(&out);
    assert!(out.status.success(), "{text} {}", stderr(&out));
    assert!(text.contains("is-a-tty"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");

    // exec -it in a running container gets its own terminal too.
    p.ok(&["run", "-d", "--name", "ttyhost", IMAGE, "sleep", "4343433"]);
    let out = in_terminal(&p.cmd(&[
        "exec",
        "-it",
        "ttyhost",
        "sh",
        "-c",
        "[ -t 0 ] && echo exec-is-a-tty; tty; sleep 0.5",
    ]));
    let text = stdout(&out);
    assert!(
        text.contains("exec-is-a-tty") && text.contains("/dev/pts/"),
        "{text} {}",
        stderr(&out)
    );
    p.ok(&["rm", "-f", "-t", "0", "ttyhost"]);

    // stdin reaches the container (-i) and its answer comes back.
    let mut child = p
        .cmd(&[
            "run",
            "--rm",
            "-i",
            IMAGE,
            "sh",
            "-c",
            "read x; echo got:$x",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"typed-line\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).contains("got:typed-line"), "{}", stdout(&out));
}

#[test]
fn podman_exec_stop_kill() {
    let Some(p) = Podman::new() else { return };
    p.ok(&[
        "run",
        "-d",
        "--name",
        "svc",
        IMAGE,
        "sh",
        "-c",
        "trap 'echo stopping; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(
        p.ok(&["exec", "svc", "cat", "/etc/hostname"]).trim().len(),
        12
    );
    let out = p.run(&["exec", "svc", "sh", "-c", "echo exec-out; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out).trim(), "exec-out");
    assert_eq!(
        p.ok(&[
            "exec",
            "-e",
            "X=1",
            "-w",
            "/tmp",
            "-u",
            "65534",
            "svc",
            "sh",
            "-c",
            "echo $X $(pwd) $(id -u)"
        ])
        .trim(),
        "1 /tmp 65534"
    );
    let top = p.ok(&["top", "svc"]);
    assert!(top.contains("sh -c"), "{top}");

    p.ok(&["pause", "svc"]);
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.Status}}", "svc"])
            .trim(),
        "paused"
    );
    p.ok(&["unpause", "svc"]);

    // stop: SIGTERM reaches the trap, the container exits 0 well before the timeout.
    let t = std::time::Instant::now();
    p.ok(&["stop", "-t", "20", "svc"]);
    assert!(t.elapsed().as_secs() < 15, "stop waited for the timeout");
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "svc"])
            .trim(),
        "0"
    );
    let logs = p.ok(&["logs", "svc"]);
    assert!(logs.contains("stopping"), "{logs}");

    // kill: SIGKILL, exit 137.
    p.ok(&["run", "-d", "--name", "victim", IMAGE, "sleep", "4343432"]);
    p.ok(&["kill", "--signal", "KILL", "victim"]);
    p.ok(&["wait", "victim"]);
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "victim"])
            .trim(),
        "137"
    );
    // kill with a named signal the process handles.
    p.ok(&[
        "run",
        "-d",
        "--name",
        "usr1",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 10' USR1; while true; do sleep 0.1; done",
    ]);
    p.ok(&["kill", "--signal", "USR1", "usr1"]);
    p.ok(&["wait", "usr1"]);
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "usr1"])
            .trim(),
        "10"
    );
    p.ok(&["rm", "svc", "victim", "usr1"]);
    assert!(processes_with("4343432").is_empty());
}

#[test]
fn podman_memory_limit_is_enforced() {
    let Some(p) = Podman::new() else { return };
    let limit = 32 * 1024 * 1024;
    let path = if cgroup_v2_only() {
        "/sys/fs/cgroup/memory.max"
    } else {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    let seen = p.ok(&["run", "--rm", "-m", "32m", IMAGE, "cat", path]);
    assert_eq!(seen.trim(), limit.to_string());
    // Filling tmpfs (charged to the container's memory) past the limit gets
    // the writer OOM-killed; under the limit it is fine. dd is the
    // container's init here, so its death is the container's exit status.
    let fill = |mib: u32| {
        p.run(&[
            "run",
            "--rm",
            "-m",
            "32m",
            "--memory-swap",
            "32m",
            IMAGE,
            "sh",
            "-c",
            &format!("exec dd if=/dev/zero of=/dev/shm/fill bs=1M count={mib}"),
        ])
    };
    let small = fill(8);
    assert!(small.status.success(), "{}", stderr(&small));
    let big = fill(96);
    assert_eq!(
        big.status.code(),
        Some(137),
        "out: {} err: {}",
        stdout(&big),
        stderr(&big)
    );
}

/// The host cgroup directory of a podman container in the v1 hierarchy
/// `controller`, from the cgroupsPath of the bundle podman gave ironcell.
fn podman_cgroup(id: &str, controller: &str) -> PathBuf {
    let st = ironcell_state(id);
    let bundle = PathBuf::from(st["bundle"].as_str().unwrap());
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap();
    let path = config["linux"]["cgroupsPath"].as_str().unwrap();
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
}

/// `podman update` goes through `ironcell update --resources FILE`: the new
/// limits reach the container's cgroup on the host. `podman stats` reads
/// the container's cgroup: its numbers are the container's.
#[test]
fn podman_update_and_stats() {
    let Some(p) = Podman::new() else { return };
    if cgroup_v2_only() {
        eprintln!(
            "SKIPPED podman_update_and_stats: reads cgroup v1 files (this host is cgroup v2)"
        );
        return;
    }
    let id = p.ok(&[
        "run",
        "-d",
        "--name",
        "upd",
        "-m",
        "128m",
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=20 2>/dev/null; \
         sleep 4343435 & sleep 4343435 & wait",
    ]);
    let id = id.trim().to_string();
    let read = |ctl: &str, f: &str| {
        fs::read_to_string(podman_cgroup(&id, ctl).join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    p.ok(&[
        "update",
        "--memory",
        "64m",
        "--memory-swap",
        "96m",
        "--cpu-shares",
        "512",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "50000",
        "upd",
    ]);
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        read("memory", "memory.memsw.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    // The container keeps running under its new limits.
    assert_eq!(ironcell_state(&id)["status"], "running");
    // A limit below what it uses is refused by the kernel; podman says so.
    let out = p.run(&["update", "--memory", "4m", "--memory-swap", "4m", "upd"]);
    assert!(
        !out.status.success(),
        "a 4m limit under 20 MB of tmpfs was accepted"
    );
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );

    // podman stats: the 20 MB in tmpfs and the three processes.
    let start = std::time::Instant::now();
    let stats = loop {
        let text = p.ok(&["stats", "--no-stream", "--format", "json", "upd"]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = v[0].clone();
        if s["pids"] == "3" || start.elapsed() > std::time::Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(stats["pids"], "3", "{stats}");
    let usage = stats["mem_usage"].as_str().unwrap();
    let mb: f64 = usage
        .split_whitespace()
        .next()
        .and_then(|u| u.strip_suffix("MB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("memory usage not in MB: {stats}"));
    assert!((20.0..64.0).contains(&mb), "{stats}");
    p.ok(&["rm", "-f", "-t", "0", "upd"]);
    assert!(processes_with("4343435").is_empty());
}

fn containers_conf() -> PathBuf {
    workspace().join("scripts/containers.conf")
}

/// A WASI image loaded from an archive: podman runs its module through
/// ironcell's wasm sandbox (chosen by the entrypoint's magic bytes), with
/// its output, exit status, `podman stop` and cleanup.
#[test]
fn podman_runs_a_wasm_image() {
    use ironcell_testutil::wasm::{image_archive, program, SPIN};
    let Some(p) = Podman::new() else { return };
    let d = p.dir.path();
    for (repo, module) in [
        ("wasm-hello", program("hello from wasm via podman\n", "")),
        ("wasm-exit", program("", "(call $proc_exit (i32.const 9))")),
        ("wasm-spin", program("", SPIN)),
    ] {
        let archive = image_archive(d, repo, "latest", &module);
        p.ok(&["load", "-i", archive.to_str().unwrap()]);
    }
    assert_eq!(
        p.ok(&["run", "--rm", "localhost/wasm-hello:latest"]),
        "hello from wasm via podman\n"
    );
    let out = p.run(&["run", "--rm", "localhost/wasm-exit:latest"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    // Detached, its state is ironcell's wasm sandbox; stop ends it.
    let id = p.ok(&["run", "-d", "--name", "spin", "localhost/wasm-spin:latest"]);
    let id = id.trim();
    let st = ironcell_state(id);
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["sandbox"], "wasm", "{st}");
    p.ok(&["stop", "-t", "5", "spin"]);
    let code = p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "spin"]);
    assert_eq!(code.trim(), "143");
    p.ok(&["rm", "spin"]);
    assert!(
        !state_dirs(&p.state_root).contains(&id.to_string()),
        "state of {id} left"
    );
}

/// The vm sandbox through podman: `--runtime-flag config=...` points
/// ironcell at a configuration that boots VMs under QEMU with TCG, and the
/// `io.ironcell.sandbox=vm` annotation selects the sandbox. Each container
/// runs in a guest of its own.
#[test]
fn podman_runs_containers_in_vms() {
    use ironcell_testutil::vm::{assert_no_vm_left, qemu_config, qemu_guest};
    let Some(g) = qemu_guest("podman_runs_containers_in_vms") else {
        return;
    };
    let Some(p) = Podman::new() else { return };
    let config = qemu_config(p.dir.path(), &g, "memory_mib = 256");
    let flag = format!("--runtime-flag=config={}", config.display());
    let vm = |args: &[&str]| {
        let mut a: Vec<&str> = vec![&flag];
        a.extend_from_slice(&args[..1]);
        a.extend(["--annotation", "io.ironcell.sandbox=vm"]);
        a.extend_from_slice(&args[1..]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let ok = |args: &[&str]| p.ok(&vm(args).iter().map(String::as_str).collect::<Vec<_>>());
    let run = |args: &[&str]| p.run(&vm(args).iter().map(String::as_str).collect::<Vec<_>>());
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();

    // run --rm: the guest's kernel, and the exit code.
    let out = run(&["run", "--rm", IMAGE, "sh", "-c", "uname -r; exit 6"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let release = stdout(&out);
    assert!(
        release.trim().ends_with("-ironcell") && release.trim() != host_release,
        "{release}"
    );

    // -it: a terminal of the guest.
    let out = in_terminal(
        &p.cmd(
            &vm(&[
                "run",
                "--rm",
                "-it",
                IMAGE,
                "sh",
                "-c",
                "[ -t 0 ] && echo is-a-tty; tty; sleep 0.5",
            ])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ),
    );
    let text = stdout(&out);
    assert!(
        text.contains("is-a-tty") && text.contains("/dev/pts/0"),
        "{text} {}",
        stderr(&out)
    );

    // -v: a volume written inside the guest, read on the host.
    let vol = p.dir.path().join("vol");
    fs::create_dir(&vol).unwrap();
    let spec = format!("{}:/data", vol.display());
    ok(&[
        "run",
        "--rm",
        "-v",
        &spec,
        IMAGE,
        "sh",
        "-c",
        "echo from-the-guest > /data/f; uname -r > /data/k",
    ]);
    assert_eq!(
        fs::read_to_string(vol.join("f")).unwrap(),
        "from-the-guest\n"
    );
    assert_eq!(fs::read_to_string(vol.join("k")).unwrap(), release);

    // -m: the limit is the guest cgroup's, and enforced there.
    let seen = ok(&[
        "run",
        "--rm",
        "-m",
        "48m",
        IMAGE,
        "cat",
        "/sys/fs/cgroup/memory.max",
    ]);
    assert_eq!(seen.trim(), (48 * 1024 * 1024).to_string());
    let big = run(&[
        "run",
        "--rm",
        "-m",
        "48m",
        "--memory-swap",
        "48m",
        IMAGE,
        "sh",
        "-c",
        "exec dd if=/dev/zero of=/dev/shm/fill bs=1M count=128",
    ]);
    assert_eq!(
        big.status.code(),
        Some(137),
        "{} {}",
        stdout(&big),
        stderr(&big)
    );

    // exec, stop (SIGTERM reaches the guest's trap), kill.
    ok(&[
        "run",
        "-d",
        "--name",
        "vmsvc",
        IMAGE,
        "sh",
        "-c",
        "trap 'echo stopping; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(p.ok(&["exec", "vmsvc", "uname", "-r"]), release);
    let out = p.run(&["exec", "vmsvc", "sh", "-c", "echo exec-out; exit 3"]);
    assert_eq!(
        (out.status.code(), stdout(&out).trim()),
        (Some(3), "exec-out")
    );
    p.ok(&["stop", "-t", "20", "vmsvc"]);
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "vmsvc"])
            .trim(),
        "0"
    );
    assert!(p.ok(&["logs", "vmsvc"]).contains("stopping"));
    ok(&["run", "-d", "--name", "vmvictim", IMAGE, "sleep", "1000"]);
    p.ok(&["kill", "--signal", "KILL", "vmvictim"]);
    p.ok(&["wait", "vmvictim"]);
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "vmvictim"])
            .trim(),
        "137"
    );
    p.ok(&["rm", "vmsvc", "vmvictim"]);

    // podman's bridge network (CNI) reaches into the VM: the container
    // reaches a server on the host through the bridge's gateway, and the
    // host reaches the container's server at the container's address.
    let gateway = p
        .ok(&[
            "network",
            "inspect",
            "podman",
            "--format",
            "{{range .Subnets}}{{.Gateway}}{{end}}",
        ])
        .trim()
        .to_string();
    let host_server = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host_server.local_addr().unwrap().port();
    let served_host = std::thread::spawn(move || {
        let (mut conn, _) = host_server.accept().unwrap();
        std::io::Write::write_all(&mut conn, b"from-the-host\n").unwrap();
    });
    ok(&[
        "run",
        "-d",
        "--name",
        "vmnet",
        IMAGE,
        "sh",
        "-c",
        &format!("nc -w 30 {gateway} {port} </dev/null; echo guest-served | nc -l -p 7070"),
    ]);
    let address = p
        .ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            "vmnet",
        ])
        .trim()
        .to_string();
    served_host.join().unwrap();
    let start = std::time::Instant::now();
    let line = loop {
        let addr = format!("{address}:7070").parse().unwrap();
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)) {
            Ok(conn) => {
                let mut line = String::new();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                    .unwrap();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(conn), &mut line).unwrap();
                break line;
            }
            Err(e) => {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(60),
                    "the container's server at {address}:7070: {e}"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    assert_eq!(line.trim(), "guest-served");
    p.ok(&["wait", "vmnet"]);
    assert!(p.ok(&["logs", "vmnet"]).contains("from-the-host"));
    p.ok(&["rm", "vmnet"]);
    assert_no_vm_left(p.dir.path());
}
