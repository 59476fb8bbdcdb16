//! A process exec'd into a running container is confined exactly as the
//! container's init is: seccomp filter, capabilities, no_new_privs,
//! credentials, cgroups, namespaces, rlimits, LSM label and OOM score
//! adjustment, compared field by field through /proc.

mod common;

use std::fs;

use common::*;
use serde_json::{json, Value};

/// A profile that allows everything but chmod, which fails with
/// EOPNOTSUPP, a reply nothing else gives.
fn chmod_blocking_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["chmod", "fchmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}],
    })
}

/// Runs the container detached with `edit` applied; its init records its
/// confinement, then a plain `exec` and an `exec --process` (the way
/// containerd's runc shim calls it) record theirs, and each tries chmod.
fn compare(name: &str, edit: impl Fn(&mut Value)) {
    let env = Env::new();
    let id = unique(name);
    let tmp = env.dir.path().join(format!("{id}-tmp"));
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let b = env.bundle(&id, |c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/out", "type": "bind", "source": tmp, "options": ["rbind", "rw"]
        }));
        c["linux"]["seccomp"] = chmod_blocking_profile();
        args(
            c,
            &[
                "/bin/sh",
                "-c",
                &format!("{CONFINEMENT_SNAPSHOT}\nsnap > /out/init; touch /out/f; exec sleep 1000"),
            ],
        );
        edit(c);
    });
    env.ok(&["run", "-d", "-b", b.to_str().unwrap(), &id]);
    wait_until(|| tmp.join("f").exists());
    let init = fs::read_to_string(tmp.join("init")).unwrap();
    assert!(
        init.contains("Seccomp:\t2"),
        "the init has no filter: {init}"
    );

    let probe = format!(
        "{CONFINEMENT_SNAPSHOT}\nsnap > /out/$0; chmod 600 /out/f 2> /out/$0-chmod; echo $? >> /out/$0-chmod"
    );
    env.ok(&["exec", &id, "/bin/sh", "-c", &probe, "exec"]);

    let config: Value =
        serde_json::from_str(&fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    let mut process = config["process"].clone();
    process["args"] = json!(["/bin/sh", "-c", &probe, "process"]);
    let pfile = env.dir.path().join(format!("{id}-process.json"));
    fs::write(&pfile, process.to_string()).unwrap();
    env.ok(&["exec", "--process", pfile.to_str().unwrap(), &id]);

    for how in ["exec", "process"] {
        let snap = fs::read_to_string(tmp.join(how)).unwrap();
        let diff = confinement_diff(&init, &snap);
        assert!(
            diff.is_empty(),
            "{how} differs from the init:\n{}",
            diff.join("\n")
        );
        let chmod = fs::read_to_string(tmp.join(format!("{how}-chmod"))).unwrap();
        assert!(
            chmod.contains("Operation not supported") && chmod.trim_end().ends_with('1'),
            "{how}: chmod was not stopped by the container's filter: {chmod}"
        );
    }
    env.ok(&["delete", "--force", &id]);
    assert_no_leftovers(&env, &id, None);
}

#[test]
fn exec_is_confined_as_the_init_with_no_new_privileges() {
    if !need_root("exec_is_confined_as_the_init_with_no_new_privileges") {
        return;
    }
    compare("conf-nnp", |c| {
        c["process"]["noNewPrivileges"] = json!(true);
    });
}

/// Kubernetes' default (allowPrivilegeEscalation unset): no
/// noNewPrivileges, and a capability set without CAP_SYS_ADMIN, so the
/// filter must be loaded while the runtime still holds CAP_SYS_ADMIN.
#[test]
fn exec_is_confined_as_the_init_without_no_new_privileges() {
    if !need_root("exec_is_confined_as_the_init_without_no_new_privileges") {
        return;
    }
    compare("conf-nonnp", |c| {
        c["process"]
            .as_object_mut()
            .unwrap()
            .remove("noNewPrivileges");
    });
    compare("conf-nnp-false", |c| {
        c["process"]["noNewPrivileges"] = json!(false);
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}]);
        c["process"]["oomScoreAdj"] = json!(500);
        c["process"]["user"] = json!({"uid": 1000, "gid": 100, "additionalGids": [4242]});
    });
}
