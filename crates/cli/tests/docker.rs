//! Real dockerd (Debian's docker.io 20.10) with ironcell added as a runtime
//! (`dockerd --add-runtime ironcell=<path>`, `docker run --runtime ironcell`).

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const IMAGE: &str = "localhost/ironcell-test:latest";
/// Debian's client, matching the daemon (a newer client may be first in PATH).
const DOCKER: &str = "/usr/bin/docker";

struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Dockerd {
    fn start() -> Option<Dockerd> {
        Self::start_with(&[])
    }

    /// dockerd with ironcell and `runtimes` (name, path) added.
    fn start_with(runtimes: &[(&str, PathBuf)]) -> Option<Dockerd> {
        if !need_root("docker") {
            return None;
        }
        assert!(
            PathBuf::from(DOCKER).exists(),
            "docker.io is not installed: run `make setup`"
        );
        let dir = tempfile::Builder::new()
            .prefix("ironcell-docker-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let log = fs::File::create(d.join("dockerd.log")).unwrap();
        let child =
            Command::new("dockerd")
                .arg("--host")
                .arg(format!("unix://{}", d.join("d.sock").display()))
                .arg("--data-root")
                .arg(d.join("root"))
                .arg("--exec-root")
                .arg(d.join("exec"))
                .arg("--pidfile")
                .arg(d.join("d.pid"))
                .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
                .arg("--add-runtime")
                .arg(format!("ironcell={}", ironcell().display()))
                .args(runtimes.iter().flat_map(|(n, p)| {
                    ["--add-runtime".to_string(), format!("{n}={}", p.display())]
                }))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("dockerd is not installed: run `make setup`");
        let dk = Dockerd { dir, child };
        let start = Instant::now();
        while !dk.run(&["version"]).status.success() {
            if start.elapsed() > Duration::from_secs(60) {
                panic!(
                    "dockerd did not start: {}",
                    fs::read_to_string(dk.dir.path().join("dockerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        dk.ok(&[
            "load",
            "-i",
            image().join("ironcell-test.docker.tar").to_str().unwrap(),
        ]);
        Some(dk)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("d.sock").display()
            ))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(self.cmd(args))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.run(&["ps", "-aq"]);
        for id in stdout(&ids).split_whitespace() {
            let _ = self.run(&["rm", "-f", id]);
        }
        terminate(&mut self.child);
        unmount_below(self.dir.path());
    }
}

#[test]
fn docker_runs_containers_with_ironcell() {
    let Some(d) = Dockerd::start() else { return };
    let base = ["run", "--runtime", "ironcell", "--network", "none"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }

    assert_eq!(
        d.ok(&with(&base, &["--rm", IMAGE, "echo", "hello via docker"]))
            .trim(),
        "hello via docker"
    );
    assert_eq!(
        d.run(&with(&base, &["--rm", IMAGE, "sh", "-c", "exit 5"]))
            .status
            .code(),
        Some(5)
    );

    let marker = "4545451";
    let script = format!("trap 'exit 0' TERM; : {marker}; while true; do sleep 0.1; done");
    let id = d.ok(&with(
        &base,
        &["-d", "--name", "svc", IMAGE, "sh", "-c", &script],
    ));
    let id = id.trim();
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.HostConfig.Runtime}}", "svc"])
            .trim(),
        "ironcell"
    );
    // dockerd's containerd shim keeps the runtime's state under the exec
    // root (docker 20.10 names that directory runtime-runc for every
    // runc-compatible runtime); ironcell's own state there proves it ran.
    let root = d.dir.path().join("exec/runtime-runc/moby");
    let st = Command::new(ironcell())
        .arg("--root")
        .arg(&root)
        .args(["state", id])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "no ironcell state under {}: {}",
        root.display(),
        stderr(&st)
    );

    let out = d.run(&["exec", "svc", "sh", "-c", "echo exec-ok; exit 6"]);
    assert_eq!(stdout(&out).trim(), "exec-ok");
    assert_eq!(out.status.code(), Some(6));
    assert!(d.ok(&["top", "svc"]).contains(marker));
    d.ok(&["pause", "svc"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "svc"]).trim(),
        "paused"
    );
    d.ok(&["unpause", "svc"]);

    let t = Instant::now();
    d.ok(&["stop", "-t", "20", "svc"]);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stop waited for the timeout"
    );
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "svc"])
            .trim(),
        "0"
    );

    d.ok(&with(
        &base,
        &["-d", "--name", "victim", IMAGE, "sleep", "4545452"],
    ));
    d.ok(&["kill", "victim"]);
    assert_eq!(d.ok(&["wait", "victim"]).trim(), "137");

    // Memory limit from docker run -m reaches the container's cgroup.
    let path = if cgroup_v2_only() {
        "/sys/fs/cgroup/memory.max"
    } else {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    assert_eq!(
        d.ok(&with(&base, &["--rm", "-m", "48m", IMAGE, "cat", path]))
            .trim(),
        (48 * 1024 * 1024).to_string()
    );

    d.ok(&["rm", "svc", "victim"]);
    assert!(processes_with(marker).is_empty());
    assert!(processes_with("4545452").is_empty());
    let left: Vec<_> = fs::read_dir(&root)
        .map(|x| x.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "ironcell state left: {left:?}");
}

/// The vm sandbox through docker: a runtime added with `--add-runtime`
/// that runs ironcell with `--sandbox vm` and a configuration that boots
/// VMs under QEMU with TCG. (Docker 24 and later pass `--annotation
/// io.ironcell.sandbox=vm` through to the runtime; Debian 12's docker 20.10
/// has no such flag, so a runtime of its own selects the sandbox.)
#[test]
fn docker_runs_containers_in_vms() {
    use ironcell_testutil::vm::{assert_no_vm_left, qemu_config, qemu_guest, vm_runtime_wrapper};
    let Some(g) = qemu_guest("docker_runs_containers_in_vms") else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("ironcell-docker-vm-")
        .tempdir()
        .unwrap();
    let config = qemu_config(dir.path(), &g, "");
    // dockerd's --add-runtime takes no arguments for the runtime: a
    // wrapper adds them.
    let wrapper = vm_runtime_wrapper(dir.path(), &ironcell(), &config);
    let Some(d) = Dockerd::start_with(&[("ironcell-vmtest", wrapper)]) else {
        return;
    };
    let base = ["run", "--runtime", "ironcell-vmtest", "--network", "none"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();

    let out = d.run(&with(
        &base,
        &["--rm", IMAGE, "sh", "-c", "uname -r; exit 5"],
    ));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let release = stdout(&out);
    assert!(
        release.trim().ends_with("-ironcell") && release.trim() != host_release,
        "{release}"
    );

    d.ok(&with(
        &base,
        &[
            "-d",
            "--name",
            "vmsvc",
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
    ));
    let out = d.run(&["exec", "vmsvc", "sh", "-c", "uname -r; exit 6"]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(6), release.clone())
    );
    d.ok(&["pause", "vmsvc"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "vmsvc"])
            .trim(),
        "paused"
    );
    d.ok(&["unpause", "vmsvc"]);
    d.ok(&["stop", "-t", "20", "vmsvc"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "vmsvc"])
            .trim(),
        "0"
    );
    d.ok(&with(
        &base,
        &["-d", "--name", "vmvictim", IMAGE, "sleep", "1000"],
    ));
    d.ok(&["kill", "vmvictim"]);
    assert_eq!(d.ok(&["wait", "vmvictim"]).trim(), "137");
    d.ok(&["rm", "vmsvc", "vmvictim"]);
    assert_no_vm_left(dir.path());
}
