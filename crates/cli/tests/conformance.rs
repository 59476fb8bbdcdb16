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

/// runtime.md "State", "Lifecycle" and "Operations" (the errors on unknown
/// and duplicate ids, `start` of a running container and `kill` of a
/// stopped one are checked in cli.rs).
mod lifecycle {
    use super::*;

    /// The state's fields through created, running and stopped; a failed
    /// operation leaves the state as it was; config.json edited after
    /// create does not affect the container.
    #[test]
    fn state_fields_and_status_transitions() {
        if !need_root("state_fields_and_status_transitions") {
            return;
        }
        let env = Env::new();
        let id = "cf-life";
        let out = env.dir.path().join("cf-life.out");
        let b = env.bundle(id, |c| {
            c["annotations"] = json!({"org.example.key": "value"});
            args(c, &["/bin/sh", "-c", "echo original; sleep 0.3"]);
        });
        let status = env
            .cmd(&["create", "-b", b.to_str().unwrap(), id])
            .stdout(fs::File::create(&out).unwrap())
            .status()
            .unwrap();
        assert!(status.success());
        let st = env.state(id);
        assert!(st["ociVersion"].as_str().unwrap().starts_with("1."), "{st}");
        assert_eq!(st["id"], id);
        assert_eq!(st["status"], "created");
        let pid = st["pid"].as_i64().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "{st}");
        assert_eq!(st["bundle"], json!(b));
        assert!(Path::new(st["bundle"].as_str().unwrap()).is_absolute());
        assert_eq!(st["annotations"], json!({"org.example.key": "value"}));

        // "Any updates to config.json after [create] MUST NOT affect the
        // container."
        let mut config: Value =
            serde_json::from_str(&fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
        args(&mut config, &["/bin/echo", "edited"]);
        fs::write(b.join("config.json"), config.to_string()).unwrap();

        env.ok(&["start", id]);
        let st = env.state(id);
        assert!(
            st["status"] == "running" || st["status"] == "stopped",
            "{st}"
        );
        // A delete of a running container fails and changes nothing.
        if st["status"] == "running" {
            let r = env.run(&["delete", id]);
            assert!(!r.status.success());
            let now = env.state(id);
            assert!(
                now["pid"] == st["pid"] || now["status"] == "stopped",
                "{now}"
            );
        }
        env.wait_status(id, "stopped");
        assert_eq!(fs::read_to_string(&out).unwrap(), "original\n");
        // start of a stopped container is an error and changes nothing.
        let r = env.run(&["start", id]);
        assert!(!r.status.success(), "started a stopped container");
        assert_eq!(env.status(id), "stopped");
        assert_eq!(fs::read_to_string(&out).unwrap(), "original\n");
        env.ok(&["delete", id]);
        env.fails(&["state", id], "does not exist");
        assert_no_leftovers(&env, id, None);
        // "Once a container is deleted its ID MAY be used by a subsequent
        // container."
        let b = env.bundle(id, |c| args(c, &["/bin/echo", "again"]));
        assert_eq!(env.ok(&["run", "-b", b.to_str().unwrap(), id]), "again\n");
        assert_no_leftovers(&env, id, None);
    }

    /// An exec racing the container's death either runs or fails with the
    /// container's status named, whatever step of joining it was at (its
    /// namespaces gone, its pid namespace without an init).
    #[test]
    fn exec_racing_a_kill_names_the_stopped_container() {
        if !need_root("exec_racing_a_kill_names_the_stopped_container") {
            return;
        }
        let env = Env::new();
        let id = "cf-exec-race";
        let b = env.bundle(id, |c| args(c, &["/bin/sleep", "4245005"]));
        for _ in 0..15 {
            env.ok(&["run", "-d", "-b", b.to_str().unwrap(), id]);
            let mut kill = env.cmd(&["kill", id, "KILL"]).spawn().unwrap();
            let r = env.run(&["exec", id, "/bin/true"]);
            kill.wait().unwrap();
            let err = stderr(&r);
            assert!(
                r.status.success()
                    || (err.contains(&format!("container {id}: it is stopped, not running"))
                        && err.trim_end().lines().count() == 1),
                "exec during kill: {err}"
            );
            env.ok(&["delete", "--force", id]);
        }
        assert_no_leftovers(&env, id, Some("4245005"));
    }
}

/// config.md "POSIX-platform Hooks": the state on stdin of every kind,
/// args and env, timeouts, and failures of the create-time hooks.
mod hook_semantics {
    use super::*;

    /// The hook's stdin (the state) saved to `to`.
    fn save_state(to: &str) -> Value {
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {to}")]})
    }

    fn read_state(p: &Path) -> Value {
        let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", p.display()))
    }

    /// "The state of the container MUST be passed to hooks over stdin":
    /// each of the six kinds gets the container's id, bundle and
    /// annotations, and the status of its step. startContainer's status
    /// and pid are not checked: libcontainer passes `creating` and no pid
    /// there (runc passes `created` and the pid; see docs/conformance.md).
    #[test]
    fn every_hook_kind_gets_the_state_on_stdin() {
        if !need_root("every_hook_kind_gets_the_state_on_stdin") {
            return;
        }
        let env = Env::new();
        let id = "cf-hook-stdin";
        let dir = env.dir.path().join("states");
        fs::create_dir_all(&dir).unwrap();
        let host = |k: &str| save_state(dir.join(k).to_str().unwrap());
        let b = env.bundle(id, |c| {
            args(c, &["/bin/true"]);
            c["annotations"] = json!({"org.example.hook": "yes"});
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs"}));
            m.push(json!({"destination": "/run/states", "type": "bind", "source": dir, "options": ["rbind", "rw"]}));
            c["hooks"] = json!({
                "prestart": [host("prestart")],
                "createRuntime": [host("createRuntime")],
                "createContainer": [host("createContainer")],
                "startContainer": [save_state("/run/states/startContainer")],
                "poststart": [host("poststart")],
                "poststop": [host("poststop")],
            });
        });
        env.ok(&["create", "-b", b.to_str().unwrap(), id]);
        let pid = env.state(id)["pid"].clone();
        env.ok(&["start", id]);
        env.wait_status(id, "stopped");
        env.ok(&["delete", id]);
        assert_no_leftovers(&env, id, None);
        for (kind, status) in [
            ("prestart", "created"),
            ("createRuntime", "created"),
            ("createContainer", "created"),
            ("startContainer", "created"),
            ("poststart", "running"),
            ("poststop", "stopped"),
        ] {
            let st = read_state(&dir.join(kind));
            assert_eq!(st["id"], id, "{kind}: {st}");
            assert_eq!(st["status"], status, "{kind}: {st}");
            assert_eq!(st["bundle"], json!(b), "{kind}: {st}");
            assert!(
                st["ociVersion"].as_str().unwrap().starts_with("1."),
                "{kind}: {st}"
            );
            assert_eq!(st["annotations"]["org.example.hook"], "yes", "{kind}: {st}");
            match kind {
                // They run in the container's init, in its pid namespace,
                // where the host's pid is not visible: the init's pid there
                // (as runc gives it).
                "createContainer" | "startContainer" => assert_eq!(st["pid"], 1, "{kind}: {st}"),
                "poststop" => {}
                _ => assert_eq!(st["pid"], pid, "{kind}: {st}"),
            }
        }
    }

    /// A hook's `args` are its argv (args[0] included) and `env` is its
    /// whole environment: nothing of the runtime's own leaks in.
    #[test]
    fn hook_args_and_env_are_passed_as_given() {
        if !need_root("hook_args_and_env_are_passed_as_given") {
            return;
        }
        let env = Env::new();
        let id = "cf-hook-argv";
        let out = env.dir.path().join("hook.out");
        let b = env.bundle(id, |c| {
            args(c, &["/bin/true"]);
            c["hooks"] = json!({"createRuntime": [{
                "path": "/bin/sh",
                "args": ["cf-argv0", "-c", format!("tr '\\0' ' ' < /proc/$$/cmdline > {o}; echo >> {o}; /usr/bin/env >> {o}", o = out.display()), "cf-arg1"],
                "env": ["CF_HOOK=yes", "PATH=/usr/bin:/bin"],
            }]});
        });
        let mut cmd = env.cmd(&["run", "-b", b.to_str().unwrap(), id]);
        cmd.env("CF_RUNTIME_ENV", "leak");
        let r = output_via_files(&mut cmd);
        assert!(r.status.success(), "{}", stderr(&r));
        assert_no_leftovers(&env, id, None);
        let text = fs::read_to_string(&out).unwrap();
        let mut lines = text.lines();
        let argv = lines.next().unwrap();
        assert!(argv.starts_with("cf-argv0 -c "), "{argv}");
        assert!(argv.trim_end().ends_with(" cf-arg1"), "{argv}");
        let envs: Vec<&str> = lines.filter(|l| !l.starts_with("PWD=")).collect();
        assert!(envs.contains(&"CF_HOOK=yes"), "{text}");
        assert!(
            !text.contains("CF_RUNTIME_ENV"),
            "the runtime's env reached the hook: {text}"
        );
    }

    /// `timeout`: a hook still running after it fails its step (here
    /// create, through prestart and createRuntime) and is killed; one that
    /// ends in time does not.
    #[test]
    fn a_hook_over_its_timeout_fails_create() {
        if !need_root("a_hook_over_its_timeout_fails_create") {
            return;
        }
        let env = Env::new();
        let marker = "4245101";
        for kind in ["prestart", "createRuntime"] {
            let id = format!("cf-hook-timeout-{}", kind.to_lowercase());
            let b = env.bundle(&id, |c| {
                c["hooks"] = json!({kind: [{"path": "/bin/sleep", "args": ["sleep", marker], "timeout": 1}]});
            });
            let start = std::time::Instant::now();
            env.fails(&["create", "-b", b.to_str().unwrap(), &id], "timeout");
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{:?}",
                start.elapsed()
            );
            assert_no_leftovers(&env, &id, Some(marker));
        }
        let id = "cf-hook-in-time";
        let b = env.bundle(id, |c| {
            args(c, &["/bin/true"]);
            c["hooks"] = json!({"createRuntime": [{"path": "/bin/true", "timeout": 5}]});
        });
        env.ok(&["run", "-b", b.to_str().unwrap(), id]);
        assert_no_leftovers(&env, id, None);
    }

    /// Lifecycle steps 3 to 5: a failing prestart or createContainer hook
    /// fails create, and the container is destroyed (createRuntime is in
    /// cli.rs::hooks_run_in_order_with_state). The poststop hooks still
    /// run (step 13, after step 12 that the failure continues at).
    #[test]
    fn a_failing_create_hook_fails_create_and_leaves_nothing() {
        if !need_root("a_failing_create_hook_fails_create_and_leaves_nothing") {
            return;
        }
        let env = Env::new();
        for kind in ["prestart", "createContainer"] {
            let id = format!("cf-hook-fail-{}", kind.to_lowercase());
            let b = env.bundle(&id, |c| {
                c["hooks"] = json!({kind: [{"path": "/bin/false"}]});
            });
            let r = env.run(&["create", "-b", b.to_str().unwrap(), &id]);
            assert!(!r.status.success(), "{kind}: create succeeded");
            assert_eq!(stderr(&r).trim_end().lines().count(), 1, "{}", stderr(&r));
            assert_no_leftovers(&env, &id, None);
        }
    }

    /// Lifecycle step 7: a failing startContainer hook is an error of
    /// start, the container stops without running its process, and the
    /// lifecycle goes on at step 12 (no poststart; delete runs poststop).
    /// runc and crun return from start before the hook has run, so their
    /// start succeeds here; ironcell waits for the hook, as the spec says.
    #[test]
    fn a_failing_start_container_hook_fails_start() {
        if !need_root("a_failing_start_container_hook_fails_start") {
            return;
        }
        let env = Env::new();
        let id = "cf-hook-fail-start";
        let ran = env.dir.path().join("ran");
        let poststart = env.dir.path().join("poststart");
        let poststop = env.dir.path().join("poststop");
        let touch = |p: &Path| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("touch {}", p.display())]});
        let b = env.bundle(id, |c| {
            args(c, &["/bin/sh", "-c", "echo ran > /tmp/ran"]);
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/tmp", "type": "bind", "source": env.dir.path(), "options": ["rbind", "rw"]}));
            c["hooks"] = json!({
                "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo cf-start-refused >&2; exit 3"]}],
                "poststart": [touch(&poststart)],
                "poststop": [touch(&poststop)],
            });
        });
        env.ok(&["create", "-b", b.to_str().unwrap(), id]);
        let err = env.fails(&["start", id], "startContainer");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        env.wait_status(id, "stopped");
        assert!(
            !ran.exists(),
            "the process ran after its startContainer hook failed"
        );
        assert!(!poststart.exists(), "poststart ran after start failed");
        env.ok(&["delete", id]);
        assert!(poststop.exists(), "poststop did not run");
        assert_no_leftovers(&env, id, None);

        // A hook that succeeds lets start go on, and the process runs.
        let id = "cf-hook-ok-start";
        let b = env.bundle(id, |c| {
            args(c, &["/bin/sh", "-c", "echo ran > /tmp/ran"]);
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/tmp", "type": "bind", "source": env.dir.path(), "options": ["rbind", "rw"]}));
            c["hooks"] = json!({"startContainer": [{"path": "/bin/true"}]});
        });
        env.ok(&["create", "-b", b.to_str().unwrap(), id]);
        env.ok(&["start", id]);
        env.wait_status(id, "stopped");
        env.ok(&["delete", id]);
        assert_eq!(fs::read_to_string(&ran).unwrap(), "ran\n");
    }

    /// A hook's path MUST be absolute, and a timeout MUST be above zero.
    #[test]
    fn invalid_hooks_are_refused() {
        if !need_root("invalid_hooks_are_refused") {
            return;
        }
        let env = Env::new();
        for (id, hook, want) in [
            (
                "cf-hook-relative",
                json!({"path": "bin/true"}),
                "hooks.prestart[0].path \"bin/true\" must be an absolute path",
            ),
            (
                "cf-hook-zero-timeout",
                json!({"path": "/bin/true", "timeout": 0}),
                "hooks.prestart[0].timeout 0 must be greater than zero",
            ),
        ] {
            let b = env.bundle(id, |c| c["hooks"] = json!({"prestart": [hook]}));
            let err = env.fails(&["create", "-b", b.to_str().unwrap(), id], want);
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert_no_leftovers(&env, id, None);
        }
    }
}
