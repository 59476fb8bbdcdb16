//! The short-lived helper that forks a container's processes.
//!
//! Creating a container forks (namespaces, the init process) and the forked
//! child runs a good deal of code before it execs. Doing that from the
//! daemon, a multi-threaded process, risks a child that inherits a lock some
//! other thread held. So the daemon re-executes its own binary as
//! `ironcelld helper create|exec ...`: a fresh single-threaded process that
//! calls the same `sandbox` library the `ironcell` CLI calls, with the
//! container's stdio as its own stdio, and exits once the container's process
//! exists. That process is then re-parented to the daemon (a subreaper).
//!
//! The keeper (`keeper/`) spawns the helper for the daemon, so the
//! container's processes become the keeper's children and their exits
//! survive a daemon restart. The helper reports a failure on the pipe named
//! by `IRONCELLD_ERROR_FD` (one line), because its stderr is the container's.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ironcell_basics::proc_stat::ProcStat;
use ironcell_container::{CreateOptions, ExecOptions};
use ironcell_oci::Bundle;
use ironcell_sandbox::{Kind, Sandboxes, VmSandbox};

use crate::claim;
use crate::keeper::{Keeper, Made};
use crate::reaper::Reaper;

const ERROR_FD_ENV: &str = "IRONCELLD_ERROR_FD";
/// The daemon's log file, where a helper logs warnings and errors (JSON).
pub const LOG_ENV: &str = "IRONCELLD_LOG";
/// The fd number the error pipe gets in the helper.
const ERROR_FD: i32 = 3;

/// What a helper is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Create {
        root: PathBuf,
        id: String,
        bundle: PathBuf,
        /// The create's claim (`claim.rs`), held while the container is
        /// made.
        claim: PathBuf,
        pid_file: PathBuf,
        console_socket: Option<PathBuf>,
        systemd_cgroup: bool,
        /// The sandbox kind chosen for the task (None: the bundle's).
        sandbox: Option<Kind>,
        /// A vm container whose VM no relay owns: the VM's processes
        /// outlive the helper and become the keeper's
        /// (`VmSandbox::create_detached`).
        detach_vm: bool,
    },
    Exec {
        root: PathBuf,
        id: String,
        process: PathBuf,
        pid_file: PathBuf,
        console_socket: Option<PathBuf>,
    },
}

impl Job {
    fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["helper".into()];
        let (root, id, pid_file, console) = match self {
            Job::Create {
                root,
                id,
                bundle,
                claim,
                pid_file,
                console_socket,
                systemd_cgroup,
                sandbox,
                detach_vm,
            } => {
                a.push("create".into());
                a.push("--bundle".into());
                a.push(bundle.into());
                a.push("--claim".into());
                a.push(claim.into());
                if *systemd_cgroup {
                    a.push("--systemd-cgroup".into());
                }
                if let Some(k) = sandbox {
                    a.push("--sandbox".into());
                    a.push(k.as_str().into());
                }
                if *detach_vm {
                    a.push("--detach-vm".into());
                }
                (root, id, pid_file, console_socket)
            }
            Job::Exec {
                root,
                id,
                process,
                pid_file,
                console_socket,
            } => {
                a.push("exec".into());
                a.push("--process".into());
                a.push(process.into());
                (root, id, pid_file, console_socket)
            }
        };
        a.push("--root".into());
        a.push(root.into());
        a.push("--pid-file".into());
        a.push(pid_file.into());
        if let Some(c) = console {
            a.push("--console-socket".into());
            a.push(c.into());
        }
        a.push(id.into());
        a
    }

    fn parse(args: &[OsString]) -> Result<Job> {
        use lexopt::prelude::*;
        let mut p = lexopt::Parser::from_args(args.iter().cloned());
        let kind = match p.next()? {
            Some(Value(v)) => v.string()?,
            _ => bail!("helper: expected create or exec"),
        };
        let (mut root, mut bundle, mut claim, mut process, mut pid_file, mut console, mut id) =
            (None, None, None, None, None, None, None);
        let (mut systemd, mut detach_vm) = (false, false);
        let mut sandbox = None;
        while let Some(arg) = p.next()? {
            match arg {
                Long("root") => root = Some(PathBuf::from(p.value()?)),
                Long("bundle") => bundle = Some(PathBuf::from(p.value()?)),
                Long("claim") => claim = Some(PathBuf::from(p.value()?)),
                Long("process") => process = Some(PathBuf::from(p.value()?)),
                Long("pid-file") => pid_file = Some(PathBuf::from(p.value()?)),
                Long("console-socket") => console = Some(PathBuf::from(p.value()?)),
                Long("systemd-cgroup") => systemd = true,
                Long("detach-vm") => detach_vm = true,
                Long("sandbox") => sandbox = Some(p.value()?.string()?.parse::<Kind>()?),
                Value(v) if id.is_none() => id = Some(v.string()?),
                _ => return Err(arg.unexpected().into()),
            }
        }
        let root = root.context("helper: --root is required")?;
        let id = id.context("helper: container id is required")?;
        let pid_file = pid_file.context("helper: --pid-file is required")?;
        Ok(match kind.as_str() {
            "create" => Job::Create {
                root,
                id,
                bundle: bundle.context("helper create: --bundle is required")?,
                claim: claim.context("helper create: --claim is required")?,
                pid_file,
                console_socket: console,
                systemd_cgroup: systemd,
                sandbox,
                detach_vm,
            },
            "exec" => Job::Exec {
                root,
                id,
                process: process.context("helper exec: --process is required")?,
                pid_file,
                console_socket: console,
            },
            other => bail!("helper: unknown job {other:?}"),
        })
    }

    fn run(&self) -> Result<()> {
        match self {
            Job::Create {
                root,
                id,
                bundle,
                claim,
                pid_file,
                console_socket,
                systemd_cgroup,
                sandbox,
                detach_vm,
            } => {
                // Released when the container is made (or not): a removal
                // of this create waits for it, then removes what it made.
                let _held = claim::hold(claim)?;
                let sandboxes = Sandboxes::new(root, *systemd_cgroup);
                let bundle = Bundle::load(bundle)?;
                let kind = Sandboxes::select(*sandbox, &bundle)?;
                let opts = CreateOptions {
                    pid_file: Some(pid_file.clone()),
                    console_socket: console_socket.clone(),
                    detach: true,
                    ..Default::default()
                };
                if *detach_vm {
                    if kind != Kind::Vm {
                        bail!("--detach-vm: container {id} is no vm container");
                    }
                    VmSandbox::new(root.clone(), None).create_detached(id, &bundle, &opts)?;
                } else {
                    sandboxes.create(kind, id, &bundle, &opts)?;
                }
            }
            Job::Exec {
                root,
                id,
                process,
                pid_file,
                console_socket,
            } => {
                let sandboxes = Sandboxes::new(root, false);
                let opts = ExecOptions {
                    process: Some(process.clone()),
                    pid_file: Some(pid_file.clone()),
                    console_socket: console_socket.clone(),
                    tty: console_socket.is_some(),
                    detach: true,
                    ..Default::default()
                };
                sandboxes.owner(id)?.exec(id, &opts)?;
            }
        }
        Ok(())
    }
}

/// `ironcelld helper ...` (or `ironcelld-helper helper ...`).
pub fn main(args: &[OsString]) -> ExitCode {
    match args.first() {
        Some(a) if a == "pod" => pod_holder_main(&args[1..]),
        _ => job_main(args),
    }
}

/// `ironcelld helper pod --sandbox NS/ID [--netns PATH] [--hostname NAME]
/// [--sysctl PATH=VALUE]... [--pid-namespace yes]`: new IPC and UTS
/// namespaces (and the given network namespace), the pod's hostname and
/// sysctls set in them (each PATH under `/proc/sys`, checked by the daemon:
/// `PodConfig::holder_sysctls`), then sleep until killed. The pod's name
/// only marks the process (a holder whose spawn was not answered is found
/// by it).
///
/// With `--pid-namespace yes` (the pod shares one PID namespace among its
/// containers), the holder forks the init of a new PID namespace, which
/// has its other namespaces, reaps what is orphaned in the pod and dies
/// with the holder; the holder waits for it. The pod's pid is that init's,
/// the holder's only child (`/proc/<holder>/task/<holder>/children`).
fn pod_holder_main(args: &[OsString]) -> ExitCode {
    let usage = || {
        eprintln!(
            "usage: ironcelld helper pod --sandbox NS/ID [--netns PATH] [--hostname NAME] \
             [--sysctl PATH=VALUE]... [--pid-namespace yes]"
        );
        ExitCode::FAILURE
    };
    let (mut netns, mut hostname, mut sysctls) = (None, None, Vec::new());
    let mut pid_namespace = false;
    let [flag, _, rest @ ..] = args else {
        return usage();
    };
    if flag != "--sandbox" || rest.len() % 2 != 0 {
        return usage();
    }
    for pair in rest.chunks(2) {
        let value = pair[1].to_string_lossy().into_owned();
        match pair[0].to_str() {
            Some("--netns") => netns = Some(value),
            Some("--hostname") => hostname = Some(value),
            Some("--pid-namespace") if value == "yes" => pid_namespace = true,
            Some("--sysctl") => match value.split_once('=') {
                Some((path, v))
                    if !path.starts_with('/') && !path.split('/').any(|p| p == "..") =>
                {
                    sysctls.push((path.to_string(), v.to_string()))
                }
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    let set_up = set_up_pod_namespaces(netns, hostname, &sysctls).and_then(|()| {
        if pid_namespace {
            fork_pid_namespace_init()
        } else {
            Ok(())
        }
    });
    match set_up {
        Ok(()) => loop {
            // SAFETY: pause(2) takes no arguments; SIGTERM and SIGKILL end it.
            unsafe {
                libc::pause();
            }
        },
        Err(e) => {
            eprintln!("ironcelld pod: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Forks the init of a new PID namespace and, in the holder, waits for it:
/// returns only in that init. The holder is single-threaded here, so the
/// child may go on with anything.
fn fork_pid_namespace_init() -> Result<()> {
    use nix::sched::{unshare, CloneFlags};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // The holder keeps the write end open for its life: the init sees the
    // pipe hang up if the holder died before the init asked to die with it.
    let (alive_r, alive_w) = nix::unistd::pipe().context("pipe")?;
    unshare(CloneFlags::CLONE_NEWPID).context("unshare the PID namespace")?;
    // SAFETY: the holder has one thread (it runs no runtime), so the child
    // is a whole copy of it.
    match unsafe { fork() }.context("fork the pod's PID namespace init")? {
        ForkResult::Parent { child } => {
            drop(alive_r);
            loop {
                // The holder ends with its init; killing the holder kills
                // the init (its parent-death signal), and with it the whole
                // namespace.
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => {
                        drop(alive_w);
                        std::process::exit(1)
                    }
                    Ok(_) => {}
                }
            }
        }
        ForkResult::Child => {
            drop(alive_w);
            if let Err(e) = contain_init(&alive_r) {
                eprintln!("ironcelld pod: the PID namespace's init: {e}");
                std::process::exit(1);
            }
            // After the change of user, which clears it.
            // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&alive_r),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
            let hung_up = fds[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP));
            if hung_up {
                std::process::exit(1);
            }
            drop(alive_r);
            reap_orphans()
        }
    }
}

/// The user the pod's PID namespace init runs as (nobody).
const INIT_ID: u32 = 65534;

/// Takes from the pod's PID namespace init everything a process of the
/// pod could reach through it: the containers see it as their pid 1, and
/// one allowed to ptrace (CAP_SYS_PTRACE) reads `/proc/1/root`, `/proc/1/fd`
/// and runs code in it. So it gets a mount namespace whose root is an empty
/// read-only tmpfs, keeps no fd but `keep`, and runs as nobody without
/// capabilities or a way to gain any: as little as a pause container.
fn contain_init(keep: &std::os::fd::OwnedFd) -> nix::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::unistd::{Gid, Uid};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("init"),
        "/tmp",
        Some("tmpfs"),
        flags,
        Some("size=4k,nr_inodes=8,mode=0555"),
    )?;
    nix::unistd::mkdir("/tmp/old", nix::sys::stat::Mode::S_IRWXU)?;
    nix::unistd::pivot_root("/tmp", "/tmp/old")?;
    nix::unistd::chdir("/")?;
    umount2("/old", MntFlags::MNT_DETACH)?;
    std::fs::remove_dir("/old")
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )?;
    let keep = std::os::fd::AsRawFd::as_raw_fd(keep) as u32;
    // SAFETY: close_range(2) closes the fds of this process in the ranges
    // given; nothing in this single-threaded process uses them any more.
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
    }
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(
        Gid::from_raw(INIT_ID),
        Gid::from_raw(INIT_ID),
        Gid::from_raw(INIT_ID),
    )?;
    // Leaving uid 0 clears every capability.
    nix::unistd::setresuid(
        Uid::from_raw(INIT_ID),
        Uid::from_raw(INIT_ID),
        Uid::from_raw(INIT_ID),
    )?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// The pod's PID namespace init: reaps every process orphaned in the
/// namespace, forever. SIGCHLD is blocked and waited for with sigsuspend,
/// so that none is lost between a reap and the wait.
fn reap_orphans() -> ! {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: the handler does nothing; it only makes SIGCHLD interrupt
    // sigsuspend (an ignored SIGCHLD would not).
    unsafe {
        let _ = nix::sys::signal::signal(
            Signal::SIGCHLD,
            nix::sys::signal::SigHandler::Handler(nothing),
        );
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None);
    loop {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let _ = SigSet::empty().suspend();
    }
}

/// The pod holder's namespaces, with its hostname and sysctls set in them.
fn set_up_pod_namespaces(
    netns: Option<String>,
    hostname: Option<String>,
    sysctls: &[(String, String)],
) -> Result<()> {
    use nix::sched::{setns, unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS).context("unshare")?;
    if let Some(path) = netns {
        let f = File::open(&path).with_context(|| format!("network namespace {path:?}"))?;
        setns(f, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("network namespace {path:?}"))?;
    }
    if let Some(name) = hostname {
        nix::unistd::sethostname(&name).with_context(|| format!("hostname {name:?}"))?;
    }
    // /proc/sys/net and the IPC sysctls are those of the namespaces of the
    // process that writes them: this one's, now.
    for (path, value) in sysctls {
        std::fs::write(Path::new("/proc/sys").join(path), value)
            .with_context(|| format!("sysctl {path} = {value:?}"))?;
    }
    Ok(())
}

/// A create or exec job: runs in the re-executed binary.
fn job_main(args: &[OsString]) -> ExitCode {
    // The helper forks the container's processes: it runs from a sealed
    // copy of this binary, out of their reach (CVE-2019-5736). This comes
    // before the error fd is made close-on-exec, so that the re-executed
    // helper has it too.
    let sealed = ironcell_container::sealed_exe::ensure_sealed();
    if let Some(log) = std::env::var_os(LOG_ENV) {
        let _ = logging::init(
            Some(Path::new(&log)),
            logging::LogFormat::Json,
            tracing::Level::WARN,
        );
    }
    let mut errors = std::env::var(ERROR_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map(|fd| {
            // SAFETY: the daemon passed this fd to us for this purpose and
            // nothing else in this process owns it.
            let f = unsafe { File::from_raw_fd(fd) };
            // Not inherited by the container's process.
            let _ = nix::fcntl::fcntl(
                f.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            f
        });
    let result = sealed
        .map_err(anyhow::Error::from)
        .and_then(|()| Job::parse(args))
        .and_then(|job| job.run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            match errors.as_mut() {
                Some(f) => {
                    let _ = writeln!(f, "{msg}");
                }
                None => eprintln!("ironcelld helper: {msg}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// The container's stdio for a helper: what its fds 0, 1 and 2 become.
pub struct HelperStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A keeper generation no keeper has (they count from 1).
const LOST_KEEPER: u64 = 0;

/// The process running exactly `argv` (a helper's command line names its
/// job's state files, so no two jobs share one). The helper's own children
/// share its command line until they exec: the one whose parent is not
/// another match, in the daemon's own mount namespace, is the helper. (A
/// container's process left by a helper that died has entered the
/// container's namespaces; waiting for it as the helper would wait for a
/// start that never comes.)
pub(crate) fn find_running(argv: &[String]) -> Option<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    let matches: Vec<i32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect();
    let own_mounts = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    matches.iter().copied().find(|pid| {
        ProcStat::of(*pid).is_some_and(|s| !matches.contains(&s.parent))
            && std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m == own_mounts)
    })
}

/// The pid a helper job wrote to `pid_file` (a create's or an exec's
/// process), if it wrote one.
pub fn read_pid_file(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
}

/// Runs `job` in a helper process, a child of the keeper, and waits for
/// it. The error is the helper's one-line report. Returns the keeper
/// generation the helper ran under: the processes it forked were made
/// under it too (see [`Reaper::expect`]).
pub async fn run(
    keeper: &Keeper,
    reaper: &Arc<Reaper>,
    exe: &Path,
    job: &Job,
    io: HelperStdio,
) -> Result<u64> {
    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    let mut err_read = File::from(err_read);
    let cwd = match job {
        Job::Create { bundle, .. } => bundle.clone(),
        Job::Exec { .. } => PathBuf::from("/"),
    };
    let mut argv = vec![exe.to_string_lossy().into_owned()];
    argv.extend(
        job.to_args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let mut fds = vec![(err_write, ERROR_FD)];
    for (fd, n) in [(io.stdin, 0), (io.stdout, 1), (io.stderr, 2)] {
        if let Some(fd) = fd {
            fds.push((fd, n));
        }
    }
    let spawned = keeper
        .spawn(
            argv.clone(),
            vec![(ERROR_FD_ENV.into(), ERROR_FD.to_string())],
            cwd,
            fds,
        )
        .await;
    let made = match spawned {
        Ok(made) => made,
        // The keeper may have spawned it and died before saying so: then
        // it runs, and must be waited for before what it makes is cleaned
        // up. Made under a lost keeper: watched through a pidfd.
        Err(e) => match find_running(&argv) {
            Some(pid) => {
                tracing::warn!(pid, "found a helper its lost keeper spawned");
                reaper.expect(pid, LOST_KEEPER);
                Made {
                    pid,
                    generation: LOST_KEEPER,
                }
            }
            None => return Err(e).with_context(|| format!("cannot run {}", exe.display())),
        },
    };
    let pid = made.pid;
    let exit = reaper.watch(pid);
    let exit = exit.await.context("the daemon stopped reaping")?;
    keeper.ack(pid);
    if exit.status == 0 {
        return Ok(made.generation);
    }
    // The pipe's other end may still be open in the container's process (it
    // closes at exec): read what is there without waiting for EOF.
    nix::fcntl::fcntl(
        err_read.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = err_read.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            break;
        }
    }
    let msg = String::from_utf8_lossy(&buf).trim().to_string();
    if msg.is_empty() {
        bail!("the helper exited with status {}", exit.status);
    }
    bail!("{msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_args() {
        let jobs = [
            Job::Create {
                root: "/r".into(),
                id: "c1".into(),
                bundle: "/b".into(),
                claim: "/c".into(),
                pid_file: "/p".into(),
                console_socket: Some("/s".into()),
                systemd_cgroup: true,
                sandbox: Some(Kind::Vm),
                detach_vm: true,
            },
            Job::Exec {
                root: "/r".into(),
                id: "c1".into(),
                process: "/x.json".into(),
                pid_file: "/p".into(),
                console_socket: None,
            },
        ];
        for job in jobs {
            let args = job.to_args();
            assert_eq!(Job::parse(&args[1..]).unwrap(), job);
        }
    }

    #[test]
    fn bad_helper_args_are_errors() {
        for args in [
            vec![],
            vec!["destroy"],
            vec!["create", "--root", "/r", "--pid-file", "/p", "id"],
            vec![
                "create",
                "--root",
                "/r",
                "--bundle",
                "/b",
                "--pid-file",
                "/p",
                "id",
            ],
            vec!["exec", "--root", "/r", "id"],
        ] {
            let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
            assert!(Job::parse(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn a_running_helper_is_found_by_its_command_line() {
        let marker = format!("find-running-{}", std::process::id());
        let argv: Vec<String> = ["sleep", "30", &marker].map(String::from).to_vec();
        // `sleep 30 <marker>` fails at once; a shell that waits holds the
        // command line instead.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", "sleep", "30", &marker])
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let mut found = None;
        while found.is_none() && start.elapsed() < std::time::Duration::from_secs(5) {
            let want: Vec<String> = ["sh", "-c", "sleep 30; :", "sleep", "30", &marker]
                .map(String::from)
                .to_vec();
            found = find_running(&want);
        }
        assert_eq!(found, Some(child.id() as i32));
        assert_eq!(find_running(&argv), None, "only the exact command line");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
