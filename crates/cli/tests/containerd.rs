//! Real containerd 1.6 (Debian's) with its runc shim v2 (containerd-shim-
//! runc-v2) using ironcell as the runc binary (`ctr run --runc-binary`).

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const IMAGE: &str = "localhost/ironcell-test:latest";

/// A private containerd: its own root, state, sockets and config; stopped
/// with everything it started when the test ends.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Option<Containerd> {
        if !need_root("containerd") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ironcell-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"{sock}.debug\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("c.sock").display(),
            ),
        )
        .unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd is not installed: run `make setup`");
        let c = Containerd { dir, child };
        let start = Instant::now();
        while !c.run(&["version"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let archive = image().join("ironcell-test.docker.tar");
        c.ok(&["images", "import", archive.to_str().unwrap()]);
        Some(c)
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc-root")
    }

    /// ironcell's state root for containerd's default namespace.
    fn ironcell_root(&self) -> PathBuf {
        self.runc_root().join("default")
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(args);
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ctr(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(self.ctr(args))
    }

    /// `ctr run` with ironcell as the runc binary.
    fn run_args<'a>(&'a self, extra: &[&'a str], rest: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into(), "--runc-binary".into()];
        v.push(ironcell().to_str().unwrap().into());
        v.push("--runc-root".into());
        v.push(self.runc_root().to_str().unwrap().into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(IMAGE.into());
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    fn task_status(&self, id: &str) -> String {
        self.ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            .unwrap_or_default()
    }

    fn wait_task(&self, id: &str, status: &str) {
        let start = Instant::now();
        while self.task_status(id) != status {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "task {id} never {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in ["fg", "exit3", "svc", "tty", "stdin"] {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]).output();
            let _ = self.ctr(&["task", "delete", "-f", id]).output();
            let _ = self.ctr(&["container", "rm", id]).output();
        }
        terminate(&mut self.child);
        unmount_below(self.dir.path());
    }
}

fn ctr_ok(c: &Containerd, args: &[String]) -> String {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ok(&a)
}

#[test]
fn containerd_runc_shim_drives_ironcell() {
    let Some(c) = Containerd::start() else { return };

    // Foreground run: output and exit status come back through the shim.
    let out = ctr_ok(
        &c,
        &c.run_args(&["--rm"], &["fg", "sh", "-c", "echo hello via containerd"]),
    );
    assert_eq!(out.trim(), "hello via containerd");
    let a = c.run_args(&["--rm"], &["exit3", "sh", "-c", "exit 3"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(c.run(&a).status.code(), Some(3));

    // Detached task: ironcell holds its state; exec, ps, pause/resume,
    // metrics and kill go through the shim to ironcell.
    let marker = "4444441";
    ctr_ok(
        &c,
        &c.run_args(
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
            .arg(c.ironcell_root())
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
    let args = c.run_args(
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
    let args = c.run_args(&["--rm"], &["stdin", "sh", "-c", "read x; echo got:$x"]);
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
    let left: Vec<_> = fs::read_dir(c.ironcell_root())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "ironcell state left: {left:?}");
}
