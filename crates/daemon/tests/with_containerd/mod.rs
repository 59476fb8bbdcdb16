//! containerd 1.6 with ironcell's shim on its PATH and a private daemon
//! root: what the tests that drive ironcelld through `ctr` share.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironcell_testutil::containerd::{Containerd, Options, IMAGE};
use ironcell_testutil::*;

pub const RUNTIME: &str = "io.containerd.ironcell.v2";

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ironcelld"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// containerd with ironcell's shim on its PATH and a private daemon root.
pub struct Setup {
    pub c: Option<Containerd>,
    pub root: PathBuf,
}

impl Setup {
    pub fn start() -> Option<Setup> {
        Self::start_with_env(Vec::new())
    }

    /// [`Setup::start`] with more environment for containerd, and so for
    /// the shim and the daemon it starts.
    pub fn start_with_env(mut env: Vec<(String, OsString)>) -> Option<Setup> {
        let root_dir = tempfile::Builder::new()
            .prefix("icd-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        env.push(("IRONCELLD_ROOT".into(), OsString::from(&root_dir)));
        let c = Containerd::start(Options {
            path: vec![bin_dir()],
            env,
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
    pub fn start_by_hand() -> Option<(Setup, std::process::Child)> {
        let s = Setup::start()?;
        let d = start_daemon(Path::new(env!("CARGO_BIN_EXE_ironcelld")), &s.root);
        wait_for_new_daemon(&s.root, &[], Duration::from_secs(10));
        Some((s, d))
    }

    pub fn run_args<'a>(&self, extra: &[&'a str], rest: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into(), "--runtime".into(), RUNTIME.into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(IMAGE.into());
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    pub fn c(&self) -> &Containerd {
        self.c.as_ref().unwrap()
    }

    pub fn c_mut(&mut self) -> &mut Containerd {
        self.c.as_mut().unwrap()
    }

    pub fn ctr_ok(&self, args: &[String]) -> String {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c().ok(&a)
    }

    /// Pids of ironcelld daemons serving this test's root.
    pub fn daemons(&self) -> Vec<i32> {
        ironcelld_processes(&self.root, false)
    }

    /// Pids of the keeper of this test's root.
    pub fn keepers(&self) -> Vec<i32> {
        ironcelld_processes(&self.root, true)
    }

    pub fn daemon_log(&self) -> String {
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
        // What a failed test left of its tasks: their processes name the
        // root (a vm container's relay, whose VM dies with it).
        kill_all(
            processes_with(&format!("--root {}", self.root.display())),
            nix::sys::signal::Signal::SIGKILL,
        );
        if std::thread::panicking() {
            // The daemon's and the keeper's logs outlive a failed test.
            for log in ["ironcelld.log", "keeper.log"] {
                let kept = std::env::temp_dir().join(format!(
                    "{}-{log}",
                    self.root.file_name().unwrap().to_string_lossy()
                ));
                if std::fs::copy(self.root.join(log), &kept).is_ok() {
                    eprintln!("kept {}", kept.display());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn kill_all(pids: Vec<i32>, sig: nix::sys::signal::Signal) {
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

pub fn stop_daemon(s: &Setup) {
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
