//! A private containerd for one test: its own root, state, sockets and
//! config, the test image imported, and everything it started stopped when
//! the test ends.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{image, need_root, run_ok, terminate, unmount_below};

/// The test image's name once imported.
pub const IMAGE: &str = "localhost/ironcell-test:latest";

#[derive(Default)]
pub struct Options {
    /// The containerd binary (default: `containerd` from PATH).
    pub binary: Option<PathBuf>,
    /// TOML appended to the generated config (version 2, or 3 with
    /// `version3`).
    pub extra_config: String,
    /// Write a version 3 config (containerd 2.x's own form).
    pub version3: bool,
    /// Keep the CRI plugin (disabled by default).
    pub cri: bool,
    /// Environment for containerd and so for the shims it starts.
    pub env: Vec<(String, OsString)>,
    /// Directories put first on containerd's PATH (where it finds shims).
    pub path: Vec<PathBuf>,
}

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// How containerd was started, to start it again.
    cmd: Command,
}

impl Containerd {
    /// Starts containerd and imports the test image; `None` (after a loud
    /// notice) when the tests do not run as root.
    pub fn start(opts: Options) -> Option<Containerd> {
        if !need_root("containerd") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ironcell-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let config = d.join("config.toml");
        let disabled = if opts.cri {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        fs::write(
            &config,
            format!(
                "version = {version}\nroot = \"{root}\"\nstate = \"{state}\"\n{disabled}\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"{sock}.debug\"\n{extra}\n",
                version = if opts.version3 { 3 } else { 2 },
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("c.sock").display(),
                extra = opts.extra_config,
            ),
        )
        .unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let mut cmd = Command::new(opts.binary.as_deref().unwrap_or(Path::new("containerd")));
        cmd.arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !opts.path.is_empty() {
            let mut path: Vec<PathBuf> = opts.path.clone();
            path.extend(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            ));
            cmd.env("PATH", std::env::join_paths(path).unwrap());
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .expect("containerd is not installed: run `make setup`");
        let c = Containerd { dir, child, cmd };
        c.wait_ready();
        c.import("default");
        Some(c)
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while !self.run(&["version"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd (SIGTERM) and starts it again on the same state.
    pub fn restart(&mut self) {
        terminate(&mut self.child);
        let log = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .unwrap();
        self.cmd.stdout(log.try_clone().unwrap()).stderr(log);
        self.child = self.cmd.spawn().expect("containerd restart");
        self.wait_ready();
    }

    /// Imports the test image into `namespace`.
    pub fn import(&self, namespace: &str) {
        let archive = image().join("ironcell-test.docker.tar");
        self.ok(&[
            "-n",
            namespace,
            "images",
            "import",
            archive.to_str().unwrap(),
        ]);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's ttrpc socket (where shims send events).
    pub fn ttrpc_socket(&self) -> PathBuf {
        self.dir.path().join("c.sock.ttrpc")
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.socket()).args(args);
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.ctr(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(self.ctr(args))
    }

    /// The status column of `ctr task ls` for `id` ("" when absent).
    pub fn task_status(&self, id: &str) -> String {
        self.ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            .unwrap_or_default()
    }

    pub fn wait_task(&self, id: &str, status: &str) {
        let start = Instant::now();
        while self.task_status(id) != status {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "task {id} never {status} (now {:?})",
                self.task_status(id)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ids(&self, what: &str) -> Vec<String> {
        let out = self.run(&[what, "ls", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.ids("task") {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]).output();
            let _ = self.ctr(&["task", "delete", "-f", &id]).output();
        }
        for id in self.ids("container") {
            let _ = self.ctr(&["container", "rm", &id]).output();
        }
        terminate(&mut self.child);
        unmount_below(self.dir.path());
    }
}
