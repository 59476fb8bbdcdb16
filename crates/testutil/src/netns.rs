//! Network namespaces for the pod-networking tests: `ip` and `tc` run in
//! them, named namespaces (and processes serving in them) removed when the
//! test ends, and work done on a thread that joined one.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command};

/// Runs `ip ARGS`, which must succeed; returns its output.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tc ARGS` in namespace `netns`; its output (empty on failure).
pub fn tc(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "tc"])
        .args(args)
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The path of named namespace `netns`.
pub fn path(netns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(netns)
}

/// Named network namespaces, made by [`Netns::add`], and processes started
/// in them ([`Netns::serve`]); all removed when dropped.
#[derive(Default)]
pub struct Netns {
    names: Vec<String>,
    servers: Vec<Child>,
}

impl Netns {
    /// Makes namespace `name`.
    pub fn add(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.names.push(name.to_string());
    }

    /// Keeps `child` (a server in one of the namespaces) until
    /// [`Netns::stop_servers`] or the end.
    pub fn serve(&mut self, child: Child) {
        self.servers.push(child);
    }

    pub fn stop_servers(&mut self) {
        for mut c in self.servers.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop_servers();
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs `f` on a thread that joined namespace `netns`.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path(netns)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns of this thread only, on an fd it holds.
            let joined = unsafe { nix::libc::setns(ns.as_raw_fd(), nix::libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}
