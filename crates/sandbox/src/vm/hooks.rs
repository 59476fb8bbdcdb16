//! OCI hooks of a vm container, run on the host (`prestart`,
//! `createRuntime`, `poststart`, `poststop`): they are host programs, and
//! the relay that stands for the container is their container process
//! (its pid is the one they get, its network namespace the container's on
//! the host).
//!
//! libcontainer has a hook runner, but it takes libcontainer's own
//! container state, which a vm container does not have; this is the same
//! few steps over the OCI state: the hook's arg0 and arguments, its
//! environment only, the state as JSON on stdin, and its timeout.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use serde_json::json;

use crate::{Result, SandboxError};

/// The OCI state a hook reads on its stdin.
pub struct HookState<'a> {
    pub id: &'a str,
    pub status: &'a str,
    pub pid: i32,
    pub bundle: &'a std::path::Path,
    pub annotations: &'a std::collections::BTreeMap<String, String>,
}

/// Runs `hooks` of kind `kind` in order; the first failure is the error.
pub fn run(kind: &str, hooks: Option<&Vec<Hook>>, state: &HookState) -> Result<()> {
    let stdin = json!({
        "ociVersion": ironcell_oci::OCI_VERSION,
        "id": state.id,
        "status": state.status,
        "pid": state.pid,
        "bundle": state.bundle,
        "annotations": state.annotations,
    })
    .to_string();
    for hook in hooks.into_iter().flatten() {
        run_one(hook, &stdin)
            .map_err(|e| SandboxError::Vm(format!("{kind} hook {}: {e}", hook.path().display())))?;
    }
    Ok(())
}

fn run_one(hook: &Hook, stdin: &str) -> std::result::Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(hook.path());
    if let Some((arg0, args)) = hook.args().as_ref().and_then(|a| a.split_first()) {
        cmd.arg0(arg0).args(args);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut i) = child.stdin.take() {
        // A hook that does not read its state is not an error.
        let _ = i.write_all(stdin.as_bytes());
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                let err = err.trim().replace('\n', " ");
                return Err(format!(
                    "{status}{}",
                    if err.is_empty() {
                        String::new()
                    } else {
                        format!(": {err}")
                    }
                ));
            }
            None if deadline.is_some_and(|d| Instant::now() > d) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", hook.timeout().unwrap_or(0)));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_hook_gets_the_state_and_its_failure_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("state");
        let ok = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","cat > {}; echo $X >> {}"],"env":["X=1"]}}"#,
            out.display(),
            out.display()
        ));
        let annotations = Default::default();
        let state = HookState {
            id: "c1",
            status: "created",
            pid: 42,
            bundle: dir.path(),
            annotations: &annotations,
        };
        run("prestart", Some(&vec![ok]), &state).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.contains(r#""id":"c1""#) && text.contains(r#""pid":42"#) && text.ends_with("1\n"),
            "{text}"
        );
        let bad = hook(r#"{"path":"/bin/sh","args":["sh","-c","echo no >&2; exit 3"]}"#);
        let e = run("poststart", Some(&vec![bad]), &state)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("poststart hook /bin/sh") && e.contains("no"),
            "{e}"
        );
        let slow = hook(r#"{"path":"/bin/sleep","args":["sleep","5"],"timeout":1}"#);
        let e = run("prestart", Some(&vec![slow]), &state)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out"), "{e}");
    }
}
