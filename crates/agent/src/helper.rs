//! The engine helper: `ironcell-agent helper create|exec ...`, a fresh
//! single-threaded process that makes one container or exec'd process with
//! the container engine and reports its pid.
//!
//! The engine forks with a raw clone3 and runs a good deal of code in the
//! child. From the agent, a multi-threaded process, that child could
//! inherit a lock another thread held at the moment of the clone (the
//! allocator's, or the exit handlers' that Rust's `process::exit` runs),
//! and hang with the agent's spawn lock held. The helper has one thread.
//! It also holds only the fds it is given: fds 0, 1 and 2 are the new
//! process's stdio, fd 3 the report pipe, fd 4 the agent's log. So a
//! created container, which waits for `start` in the engine's code, holds
//! no other process's stdin (a pipe whose reader would then never see its
//! end). ironcelld does the same on the host (`ironcelld helper`), as
//! Kata's agent does in its guest.
//!
//! Report (fd 3): `ok <pid>` or `err <one line>`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use ironcell_container::{CreateOptions, Engine, ExecOptions, ProcessIo};
use ironcell_oci::Bundle;

use crate::AgentError;

const REPORT_FD: i32 = 3;
const LOG_FD: i32 = 4;

/// What the agent asks of a helper.
pub enum Job<'a> {
    Create { id: &'a str, bundle: &'a Path },
    Exec { id: &'a str, process: &'a Path },
}

/// Runs a helper for `job` with the engine's state under `state_root`; the
/// new process's stdio is `io` (pipes), or with `console` its terminal's
/// master goes to that socket. Returns the new process's pid once the
/// helper has ended. The caller holds the reaper's spawn lock, so the
/// helper's exit is this function's to wait for.
pub fn run(
    job: &Job,
    state_root: &Path,
    io: ProcessIo,
    console: Option<&Path>,
) -> Result<i32, AgentError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(AgentError::sys("pipe"))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("helper");
    match job {
        Job::Create { id, bundle } => {
            cmd.args(["create", "--id", id, "--bundle"]).arg(bundle);
        }
        Job::Exec { id, process } => {
            cmd.args(["exec", "--id", id, "--process"]).arg(process);
        }
    }
    cmd.arg("--root").arg(state_root);
    if let Some(c) = console {
        cmd.arg("--console-socket").arg(c);
    }
    let stdio = |fd: Option<OwnedFd>| fd.map_or_else(Stdio::null, Stdio::from);
    cmd.stdin(stdio(io.stdin))
        .stdout(stdio(io.stdout))
        .stderr(stdio(io.stderr))
        .env_clear();
    // The agent's own stderr (its log), kept aside: in the child, fd 2 is
    // the new process's stderr by the time the closure below runs.
    let log = nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(AgentError::sys("dup of the agent's stderr"))?;
    // SAFETY: fcntl just returned this fd; we own it.
    let log = unsafe { OwnedFd::from_raw_fd(log) };
    let (report, log_fd) = (w.as_raw_fd(), log.as_raw_fd());
    // SAFETY: dup2 is async-signal-safe; the closure only reads two
    // integers copied into it.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(log_fd, LOG_FD), (report, REPORT_FD)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(AgentError::io("cannot start the engine helper"))?;
    drop(cmd);
    drop((w, log));
    let mut line = String::new();
    let _ = BufReader::new(File::from(r)).read_line(&mut line);
    let status = child
        .wait()
        .map_err(AgentError::io("wait for the engine helper"))?;
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix("ok ").and_then(|p| p.parse().ok()) {
        return Ok(pid);
    }
    Err(match line.strip_prefix("err ") {
        Some(msg) => AgentError::Invalid(msg.to_string()),
        None => AgentError::Invalid(format!(
            "the engine helper ended ({status}) without a report"
        )),
    })
}

/// `ironcell-agent helper ...`.
pub fn main(args: &[OsString]) -> ExitCode {
    // SAFETY: the agent passed fds 3 and 4 for this purpose and nothing
    // else in this process owns them.
    let mut report = unsafe { File::from_raw_fd(REPORT_FD) };
    // Nothing but fds 0 to 4 reaches what the engine forks.
    // SAFETY: close_range only closes descriptors; none above 4 is in use.
    unsafe { libc::syscall(libc::SYS_close_range, LOG_FD as u32 + 1, u32::MAX, 0) };
    let log = Path::new("/proc/self/fd/4");
    let _ = logging::init(Some(log), logging::LogFormat::Text, tracing::Level::WARN);
    let result = ironcell_container::sealed_exe::ensure_sealed()
        .map_err(|e| e.to_string())
        .and_then(|()| job(args));
    let (line, code) = match result {
        Ok(pid) => (format!("ok {pid}\n"), ExitCode::SUCCESS),
        Err(e) => (format!("err {}\n", e.replace('\n', " ")), ExitCode::FAILURE),
    };
    let _ = report.write_all(line.as_bytes());
    code
}

fn job(args: &[OsString]) -> Result<i32, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args.iter().cloned());
    let (mut what, mut id, mut bundle, mut process, mut root, mut console) =
        (None, None, None, None, None, None::<PathBuf>);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let value = |p: &mut lexopt::Parser| p.value().map_err(|e| e.to_string());
        match arg {
            Value(v) if what.is_none() => what = v.into_string().ok(),
            Long("id") => id = value(&mut p)?.into_string().ok(),
            Long("bundle") => bundle = Some(PathBuf::from(value(&mut p)?)),
            Long("process") => process = Some(PathBuf::from(value(&mut p)?)),
            Long("root") => root = Some(PathBuf::from(value(&mut p)?)),
            Long("console-socket") => console = Some(PathBuf::from(value(&mut p)?)),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let (id, root) = id.zip(root).ok_or("helper: --id and --root are required")?;
    let engine = Engine::new(root, false);
    match (what.as_deref(), bundle, process) {
        (Some("create"), Some(bundle), _) => {
            let bundle = Bundle::load(&bundle).map_err(|e| e.to_string())?;
            let opts = CreateOptions {
                detach: true,
                console_socket: console,
                ..Default::default()
            };
            let c = engine
                .create(&id, &bundle, &opts)
                .map_err(|e| e.to_string())?;
            c.pid().ok_or_else(|| format!("container {id} has no init"))
        }
        (Some("exec"), _, Some(process)) => {
            let opts = ExecOptions {
                process: Some(process),
                detach: true,
                console_socket: console,
                ..Default::default()
            };
            engine.exec(&id, &opts).map_err(|e| e.to_string())
        }
        _ => Err("helper: create --bundle DIR or exec --process FILE".into()),
    }
}
