//! A daemon of the test's own, and ttrpc helpers, for the tests that talk
//! to ironcelld's Task API without containerd.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use ironcell_testutil::*;
use ttrpc::Code;

pub struct Daemon {
    pub child: Child,
    pub root: tempfile::TempDir,
}

impl Daemon {
    pub fn start() -> Daemon {
        let root = tempfile::Builder::new()
            .prefix("icd-")
            .tempdir_in("/tmp")
            .unwrap();
        let child = start_daemon(Path::new(env!("CARGO_BIN_EXE_ironcelld")), root.path());
        let start = Instant::now();
        while UnixStream::connect(root.path().join("control.sock")).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "no daemon");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, root }
    }

    /// The Task API address for namespace "default".
    pub fn endpoint(&self) -> String {
        let mut c = UnixStream::connect(self.root.path().join("control.sock")).unwrap();
        c.write_all(
            b"{\"register\":{\"namespace\":\"default\",\"id\":\"t\",\"containerd\":\"/nonexistent/c.sock.ttrpc\"}}\n",
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["address"].as_str().unwrap().to_string()
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Kills the daemon (SIGKILL; its keeper stays) and starts another on
    /// the same root.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.root.path().join("control.sock"));
        self.child = start_daemon(Path::new(env!("CARGO_BIN_EXE_ironcelld")), self.root.path());
        let start = Instant::now();
        while UnixStream::connect(self.root.path().join("control.sock")).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "no daemon");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    /// Kills the daemon, its keeper and their children (pod processes),
    /// even when an assertion failed.
    fn drop(&mut self) {
        drop(DaemonGuard(self.root.path().to_path_buf()));
        let _ = self.child.wait();
    }
}

pub fn ctx(ns: Option<&str>) -> ttrpc::context::Context {
    let mut md = HashMap::new();
    if let Some(ns) = ns {
        md.insert(
            "containerd-namespace-ttrpc".to_string(),
            vec![ns.to_string()],
        );
    }
    let mut c = ttrpc::context::with_metadata(md);
    c.timeout_nano = Duration::from_secs(20).as_nanos() as i64;
    c
}

pub fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}
