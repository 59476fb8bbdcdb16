//! The vm sandbox through the CLI: containers in a real Linux guest, booted
//! under QEMU with TCG on every host and under ironcell-vmm where /dev/kvm
//! has VT-x or AMD-V (skipped loudly elsewhere; on PVM hosts the pvm-test
//! kernel's test below covers ironcell-vmm), checked from inside the guest
//! and from the host, and its faults, each followed by a check that
//! nothing was left: no state, run directory, process or mount.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ironcell_testutil::netns::{in_netns, ip, Netns};
use ironcell_testutil::vm::{
    backends, config, guest, pvm_test_guest, qemu_tools, run_dirs, Backend, Guest,
};
use serde_json::{json, Value};

/// A state root, bundle directory and vm configuration for one test.
struct Vm {
    env: Env,
    config: PathBuf,
    backend: Backend,
}

impl Vm {
    /// One per hypervisor this host can run the guest under.
    fn all(test: &str, extra: &str) -> Vec<Vm> {
        if !need_root(test) {
            return Vec::new();
        }
        let Some(g) = guest(test) else {
            return Vec::new();
        };
        backends(test)
            .into_iter()
            .map(|b| Self::with_guest(&g, b, extra))
            .collect()
    }

    fn qemu(test: &str, extra: &str) -> Option<Vm> {
        if !need_root(test) || !qemu_tools(test) {
            return None;
        }
        Some(Self::with_guest(&guest(test)?, Backend::QemuTcg, extra))
    }

    fn with_guest(g: &Guest, backend: Backend, extra: &str) -> Vm {
        let env = Env::new();
        let config = config(env.dir.path(), g, backend, extra);
        eprintln!("---- under {backend:?}");
        Vm {
            env,
            config,
            backend,
        }
    }

    /// `ironcell --config C --root R --sandbox vm ARGS`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ironcell());
        c.arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.env.root)
            .args(["--sandbox", "vm"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn output(&self, mut cmd: Command) -> std::process::Output {
        output_via_files(&mut cmd)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.output(self.cmd(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ironcell {args:?} failed ({}): {}",
            out.status,
            stderr(&out)
        );
        stdout(&out)
    }

    /// Fails with one line holding `want`.
    fn fails(&self, args: &[&str], want: &str) -> String {
        let out = self.run(args);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{args:?} should fail: {}",
            stdout(&out)
        );
        assert!(err.contains(want), "{args:?}: want {want:?} in {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        err
    }

    fn bundle(&self, name: &str, argv: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        self.env.bundle(name, |c| {
            args(c, argv);
            edit(c)
        })
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    fn wait_status(&self, id: &str, want: &str) {
        let start = Instant::now();
        loop {
            let s = self.state(id)["status"].as_str().unwrap().to_string();
            if s == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{id} is {s}, never {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Nothing of container `id` is left: no state directory, no VM run
    /// directory, no process of the VM (their command lines name the run
    /// directories, under this test's directory), no mount.
    fn assert_clean(&self, id: &str) {
        assert!(
            !self.env.root.join(id).exists(),
            "state dir of {id} left behind"
        );
        let marker = self.env.dir.path().to_str().unwrap().to_string();
        let start = Instant::now();
        loop {
            let left = processes_with(&marker);
            if left.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "processes of the VM left behind: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            run_dirs(self.env.dir.path()).is_empty(),
            "VM run directory left behind"
        );
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&marker), "mount left behind");
    }
}

/// The guest's `uname -r`, not the host's: the process ran in the VM; its
/// exit code is ironcell's.
#[test]
fn run_in_a_vm_prints_what_the_guest_sees_and_passes_the_exit_code() {
    for vm in Vm::all(
        "run_in_a_vm_prints_what_the_guest_sees_and_passes_the_exit_code",
        "",
    ) {
        let id = "vm-run";
        let b = vm.bundle(
            id,
            &[
                "/bin/sh",
                "-c",
                "uname -r; cat /proc/sys/kernel/random/boot_id; hostname; exit 7",
            ],
            |_| {},
        );
        let out = vm.run(&["run", "-b", b.to_str().unwrap(), id]);
        assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        let host_release = nix::sys::utsname::uname()
            .unwrap()
            .release()
            .to_string_lossy()
            .into_owned();
        assert!(
            lines[0].ends_with("-ironcell") && lines[0] != host_release,
            "{text}"
        );
        let host_boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert_ne!(lines[1], host_boot.trim(), "same boot id as the host");
        assert_eq!(lines[2], "ironcell", "{text}");
        // A foreground run deletes its container, as runc's does.
        vm.assert_clean(id);
    }
}

/// `qemu_device_backend = "external"`: virtiofsd and vhost-device-vsock
/// serve QEMU's devices instead of ironcell-vmm; a file of the bundle's
/// rootfs is read through virtio-fs, one is written, and the exit code
/// comes back.
#[test]
fn run_under_qemu_with_virtiofsd_and_vhost_device_vsock() {
    let test = "run_under_qemu_with_virtiofsd_and_vhost_device_vsock";
    let Some(vm) = Vm::qemu(test, "qemu_device_backend = \"external\"") else {
        return;
    };
    let id = "vm-external";
    let volume = vm.env.dir.path().join("volume");
    fs::create_dir_all(&volume).unwrap();
    let b = vm.bundle(
        id,
        &[
            "/bin/sh",
            "-c",
            "cat /etc/hostname; echo out > /tmp/f; exit 3",
        ],
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/tmp",
                "type": "bind",
                "source": volume,
                "options": ["rbind", "rw"],
            }))
        },
    );
    let out = vm.run(&["run", "-b", b.to_str().unwrap(), id]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ironcell", "{}", stderr(&out));
    assert_eq!(fs::read_to_string(volume.join("f")).unwrap(), "out\n");
    vm.assert_clean(id);
}

/// stdin reaches the guest process and its end too; a MiB of output comes
/// back whole before the exit status.
#[test]
fn run_in_a_vm_passes_stdin_and_all_output() {
    for vm in Vm::all("run_in_a_vm_passes_stdin_and_all_output", "") {
        let id = "vm-stdio";
        let b = vm.bundle(
            id,
            &[
                "/bin/sh",
                "-c",
                "cat; head -c 1048576 /dev/zero | tr '\\0' x; echo err >&2; exit 3",
            ],
            |_| {},
        );
        let mut cmd = vm.cmd(&["run", "-b", b.to_str().unwrap(), id]);
        let input = vm.env.dir.path().join("input");
        fs::write(&input, "line one\nline two\n").unwrap();
        cmd.stdin(fs::File::open(&input).unwrap());
        let out = vm.output(cmd);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.starts_with("line one\nline two\n"),
            "{:?}",
            &text[..40.min(text.len())]
        );
        assert_eq!(text.len(), 18 + 1_048_576, "output lost");
        assert_eq!(stderr(&out), "err\n");
        vm.assert_clean(id);
    }
}

/// A foreground run with a terminal: the guest process gets a pty of the
/// guest, its output reaches ironcell's terminal.
#[test]
fn run_in_a_vm_with_a_terminal() {
    for vm in Vm::all("run_in_a_vm_with_a_terminal", "") {
        let id = "vm-tty";
        let b = vm.bundle(
            id,
            &[
                "/bin/sh",
                "-c",
                "tty; test -t 0 && echo stdin-is-a-tty; exit 5",
            ],
            |c| {
                c["process"]["terminal"] = json!(true);
            },
        );
        let out = in_terminal(&vm.cmd(&["run", "-b", b.to_str().unwrap(), id]));
        let text = stdout(&out);
        assert!(
            text.contains("/dev/pts/0") && text.contains("stdin-is-a-tty"),
            "{text:?} {}",
            stderr(&out)
        );
        assert_eq!(out.status.code(), Some(5), "{text}");
        vm.assert_clean(id);
    }
}

/// The runc lifecycle a detached engine drives: create, state, start, exec,
/// ps, pause, resume, kill, delete; the pid in state.json is a live host
/// process (the relay) until the container exits.
#[test]
fn vm_container_lifecycle() {
    for vm in Vm::all("vm_container_lifecycle", "") {
        let id = "vm-life";
        let record = |kind: &str| {
            let f = vm.env.dir.path().join(kind);
            json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", f.display())]})
        };
        let b = vm.bundle(id, &["/bin/sleep", "1000"], |c| {
            c["hooks"] = json!({
                "prestart": [record("prestart")],
                "createRuntime": [record("createRuntime")],
                "poststart": [record("poststart")],
                "poststop": [record("poststop")],
            });
        });
        let pid_file = vm.env.dir.path().join("pid");
        vm.ok(&[
            "create",
            "-b",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ]);
        let st = vm.state(id);
        assert_eq!(st["status"], "created");
        let pid = st["pid"].as_i64().unwrap();
        assert_eq!(fs::read_to_string(&pid_file).unwrap(), pid.to_string());
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let hook_state = |kind: &str| -> Value {
            serde_json::from_str(&fs::read_to_string(vm.env.dir.path().join(kind)).unwrap())
                .unwrap()
        };
        for kind in ["prestart", "createRuntime"] {
            let h = hook_state(kind);
            assert_eq!(
                (h["id"].as_str(), h["pid"].as_i64()),
                (Some(id), Some(pid)),
                "{kind}: {h}"
            );
        }
        vm.ok(&["start", id]);
        vm.wait_status(id, "running");
        assert_eq!(hook_state("poststart")["status"], "running");

        let out = vm.ok(&[
            "exec",
            id,
            "/bin/sh",
            "-c",
            "echo from-exec; cat /proc/1/cmdline | tr '\\0' ' '",
        ]);
        assert!(out.starts_with("from-exec\n/bin/sleep 1000"), "{out:?}");
        let out = vm.run(&["exec", id, "/bin/sh", "-c", "exit 9"]);
        assert_eq!(out.status.code(), Some(9));
        // ps names the host process standing for the container, as engines
        // match its pids against the host's processes.
        let ps = vm.ok(&["ps", "--format", "json", id]);
        let pids: Vec<i64> = serde_json::from_str(&ps).unwrap();
        assert_eq!(pids, vec![pid], "{ps}");
        assert!(vm.ok(&["ps", id]).contains(&format!(" {pid} ")));
        vm.ok(&["pause", id]);
        assert_eq!(vm.state(id)["status"], "paused");
        vm.ok(&["resume", id]);
        assert_eq!(vm.state(id)["status"], "running");
        let list = vm.ok(&["list", "--format", "json"]);
        assert!(list.contains("\"vm-life\""), "{list}");
        vm.fails(&["delete", id], "running");
        // The container's init ignores SIGTERM (no handler, pid 1 of its
        // namespace), as under runc.
        vm.ok(&["kill", id, "TERM"]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(vm.state(id)["status"], "running");
        vm.ok(&["kill", id, "KILL"]);
        vm.wait_status(id, "stopped");
        assert_eq!(vm.state(id)["pid"], 0);
        // runc's shim kills what is left of an exited container.
        vm.ok(&["kill", "--all", id, "KILL"]);
        vm.ok(&["delete", id]);
        assert_eq!(hook_state("poststop")["status"], "stopped");
        vm.assert_clean(id);
    }
}

/// A CRI pod through the CLI (containerd's runc shim): the container whose
/// annotations name the pod's sandbox container joins that container's VM
/// (the same guest boot id), with a relay of its own that is its pid and
/// ends with its status; its delete leaves the pod's VM running, and the
/// pod's delete leaves nothing.
#[test]
fn a_pods_container_joins_the_pods_vm_with_a_relay() {
    let Some(vm) = Vm::qemu("a_pods_container_joins_the_pods_vm_with_a_relay", "") else {
        return;
    };
    let pod = "vm-pod";
    let b = vm.bundle(pod, &["/bin/sleep", "1000"], |_| {});
    vm.ok(&["run", "-d", "-b", b.to_str().unwrap(), pod]);
    vm.wait_status(pod, "running");
    let member = "vm-pod-member";
    let b = vm.bundle(member, &["/bin/sleep", "1000"], |c| {
        c["annotations"] = json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": pod,
        });
    });
    vm.ok(&["run", "-d", "-b", b.to_str().unwrap(), member]);
    vm.wait_status(member, "running");
    let pod_pid = vm.state(pod)["pid"].as_i64().unwrap();
    let member_pid = vm.state(member)["pid"].as_i64().unwrap();
    assert_ne!(member_pid, pod_pid, "the member's relay is its own");
    assert!(Path::new(&format!("/proc/{member_pid}")).exists());
    // The member's rootfs is in the VM's share, in the pod relay's mount
    // namespace only.
    let st: Value =
        serde_json::from_str(&fs::read_to_string(vm.env.root.join(pod).join("vm.json")).unwrap())
            .unwrap();
    let shared = PathBuf::from(st["run_dir"].as_str().unwrap())
        .join("share")
        .join(member)
        .join("rootfs");
    let in_share = |pid: i64| {
        fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(shared.to_str().unwrap()))
    };
    assert!(
        in_share(pod_pid),
        "{} is not in the share",
        shared.display()
    );
    assert!(!in_share(std::process::id().into()));
    let boot = |id: &str| vm.ok(&["exec", id, "cat", "/proc/sys/kernel/random/boot_id"]);
    assert_eq!(boot(pod), boot(member));
    assert_ne!(
        boot(member),
        fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap()
    );
    vm.ok(&["kill", member, "KILL"]);
    vm.wait_status(member, "stopped");
    vm.ok(&["delete", member]);
    assert!(!vm.env.root.join(member).exists());
    assert!(!in_share(pod_pid), "the member's delete left it shared");
    assert_eq!(vm.state(pod)["status"], "running");
    vm.ok(&["delete", "--force", pod]);
    vm.assert_clean(pod);
}

/// A detached exec holds its stdio in a relay of its own whose pid is in
/// --pid-file and whose exit status is the process's.
#[test]
fn vm_exec_detached_and_with_a_process_file() {
    for vm in Vm::all("vm_exec_detached_and_with_a_process_file", "") {
        let id = "vm-exec";
        let b = vm.bundle(id, &["/bin/sleep", "1000"], |_| {});
        vm.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
        let mut process: Value =
            serde_json::from_str(&fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
        process = process["process"].take();
        process["args"] = json!(["/bin/sh", "-c", "echo process-file; exit 4"]);
        let pfile = vm.env.dir.path().join("process.json");
        fs::write(&pfile, process.to_string()).unwrap();
        let out = vm.run(&["exec", "--process", pfile.to_str().unwrap(), id]);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert_eq!(stdout(&out), "process-file\n");

        let pid_file = vm.env.dir.path().join("exec.pid");
        let outf = vm.env.dir.path().join("exec.out");
        let mut cmd = vm.cmd(&[
            "exec",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
            "/bin/sh",
            "-c",
            "sleep 1; echo detached",
        ]);
        cmd.stdout(fs::File::create(&outf).unwrap());
        assert!(cmd.status().unwrap().success());
        let pid: i32 = fs::read_to_string(&pid_file).unwrap().parse().unwrap();
        wait_until(|| fs::read_to_string(&outf).unwrap_or_default() == "detached\n");
        wait_until(|| !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
        vm.ok(&["delete", "--force", id]);
        vm.assert_clean(id);
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Bad configuration and guests that fail: one line naming the cause, and
/// nothing left.
#[test]
fn vm_faults_are_one_line_errors_and_leave_nothing() {
    let Some(vm) = Vm::qemu("vm_faults_are_one_line_errors_and_leave_nothing", "") else {
        return;
    };
    let g = guest("vm_faults").unwrap();

    // A missing kernel.
    let bad = Vm::with_guest(
        &Guest {
            kernel: "/nonexistent/vmlinux".into(),
            initrd: g.initrd.clone(),
        },
        Backend::QemuTcg,
        "",
    );
    let b = bad.bundle("nokernel", &["/bin/true"], |_| {});
    bad.fails(
        &["run", "-b", b.to_str().unwrap(), "nokernel"],
        "guest kernel /nonexistent/vmlinux does not exist",
    );
    bad.assert_clean("nokernel");

    // ironcell-vmm on a PVM host with a stock kernel: refused at once.
    if Path::new("/sys/module/kvm_pvm").exists() {
        let pvm = Vm::with_guest(&g, Backend::IroncellVmm, "");
        let b = pvm.bundle("pvm", &["/bin/true"], |_| {});
        let e = pvm.fails(&["run", "-b", b.to_str().unwrap(), "pvm"], "PVM (kvm_pvm)");
        assert!(
            e.contains("hypervisor = \"qemu\"") && e.contains("pvm_guest"),
            "{e}"
        );
        pvm.assert_clean("pvm");
    }

    // A bad configuration key.
    let c = vm.env.dir.path().join("bad.toml");
    fs::write(&c, "[vm]\nvcpu = 2\n").unwrap();
    let b = vm.bundle("badconf", &["/bin/true"], |_| {});
    let out = vm.output({
        let mut cmd = Command::new(ironcell());
        cmd.arg("--config")
            .arg(&c)
            .args(["--root"])
            .arg(&vm.env.root);
        cmd.args([
            "--sandbox",
            "vm",
            "run",
            "-b",
            b.to_str().unwrap(),
            "badconf",
        ]);
        cmd
    });
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml") && err.contains("unknown field `vcpu`"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    vm.assert_clean("badconf");

    // A guest whose init dies: the kernel panics; the console's tail is in
    // the error.
    let dead = vm.env.dir.path().join("dead-initrd.img");
    make_initrd(&dead, "#!/bin/sh\nexit 1\n");
    let panics = Vm::with_guest(
        &Guest {
            kernel: g.kernel.clone(),
            initrd: dead,
        },
        Backend::QemuTcg,
        "",
    );
    let b = panics.bundle("panic", &["/bin/true"], |_| {});
    panics.fails(
        &["run", "-b", b.to_str().unwrap(), "panic"],
        "guest console:",
    );
    panics.assert_clean("panic");

    // A guest that never answers: the boot timeout, with the console.
    let mute = vm.env.dir.path().join("mute-initrd.img");
    make_initrd(
        &mute,
        "#!/bin/sh\necho guest up but no agent\nexec sleep 1000\n",
    );
    let slow = Vm::with_guest(
        &Guest {
            kernel: g.kernel.clone(),
            initrd: mute.clone(),
        },
        Backend::QemuTcg,
        "boot_timeout_secs = 8",
    );
    let b = slow.bundle("mute", &["/bin/true"], |_| {});
    let e = slow.fails(
        &["run", "-b", b.to_str().unwrap(), "mute"],
        "did not start in time",
    );
    assert!(e.contains("guest up but no agent"), "{e}");
    slow.assert_clean("mute");

    // delete --force while the VM still boots.
    let booting = Vm::with_guest(
        &Guest {
            kernel: g.kernel.clone(),
            initrd: mute,
        },
        Backend::QemuTcg,
        "boot_timeout_secs = 60",
    );
    let b = booting.bundle("half", &["/bin/true"], |_| {});
    let mut create = booting.cmd(&["create", "-b", b.to_str().unwrap(), "half"]);
    let create = create
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(|| booting.env.root.join("half/vm.json").exists());
    booting.ok(&["delete", "--force", "half"]);
    let out = create.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
    booting.assert_clean("half");
}

/// The hypervisor killed with SIGKILL, and (under QEMU) the agent
/// unreachable (the vsock backend killed): the container is stopped and
/// exited 137 with the reason recorded. The agent's own shutdown kills the
/// container in order. Each delete leaves nothing.
#[test]
fn vm_hypervisor_killed_or_agent_gone() {
    for vm in Vm::all("vm_hypervisor_killed_or_agent_gone", "") {
        let mut cases = vec![("vm-shutdown", "shutdown", None)];
        match vm.backend {
            Backend::QemuTcg => {
                cases.push(("vm-kill9", "qemu", Some("VM ended")));
                // QEMU's virtio-fs and vsock devices: the agent is cut off.
                cases.push(("vm-nodevices", "ironcell-vmm", Some("agent")));
            }
            Backend::IroncellVmm => cases.push(("vm-kill9", "ironcell-vmm", Some("VM ended"))),
        }
        for (id, how, reason) in cases {
            let b = vm.bundle(id, &["/bin/sleep", "1000"], |_| {});
            vm.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
            let st: Value = serde_json::from_str(
                &fs::read_to_string(vm.env.root.join(id).join("vm.json")).unwrap(),
            )
            .unwrap();
            let run_dir = PathBuf::from(st["run_dir"].as_str().unwrap());
            if how == "shutdown" {
                shutdown_guest(&run_dir.join("vsock.sock"));
            } else {
                let victim = processes_with(run_dir.to_str().unwrap())
                    .into_iter()
                    .find(|p| {
                        let exe = fs::read_link(format!("/proc/{p}/exe")).unwrap_or_default();
                        exe.to_string_lossy().contains(how)
                    })
                    .unwrap_or_else(|| panic!("no {how} process"));
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(victim),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
            }
            vm.wait_status(id, "stopped");
            // The guest reports the exit as its relay records it.
            let exit_file = vm.env.root.join(id).join("exit.json");
            wait_until(|| exit_file.exists());
            let exit: Value = serde_json::from_str(
                &fs::read_to_string(vm.env.root.join(id).join("exit.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(exit["code"], 137, "{how}: {exit}");
            match reason {
                Some(r) => assert!(
                    exit["reason"].as_str().unwrap_or("").contains(r),
                    "{how}: {exit}"
                ),
                None => assert!(exit.get("reason").is_none(), "{how}: {exit}"),
            }
            vm.ok(&["delete", id]);
            vm.assert_clean(id);
        }
    }
}

/// A container over its memory limit inside the guest is OOM-killed
/// there: it exits 137, its exit record says so, and the agent's OOM event
/// names it.
#[test]
fn vm_oom_kill_is_reported() {
    for vm in Vm::all("vm_oom_kill_is_reported", "") {
        let id = "vm-oom";
        let b = vm.bundle(
            id,
            &[
                "/bin/sh",
                "-c",
                "sleep 1; exec dd if=/dev/zero of=/dev/shm/fill bs=1M count=128",
            ],
            |c| {
                c["linux"]["resources"]["memory"] =
                    json!({"limit": 32 * 1024 * 1024, "swap": 32 * 1024 * 1024});
            },
        );
        vm.ok(&["create", "-b", b.to_str().unwrap(), id]);
        let st: Value = serde_json::from_str(
            &fs::read_to_string(vm.env.root.join(id).join("vm.json")).unwrap(),
        )
        .unwrap();
        let uds = PathBuf::from(st["run_dir"].as_str().unwrap()).join("vsock.sock");
        let events = std::thread::spawn(move || {
            agent_client(&uds)
                .get_oom_event(
                    ironcell_protocol::ttrpc::context::with_timeout(60_000_000_000),
                    &Default::default(),
                )
                .map(|e| e.container_id)
        });
        vm.ok(&["start", id]);
        vm.wait_status(id, "stopped");
        let exit_file = vm.env.root.join(id).join("exit.json");
        wait_until(|| exit_file.exists());
        let exit: Value = serde_json::from_str(&fs::read_to_string(&exit_file).unwrap()).unwrap();
        assert_eq!(
            (exit["code"].as_i64(), exit["oom_killed"].as_bool()),
            (Some(137), Some(true)),
            "{exit}"
        );
        assert_eq!(events.join().unwrap().unwrap(), id);
        vm.ok(&["delete", id]);
        vm.assert_clean(id);
    }
}

/// A client of a VM's agent, as the host's.
fn agent_client(uds: &Path) -> ironcell_protocol::agent_ttrpc::AgentClient {
    use std::os::fd::IntoRawFd;
    let s = ironcell_protocol::hybrid::connect(
        uds,
        ironcell_protocol::CONTROL_PORT,
        Duration::from_secs(5),
    )
    .unwrap();
    ironcell_protocol::agent_ttrpc::AgentClient::new(
        ironcell_protocol::ttrpc::Client::new(s.into_raw_fd()).unwrap(),
    )
}

/// Powers a guest off through its agent, as a host client would.
fn shutdown_guest(uds: &Path) {
    agent_client(uds)
        .shutdown(
            ironcell_protocol::ttrpc::context::with_timeout(5_000_000_000),
            &Default::default(),
        )
        .unwrap();
}

/// An initramfs whose /init is `script`, run by the test image's busybox.
fn make_initrd(path: &Path, script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(image().join("rootfs/bin/busybox"), root.join("bin/busybox")).unwrap();
    for tool in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    fs::write(root.join("init"), script).unwrap();
    fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            path.display()
        ))
        .status()
        .unwrap();
    assert!(list.success());
    let _ = std::io::stdout().flush();
}

/// The same end-to-end path under ironcell-vmm on a PVM host, with the
/// project's test-only pvm-test kernel (docs/pvm-host.md; its command line
/// is the `cmdline` file beside it), and under QEMU with TCG for
/// comparison: one VM each runs a container whose stdout and exit code
/// come back, which reads a file of the host's through virtio-fs, writes
/// one back, and waits for a file to appear: under QEMU an exec'd process
/// makes it, under PVM the host does (the test kernel cannot switch the
/// vector registers that user mode sees enabled there, so any process can
/// fail: docs/pvm-host.md). The phases' times are
/// printed side by side. PVM's emulator makes the guest's kernel code slow
/// (about 0.4 ms a system call), so this is the one vm sandbox test run
/// there; the others run under QEMU and, with VT-x or AMD-V, under
/// ironcell-vmm.
#[test]
fn vm_end_to_end_under_ironcell_vmm_on_pvm_and_under_qemu() {
    let test = "vm_end_to_end_under_ironcell_vmm_on_pvm_and_under_qemu";
    if !need_root(test) {
        return;
    }
    let Some(g) = guest(test) else { return };
    let mut runs: Vec<(String, Vm)> = Vec::new();
    if let Some((pvm, extra)) = pvm_test_guest(test, &g) {
        runs.push((
            "ironcell-vmm, pvm-test kernel (PVM)".into(),
            Vm::with_guest(&pvm, Backend::IroncellVmm, &extra),
        ));
    }
    if qemu_tools(test) {
        runs.push((
            "QEMU TCG, stock kernel".into(),
            Vm::with_guest(&g, Backend::QemuTcg, ""),
        ));
    }
    let mut table =
        vec!["| hypervisor | run to the container's write s | exec (QEMU) or host write s | run total s |".to_string()];
    table.push("|---|---:|---:|---:|".into());
    for (name, vm) in &runs {
        let id = "vm-fs";
        let data = vm.env.dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("in"), "input-from-host\n").unwrap();
        let b = vm.bundle(
            id,
            &[
                "/bin/sh",
                "-c",
                "cat /tmp/in; echo written-in-the-guest > /tmp/out; \
                 while [ ! -e /tmp/go ]; do sleep 0.2; done; echo done; exit 7",
            ],
            |c| {
                c["mounts"].as_array_mut().unwrap().push(json!({
                    "destination": "/tmp", "type": "bind", "source": data, "options": ["rbind", "rw"]
                }));
            },
        );
        let out = vm.env.dir.path().join("run.out");
        let t0 = Instant::now();
        let mut run = vm.cmd(&["run", "-b", b.to_str().unwrap(), id]);
        let mut run = run
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(900);
        let written = || fs::read_to_string(data.join("out")).unwrap_or_default();
        while written() != "written-in-the-guest\n" {
            if let Ok(Some(status)) = run.try_wait() {
                let mut err = String::new();
                std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("{name}: run ended ({status}) before the container wrote: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the container never wrote through virtio-fs"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let created = t0.elapsed();
        let t1 = Instant::now();
        if vm.backend == Backend::QemuTcg {
            let exec = vm.ok(&[
                "exec",
                id,
                "/bin/sh",
                "-c",
                "echo from-exec; uname -r; touch /tmp/go",
            ]);
            let lines: Vec<&str> = exec.lines().collect();
            assert_eq!(lines[0], "from-exec", "{name}: {exec}");
            assert!(lines[1].contains("-ironcell"), "{name}: {exec}");
        } else {
            // Through virtio-fs from the host's side.
            fs::write(data.join("go"), "").unwrap();
        }
        let exec_time = t1.elapsed();
        let status = run.wait().unwrap();
        let total = t0.elapsed();
        assert_eq!(status.code(), Some(7), "{name}");
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "input-from-host\ndone\n",
            "{name}"
        );
        vm.assert_clean(id);
        table.push(format!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            created.as_secs_f64(),
            exec_time.as_secs_f64(),
            total.as_secs_f64()
        ));
    }
    eprintln!("\n{}\n", table.join("\n"));
}

/// `update` and `events` reach the guest: new limits are applied by the
/// agent to the container's cgroup in the VM and show in the stats the
/// guest reports; the event stream reports an OOM kill in the VM.
#[test]
fn vm_update_and_events() {
    for vm in Vm::all("vm_update_and_events", "") {
        let id = "vm-upd";
        let b = vm.bundle(
            id,
            &[
                "/bin/sh",
                "-c",
                "sleep 2; tail /dev/zero; echo survived; sleep 2",
            ],
            |c| {
                c["linux"]["resources"]["memory"] = json!({"limit": 128 << 20, "swap": 128 << 20});
                c["linux"]["resources"]["pids"] = json!({"limit": 50});
            },
        );
        vm.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
        let stats = |vm: &Vm| -> Value {
            let out = vm.ok(&["events", "--stats", id]);
            let e: Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(
                (e["type"].as_str(), e["id"].as_str()),
                (Some("stats"), Some(id))
            );
            e["data"].clone()
        };
        let d = stats(&vm);
        assert_eq!(d["memory"]["usage"]["limit"], 128u64 << 20, "{d}");
        assert_eq!(d["pids"]["limit"], 50, "{d}");
        vm.ok(&["update", "--memory", "32m", "--pids-limit", "20", id]);
        let d = stats(&vm);
        assert_eq!(d["memory"]["usage"]["limit"], 32u64 << 20, "{d}");
        assert_eq!(d["pids"]["limit"], 20, "{d}");
        vm.fails(&["update", "--memory", "lots", id], "invalid size");

        // The stream: `tail /dev/zero` outgrows the new 32m limit.
        let mut child = vm.cmd(&["events", "--interval", "500ms", id]);
        let mut child = child
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("events did not end with the container");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        let kinds: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds.iter().filter(|k| *k == "oom").count(), 1, "{text}");
        assert!(kinds.iter().any(|k| k == "stats"), "{text}");
        vm.ok(&["delete", id]);
        vm.assert_clean(id);
    }
}

/// A container whose spec names a network namespace that CNI (or podman's
/// network backend) set up joins that network in its VM: the guest's eth0
/// has the pod's MAC, MTU, address and routes; the container reaches a
/// server beside the pod and serves one the peer reaches at the pod's
/// address. Its delete leaves the namespace as it was: no tap, no tc.
#[test]
fn a_vm_joins_the_pod_network_its_spec_names() {
    let test = "a_vm_joins_the_pod_network_its_spec_names";
    for vm in Vm::all(test, "") {
        let n = std::process::id();
        let (pod, peer) = (format!("icvmpod{n}"), format!("icvmpeer{n}"));
        let mut ns = Netns::default();
        ns.add(&pod);
        ns.add(&peer);
        // As CNI's bridge plugin leaves a pod: a veth whose peer is the
        // gateway's side.
        ip(&[
            "-n", &pod, "link", "add", "eth0", "type", "veth", "peer", "name", "vpeer", "netns",
            &peer,
        ]);
        ip(&["-n", &pod, "addr", "add", "10.99.9.2/24", "dev", "eth0"]);
        ip(&["-n", &pod, "link", "set", "eth0", "mtu", "1400", "up"]);
        ip(&["-n", &pod, "route", "add", "default", "via", "10.99.9.1"]);
        ip(&["-n", &peer, "addr", "add", "10.99.9.1/24", "dev", "vpeer"]);
        ip(&["-n", &peer, "link", "set", "vpeer", "mtu", "1400", "up"]);
        ip(&["-n", &peer, "link", "set", "lo", "up"]);
        let mac_line = ip(&["-n", &pod, "-br", "link", "show", "eth0"]);
        let pod_mac = mac_line.split_whitespace().nth(2).unwrap().to_string();
        // A web server beside the pod.
        let www = vm.env.dir.path().join("www");
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("hello"), "hello-from-the-peer\n").unwrap();
        ns.serve(
            Command::new("ip")
                .args(["netns", "exec", &peer, "python3", "-m", "http.server"])
                .args(["8080", "--bind", "10.99.9.1", "--directory"])
                .arg(&www)
                .stdout(Stdio::null())
                .stderr(fs::File::create(vm.env.dir.path().join("www.log")).unwrap())
                .spawn()
                .unwrap(),
        );

        // Started before the container, which tries once. (The image's
        // busybox wget crashes; nc speaks HTTP here.)
        let log = vm.env.dir.path().join("www.log");
        in_netns(&peer, || {
            let start = Instant::now();
            while std::net::TcpStream::connect("10.99.9.1:8080").is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no web server: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        let id = "vm-podnet";
        let b = vm.bundle(
            id,
            &[
                "/bin/sh",
                "-c",
                "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; \
                 ip -4 addr show eth0 | grep inet; ip route; \
                 printf 'GET /hello HTTP/1.0\\r\\n\\r\\n' | nc -w 30 10.99.9.1 8080; \
                 echo guest-served | nc -l -p 7070",
            ],
            |c| {
                let list = c["linux"]["namespaces"].as_array_mut().unwrap();
                list.retain(|n| n["type"] != "network");
                list.push(json!({"type": "network", "path": format!("/run/netns/{pod}")}));
            },
        );
        let mut cmd = vm.cmd(&["run", "-b", b.to_str().unwrap(), id]);
        let run = std::thread::spawn(move || output_via_files(&mut cmd));

        // The peer reaches the container's server at the pod's address.
        let line = in_netns(&peer, || {
            use std::io::{BufRead, BufReader};
            let start = Instant::now();
            loop {
                let addr = "10.99.9.2:7070".parse().unwrap();
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let mut line = String::new();
                        BufReader::new(s).read_line(&mut line).unwrap();
                        return line;
                    }
                    Err(e) if start.elapsed() > Duration::from_secs(120) => {
                        panic!("the guest's server was never reached: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        let out = run.join().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(line.trim(), "guest-served");
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], pod_mac, "{text}");
        assert_eq!(lines[1], "1400", "{text}");
        assert!(lines[2].contains("inet 10.99.9.2/24"), "{text}");
        assert!(text.contains("default via 10.99.9.1 dev eth0"), "{text}");
        assert!(
            text.contains("hello-from-the-peer"),
            "{text}{}",
            stderr(&out)
        );

        // A foreground run deletes its container: the namespace is as CNI
        // left it. (The web server's command line names this test's
        // directory, as the VM's processes do.)
        ns.stop_servers();
        vm.assert_clean(id);
        let links = ip(&["-n", &pod, "-br", "link"]);
        assert!(!links.contains("tap0_ironcell"), "{links}");
        let qdiscs = Command::new("ip")
            .args(["netns", "exec", &pod, "tc", "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap();
        let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
        assert!(!qdiscs.contains("ingress"), "{qdiscs}");

        // A namespace another VM is joined to already (its tap is there)
        // is refused before any VM starts, and the other's tap is kept.
        ip(&[
            "-n",
            &pod,
            "tuntap",
            "add",
            "dev",
            "tap0_ironcell",
            "mode",
            "tap",
        ]);
        vm.fails(
            &["run", "-b", b.to_str().unwrap(), id],
            "another VM is joined to this pod network",
        );
        vm.assert_clean(id);
        assert!(ip(&["-n", &pod, "-br", "link"]).contains("tap0_ironcell"));
    }
}

/// A VM is sized by the configured base plus the container's limits: a
/// 192 MiB memory limit adds 192 MiB to the guest, a CPU limit of 1.5
/// adds 2 vCPUs (no more than the host has). Specs asking for the host's
/// PID namespace or network are refused before anything starts.
#[test]
fn a_vms_size_follows_the_containers_limits() {
    let test = "a_vms_size_follows_the_containers_limits";
    for vm in Vm::all(test, "memory_mib = 256\nvcpus = 1") {
        let id = "vm-sized";
        let b = vm.bundle(
            id,
            &[
                "/bin/sh",
                "-c",
                "grep MemTotal /proc/meminfo; nproc; cat /sys/fs/cgroup/memory.max",
            ],
            |c| {
                c["linux"]["resources"] = json!({
                    "memory": {"limit": 192 * 1024 * 1024},
                    "cpu": {"quota": 150000, "period": 100000},
                });
            },
        );
        let text = vm.ok(&["run", "-b", b.to_str().unwrap(), id]);
        let lines: Vec<&str> = text.lines().collect();
        let total_kib: u64 = lines[0]
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        // The kernel keeps some of 448 MiB for itself; 256 MiB alone would
        // show less than 256.
        assert!(total_kib > 400 * 1024 && total_kib <= 448 * 1024, "{text}");
        let host = std::thread::available_parallelism().unwrap().get();
        assert_eq!(lines[1], 3.min(host).to_string(), "{text}");
        // The container's own limit holds inside.
        assert_eq!(lines[2], (192 * 1024 * 1024).to_string(), "{text}");
        vm.assert_clean(id);

        for (name, typ, want) in [
            ("vm-hostpid", "pid", "host's PID namespace"),
            ("vm-hostnet", "network", "host's network"),
        ] {
            let b = vm.bundle(name, &["true"], |c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|n| n["type"] != typ);
            });
            vm.fails(&["run", "-b", b.to_str().unwrap(), name], want);
            vm.assert_clean(name);
        }
    }
}

/// A bind mount added under a running VM's share, in its relay's mount
/// namespace, reaches the guest through the (jailed) virtio-fs device: the
/// groundwork for containers added to a running VM (docs/vm.md, "VM
/// pods"). Here a directory of the host is bound inside the container's
/// rootfs in the share, and the container reads a file from it.
#[test]
fn a_bind_added_under_a_running_vms_share_reaches_the_guest() {
    let test = "a_bind_added_under_a_running_vms_share_reaches_the_guest";
    for vm in Vm::all(test, "") {
        let id = "vm-late-bind";
        let b = vm.bundle(id, &["/bin/sleep", "1000"], |_| {});
        let extra = vm.env.dir.path().join("extra");
        fs::create_dir_all(&extra).unwrap();
        fs::write(extra.join("file"), "added-later\n").unwrap();
        // The mount point, in the rootfs the guest sees.
        let rootfs = ironcell_testutil::image().join("rootfs");
        assert!(rootfs.join("mnt").is_dir());
        vm.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
        let st: Value = serde_json::from_str(
            &fs::read_to_string(vm.env.root.join(id).join("vm.json")).unwrap(),
        )
        .unwrap();
        let relay = st["relay_pid"].as_i64().unwrap().to_string();
        let share = PathBuf::from(st["run_dir"].as_str().unwrap()).join("share");
        let target = share.join(id).join("rootfs").join("mnt");
        // In the relay's mount namespace, as a container added to the VM
        // would be bound there.
        let nsenter = |args: &[&str]| {
            let out = Command::new("nsenter")
                .args(["-t", &relay, "-m", "--"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        nsenter(&[
            "mount",
            "--bind",
            extra.to_str().unwrap(),
            target.to_str().unwrap(),
        ]);
        let start = Instant::now();
        loop {
            let out = vm.run(&["exec", id, "cat", "/mnt/file"]);
            if stdout(&out).trim() == "added-later" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the guest never saw the bind: {} {}",
                stdout(&out),
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        // Not on the host: the bind is the relay's namespace's only.
        assert!(!rootfs.join("mnt/file").exists());
        vm.ok(&["delete", "--force", id]);
        vm.assert_clean(id);
    }
}
