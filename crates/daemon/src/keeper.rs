//! The daemon's side of the keeper: starts one when none runs (and another
//! when it is lost), asks it to spawn helpers and to front task addresses,
//! and feeds the exits it reports to the daemon's [`Reaper`].

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ironcell_basics::proc_stat::ProcStat;
use tokio::sync::{oneshot, watch};

use crate::reaper::{Exit, Reaper};
use ironcell_keeper::proto::{self, FromKeeper, ToKeeper, MAX_PACKET};

const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between attempts to replace a lost keeper.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

type Waiters<K, V> = Mutex<HashMap<K, oneshot::Sender<V>>>;

/// A process's name at the keeper: `<namespace>/<task>/<exec id>` (the
/// init's exec id is empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcKey(String);

impl ProcKey {
    pub fn new(namespace: &str, task: &str, exec_id: &str) -> ProcKey {
        ProcKey(format!("{namespace}/{task}/{exec_id}"))
    }

    /// The name the keeper holds `slot` under (the wire form, which a
    /// keeper started by an older daemon knows too).
    fn slot(&self, slot: Slot) -> String {
        format!("{}:{}", self.0, slot.name())
    }
}

/// Which of a process's descriptors the keeper holds, so that they outlive
/// a daemon that dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The write end of the process's stdin pipe.
    Stdin,
    /// containerd's stdin FIFO, open for reading.
    StdinFifo,
    /// The master of the process's terminal.
    Tty,
    /// containerd's stdout FIFO of a terminal, open so that its reader sees
    /// no end of file while no daemon relays.
    TtyOut,
    /// Where the daemon copies a process's stdout from (a VM exec's agent
    /// stream): unread output waits in it while no daemon runs.
    Stdout,
    /// containerd's stdout FIFO that `Stdout` is copied into, held as
    /// `TtyOut` is.
    StdoutFifo,
    /// As `Stdout`, for stderr.
    Stderr,
    /// As `StdoutFifo`, for stderr.
    StderrFifo,
}

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Stdin => "stdin",
            Slot::StdinFifo => "stdin-fifo",
            Slot::Tty => "tty",
            Slot::TtyOut => "tty-out",
            Slot::Stdout => "stdout",
            Slot::StdoutFifo => "stdout-fifo",
            Slot::Stderr => "stderr",
            Slot::StderrFifo => "stderr-fifo",
        }
    }
}

pub struct Keeper {
    root: PathBuf,
    exe: PathBuf,
    /// The connection to the current keeper; its lock orders the sends.
    conn: Mutex<Arc<OwnedFd>>,
    /// The `Supervise` message `supervise` sent, sent again to a keeper
    /// that replaces a lost one.
    supervision: Mutex<Option<ToKeeper>>,
    /// Counts the keepers this daemon has connected to: it moves when a
    /// lost keeper is replaced.
    generation: watch::Sender<u64>,
    /// False from the loss of a keeper until its replacement is connected
    /// (and [`Keeper::generations`] has moved).
    connected: watch::Sender<bool>,
    /// Where the exits of the keeper's processes go; it also tells which
    /// keeper generation each process was made under.
    reaper: Arc<Reaper>,
    /// The daemon's runtime, for the pidfd watches of a lost keeper's
    /// processes (the receiving thread is not one of its threads).
    runtime: tokio::runtime::Handle,
    /// [`Keeper::identity`] of the keeper now serving.
    identity: Mutex<String>,
    next_tag: AtomicU64,
    spawned: Waiters<u64, Result<Made, String>>,
    fronted: Waiters<PathBuf, Result<(), String>>,
    fetched: Waiters<String, Option<OwnedFd>>,
}

/// A process the keeper spawned: its pid and the keeper generation it was
/// made under (see [`Reaper::expect`]). Its exit is watched already:
/// `Reaper::watch(pid)` claims it.
#[derive(Debug, Clone, Copy)]
pub struct Made {
    pub pid: i32,
    pub generation: u64,
}

/// Connects to the keeper of `root`, starting `ironcelld-keeper keeper
/// --root root` (beside `exe`; else `exe keeper --root root`) first when
/// none listens.
fn connect_or_start(root: &Path, exe: &Path) -> Result<OwnedFd> {
    let path = ironcell_keeper::socket_path(root);
    if let Ok(fd) = proto::connect(&path) {
        return Ok(fd);
    }
    let own = exe.with_file_name("ironcelld-keeper");
    let program = if own.is_file() { own.as_path() } else { exe };
    let status = Command::new(program)
        .arg("keeper")
        .arg("--root")
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot start the keeper ({})", program.display()))?;
    if !status.success() {
        bail!("the keeper did not start ({status})");
    }
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        match proto::connect(&path) {
            Ok(fd) => return Ok(fd),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e).with_context(|| format!("cannot reach {}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `<pid>:<start time in clock ticks since boot>` of process `pid`: names
/// it among all processes there ever were on this host.
fn identity_of(pid: i32) -> String {
    let start = ProcStat::of(pid).map_or(0, |s| s.start_time);
    format!("{pid}:{start}")
}

/// The pid of the process at the other end of `sock`.
fn peer_pid(sock: &OwnedFd) -> Result<i32> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .context("cannot identify the keeper")?;
    Ok(cred.pid())
}

impl Keeper {
    /// Connects (starting the keeper if needed), says hello, and starts the
    /// thread that receives the keeper's messages. Exits the keeper kept
    /// while no daemon ran arrive first. A keeper lost later is replaced by
    /// that thread (see [`Keeper::generations`]).
    /// Runs in the daemon's runtime (its blocking pool).
    pub fn start(root: &Path, exe: &Path, reaper: Arc<Reaper>) -> Result<Arc<Keeper>> {
        let runtime = tokio::runtime::Handle::current();
        let sock = connect_or_start(root, exe)?;
        let pid = peer_pid(&sock)?;
        reaper.set_keeper(pid, runtime.clone());
        let k = Arc::new(Keeper {
            root: root.to_path_buf(),
            exe: exe.to_path_buf(),
            conn: Mutex::new(Arc::new(sock)),
            supervision: Mutex::default(),
            generation: watch::Sender::new(0),
            connected: watch::Sender::new(true),
            reaper,
            runtime,
            identity: Mutex::new(identity_of(pid)),
            next_tag: AtomicU64::new(1),
            spawned: Mutex::default(),
            fronted: Mutex::default(),
            fetched: Mutex::default(),
        });
        k.send(&ToKeeper::Hello {}, &[])?;
        let reader = k.clone();
        std::thread::Builder::new()
            .name("keeper".into())
            .spawn(move || reader.receive())
            .context("cannot start the keeper thread")?;
        Ok(k)
    }

    /// Names the keeper now serving among all keepers there ever were on
    /// this host: its pid and start time. A task recorded with another
    /// keeper's identity was reached through a keeper that is lost.
    pub fn identity(&self) -> String {
        self.identity.lock().unwrap().clone()
    }

    /// The pid of the keeper now serving.
    pub fn pid(&self) -> i32 {
        let identity = self.identity();
        identity
            .split(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Changes each time a lost keeper has been replaced: the new one must
    /// be told the task addresses again, and the processes the old one was
    /// the parent of must be watched some other way.
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether a keeper is connected now: while it is not, nothing starts
    /// this daemon again if it dies.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    fn send(&self, msg: &ToKeeper, fds: &[RawFd]) -> Result<()> {
        self.send_awaiting(|| {}, msg, fds)
    }

    /// Sends `msg` after `register` has recorded who waits for its answer,
    /// both under the connection's lock: a loss of the keeper (which fails
    /// every waiter, under that lock) comes either before both, and the
    /// send fails, or after both, and the waiter is failed.
    fn send_awaiting(&self, register: impl FnOnce(), msg: &ToKeeper, fds: &[RawFd]) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        register();
        proto::send(conn.as_raw_fd(), msg, fds).context("the keeper is gone")
    }

    /// Receives the keeper's messages; when the keeper is lost, fails what
    /// waited for it and connects to a new one (starting it), for as long
    /// as the daemon runs.
    fn receive(&self) {
        loop {
            let sock = self.conn.lock().unwrap().clone();
            self.receive_from(&sock);
            {
                let _conn = self.conn.lock().unwrap();
                self.connected.send_replace(false);
                self.spawned.lock().unwrap().clear();
                self.fronted.lock().unwrap().clear();
                self.fetched.lock().unwrap().clear();
            }
            tracing::error!(
                keeper = %self.identity(),
                "lost the keeper: starting another; containerd gives up the tasks it reached through it"
            );
            let mut delay = Duration::from_millis(50);
            loop {
                match self.replace() {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot start a new keeper");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    }
                }
            }
            tracing::info!(keeper = %self.identity(), "connected to a new keeper");
            self.generation.send_modify(|g| *g += 1);
            // After the generation: who sees the keeper connected sees the
            // generation that must be fronted.
            self.connected.send_replace(true);
        }
    }

    /// Connects to a new keeper and tells it what the lost one knew of this
    /// daemon itself (the task addresses are fronted again by the owner of
    /// the endpoints, on [`Keeper::generations`]).
    fn replace(&self) -> Result<()> {
        let sock = connect_or_start(&self.root, &self.exe)?;
        let pid = peer_pid(&sock)?;
        let mut conn = self.conn.lock().unwrap();
        proto::send(sock.as_raw_fd(), &ToKeeper::Hello {}, &[]).context("hello")?;
        if let Some(msg) = self.supervision.lock().unwrap().as_ref() {
            proto::send(sock.as_raw_fd(), msg, &[]).context("supervise")?;
        }
        *conn = Arc::new(sock);
        // Before any message of the new keeper is read: what it spawns is
        // of the new generation, and what the old one left is swept.
        self.reaper.set_keeper(pid, self.runtime.clone());
        // After the generation: who reads the new identity reads the new
        // generation too (see `Pods::start`).
        *self.identity.lock().unwrap() = identity_of(pid);
        Ok(())
    }

    fn receive_from(&self, sock: &OwnedFd) {
        let reaper = &self.reaper;
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            match proto::recv::<FromKeeper>(sock.as_raw_fd(), &mut buf) {
                Ok(Some((msg, fds))) => match msg {
                    FromKeeper::Exit {
                        pid,
                        status,
                        at_nanos,
                    } => reaper.deliver(Exit {
                        pid,
                        status,
                        at: crate::time::from_nanos(at_nanos),
                    }),
                    FromKeeper::Spawned { tag, pid, error } => {
                        let made = error.map_or_else(
                            || {
                                // Watched before this keeper's loss can be
                                // noticed (on this thread, later).
                                let generation = reaper.generation();
                                reaper.expect(pid, generation);
                                Ok(Made { pid, generation })
                            },
                            Err,
                        );
                        let waiter = self.spawned.lock().unwrap().remove(&tag);
                        match (waiter, made) {
                            (Some(tx), made) => {
                                if let Err(Ok(m)) = tx.send(made) {
                                    // Nobody waits any more.
                                    reaper.forget(m.pid);
                                }
                            }
                            (None, Ok(m)) => reaper.forget(m.pid),
                            (None, Err(_)) => {}
                        }
                    }
                    FromKeeper::Held { key, found } => {
                        let fd = fds.into_iter().next().filter(|_| found);
                        if let Some(tx) = self.fetched.lock().unwrap().remove(&key) {
                            let _ = tx.send(fd);
                        }
                    }
                    FromKeeper::Fronted { public, error } => {
                        if let Some(tx) = self.fronted.lock().unwrap().remove(&public) {
                            let _ = tx.send(error.map_or(Ok(()), Err));
                        }
                    }
                },
                Ok(None) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::Other => {
                    tracing::warn!(error = %e, "malformed message from the keeper");
                }
                Err(e) => {
                    tracing::error!(error = %e, "lost the keeper");
                    return;
                }
            }
        }
    }

    /// Asks the keeper to start this daemon again with `argv` and `env`
    /// (in `/`) when it dies; a keeper that replaces a lost one is asked
    /// too.
    pub fn supervise(&self, argv: Vec<String>, env: Vec<(String, String)>) -> Result<()> {
        let msg = ToKeeper::Supervise {
            argv,
            env,
            cwd: PathBuf::from("/"),
        };
        // Kept first: if this keeper is lost now, its successor is asked.
        *self.supervision.lock().unwrap() = Some(msg.clone());
        self.send(&msg, &[])
    }

    /// Tells the keeper this daemon stops on purpose: no restart.
    pub fn unsupervise(&self) -> Result<()> {
        *self.supervision.lock().unwrap() = None;
        self.send(&ToKeeper::Unsupervise {}, &[])
    }

    /// Runs `argv` as the keeper's child with `fds` as the given fd numbers.
    /// Its exit is watched from the moment the keeper answers.
    pub async fn spawn(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
        fds: Vec<(OwnedFd, i32)>,
    ) -> Result<Made> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let raw: Vec<RawFd> = fds.iter().map(|(f, _)| f.as_raw_fd()).collect();
        let targets = fds.iter().map(|(_, t)| *t).collect();
        let sent = self.send_awaiting(
            || {
                self.spawned.lock().unwrap().insert(tag, tx);
            },
            &ToKeeper::Spawn {
                tag,
                argv,
                env,
                cwd,
                targets,
            },
            &raw,
        );
        drop(fds);
        if let Err(e) = sent {
            self.spawned.lock().unwrap().remove(&tag);
            return Err(e);
        }
        match rx.await {
            Ok(Ok(made)) => Ok(made),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("the keeper is gone"),
        }
    }

    /// Has the keeper listen on `public` and relay to `backend`.
    pub async fn front(&self, public: &Path, backend: &Path) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send_awaiting(
            || {
                self.fronted
                    .lock()
                    .unwrap()
                    .insert(public.to_path_buf(), tx);
            },
            &ToKeeper::Front {
                public: public.to_path_buf(),
                backend: backend.to_path_buf(),
            },
            &[],
        )?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("the keeper is gone"),
        }
    }

    /// Has the keeper hold (a copy of) `fd` as `key`'s `slot`.
    pub fn hold(&self, key: &ProcKey, slot: Slot, fd: &OwnedFd) {
        let key = key.slot(slot);
        if let Err(e) = self.send(&ToKeeper::Hold { key: key.clone() }, &[fd.as_raw_fd()]) {
            tracing::warn!(key, error = %e, "cannot hand an fd to the keeper");
        }
    }

    /// Has the keeper close what it holds as `key`'s `slot`.
    pub fn release(&self, key: &ProcKey, slot: Slot) {
        let _ = self.send(
            &ToKeeper::Release {
                key: key.slot(slot),
            },
            &[],
        );
    }

    /// A copy of the fd held as `key`'s `slot`, if any.
    pub async fn fetch(&self, key: &ProcKey, slot: Slot) -> Option<OwnedFd> {
        let key = key.slot(slot);
        let (tx, rx) = oneshot::channel();
        self.send_awaiting(
            || {
                self.fetched.lock().unwrap().insert(key.clone(), tx);
            },
            &ToKeeper::Fetch { key: key.clone() },
            &[],
        )
        .ok()?;
        rx.await.ok().flatten()
    }

    /// The daemon has recorded `pid`'s exit.
    pub fn ack(&self, pid: i32) {
        let _ = self.send(&ToKeeper::Ack { pid }, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_their_wire_names() {
        let k = ProcKey::new("default", "web", "");
        assert_eq!(k.slot(Slot::Stdin), "default/web/:stdin");
        assert_eq!(k.slot(Slot::StdinFifo), "default/web/:stdin-fifo");
        assert_eq!(
            ProcKey::new("k8s.io", "c", "e1").slot(Slot::Tty),
            "k8s.io/c/e1:tty"
        );
        assert_eq!(k.slot(Slot::TtyOut), "default/web/:tty-out");
    }
}
