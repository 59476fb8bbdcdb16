//! The OCI spec features of the namespace sandbox, checked on real
//! containers run through the `ironcell` binary: namespaces (new and joined
//! by path), rootfs and mounts, devices, cgroup resources (v1 here, v2
//! equivalents when /sys/fs/cgroup is cgroup2, and a real v2 hierarchy in a
//! private mount namespace), process settings and seccomp. Each container
//! prints `key=value` facts that are checked against the spec and, where
//! possible, against the host's view.

mod common;
use common::*;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

/// `key=value` lines of a container's output (the last one wins).
fn facts(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && !k.contains(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn fact<'a>(f: &'a HashMap<String, String>, key: &str, out: &str) -> &'a str {
    f.get(key)
        .unwrap_or_else(|| panic!("no {key}= in the container's output:\n{out}"))
}

/// One line of a /proc/mounts table.
#[derive(Debug, Clone)]
struct MountLine {
    source: String,
    target: String,
    fstype: String,
    options: Vec<String>,
}

/// The /proc/mounts lines a container printed after a `===mounts` line.
fn mounts_after_marker(out: &str) -> Vec<MountLine> {
    out.lines()
        .skip_while(|l| *l != "===mounts")
        .skip(1)
        .take_while(|l| !l.starts_with("==="))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| MountLine {
                source: f[0].to_string(),
                target: f[1].to_string(),
                fstype: f[2].to_string(),
                options: f[3].split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// The last mount on `target` (the one a path resolves to).
fn mount_at<'a>(mounts: &'a [MountLine], target: &str) -> &'a MountLine {
    mounts
        .iter()
        .rev()
        .find(|m| m.target == target)
        .unwrap_or_else(|| panic!("nothing mounted on {target}: {mounts:#?}"))
}

/// Whether /sys/fs/cgroup itself is a cgroup2 mount (unified hierarchy).
fn cgroup_unified() -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .rfind(|(pre, _)| pre.split_whitespace().nth(4) == Some("/sys/fs/cgroup"))
        .is_some_and(|(_, post)| post.starts_with("cgroup2 "))
}

/// The cgroup file `file` of container `id` (made by [`Env::bundle`]) in
/// v1 controller `controller`, or in the unified hierarchy on v2.
fn cgroup_file(controller: &str, id: &str, file: &str) -> PathBuf {
    let base = Path::new("/sys/fs/cgroup");
    if cgroup_unified() {
        base.join("ironcell-test").join(id).join(file)
    } else {
        base.join(controller)
            .join("ironcell-test")
            .join(id)
            .join(file)
    }
}

fn read_trim(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn host_ns(kind: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .to_string()
}

/// `ironcell run` in the foreground; returns the output.
fn run_fg(env: &Env, bundle: &Path, id: &str) -> Output {
    env.run(&["run", "-b", bundle.to_str().unwrap(), id])
}

/// `ironcell run` in the foreground, which must succeed; returns stdout.
fn run_ok(env: &Env, bundle: &Path, id: &str) -> String {
    let out = run_fg(env, bundle, id);
    assert!(
        out.status.success(),
        "container {id} failed ({}): stdout {} stderr {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn sh(config: &mut Value, script: &str) {
    args(config, &["/bin/sh", "-c", script]);
}

fn push_mount(config: &mut Value, mount: Value) {
    config["mounts"].as_array_mut().unwrap().push(mount);
}

fn tmpfs_at(dest: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": options})
}

/// A SysV message queue on the host, removed on drop.
struct HostMsgQueue(i32);

impl HostMsgQueue {
    fn new() -> HostMsgQueue {
        // SAFETY: msgget takes plain integers.
        let id = unsafe { nix::libc::msgget(nix::libc::IPC_PRIVATE, nix::libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "msgget: {}", std::io::Error::last_os_error());
        HostMsgQueue(id)
    }
}

impl Drop for HostMsgQueue {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID ignores the buffer argument.
        unsafe { nix::libc::msgctl(self.0, nix::libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// A tmpfs mounted on the host, lazily unmounted on drop.
struct HostTmpfs(PathBuf);

impl HostTmpfs {
    fn mount(at: &Path) -> HostTmpfs {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "ironcell-test-sub"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", at.display());
        HostTmpfs(at.to_path_buf())
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn new_namespaces_isolate_the_container() {
    if !need_root("new_namespaces_isolate_the_container") {
        return;
    }
    let env = Env::new();
    let id = "ns-iso";
    let queue = HostMsgQueue::new();
    let host_queues = fs::read_to_string("/proc/sysvipc/msg").unwrap();
    assert!(
        host_queues.lines().count() >= 2,
        "host queue not listed: {host_queues}"
    );
    let host_hostname = read_trim("/proc/sys/kernel/hostname");
    let host_domainname = read_trim("/proc/sys/kernel/domainname");

    let b = env.bundle(id, |c| {
        c["hostname"] = json!("ns-host");
        c["domainname"] = json!("ns-domain");
        sh(
            c,
            "echo pid=$$
             ps -o pid,comm > /dev/shm/ps; sed 's/^ */ps /' /dev/shm/ps
             echo hostname=$(hostname)
             echo domainname=$(cat /proc/sys/kernel/domainname)
             echo netdevs=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,)
             echo msgqueues=$(tail -n +2 /proc/sysvipc/msg | wc -l)
             for n in pid net ipc uts mnt user cgroup; do echo ns_$n=$(readlink /proc/self/ns/$n); done",
        );
    });
    let out = run_ok(&env, &b, id);
    let f = facts(&out);

    // pid: the shell is pid 1 and `ps` sees nothing but itself and the shell.
    assert_eq!(fact(&f, "pid", &out), "1");
    let ps: Vec<(u32, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("ps "))
        .filter_map(|l| {
            let (pid, comm) = l.trim().split_once(' ')?;
            Some((pid.parse().ok()?, comm.trim().to_string()))
        })
        .collect();
    assert_eq!(ps.len(), 2, "processes seen inside: {ps:?}\n{out}");
    assert_eq!(ps[0], (1, "sh".to_string()), "{out}");
    assert_eq!(ps[1].1, "ps", "{out}");

    // uts: the spec's names inside, the host's untouched.
    assert_eq!(fact(&f, "hostname", &out), "ns-host");
    assert_eq!(fact(&f, "domainname", &out), "ns-domain");
    assert_eq!(read_trim("/proc/sys/kernel/hostname"), host_hostname);
    assert_eq!(read_trim("/proc/sys/kernel/domainname"), host_domainname);

    // net: a fresh namespace has only the loopback device (the host has more).
    assert_eq!(fact(&f, "netdevs", &out), "lo,");

    // ipc: the host's message queue is not visible.
    assert_eq!(fact(&f, "msgqueues", &out), "0");
    drop(queue);

    // Namespaces asked for are new; those not asked for are the host's.
    for kind in ["pid", "net", "ipc", "uts", "mnt"] {
        let inside = fact(&f, &format!("ns_{kind}"), &out);
        assert!(inside.starts_with(&format!("{kind}:[")), "{inside}");
        assert_ne!(inside, host_ns(kind), "{kind} namespace is the host's");
    }
    for kind in ["user", "cgroup"] {
        assert_eq!(
            fact(&f, &format!("ns_{kind}"), &out),
            host_ns(kind),
            "{kind} namespace not asked for but new"
        );
    }
    assert_no_leftovers(&env, id, None);
}

#[test]
fn joining_existing_namespaces_by_path() {
    if !need_root("joining_existing_namespaces_by_path") {
        return;
    }
    let env = Env::new();
    let a = "ns-join-a";
    let marker = "4243201";
    let ba = env.bundle(a, |c| {
        c["hostname"] = json!("ns-a");
        args(c, &["/bin/sleep", marker]);
    });
    env.ok(&["run", "-d", "-b", ba.to_str().unwrap(), a]);
    let pid = env.state(a)["pid"].as_i64().unwrap();
    let a_ns = |kind: &str| {
        fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .to_string_lossy()
            .to_string()
    };
    // exec enters A's namespaces: the same links as A's init.
    let exec_net = env.ok(&["exec", a, "readlink", "/proc/self/ns/net"]);
    assert_eq!(exec_net.trim(), a_ns("net"));
    assert_ne!(a_ns("net"), host_ns("net"));

    let b = "ns-join-b";
    let bb = env.bundle(b, |c| {
        // Joining A's uts namespace: B must not set a hostname of its own.
        c.as_object_mut().unwrap().remove("hostname");
        c["linux"]["namespaces"] = json!([
            {"type": "pid"},
            {"type": "network", "path": format!("/proc/{pid}/ns/net")},
            {"type": "ipc"},
            {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
            {"type": "mount"},
        ]);
        sh(
            c,
            "echo hostname=$(hostname)
             echo netdevs=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,)
             for n in pid net ipc uts mnt; do echo ns_$n=$(readlink /proc/self/ns/$n); done",
        );
    });
    let out = run_ok(&env, &bb, b);
    let f = facts(&out);
    assert_eq!(fact(&f, "hostname", &out), "ns-a", "B sees A's hostname");
    assert_eq!(fact(&f, "netdevs", &out), "lo,");
    for kind in ["net", "uts"] {
        assert_eq!(
            fact(&f, &format!("ns_{kind}"), &out),
            a_ns(kind),
            "{kind} joined"
        );
    }
    for kind in ["pid", "ipc", "mnt"] {
        let inside = fact(&f, &format!("ns_{kind}"), &out);
        assert_ne!(inside, a_ns(kind), "{kind} should be B's own");
        assert_ne!(inside, host_ns(kind), "{kind} should be B's own");
    }
    // A's hostname is still its own.
    assert_eq!(env.ok(&["exec", a, "hostname"]).trim(), "ns-a");
    assert_no_leftovers(&env, b, None);

    // A namespace path that does not exist fails the create cleanly.
    let bad = "ns-join-bad";
    let bbad = env.bundle(bad, |c| {
        c["linux"]["namespaces"] = json!([
            {"type": "pid"},
            {"type": "network", "path": "/proc/999999999/ns/net"},
            {"type": "mount"},
        ]);
    });
    let out = run_fg(&env, &bbad, bad);
    assert!(!out.status.success(), "joined a nonexistent namespace");
    assert_no_leftovers(&env, bad, None);

    env.ok(&["delete", "-f", a]);
    assert_no_leftovers(&env, a, Some(marker));
}

#[test]
fn rootfs_and_mounts_are_set_up_as_specified() {
    if !need_root("rootfs_and_mounts_are_set_up_as_specified") {
        return;
    }
    let env = Env::new();
    let id = "ns-mounts";
    // Host directories to bind (outside the bundle directory).
    let src = env.dir.path().join("hostsrc");
    let (ro, rw, rb) = (src.join("ro"), src.join("rw"), src.join("rb"));
    for d in [&ro, &rw, &rb] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(ro.join("file"), "ro-content\n").unwrap();
    // A submount in the rbind source: only a recursive bind carries it.
    let sub = HostTmpfs::mount(&rb.join("sub"));
    fs::write(rb.join("sub/file"), "sub-content\n").unwrap();

    // Masked /proc files that this kernel has (not all kernels have kcore).
    let masked_files: Vec<&str> = ["/proc/kcore", "/proc/timer_list", "/proc/keys"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    let mut script = String::from(
        "r=$(touch /x 2>&1); echo \"rootfs_write=$?:$r\"
         echo t > /tmp/t && echo tmp_write=$(cat /tmp/t)
         echo tmp_mode=$(stat -c %a /tmp)
         echo ro_read=$(cat /tmp/ro/file)
         r=$(touch /tmp/ro/new 2>&1); echo \"ro_write=$?:$r\"
         echo from-container > /tmp/rw/out; echo rw_write=$?
         echo rbind_sub=$(cat /tmp/rb/sub/file)
         echo bind_sub=$(ls -A /tmp/nb/sub | wc -l)
         echo masked_hostname=$(wc -c < /etc/hostname)
         echo firmware_entries=$(ls -A /sys/firmware | wc -l)
         r=$(touch /dev/shm/x 2>&1); echo \"shm_write=$?:$r\"
         r=$(sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward' 2>&1); echo \"procsys_write=$?:$r\"
         r=$(touch /sys/x 2>&1); echo \"sys_write=$?:$r\"
         echo mq_dir=$(stat -c %F /dev/mqueue)
         echo cgroup_entries=$(ls /sys/fs/cgroup | wc -l)
        ",
    );
    for p in &masked_files {
        script.push_str(&format!("echo masked:{p}=$(wc -c < {p} 2>&1)\n"));
    }
    script.push_str("echo ===mounts; cat /proc/mounts; echo ===end\n");
    let b = env.bundle(id, |c| {
        assert_eq!(c["root"]["readonly"], true);
        push_mount(
            c,
            tmpfs_at("/tmp", &["nosuid", "nodev", "size=8m", "mode=1770"]),
        );
        push_mount(
            c,
            json!({"destination": "/tmp/ro", "type": "bind", "source": ro, "options": ["bind", "ro"]}),
        );
        push_mount(
            c,
            json!({"destination": "/tmp/rw", "type": "bind", "source": rw, "options": ["bind", "rw"]}),
        );
        push_mount(
            c,
            json!({"destination": "/tmp/rb", "type": "bind", "source": rb, "options": ["rbind"]}),
        );
        push_mount(
            c,
            json!({"destination": "/tmp/nb", "type": "bind", "source": rb, "options": ["bind"]}),
        );
        c["linux"]["maskedPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/etc/hostname"));
        c["linux"]["readonlyPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/dev/shm"));
        sh(c, &script);
    });
    let out = run_ok(&env, &b, id);
    let f = facts(&out);
    let m = mounts_after_marker(&out);

    // Read-only root.
    let w = fact(&f, "rootfs_write", &out);
    assert!(
        w.starts_with("1:") && w.contains("Read-only file system"),
        "{w}"
    );
    let root = mount_at(&m, "/");
    assert_eq!(root.options[0], "ro", "{root:?}");

    // tmpfs with size= and mode=, writable.
    let tmp = mount_at(&m, "/tmp");
    assert_eq!(tmp.fstype, "tmpfs");
    for o in ["rw", "nosuid", "nodev", "size=8192k", "mode=1770"] {
        assert!(tmp.options.iter().any(|x| x == o), "{o} missing: {tmp:?}");
    }
    assert_eq!(fact(&f, "tmp_write", &out), "t");
    assert_eq!(fact(&f, "tmp_mode", &out), "1770");

    // Read-only bind: the host's file is visible, writing fails.
    assert_eq!(fact(&f, "ro_read", &out), "ro-content");
    let w = fact(&f, "ro_write", &out);
    assert!(
        w.starts_with("1:") && w.contains("Read-only file system"),
        "{w}"
    );
    assert_eq!(mount_at(&m, "/tmp/ro").options[0], "ro");
    assert!(!ro.join("new").exists());
    // Read-write bind: the write reaches the host.
    assert_eq!(fact(&f, "rw_write", &out), "0");
    assert_eq!(mount_at(&m, "/tmp/rw").options[0], "rw");
    assert_eq!(
        fs::read_to_string(rw.join("out")).unwrap(),
        "from-container\n"
    );
    // rbind carries the submount; a plain bind does not.
    assert_eq!(fact(&f, "rbind_sub", &out), "sub-content");
    assert_eq!(mount_at(&m, "/tmp/rb/sub").fstype, "tmpfs");
    assert_eq!(fact(&f, "bind_sub", &out), "0");
    assert!(!m.iter().any(|l| l.target == "/tmp/nb/sub"), "{m:#?}");

    // proc, sysfs (ro), devpts, shm, mqueue, cgroup.
    assert_eq!(mount_at(&m, "/proc").fstype, "proc");
    assert_eq!(mount_at(&m, "/proc").source, "proc");
    let sys = mount_at(&m, "/sys");
    assert_eq!(sys.fstype, "sysfs");
    assert_eq!(sys.options[0], "ro");
    let w = fact(&f, "sys_write", &out);
    assert!(w.starts_with("1:") && w.contains("Read-only"), "{w}");
    let pts = mount_at(&m, "/dev/pts");
    assert_eq!(pts.fstype, "devpts");
    for o in ["ptmxmode=666", "mode=620", "gid=5", "noexec"] {
        assert!(pts.options.iter().any(|x| x == o), "{o} missing: {pts:?}");
    }
    assert_eq!(mount_at(&m, "/dev").fstype, "tmpfs");
    assert_eq!(mount_at(&m, "/dev/shm").fstype, "tmpfs");
    assert_eq!(mount_at(&m, "/dev/shm").source, "shm");
    assert_eq!(mount_at(&m, "/dev/mqueue").fstype, "mqueue");
    assert_eq!(mount_at(&m, "/dev/mqueue").source, "mqueue");
    assert_eq!(fact(&f, "mq_dir", &out), "directory");
    if cgroup_unified() {
        assert_eq!(mount_at(&m, "/sys/fs/cgroup").fstype, "cgroup2");
    } else {
        assert_eq!(mount_at(&m, "/sys/fs/cgroup").fstype, "tmpfs");
        let mem = mount_at(&m, "/sys/fs/cgroup/memory");
        assert_eq!(mem.fstype, "cgroup");
        assert!(mem.options.iter().any(|o| o == "memory"), "{mem:?}");
    }
    let n: usize = fact(&f, "cgroup_entries", &out).parse().unwrap();
    assert!(n > 0, "/sys/fs/cgroup is empty inside");

    // Masked paths: files read empty, directories are empty.
    assert_eq!(fact(&f, "masked_hostname", &out), "0");
    assert_eq!(
        fs::read_to_string(image().join("rootfs/etc/hostname")).unwrap(),
        "ironcell\n",
        "the image's file is untouched"
    );
    for p in &masked_files {
        assert_eq!(fact(&f, &format!("masked:{p}"), &out), "0", "{p}");
        mount_at(&m, p);
    }
    if Path::new("/sys/firmware").exists() {
        assert_eq!(fact(&f, "firmware_entries", &out), "0");
        mount_at(&m, "/sys/firmware");
    }

    // Read-only paths: /proc/sys (spec default) and /dev/shm (added).
    let w = fact(&f, "procsys_write", &out);
    assert!(
        !w.starts_with("0:") && w.contains("Read-only file system"),
        "{w}"
    );
    assert_eq!(mount_at(&m, "/proc/sys").options[0], "ro");
    let w = fact(&f, "shm_write", &out);
    assert!(
        w.starts_with("1:") && w.contains("Read-only file system"),
        "{w}"
    );
    assert_eq!(mount_at(&m, "/dev/shm").options[0], "ro");

    drop(sub);
    assert_no_leftovers(&env, id, None);
}

#[test]
fn rootfs_propagation_is_applied() {
    if !need_root("rootfs_propagation_is_applied") {
        return;
    }
    let env = Env::new();
    // The rootfs sits on a shared mount of the host, as on a systemd host
    // (this host's own root may be private, where shared, slave and
    // private would all look alike): a bind of the image's rootfs under a
    // shared tmpfs, so each mode leaves its own tag on the container's root.
    let shared_parent = env.dir.path().join("shared-parent");
    let parent = HostTmpfs::mount(&shared_parent);
    let run_mount = |args: &[&str]| {
        let st = Command::new("mount").args(args).status().unwrap();
        assert!(st.success(), "mount {args:?}");
    };
    run_mount(&["--make-shared", shared_parent.to_str().unwrap()]);
    let rootfs = shared_parent.join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    run_mount(&[
        "--bind",
        image().join("rootfs").to_str().unwrap(),
        rootfs.to_str().unwrap(),
    ]);
    // The root mount's line in the container's mountinfo: optional fields
    // (shared:N, master:N, unbindable) come between field 6 and " - ".
    let root_tags = |propagation: &str| -> Vec<String> {
        let id = format!("ns-prop-{propagation}");
        let b = env.bundle(&id, |c| {
            c["root"]["path"] = json!(rootfs);
            c["linux"]["rootfsPropagation"] = json!(propagation);
            sh(c, "awk '$5 == \"/\"' /proc/self/mountinfo");
        });
        let out = run_ok(&env, &b, &id);
        assert_no_leftovers(&env, &id, None);
        let line = out
            .lines()
            .find(|l| l.contains(" - "))
            .unwrap_or_else(|| panic!("no root mount: {out}"));
        let (pre, _) = line.split_once(" - ").unwrap();
        pre.split_whitespace().skip(6).map(str::to_string).collect()
    };
    let is_shared = |tags: &[String]| tags.iter().any(|t| t.starts_with("shared:"));
    let is_slave = |tags: &[String]| tags.iter().any(|t| t.starts_with("master:"));
    let modes = [
        "shared",
        "rshared",
        "slave",
        "rslave",
        "",
        "private",
        "rprivate",
        "unbindable",
        "runbindable",
    ];
    let tags: Vec<(&str, Vec<String>)> = modes.iter().map(|m| (*m, root_tags(m))).collect();
    eprintln!("rootfs propagation -> root mount tags: {tags:?}");
    for (mode, tags) in &tags {
        match *mode {
            "shared" | "rshared" => {
                assert!(is_shared(tags) && !is_slave(tags), "{mode}: {tags:?}")
            }
            // runc's default, and what containerd writes for HostToContainer
            // mounts: the host's mounts reach the container, not the reverse.
            "rslave" | "" => assert!(is_slave(tags) && !is_shared(tags), "{mode:?}: {tags:?}"),
            // Non-recursive: "/" of the container's mount namespace becomes a
            // slave, the rootfs mount under it is made private to be
            // pivoted to; nothing of the container's reaches the host.
            "slave" | "private" | "rprivate" => assert!(tags.is_empty(), "{mode}: {tags:?}"),
            _ => assert!(tags.iter().any(|t| t == "unbindable"), "{mode}: {tags:?}"),
        }
    }

    // A bind mount's own propagation option (containerd's for a CRI mount
    // with Bidirectional or HostToContainer propagation) is applied to it.
    let volume = shared_parent.join("volume");
    fs::create_dir_all(&volume).unwrap();
    let mount_tags = |option: &str| -> Vec<String> {
        let id = format!("ns-mount-prop-{option}");
        let b = env.bundle(&id, |c| {
            push_mount(
                c,
                json!({"destination": "/mnt", "type": "bind", "source": volume,
                       "options": ["rbind", option]}),
            );
            sh(c, "awk '$5 == \"/mnt\"' /proc/self/mountinfo");
        });
        let out = run_ok(&env, &b, &id);
        assert_no_leftovers(&env, &id, None);
        let line = out
            .lines()
            .find(|l| l.contains(" - "))
            .unwrap_or_else(|| panic!("no /mnt mount: {out}"));
        let (pre, _) = line.split_once(" - ").unwrap();
        pre.split_whitespace().skip(6).map(str::to_string).collect()
    };
    let tags = mount_tags("rshared");
    assert!(is_shared(&tags), "rshared mount: {tags:?}");
    let tags = mount_tags("rslave");
    assert!(
        is_slave(&tags) && !is_shared(&tags),
        "rslave mount: {tags:?}"
    );
    let tags = mount_tags("rprivate");
    assert!(tags.is_empty(), "rprivate mount: {tags:?}");
    drop(parent);

    let id = "ns-prop-bogus";
    let b = env.bundle(id, |c| c["linux"]["rootfsPropagation"] = json!("bogus"));
    let out = run_fg(&env, &b, id);
    assert!(!out.status.success(), "bogus propagation accepted");
    assert!(
        stderr(&out).contains("linux.rootfsPropagation \"bogus\""),
        "{}",
        stderr(&out)
    );
    assert_no_leftovers(&env, id, None);
}

#[test]
fn devices_are_created_and_cgroup_enforced() {
    if !need_root("devices_are_created_and_cgroup_enforced") {
        return;
    }
    let env = Env::new();
    // c 1:240 is a minor the mem driver does not have: open fails with ENXIO
    // when the devices cgroup lets it through, EPERM when it does not.
    let devices = json!([
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/myzero", "type": "c", "major": 1, "minor": 5, "fileMode": 416, "uid": 1000, "gid": 100},
        {"path": "/dev/unassigned", "type": "c", "major": 1, "minor": 240, "fileMode": 438, "uid": 0, "gid": 0},
    ]);
    let script = "for d in null zero full random urandom tty pts/ptmx mynull myzero unassigned; do
           echo \"dev:$d=$(stat -c '%F %t:%T %a %u %g' /dev/$d)\"
         done
         for l in fd stdin stdout stderr ptmx; do echo \"link:$l=$(readlink /dev/$l)\"; done
         for d in shm pts mqueue; do echo \"dir:$d=$(stat -c %F /dev/$d)\"; done
         echo zero_read=$(head -c 5 /dev/zero | wc -c)
         echo urandom_read=$(head -c 7 /dev/urandom | wc -c)
         r=$( (echo x > /dev/full) 2>&1); echo \"full_write=$?:$r\"
         echo hi > /dev/mynull; echo mynull_write=$?
         r=$(head -c 3 /dev/myzero 2>&1); echo \"myzero_read=$?:$r\"
         r=$(cat /dev/unassigned 2>&1); echo \"unassigned=$?:$r\"
         echo null_write=$(echo x > /dev/null; echo $?)";

    let id = "ns-dev";
    let b = env.bundle(id, |c| {
        c["linux"]["devices"] = devices.clone();
        sh(c, script);
    });
    let out = run_ok(&env, &b, id);
    let f = facts(&out);
    let chr = "character special file";
    for (dev, want) in [
        ("null", "1:3 666 0 0"),
        ("zero", "1:5 666 0 0"),
        ("full", "1:7 666 0 0"),
        ("random", "1:8 666 0 0"),
        ("urandom", "1:9 666 0 0"),
        ("tty", "5:0 666 0 0"),
        ("pts/ptmx", "5:2 666 0 0"),
        ("mynull", "1:3 666 0 0"),
        ("myzero", "1:5 640 1000 100"),
        ("unassigned", "1:f0 666 0 0"),
    ] {
        assert_eq!(
            fact(&f, &format!("dev:{dev}"), &out),
            format!("{chr} {want}"),
            "/dev/{dev}"
        );
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        assert_eq!(
            fact(&f, &format!("link:{link}"), &out),
            target,
            "/dev/{link}"
        );
    }
    for d in ["shm", "pts", "mqueue"] {
        assert_eq!(fact(&f, &format!("dir:{d}"), &out), "directory", "/dev/{d}");
    }
    assert_eq!(fact(&f, "zero_read", &out), "5");
    assert_eq!(fact(&f, "urandom_read", &out), "7");
    let w = fact(&f, "full_write", &out);
    assert!(
        !w.starts_with("0:") && w.contains("No space left on device"),
        "{w}"
    );
    assert_eq!(fact(&f, "mynull_write", &out), "0");
    // Owned by 1000:100 with mode 0640: root without CAP_DAC_OVERRIDE is
    // "other" and may not read it.
    let r = fact(&f, "myzero_read", &out);
    assert!(
        r.starts_with("1:") && r.contains("Permission denied"),
        "{r}"
    );
    assert_eq!(fact(&f, "null_write", &out), "0");
    // The node exists but the devices cgroup (deny all + defaults) refuses it.
    let u = fact(&f, "unassigned", &out);
    assert!(
        u.starts_with("1:") && u.contains("Operation not permitted"),
        "{u}"
    );
    assert_no_leftovers(&env, id, None);

    // An allow rule in linux.resources.devices lets the open reach the driver.
    let id = "ns-dev-allow";
    let b = env.bundle(id, |c| {
        c["linux"]["devices"] = devices.clone();
        c["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"allow": true, "type": "c", "major": 1, "minor": 240, "access": "rw"}));
        sh(
            c,
            "r=$(cat /dev/unassigned 2>&1); echo \"unassigned=$?:$r\"
             echo rule=$(grep -c '^c 1:240 rw$' /sys/fs/cgroup/devices/devices.list 2>/dev/null)",
        );
    });
    let out = run_ok(&env, &b, id);
    let f = facts(&out);
    let u = fact(&f, "unassigned", &out);
    assert!(
        u.starts_with("1:") && u.contains("No such device or address"),
        "{u}"
    );
    if !cgroup_unified() {
        assert_eq!(fact(&f, "rule", &out), "1", "devices.list inside");
    }
    assert_no_leftovers(&env, id, None);
}

#[test]
fn cgroup_resources_are_written_and_enforced() {
    if !need_root("cgroup_resources_are_written_and_enforced") {
        return;
    }
    let env = Env::new();
    let v2 = cgroup_unified();
    let id = "ns-cg";
    let marker = "4243601";
    let limit: u64 = 48 << 20;
    // libcontainer writes blkio.weight, else blkio.bfq.weight, and fails the
    // create when neither exists: set a weight only where one will.
    let blkio_weight = !v2
        && fs::read_dir("/sys/fs/cgroup/blkio").is_ok_and(|d| {
            d.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n == "blkio.weight" || n.starts_with("blkio.bfq.")
            })
        });
    let b = env.bundle(id, |c| {
        c["linux"]["resources"]["memory"] =
            json!({"limit": limit, "swap": limit, "reservation": 32u64 << 20});
        c["linux"]["resources"]["pids"] = json!({"limit": 64});
        c["linux"]["resources"]["cpu"] =
            json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"});
        if blkio_weight {
            c["linux"]["resources"]["blockIO"] = json!({"weight": 500});
        }
        args(c, &["/bin/sleep", marker]);
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
    let pid = env.state(id)["pid"].as_i64().unwrap();
    let cg = |controller: &str, file: &str| read_trim(cgroup_file(controller, id, file));

    if v2 {
        assert_eq!(cg("memory", "memory.max"), limit.to_string());
        assert_eq!(cg("memory", "memory.low"), (32u64 << 20).to_string());
        // v2 counts swap alone: swap - limit.
        assert_eq!(cg("memory", "memory.swap.max"), "0");
        assert_eq!(cg("pids", "pids.max"), "64");
        assert_eq!(cg("cpu", "cpu.max"), "50000 100000");
        assert_eq!(cg("cpuset", "cpuset.cpus"), "0");
        assert!(cg("cpu", "cgroup.procs")
            .lines()
            .any(|l| l == pid.to_string()));
    } else {
        assert_eq!(cg("memory", "memory.limit_in_bytes"), limit.to_string());
        assert_eq!(
            cg("memory", "memory.soft_limit_in_bytes"),
            (32u64 << 20).to_string()
        );
        if cgroup_file("memory", id, "memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                cg("memory", "memory.memsw.limit_in_bytes"),
                limit.to_string()
            );
        }
        assert_eq!(cg("pids", "pids.max"), "64");
        assert_eq!(cg("cpu", "cpu.shares"), "512");
        assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(cg("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(cg("cpuset", "cpuset.cpus"), "0");
        if !blkio_weight {
            eprintln!("note: no blkio.weight or blkio.bfq.weight here; blkio weight not checked");
        } else if cgroup_file("blkio", id, "blkio.weight").exists() {
            assert_eq!(cg("blkio", "blkio.weight"), "500");
        } else if cgroup_file("blkio", id, "blkio.bfq.weight").exists() {
            // "default 500" (newer kernels) or "500".
            let w = cg("blkio", "blkio.bfq.weight");
            assert_eq!(w.split_whitespace().last(), Some("500"), "{w}");
        } else {
            panic!("blkio weight set but neither blkio.weight nor blkio.bfq.weight exists");
        }
        for controller in [
            "memory", "pids", "cpu", "cpuset", "blkio", "devices", "freezer",
        ] {
            assert!(
                cg(controller, "cgroup.procs")
                    .lines()
                    .any(|l| l == pid.to_string()),
                "container not in its {controller} cgroup"
            );
        }
        // The freezer is there and drives pause/resume.
        assert_eq!(cg("freezer", "freezer.state"), "THAWED");
        env.ok(&["pause", id]);
        assert_eq!(cg("freezer", "freezer.state"), "FROZEN");
        env.ok(&["resume", id]);
        assert_eq!(cg("freezer", "freezer.state"), "THAWED");
    }
    // Inside: the cpuset applies to the process, and the mounted cgroup
    // filesystem shows the container's own limits.
    let status = env.ok(&["exec", id, "cat", "/proc/self/status"]);
    assert!(
        status.lines().any(|l| l == "Cpus_allowed_list:\t0"),
        "{status}"
    );
    let inside = if v2 {
        "/sys/fs/cgroup/memory.max"
    } else {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    assert_eq!(
        env.ok(&["exec", id, "cat", inside]).trim(),
        limit.to_string()
    );
    env.ok(&["delete", "-f", id]);
    assert_no_leftovers(&env, id, Some(marker));

    // Memory enforcement: tmpfs pages count toward the memory cgroup; with
    // swap equal to the limit there is nowhere to go, so the writer is
    // OOM-killed (128+SIGKILL). Writing a little under the same limit works.
    let oom = |name: &str, mib: u32| -> Output {
        let b = env.bundle(name, |c| {
            c["linux"]["resources"]["memory"] = json!({"limit": 32u64 << 20, "swap": 32u64 << 20});
            args(
                c,
                &[
                    "/bin/dd",
                    "if=/dev/zero",
                    "of=/dev/shm/fill",
                    "bs=1M",
                    &format!("count={mib}"),
                ],
            );
        });
        let out = run_fg(&env, &b, name);
        assert_no_leftovers(&env, name, None);
        out
    };
    let small = oom("ns-mem-small", 8);
    assert!(small.status.success(), "{}", stderr(&small));
    let big = oom("ns-mem-oom", 60);
    assert_eq!(
        big.status.code(),
        Some(137),
        "60 MiB in a 32 MiB cgroup: {}",
        stderr(&big)
    );

    // pids enforcement: with pids.max 5 the shell (1) starts 4 sleeps, then
    // fork fails.
    let id = "ns-pids";
    let marker = "4243602";
    let b = env.bundle(id, |c| {
        c["linux"]["resources"]["pids"] = json!({"limit": 5});
        sh(
            c,
            &format!(
                "i=0; while [ $i -lt 10 ]; do sleep {marker} & echo started=$i; i=$((i+1)); done"
            ),
        );
    });
    let out = run_fg(&env, &b, id);
    let started = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("started="))
        .count();
    assert_eq!(started, 4, "{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Resource temporarily unavailable"),
        "{}",
        stderr(&out)
    );
    assert_no_leftovers(&env, id, Some(marker));
}

#[test]
fn process_settings_are_applied() {
    if !need_root("process_settings_are_applied") {
        return;
    }
    let env = Env::new();
    let sysctl_paths = [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv4/ip_default_ttl",
        "/proc/sys/kernel/msgmax",
    ];
    let host_before: Vec<String> = sysctl_paths.iter().map(read_trim).collect();
    let host_oom = read_trim("/proc/self/oom_score_adj");

    let id = "ns-proc";
    let b = env.bundle(id, |c| {
        let p = &mut c["process"];
        p["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]);
        p["capabilities"] = json!({
            "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]
        });
        p["noNewPrivileges"] = json!(true);
        p["oomScoreAdj"] = json!(500);
        p["env"] = json!(["PATH=/bin", "FOO=bar baz", "EMPTY="]);
        p["cwd"] = json!("/etc");
        p["user"] = json!({"uid": 0, "gid": 0, "umask": 0o027});
        c["linux"]["sysctl"] = json!({
            "net.ipv4.ip_forward": "1",
            "net.ipv4.ip_default_ttl": "42",
            "kernel.msgmax": "4242",
        });
        sh(
            c,
            "grep -E '^(Cap(Eff|Prm|Bnd|Inh|Amb)|NoNewPrivs):' /proc/self/status | tr -d '\\t' | tr : =
             echo nofile_soft=$(ulimit -n)
             echo nofile_hard=$(ulimit -Hn)
             echo oom=$(cat /proc/self/oom_score_adj)
             echo umask=$(umask)
             touch /dev/shm/f; echo created_mode=$(stat -c %a /dev/shm/f)
             echo cwd=$(pwd)
             echo \"foo=$FOO\"
             echo \"empty=${EMPTY-unset}\"
             echo envcount=$(env | grep -v -e '^PWD=' -e '^SHLVL=' -e '^_=' -e '^HOME=' | wc -l)
             echo ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)
             echo ttl=$(cat /proc/sys/net/ipv4/ip_default_ttl)
             echo msgmax=$(cat /proc/sys/kernel/msgmax)",
        );
    });
    let out = run_ok(&env, &b, id);
    let f = facts(&out);
    // Only CAP_KILL (bit 5) in every set the spec gives; nothing inheritable.
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(fact(&f, set, &out), "0000000000000020", "{set}");
    }
    assert_eq!(fact(&f, "CapInh", &out), "0000000000000000");
    assert_eq!(fact(&f, "CapAmb", &out), "0000000000000000");
    assert_eq!(fact(&f, "NoNewPrivs", &out), "1");
    assert_eq!(fact(&f, "nofile_soft", &out), "1024");
    assert_eq!(fact(&f, "nofile_hard", &out), "4096");
    assert_eq!(fact(&f, "oom", &out), "500");
    assert_eq!(fact(&f, "umask", &out), "0027");
    assert_eq!(fact(&f, "created_mode", &out), "640");
    assert_eq!(fact(&f, "cwd", &out), "/etc");
    assert_eq!(fact(&f, "foo", &out), "bar baz");
    assert_eq!(fact(&f, "empty", &out), "");
    assert_eq!(
        fact(&f, "envcount", &out),
        "3",
        "only the spec's env: {out}"
    );
    // Namespaced sysctls: set inside, the host's values unchanged.
    assert_eq!(fact(&f, "ip_forward", &out), "1");
    assert_eq!(fact(&f, "ttl", &out), "42");
    assert_eq!(fact(&f, "msgmax", &out), "4242");
    let host_after: Vec<String> = sysctl_paths.iter().map(read_trim).collect();
    assert_eq!(host_before, host_after, "host sysctls changed");
    assert_ne!(host_after[1], "42");
    assert_ne!(host_after[2], "4242");
    assert_eq!(read_trim("/proc/self/oom_score_adj"), host_oom);
    assert_no_leftovers(&env, id, None);

    // A non-root user with supplementary groups, and noNewPrivileges off.
    let id = "ns-user";
    let b = env.bundle(id, |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [100, 4242]});
        c["process"]["noNewPrivileges"] = json!(false);
        sh(
            c,
            "echo uid=$(id -u)
             echo gid=$(id -g)
             echo groups=$(id -G)
             echo id=$(id)
             grep '^NoNewPrivs:' /proc/self/status | tr -d '\\t' | tr : =
             r=$(touch /root/x 2>&1); echo \"root_write=$?:$r\"",
        );
    });
    let out = run_ok(&env, &b, id);
    let f = facts(&out);
    assert_eq!(fact(&f, "uid", &out), "1000");
    assert_eq!(fact(&f, "gid", &out), "1000");
    let mut groups: Vec<&str> = fact(&f, "groups", &out).split_whitespace().collect();
    groups.sort_unstable();
    groups.dedup();
    // `id -G` lists the primary gid first, then the supplementary ones.
    assert_eq!(groups, ["100", "1000", "4242"], "{out}");
    let idline = fact(&f, "id", &out);
    assert!(idline.contains("100(users)"), "{idline}");
    assert_eq!(fact(&f, "NoNewPrivs", &out), "0");
    let w = fact(&f, "root_write", &out);
    assert!(
        w.starts_with("1:") && w.contains("Permission denied"),
        "{w}"
    );
    assert_no_leftovers(&env, id, None);
}

#[test]
fn seccomp_profile_is_enforced() {
    if !need_root("seccomp_profile_is_enforced") {
        return;
    }
    let env = Env::new();
    let id = "ns-sec-errno";
    let b = env.bundle(id, |c| {
        push_mount(c, tmpfs_at("/tmp", &["size=1m"]));
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        });
        sh(
            c,
            "grep '^Seccomp:' /proc/self/status | tr -d '\\t' | tr : =
             r=$(mkdir /tmp/x 2>&1); echo \"mkdir=$?:$r\"
             touch /tmp/y; echo touch=$?
             echo ls=$(ls /tmp)",
        );
    });
    let out = run_ok(&env, &b, id);
    let f = facts(&out);
    assert_eq!(fact(&f, "Seccomp", &out), "2", "filter mode");
    let m = fact(&f, "mkdir", &out);
    assert!(
        m.starts_with("1:") && m.contains("Operation not permitted"),
        "{m}"
    );
    assert_eq!(fact(&f, "touch", &out), "0");
    assert_eq!(fact(&f, "ls", &out), "y");
    assert_no_leftovers(&env, id, None);

    // SCMP_ACT_KILL_PROCESS on uname(2): `uname` dies of SIGSYS (128+31),
    // other programs run normally under the same profile. (busybox sh calls
    // uname at startup, so the programs are run directly.)
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS"}],
    });
    let id = "ns-sec-kill";
    let b = env.bundle(id, |c| {
        c["linux"]["seccomp"] = profile.clone();
        args(c, &["/bin/uname", "-a"]);
    });
    let out = run_fg(&env, &b, id);
    assert_eq!(out.status.code(), Some(159), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_no_leftovers(&env, id, None);

    let id = "ns-sec-alive";
    let b = env.bundle(id, |c| {
        c["linux"]["seccomp"] = profile.clone();
        args(c, &["/bin/cat", "/etc/hostname"]);
    });
    assert_eq!(run_ok(&env, &b, id), "ironcell\n");
    assert_no_leftovers(&env, id, None);
}

/// A real cgroup v2 run on a v1 (or hybrid) host: in a private mount
/// namespace /sys/fs/cgroup is replaced by the unified hierarchy (the host's
/// /sys/fs/cgroup/unified), where libcontainer then works in v2 mode. No
/// controller can be enabled there while the v1 hierarchies hold them, so
/// the spec has no linux.resources; freezing uses cgroup.freeze and `ps`
/// cgroup.procs.
#[test]
fn cgroup_v2_in_private_mount_namespace() {
    if !need_root("cgroup_v2_in_private_mount_namespace") {
        return;
    }
    if Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("\n!!! SKIPPED cgroup_v2_in_private_mount_namespace: no unshare(1) !!!\n");
        return;
    }
    let env = Env::new();
    let id = "ns-v2";
    let marker = "4243901";
    let b = env.bundle(id, |c| {
        c["linux"].as_object_mut().unwrap().remove("resources");
        args(c, &["/bin/sleep", marker]);
    });
    let log = env.dir.path().join("v2-container.log");
    let cg = format!("/sys/fs/cgroup/ironcell-test/{id}");
    let script = format!(
        r#"
umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup || exit 90
I="{bin} --root {root}"
echo fstype=$(stat -f -c %T /sys/fs/cgroup)
$I create -b {bundle} {id} >{log} 2>&1 || {{ echo create_failed; cat {log}; exit 91; }}
echo created=$($I state {id} | tr -d ' \n')
$I start {id} || exit 92
echo running=$($I state {id} | tr -d ' \n')
echo procs=$(tr '\n' , < {cg}/cgroup.procs)
echo self_cgroup=$($I exec {id} cat /proc/self/cgroup | grep '^0::')
$I pause {id} || exit 93
echo freeze_paused=$(cat {cg}/cgroup.freeze)
echo events_paused=$(grep '^frozen ' {cg}/cgroup.events)
echo paused=$($I state {id} | tr -d ' \n')
$I resume {id} || exit 94
echo freeze_resumed=$(cat {cg}/cgroup.freeze)
echo events_resumed=$(grep '^frozen ' {cg}/cgroup.events)
echo resumed=$($I state {id} | tr -d ' \n')
echo ps=$($I ps -f json {id})
echo inner_mount=$($I exec {id} grep ' /sys/fs/cgroup ' /proc/mounts)
$I delete -f {id} || exit 95
echo deleted=$(test -e {cg} && echo present || echo gone)
"#,
        bin = ironcell().display(),
        root = env.root.display(),
        bundle = b.display(),
        log = log.display(),
    );
    let out_file = tempfile::tempfile().unwrap();
    let err_file = tempfile::tempfile().unwrap();
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(out_file.try_clone().unwrap())
        .stderr(err_file.try_clone().unwrap())
        .status()
        .unwrap();
    let read = |mut f: fs::File| {
        use std::io::{Read, Seek, SeekFrom};
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    let (out, err) = (read(out_file), read(err_file));
    assert!(status.success(), "{status}: stdout {out} stderr {err}");
    let f = facts(&out);
    assert_eq!(fact(&f, "fstype", &out), "cgroup2fs");
    let state = |key: &str| -> Value { serde_json::from_str(fact(&f, key, &out)).unwrap() };
    assert_eq!(state("created")["status"], "created");
    let running = state("running");
    assert_eq!(running["status"], "running");
    let pid = running["pid"].as_i64().unwrap();
    assert_eq!(fact(&f, "procs", &out), format!("{pid},"));
    assert_eq!(
        fact(&f, "self_cgroup", &out),
        format!("0::/ironcell-test/{id}")
    );
    assert_eq!(fact(&f, "freeze_paused", &out), "1");
    assert_eq!(fact(&f, "events_paused", &out), "frozen 1");
    assert_eq!(state("paused")["status"], "paused");
    assert_eq!(fact(&f, "freeze_resumed", &out), "0");
    assert_eq!(fact(&f, "events_resumed", &out), "frozen 0");
    assert_eq!(state("resumed")["status"], "running");
    let ps: Vec<i64> = serde_json::from_str(fact(&f, "ps", &out)).unwrap();
    assert_eq!(ps, vec![pid]);
    // The spec's cgroup mount (options ro) is a read-only cgroup2 inside.
    let inner: Vec<&str> = fact(&f, "inner_mount", &out).split_whitespace().collect();
    assert_eq!(inner.get(2), Some(&"cgroup2"), "{inner:?}");
    assert!(inner[3].starts_with("ro,"), "{inner:?}");
    assert_eq!(fact(&f, "deleted", &out), "gone");
    // The unified hierarchy is also mounted on the host (hybrid layout):
    // the container's cgroup must be gone there too.
    assert_no_leftovers(&env, id, Some(marker));
}

/// runc mounts the v1 hierarchies read-only when the spec's cgroup mount
/// says `ro` (as its default spec does); otherwise a container's root can
/// rewrite its own limits. libcontainer 0.7 bind-mounted each hierarchy with
/// hard-coded `rw` options; ironcell carries a fix (third_party/libcontainer).
#[test]
fn cgroup_v1_mount_is_read_only() {
    if !need_root("cgroup_v1_mount_is_read_only") {
        return;
    }
    if cgroup_unified() {
        eprintln!("note: /sys/fs/cgroup is cgroup2 here; the v1 mount is not checked");
        return;
    }
    let env = Env::new();
    let id = "ns-cg-ro";
    let limit: u64 = 64 << 20;
    let b = env.bundle(id, |c| {
        let cg = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys/fs/cgroup")
            .cloned()
            .unwrap();
        assert!(cg["options"].as_array().unwrap().contains(&json!("ro")));
        c["linux"]["resources"]["memory"] = json!({"limit": limit});
        sh(
            c,
            "r=$(sh -c 'echo 134217728 > /sys/fs/cgroup/memory/memory.limit_in_bytes' 2>&1)
             echo \"limit_write=$?:$r\"
             echo limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
             r=$(touch /sys/fs/cgroup/x 2>&1); echo \"tmpfs_write=$?:$r\"
             echo ===mounts; cat /proc/mounts; echo ===end",
        );
    });
    let out = run_ok(&env, &b, id);
    let f = facts(&out);
    let m = mounts_after_marker(&out);
    let cgroup_mounts: Vec<&MountLine> = m
        .iter()
        .filter(|l| l.target.starts_with("/sys/fs/cgroup"))
        .collect();
    assert!(!cgroup_mounts.is_empty());
    for l in &cgroup_mounts {
        assert_eq!(l.options[0], "ro", "{l:?}");
    }
    assert_eq!(fact(&f, "limit", &out), limit.to_string());
    for key in ["limit_write", "tmpfs_write"] {
        let w = fact(&f, key, &out);
        assert!(
            !w.starts_with("0:") && w.contains("Read-only file system"),
            "{key}: {w}"
        );
    }
    assert_no_leftovers(&env, id, None);
}
