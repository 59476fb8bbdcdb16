//! Helpers shared by the integration tests: the bundled test image, bundles
//! made from it, a private state root, and checks that nothing was left
//! behind (state directory, cgroup, mount, process).
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use ironcell_testutil::*;

pub fn ironcell() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ironcell"))
}

/// A private state root and bundle directory for one test.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ironcell-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        Env { dir, root }
    }

    /// A command `ironcell --root <root> ARGS`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ironcell());
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs to completion. Output goes through files, not pipes: a created
    /// container inherits ironcell's stdio and would hold a pipe open.
    pub fn run(&self, args: &[&str]) -> Output {
        output_via_files(&mut self.cmd(args))
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ironcell {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts failure with a one-line error containing `want`.
    pub fn fails(&self, args: &[&str], want: &str) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "ironcell {args:?} should fail, stdout {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(out.status.code(), Some(1), "exit code of {args:?}: {err}");
        assert!(
            err.contains(want),
            "ironcell {args:?}: want {want:?} in {err:?}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        err
    }

    /// A bundle whose config.json is the test image's with `edit` applied.
    /// The cgroup path is set to /ironcell-test/<id> so leftovers can be
    /// checked.
    pub fn bundle(&self, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let src = image().join("bundle");
        let dst = self.dir.path().join(name);
        fs::create_dir_all(&dst).unwrap();
        let mut config: Value =
            serde_json::from_str(&fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
        config["root"]["path"] = json!(image().join("rootfs"));
        config["linux"]["cgroupsPath"] = json!(format!("/ironcell-test/{name}"));
        edit(&mut config);
        fs::write(
            dst.join("config.json"),
            serde_json::to_string_pretty(&config).unwrap(),
        )
        .unwrap();
        dst
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Waits until container `id` reports `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.status(id) == status {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("container {id} never became {status}: {}", self.status(id));
    }
}

impl Drop for Env {
    /// A failed test must not leave containers running for the next one.
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            let _ = self
                .cmd(&["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Sets the container's command.
pub fn args(config: &mut Value, args: &[&str]) {
    config["process"]["args"] = json!(args);
}

/// Asserts that nothing of container `id` (created with [`Env::bundle`]
/// named `id`) is left: no state directory, no cgroup in any hierarchy, no
/// process whose command line carries `marker`, no mount under the bundle.
pub fn assert_no_leftovers(env: &Env, id: &str, marker: Option<&str>) {
    assert!(!env.root.join(id).exists(), "state dir of {id} left behind");
    for dir in cgroup_dirs() {
        let p = dir.join("ironcell-test").join(id);
        assert!(!p.exists(), "cgroup {} left behind", p.display());
    }
    if let Some(marker) = marker {
        let start = Instant::now();
        loop {
            let procs = processes_with(marker);
            if procs.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "processes with {marker:?} left behind: {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bundle = env.dir.path().join(id);
    assert!(
        !mounts.contains(bundle.to_str().unwrap()),
        "mount under {} left behind",
        bundle.display()
    );
}

/// Every cgroup hierarchy root mounted on this host (v1 controllers and v2).
pub fn cgroup_dirs() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype == "cgroup" || fstype == "cgroup2" {
                pre.split_whitespace().nth(4).map(PathBuf::from)
            } else {
                None
            }
        })
        .collect()
}

pub fn cgroup_v2_only() -> bool {
    cgroup_dirs().iter().all(|d| {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(&format!(" {} ", d.display())) && l.contains(" - cgroup2 "))
    })
}

/// Polls `f` every 20 ms until it holds (20 s at most).
pub fn wait_until(mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "condition never met"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
