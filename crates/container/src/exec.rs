use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{Capability, Process, Spec};

use crate::engine::{Engine, ProcessIo};
use crate::error::ContainerError;

/// Options of `exec`, named as runc names them.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// A process.json to run (`--process`); the other process fields below
    /// are then ignored, as in runc.
    pub process: Option<PathBuf>,
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to (or replacing in) the container's env.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<(u32, Option<u32>)>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub tty: bool,
    /// The size (rows, columns) a terminal of the process starts with when
    /// its process gives none (`process.consoleSize`): a caller relaying the
    /// terminal would otherwise resize it only after the process started.
    pub console_size: Option<(u16, u16)>,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: i32,
    pub ignore_paused: bool,
    pub sub_cgroup: Option<String>,
}

/// Removes the temporary process file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Engine {
    /// Starts another process inside running container `id`. Returns its
    /// pid on the host; the caller waits for it unless `detach`.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32, ContainerError> {
        self.exec_with_io(id, opts, ProcessIo::default())
    }

    /// [`Self::exec`] with the process's stdio given as `io`.
    pub fn exec_with_io(
        &self,
        id: &str,
        opts: &ExecOptions,
        io: ProcessIo,
    ) -> Result<i32, ContainerError> {
        let container = self.load(id)?;
        match container.status() {
            ironcell_oci::Status::Running => {}
            ironcell_oci::Status::Paused if opts.ignore_paused => {}
            _ => {
                return Err(ContainerError::WrongStatus {
                    op: "exec in",
                    id: id.to_string(),
                    status: container.status(),
                    hint: ", not running",
                })
            }
        }
        let process = match &opts.process {
            Some(path) => with_console_size(read_process(path)?, opts)?,
            None => {
                let config = container.bundle().join("config.json");
                let spec = Spec::load(&config).map_err(|e| {
                    ContainerError::Invalid(format!("cannot read {}: {e}", config.display()))
                })?;
                exec_process(&spec, opts)?
            }
        };
        // libcontainer reads the process from a file; write ours next to the
        // container's state so it never outlives the container.
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let file = TempFile(
            self.dir(id)
                .join(format!("exec-{}-{stamp}.json", std::process::id())),
        );
        let text = serde_json::to_vec(&process)
            .map_err(|e| ContainerError::Invalid(format!("cannot encode process: {e}")))?;
        fs::write(&file.0, text)
            .map_err(|e| ContainerError::io(format!("cannot write {}", file.0.display()), e))?;

        let pid = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(self.root())
            .and_then(|b| b.with_pid_file(opts.pid_file.as_ref()))
            .map(|b| {
                io.apply(
                    b.with_console_socket(opts.console_socket.as_ref())
                        .with_preserved_fds(opts.preserve_fds),
                )
            })
            .and_then(|b| b.validate_id())
            .and_then(|b| {
                b.as_tenant()
                    .with_detach(opts.detach)
                    .with_process(Some(&file.0))
                    .with_ignore_paused(opts.ignore_paused)
                    .with_sub_cgroup(opts.sub_cgroup.clone())
                    .build()
            })
            .map_err(|e| {
                // A container that stopped while the process was joining it
                // fails deep in libcontainer (its namespaces are gone, or its
                // pid namespace has no init left to fork under): say so. An
                // init in the middle of exiting has dropped its namespaces
                // but still counts as running for a moment: the status is
                // read again for up to 200 ms.
                for _ in 0..10 {
                    if let Ok(status @ ironcell_oci::Status::Stopped) =
                        self.load(id).map(|c| c.status())
                    {
                        return ContainerError::WrongStatus {
                            op: "exec in",
                            id: id.to_string(),
                            status,
                            hint: ", not running",
                        };
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                ContainerError::engine(format!("cannot exec in container {id}"), e)
            })?;
        Ok(pid.as_raw())
    }
}

fn read_process(path: &Path) -> Result<Process, ContainerError> {
    let text = fs::read_to_string(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ContainerError::Invalid(format!("process file {}: no such file", path.display()))
        } else {
            ContainerError::io(format!("cannot read process file {}", path.display()), e)
        }
    })?;
    let process: Process = serde_json::from_str(&text)
        .map_err(|e| ContainerError::Invalid(format!("process file {}: {e}", path.display())))?;
    match process.args() {
        Some(a) if !a.is_empty() => Ok(process),
        _ => Err(ContainerError::Invalid(format!(
            "process file {}: args must name a program",
            path.display()
        ))),
    }
}

/// The process runc's `exec` starts in a container of spec `spec`: the
/// `--process` file, or else the container's own process with the command
/// line's changes.
pub fn exec_process(spec: &Spec, opts: &ExecOptions) -> Result<Process, ContainerError> {
    let p = match &opts.process {
        Some(path) => read_process(path)?,
        None => process_from_options(spec, opts)?,
    };
    with_console_size(p, opts)
}

/// `p` with the caller's terminal size as its `consoleSize` when it has a
/// terminal and no size of its own: its pty must not start at 0x0.
fn with_console_size(mut p: Process, opts: &ExecOptions) -> Result<Process, ContainerError> {
    if let Some((rows, cols)) = opts.console_size {
        if p.terminal() == Some(true) && p.console_size().is_none() {
            let size = oci_spec::runtime::BoxBuilder::default()
                .height(u64::from(rows))
                .width(u64::from(cols))
                .build()
                .map_err(|e| ContainerError::Invalid(format!("console size: {e}")))?;
            p.set_console_size(Some(size));
        }
    }
    Ok(p)
}

/// The container's own process with the command line's changes.
fn process_from_options(spec: &Spec, opts: &ExecOptions) -> Result<Process, ContainerError> {
    if opts.args.is_empty() {
        return Err(ContainerError::Invalid(
            "exec needs a command to run, or --process".into(),
        ));
    }
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(opts.args.clone()));
    p.set_terminal(Some(opts.tty));
    if let Some(cwd) = &opts.cwd {
        if !cwd.is_absolute() {
            return Err(ContainerError::Invalid(format!(
                "--cwd {}: must be an absolute path",
                cwd.display()
            )));
        }
        p.set_cwd(cwd.clone());
    }
    if !opts.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &opts.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
    }
    if let Some((uid, gid)) = opts.user {
        let mut user = p.user().clone();
        user.set_uid(uid);
        if let Some(gid) = gid {
            user.set_gid(gid);
        }
        p.set_user(user);
    }
    if !opts.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(opts.additional_gids.clone()));
        p.set_user(user);
    }
    if !opts.caps.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &opts.caps {
            let cap = parse_capability(name)
                .ok_or_else(|| ContainerError::Invalid(format!("unknown capability {name:?}")))?;
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.clone().unwrap_or_default();
                set.insert(cap);
                Some(set)
            };
            let (b, e, p2) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b).set_effective(e).set_permitted(p2);
        }
        p.set_capabilities(Some(caps));
    }
    if opts.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

/// A capability by name, with or without the `CAP_` prefix, in any case.
pub fn parse_capability(name: &str) -> Option<Capability> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    serde_json::from_value(serde_json::Value::String(full)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(
            parse_capability("CAP_SYS_ADMIN"),
            Some(Capability::SysAdmin)
        );
        assert_eq!(parse_capability("net_raw"), Some(Capability::NetRaw));
        assert_eq!(parse_capability("CAP_NOPE"), None);
    }
}
