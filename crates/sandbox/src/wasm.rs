//! The wasm sandbox in the CLI: a container whose process is the
//! `ironcell-wasm` runner, which runs the bundle's WebAssembly module with
//! wasmtime and WASI (docs/wasm.md).
//!
//! The isolation is wasmtime's: the module sees only the directories
//! preopened for it (the rootfs and the spec's bind mounts) and cannot make
//! a system call. The runner process around it is a container in the
//! runtime sense — a cgroup (limits, `ps`, `pause`, statistics), the spec's
//! user, stdio and terminal, a pid for `kill` — but gets no namespaces,
//! rootfs pivot or seccomp filter of its own: those guard native code, and
//! setting them up would cost more than the whole run of a small module
//! (the design note in docs/wasm.md has the numbers).
//!
//! Lifecycle, as runc's: `create` starts the runner, which loads and checks
//! the module (compiling it into the cache under the state root on a miss)
//! and reports back before `create` returns, so a bad module is refused at
//! create; it then waits on a FIFO that `start` reads.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ironcell_basics::proc_stat::{is_alive, ProcStat};
use ironcell_container::cgroup::{self, Cgroup};
use ironcell_container::stats::Stats;
use ironcell_container::{ContainerError, CreateOptions, ExecOptions, NOT_RUNNING};
use ironcell_oci::wasm::Job;
use ironcell_oci::{Bundle, ContainerState, Status, OCI_VERSION};
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::{Kind, Result, Sandbox, SandboxError};

/// A wasm container's state, in its state directory.
const STATE_FILE: &str = "wasm.json";
/// The FIFO the runner waits on until `start`.
const START_FIFO: &str = "start.fifo";
/// The runner binary; found beside the running binary, else on PATH.
const RUNNER: &str = "ironcell-wasm";
/// Environment variable naming the runner binary explicitly.
pub const RUNNER_ENV: &str = "IRONCELL_WASM_RUNNER";

#[derive(Debug, Serialize, Deserialize)]
struct State {
    id: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    pid: i32,
    /// The runner's start time (clock ticks since boot, /proc/PID/stat):
    /// tells it from a later process that reuses its pid.
    pid_start: u64,
    created: String,
    annotations: HashMap<String, String>,
    cgroup: PathBuf,
    systemd: bool,
}

pub struct WasmSandbox {
    root: PathBuf,
    systemd_cgroup: bool,
}

impl WasmSandbox {
    pub fn new(root: PathBuf, systemd_cgroup: bool) -> Self {
        WasmSandbox {
            root,
            systemd_cgroup,
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn load(&self, id: &str) -> Result<State> {
        let path = self.dir(id).join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SandboxError::Container(ContainerError::NotFound(id.to_string()))
            } else {
                wasm_err(format!("cannot read {}: {e}", path.display()))
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| wasm_err(format!("{}: malformed state: {e}", path.display())))
    }

    fn cgroup(&self, st: &State) -> Result<Cgroup> {
        Ok(Cgroup::open(&st.cgroup, st.systemd, &st.id)?)
    }

    fn status(&self, st: &State) -> Status {
        if !is_alive(st.pid, st.pid_start) {
            return Status::Stopped;
        }
        if self.dir(&st.id).join(START_FIFO).exists() {
            return Status::Created;
        }
        if !st.systemd && cgroup::is_frozen(&st.cgroup) {
            return Status::Paused;
        }
        Status::Running
    }

    fn wrong_status(
        st: &State,
        status: Status,
        op: &'static str,
        hint: &'static str,
    ) -> SandboxError {
        ContainerError::WrongStatus {
            op,
            id: st.id.clone(),
            status,
            hint,
        }
        .into()
    }

    fn runner() -> PathBuf {
        if let Some(p) = std::env::var_os(RUNNER_ENV) {
            return p.into();
        }
        ironcell_container::sealed_exe::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(RUNNER)))
            .filter(|p| p.exists())
            .unwrap_or_else(|| RUNNER.into())
    }

    /// `create` after the state directory exists: on error the caller
    /// removes the directory, and this removes what it made.
    fn create_in(&self, id: &str, dir: &Path, bundle: &Bundle, opts: &CreateOptions) -> Result<()> {
        let mut job = Job::from_bundle(bundle).map_err(|e| wasm_err(e.to_string()))?;
        let spec = &bundle.spec;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let pty = match (&opts.console_socket, terminal) {
            (Some(socket), true) => Some(ironcell_container::send_new_pty(socket)?),
            (None, true) => {
                return Err(wasm_err(
                    "process.terminal is true but no --console-socket was given".into(),
                ))
            }
            _ => None,
        };
        let fifo = dir.join(START_FIFO);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(|e| wasm_err(format!("cannot make {}: {e}", fifo.display())))?;
        // Whatever the umask: the runner may write it as another user.
        fs::set_permissions(&fifo, fs::Permissions::from_mode(0o622))
            .map_err(|e| wasm_err(format!("{}: {e}", fifo.display())))?;
        let linux = spec.linux().as_ref();
        let cgroup_path = linux
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_else(|| {
                if self.systemd_cgroup {
                    format!(":ironcell:{id}").into()
                } else {
                    Path::new("/ironcell").join(id)
                }
            });
        // Device rules are left out: the module opens no device (WASI has
        // none), and they are a dozen writes on the way to its start.
        // Nothing to set (a spec's usual resources are device rules only):
        // no libcgroups manager is built.
        let resources = linux
            .and_then(|l| l.resources().as_ref())
            .map(|r| {
                let mut r = r.clone();
                r.set_devices(None);
                r
            })
            .filter(|r| *r != LinuxResources::default());
        let v1 = if self.systemd_cgroup {
            None
        } else {
            cgroup::v1::hierarchies()?
        };
        let placement = match v1 {
            // cgroup v1 (cgroupfs): made and limited here, joined by the
            // runner itself (cgroup::v1 says why).
            Some(h) => {
                let ready = cgroup::v1::prepare(&h, &cgroup_path).and_then(|tasks| {
                    job.cgroup_tasks = tasks;
                    match &resources {
                        Some(r) => Cgroup::open(&cgroup_path, false, id)?.apply(r),
                        None => Ok(()),
                    }
                });
                if let Err(e) = ready {
                    let _ = cgroup::v1::remove(&h, &cgroup_path);
                    return Err(e.into());
                }
                Placement::SelfJoin(h)
            }
            // v2 or systemd: libcgroups moves the runner once it exists.
            None => Placement::Moved(Cgroup::open(&cgroup_path, self.systemd_cgroup, id)?),
        };
        let remove_cgroup = |placement: &Placement| {
            let _ = placement.remove(&cgroup_path);
        };
        let (job_r, job_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let mut cmd = Command::new(Self::runner());
        cmd.arg("run")
            .arg("--cache")
            .arg(self.root.join(".wasm-cache"))
            .arg("--start-fifo")
            .arg(&fifo)
            .current_dir("/");
        if let Some(pty) = &pty {
            cmd.stdin(Stdio::from(pty.try_clone().map_err(io_err)?))
                .stdout(Stdio::from(pty.try_clone().map_err(io_err)?))
                .stderr(Stdio::from(pty.try_clone().map_err(io_err)?));
        }
        let (jr, rw) = (job_r.as_raw_fd(), report_w.as_raw_fd());
        let with_tty = pty.is_some();
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only async-signal-safe system calls (dup2, setsid, ioctl).
        unsafe {
            cmd.pre_exec(move || {
                for (from, to) in [(jr, 3), (rw, 4)] {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if with_tty && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                remove_cgroup(&placement);
                return Err(wasm_err(format!(
                    "cannot start the wasm runner {}: {e}",
                    Self::runner().display()
                )));
            }
        };
        drop((job_r, report_w, pty));
        let pid = child.id() as i32;
        let kill_child = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        // In the cgroup, with its limits, before it reads its job.
        if let Placement::Moved(cg) = &placement {
            let joined = cg.add(pid).and_then(|()| match &resources {
                Some(r) => cg.apply(r),
                None => Ok(()),
            });
            if let Err(e) = joined {
                kill_child(&mut child);
                remove_cgroup(&placement);
                return Err(e.into());
            }
        }
        let report = serde_json::to_vec(&job)
            .map_err(|e| wasm_err(format!("job: {e}")))
            .and_then(|json| File::from(job_w).write_all(&json).map_err(io_err))
            .and_then(|()| {
                let mut text = String::new();
                File::from(report_r)
                    .read_to_string(&mut text)
                    .map_err(io_err)?;
                Ok(text)
            });
        let fail = |child: &mut std::process::Child, e: SandboxError| {
            kill_child(child);
            remove_cgroup(&placement);
            Err(e)
        };
        match report {
            Ok(t) if t == "ok" => {}
            Ok(t) if t.is_empty() => {
                let status = child.wait().ok();
                return fail(
                    &mut child,
                    wasm_err(format!(
                        "the wasm runner ended before it was ready ({status:?})"
                    )),
                );
            }
            Ok(msg) => return fail(&mut child, wasm_err(msg)),
            Err(e) => return fail(&mut child, e),
        }
        let state = State {
            id: id.to_string(),
            bundle: bundle.path.clone(),
            rootfs: bundle.rootfs.clone(),
            pid,
            pid_start: ProcStat::of(pid).map_or(0, |s| s.start_time),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup: cgroup_path.clone(),
            systemd: self.systemd_cgroup,
        };
        let written = serde_json::to_vec(&state)
            .map_err(|e| wasm_err(format!("state: {e}")))
            .and_then(|json| write_atomically(&dir.join(STATE_FILE), &json))
            .and_then(|()| match &opts.pid_file {
                Some(p) => write_atomically(p, pid.to_string().as_bytes()),
                None => Ok(()),
            });
        if let Err(e) = written {
            return fail(&mut child, e);
        }
        // The runner is not waited for here: a foreground `run` reaps it
        // through SIGCHLD, or it goes to the caller's subreaper (conmon,
        // the shim) when this process exits, as runc's init does.
        std::mem::forget(child);
        Ok(())
    }

    /// Sends SIGKILL to every process of the container (its cgroup `cg`),
    /// and waits (5 s at most) until the runner is gone.
    fn kill_and_wait(&self, st: &State, cg: Option<&Cgroup>) -> Result<()> {
        let mut pids = cg.and_then(|c| c.pids().ok()).unwrap_or_default();
        if is_alive(st.pid, st.pid_start) && !pids.contains(&st.pid) {
            pids.push(st.pid);
        }
        // A frozen process dies of SIGKILL only once thawed.
        if let Some(c) = cg {
            let _ = c.freeze(false);
        }
        for pid in pids {
            // SAFETY: kill(2) takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_alive(st.pid, st.pid_start) {
            if Instant::now() > deadline {
                return Err(wasm_err(format!(
                    "container {}: process {} did not die of SIGKILL",
                    st.id, st.pid
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

/// How a runner gets into its container's cgroup.
enum Placement {
    /// cgroup v1 with cgroupfs (these hierarchies): the runner joins itself.
    SelfJoin(Vec<cgroup::v1::Hierarchy>),
    /// cgroup v2 or systemd: moved by libcgroups once it exists.
    Moved(Cgroup),
}

impl Placement {
    /// Removes the cgroup at `path`, killing what is left in it.
    fn remove(&self, path: &Path) -> std::result::Result<(), ContainerError> {
        match self {
            Placement::SelfJoin(h) => cgroup::v1::remove(h, path),
            Placement::Moved(cg) => cg.remove(),
        }
    }
}

impl Sandbox for WasmSandbox {
    fn kind(&self) -> Kind {
        Kind::Wasm
    }

    fn owns(&self, id: &str) -> bool {
        self.dir(id).join(STATE_FILE).exists()
    }

    fn ids(&self) -> Result<Vec<String>> {
        Ok(crate::ids_with(&self.root, STATE_FILE))
    }

    fn create(&self, id: &str, bundle: &Bundle, opts: &CreateOptions) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io_err)?;
        let dir = self.dir(id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    SandboxError::Container(ContainerError::Exists(id.to_string()))
                } else {
                    io_err(e)
                }
            })?;
        let r = self.create_in(id, &dir, bundle, opts);
        if r.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        r
    }

    fn start(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        let status = self.status(&st);
        if status != Status::Created {
            return Err(Self::wrong_status(&st, status, "start", ", not created"));
        }
        let fifo = self.dir(id).join(START_FIFO);
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .map_err(|e| wasm_err(format!("cannot open {}: {e}", fifo.display())))?;
        // The runner writes one byte once it sees a reader; it may still be
        // on its way to the FIFO.
        loop {
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll reads and writes one pollfd that lives across
            // the call.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            if pfd.revents & libc::POLLIN != 0 {
                let mut b = [0u8; 1];
                if (&f).read(&mut b).map_err(io_err)? == 1 {
                    break;
                }
            }
            if !is_alive(st.pid, st.pid_start) {
                let _ = fs::remove_file(&fifo);
                return Err(wasm_err(format!("container {id} ended before its start")));
            }
        }
        fs::remove_file(&fifo).map_err(io_err)?;
        Ok(())
    }

    fn state(&self, id: &str) -> Result<ContainerState> {
        let st = self.load(id)?;
        let status = self.status(&st);
        Ok(ContainerState {
            oci_version: OCI_VERSION.to_string(),
            id: st.id.clone(),
            pid: if status == Status::Stopped { 0 } else { st.pid },
            status,
            bundle: st.bundle.clone(),
            rootfs: st.rootfs.clone(),
            created: st.created.clone(),
            annotations: st.annotations.clone(),
            owner: String::new(),
            sandbox: Kind::Wasm.as_str().to_string(),
        })
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let st = self.load(id)?;
        let status = self.status(&st);
        if status == Status::Stopped {
            // The runner is the container's only process: with `all` nothing
            // is left to signal (runc's answer); without, runc's words.
            if all {
                return Ok(());
            }
            return Err(Self::wrong_status(&st, status, "kill", NOT_RUNNING));
        }
        let pids = if all {
            self.cgroup(&st)?.pids()?
        } else {
            vec![st.pid]
        };
        for pid in pids {
            // SAFETY: kill(2) takes plain integers.
            if unsafe { libc::kill(pid, signal) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(wasm_err(format!(
                        "cannot signal container {id} process {pid}: {e}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        let st = self.load(id)?;
        let status = self.status(&st);
        if !force && matches!(status, Status::Running | Status::Paused) {
            return Err(Self::wrong_status(
                &st,
                status,
                "delete",
                ", stop it first or use --force",
            ));
        }
        let cg = if status != Status::Stopped {
            let cg = self.cgroup(&st).ok();
            self.kill_and_wait(&st, cg.as_ref())?;
            cg
        } else {
            None
        };
        // cgroup v1 with cgroupfs: removed from one read of the mount table
        // (libcgroups' manager reads it once per controller).
        let placement = match (st.systemd, cgroup::v1::hierarchies()) {
            (false, Ok(Some(h))) => Some(Placement::SelfJoin(h)),
            _ => cg.or_else(|| self.cgroup(&st).ok()).map(Placement::Moved),
        };
        if let Some(p) = placement {
            p.remove(&st.cgroup)?;
        }
        fs::remove_dir_all(self.dir(id)).map_err(io_err)?;
        Ok(())
    }

    fn pause(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        let status = self.status(&st);
        if status != Status::Running {
            return Err(Self::wrong_status(&st, status, "pause", ", not running"));
        }
        Ok(self.cgroup(&st)?.freeze(true)?)
    }

    fn resume(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        let status = self.status(&st);
        if status != Status::Paused {
            return Err(Self::wrong_status(&st, status, "resume", ", not paused"));
        }
        Ok(self.cgroup(&st)?.freeze(false)?)
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let st = self.load(id)?;
        Ok(self.cgroup(&st)?.pids()?)
    }

    fn exec(&self, _id: &str, _opts: &ExecOptions) -> Result<i32> {
        Err(SandboxError::Unsupported {
            what: "exec",
            kind: Kind::Wasm,
        })
    }

    fn stats(&self, id: &str) -> Result<Stats> {
        let st = self.load(id)?;
        Ok(self.cgroup(&st)?.stats()?)
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let st = self.load(id)?;
        let status = self.status(&st);
        if status == Status::Stopped {
            return Err(Self::wrong_status(&st, status, "update", ", not running"));
        }
        Ok(self.cgroup(&st)?.update(resources)?)
    }

    fn memory_cgroup(&self, id: &str) -> Result<Option<PathBuf>> {
        let st = self.load(id)?;
        Ok(if st.systemd {
            None
        } else {
            cgroup::memory_dir(&st.cgroup)
        })
    }
}

fn wasm_err(msg: String) -> SandboxError {
    SandboxError::Wasm(msg)
}

fn io_err(e: std::io::Error) -> SandboxError {
    SandboxError::Wasm(e.to_string())
}

/// A close-on-exec pipe (read end, write end), both above the fds the
/// runner's are dup'ed to, so that the dup2s in the child never clash.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io_err(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let high = |fd: OwnedFd| -> Result<OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC on a live fd returns a new fd or -1.
        let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if n < 0 {
            return Err(io_err(std::io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    };
    Ok((high(r)?, high(w)?))
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    ironcell_basics::atomic_file::write(path, data)
        .map_err(|e| wasm_err(format!("cannot write {}: {e}", path.display())))
}
