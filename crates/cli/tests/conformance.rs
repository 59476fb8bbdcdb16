//! OCI runtime spec conformance of the namespace sandbox, organised by the
//! spec's sections (config.md: mounts, process, capabilities, AppArmor,
//! linux resources; runtime.md: lifecycle and hooks). Each test runs real
//! containers through the `ironcell` binary. Where runc and crun differ, the
//! test follows crun and says so.

mod common;
use common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn push_mount(config: &mut Value, mount: Value) {
    config["mounts"].as_array_mut().unwrap().push(mount);
}

/// A host file to bind-mount into containers.
fn host_file(env: &Env, name: &str, text: &str) -> PathBuf {
    let p = env.dir.path().join(name);
    fs::write(&p, text).unwrap();
    p
}

/// `create` must fail with a one-line error holding every one of `want`,
/// and leave nothing of the container behind.
fn create_refused(env: &Env, bundle: &Path, id: &str, want: &[&str]) -> String {
    let err = env.fails(&["create", "-b", bundle.to_str().unwrap(), id], want[0]);
    for w in want {
        assert!(err.contains(w), "want {w:?} in {err:?}");
    }
    assert_no_leftovers(env, id, None);
    err
}

/// config.md "Mounts", and runc's `checkProcMount` (CVE-2019-16884,
/// CVE-2023-27561): only a procfs goes on /proc, and nothing goes inside
/// /proc but the files lxcfs emulates.
mod mounts {
    use super::*;

    #[test]
    fn a_mount_on_proc_that_is_not_procfs_is_refused() {
        if !need_root("a_mount_on_proc_that_is_not_procfs_is_refused") {
            return;
        }
        let env = Env::new();
        // A tmpfs over the procfs mount (where a fake attr/exec could go).
        let b = env.bundle("proc-tmpfs", |c| {
            push_mount(
                c,
                json!({"destination": "/proc", "type": "tmpfs", "source": "tmpfs"}),
            );
        });
        create_refused(&env, &b, "proc-tmpfs", &["/proc", "tmpfs"]);

        // A host directory bind-mounted as /proc, the advisory's volume.
        let fake = env.dir.path().join("fakeproc");
        fs::create_dir_all(fake.join("self/attr")).unwrap();
        fs::write(fake.join("self/attr/exec"), "").unwrap();
        let b = env.bundle("proc-bind", |c| {
            c["mounts"] = json!([
                {"destination": "/proc", "type": "bind", "source": fake, "options": ["rbind"]},
            ]);
        });
        create_refused(&env, &b, "proc-bind", &["/proc", "fakeproc"]);
    }

    #[test]
    fn a_mount_inside_proc_is_refused() {
        if !need_root("a_mount_inside_proc_is_refused") {
            return;
        }
        let env = Env::new();
        let src = host_file(&env, "payload", "x\n");
        for (id, dest) in [
            ("in-proc-attr", "/proc/self/attr/exec"),
            ("in-proc-sys", "/proc/sys/kernel/core_pattern"),
            // The same, spelled to escape a prefix match.
            ("in-proc-dotdot", "/tmp/../proc/sys/kernel/core_pattern"),
        ] {
            let b = env.bundle(id, |c| {
                push_mount(
                    c,
                    json!({"destination": dest, "type": "bind", "source": src, "options": ["bind"]}),
                );
            });
            create_refused(&env, &b, id, &["inside /proc", "/proc/"]);
        }
    }

    #[test]
    fn a_mount_reaching_proc_through_a_symlink_is_refused() {
        if !need_root("a_mount_reaching_proc_through_a_symlink_is_refused") {
            return;
        }
        let env = Env::new();
        // A rootfs of the image's whose /evil leads into /proc: the
        // destination only reaches /proc once resolved in the rootfs.
        let rootfs = env.dir.path().join("rootfs");
        let status = Command::new("cp")
            .arg("-a")
            .arg(image().join("rootfs"))
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(status.success());
        std::os::unix::fs::symlink("/proc/self", rootfs.join("evil")).unwrap();
        let src = host_file(&env, "payload", "x\n");
        let id = "proc-symlink";
        let b = env.bundle(id, |c| {
            c["root"]["path"] = json!(rootfs);
            push_mount(
                c,
                json!({"destination": "/evil/attr/exec", "type": "bind", "source": src, "options": ["bind"]}),
            );
        });
        create_refused(&env, &b, id, &["inside /proc"]);
    }

    #[test]
    fn lxcfs_files_may_be_mounted_over_in_proc() {
        if !need_root("lxcfs_files_may_be_mounted_over_in_proc") {
            return;
        }
        let env = Env::new();
        let src = host_file(&env, "uptime", "12345.67 890.12\n");
        let id = "proc-lxcfs";
        let b = env.bundle(id, |c| {
            push_mount(
                c,
                json!({"destination": "/proc/uptime", "type": "bind", "source": src, "options": ["bind", "ro"]}),
            );
            args(c, &["/bin/cat", "/proc/uptime"]);
        });
        let out = env.ok(&["run", "-b", b.to_str().unwrap(), id]);
        assert_eq!(out, "12345.67 890.12\n");
        assert_no_leftovers(&env, id, None);
    }
}

/// config.md "Process": `env`, and how args[0] is found (runc and crun
/// look a bare name up in the process's PATH only, and run a path as is).
mod process {
    use super::*;

    fn without_path(c: &mut Value) {
        c["process"]["env"] = json!(["TERM=xterm"]);
    }

    #[test]
    fn an_absolute_args0_runs_without_path_in_env() {
        if !need_root("an_absolute_args0_runs_without_path_in_env") {
            return;
        }
        let env = Env::new();
        let id = "no-path-abs";
        let b = env.bundle(id, |c| {
            without_path(c);
            args(c, &["/bin/echo", "ran without PATH"]);
        });
        assert_eq!(
            env.ok(&["run", "-b", b.to_str().unwrap(), id]),
            "ran without PATH\n"
        );
        assert_no_leftovers(&env, id, None);
    }

    #[test]
    fn a_bare_args0_without_path_in_env_is_refused_clearly() {
        if !need_root("a_bare_args0_without_path_in_env_is_refused_clearly") {
            return;
        }
        // runc: `exec: "echo": executable file not found in $PATH`; crun:
        // "executable file `echo` not found in $PATH". Both refuse.
        let env = Env::new();
        let id = "no-path-bare";
        let b = env.bundle(id, |c| {
            without_path(c);
            args(c, &["echo", "hi"]);
        });
        create_refused(
            &env,
            &b,
            id,
            &["\"echo\": executable file not found in $PATH", "no PATH"],
        );
    }
}

/// config.md "Linux Process": capabilities, and the AppArmor profile.
mod security {
    use super::*;

    #[test]
    fn a_capability_the_runtime_cannot_grant_is_named() {
        if !need_root("a_capability_the_runtime_cannot_grant_is_named") {
            return;
        }
        let env = Env::new();
        let id = "cap-missing";
        let b = env.bundle(id, |c| {
            for set in ["bounding", "effective", "permitted"] {
                c["process"]["capabilities"][set]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("CAP_SYS_RESOURCE"));
            }
        });
        // ironcell started without CAP_SYS_RESOURCE in its bounding set, as
        // inside a container that lacks it.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--bounding-set", "-sys_resource"])
            .arg(ironcell())
            .arg("--root")
            .arg(&env.root)
            .args(["run", "-b", b.to_str().unwrap(), id]);
        let out = output_via_files(&mut cmd);
        let err = stderr(&out);
        assert!(!out.status.success(), "ran: {}", stdout(&out));
        assert!(err.contains("CAP_SYS_RESOURCE"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_no_leftovers(&env, id, None);
    }

    #[test]
    fn an_unknown_capability_is_named() {
        if !need_root("an_unknown_capability_is_named") {
            return;
        }
        let env = Env::new();
        let id = "cap-unknown";
        let b = env.bundle(id, |c| {
            c["process"]["capabilities"]["bounding"]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_NOT_A_CAPABILITY"));
        });
        create_refused(&env, &b, id, &["CAP_NOT_A_CAPABILITY"]);
    }

    #[test]
    fn an_apparmor_profile_that_cannot_apply_is_named() {
        if !need_root("an_apparmor_profile_that_cannot_apply_is_named") {
            return;
        }
        let env = Env::new();
        let id = "aa-missing";
        let b = env.bundle(id, |c| {
            c["process"]["apparmorProfile"] = json!("ironcell-no-such-profile");
        });
        // Refused at create where AppArmor is off (this host: no AppArmor
        // module), and when applied where the profile is not loaded.
        let err = create_refused(&env, &b, id, &["ironcell-no-such-profile", "AppArmor"]);
        if !Path::new("/sys/module/apparmor").exists() {
            assert!(err.contains("not enabled"), "{err}");
        }
    }
}

/// config-linux.md "Control groups": resources applied at create.
mod resources {
    use super::*;

    fn v1_file(controller: &str, id: &str, file: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("ironcell-test")
            .join(id)
            .join(file)
    }

    #[test]
    fn disable_oom_killer_is_applied_at_create() {
        if !need_root("disable_oom_killer_is_applied_at_create") {
            return;
        }
        if cgroup_v2_only() || !Path::new("/sys/fs/cgroup/memory").exists() {
            // cgroup v2 has no switch for the OOM killer; runc and crun
            // ignore the field there.
            eprintln!("note: no cgroup v1 memory controller; disableOOMKiller not checked");
            return;
        }
        let env = Env::new();
        let id = "oom-off";
        let b = env.bundle(id, |c| {
            c["linux"]["resources"]["memory"] =
                json!({"limit": 64u64 << 20, "disableOOMKiller": true});
        });
        env.ok(&["create", "-b", b.to_str().unwrap(), id]);
        let control = fs::read_to_string(v1_file("memory", id, "memory.oom_control")).unwrap();
        assert!(
            control.lines().any(|l| l == "oom_kill_disable 1"),
            "{control}"
        );
        env.ok(&["delete", "--force", id]);
        assert_no_leftovers(&env, id, None);
    }
}

/// runtime.md "Lifecycle" and config.md "POSIX-platform Hooks".
mod hooks {
    use super::*;

    /// A hook that writes the state it gets on stdin to `to`.
    fn save_state(to: &Path) -> Value {
        json!({"path": "/bin/sh", "args": ["sh", "-c",
            format!("read -r s; printf '%s' \"$s\" > {}", to.display())]})
    }

    fn status_in(file: &Path) -> String {
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("hook state {}: {e}", file.display()));
        let state: Value = serde_json::from_str(&text).unwrap();
        state["status"].as_str().unwrap().to_string()
    }

    /// Lifecycle steps 3 to 5 come after the create operation (step 2):
    /// prestart, createRuntime and createContainer see `created`, as in
    /// crun (runc says `creating`).
    #[test]
    fn create_hooks_receive_the_created_state() {
        if !need_root("create_hooks_receive_the_created_state") {
            return;
        }
        let env = Env::new();
        let id = "hook-state";
        let dir = env.dir.path().join("states");
        fs::create_dir_all(&dir).unwrap();
        let b = env.bundle(id, |c| {
            c["hooks"] = json!({
                "prestart": [save_state(&dir.join("prestart"))],
                "createRuntime": [save_state(&dir.join("createRuntime"))],
                "createContainer": [save_state(&dir.join("createContainer"))],
            });
        });
        env.ok(&["create", "-b", b.to_str().unwrap(), id]);
        for hook in ["prestart", "createRuntime", "createContainer"] {
            assert_eq!(status_in(&dir.join(hook)), "created", "state of {hook}");
        }
        env.ok(&["delete", "--force", id]);
        assert_no_leftovers(&env, id, None);
    }

    /// Runs container `id` with `hooks` through create, start and delete,
    /// each of which must succeed, logging to `log`.
    /// create, start and delete of a container with `hooks`, logged to `log`
    /// when given; returns what the commands wrote to stderr.
    fn lifecycle_with_hooks(env: &Env, id: &str, hooks: Value, log: Option<&Path>) -> String {
        let b = env.bundle(id, |c| {
            args(c, &["/bin/true"]);
            c["hooks"] = hooks;
        });
        let mut stderr_text = String::new();
        let mut step = |args: &[&str]| {
            let mut all = match log {
                Some(log) => vec!["--log", log.to_str().unwrap()],
                None => vec![],
            };
            all.extend_from_slice(args);
            let out = env.run(&all);
            assert!(out.status.success(), "{all:?}: {}", stderr(&out));
            stderr_text.push_str(&stderr(&out));
        };
        step(&["create", "-b", b.to_str().unwrap(), id]);
        step(&["start", id]);
        env.wait_status(id, "stopped");
        step(&["delete", id]);
        assert_no_leftovers(env, id, None);
        stderr_text
    }

    fn assert_warned(text: &str, hook: &str) {
        assert!(
            text.lines()
                .any(|l| l.contains("warn") && l.contains(hook) && l.contains("/bin/false")),
            "no warning for the failing {hook} hook in {text}"
        );
    }

    /// Lifecycle step 9: a failing poststart hook is a warning; the hooks
    /// after it run, and start succeeds.
    #[test]
    fn a_failing_poststart_hook_only_warns() {
        if !need_root("a_failing_poststart_hook_only_warns") {
            return;
        }
        let env = Env::new();
        let ran = env.dir.path().join("ran");
        let log = env.dir.path().join("ironcell.log");
        let hooks = json!({"poststart": [{"path": "/bin/false"}, save_state(&ran)]});
        lifecycle_with_hooks(&env, "poststart-fails", hooks.clone(), Some(&log));
        assert!(ran.exists(), "the hook after the failing one did not run");
        assert_warned(&fs::read_to_string(&log).unwrap(), "poststart");
        // Without --log the warning is on stderr.
        let text = lifecycle_with_hooks(&env, "poststart-fails-2", hooks, None);
        assert_warned(&text, "poststart");
    }

    /// Lifecycle step 13: a failing poststop hook is a warning; the hooks
    /// after it run, and delete succeeds and removes the container.
    #[test]
    fn a_failing_poststop_hook_only_warns() {
        if !need_root("a_failing_poststop_hook_only_warns") {
            return;
        }
        let env = Env::new();
        let ran = env.dir.path().join("ran");
        let log = env.dir.path().join("ironcell.log");
        let hooks = json!({"poststop": [{"path": "/bin/false"}, save_state(&ran)]});
        lifecycle_with_hooks(&env, "poststop-fails", hooks.clone(), Some(&log));
        assert_eq!(status_in(&ran), "stopped");
        assert_warned(&fs::read_to_string(&log).unwrap(), "poststop");
        let text = lifecycle_with_hooks(&env, "poststop-fails-2", hooks, None);
        assert_warned(&text, "poststop");
    }
}
