//! The daemon's side of the keeper: starts one when none runs, asks it to
//! spawn helpers and to front task addresses, and feeds the exits it reports
//! to the daemon's [`Reaper`].

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::oneshot;

use crate::reaper::{Exit, Reaper};
use ironcell_keeper::proto::{self, FromKeeper, ToKeeper, MAX_PACKET};

const START_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Stdin => "stdin",
            Slot::StdinFifo => "stdin-fifo",
            Slot::Tty => "tty",
            Slot::TtyOut => "tty-out",
        }
    }
}

pub struct Keeper {
    sock: OwnedFd,
    send_lock: Mutex<()>,
    next_tag: AtomicU64,
    spawned: Waiters<u64, Result<i32, String>>,
    fronted: Waiters<PathBuf, Result<(), String>>,
    fetched: Waiters<String, Option<OwnedFd>>,
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

impl Keeper {
    /// Connects (starting the keeper if needed), says hello, and starts the
    /// thread that receives the keeper's messages. Exits the keeper kept
    /// while no daemon ran arrive first.
    pub fn start(root: &Path, exe: &Path, reaper: Arc<Reaper>) -> Result<Arc<Keeper>> {
        let sock = connect_or_start(root, exe)?;
        let k = Arc::new(Keeper {
            sock,
            send_lock: Mutex::new(()),
            next_tag: AtomicU64::new(1),
            spawned: Mutex::default(),
            fronted: Mutex::default(),
            fetched: Mutex::default(),
        });
        k.send(&ToKeeper::Hello {}, &[])?;
        let reader = k.clone();
        std::thread::Builder::new()
            .name("keeper".into())
            .spawn(move || reader.receive(reaper))
            .context("cannot start the keeper thread")?;
        Ok(k)
    }

    fn send(&self, msg: &ToKeeper, fds: &[RawFd]) -> Result<()> {
        let _g = self.send_lock.lock().unwrap();
        proto::send(self.sock.as_raw_fd(), msg, fds).context("the keeper is gone")
    }

    fn receive(&self, reaper: Arc<Reaper>) {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            match proto::recv::<FromKeeper>(self.sock.as_raw_fd(), &mut buf) {
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
                        if let Some(tx) = self.spawned.lock().unwrap().remove(&tag) {
                            let _ = tx.send(error.map_or(Ok(pid), Err));
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
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Other => {
                    tracing::warn!(error = %e, "malformed message from the keeper");
                }
                Err(e) => {
                    tracing::error!(error = %e, "lost the keeper");
                    break;
                }
            }
        }
        tracing::error!(
            "the keeper is gone: new tasks fail and exits are not reported until ironcelld restarts"
        );
        self.spawned.lock().unwrap().clear();
        self.fronted.lock().unwrap().clear();
        self.fetched.lock().unwrap().clear();
    }

    /// Asks the keeper to start this daemon again with `argv` and `env`
    /// (in `/`) when it dies.
    pub fn supervise(&self, argv: Vec<String>, env: Vec<(String, String)>) -> Result<()> {
        self.send(
            &ToKeeper::Supervise {
                argv,
                env,
                cwd: PathBuf::from("/"),
            },
            &[],
        )
    }

    /// Tells the keeper this daemon stops on purpose: no restart.
    pub fn unsupervise(&self) -> Result<()> {
        self.send(&ToKeeper::Unsupervise {}, &[])
    }

    /// Runs `argv` as the keeper's child with `fds` as the given fd numbers.
    pub async fn spawn(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
        fds: Vec<(OwnedFd, i32)>,
    ) -> Result<i32> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.spawned.lock().unwrap().insert(tag, tx);
        let raw: Vec<RawFd> = fds.iter().map(|(f, _)| f.as_raw_fd()).collect();
        let targets = fds.iter().map(|(_, t)| *t).collect();
        let sent = self.send(
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
            Ok(Ok(pid)) => Ok(pid),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("the keeper is gone"),
        }
    }

    /// Has the keeper listen on `public` and relay to `backend`.
    pub async fn front(&self, public: &Path, backend: &Path) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.fronted
            .lock()
            .unwrap()
            .insert(public.to_path_buf(), tx);
        self.send(
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
        self.fetched.lock().unwrap().insert(key.clone(), tx);
        self.send(&ToKeeper::Fetch { key }, &[]).ok()?;
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
