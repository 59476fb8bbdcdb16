//! `ironcell-wasm`: the process of a wasm container started by the
//! `ironcell` CLI (docs/wasm.md). wasmtime lives in this binary only, so
//! that the CLI, which starts every namespace container, stays small.
//!
//! ```text
//! ironcell-wasm run [--cache DIR] [--start-fifo PATH]
//! ```
//!
//! fd 3 carries the container's [`Job`] as JSON, up to its end (the CLI
//! writes it once the process is in the container's cgroup); fd 4 is the
//! report pipe: "ok", or the one-line reason the container cannot run.
//! Between the two the runner reads and checks the module (from the
//! compiled-code cache when it is there), takes the container's user, and
//! opens the preopened directories. With `--start-fifo` it then waits for
//! `ironcell start`, which reads the FIFO; without it, it runs at once. It
//! exits with the module's status (docs/wasm.md: traps 134, memory limit
//! 137, time budget 152).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use ironcell_oci::wasm::Job;
use ironcell_wasm::{Exit, Runtime, Spec};

const JOB_FD: i32 = 3;
const REPORT_FD: i32 = 4;

fn usage() -> ! {
    eprintln!(
        "usage: ironcell-wasm run [--cache DIR] [--start-fifo PATH] (job on fd 3, report on fd 4)"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("run") {
        usage();
    }
    let (mut cache, mut fifo) = (None, None);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--cache", Some(v)) => cache = Some(PathBuf::from(v)),
            ("--start-fifo", Some(v)) => fifo = Some(PathBuf::from(v)),
            _ => usage(),
        }
    }
    // SAFETY: the CLI gives this process fds 3 and 4 (job and report), and
    // nothing else in it owns them.
    let (job_in, mut report) = unsafe {
        (
            File::from(OwnedFd::from_raw_fd(JOB_FD)),
            File::from(OwnedFd::from_raw_fd(REPORT_FD)),
        )
    };
    // The job first: the runner joins its cgroup before it allocates
    // anything of note (and while it has one thread).
    let job = match read_job(job_in) {
        Ok(j) => j,
        Err(e) => fail(&mut report, &e),
    };
    let runtime = match Runtime::new(cache) {
        Ok(r) => r,
        Err(e) => fail(&mut report, &e.to_string()),
    };
    let (prepared, fifo) = match setup(&runtime, &job, fifo) {
        Ok(p) => p,
        Err(e) => fail(&mut report, &e),
    };
    // Confined before create returns: a created container is already.
    if let Err(e) = confine() {
        fail(&mut report, &e);
    }
    // The CLI returns from create (or starts the container) on this line.
    let _ = report.write_all(b"ok");
    drop(report);
    if let Some(fifo) = fifo {
        // Blocks until `ironcell start` opens the FIFO to read.
        let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(mut f) => {
                let _ = f.write_all(b"0");
            }
            Err(e) => {
                eprintln!("ironcell-wasm: cannot wait for start: {e}");
                std::process::exit(126);
            }
        }
        drop(fifo);
    }
    let status = match prepared.run() {
        Ok(exit) => {
            match &exit {
                Exit::Trap(msg) => eprintln!("ironcell-wasm: wasm trap: {msg}"),
                Exit::MemoryLimit(msg) => eprintln!("ironcell-wasm: wasm memory limit: {msg}"),
                Exit::TimeBudget => eprintln!("ironcell-wasm: wasm time budget spent"),
                Exit::Code(_) | Exit::Killed(_) => {}
            }
            exit.status()
        }
        Err(e) => {
            eprintln!("ironcell-wasm: {e}");
            // As a shell reports a command it cannot run.
            126
        }
    };
    std::process::exit(status)
}

fn fail(report: &mut File, msg: &str) -> ! {
    let _ = report.write_all(msg.as_bytes());
    std::process::exit(1)
}

/// Reads the job off fd 3 and joins the container's cgroup v1 hierarchies
/// (`Job::cgroup_tasks`) while this process has a single thread.
fn read_job(mut job_in: File) -> Result<Job, String> {
    let mut text = String::new();
    job_in
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the job: {e}"))?;
    drop(job_in);
    let job: Job = serde_json::from_str(&text).map_err(|e| format!("malformed job: {e}"))?;
    // Writing 0 to a v1 hierarchy's `tasks` file moves the writing thread,
    // the only one, without the kernel's global threadgroup lock that a
    // move by the CLI would wait an RCU grace period for
    // (ironcell_container::cgroup::v1 says more).
    for t in &job.cgroup_tasks {
        std::fs::OpenOptions::new()
            .write(true)
            .open(t)
            .and_then(|mut f| f.write_all(b"0"))
            .map_err(|e| format!("cannot join the container's cgroup ({}): {e}", t.display()))?;
    }
    Ok(job)
}

/// Everything between the job and the start: read and check the module,
/// take the container's user, open the preopens.
fn setup<'r>(
    runtime: &'r Runtime,
    job: &Job,
    fifo: Option<PathBuf>,
) -> Result<(ironcell_wasm::Prepared<'r>, Option<OwnedFd>), String> {
    let mut bytes = Vec::new();
    job.open_module()
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("module {} in the rootfs: {e}", job.module.display()))?;
    let program = runtime
        .load(&job.module, &bytes)
        .map_err(|e| e.to_string())?;
    runtime.check(&program).map_err(|e| e.to_string())?;
    // Opened as root: the state directory is root's alone. Reopened through
    // /proc/self/fd after the user change (the FIFO itself is 0622).
    let fifo = fifo
        .map(|p| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(&p)
                .map(OwnedFd::from)
                .map_err(|e| format!("start FIFO {}: {e}", p.display()))
        })
        .transpose()?;
    become_user(job)?;
    let spec = Spec::from_job(job);
    let prepared = runtime.prepare(spec, &program).map_err(|e| e.to_string())?;
    Ok((prepared, fifo))
}

/// System calls the runner never makes once its set-up is done (before
/// create returns), refused (EPERM) for every thread from then on: if a module ever escaped
/// wasmtime, it could not exec a program, change its credentials or
/// namespaces, mount, trace, load kernel code or keys, or open a socket
/// (WASI preview 1 as configured here has no network). A deny list, as
/// Docker's default profile is mostly: what wasmtime and WASI need (memory,
/// threads, files in the preopens, clocks, signals for traps) stays
/// allowed without being enumerated here.
const DENIED: &[i64] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_socket,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_capset,
    libc::SYS_personality,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_syslog,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_fanotify_init,
    libc::SYS_acct,
    libc::SYS_quotactl,
];

/// Installs the [`DENIED`] filter on every thread (seccompiler; it sets
/// no_new_privs first).
fn confine() -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let rules = DENIED.iter().map(|nr| (*nr, vec![])).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("seccomp filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&prog).map_err(|e| format!("seccomp filter: {e}"))
}

/// Takes the spec's user, groups and no_new_privs.
fn become_user(job: &Job) -> Result<(), String> {
    let err = |what: &str| format!("cannot {what}: {}", std::io::Error::last_os_error());
    if job.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(err("set no_new_privs"));
        }
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        // Started by an unprivileged user: it is already who it can be.
        return Ok(());
    }
    let groups: Vec<libc::gid_t> = job.additional_gids.clone();
    // SAFETY: setgroups reads `groups.len()` gids from a live vector.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(err("set the supplementary groups"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setgid(job.gid) } != 0 {
        return Err(err(&format!("set gid {}", job.gid)));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setuid(job.uid) } != 0 {
        return Err(err(&format!("set uid {}", job.uid)));
    }
    Ok(())
}
