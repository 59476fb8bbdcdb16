//! The keeper: the small process that lets ironcelld be killed and started
//! again without containerd or the containers noticing.
//!
//! - It owns the task addresses containerd connects to and relays the
//!   connections to the daemon (`relay.rs`): containerd's connections stay
//!   open across a daemon restart, and requests still in flight are sent to
//!   the next daemon.
//! - It is the child subreaper of every container process: the daemon asks
//!   it to spawn the helpers that fork them, so their processes end up as the
//!   keeper's children. It reaps them and keeps each exit status until the
//!   daemon acknowledges it, so exits that happen while no daemon runs are
//!   not lost.
//!
//! - It restarts a daemon that dies, when the daemon asked it to
//!   (`supervise.rs`): the daemon the shim starts has no other supervisor.
//!
//! It holds no container logic and parses only the daemon's messages on a
//! socket only root can reach. It is `ironcelld keeper --root DIR`, started
//! by the daemon when none runs for its root; it detaches (its own session,
//! re-parented away from the daemon) and stays until killed.

pub mod proto;
pub mod relay;
pub mod supervise;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use proto::{FromKeeper, ToKeeper, MAX_PACKET};
use supervise::{Supervisor, Verdict};

/// Exits kept for a daemon that does not acknowledge them (oldest dropped).
const MAX_JOURNAL: usize = 4096;

pub fn socket_path(root: &Path) -> PathBuf {
    root.join("keeper.sock")
}

fn parse(args: &[OsString]) -> Result<PathBuf> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args.iter().cloned());
    let mut root = None;
    while let Some(arg) = p.next()? {
        match arg {
            Long("root") => root = Some(PathBuf::from(p.value()?)),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let root = root.context("keeper: --root is required")?;
    if !root.is_absolute() {
        bail!("keeper: --root must be absolute");
    }
    Ok(root)
}

/// `ironcelld keeper --root DIR`. The process the daemon starts forks: the
/// child is the keeper, the parent exits once the keeper listens.
pub fn main(args: &[OsString]) -> ExitCode {
    let root = match parse(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ironcelld keeper: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let (ready_r, ready_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ironcelld keeper: pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: the process is single-threaded here (nothing has started a
    // thread yet), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("ironcelld keeper: fork: {e}");
            ExitCode::FAILURE
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(ready_w);
            let mut b = [0u8; 1];
            match nix::unistd::read(ready_r.as_raw_fd(), &mut b) {
                Ok(1) if b[0] == b'1' => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_r);
            match run(&root, ready_w) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("keeper: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(root: &Path, ready: OwnedFd) -> Result<()> {
    let _ = nix::unistd::setsid();
    std::env::set_current_dir("/").context("chdir /")?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot become a subreaper");
    }
    let lock = std::fs::File::create(root.join("keeper.lock")).context("keeper.lock")?;
    // SAFETY: flock on a file this function owns.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        // Another keeper serves this root: nothing to do.
        let _ = nix::unistd::write(&ready, b"1");
        return Ok(());
    }
    ironcell_basics::process_memory::limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(serve(root, ready))
}

/// The pid and exit status (the code, or 128 + the signal) of a reaped
/// process; None for stops and the like.
fn exit_of(status: WaitStatus) -> Option<(i32, u32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code as u32)),
        WaitStatus::Signaled(pid, sig, _) => Some((
            pid.as_raw(),
            ironcell_basics::exit_status::of_signal(sig as i32),
        )),
        _ => None,
    }
}

/// Makes `fd` non-blocking and watches it for readiness (in the tokio
/// runtime). The daemon's stdio relays use it too.
pub fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open
    // and unchanged until it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

fn listen_seqpacket(path: &Path) -> Result<OwnedFd> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let _ = std::fs::remove_file(path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    ironcell_basics::owner_only(path)?;
    listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

/// Most fds the keeper holds for daemons.
const MAX_HELD: usize = 8192;

struct Keeper {
    root: PathBuf,
    journal: BTreeMap<i32, (u32, u64)>,
    held: HashMap<String, OwnedFd>,
    conn: Option<AsyncFd<OwnedFd>>,
    /// The pid of the daemon at the other end of `conn`.
    conn_pid: Option<i32>,
    fronts: HashSet<PathBuf>,
    supervisor: Supervisor,
}

/// Where the keeper writes what an operator must see (it has no terminal).
pub fn log_path(root: &Path) -> PathBuf {
    root.join("keeper.log")
}

impl Keeper {
    /// Logs `msg` and appends it to the keeper's log file.
    fn note(&self, error: bool, msg: &str) {
        if error {
            tracing::error!("keeper: {msg}");
        } else {
            tracing::info!("keeper: {msg}");
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let line = format!("{at:.3} {} {msg}\n", if error { "ERROR" } else { "INFO" });
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(&self.root))
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    }

    /// The daemon's connection is gone: the daemon died (or stopped).
    fn daemon_gone(&mut self) {
        self.conn = None;
        self.conn_pid = None;
        let verdict = self.supervisor.lost(Instant::now());
        self.act(verdict);
    }

    fn act(&self, verdict: Verdict) {
        match verdict {
            Verdict::Nothing => {}
            Verdict::Restart(delay) => self.note(
                false,
                &format!(
                    "ironcelld is gone; starting it again in {} ms",
                    delay.as_millis()
                ),
            ),
            Verdict::GiveUp(n) => self.note(
                true,
                &format!(
                    "ironcelld died {n} times in a row within {} s of its start; \
                     the keeper no longer restarts it. Start it by hand after \
                     reading its log",
                    supervise::STABLE.as_secs()
                ),
            ),
        }
    }

    /// Starts the daemon again if that is due.
    fn restart_due(&mut self) {
        let now = Instant::now();
        let Some(cmd) = self.supervisor.due(now) else {
            return;
        };
        match spawn(&cmd.argv, &cmd.env, &cmd.cwd, &[], Vec::new()) {
            Ok(pid) => {
                self.supervisor.started(pid);
                self.note(false, &format!("started ironcelld again (pid {pid})"));
            }
            Err(e) => {
                self.note(true, &format!("cannot start ironcelld again: {e:#}"));
                let verdict = self.supervisor.lost(now);
                self.act(verdict);
            }
        }
    }

    fn send(&mut self, msg: &FromKeeper) {
        self.send_fds(msg, &[]);
    }

    fn send_fds(&mut self, msg: &FromKeeper, fds: &[RawFd]) {
        if let Some(c) = &self.conn {
            if proto::send(c.get_ref().as_raw_fd(), msg, fds).is_err() {
                self.daemon_gone();
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(w) => match exit_of(w) {
                    Some(e) => e,
                    None => continue,
                },
            };
            let (pid, status) = exit;
            let serving = self.conn_pid;
            if let Some(verdict) = self.supervisor.exited(pid, serving, Instant::now()) {
                // A daemon the keeper started, not a container's process.
                self.note(
                    verdict != Verdict::Nothing,
                    &format!("ironcelld (pid {pid}) exited with status {status}"),
                );
                self.act(verdict);
                continue;
            }
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.journal.insert(pid, (status, at));
            while self.journal.len() > MAX_JOURNAL {
                let oldest = *self.journal.keys().next().expect("non-empty");
                self.journal.remove(&oldest);
            }
            self.send(&FromKeeper::Exit {
                pid,
                status,
                at_nanos: at,
            });
        }
    }

    fn handle(&mut self, msg: ToKeeper, fds: Vec<OwnedFd>) {
        ironcell_basics::process_memory::note_activity();
        match msg {
            ToKeeper::Hello {} => {
                let backlog: Vec<_> = self.journal.iter().map(|(p, v)| (*p, *v)).collect();
                for (pid, (status, at_nanos)) in backlog {
                    self.send(&FromKeeper::Exit {
                        pid,
                        status,
                        at_nanos,
                    });
                }
            }
            ToKeeper::Supervise { argv, env, cwd } => {
                if argv.is_empty() {
                    tracing::warn!("keeper: Supervise without a command");
                    return;
                }
                let command = supervise::Command { argv, env, cwd };
                self.supervisor.supervise(Some(command), Instant::now());
            }
            ToKeeper::Unsupervise {} => self.supervisor.supervise(None, Instant::now()),
            ToKeeper::Ack { pid } => {
                self.journal.remove(&pid);
            }
            ToKeeper::Hold { key } => match fds.into_iter().next() {
                Some(fd) if self.held.len() < MAX_HELD || self.held.contains_key(&key) => {
                    self.held.insert(key, fd);
                }
                Some(_) => tracing::warn!("keeper: holding {MAX_HELD} fds already; {key} refused"),
                None => tracing::warn!("keeper: Hold {key} without an fd"),
            },
            ToKeeper::Release { key } => {
                self.held.remove(&key);
            }
            ToKeeper::Fetch { key } => {
                let fd = self.held.get(&key).map(|f| f.as_raw_fd());
                let msg = FromKeeper::Held {
                    key,
                    found: fd.is_some(),
                };
                self.send_fds(&msg, fd.as_slice());
            }
            ToKeeper::Front { public, backend } => {
                let error = self.front(&public, backend).err().map(|e| format!("{e:#}"));
                self.send(&FromKeeper::Fronted { public, error });
            }
            ToKeeper::Spawn {
                tag,
                argv,
                env,
                cwd,
                targets,
            } => {
                if self.daemon_hung_up() {
                    // The daemon that asked died since: nobody would learn
                    // the pid, and what the process made would outlive the
                    // next daemon's clean-up.
                    tracing::warn!("keeper: not spawning for a daemon that is gone");
                    return;
                }
                let (pid, error) = match spawn(&argv, &env, &cwd, &targets, fds) {
                    Ok(pid) => (pid, None),
                    Err(e) => (0, Some(format!("{e:#}"))),
                };
                self.send(&FromKeeper::Spawned { tag, pid, error });
            }
        }
    }

    /// Whether the daemon's end of the connection is closed, though
    /// messages it sent before may still be queued.
    fn daemon_hung_up(&self) -> bool {
        let Some(c) = &self.conn else { return true };
        let mut fds = [nix::poll::PollFd::new(
            c.get_ref().as_fd(),
            nix::poll::PollFlags::empty(),
        )];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
    }

    fn front(&mut self, public: &Path, backend: PathBuf) -> Result<()> {
        if self.fronts.contains(public) {
            return Ok(());
        }
        if let Some(dir) = public.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(public);
        let listener = tokio::net::UnixListener::bind(public)
            .with_context(|| format!("cannot listen on {}", public.display()))?;
        ironcell_basics::owner_only(public)?;
        tokio::spawn(relay::front(listener, backend, relay::DAEMON_WAIT));
        self.fronts.insert(public.to_path_buf());
        Ok(())
    }
}

/// Forks and execs `argv` with `fds[i]` as fd `targets[i]` (and /dev/null
/// for any of 0, 1, 2 not given).
fn spawn(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    targets: &[i32],
    fds: Vec<OwnedFd>,
) -> Result<i32> {
    if argv.is_empty() || fds.len() != targets.len() || targets.iter().any(|t| !(0..64).contains(t))
    {
        bail!("malformed spawn request");
    }
    // Move the fds above any target number first, so that no dup2 below
    // overwrites a source still to be placed.
    let mut high = Vec::with_capacity(fds.len());
    for fd in &fds {
        let h = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; we own it.
        high.push(unsafe { OwnedFd::from_raw_fd(h) });
    }
    drop(fds);
    let pairs: Vec<(RawFd, RawFd)> = high
        .iter()
        .map(|f| f.as_raw_fd())
        .zip(targets.iter().copied())
        .collect();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the closure only reads the copied
    // vector of integers.
    unsafe {
        cmd.pre_exec(move || {
            for (src, dst) in &pairs {
                if libc::dup2(*src, *dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", argv[0]))?;
    // Reaped by the SIGCHLD loop, not through `child`.
    Ok(child.id() as i32)
}

async fn serve(root: &Path, ready: OwnedFd) -> Result<()> {
    let listener = register(listen_seqpacket(&socket_path(root))?)?;
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    // One receive buffer for every message.
    let mut buf = vec![0u8; MAX_PACKET];
    let mut k = Keeper {
        root: root.to_path_buf(),
        journal: BTreeMap::new(),
        held: HashMap::new(),
        conn: None,
        conn_pid: None,
        fronts: HashSet::new(),
        supervisor: Supervisor::default(),
    };
    let _ = nix::unistd::write(&ready, b"1");
    drop(ready);
    tracing::info!(root = %root.display(), "keeper serving");
    ironcell_basics::process_memory::trim_text();
    ironcell_basics::process_memory::start_idle_trimmer();
    loop {
        tokio::select! {
            _ = sigchld.recv() => k.reap(),
            _ = sleep_until(k.supervisor.due_at()), if k.supervisor.due_at().is_some() => {
                k.restart_due();
            }
            r = listener.readable() => {
                let mut guard = r?;
                match nix::sys::socket::accept4(
                    listener.get_ref().as_raw_fd(),
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
                ) {
                    Ok(fd) => {
                        // SAFETY: accept4 returned a new fd that we own.
                        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                        // A new daemon replaces the old connection.
                        k.conn_pid = nix::sys::socket::getsockopt(
                            &fd,
                            nix::sys::socket::sockopt::PeerCredentials,
                        )
                        .ok()
                        .map(|c| c.pid());
                        k.conn = Some(register(fd)?);
                    }
                    Err(nix::Error::EAGAIN) => guard.clear_ready(),
                    Err(e) => tracing::warn!(error = %e, "keeper: accept"),
                }
            }
            r = async {
                let c = k.conn.as_ref().expect("guarded");
                loop {
                    let mut guard = c.readable().await?;
                    if let Ok(res) = guard.try_io(|inner| {
                        proto::recv::<ToKeeper>(inner.get_ref().as_raw_fd(), &mut buf)
                    }) {
                        break res;
                    }
                }
            }, if k.conn.is_some() => match r {
                Ok(Some((msg, fds))) => k.handle(msg, fds),
                Ok(None) => k.daemon_gone(),
                Err(e) if e.kind() == std::io::ErrorKind::Other => {
                    tracing::warn!(error = %e, "keeper: dropping a malformed message");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keeper: daemon connection lost");
                    k.daemon_gone();
                }
            },
        }
    }
}

/// Sleeps until `at` (for ever when None; the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_codes_or_128_plus_the_signal() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_of(WaitStatus::Exited(p, 7)), Some((5, 7)));
        assert_eq!(
            exit_of(WaitStatus::Signaled(p, nix::sys::signal::SIGKILL, false)),
            Some((5, 137))
        );
        assert_eq!(exit_of(WaitStatus::StillAlive), None);
    }

    /// A Spawn still queued from a daemon that died is not run: the
    /// keeper sees the hang-up before reading to the end.
    #[tokio::test]
    async fn a_daemon_that_hung_up_is_seen_before_its_queue_is_read() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        let k = Keeper {
            root: root.path().to_path_buf(),
            journal: BTreeMap::new(),
            held: HashMap::new(),
            conn: Some(register(ours).unwrap()),
            conn_pid: None,
            fronts: HashSet::new(),
            supervisor: Supervisor::default(),
        };
        assert!(!k.daemon_hung_up());
        proto::send(theirs.as_raw_fd(), &ToKeeper::Hello {}, &[]).unwrap();
        assert!(!k.daemon_hung_up(), "a message alone is no hang-up");
        drop(theirs);
        assert!(
            k.daemon_hung_up(),
            "the hang-up is seen with a message queued"
        );
    }
}
